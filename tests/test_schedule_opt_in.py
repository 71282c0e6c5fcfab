"""schedule=: FlashMLA's decode schedule in the same call (docs/SPEC_schedule.md), on the host and
through the fake device: validation, the reference's values, and what a plan is bound with.
The device's own outputs are tested in test_gpu_schedule.py."""

import numpy as np
import pytest

import fakes
import nsa_metadata as nm
from fakes import FakeTensor
from helpers import POISON, call, random_inputs, repoison, rows_of

MODES = ["decode", "target_verify"]
W = 300


def inputs(mode="decode", bs=7, seed=0):
    rng = np.random.default_rng(seed)
    inp = random_inputs(rng, mode, bs, W - 9, W=W, bad_pool=False, next_n=2)
    inp["seq_lens"] = rng.integers(0, 5000, bs).astype(np.int64)  # some above topk
    return inp


def expected(mode, inp, topk, schedule, kpool=1):
    md = call(nm.reference, mode, inp, max_len=W, topk=topk, kpool=kpool)
    lengths = None if schedule.lengths == "topk" else md.nsa_cache_seqlens
    return nm.reference.schedule(lengths, rows_of(mode, inp), topk, schedule.num_sm_parts)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", ["topk", "sparse"])
@pytest.mark.parametrize("parts", [1, 3, 66])
def test_allocated_outputs_are_the_schedule_of_the_rows(mode, lengths, parts):
    inp = inputs(mode)
    s = nm.Schedule(parts, lengths)
    md = call(nm, mode, inp, max_len=W, topk=1000, schedule=s)
    meta, splits = expected(mode, inp, 1000, s)
    assert md.tile_scheduler_metadata.dtype == np.int32 and md.num_splits.dtype == np.int32
    assert md.tile_scheduler_metadata.shape == (parts, 8)
    assert md.num_splits.shape == (rows_of(mode, inp) + 1,)
    np.testing.assert_array_equal(md.tile_scheduler_metadata, meta)
    np.testing.assert_array_equal(md.num_splits, splits)


@pytest.mark.parametrize("mode", MODES)
def test_other_outputs_unchanged_and_off_by_default(mode):
    inp = inputs(mode)
    plain = call(nm, mode, inp, max_len=W, topk=1000)
    assert plain.tile_scheduler_metadata is None and plain.num_splits is None
    with_s = call(nm, mode, inp, max_len=W, topk=1000, schedule=nm.Schedule(5, "sparse"))
    for f in nm.Metadata.__slots__:
        if f not in ("tile_scheduler_metadata", "num_splits") and getattr(plain, f) is not None:
            np.testing.assert_array_equal(getattr(with_s, f), getattr(plain, f), err_msg=f)


def test_kpool_lengths_are_nsa_cache_seqlens():
    inp = inputs("target_verify")
    s = nm.Schedule(4, "sparse")
    md = call(nm, "target_verify", inp, max_len=W, topk=1000, kpool=64, schedule=s)
    meta, splits = nm.reference.schedule(md.nsa_cache_seqlens, rows_of("target_verify", inp),
                                         1000, 4)
    np.testing.assert_array_equal(md.tile_scheduler_metadata, meta)
    np.testing.assert_array_equal(md.num_splits, splits)


def out_with_schedule(mode, inp, parts, sets=1):
    """Outputs of the call's shapes (and the schedule's), every element POISON: a test that says
    nothing is written sees a write of the right value too."""
    outs = []
    for _ in range(sets):
        md = call(nm, mode, inp, max_len=W, topk=1000)
        repoison(md)
        md.tile_scheduler_metadata = np.full((parts + 2, 8), POISON, np.int32)
        md.num_splits = np.full(rows_of(mode, inp) + 4, POISON, np.int32)
        outs.append(md)
    return outs


@pytest.mark.parametrize("mode", MODES)
def test_into_given_buffers_of_several_sets(mode):
    inp = inputs(mode)
    s = nm.Schedule(3, "sparse")
    outs = out_with_schedule(mode, inp, 3, sets=3)
    outs[1].tile_scheduler_metadata = outs[1].num_splits = None  # this set does not want it
    assert call(nm, mode, inp, max_len=W, topk=1000, schedule=s, out=outs) is outs
    meta, splits = expected(mode, inp, 1000, s)
    for md in (outs[0], outs[2]):
        np.testing.assert_array_equal(md.tile_scheduler_metadata[:3], meta)
        assert (md.tile_scheduler_metadata[3:] == POISON).all(), "past the region: untouched"
        np.testing.assert_array_equal(md.num_splits[:len(splits)], splits)
        assert (md.num_splits[len(splits):] == POISON).all()


