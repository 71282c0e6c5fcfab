"""target_verify's optional `paged_mqa_ctx_lens_2d` output (SPEC): `[bs, next_n]`, any strides,
`cache_seqlens[i]` in every column of row i; written only when given, ignored by the other modes.

The reference and its errors on NumPy, its binding on the fake device of tests/fakes.py, and the
device against the reference (marked gpu)."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import nsa_metadata as nm
import fakes
from fakes import FakeTensor
from helpers import POISON, call, random_inputs, rows_of

CTX = "paged_mqa_ctx_lens_2d"
MAX_LEN, PAGE, TOPK, NEXT_N = 40, 16, 30, 3


def inputs(mode="target_verify", bs=6, seed=0, bad_pool=False):
    return random_inputs(np.random.default_rng(seed), mode, bs, MAX_LEN, next_n=NEXT_N,
                         bad_pool=bad_pool)


def outs(mode, inp, ctx):
    """Exactly-sized poisoned outputs with `ctx` as the 2-D context lengths."""
    bs, rows = inp["seq_lens"].shape[0], rows_of(mode, inp)
    full = lambda *shape: np.full(shape, POISON, np.int32)  # noqa: E731
    return nm.Metadata(full(bs), full(bs + 1), full(rows), full(rows + 1), full(rows, MAX_LEN),
                       full(rows, -(-MAX_LEN // PAGE)), None if mode == "decode" else full(rows),
                       ctx)


def run(mode, inp, out, **kw):
    return call(nm, mode, inp, max_len=MAX_LEN, page_size=PAGE, topk=TOPK, out=out, **kw)


def layouts(bs, n):
    """(name, view, base) of [bs, n] views of poisoned bases: exact, larger, transposed, reversed."""
    exact = np.full((bs, n), POISON, np.int32)
    big = np.full((bs + 2, n + 3), POISON, np.int32)
    tbase = np.full((n + 1, 2 * bs), POISON, np.int32)
    rbase = np.full((bs, 2 * n), POISON, np.int32)
    return [("exact", exact, exact), ("larger", big[:bs + 2, :n + 3], big),
            ("transposed", tbase[1:, ::2].T, tbase), ("reversed", rbase[::-1, ::-2], rbase)]


# ----------------------------------------------------------------------------- the reference

@pytest.mark.parametrize("layout", range(4))
@pytest.mark.parametrize("live", [False, True])
def test_every_column_holds_cache_seqlens(layout, live):
    inp = inputs(seed=layout)
    name, view, base = layouts(6, NEXT_N)[layout]
    md = run("target_verify", inp, outs("target_verify", inp, view), live=live)
    want = np.repeat(md.cache_seqlens[:, None], NEXT_N, axis=1)
    np.testing.assert_array_equal(view[:6, :NEXT_N], want, err_msg=name)
    view[:6, :NEXT_N] = POISON  # the region poisoned again: nothing else may have changed
    assert (base == POISON).all(), f"{name}: written outside [bs, next_n]"


def test_other_outputs_do_not_change():
    inp = inputs()
    want = run("target_verify", inp, outs("target_verify", inp, None))
    got = run("target_verify", inp, outs("target_verify", inp, np.zeros((6, NEXT_N), np.int32)))
    for f in nm.Metadata.__slots__:
        if f != CTX:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)


def test_never_allocated():
    assert call(nm, "target_verify", inputs(), max_len=MAX_LEN).paged_mqa_ctx_lens_2d is None


def test_wraps_like_cache_seqlens():
    inp = inputs(bs=2)
    inp["seq_lens"] = np.array([2**31 - 2, 5], np.int64)
    ctx = np.zeros((2, NEXT_N), np.int32)
    md = run("target_verify", inp, outs("target_verify", inp, ctx))
    assert ctx.tolist() == [[md.cache_seqlens[0]] * NEXT_N, [5 + NEXT_N] * NEXT_N]
    assert md.cache_seqlens[0] == -(2**31) + NEXT_N - 2


def test_empty_batch():
    inp = inputs(bs=0)
    ctx = np.full((2, NEXT_N), POISON, np.int32)
    run("target_verify", inp, outs("target_verify", inp, ctx))
    assert (ctx == POISON).all()


@pytest.mark.parametrize("mode", ["decode", "draft_extend"])
def test_ignored_by_the_other_modes(mode):
    inp = inputs(mode)
    ctx = np.full((6, NEXT_N), POISON, np.int32)
    run(mode, inp, outs(mode, inp, ctx))
    assert (ctx == POISON).all()
    run(mode, inp, outs(mode, inp, "not an array"))  # not even looked at


def test_every_destination_gets_it():
    inp = inputs()
    ctxs = [np.full((6, NEXT_N), POISON, np.int32) for _ in range(3)]
    run("target_verify", inp, [outs("target_verify", inp, c) for c in ctxs[:2]]
        + [outs("target_verify", inp, None), outs("target_verify", inp, ctxs[2])])
    for c in ctxs[1:]:
        np.testing.assert_array_equal(c, ctxs[0])
    assert (ctxs[0] != POISON).all()


def test_prepared_steps_are_bounded_by_its_rows():
    inp = inputs(bs=8)
    rows = 8 * NEXT_N
    full = lambda *shape: np.full(shape, POISON, np.int32)  # noqa: E731
    ctx = full(3, NEXT_N)
    md = nm.Metadata(full(8), full(9), full(rows), full(rows + 1), full(rows, MAX_LEN),
                     full(rows, -(-MAX_LEN // PAGE)), full(rows), ctx)
    prep = nm.prepare("target_verify", inp["seq_lens"], inp["req_pool_indices"],
                      inp["req_to_token"], out=md, next_n=NEXT_N, page_size=PAGE)
    assert "bs <= 3" in repr(prep)
    with pytest.raises(ValueError, match=r"bs = 4 is outside \[0, 3\]"):
        prep(4, MAX_LEN)
    prep(2, MAX_LEN)
    assert ctx[:2].tolist() == [[int(v) + NEXT_N] * NEXT_N for v in inp["seq_lens"][:2]]
    assert (ctx[2] == POISON).all()
    with pytest.raises(ValueError, match=r"out\.paged_mqa_ctx_lens_2d has shape \(8, 2\); "
                                         r"this call needs at least \(8, 3\)"):
        nm.prepare("target_verify", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                   out=nm.Metadata(*[getattr(md, f) for f in nm.Metadata.__slots__[:7]],
                                   full(8, NEXT_N - 1)), next_n=NEXT_N, page_size=PAGE)


# ----------------------------------------------------------------------------- errors

def bad_cases(bs, n):
    ok = np.zeros((bs, n), np.int32)
    readonly = ok.copy()
    readonly.flags.writeable = False
    return [
        (ok.astype(np.int64), TypeError, r"out\.paged_mqa_ctx_lens_2d must be int32, not int64"),
        (np.zeros(bs * n, np.int32), ValueError, r"out\.paged_mqa_ctx_lens_2d must be 2-D, not 1-D"),
        (np.zeros((bs - 1, n), np.int32), ValueError,
         rf"out\.paged_mqa_ctx_lens_2d has shape \({bs - 1}, {n}\); this call needs at least \({bs}, {n}\)"),
        (np.zeros((bs, n - 1), np.int32), ValueError, r"this call needs at least"),
        (readonly, ValueError, r"out\.paged_mqa_ctx_lens_2d is read-only"),
        (as_strided(np.zeros(bs + n, np.int32), (bs, n), (4, 4)), ValueError,
         r"out\.paged_mqa_ctx_lens_2d has strides \(1, 1\): elements of its \(6, 3\) region overlap"),
        (as_strided(np.zeros(n, np.int32), (bs, n), (0, 4)), ValueError, r"region overlap"),
        ("a list", TypeError, r"out\.paged_mqa_ctx_lens_2d must be a NumPy, torch, CuPy or DLPack"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_buffer_named_before_anything_is_written(case):
    inp = inputs()
    ctx, exc, match = bad_cases(6, NEXT_N)[case]
    md = outs("target_verify", inp, ctx)
    with pytest.raises(exc, match=match):
        run("target_verify", inp, md)
    assert (md.cache_seqlens == POISON).all() and (md.page_table_1 == POISON).all()


def test_may_not_alias_another_output():
    inp = inputs()
    md = outs("target_verify", inp, None)
    md.paged_mqa_ctx_lens_2d = md.page_table_1[:6, :NEXT_N]
    with pytest.raises(ValueError, match=r"overlaps .*outputs may not alias"):
        run("target_verify", inp, md)


def test_distinct_strides_are_accepted():
    # one row or one column needs no stride at all; interleaved rows are fine
    inp = inputs(bs=1)
    run("target_verify", inp, outs("target_verify", inp, as_strided(np.zeros(NEXT_N, np.int32),
                                                                      (1, NEXT_N), (0, 4))))
    base = np.full(2 * 6 * NEXT_N, POISON, np.int32)
    inp = inputs()
    ctx = as_strided(base, (6, NEXT_N), (8 * NEXT_N, 8))  # every other element
    run("target_verify", inp, outs("target_verify", inp, ctx))
    assert (base[1::2] == POISON).all()


# ----------------------------------------------------------------------------- its binding

def test_bound_with_its_address_and_strides(monkeypatch):
    rec = fakes.install(monkeypatch)
    inp = inputs()
    base = np.full((NEXT_N + 1, 12), POISON, np.int32)
    ctx = base[1:, ::2].T
    run("target_verify", inp, [outs("target_verify", inp, ctx), outs("target_verify", inp, None)])
    (plan,) = rec.plans
    d0, d1 = plan.kw["dests"]
    assert d0.paged_mqa_ctx_lens_2d == ctx.__array_interface__["data"][0]
    assert (d0.paged_mqa_stride0, d0.paged_mqa_stride1) == (2, 12)
    assert d1.paged_mqa_ctx_lens_2d == 0


@pytest.mark.parametrize("mode", ["decode", "draft_extend"])
def test_not_bound_in_the_other_modes(monkeypatch, mode):
    rec = fakes.install(monkeypatch)
    inp = inputs(mode)
    run(mode, inp, outs(mode, inp, np.zeros((6, NEXT_N), np.int32)))
    assert rec.plans[0].kw["dests"][0].paged_mqa_ctx_lens_2d == 0


def test_a_cached_plan_is_keyed_on_it(monkeypatch):
    rec = fakes.install(monkeypatch)
    inp = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in inputs().items()}
    md = outs("target_verify", inputs(), np.zeros((6, NEXT_N), np.int32))
    md = nm.Metadata(*[None if getattr(md, f) is None else FakeTensor(getattr(md, f))
                       for f in nm.Metadata.__slots__])
    run("target_verify", inp, md)
    run("target_verify", inp, md)
    assert len(rec.plans) == 1
    md.paged_mqa_ctx_lens_2d = None
    run("target_verify", inp, md)
    assert len(rec.plans) == 2 and rec.plans[1].kw["dests"][0].paged_mqa_ctx_lens_2d == 0


# ----------------------------------------------------------------------------- the device


@pytest.mark.gpu
@pytest.mark.parametrize("layout", range(4))
@pytest.mark.parametrize("prepared", [False, True])
def test_device_equals_reference(lib, layout, prepared):
    if lib.name == "torch" and layout == 3:
        pytest.skip("torch has no negative strides")
    inp = inputs(seed=10 + layout, bad_pool=True)
    _, view, base = layouts(6, NEXT_N)[layout]
    want = run("target_verify", inp, outs("target_verify", inp, view))
    dbase = lib.to_device(np.full(base.shape, POISON, np.int32))
    dview = lib.view_like(dbase, view, base)
    dev = {k: lib.to_device(v) if isinstance(v, np.ndarray) else v for k, v in inp.items()}
    dmd = nm.Metadata(*[None if getattr(want, f) is None
                        else lib.to_device(np.full_like(getattr(want, f), POISON))
                        for f in nm.Metadata.__slots__[:7]], dview)
    if prepared:
        nm.prepare("target_verify", dev["seq_lens"], dev["req_pool_indices"], dev["req_to_token"],
                   out=dmd, next_n=NEXT_N, topk=TOPK, page_size=PAGE)(6, MAX_LEN)
    else:
        run("target_verify", dev, dmd)
    lib.synchronize()
    np.testing.assert_array_equal(lib.to_host(dbase), base)
    for f in nm.Metadata.__slots__[:7]:
        np.testing.assert_array_equal(lib.to_host(getattr(dmd, f)), getattr(want, f), err_msg=f)
