"""nsa_metadata.sglang against SGLang's own kernels, on a GPU where the `sglang` distribution is
installed (skipped otherwise). SGLang's modules are loaded by file path from the installed
distribution (nsa_metadata.bench.load_sglang), so only torch and triton need to import.

Every case poisons two identical sets of buffers and calls SGLang's function into one and ours
into the other, with the same arguments. The 1-D outputs (and the 2-D context lengths) must be
equal over the whole buffers. A page-table row of KV length L is written by SGLang over whole
128-column blocks, columns [0, min(128 * ceil(L / 128), max_len)), and by us over the live
extent SPEC states, [0, clamp(L, 0, max_len)) (real table: the columns of the pages those hold);
the test checks that ours lies inside SGLang's, that the two are equal on ours, that ours holds
the poison beyond it, and that SGLang's holds it beyond its own.

kpool > 1 runs against SGLang's kpool variants (dsa/kpool_metadata/*.py, which take
index_kpool). Token slots are non-negative here, as in an engine: Triton's integer division
truncates where SPEC's floors, and the two agree only on non-negative slots."""

import itertools
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nsa_metadata as nm  # noqa: E402
from nsa_metadata import bench  # noqa: E402
from nsa_metadata import sglang as ours  # noqa: E402
from helpers import POISON

pytestmark = pytest.mark.gpu

P, W, CAP, NEXT_N, EXT, TOPK = 50, 700, 40, 3, 4, 64
KPOOL_DIR = "sglang/kernels/ops/attention/dsa/kpool_metadata/"
NAMES = {"decode": "fused_dsa_decode_metadata", "target_verify": "fused_dsa_target_verify_metadata",
         "draft_extend": "fused_dsa_draft_extend_metadata"}


def _load(path):
    """One SGLang file, through bench.load_sglang (its file name swapped for the call)."""
    saved = bench.SGLANG_FILE
    bench.SGLANG_FILE = path
    try:
        return bench.load_sglang()
    finally:
        bench.SGLANG_FILE = saved


@pytest.fixture(scope="module")
def sgl():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    try:
        mod = bench.load_sglang()
    except ImportError as e:  # triton missing, or a module SGLang's file needs
        pytest.skip(f"SGLang's metadata module does not import here: {e}")
    if mod is None:
        pytest.skip("the sglang distribution is not installed")
    return mod


@pytest.fixture(scope="module")
def sgl_kpool(sgl):
    """SGLang's kpool variants; their one package import (scan.py) is served from its file."""
    scan_name = "sglang.kernels.ops.attention.dsa.kpool_metadata.scan"
    had = sys.modules.get(scan_name)
    try:
        sys.modules[scan_name] = had or _load(KPOOL_DIR + "scan.py")
        mods = {m: _load(KPOOL_DIR + f) for m, f in
                (("decode", "decode.py"), ("target_verify", "verify.py"),
                 ("draft_extend", "draft_extend.py"))}
    except ImportError as e:
        pytest.skip(f"SGLang's kpool metadata modules do not import here: {e}")
    finally:
        if had is None:
            sys.modules.pop(scan_name, None)
    if any(m is None for m in mods.values()):
        pytest.skip("this sglang has no kpool metadata variants")
    return {mode: getattr(m, NAMES[mode] + "_kpool") for mode, m in mods.items()}


# ----------------------------------------------------------------------------- one case