def test_buffers_ignored_without_schedule():
    inp = inputs()
    (md,) = out_with_schedule("decode", inp, 3)
    call(nm, "decode", inp, max_len=W, topk=1000, out=md)
    assert (md.tile_scheduler_metadata == POISON).all() and (md.num_splits == POISON).all()


@pytest.mark.parametrize("change, error, match", [
    (lambda md: setattr(md, "num_splits", None), ValueError,
     r"out\.num_splits is required with out\.tile_scheduler_metadata"),
    (lambda md: setattr(md, "tile_scheduler_metadata", None), ValueError,
     r"out\.tile_scheduler_metadata is required with out\.num_splits"),
    (lambda md: setattr(md, "num_splits", np.zeros(7, np.int32)), ValueError,
     r"out\.num_splits has shape \(7,\); this call needs at least \(8,\)"),
    (lambda md: setattr(md, "tile_scheduler_metadata", np.zeros((2, 8), np.int32)), ValueError,
     r"out\.tile_scheduler_metadata has shape \(2, 8\); this call needs at least \(3, 8\)"),
    (lambda md: setattr(md, "tile_scheduler_metadata", np.zeros((3, 9), np.int32)), ValueError,
     r"out\.tile_scheduler_metadata must have row stride 8"),
    (lambda md: setattr(md, "tile_scheduler_metadata", np.zeros((3, 8), np.int64)), TypeError,
     r"out\.tile_scheduler_metadata must be int32"),
    (lambda md: setattr(md, "num_splits", md.cu_seqlens_k), ValueError, r"overlaps"),
])
def test_bad_buffers(change, error, match):
    inp = inputs()
    (md,) = out_with_schedule("decode", inp, 3)
    change(md)
    before = {f: None if getattr(md, f) is None else getattr(md, f).copy()
              for f in nm.Metadata.__slots__}
    with pytest.raises(error, match=match):
        call(nm, "decode", inp, max_len=W, topk=1000, out=md, schedule=nm.Schedule(3))
    for f, v in before.items():
        if v is not None:
            np.testing.assert_array_equal(getattr(md, f), v, err_msg=f"{f}: nothing is written")


def test_bad_schedules():
    with pytest.raises(ValueError, match=r"num_sm_parts = 0 is outside"):
        nm.Schedule(0)
    with pytest.raises(TypeError, match="num_sm_parts must be an int"):
        nm.Schedule(66.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lengths must be one of"):
        nm.Schedule(66, "seq_lens")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        nm.Schedule(66).num_sm_parts = 3  # type: ignore[misc]
    assert nm.Schedule(66) == nm.Schedule(66, "topk") != nm.Schedule(66, "sparse")
    inp = inputs()
    with pytest.raises(TypeError, match="schedule must be a nsa_metadata.Schedule"):
        call(nm, "decode", inp, max_len=W, schedule=66)
    with pytest.raises(ValueError, match="not draft_extend"):
        nm.prepare("draft_extend", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                   extend_lens=inp["extend_lens"], out=call(nm, "draft_extend", inp, max_len=W),
                   schedule=nm.Schedule(3))


def test_int32_limit_of_the_schedule():
    # rows * (blocks of the longest row + 5) + parts - 1 <= 2^31 - 1, the longest row being topk
    # (or topk + kpool - 1 for sparse lengths): 64 rows of 2^31 - 64 tokens fit on 1 part, not 2
    inp = inputs(bs=63)
    topk = 2**31 - 64  # 33554431 blocks + 5 = 33554436 a row; 63 rows: 2113929468
    call(nm, "decode", inp, max_len=W, topk=topk, schedule=nm.Schedule(1))
    inp = inputs(bs=64)
    with pytest.raises(ValueError, match="exceed FlashMLA's int32 arithmetic"):
        call(nm, "decode", inp, max_len=W, topk=topk, schedule=nm.Schedule(1))
    with pytest.raises(ValueError, match="exceed FlashMLA's int32 arithmetic"):
        call(nm, "decode", inputs(bs=63), max_len=W, topk=topk, kpool=2**20,
             schedule=nm.Schedule(1, "sparse"))


@pytest.mark.parametrize("mode", MODES)
def test_prepared_on_the_host(mode):
    inp = inputs(mode, bs=9)
    s = nm.Schedule(4, "sparse")
    outs = out_with_schedule(mode, inp, 4, sets=2)
    prep = nm.prepare(mode, inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                      out=outs, next_n=inp["next_n"], topk=1000, schedule=s)
    assert "schedule=Schedule(num_sm_parts=4, lengths='sparse')" in repr(prep)
    for bs in (9, 5, 0):
        prep(bs, W)
        small = {k: (v[:bs] if k in ("seq_lens", "req_pool_indices") else v) for k, v in inp.items()}
        meta, splits = expected(mode, small, 1000, s)
        for md in outs:
            np.testing.assert_array_equal(md.tile_scheduler_metadata[:4], meta)
            np.testing.assert_array_equal(md.num_splits[:len(splits)], splits)


def test_num_splits_bounds_a_prepared_step():
    inp = inputs(bs=9)
    (md,) = out_with_schedule("decode", inp, 4)
    md.num_splits = np.zeros(6, np.int32)  # 5 rows
    prep = nm.prepare("decode", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                      out=md, topk=1000, schedule=nm.Schedule(4))
    prep(5, W)
    with pytest.raises(ValueError, match="bs = 6 is outside"):
        prep(6, W)


# ------------------------------------------------------------------ through the fake device


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", ["topk", "sparse"])
def test_device_plan_is_bound_with_the_schedule(monkeypatch, mode, lengths):
    rec = fakes.install(monkeypatch)
    inp = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs(mode).items()}
    rows = rows_of(mode, inputs(mode))
    call(nm, mode, inp, max_len=W, topk=1000, schedule=nm.Schedule(66, lengths))
    assert ("torch", 1, (66, 8), 0xABC) in rec.empty and ("torch", 1, (rows + 1,), 0xABC) in rec.empty
    (plan,) = rec.plans
    assert plan.kw["num_sm_parts"] == 66
    assert plan.kw["schedule_lengths"] == nm._core.ScheduleLengths.__members__[lengths]
    (dest,) = plan.kw["dests"]
    assert dest.tile_scheduler_metadata != 0 and dest.num_splits != 0
    call(nm, mode, inp, max_len=W, topk=1000)
    assert rec.plans[1].kw["num_sm_parts"] == 0 and rec.plans[1].kw["dests"][0].num_splits == 0


