"""The launch's FlashMLA schedule (schedule=) against reference.schedule: every byte of poisoned
buffers, beside every other output, in 1 and 3 destination sets, over random and edge batches
(rows 1 to 20000 and more in target_verify, lengths 0 to 1M, parts 1 to 148, both sources)."""

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import Lib, call, check_device_matches_reference, random_inputs, rows_of

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify"]


@pytest.fixture(params=["torch", "cupy"])
def lib(request):
    pytest.importorskip(request.param)
    return Lib(request.param)


def batch(rng, mode, bs, lengths, max_len=70):
    """Inputs whose seq_lens follow `lengths` (the page tables stay max_len wide)."""
    inp = random_inputs(rng, mode, bs, max_len, next_n=2)
    if lengths == "wide":
        inp["seq_lens"] = rng.integers(0, 10**6 + 1, bs)
    elif lengths == "alternating":
        inp["seq_lens"] = np.tile([1, 10**6], bs)[:bs]
    elif lengths == "zeros":
        inp["seq_lens"] = np.zeros(bs, np.int64)
    elif lengths == "equal":
        inp["seq_lens"] = np.full(bs, int(rng.integers(0, 10**6 + 1)))
    return inp


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", ["topk", "sparse"])
@pytest.mark.parametrize("ndest", [1, 3])
def test_random_batches(lib, mode, source, ndest):
    rng = np.random.default_rng([ndest, len(mode), len(source)])
    for _ in range(12):
        bs = int(rng.choice([rng.integers(1, 40), rng.integers(1, 300), rng.integers(1, 3000)]))
        parts = int(rng.integers(1, 149))
        topk = int(rng.choice([1, 64, 2048, rng.integers(1, 10**6 + 1)]))
        kind = str(rng.choice(["around", "wide", "alternating", "zeros", "equal"]))
        inp = batch(rng, mode, bs, kind)
        check_device_matches_reference(lib, mode, inp, max_len=70, page_size=64, topk=topk,
                                       ndest=ndest, schedule=nm.Schedule(parts, source),
                                       strided=bs % 2 == 1)


@pytest.mark.parametrize("bs", [1, 2, 65, 66, 67, 127, 128, 129, 147, 148, 149, 1024, 4096,
                                11622, 11623, 20000])
@pytest.mark.parametrize("mode", MODES)
def test_edge_batches(lib, mode, bs):
    rng = np.random.default_rng(bs)
    for parts in (1, 2, 66, 132, 148):
        for source in ("topk", "sparse"):
            for kind in ("wide", "alternating", "zeros"):
                inp = batch(rng, mode, bs, kind)
                check_device_matches_reference(lib, mode, inp, max_len=70, page_size=64,
                                               topk=10**6 if kind == "wide" else 2048,
                                               schedule=nm.Schedule(parts, source))


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(lib, mode):
    inp = batch(np.random.default_rng(0), mode, 0, "around")
    for source in ("topk", "sparse"):
        check_device_matches_reference(lib, mode, inp, max_len=70, page_size=64,
                                       schedule=nm.Schedule(66, source))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("check", [False, True])
def test_other_outputs_unchanged(lib, mode, check):
    rng = np.random.default_rng(5)
    inp = random_inputs(rng, mode, 300, 200, bad_pool=not check)
    dinp = {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
    plain = call(nm, mode, dinp, max_len=200, page_size=64, topk=100, check=check)
    for source in ("topk", "sparse"):
        md = call(nm, mode, dinp, max_len=200, page_size=64, topk=100, check=check,
                  schedule=nm.Schedule(66, source))
        lib.synchronize()
        for f in nm.Metadata.__slots__:
            if getattr(plain, f) is not None:
                np.testing.assert_array_equal(lib.to_host(getattr(md, f)),
                                              lib.to_host(getattr(plain, f)), err_msg=f)
        want = nm.reference.schedule(None if source == "topk" else lib.to_host(md.nsa_cache_seqlens),
                                     rows_of(mode, inp), 100, 66)
        np.testing.assert_array_equal(lib.to_host(md.tile_scheduler_metadata), want[0])
        np.testing.assert_array_equal(lib.to_host(md.num_splits), want[1])


@pytest.mark.parametrize("mode", MODES)
def test_prepared_steps_in_a_cuda_graph(mode):
    torch = pytest.importorskip("torch")
    lib = Lib("torch")
    rng = np.random.default_rng(9)
    cap, parts = 600, 66
    inp = random_inputs(rng, mode, cap, 100, bad_pool=False, next_n=2)
    d = {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}
    rows = rows_of(mode, inp)
    out = call(nm, mode, d, max_len=100, page_size=64, topk=100, schedule=nm.Schedule(parts))
    out.tile_scheduler_metadata.fill_(-5)
    out.num_splits.fill_(-5)
    s = nm.Schedule(parts, "sparse")
    prep = nm.prepare(mode, d["seq_lens"], d["req_pool_indices"], d["req_to_token"], out=out,
                      next_n=inp["next_n"], topk=100, page_size=64, schedule=s)
    for bs in (600, 1, 257):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            prep(bs, 100)
        g.replay()
        torch.cuda.synchronize()
        n = rows * bs // cap
        want = nm.reference.schedule(out.nsa_cache_seqlens[:n].cpu().numpy(), n, 100, parts)
        np.testing.assert_array_equal(out.tile_scheduler_metadata.cpu().numpy(), want[0])
        np.testing.assert_array_equal(out.num_splits[:n + 1].cpu().numpy(), want[1])


def test_parity_with_flashmla():
    """Our schedule against FlashMLA's own scheduler kernel, where one can be imported."""
    flash_mla = None
    for name in ("flash_mla", "sgl_kernel.flash_mla"):
        try:
            flash_mla = __import__(name, fromlist=["get_mla_metadata"])
            break
        except ImportError:
            continue
    if flash_mla is None or not hasattr(flash_mla, "get_mla_metadata"):
        pytest.skip("no FlashMLA build: neither flash_mla nor sgl_kernel.flash_mla imports")
    torch = pytest.importorskip("torch")
    from nsa_metadata import sglang
    rng = np.random.default_rng(14)
    for bs in (1, 8, 64, 66, 67, 1024, 4096, 11622):
        cache_seqlens = torch.from_numpy(rng.integers(1, 10**5, bs).astype(np.int32)).cuda()
        theirs = flash_mla.get_mla_metadata(cache_seqlens, 128, 1, 128, True, 2048)
        ours = sglang.get_mla_metadata(cache_seqlens, 128, 1, 128, True, 2048)
        # every field but begin_block_idx and pad of the parts after the last request
        # (docs/SPEC_schedule.md: FlashMLA's two kernels disagree there)
        meta_t, meta_o = theirs[0].cpu().numpy(), ours[0].cpu().numpy()
        empty = meta_o[:, 0] == bs
        meta_t[empty, 2] = meta_o[empty, 2]
        meta_t[:, 7] = meta_o[:, 7]
        np.testing.assert_array_equal(meta_o, meta_t)
        np.testing.assert_array_equal(ours[1].cpu().numpy(), theirs[1].cpu().numpy())
