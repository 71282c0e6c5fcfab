"""Device and stream selection, checked on the host (no GPU, no torch or CuPy needed).

The arrays are NumPy arrays that the fake device layer of tests/fakes.py presents as torch
arrays on cuda:1 (or on the device a test assigns to one of them). It records what the API asks
for (allocations, status words, current streams) and every Plan built and launched. So these
tests see which device the plan is bound to and which stream each launch goes to, exactly as the
real path would pass them, without a device.
"""

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import _arrays, _core, _plans
from fakes import SENTINEL, FakeTensor
from helpers import POISON, call, random_inputs, rows_of

MODES = ["decode", "target_verify", "draft_extend"]
MAX_LEN, PAGE, TOPK = 40, 16, 30
KIND = _core.BadKind


def inputs(mode, bs=9, seed=0):
    return random_inputs(np.random.default_rng(seed), mode, bs, MAX_LEN, bad_pool=False)


def out_for(mode, inp):
    """Exactly-sized poisoned NumPy outputs for `inp` (they will claim cuda:1 like the inputs)."""
    bs, rows = inp["seq_lens"].shape[0], rows_of(mode, inp)
    full = lambda *shape: np.full(shape, POISON, np.int32)  # noqa: E731
    return nm.Metadata(full(bs), full(bs + 1), full(rows), full(rows + 1), full(rows, MAX_LEN),
                       full(rows, -(-MAX_LEN // PAGE)), None if mode == "decode" else full(rows),
                       full(bs, inp["next_n"]) if mode == "target_verify" else None)


def vars_of(md):
    return {f: getattr(md, f) for f in nm.Metadata.__slots__}


def untouched(md):
    return all(getattr(md, f) is None or (getattr(md, f) == POISON).all() for f in nm.Metadata.__slots__)


# ----------------------------------------------------------------------------- tests

@pytest.mark.parametrize("mode", MODES)
def test_plan_and_stream_of_the_arrays_device(rec, mode):
    inp = inputs(mode)
    md = call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK)
    assert len(rec.plans) == 1 and rec.plans[0].mode == _core.Mode.__members__[mode]
    assert rec.plans[0].device == 1, "the plan must be built for the arrays' device"
    assert rec.plans[0].status == 0, "no status word without check=True"
    assert rec.streams == [1], "the current stream asked for must be cuda:1's"
    rows = rows_of(mode, inp)
    total = rows if mode == "draft_extend" else 0
    assert rec.launches == [(inp["seq_lens"].shape[0], MAX_LEN, total, SENTINEL)]
    # every output was allocated with the inputs' library on their device, and returned
    assert rec.empty and all(lib == "torch" and dev == 1 for lib, dev, _, _ in rec.empty)
    assert all(stream == SENTINEL for *_, stream in rec.empty), "allocated on the launch stream"
    assert len(rec.empty) == (6 if mode == "decode" else 7)
    assert md.page_table_1.shape == (rows, MAX_LEN)
    assert md.real_page_table.shape == (rows, -(-MAX_LEN // PAGE))
    assert (md.seqlens_expanded is None) == (mode == "decode")
    assert not rec.status


@pytest.mark.parametrize("mode", MODES)
def test_page_size_one_allocates_one_table(rec, mode):
    md = call(nm, mode, inputs(mode), max_len=MAX_LEN, page_size=1, topk=TOPK)
    assert md.real_page_table is md.page_table_1
    assert len(rec.empty) == (5 if mode == "decode" else 6)
    assert all(dev == 1 for _, dev, _, _ in rec.empty)


@pytest.mark.parametrize("mode", MODES)
def test_explicit_stream_is_used_as_given(rec, mode):
    inp = inputs(mode)
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=0x5EED)
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=0)  # 0: legacy default

    class TorchLike:  # torch.cuda.Stream exposes .cuda_stream
        cuda_stream = 0x1234

    class CupyLike:  # cupy.cuda.Stream exposes .ptr
        ptr = 0x4321

    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=TorchLike())
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=CupyLike())
    assert [launch[3] for launch in rec.launches] == [0x5EED, 0, 0x1234, 0x4321]
    assert rec.streams == [], "with stream= given the current stream is not consulted"
    assert [p.device for p in rec.plans] == [1, 1, 1, 1]