def test_device_plan_cache_keys_on_the_schedule(monkeypatch):
    host = inputs()
    (md,) = out_with_schedule("decode", host, 66)
    rec = fakes.install(monkeypatch)
    inp = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
    md = nm.Metadata(**{f: None if getattr(md, f) is None else FakeTensor(getattr(md, f))
                        for f in nm.Metadata.__slots__})
    md.real_page_table = md.page_table_1  # (page_size 1)
    for s in (nm.Schedule(66), nm.Schedule(66), nm.Schedule(66, "sparse"), None,
              nm.Schedule(66, "sparse")):
        call(nm, "decode", inp, max_len=W, topk=1000, out=md, schedule=s)
    assert [p.kw["num_sm_parts"] for p in rec.plans] == [66, 66, 0]
    assert len(rec.launches) == 5


def test_binding_rejects_schedule_misuse():
    d = nm._core.Dest(tile_scheduler_metadata=16, num_splits=32)
    assert (d.tile_scheduler_metadata, d.num_splits) == (16, 32)
    args = dict(inputs=nm._core.Inputs(seq_lens=nm._core.IndexArray(),
                                       req_pool_indices=nm._core.IndexArray()),
                dests=[nm._core.Dest()], capacity=nm._core.Capacity(bs=10, rows=10), topk=2048,
                kpool=1, page_size=1, next_n=1, live=False, status=0, device=-1)
    with pytest.raises(ValueError, match="decode and target_verify only"):
        nm._core.Plan(mode=nm._core.Mode.draft_extend, num_sm_parts=3, **args)
    with pytest.raises(ValueError, match="num_sm_parts must be >= 0"):
        nm._core.Plan(mode=nm._core.Mode.decode, num_sm_parts=-1, **args)
    plan = nm._core.Plan(mode=nm._core.Mode.decode, num_sm_parts=3, **args)
    plan.check(10, 0, 0)
    big = dict(args, topk=2**31 - 1, capacity=nm._core.Capacity(bs=100, rows=100))
    plan = nm._core.Plan(mode=nm._core.Mode.decode, num_sm_parts=1, **big)
    plan.check(63, 0, 0)
    with pytest.raises(ValueError, match="int32 arithmetic"):
        plan.check(64, 0, 0)


def test_sglang_get_mla_metadata_on_the_host():
    from nsa_metadata import sglang
    for bs in (0, 1, 64, 300):
        seqlens = np.arange(bs, dtype=np.int32)
        meta, splits = sglang.get_mla_metadata(seqlens, 128, 1, 128, True, 2048, num_sm_parts=66)
        want = nm.reference.schedule(None, bs, 2048, 66)
        np.testing.assert_array_equal(meta, want[0])
        np.testing.assert_array_equal(splits, want[1])
    with pytest.raises(NotImplementedError, match="sparse"):
        sglang.get_mla_metadata(np.zeros(3, np.int32), 128, 1, 128, True, None, num_sm_parts=66)
    with pytest.raises(TypeError, match="num_sm_parts= is required"):
        sglang.get_mla_metadata(np.zeros(3, np.int32), 128, 1, 128, True, 2048)
