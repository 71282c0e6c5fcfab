"""nsa-metadata command line: `demo` (a realistic decode batch, GPU checked against the
reference) and `bench` (see benchmarks/)."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import _api, reference


def _device_lib():
    """'torch' or 'cupy' when a CUDA device is usable, else None."""
    for name in ("torch", "cupy"):
        try:
            mod = __import__(name)
            if name == "torch" and mod.cuda.is_available():
                return name
            if name == "cupy" and mod.cuda.runtime.getDeviceCount() > 0:
                return name
        except Exception:
            continue
    return None


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).rjust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def demo(args):
    rng = np.random.default_rng(args.seed)
    bs, ctx, topk, ps = args.bs, args.context, args.topk, args.page_size
    P, W = bs * 2, ctx
    print(f"nsa-metadata demo: decode, {bs} requests, context up to {ctx}, top-k {topk}, page {ps}")
    seq_lens = rng.integers(ctx // 2, ctx + 1, size=bs).astype(np.int64)
    pool = rng.permutation(P)[:bs].astype(np.int64)
    table = rng.integers(0, 2**31 - 1, size=(P, W), dtype=np.int64).astype(np.int32)
    max_len = int(seq_lens.max())
    kw = dict(max_len=max_len, topk=topk, page_size=ps)
    t0 = time.perf_counter()
    want = reference.decode(seq_lens, pool, table, **kw)
    ref_ms = (time.perf_counter() - t0) * 1e3
    lib = _device_lib()
    rows = []
    if lib is None:
        print("no CUDA device found: ran the NumPy reference only")
        for f in _api.FIELDS:
            v = getattr(want, f)
            if v is not None:
                rows.append([f, "x".join(map(str, v.shape)), "reference", "-"])
        print(_table(["output", "shape", "ran on", "matches"], rows))
        print(f"reference: {ref_ms:.1f} ms on the host")
        return 0
    mod = __import__(lib)
    to_dev = (lambda a: mod.from_numpy(a).cuda()) if lib == "torch" else mod.asarray
    to_host = (lambda a: a.cpu().numpy()) if lib == "torch" else mod.asnumpy
    sync = mod.cuda.synchronize if lib == "torch" else mod.cuda.runtime.deviceSynchronize
    d = [to_dev(a) for a in (seq_lens, pool, table)]
    got = _api.decode(*d, **kw)
    sync()
    ok = True
    for f in _api.FIELDS:
        v = getattr(want, f)
        if v is None:
            continue
        same = bool(np.array_equal(to_host(getattr(got, f)), v))
        ok &= same
        rows.append([f, "x".join(map(str, v.shape)), f"GPU ({lib})", "yes" if same else "NO"])
    n = 200
    t0 = time.perf_counter()
    for _ in range(n):
        _api.decode(*d, **kw, out=got)
    host_us = (time.perf_counter() - t0) / n * 1e6
    sync()
    print(_table(["output", "shape", "ran on", "matches"], rows))
    print(f"host time per call (outputs given, {lib}): {host_us:.1f} us;"
          f" NumPy reference: {ref_ms:.1f} ms")
    if not ok:
        print("MISMATCH between the GPU and the reference", file=sys.stderr)
        return 1
    return 0


def bench(argv):
    from . import bench as engine

    args = engine.parse_args(argv)  # --help works anywhere
    if _device_lib() != "torch":
        print("nsa-metadata bench needs a CUDA GPU and torch; none found.", file=sys.stderr)
        return 2
    return engine.main(args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="nsa-metadata", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build a realistic decode batch and check GPU vs reference")
    d.add_argument("--bs", type=int, default=64)
    d.add_argument("--context", type=int, default=32768)
    d.add_argument("--topk", type=int, default=2048)
    d.add_argument("--page-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="time GPU and host cost against torch ops and the copy floor "
                   "(nsa-metadata bench --help)", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options belong to the benchmark's own parser
        return bench(argv[1:])
    return demo(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