@pytest.mark.parametrize("mode", MODES)
def test_out_given(rec, mode):
    inp = inputs(mode)
    md = out_for(mode, inp)
    got = call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md)
    assert got is md
    got = call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=[md], stream=7)
    assert isinstance(got, list) and got[0] is md
    assert rec.empty == [], "no allocation when the outputs are given"
    assert [p.device for p in rec.plans] == [1, 1]
    assert rec.streams == [1]
    assert [launch[3] for launch in rec.launches] == [SENTINEL, 7]
    assert untouched(md), "the (fake) device writes nothing; the host must not either"


@pytest.mark.parametrize("mode", MODES)
def test_cached_plan_keeps_device_and_stream(rec, monkeypatch, mode):
    """With out= given the API reuses the validated plan of identical arguments: the reused
    plan still launches on cuda:1's current stream, or on the stream passed."""
    inp = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs(mode).items()}
    md = nm.Metadata(**{f: None if x is None else FakeTensor(x)
                        for f, x in vars_of(out_for(mode, inputs(mode))).items()})
    for stream in (None, None, 0x77, None):
        call(nm, mode, inp, rows_of(mode, inputs(mode)), max_len=MAX_LEN, page_size=PAGE,
             topk=TOPK, out=md, stream=stream)
    assert len(rec.plans) == 1 and rec.plans[0].device == 1, "one validation, for cuda:1"
    assert len(_plans.PLANS) == 1
    assert [launch[3] for launch in rec.launches] == [SENTINEL, SENTINEL, 0x77, SENTINEL]
    assert rec.streams == [1, 1, 1]
    # max_len travels per call; a changed scalar of the binding is a different key
    call(nm, mode, inp, rows_of(mode, inputs(mode)), max_len=MAX_LEN - 1, page_size=PAGE,
         topk=TOPK, out=md)
    assert len(rec.plans) == 1
    call(nm, mode, inp, rows_of(mode, inputs(mode)), max_len=MAX_LEN, page_size=PAGE,
         topk=TOPK + 1, out=md)
    assert len(rec.plans) == 2 and rec.plans[1].device == 1
    assert rec.launches[-2:] == [(inp["seq_lens"].shape[0], n, rows_of(mode, inputs(mode))
                                  if mode == "draft_extend" else 0, SENTINEL)
                                 for n in (MAX_LEN - 1, MAX_LEN)]


@pytest.mark.parametrize("mode", MODES)
def test_check_true_status_word_on_the_same_device(rec, mode):
    """check=True: the status word on the arrays' device, and the host waits for the stream the
    kernel was launched on (the current one of cuda:1, or the one passed) before reading it."""
    inp = inputs(mode)
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True)
    assert rec.status == [("torch", 1, SENTINEL)]
    assert rec.plans[0].device == 1 and rec.plans[0].status != 0, "the plan gets the status word's address"
    assert rec.launches[0][3] == SENTINEL
    assert rec.syncs == [("torch", 1, SENTINEL)]
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True, stream=0x31)
    assert rec.launches[1][3] == 0x31
    assert rec.syncs[1] == ("torch", 1, 0x31)
    assert rec.streams == [1]
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK)
    assert len(rec.syncs) == 2, "only check=True waits on the host"


@pytest.mark.parametrize("mode", MODES)
def test_check_true_reports_the_element_the_device_names(rec, monkeypatch, mode):
    """The status word (index << 3 | kind) is decoded into the message naming the element."""
    inp = inputs(mode)
    P = inp["req_to_token"].shape[0]
    inp["req_pool_indices"][4] = P + 3
    monkeypatch.setattr(_arrays, "empty_status",
                        lambda lib, device, stream: np.array([4 << 3 | KIND.bad_pool_index], np.int64))
    with pytest.raises(ValueError, match=rf"req_pool_indices\[4\] = {P + 3} is outside \[0, {P}\)"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True)
    inp["seq_lens"][2] = -9
    monkeypatch.setattr(_arrays, "empty_status",
                        lambda lib, device, stream: np.array([2 << 3 | KIND.negative_length], np.int64))
    with pytest.raises(ValueError, match=r"seq_lens\[2\] = -9 is negative"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True)
    monkeypatch.setattr(_arrays, "empty_status",
                        lambda lib, device, stream: np.array([1 << 3 | KIND.overflow], np.int64))
    with pytest.raises(ValueError, match=rf"seq_lens\[1\] = {inp['seq_lens'][1]} overflows int32"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True)


