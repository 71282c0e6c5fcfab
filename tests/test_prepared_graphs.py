"""The prepared path and CUDA graphs: persistent buffers, in-place input changes, replays."""

import os

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import POISON, Lib, random_inputs, repoison

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify", "draft_extend"]
CAP_BS, W, NEXT_N, MAX_EXT, PS = 24, 300, 3, 4, 16
REPLAYS = 20 if os.environ.get("NSA_SANITIZE") else 1000  # under compute-sanitizer: fewer



def persistent(lib, mode, rng, tables=("page_table_1", "real_page_table")):
    """Graph-style buffers: inputs of capacity CAP_BS, outputs of capacity rows, all poisoned."""
    inp = random_inputs(rng, mode, CAP_BS, W - 40, P=CAP_BS + 5, W=W, next_n=NEXT_N,
                        max_extend=MAX_EXT)
    rows = CAP_BS * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else MAX_EXT)
    dev = {k: lib.to_device(v) for k, v in inp.items() if isinstance(v, np.ndarray)}
    full = lambda *shape: lib.to_device(np.full(shape, POISON, np.int32))  # noqa: E731
    md = nm.Metadata(full(CAP_BS), full(CAP_BS + 1), full(rows), full(rows + 1),
                     full(rows, W) if "page_table_1" in tables else None,
                     full(rows, -(-W // PS)) if "real_page_table" in tables else None,
                     None if mode == "decode" else full(rows))
    return inp, dev, md, rows


def expected(mode, inp, bs, max_len, total, md_host_before, live):
    """The reference on the first bs requests, written over copies of the poisoned buffers."""
    want = nm.Metadata(**{f: None if getattr(md_host_before, f) is None else getattr(md_host_before, f).copy()
                          for f in nm.Metadata.__slots__})
    rows = bs if mode == "decode" else bs * NEXT_N if mode == "target_verify" else total
    width = -(-max_len // PS)
    view = nm.Metadata(**{f: None if getattr(want, f) is None else
                          (getattr(want, f)[:rows, :max_len] if f == "page_table_1" else
                           getattr(want, f)[:rows, :width] if f == "real_page_table" else
                           getattr(want, f)[:{"cache_seqlens": bs, "cu_seqlens_k": bs + 1,
                                              "nsa_cache_seqlens": rows, "nsa_cu_seqlens_k": rows + 1,
                                              "seqlens_expanded": rows}[f]])
                          for f in nm.Metadata.__slots__})
    if mode == "decode":
        view.seqlens_expanded = None
    args = (inp["seq_lens"][:bs], inp["req_pool_indices"][:bs], inp["req_to_token"])
    kw = dict(max_len=max_len, topk=50, page_size=PS, live=live, out=view)
    if mode == "decode":
        nm.reference.decode(*args, **kw)
    elif mode == "target_verify":
        nm.reference.target_verify(*args, next_n=NEXT_N, **kw)
    else:
        ext = inp["extend_lens"][:bs]
        # a capacity: rows past the live total stay untouched
        live_rows = int(np.maximum(ext, 0).sum())
        nm.reference.draft_extend(args[0], ext, args[1], args[2], total=live_rows,
                                  **dict(kw, out=_rows(view, live_rows)))
    return want


def _rows(md, n):
    return nm.Metadata(**{f: None if getattr(md, f) is None else
                          getattr(md, f)[:n + (1 if f == "nsa_cu_seqlens_k" else 0)]
                          for f in ("nsa_cache_seqlens", "nsa_cu_seqlens_k", "page_table_1",
                                    "real_page_table", "seqlens_expanded")},
                       cache_seqlens=md.cache_seqlens, cu_seqlens_k=md.cu_seqlens_k)


def host(lib, md):
    return nm.Metadata(**{f: None if getattr(md, f) is None else lib.to_host(getattr(md, f))
                          for f in nm.Metadata.__slots__})


def assert_same(lib, md, want):
    got = host(lib, md)
    for f in nm.Metadata.__slots__:
        if getattr(want, f) is not None:
            np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)


def refresh(lib, rng, mode, inp, dev):
    """New seq_lens / req_pool_indices / extend_lens, written in place (shapes fixed)."""
    fresh = random_inputs(rng, mode, CAP_BS, W - 40, P=CAP_BS + 5, W=W, next_n=NEXT_N,
                          max_extend=MAX_EXT)
    for k in ("seq_lens", "req_pool_indices", "extend_lens"):
        inp[k][:] = fresh[k]
        if lib.name == "torch":
            dev[k].copy_(lib.to_device(fresh[k]))
        else:
            dev[k][...] = lib.to_device(fresh[k])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("live", [False, True])
def test_prepared_steps(lib, mode, live):
    rng = np.random.default_rng([7, MODES.index(mode), live])
    inp, dev, md, rows = persistent(lib, mode, rng)
    plan = nm.prepare(mode, dev["seq_lens"], dev["req_pool_indices"], dev["req_to_token"], out=md,
                      extend_lens=dev.get("extend_lens"), next_n=NEXT_N, topk=50, page_size=PS,
                      live=live)
    for step in range(40):
        refresh(lib, rng, mode, inp, dev)
        bs = int(rng.integers(0, CAP_BS + 1))
        max_len = int(rng.integers(0, W + 1))
        total = int(np.maximum(inp["extend_lens"][:bs], 0).sum())
        before = host(lib, md)
        plan(bs, max_len, total)
        lib.synchronize()
        assert_same(lib, md, expected(mode, inp, bs, max_len, total, before, live))


def test_prepared_refuses_what_does_not_fit(lib):
    rng = np.random.default_rng(1)
    inp, dev, md, rows = persistent(lib, "target_verify", rng, tables=("page_table_1",))
    plan = nm.prepare("target_verify", dev["seq_lens"], dev["req_pool_indices"],
                      dev["req_to_token"], out=md, next_n=NEXT_N, page_size=PS)
    with pytest.raises(ValueError, match="bs"):
        plan(CAP_BS + 1, 10)
    with pytest.raises(ValueError, match="max_len"):
        plan(1, W + 1)
    small = nm.Metadata(*(lib.to_device(np.zeros(n, np.int32)) for n in (4, 5, 12, 13)),
                        seqlens_expanded=lib.to_device(np.zeros(12, np.int32)))
    plan = nm.prepare("target_verify", dev["seq_lens"], dev["req_pool_indices"],
                      dev["req_to_token"], out=small, next_n=NEXT_N, page_size=PS)
    plan(4, 10)
    with pytest.raises(ValueError, match="bs = 5"):
        plan(5, 10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ["prepared", "one_shot"])
def test_torch_graph_replays(mode, how):
    """Capture once; 1000 replays with inputs changed in place are all exact."""
    torch = pytest.importorskip("torch")
    lib = Lib("torch")
    rng = np.random.default_rng([3, MODES.index(mode)])
    inp, dev, md, rows = persistent(lib, mode, rng)
    bs, max_len, total = CAP_BS - 3, W - 20, (CAP_BS - 3) * MAX_EXT  # total: a capacity
    args = (dev["seq_lens"][:bs], dev["req_pool_indices"][:bs], dev["req_to_token"])
    kw = dict(max_len=max_len, topk=50, page_size=PS)
    if how == "prepared":
        plan = nm.prepare(mode, dev["seq_lens"], dev["req_pool_indices"], dev["req_to_token"],
                          out=md, extend_lens=dev["extend_lens"], next_n=NEXT_N, topk=50,
                          page_size=PS)
        step = lambda: plan(bs, max_len, total)  # noqa: E731
    elif mode == "decode":
        step = lambda: nm.decode(*args, out=md, **kw)  # noqa: E731
    elif mode == "target_verify":
        step = lambda: nm.target_verify(*args, next_n=NEXT_N, out=md, **kw)  # noqa: E731
    else:
        step = lambda: nm.draft_extend(args[0], dev["extend_lens"][:bs], args[1], args[2],  # noqa: E731
                                       total=total, out=md, **kw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step()
    checked = 0
    for r in range(REPLAYS):
        refresh(lib, rng, mode, inp, dev)
        if r % 25 == 0:  # reset to poison now and then: stale rows must not pass
            repoison(md)
        before = host(lib, md)
        g.replay()
        torch.cuda.synchronize()
        live_total = int(np.maximum(inp["extend_lens"][:bs], 0).sum())
        assert_same(lib, md, expected(mode, inp, bs, max_len, live_total, before, False))
        checked += 1
    assert checked == REPLAYS


@pytest.mark.parametrize("mode", MODES)
def test_cupy_graph_replays(mode):
    cupy = pytest.importorskip("cupy")
    lib = Lib("cupy")
    rng = np.random.default_rng([4, MODES.index(mode)])
    inp, dev, md, rows = persistent(lib, mode, rng)
    bs, max_len, total = CAP_BS, W, CAP_BS * MAX_EXT
    plan = nm.prepare(mode, dev["seq_lens"], dev["req_pool_indices"], dev["req_to_token"], out=md,
                      extend_lens=dev["extend_lens"], next_n=NEXT_N, topk=50, page_size=PS)
    s = cupy.cuda.Stream(non_blocking=True)
    with s:
        plan(bs, max_len, total)  # warm-up
        s.synchronize()
        s.begin_capture()
        plan(bs, max_len, total)
        g = s.end_capture()
    for r in range(REPLAYS):
        refresh(lib, rng, mode, inp, dev)
        before = host(lib, md)
        g.launch(stream=s)
        s.synchronize()
        live_total = int(np.maximum(inp["extend_lens"][:bs], 0).sum())
        assert_same(lib, md, expected(mode, inp, bs, max_len, live_total, before, False))


def test_concurrent_streams_and_threads():
    """Independent calls on two streams at once, and from two Python threads, are exact."""
    torch = pytest.importorskip("torch")
    import threading

    lib = Lib("torch")
    rng = np.random.default_rng(12)
    sets = []
    for k in range(4):
        inp = random_inputs(rng, "target_verify", 300, 3000, next_n=2)
        d = {n: lib.to_device(v) for n, v in inp.items() if isinstance(v, np.ndarray)}
        want = nm.reference.target_verify(inp["seq_lens"], inp["req_pool_indices"],
                                          inp["req_to_token"], next_n=2, max_len=3000, page_size=64)
        sets.append((d, want))
    streams = [torch.cuda.Stream() for _ in range(4)]
    outs = [None] * 4

    def work(k, n_iter):
        with torch.cuda.stream(streams[k]):
            d = sets[k][0]
            for _ in range(n_iter):
                outs[k] = nm.target_verify(d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                                           next_n=2, max_len=3000, page_size=64, out=outs[k])
    for k in range(2):  # two streams, interleaved from one thread
        work(k, 1)
    for _ in range(50):
        for k in range(2):
            work(k, 1)
    threads = [threading.Thread(target=work, args=(k, 100)) for k in (2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.cuda.synchronize()
    for k in range(4):
        for f in ("cu_seqlens_k", "nsa_cu_seqlens_k", "page_table_1", "real_page_table"):
            np.testing.assert_array_equal(getattr(outs[k], f).cpu().numpy(), getattr(sets[k][1], f))
