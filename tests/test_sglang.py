"""nsa_metadata.sglang on any machine: SGLang's signatures, the results (SPEC with live=True) on
host arrays against the reference, the errors (named as SGLang names its arguments), the binding
of each set of buffers once (on the fake device of tests/fakes.py), and the multi-step pattern
(one call with N destinations instead of one build and N copies).

tests/test_sglang_parity.py compares with SGLang's own kernels on a GPU."""

import gc
import inspect
import subprocess
import sys

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import sglang as sg
import fakes
from fakes import SENTINEL, FakeTensor
from helpers import POISON

P, W, CAP, NEXT_N, EXT = 12, 300, 8, 3, 4

# SGLang 0.5.23's parameters in order (sglang/kernels/ops/attention/dsa/kpool_metadata/*.py,
# the variants with index_kpool; the plain ones in dsa/metadata.py stop before index_kpool).
RELEASE = {
    "fused_dsa_decode_metadata": [
        "seq_lens", "req_pool_indices", "req_to_token", "cache_seqlens", "cu_seqlens_k",
        "page_table_1", "dsa_cache_seqlens", "dsa_cu_seqlens_k", "real_page_table", "bs",
        "max_len", "dsa_index_topk", "physical_page_size", "index_kpool"],
    "fused_dsa_target_verify_metadata": [
        "seq_lens", "req_pool_indices", "req_to_token", "cache_seqlens", "cu_seqlens_k",
        "page_table_1", "seqlens_expanded", "dsa_cache_seqlens", "dsa_cu_seqlens_k",
        "real_page_table", "bs", "max_seqlen_k", "dsa_index_topk", "physical_page_size", "next_n",
        "paged_mqa_ctx_lens_2d", "index_kpool"],
    "fused_dsa_draft_extend_metadata": [
        "seq_lens", "extend_seq_lens", "req_pool_indices", "req_to_token", "cache_seqlens",
        "cu_seqlens_k", "page_table_1", "seqlens_expanded", "dsa_cache_seqlens",
        "dsa_cu_seqlens_k", "real_page_table", "bs", "total_len", "max_seqlen_k",
        "dsa_index_topk", "physical_page_size", "max_extend_len", "max_total_len",
        "static_extend_len", "index_kpool"],
}
MODES = ["decode", "target_verify", "draft_extend"]


# ----------------------------------------------------------------------------- a batch

def batch(seed, bs=6, idx=np.int64, ext_lens=None):
    """Persistent inputs of CAP requests (the first bs live) and a token table."""
    rng = np.random.default_rng(seed)
    table = rng.integers(-5, 2**24, size=(P, W)).astype(np.int32)
    seq_lens = rng.integers(0, W - NEXT_N + 1, size=CAP).astype(idx)
    seq_lens[:2] = [W - NEXT_N, 1]
    pool = rng.permutation(P)[:CAP].astype(idx)
    ext = (rng.integers(0, EXT + 1, size=CAP) if ext_lens is None else np.asarray(ext_lens)).astype(idx)
    return dict(seq_lens=seq_lens, req_pool_indices=pool, req_to_token=table, extend_lens=ext, bs=bs)