def make_case(mode, seed, bs, idx, static):
    """Persistent inputs of CAP requests (bs live), on the GPU."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 2**31 - 1, size=(P, W), dtype=np.int64).astype(np.int32)
    seq_lens = rng.integers(0, W - NEXT_N + 1, size=CAP)
    seq_lens[rng.integers(0, CAP, size=4)] = rng.choice([0, 1, 127, 128, 129, W - NEXT_N], size=4)
    pool = rng.permutation(P)[:CAP]
    ext = np.full(CAP, rng.integers(1, EXT + 1)) if static else rng.integers(0, EXT + 1, size=CAP)
    if mode == "draft_extend" and not static:
        seq_lens = np.maximum(seq_lens, ext)
    d = dict(seq_lens=seq_lens.astype(idx), req_pool_indices=pool.astype(idx),
             extend_lens=ext.astype(idx), req_to_token=table)
    return {k: torch.from_numpy(v).cuda() for k, v in d.items()}, d


def buffers(mode, page_size, wide, ctx):
    rows = CAP * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else EXT)
    full = lambda *shape: torch.full(shape, POISON, dtype=torch.int32, device="cuda")  # noqa: E731
    b = dict(cache_seqlens=full(CAP), cu_seqlens_k=full(CAP + 1), page_table_1=full(rows, W) if wide else None,
             dsa_cache_seqlens=full(rows), dsa_cu_seqlens_k=full(rows + 1),
             real_page_table=full(rows, -(-W // page_size)))
    if page_size == 1:
        b["real_page_table"] = b["page_table_1"]
    if mode != "decode":
        b["seqlens_expanded"] = full(rows)
    if ctx:
        b["paged_mqa_ctx_lens_2d"] = None  # sized per call: SGLang wants exactly [bs, next_n]
    return b


def args_of(mode, dev, b, bs, max_len, page_size, static, total):
    """The positional arguments of SGLang's call (the same for ours)."""
    s, q, t = dev["seq_lens"][:bs], dev["req_pool_indices"][:bs], dev["req_to_token"]
    common = (b["cache_seqlens"], b["cu_seqlens_k"], b["page_table_1"])
    if mode == "decode":
        return (s, q, t, *common, b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"],
                b["real_page_table"], bs, max_len, TOPK, page_size)
    if mode == "target_verify":
        return (s, q, t, *common, b["seqlens_expanded"], b["dsa_cache_seqlens"],
                b["dsa_cu_seqlens_k"], b["real_page_table"], bs, max_len, TOPK, page_size, NEXT_N,
                b.get("paged_mqa_ctx_lens_2d"))
    return (s, dev["extend_lens"][:bs], q, t, *common, b["seqlens_expanded"],
            b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"], b["real_page_table"], bs, total,
            max_len, TOPK, page_size, EXT, CAP * EXT, static)


def row_lengths(mode, host, bs, static):
    """The KV length L of every row SGLang writes (int32 values)."""
    lens = host["seq_lens"][:bs].astype(np.int64)
    if mode == "decode":
        return lens
    if mode == "target_verify":
        return np.repeat(lens + NEXT_N, NEXT_N)
    ext = np.full(bs, host["extend_lens"][0]) if static else host["extend_lens"][:bs]
    return np.repeat(lens, ext.astype(np.int64))


