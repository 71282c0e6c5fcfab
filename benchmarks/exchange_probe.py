"""DLPack's C exchange API on this machine, and the host cost of the one-shot call's key read
through it: whether torch.Tensor and cupy.ndarray carry the API (and its non-owning reader), then
host us per call (median; columns timed round-robin with an empty launch, at most two calls on
the GPU: nsa_metadata.bench.host_us_interleaved) of

  key C      _core.buffer_key alone (the arrays read through the exchange API)
  key Py     the same buffers read through their Python attributes (the path for types
             without the API), for comparison
  one-shot   nm.<mode>(..., out=md) with bs and max_len changing every call
  prepared   the prepared call of the same buffers
  empty      an empty kernel launch through this extension

and one-shot / empty, the target of issue 13 (<= 3). Runs in a few seconds:
`python benchmarks/exchange_probe.py`.
"""

import itertools
import sys

import numpy as np

import nsa_metadata as nm
from nsa_metadata import _core, _plans
from nsa_metadata.bench import host_us_interleaved

CAP, CTX, PAGE, NEXT_N = 64, 4096, 64, 4


def api_line(name, cls):
    try:
        m = __import__(name)
    except ImportError:
        return f"{name}: not installed"
    v = _core.exchange_api_version(getattr(m, cls))
    if v is None:
        return f"{name} {m.__version__}: {cls} has no DLPack C exchange API"
    return (f"{name} {m.__version__}: {cls} has DLPack {v[0]}.{v[1]}'s C exchange API, "
            f"dltensor_from_py_object_no_sync {'set' if v[2] else 'NULL (managed tensors)'}")


def setup(lib, mode):
    """Device buffers as in benchmarks/host_profile.py (64 requests x 4096, page 64, live),
    outputs allocated by a first call, and views of the first bs requests for bs in [32, 64)."""
    rng = np.random.default_rng(0)
    host = dict(seq_lens=rng.integers(CTX // 2, CTX, CAP), req_pool_indices=rng.permutation(CAP),
                req_to_token=rng.integers(0, 2**31 - 1, (CAP, CTX)).astype(np.int32),
                extend_lens=np.full(CAP, 2))
    if lib == "torch":
        import torch
        d = {k: torch.from_numpy(v).cuda() for k, v in host.items()}
    else:
        import cupy
        d = {k: cupy.asarray(v) for k, v in host.items()}
    kw = dict(max_len=CTX, page_size=PAGE, live=True)
    if mode == "target_verify":
        kw["next_n"] = NEXT_N
    args = (d["seq_lens"], d["req_pool_indices"], d["req_to_token"])
    if mode == "draft_extend":
        md = nm.draft_extend(d["seq_lens"], d["extend_lens"], *args[1:], total=2 * CAP, **kw)
    else:
        md = getattr(nm, mode)(*args, **kw)
    views = [tuple(d[k][:b] for k in ("seq_lens", "req_pool_indices", "extend_lens")) + (b,)
             for b in range(CAP // 2, CAP)]
    return d, md, views, kw


def row(lib, mode, empty):
    d, md, views, kw = setup(lib, mode)
    table = d["req_to_token"]
    ext = mode == "draft_extend"
    fields = tuple(getattr(md, f) for f in nm.Metadata.__slots__)
    v = lambda k: views[k % len(views)]  # noqa: E731
    ml = lambda k: CTX - k % 97  # noqa: E731

    call = getattr(nm, mode)

    def one_shot(k):
        lens, pool, e, bs = v(k)
        if ext:
            nm.draft_extend(lens, e, pool, table, total=2 * bs, out=md, **dict(kw, max_len=ml(k)))
        else:
            call(lens, pool, table, out=md, **dict(kw, max_len=ml(k)))

    prep = nm.prepare(mode, d["seq_lens"], d["req_pool_indices"], table, out=md,
                      extend_lens=d["extend_lens"] if ext else None,
                      next_n=kw.get("next_n", 1), page_size=PAGE, live=True)
    fns = dict(
        key_c=lambda k: _core.buffer_key(v(k)[0], v(k)[1], v(k)[2] if ext else None, table, fields),
        key_py=lambda k: _plans._python_buffers(v(k)[0], v(k)[1], table, v(k)[2] if ext else None,
                                                (md,)),
        one_shot=one_shot,
        prepared=lambda k: prep(v(k)[3], ml(k), 2 * v(k)[3]),
        empty=empty,
    )
    via = "exchange API" if _plans.cache_key(mode, *v(0)[:2], table, v(0)[2] if ext else None,
                                             2048, 1, PAGE, kw.get("next_n", 1), True,
                                             md)[1] is not None else "Python attributes"
    t = host_us_interleaved(fns, rounds=20, calls=50)
    print(f"{lib:<6} {mode:<14} {t['key_c']:8.2f} {t['key_py']:8.2f} {t['one_shot']:9.2f} "
          f"{t['prepared']:9.2f} {t['empty']:7.2f} {t['one_shot'] / t['empty']:8.2f}   "
          f"(one-shot key read through {via})")
    return t["one_shot"] / t["empty"]


def main():
    import torch

    print(api_line("torch", "Tensor"))
    print(api_line("cupy", "ndarray"))
    dev = torch.cuda.current_device()
    stream = torch.cuda.current_stream().cuda_stream
    empty = lambda k: _core.empty_launch(dev, stream)  # noqa: E731
    print(f"host us per call, {torch.cuda.get_device_name()}, {CAP} requests x {CTX}, "
          f"page {PAGE}, live")
    print(f"{'lib':<6} {'mode':<14} {'key C':>8} {'key Py':>8} {'one-shot':>9} {'prepared':>9} "
          f"{'empty':>7} {'x empty':>8}")
    libs = ["torch"] + (["cupy"] if _cupy_usable() else [])
    ratios = [row(lib, mode, empty) for lib, mode in
              itertools.product(libs, ("decode", "target_verify", "draft_extend"))]
    worst = max(ratios)
    print(f"one-shot / empty launch: median {float(np.median(ratios)):.2f}, worst {worst:.2f} "
          f"(target <= 3)")
    return 0


def _cupy_usable():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":
    sys.exit(main())
