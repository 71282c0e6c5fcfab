"""The launch's FlashMLA schedule (schedule=) against reference.schedule: every byte of poisoned
buffers, beside every other output, in 1 and 3 destination sets, over random and edge batches
(rows 1 to 20000 and more in target_verify, lengths 0 to 1M, parts 1 to 148, both sources); and
against FlashMLA's own scheduler where one loads (NSA_FLASHMLA_OPS, see flashmla_scheduler)."""

import importlib
import os

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import Lib, call, check_device_matches_reference, random_inputs, rows_of

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify"]



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
def test_small_batches(lib, mode):
    """bs <= 32 with 16-byte rows, one destination set, unit strides: what the small kernel
    (kernels/small.cuh) takes, so the closed form runs there, in blocks ranked after the
    idle ones (target_verify 32 x 4: rows + 1 = 129 num_splits entries, past one block)."""
    rng = np.random.default_rng(len(mode))
    for bs in (1, 7, 32):
        for max_len in (64, 4096):
            for parts in (1, 66, 148):
                inp = random_inputs(rng, mode, bs, max_len, W=max_len, next_n=4)
                check_device_matches_reference(lib, mode, inp, max_len=max_len, page_size=64, topk=2048,
                                               live=parts == 66, strided=False,
                                               schedule=nm.Schedule(parts))


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


# FlashMLA's scheduler as a torch op, get_mla_decoding_metadata(seqlens_k,
# num_q_tokens_per_head_k, h_k, h_q, is_fp8_kvcache, topk) -> [tile_scheduler_metadata,
# num_splits], in the namespaces its builds register: sgl-kernel's, then sgl-flash-mla's SM90 and
# current halves (the latter has no SM90 code).
FLASHMLA_NAMESPACES = ("sgl_kernel", "flash_mla_legacy", "flash_mla")


def flashmla_scheduler():
    """(name, op) of FlashMLA's own scheduler, loaded from NSA_FLASHMLA_OPS (a path to an ops
    library, e.g. sgl_kernel/flashmla_ops.abi3.so from the sglang-kernel 0.4.5 wheel, the last
    one built for torch 2.11 + CUDA 13.0) or registered by an installed sgl_kernel or flash_mla;
    skips when there is none. A library named in NSA_FLASHMLA_OPS that does not load fails."""
    torch = pytest.importorskip("torch")
    path = os.environ.get("NSA_FLASHMLA_OPS")
    if path:
        torch.ops.load_library(os.path.abspath(path))
    else:
        for module in ("sgl_kernel.flash_mla", "flash_mla"):
            try:
                importlib.import_module(module)  # registers its ops
            except Exception:  # absent, or built for another torch/CUDA: nothing to compare with
                continue
    for ns in FLASHMLA_NAMESPACES:
        try:
            return f"torch.ops.{ns}", getattr(getattr(torch.ops, ns), "get_mla_decoding_metadata")
        except (AttributeError, RuntimeError):
            continue
    if path:
        raise AssertionError(f"NSA_FLASHMLA_OPS={path} loaded but registers no "
                             f"get_mla_decoding_metadata in {FLASHMLA_NAMESPACES}")
    pytest.skip("no FlashMLA scheduler: set NSA_FLASHMLA_OPS to a FlashMLA ops library "
                "(tests/test_gpu_schedule.py, flashmla_scheduler) or install sgl_kernel")


# (s_q, h_q) with h_k = 1 as SGLang calls it: FlashMLA's SM90 parts max(sms / s_q / max(1, h_q /
# 64), 1) are 66, 33, 22, 132, 44 and 1 on a 132-SM H100
FLASHMLA_HEADS = [(1, 128), (2, 128), (3, 128), (1, 64), (3, 64), (132, 64)]


def test_parity_with_flashmla():
    """Our schedule against FlashMLA's own scheduler kernel, where one can be loaded: every field
    but begin_block_idx of the parts after the last request and pad (docs/SPEC_schedule.md), and
    the part count our get_mla_metadata derives. FlashMLA's op takes no topk_length, so this
    covers the "topk" source (SGLang's call); reference.schedule covers the other."""
    name, op = flashmla_scheduler()
    import torch
    from nsa_metadata import sglang
    rng = np.random.default_rng(14)
    for bs in (1, 2, 8, 64, 65, 66, 67, 132, 133, 1024, 4096, 11622, 11623, 20000):
        cache_seqlens = torch.from_numpy(rng.integers(0, 10**6, bs).astype(np.int32)).cuda()
        for s_q, h_q in FLASHMLA_HEADS:
            for topk in (1, 64, 65, 2048, int(rng.integers(1, 10**6 + 1))):
                args = (cache_seqlens, s_q * h_q, 1, h_q, True, topk)
                theirs = [t.cpu().numpy() for t in op(*args)]
                ours = [t.cpu().numpy() for t in sglang.get_mla_metadata(*args)]
                where = f"{name}: bs {bs}, s_q {s_q}, h_q {h_q}, topk {topk}"
                assert ours[0].shape == theirs[0].shape, where  # the same num_sm_parts
                empty = ours[0][:, 0] == bs  # parts after the last request
                theirs[0][empty, 2] = ours[0][empty, 2]
                theirs[0][:, 7] = ours[0][:, 7]
                np.testing.assert_array_equal(ours[0], theirs[0], err_msg=where)
                np.testing.assert_array_equal(ours[1], theirs[1], err_msg=where)
