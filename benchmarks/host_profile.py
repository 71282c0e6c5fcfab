"""Where the host time of one one-shot call goes (torch, outputs given, bs and max_len changing
every call): each step of _api._call timed on its own, one call at a time (at most two on the GPU),
then cProfile of the whole call."""

import cProfile
import pstats

import torch

import nsa_metadata as nm
from nsa_metadata import _arrays, _core, _plans
from nsa_metadata.bench import host_us

CAP, CTX, N = 64, 4096, 3000


def per_call_us(fn):
    """Median host us of one call, at most two calls on the GPU (bench.host_us): otherwise a call
    whose kernel outlasts its launch fills the launch queue and the time reads the GPU's pace."""
    return host_us(fn, calls=N, in_flight=2, warm=200)


def setup(mode):
    dev = "cuda"
    lens = torch.randint(CTX // 2, CTX, (CAP,), device=dev)
    pool = torch.randperm(CAP, device=dev)
    table = torch.randint(0, 2**31 - 1, (CAP, CTX), dtype=torch.int32, device=dev)
    ext = torch.full((CAP,), 2, device=dev)
    kw = dict(max_len=CTX, page_size=64, live=True)
    if mode == "target_verify":
        kw["next_n"] = 4
    if mode == "draft_extend":
        md = nm.draft_extend(lens, ext, pool, table, total=2 * CAP, **kw)
    else:
        md = getattr(nm, mode)(lens, pool, table, **kw)
    slices = [(lens[:b], pool[:b], ext[:b]) for b in range(CAP // 2, CAP)]
    return lens, pool, table, ext, md, slices


def call(mode, lens, pool, table, ext, md, max_len):
    if mode == "decode":
        return nm.decode(lens, pool, table, max_len=max_len, page_size=64, live=True, out=md)
    if mode == "target_verify":
        return nm.target_verify(lens, pool, table, next_n=4, max_len=max_len, page_size=64, live=True, out=md)
    return nm.draft_extend(lens, ext, pool, table, total=2 * len(lens), max_len=max_len, page_size=64,
                           live=True, out=md)


def main():
    dev = torch.cuda.current_device()
    s = torch.cuda.current_stream().cuda_stream
    print(f"{'step':<34} {'decode':>8} {'tv':>8} {'de':>8}   (host us per call, {torch.cuda.get_device_name()})")
    rows = {}
    for mode in ("decode", "target_verify", "draft_extend"):
        lens, pool, table, ext, md, slices = setup(mode)
        nxt = 4 if mode == "target_verify" else 1
        e = ext if mode == "draft_extend" else None
        sl = lambda k: slices[k % len(slices)]
        ml = lambda k: CTX - (k % 97)
        r = rows.setdefault
        r("empty launch", {})[mode] = per_call_us(lambda k: _core.empty_launch(dev, s))
        r("slice x3 (not in the call)", {})[mode] = per_call_us(lambda k: (lens[:40], pool[:40], ext[:40]))
        r("one-shot, same args", {})[mode] = per_call_us(lambda k: call(mode, lens, pool, table, ext, md, CTX))
        r("one-shot, bs + max_len vary", {})[mode] = per_call_us(
            lambda k: call(mode, sl(k)[0], sl(k)[1], table, sl(k)[2], md, ml(k)))
        key = lambda k: _plans.cache_key(mode, sl(k)[0], sl(k)[1], table, sl(k)[2] if e is not None else None,
                                         2048, 1, 64, nxt, True, md)
        r("  cache_key (varying)", {})[mode] = per_call_us(key)
        k0 = key(0)[0]  # (cache_key: the key, bs, the stream)
        r("  PLANS.get", {})[mode] = per_call_us(lambda k: _plans.PLANS.get(k0))
        r("  hash(key)", {})[mode] = per_call_us(lambda k: hash(k0))
        plan, cur = _plans.PLANS.get(k0)
        r("  current_stream()", {})[mode] = per_call_us(lambda k: cur())
        tot = lambda k: 2 * len(sl(k)[0]) if mode == "draft_extend" else 0
        r("  plan.launch", {})[mode] = per_call_us(lambda k: plan.launch(len(sl(k)[0]), ml(k), tot(k), s))
        r("  input_keys", {})[mode] = per_call_us(
            lambda k: _arrays.input_keys(torch.Tensor, True, (sl(k)[0], sl(k)[1]), table))
        r("  data_ptr()", {})[mode] = per_call_us(lambda k: lens.data_ptr())
        r("  get_device()", {})[mode] = per_call_us(lambda k: lens.get_device())
        r("  stride()", {})[mode] = per_call_us(lambda k: lens.stride())
        r("  shape", {})[mode] = per_call_us(lambda k: table.shape)
        prep = nm.prepare(mode, lens, pool, table, out=md, extend_lens=e, next_n=nxt, page_size=64, live=True)
        r("prepared", {})[mode] = per_call_us(lambda k: prep(len(sl(k)[0]), ml(k), tot(k) or None))
        if mode == "target_verify":
            pr = cProfile.Profile()
            pr.enable()
            for k in range(3000):
                call(mode, sl(k)[0], sl(k)[1], table, sl(k)[2], md, ml(k))
            pr.disable()
            torch.cuda.synchronize()
            pstats.Stats(pr).sort_stats("tottime").print_stats(14)
    for name, v in rows.items():
        print(f"{name:<34} {v['decode']:8.2f} {v['target_verify']:8.2f} {v['draft_extend']:8.2f}")


if __name__ == "__main__":
    main()