def test_check_true_reports_extend_lens_and_total(rec, monkeypatch):
    inp = inputs("draft_extend")
    bs = inp["seq_lens"].shape[0]
    inp["extend_lens"][3] = -2
    monkeypatch.setattr(_arrays, "empty_status",
                        lambda lib, device, stream: np.array([3 << 3 | KIND.bad_extend], np.int64))
    with pytest.raises(ValueError, match=r"extend_lens\[3\] = -2 is negative"):
        call(nm, "draft_extend", inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, check=True)
    monkeypatch.setattr(_arrays, "empty_status",
                        lambda lib, device, stream: np.array([bs << 3 | KIND.bad_total], np.int64))
    live = int(np.maximum(inp["extend_lens"], 0).sum())
    with pytest.raises(ValueError, match=rf"total = {live + 5} but sum\(extend_lens\) = {live}"):
        call(nm, "draft_extend", inp, live + 5, max_len=MAX_LEN, page_size=PAGE, topk=TOPK,
             check=True)


@pytest.mark.parametrize("mode, name", [(m, n) for m in MODES
                                         for n in ("req_pool_indices", "req_to_token", "extend_lens")
                                         if n != "extend_lens" or m == "draft_extend"])
def test_inputs_on_two_devices(rec, mode, name):
    inp = inputs(mode)
    md = out_for(mode, inp)
    rec.devices[id(inp[name])] = 0
    with pytest.raises(ValueError, match=rf"{name} is on cuda:0 but seq_lens is on cuda:1"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md)
    assert not rec.plans and not rec.launches and not rec.empty and not rec.streams
    assert untouched(md)


@pytest.mark.parametrize("mode", MODES)
def test_seq_lens_on_another_device_than_the_rest(rec, mode):
    inp = inputs(mode)
    rec.devices[id(inp["seq_lens"])] = 0
    with pytest.raises(ValueError, match="req_pool_indices is on cuda:1 but seq_lens is on cuda:0"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK)
    assert not rec.plans and not rec.launches and not rec.empty


@pytest.mark.parametrize("mode, field", [(m, f) for m in MODES for f in nm.Metadata.__slots__
                                          if (f != "seqlens_expanded" or m != "decode")
                                          and (f != "paged_mqa_ctx_lens_2d" or m == "target_verify")
                                          and f not in ("tile_scheduler_metadata", "num_splits")])
def test_output_on_another_device(rec, mode, field):
    inp = inputs(mode)
    md = out_for(mode, inp)
    rec.devices[id(getattr(md, field))] = 0
    with pytest.raises(ValueError, match=rf"out\.{field} is on cuda:0 but the inputs are on cuda:1"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md)
    assert not rec.plans and not rec.launches and not rec.streams
    assert untouched(md)


@pytest.mark.parametrize("mode", MODES)
def test_output_on_the_host_or_other_device_in_a_list(rec, mode):
    inp = inputs(mode)
    mds = [out_for(mode, inp) for _ in range(3)]
    rec.devices[id(mds[2].nsa_cu_seqlens_k)] = None  # the host
    with pytest.raises(ValueError,
                       match=r"out\[2\]\.nsa_cu_seqlens_k is on the host but the inputs are on cuda:1"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=mds)
    rec.devices[id(mds[2].nsa_cu_seqlens_k)] = 1
    rec.devices[id(mds[1].cache_seqlens)] = 2
    with pytest.raises(ValueError,
                       match=r"out\[1\]\.cache_seqlens is on cuda:2 but the inputs are on cuda:1"):
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=mds)
    assert not rec.plans and not rec.launches
    assert all(untouched(md) for md in mds)


@pytest.mark.parametrize("mode", MODES)
def test_cached_plan_does_not_hide_a_device_change(rec, mode):
    """After a cached call, the same buffers claiming another device are validated again: the
    cache key holds each array's device (bug 11; no patched key here)."""
    inp = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs(mode).items()}
    md = nm.Metadata(**{f: None if x is None else FakeTensor(x)
                        for f, x in vars_of(out_for(mode, inputs(mode))).items()})
    total = rows_of(mode, inputs(mode))
    call(nm, mode, inp, total, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md)
    md.page_table_1 = FakeTensor(md.page_table_1.a, 0)  # the same address, now on cuda:0
    with pytest.raises(ValueError, match=r"out\.page_table_1 is on cuda:0"):
        call(nm, mode, inp, total, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md)
    assert len(rec.launches) == 1