def check_tables(got, want, L, max_len, page_size):
    """got (ours) and want (SGLang's), [rows, width] on the host, rows beyond len(L) unwritten."""
    n_ours = np.clip(L, 0, max_len)
    n_sgl = np.where(L > 0, np.minimum(-(-L // 128) * 128, max_len), 0)
    if page_size > 1:
        n_ours, n_sgl = -(-n_ours // page_size), -(-n_sgl // page_size)
    cols = np.arange(got.shape[1])[None, :]
    rows = np.zeros(got.shape[0], bool)
    rows[:len(L)] = True
    o = np.zeros(got.shape, bool)
    s = np.zeros(got.shape, bool)
    o[:len(L)] = cols < n_ours[:, None]
    s[:len(L)] = cols < n_sgl[:, None]
    assert (o <= s).all(), "our live extent must lie inside the region SGLang writes"
    np.testing.assert_array_equal(got[o], want[o], err_msg="on the live extent")
    assert (got[~o] == POISON).all(), "ours must not write beyond the live extent"
    assert (want[~s] == POISON).all(), "SGLang wrote outside the region this test assumes"


def run_case(fn_sgl, fn_ours, mode, *, seed, bs, idx, page_size, wide, static=False, ctx=False,
             kpool=None, max_len=W):
    dev, host = make_case(mode, seed, bs, idx, static)
    ext = host["extend_lens"][:bs].astype(np.int64)
    total = bs * int(ext[0]) if static and bs else int(ext.sum())
    results = []
    for fn in (fn_sgl, fn_ours):
        b = buffers(mode, page_size, wide, ctx)
        if ctx:
            b["paged_mqa_ctx_lens_2d"] = torch.full((bs, NEXT_N), POISON, dtype=torch.int32,
                                                    device="cuda")
        args = args_of(mode, dev, b, bs, max_len, page_size, static, total)
        fn(*args) if kpool is None else fn(*args, index_kpool=kpool)
        results.append(b)
    torch.cuda.synchronize()
    want, got = results
    L = row_lengths(mode, host, bs, static)
    for k in want:
        if want[k] is None or k in ("page_table_1", "real_page_table"):
            continue
        np.testing.assert_array_equal(got[k].cpu().numpy(), want[k].cpu().numpy(), err_msg=k)
    if wide:
        check_tables(got["page_table_1"].cpu().numpy(), want["page_table_1"].cpu().numpy(), L,
                     max_len, 1)
    if page_size > 1:
        check_tables(got["real_page_table"].cpu().numpy(), want["real_page_table"].cpu().numpy(),
                     L, max_len, page_size)


# ----------------------------------------------------------------------------- the cases

def cases():
    """mode x tables (page 1; page 64 with both tables; page 64 real table only) x the mode's
    switch (draft_extend: static_extend_len; target_verify: the 2-D context lengths), at two
    batch sizes; indices int32 at one of them and int64 at the other, alternating."""
    out = []
    tables = [(1, True), (64, True), (64, False)]
    for k, (mode, (ps, wide), switch, bs) in enumerate(itertools.product(
            ("decode", "target_verify", "draft_extend"), tables, (False, True), (5, 37))):
        if mode == "decode" and switch:
            continue
        i64 = (k // 2 + k) % 2  # each combination gets both dtypes, one per batch size
        out.append(pytest.param(mode, ps, wide, switch, bs, (np.int32, np.int64)[i64],
                                id=f"{mode}-page{ps}-{'both' if wide else 'real'}-"
                                   f"{'static' if mode == 'draft_extend' and switch else 'ctx' if switch else 'plain'}"
                                   f"-bs{bs}-{'i64' if i64 else 'i32'}"))
    return out


@pytest.mark.parametrize("mode, page_size, wide, switch, bs, idx", cases())
def test_equals_sglang(sgl, mode, page_size, wide, switch, bs, idx):
    run_case(getattr(sgl, NAMES[mode]), getattr(ours, NAMES[mode]), mode, seed=bs * 7 + page_size,
             bs=bs, idx=idx, page_size=page_size, wide=wide,
             static=mode == "draft_extend" and switch, ctx=mode == "target_verify" and switch)


@pytest.mark.parametrize("mode", ["decode", "target_verify", "draft_extend"])
@pytest.mark.parametrize("max_len", [W, 333])
def test_equals_sglang_at_a_narrower_max_len(sgl, mode, max_len):
    run_case(getattr(sgl, NAMES[mode]), getattr(ours, NAMES[mode]), mode, seed=max_len, bs=9,
             idx=np.int64, page_size=64, wide=True, max_len=max_len)


@pytest.mark.parametrize("mode", ["decode", "target_verify", "draft_extend"])
@pytest.mark.parametrize("static", [False, True])
def test_empty_batch_equals_sglang(sgl, mode, static):
    if static and mode != "draft_extend":
        pytest.skip("static_extend_len is draft_extend's")
    run_case(getattr(sgl, NAMES[mode]), getattr(ours, NAMES[mode]), mode, seed=1, bs=0,
             idx=np.int64, page_size=64, wide=True, static=static)


@pytest.mark.parametrize("mode", ["decode", "target_verify", "draft_extend"])
@pytest.mark.parametrize("kpool, wide", [(16, True), (4, False)])
def test_kpool_equals_sglangs_kpool_variants(sgl_kpool, mode, kpool, wide):
    run_case(sgl_kpool[mode], getattr(ours, NAMES[mode]), mode, seed=kpool, bs=11, idx=np.int32,
             page_size=64, wide=wide, kpool=kpool, ctx=mode == "target_verify")


def test_signatures_match_the_installed_release(sgl):
    import inspect
    for mode, name in NAMES.items():
        theirs = list(inspect.signature(getattr(sgl, name)).parameters)
        mine = [p for p, v in inspect.signature(getattr(ours, name)).parameters.items()
                if v.kind == v.POSITIONAL_OR_KEYWORD]
        spelled = ["real_page_size" if p == "physical_page_size" else p for p in mine]
        assert theirs in (mine[:len(theirs)], spelled[:len(theirs)]), name


# ----------------------------------------------------------------------------- graphs, multi-step

@pytest.mark.parametrize("mode", ["decode", "target_verify", "draft_extend"])
def test_graph_replays_equal_sglang_eager(sgl, mode):
    """Ours captured once at the static width (bs, max_len = W, live=True), replayed on new
    inputs written in place; SGLang's eager call on the same inputs each step."""
    bs, ps, static = 16, 64, mode == "draft_extend"
    dev, host = make_case(mode, 99, bs, np.int64, static)
    b = buffers(mode, ps, True, False)
    total = bs * int(host["extend_lens"][0])
    args = args_of(mode, dev, b, bs, W, ps, static, total)
    fn = getattr(ours, NAMES[mode])
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(*args)  # warm-up: binds the plan
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(*args)
    rng = np.random.default_rng(5)
    for step in range(5):
        dev["seq_lens"].copy_(torch.from_numpy(rng.integers(0, W - NEXT_N, size=CAP)).cuda())
        dev["req_pool_indices"].copy_(torch.from_numpy(rng.permutation(P)[:CAP]).cuda())
        g.replay()
        want = buffers(mode, ps, True, False)
        getattr(sgl, NAMES[mode])(*args_of(mode, dev, want, bs, W, ps, static, total))
        torch.cuda.synchronize()
        host = {k: v.cpu().numpy() for k, v in dev.items()}
        L = row_lengths(mode, host, bs, static)
        for k in want:
            if want[k] is not None and k not in ("page_table_1", "real_page_table"):
                n = {"cache_seqlens": bs, "cu_seqlens_k": bs + 1}.get(k, len(L) + (k == "dsa_cu_seqlens_k"))
                np.testing.assert_array_equal(b[k][:n].cpu().numpy(), want[k][:n].cpu().numpy(),
                                              err_msg=f"{k}, step {step}")
        for k, p in (("page_table_1", 1), ("real_page_table", ps)):
            got, ref = b[k].cpu().numpy(), want[k].cpu().numpy()
            for r, length in enumerate(L):
                n = -(-min(max(int(length), 0), W) // p)
                np.testing.assert_array_equal(got[r, :n], ref[r, :n], err_msg=f"{k} row {r}, step {step}")


def test_one_call_with_three_destinations_replaces_build_then_copy(sgl):
    """SGLang's multi-step draft decode: one build into fresh buffers, then the base buffers
    copied into each draft backend (its copy fallback, as torch copies here). Ours: one call,
    one launch, three destination sets."""
    bs, ps = 24, 64
    dev, host = make_case("decode", 3, bs, np.int64, False)
    backends = [buffers("decode", ps, True, False) for _ in range(3)]
    copies = [{k: v.clone() for k, v in be.items()} for be in backends]
    fresh = {k: torch.empty_like(v[:bs + 1] if k.startswith(("cu", "dsa_cu")) else v[:bs])
             for k, v in backends[0].items()}
    sgl.fused_dsa_decode_metadata(*args_of("decode", dev, fresh, bs, W, ps, False, 0))
    for be in copies:
        be["cache_seqlens"][:bs].copy_(fresh["cache_seqlens"])
        be["cu_seqlens_k"][:bs + 1].copy_(fresh["cu_seqlens_k"])
        be["page_table_1"][:bs, :W].copy_(fresh["page_table_1"])
        be["dsa_cache_seqlens"][:bs].copy_(fresh["dsa_cache_seqlens"])
        be["dsa_cu_seqlens_k"][:bs + 1].copy_(fresh["dsa_cu_seqlens_k"])
        be["real_page_table"][:bs].copy_(fresh["real_page_table"])
    nm.decode(dev["seq_lens"][:bs], dev["req_pool_indices"][:bs], dev["req_to_token"], max_len=W,
              topk=TOPK, page_size=ps, live=True,
              out=[nm.Metadata(cache_seqlens=be["cache_seqlens"], cu_seqlens_k=be["cu_seqlens_k"],
                               nsa_cache_seqlens=be["dsa_cache_seqlens"],
                               nsa_cu_seqlens_k=be["dsa_cu_seqlens_k"],
                               page_table_1=be["page_table_1"],
                               real_page_table=be["real_page_table"]) for be in backends])
    torch.cuda.synchronize()
    L = host["seq_lens"][:bs].astype(np.int64)
    for be, cp in zip(backends, copies):
        for k in ("cache_seqlens", "cu_seqlens_k", "dsa_cache_seqlens", "dsa_cu_seqlens_k"):
            np.testing.assert_array_equal(be[k].cpu().numpy(), cp[k].cpu().numpy(), err_msg=k)
        for k, p in (("page_table_1", 1), ("real_page_table", ps)):
            got, ref = be[k].cpu().numpy(), cp[k].cpu().numpy()
            for r in range(bs):
                n = -(-min(int(L[r]), W) // p)
                np.testing.assert_array_equal(got[r, :n], ref[r, :n], err_msg=f"{k} row {r}")
                assert (got[r, n:] == POISON).all()