def buffers(mode, page_size, wide=True, ctx=False):
    """Poisoned persistent outputs (SGLang's names) with room for CAP requests."""
    rows = CAP * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else EXT)
    full = lambda *shape: np.full(shape, POISON, np.int32)  # noqa: E731
    b = dict(cache_seqlens=full(CAP), cu_seqlens_k=full(CAP + 1), dsa_cache_seqlens=full(rows),
             dsa_cu_seqlens_k=full(rows + 1), page_table_1=full(rows, W) if wide else None,
             real_page_table=full(rows, -(-W // page_size)))
    if page_size == 1 and wide:
        b["real_page_table"] = b["page_table_1"]
    if mode != "decode":
        b["seqlens_expanded"] = full(rows)
    if ctx:
        b["paged_mqa_ctx_lens_2d"] = full(CAP, NEXT_N)
    return b


def call_sglang(mode, d, b, *, page_size, topk=64, kpool=1, static=False, total=None,
                page_kw="physical_page_size", max_len=W):
    """SGLang's call, by keyword as its backend calls (page size by either spelling)."""
    bs = d["bs"]
    kw = dict(seq_lens=d["seq_lens"][:bs], req_pool_indices=d["req_pool_indices"][:bs],
              req_to_token=d["req_to_token"], dsa_index_topk=topk, index_kpool=kpool, bs=bs,
              **{page_kw: page_size}, **b)
    if mode == "decode":
        return sg.fused_dsa_decode_metadata(max_len=max_len, **kw)
    if mode == "target_verify":
        return sg.fused_dsa_target_verify_metadata(max_seqlen_k=max_len, next_n=NEXT_N, **kw)
    ext = d["extend_lens"][:bs]
    if total is None:
        host = getattr(ext, "a", ext)  # (a FakeTensor's NumPy array)
        total = bs * int(host[0]) if static else int(host.sum())
    return sg.fused_dsa_draft_extend_metadata(
        extend_seq_lens=ext, max_seqlen_k=max_len, total_len=total, max_extend_len=EXT,
        max_total_len=CAP * EXT, static_extend_len=static, **kw)


def expected(mode, d, b, *, page_size, topk=64, kpool=1, static=False, max_len=W):
    """The reference (live=True) into the same poisoned buffers, SPEC's names."""
    bs = d["bs"]
    want = {k: None if v is None else np.full(v.shape, POISON, np.int32) for k, v in b.items()}
    if page_size == 1 and b.get("page_table_1") is not None:
        want["real_page_table"] = want["page_table_1"]
    md = nm.Metadata(want["cache_seqlens"], want["cu_seqlens_k"], want["dsa_cache_seqlens"],
                     want["dsa_cu_seqlens_k"], want["page_table_1"], want["real_page_table"],
                     want.get("seqlens_expanded"), want.get("paged_mqa_ctx_lens_2d"))
    args = (d["seq_lens"][:bs], d["req_pool_indices"][:bs], d["req_to_token"])
    kw = dict(max_len=max_len, topk=topk, kpool=kpool, page_size=page_size, live=True, out=md)
    if mode == "decode":
        nm.reference.decode(*args, **kw)
    elif mode == "target_verify":
        nm.reference.target_verify(*args, next_n=NEXT_N, **kw)
    else:
        ext = np.full(bs, d["extend_lens"][0]) if static else d["extend_lens"][:bs]
        nm.reference.draft_extend(args[0], ext.astype(d["extend_lens"].dtype), *args[1:],
                                  total=int(np.maximum(ext, 0).sum()), **kw)
    return want


def assert_same(got, want):
    for k, v in want.items():
        if v is None:
            assert got[k] is None, k
        else:
            np.testing.assert_array_equal(got[k], v, err_msg=k)


# ----------------------------------------------------------------------------- the signatures

@pytest.mark.parametrize("name", sorted(RELEASE))
def test_parameters_are_the_releases_in_order(name):
    params = inspect.signature(getattr(sg, name)).parameters
    positional = [p.name for p in params.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == RELEASE[name]
    keyword_only = [p.name for p in params.values() if p.kind == p.KEYWORD_ONLY]
    assert keyword_only == ["real_page_size"], "SGLang main's spelling of the page size"


def test_imports_without_torch_cupy_or_sglang():
    code = ("import sys\nfor m in ('torch', 'cupy', 'sglang', 'triton'): sys.modules[m] = None\n"
            "import nsa_metadata.sglang as s\nprint(s.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "fused_dsa_decode_metadata" in out.stdout


# ----------------------------------------------------------------------------- results

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("page_size", [1, 64])
@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("idx", [np.int32, np.int64])
def test_equals_the_reference_live(mode, page_size, wide, idx):
    if page_size == 1 and not wide:
        pytest.skip("page size 1: the real table is page_table_1")
    d = batch(7, idx=idx)
    b = buffers(mode, page_size, wide, ctx=mode == "target_verify")
    call_sglang(mode, d, b, page_size=page_size)
    assert_same(b, expected(mode, d, b, page_size=page_size))


@pytest.mark.parametrize("mode", MODES)
def test_kpool_and_the_main_spelling(mode):
    d = batch(3)
    b = buffers(mode, 64)
    call_sglang(mode, d, b, page_size=64, topk=48, kpool=16, page_kw="real_page_size")
    assert_same(b, expected(mode, d, b, page_size=64, topk=48, kpool=16))


def test_positional_call_as_the_release_writes_it():
    d, b = batch(4), buffers("target_verify", 64, ctx=True)
    bs = d["bs"]
    sg.fused_dsa_target_verify_metadata(
        d["seq_lens"][:bs], d["req_pool_indices"][:bs], d["req_to_token"], b["cache_seqlens"],
        b["cu_seqlens_k"], b["page_table_1"], b["seqlens_expanded"], b["dsa_cache_seqlens"],
        b["dsa_cu_seqlens_k"], b["real_page_table"], bs, W, 64, 64, NEXT_N,
        b["paged_mqa_ctx_lens_2d"])
    assert_same(b, expected("target_verify", d, b, page_size=64))


def test_static_extend_len_reads_only_the_first_length():
    d = batch(5, ext_lens=[3] + [0, 4, 1, 2, 9, 9, 9])  # the rest: anything
    b = buffers("draft_extend", 64)
    call_sglang("draft_extend", d, b, page_size=64, static=True)
    assert_same(b, expected("draft_extend", d, b, page_size=64, static=True))
    assert (b["seqlens_expanded"][:18] != POISON).all() and (b["seqlens_expanded"][18:] == POISON).all()


def test_static_with_padded_requests_clamps_to_zero():
    d = batch(6, ext_lens=[4] * CAP)
    d["seq_lens"][:6] = [1, 1, 50, 2, 1, 7]  # padding rows: seq_len 1 < 4 draft tokens
    b = buffers("draft_extend", 64)
    call_sglang("draft_extend", d, b, page_size=64, static=True)
    assert_same(b, expected("draft_extend", d, b, page_size=64, static=True))
    assert b["seqlens_expanded"][:4].tolist() == [0, 0, 0, 1]


def test_page_size_one_leaves_a_separate_real_table_alone():
    d, b = batch(8), buffers("decode", 1)
    b["real_page_table"] = np.full((CAP, W), POISON, np.int32)  # SGLang ignores it with page 1
    call_sglang("decode", d, b, page_size=1)
    assert (b["real_page_table"] == POISON).all()
    assert (b["page_table_1"][0, :W - NEXT_N] != POISON).all()


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_writes_only_the_zero_heads(mode):
    d, b = batch(9, bs=0), buffers(mode, 64)
    call_sglang(mode, d, b, page_size=64, max_len=W + 1000)  # bs 0: max_len is not looked at
    for k, v in b.items():
        if k in ("cu_seqlens_k", "dsa_cu_seqlens_k"):
            assert v[0] == 0 and (v[1:] == POISON).all(), k
        elif v is not None:
            assert (v == POISON).all(), k


def test_draft_extend_with_total_len_zero():
    d, b = batch(10, ext_lens=[0] * CAP), buffers("draft_extend", 64)
    call_sglang("draft_extend", d, b, page_size=64, total=0)
    assert_same(b, expected("draft_extend", d, b, page_size=64))
    assert (b["cache_seqlens"][:6] != POISON).all() and b["dsa_cu_seqlens_k"][0] == 0
    assert (b["dsa_cache_seqlens"] == POISON).all()


# ----------------------------------------------------------------------------- errors

def errs(mode="decode", **change):
    d, b = batch(11), buffers(mode, 64)
    kw = dict(page_size=64)
    for k, v in change.items():
        if k in b or k == "paged_mqa_ctx_lens_2d":
            b[k] = v
        elif k in d:
            d[k] = v
        else:
            kw[k] = v
    return lambda: call_sglang(mode, d, b, **kw), b


@pytest.mark.parametrize("mode, change, exc, match", [
    ("decode", dict(dsa_cache_seqlens=np.zeros(CAP, np.int64)), TypeError,
     r"^dsa_cache_seqlens must be int32, not int64$"),
    ("decode", dict(dsa_cu_seqlens_k=np.zeros(3, np.int32)), ValueError,
     r"^dsa_cu_seqlens_k has shape \(3,\); this call needs at least"),
    ("decode", dict(cache_seqlens=None), ValueError, r"^cache_seqlens is required"),
    ("decode", dict(topk=0), ValueError, r"^dsa_index_topk = 0 is outside \[1, "),
    ("decode", dict(kpool="2"), TypeError, r"^index_kpool must be an int, not str$"),
    ("decode", dict(page_size=0), ValueError, r"^physical_page_size = 0 is outside \[1, "),
    ("decode", dict(page_size=0, page_kw="real_page_size"), ValueError, r"^real_page_size = 0"),
    ("decode", dict(bs=CAP + 1), ValueError, rf"^bs = {CAP + 1} is outside \[0, {CAP}\]"),
    ("decode", dict(max_len=W + 1), ValueError, rf"^max_len = {W + 1} is outside \[0, {W}\]$"),
    ("decode", dict(max_len=1.5), TypeError, r"^max_len must be an int, not float$"),
    ("target_verify", dict(max_len=W + 1), ValueError, rf"^max_seqlen_k = {W + 1} is outside"),
    ("target_verify", dict(paged_mqa_ctx_lens_2d=np.zeros((CAP, NEXT_N - 1), np.int32)),
     ValueError, r"^paged_mqa_ctx_lens_2d has shape"),
    ("draft_extend", dict(extend_lens=np.zeros(CAP, np.float32)), TypeError,
     r"^extend_seq_lens must be int32 or int64, not float32$"),
    ("draft_extend", dict(total=CAP * EXT + 1), ValueError,
     rf"^total_len = {CAP * EXT + 1} exceeds max_total_len = {CAP * EXT}$"),
    ("draft_extend", dict(total=-1), ValueError, r"^total_len = -1 is outside \[0, "),
    ("draft_extend", dict(seqlens_expanded=np.zeros(5, np.int32)), ValueError,
     r"^seqlens_expanded has shape \(5,\)"),
])
def test_bad_input_names_sglangs_argument(mode, change, exc, match):
    run, b = errs(mode, **change)
    with pytest.raises(exc, match=match):
        run()
    for k, v in b.items():  # nothing written, before or after the error
        assert k in change or v is None or (v == POISON).all(), f"{k} written"


def test_next_n_below_one_and_missing():
    d, b = batch(12), buffers("target_verify", 64)
    bs = d["bs"]
    args = (d["seq_lens"][:bs], d["req_pool_indices"][:bs], d["req_to_token"], b["cache_seqlens"],
            b["cu_seqlens_k"], b["page_table_1"], b["seqlens_expanded"], b["dsa_cache_seqlens"],
            b["dsa_cu_seqlens_k"], b["real_page_table"], bs, W, 64, 64)
    with pytest.raises(ValueError, match=r"^next_n = 0 is outside \[1, "):
        sg.fused_dsa_target_verify_metadata(*args, 0)
    with pytest.raises(TypeError, match="needs next_n"):
        sg.fused_dsa_target_verify_metadata(*args)


def test_page_size_missing_or_given_twice():
    d, b = batch(13), buffers("decode", 64)
    bs = d["bs"]
    args = (d["seq_lens"][:bs], d["req_pool_indices"][:bs], d["req_to_token"], b["cache_seqlens"],
            b["cu_seqlens_k"], b["page_table_1"], b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"],
            b["real_page_table"], bs, W, 64)
    with pytest.raises(TypeError, match="missing the page size"):
        sg.fused_dsa_decode_metadata(*args)
    with pytest.raises(TypeError, match="got both"):
        sg.fused_dsa_decode_metadata(*args, 64, real_page_size=64)


def test_total_len_beyond_bs_times_max_extend_len():
    d, b = batch(14), buffers("draft_extend", 64)
    bs = d["bs"]
    with pytest.raises(ValueError, match=r"^total_len = 13 exceeds bs \* max_extend_len = 6 \* 2$"):
        sg.fused_dsa_draft_extend_metadata(
            d["seq_lens"][:bs], d["extend_lens"][:bs], d["req_pool_indices"][:bs],
            d["req_to_token"], b["cache_seqlens"], b["cu_seqlens_k"], b["page_table_1"],
            b["seqlens_expanded"], b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"],
            b["real_page_table"], bs, 13, W, 64, 64, 2, CAP * EXT)


# ----------------------------------------------------------------------------- binding once

def on_fake_device(d, b):
    """The same batch and buffers as FakeTensors (torch arrays on cuda:1 to the package)."""
    dd = {k: FakeTensor(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}
    bb = {k: None if v is None else FakeTensor(v) for k, v in b.items()}
    if b.get("real_page_table") is b.get("page_table_1"):
        bb["real_page_table"] = bb["page_table_1"]
    return dd, bb


@pytest.mark.parametrize("mode", MODES)
def test_one_plan_per_buffer_set_and_one_launch_per_call(monkeypatch, mode):
    rec = fakes.install(monkeypatch)
    d, b = on_fake_device(batch(15), buffers(mode, 64))
    for bs in (6, 6, 6):  # fresh seq_lens[:bs] views each call, as SGLang passes them
        call_sglang(mode, dict(d, bs=bs), b, page_size=64)
    assert len(rec.plans) == 1
    plan = rec.plans[0]
    assert plan.kw["live"] is True and plan.kw["device"] == 1 and plan.capacity.bs == 6
    total = int(d["extend_lens"].a[:6].sum()) if mode == "draft_extend" else 0
    assert rec.launches == [(6, W, total, SENTINEL)] * 3


def test_new_buffers_or_a_new_batch_bind_again(monkeypatch):
    rec = fakes.install(monkeypatch)
    d, b = on_fake_device(batch(16), buffers("decode", 64))
    call_sglang("decode", d, b, page_size=64)
    call_sglang("decode", dict(d, bs=4), b, page_size=64)  # seq_lens[:4]: another length
    assert len(rec.plans) == 2
    b2 = dict(b, cache_seqlens=FakeTensor(b["cache_seqlens"].a))  # same memory, new object
    call_sglang("decode", d, b2, page_size=64)
    assert len(rec.plans) == 3
    call_sglang("decode", d, b, page_size=64, topk=32)
    assert len(rec.plans) == 4
    for _ in range(2):
        call_sglang("decode", d, b, page_size=64)
        call_sglang("decode", dict(d, bs=4), b, page_size=64)
    assert len(rec.plans) == 4


def test_a_dead_buffer_is_never_launched_into(monkeypatch):
    # a new buffer object at the dead one's id() and address: only the weak reference tells them
    # apart (CPython may or may not reuse the id, so the test makes it)
    rec = fakes.install(monkeypatch)
    d, b = on_fake_device(batch(17), buffers("decode", 64))
    call_sglang("decode", d, b, page_size=64)
    keep, dead_id = b["cache_seqlens"].a, id(b["cache_seqlens"])
    del b["cache_seqlens"]
    gc.collect()
    new = b["cache_seqlens"] = FakeTensor(keep)
    asked = []

    def fake_id(a):
        asked.append(a is new)
        return dead_id if a is new else id(a)

    monkeypatch.setattr(sg, "id", fake_id, raising=False)
    call_sglang("decode", d, b, page_size=64)
    assert any(asked), "the key did not read the new buffer's id through sglang's id"
    assert len(rec.plans) == 2


def test_static_extend_len_binds_a_zero_stride(monkeypatch):
    rec = fakes.install(monkeypatch)
    d, b = on_fake_device(batch(18, ext_lens=[2] * CAP), buffers("draft_extend", 64))
    call_sglang("draft_extend", d, b, page_size=64, static=True)
    call_sglang("draft_extend", d, b, page_size=64, static=False)
    static, dynamic = (p.kw["inputs"].extend_lens for p in rec.plans)
    assert static.stride == 0 and dynamic.stride == 1
    assert static.data == dynamic.data == d["extend_lens"].data_ptr()
    assert rec.launches[0][2] == 12


def test_empty_batch_launches_nothing_but_the_heads(monkeypatch):
    rec = fakes.install(monkeypatch)
    d, b = on_fake_device(batch(19, bs=0), buffers("target_verify", 64))
    call_sglang("target_verify", d, b, page_size=64, max_len=W + 5)
    assert rec.launches == [(0, 0, 0, SENTINEL)]


def test_host_arrays_are_bound_every_call(monkeypatch):
    d, b = batch(20), buffers("decode", 64)
    call_sglang("decode", d, b, page_size=64)
    call_sglang("decode", d, b, page_size=64)
    assert not sg._BOUND


def test_at_most_64_bindings_and_none_keeps_an_array(monkeypatch):
    fakes.install(monkeypatch)
    d, _ = on_fake_device(batch(21), buffers("decode", 64))
    for _ in range(70):
        _, b = on_fake_device(batch(21), buffers("decode", 64))
        call_sglang("decode", d, b, page_size=64)
    assert len(sg._BOUND) == 64
    probe = FakeTensor(np.zeros(CAP, np.int32))
    import weakref
    ref = weakref.ref(probe)
    b["cache_seqlens"] = probe
    call_sglang("decode", d, b, page_size=64)
    del probe, b
    gc.collect()
    assert ref() is None, "a bound plan keeps its buffers alive"


# ----------------------------------------------------------------------------- multi-step

def test_one_call_with_n_destinations_replaces_build_then_copy():
    """SGLang's multi-step draft decode builds the metadata once into fresh buffers and copies it
    into every draft backend's buffers; one call of ours with N destinations writes them all."""
    d = batch(22)
    bs = d["bs"]
    backends = [buffers("decode", 64) for _ in range(3)]
    # SGLang's sequence: one build into fresh buffers, then a copy into each backend
    fresh = {k: None if v is None else np.empty_like(v) for k, v in buffers("decode", 64).items()}
    call_sglang("decode", d, fresh, page_size=64)
    copied = [{k: v.copy() for k, v in be.items()} for be in backends]
    for be in copied:
        for k in be:
            rows = bs + 1 if k.startswith("cu") or k.startswith("dsa_cu") else bs
            be[k][:rows] = fresh[k][:rows]
    # ours: one launch, three destination sets, live=True
    nm.decode(d["seq_lens"][:bs], d["req_pool_indices"][:bs], d["req_to_token"], max_len=W,
              topk=64, page_size=64, live=True,
              out=[nm.Metadata(cache_seqlens=be["cache_seqlens"], cu_seqlens_k=be["cu_seqlens_k"],
                               nsa_cache_seqlens=be["dsa_cache_seqlens"],
                               nsa_cu_seqlens_k=be["dsa_cu_seqlens_k"],
                               page_table_1=be["page_table_1"],
                               real_page_table=be["real_page_table"]) for be in backends])
    lens = d["seq_lens"][:bs]
    for be, cp in zip(backends, copied):
        for k in ("cache_seqlens", "cu_seqlens_k", "dsa_cache_seqlens", "dsa_cu_seqlens_k"):
            np.testing.assert_array_equal(be[k], cp[k], err_msg=k)
        for k, ps in (("page_table_1", 1), ("real_page_table", 64)):
            for r in range(bs):  # the live prefix, what the consumers read
                n = -(-min(int(lens[r]), W) // ps)
                np.testing.assert_array_equal(be[k][r, :n], cp[k][r, :n], err_msg=f"{k} row {r}")
                assert (be[k][r, n:] == POISON).all()


def test_host_time_script_says_what_is_missing():
    script = "benchmarks/sglang_host.py"
    code = ("import runpy, sys\nsys.modules['torch'] = None\n"
            f"runpy.run_path({script!r}, run_name='__main__')")
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.returncode == 2 and "needs torch" in r.stderr


# ----------------------------------------------------------------------------- the device

@pytest.mark.gpu
@pytest.mark.parametrize("mode, page_size, wide, static", [
    ("decode", 64, True, False), ("decode", 64, False, False), ("decode", 1, True, False),
    ("target_verify", 64, True, False), ("target_verify", 1, True, False),
    ("draft_extend", 64, True, False), ("draft_extend", 64, False, True),
    ("draft_extend", 1, True, True)])
def test_device_equals_the_reference_and_binds_once(mode, page_size, wide, static):
    torch = pytest.importorskip("torch")
    d = batch(30, ext_lens=[3] * CAP if static else None)
    b = buffers(mode, page_size, wide, ctx=mode == "target_verify")
    want = expected(mode, d, b, page_size=page_size, static=static)
    dd = {k: torch.from_numpy(v).cuda() if isinstance(v, np.ndarray) else v for k, v in d.items()}
    db = {k: None if v is None else torch.from_numpy(v).cuda() for k, v in b.items()}
    if page_size == 1 and wide:
        db["real_page_table"] = db["page_table_1"]
    for _ in range(3):
        call_sglang(mode, dd, db, page_size=page_size, static=static)
    torch.cuda.synchronize()
    assert len(sg._BOUND) == 1, "one plan for one set of buffers"
    assert_same({k: None if v is None else v.cpu().numpy() for k, v in db.items()}, want)
    # and capturable: a hit launches, nothing else (the total is the host's, as an engine's is:
    # summing extend_lens on the device would synchronise inside the capture)
    ext = d["extend_lens"][:d["bs"]]
    total = d["bs"] * int(ext[0]) if static else int(ext.sum())
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        call_sglang(mode, dd, db, page_size=page_size, static=static, total=total)
    for v in db.values():  # the eager calls wrote `want` already: only the replay may write now
        if v is not None:
            v.fill_(POISON)
    g.replay()
    torch.cuda.synchronize()
    assert len(sg._BOUND) == 1, "the captured call took the bound plan"
    assert_same({k: None if v is None else v.cpu().numpy() for k, v in db.items()}, want)