@pytest.mark.parametrize("mode", MODES)
def test_prepared_plan_device_and_streams(rec, mode):
    inp = inputs(mode)
    md = out_for(mode, inp)
    kw = dict(next_n=inp["next_n"]) if mode == "target_verify" else {}
    if mode == "draft_extend":
        kw["extend_lens"] = inp["extend_lens"]
    plan = nm.prepare(mode, inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], out=md,
                      page_size=PAGE, topk=TOPK, **kw)
    assert [p.device for p in rec.plans] == [1]
    plan(5, MAX_LEN - 3, 2)
    plan(4, MAX_LEN, 1, stream=0x99)
    assert rec.launches == [(5, MAX_LEN - 3, 2, SENTINEL), (4, MAX_LEN, 1, 0x99)]
    assert rec.streams == [1]
    bs, rows = inp["seq_lens"].shape[0], rows_of(mode, inp)
    c = rec.plans[0].capacity
    assert (c.bs, c.rows, c.width, c.real_width) == (bs, rows, MAX_LEN, -(-MAX_LEN // PAGE))
    assert untouched(md)


@pytest.mark.parametrize("mode", MODES)
def test_prepared_output_on_another_device(rec, mode):
    inp = inputs(mode)
    md = out_for(mode, inp)
    rec.devices[id(md.real_page_table)] = 0
    kw = dict(extend_lens=inp["extend_lens"]) if mode == "draft_extend" else {}
    with pytest.raises(ValueError,
                       match=r"out\.real_page_table is on cuda:0 but the inputs are on cuda:1"):
        nm.prepare(mode, inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], out=md,
                   page_size=PAGE, **kw)
    assert not rec.plans


def test_host_arrays_never_reach_the_device_layer(monkeypatch):
    """Without the patches: NumPy arrays run the reference; no plan, no stream lookup."""
    def refuse(*args, **kwargs):
        raise AssertionError("the device layer was used for host arrays")

    monkeypatch.setattr(_core, "Plan", refuse)
    monkeypatch.setattr(_arrays, "current_stream", refuse)
    monkeypatch.setattr(_arrays, "current_stream_getter", refuse)
    for mode in MODES:
        inp = inputs(mode)
        md = out_for(mode, inp)
        call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=md, stream=0x5)
        assert not untouched(md)
    assert not _plans.PLANS


@pytest.mark.parametrize("mode", MODES)
def test_outputs_are_allocated_on_the_stream_that_writes_them(rec, mode):
    """Bug 3: with out=None and stream= another stream, the outputs were allocated on the
    current stream and written on the other, so the allocator could hand their memory out again
    while the kernel wrote it. They (and check=True's status word) belong to the launch stream."""
    inp = inputs(mode)
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=0x5EED)
    assert rec.empty and all(stream == 0x5EED for *_, stream in rec.empty)
    assert rec.launches[-1][3] == 0x5EED
    rec.empty.clear()
    call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, stream=0x5EED, check=True)
    assert rec.empty and all(stream == 0x5EED for *_, stream in rec.empty)
    assert rec.status == [("torch", 1, 0x5EED)]
    assert rec.streams == [], "the current stream is not consulted"


def test_prepared_draft_extend_needs_total(rec):
    """Bug 8: without total, a prepared draft_extend step raised on the host and silently wrote
    zero rows on the GPU. total is required in draft_extend everywhere."""
    inp = inputs("draft_extend")
    md = out_for("draft_extend", inp)
    plan = nm.prepare("draft_extend", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                      out=md, extend_lens=inp["extend_lens"], page_size=PAGE, topk=TOPK)
    with pytest.raises(TypeError, match="draft_extend needs total"):
        plan(4, MAX_LEN)
    with pytest.raises(TypeError, match="draft_extend needs total"):
        plan(4, MAX_LEN, stream=3)
    assert rec.launches == []
    plan(4, MAX_LEN, int(inp["extend_lens"][:4].sum()))
    assert len(rec.launches) == 1
