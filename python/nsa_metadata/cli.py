"""nsa-metadata command line: `demo` (one random batch per mode, checked against the NumPy
reference) and `bench` (GPU and host timings; see docs/performance.md)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import nsa_metadata as nm

from . import __version__, reference
from .schedule import INT32_MAX
from ._metadata import FIELDS  # SPEC's outputs, in order (a demo leaves the optional ones None)
from .reference import MODES
DEMO_MAX_ELEMENTS = 1 << 26  # the largest table: 256 MiB of int32


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


def _at_least(lo):
    """An argparse type: an integer >= lo (argparse turns the error into a message, exit 2)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, not {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {value}")
        return value
    return parse


def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _first(a, n=4):
    """A few values of an output: the first n of a 1-D array, of row 0 of a 2-D one."""
    v = a[0] if a.ndim == 2 else a
    tail = ", ..." if v.shape[0] > n else ""
    return "[" + ", ".join(str(int(x)) for x in v[:n]) + tail + "]"


def _batch(args, rng):
    """A batch as an engine holds it: each pool row of req_to_token lists KV slot indices in
    pages scattered over the cache; seq_lens leave room for the next_n tokens of target_verify."""
    bs, ctx, n, ps = args.bs, args.context, args.next_n, args.page_size
    P, pages = 2 * bs, -(-ctx // ps)
    page_ids = rng.permutation(P * pages).reshape(P, pages)
    j = np.arange(ctx)
    table = np.ascontiguousarray(page_ids[:, j // ps] * ps + j % ps, dtype=np.int32)
    hi = ctx - n
    lo = max(hi // 2, 1)
    return dict(seq_lens=rng.integers(lo, hi + 1, size=bs).astype(np.int64),
                pool=rng.permutation(P)[:bs].astype(np.int64), table=table,
                extend_lens=rng.integers(1, n + 1, size=bs).astype(np.int64)), (lo, hi)


def _call(mod, mode, b, args, total):
    """mod.<mode> on batch b, as a function of the output keywords (out=...)."""
    kw = dict(max_len=args.context, topk=args.topk, kpool=args.kpool, page_size=args.page_size)
    lens, pool, table = b["seq_lens"], b["pool"], b["table"]
    if mode == "decode":
        return lambda **o: mod.decode(lens, pool, table, **kw, **o)
    if mode == "target_verify":
        return lambda **o: mod.target_verify(lens, pool, table, next_n=args.next_n, **kw, **o)
    return lambda **o: mod.draft_extend(lens, b["extend_lens"], pool, table, total=total, **kw, **o)


def demo(args):
    host, (lo, hi) = _batch(args, np.random.default_rng(args.seed))
    lens, total = host["seq_lens"], int(host["extend_lens"].sum())
    print(f"nsa-metadata {__version__} demo: {args.bs} requests, seq_lens {lens.min()}..{lens.max()}"
          f" (drawn from [{lo}, {hi}])")
    print(f"req_to_token {host['table'].shape[0]} x {args.context}, max_len {args.context},"
          f" topk {args.topk}, kpool {args.kpool}, page_size {args.page_size}, next_n {args.next_n}")
    lib = None if args.host else _device_lib()
    if lib is None:
        why = "--host given" if args.host else "no CUDA GPU found through torch or CuPy"
        print(f"{why}: showing the NumPy reference's outputs")
    else:
        mod = __import__(lib)
        to_dev = (lambda a: mod.from_numpy(a).cuda()) if lib == "torch" else mod.asarray
        to_host = (lambda a: a.cpu().numpy()) if lib == "torch" else mod.asnumpy
        sync = mod.cuda.synchronize if lib == "torch" else mod.cuda.runtime.deviceSynchronize
        dev = {k: to_dev(v) for k, v in host.items()}
        print(f"computing on the GPU through {lib}, beside the NumPy reference")
    ok = True
    for mode in MODES:
        t0 = time.perf_counter()
        want = _call(reference, mode, host, args, total)()
        ref_ms = (time.perf_counter() - t0) * 1e3
        print(f"\n{mode}: {want.nsa_cache_seqlens.shape[0]} rows; the reference took {ref_ms:.1f} ms")
        fields = [f for f in FIELDS if getattr(want, f) is not None]
        if lib is None:
            print(_table(["output", "shape", "reference"],
                         [[f, "x".join(map(str, getattr(want, f).shape)), _first(getattr(want, f))]
                          for f in fields]))
            continue
        call = _call(nm, mode, dev, args, total)
        got = call()
        sync()
        table = []
        for f in fields:
            g, w = to_host(getattr(got, f)), getattr(want, f)
            same = bool(np.array_equal(g, w))
            ok &= same
            table.append([f, "x".join(map(str, w.shape)), _first(g), _first(w), "yes" if same else "NO"])
        print(_table(["output", "shape", f"GPU ({lib})", "reference", "equal"], table))
        n = 200
        t0 = time.perf_counter()
        for _ in range(n):
            call(out=got)
        host_us = (time.perf_counter() - t0) / n * 1e6
        sync()
        print(f"host time per call with out= given: {host_us:.1f} us")
    if not ok:
        print("\nMISMATCH: the GPU's outputs differ from the reference", file=sys.stderr)
        return 1
    print("\nOK: every GPU output equals the reference" if lib else "\nOK (reference only)")
    return 0


def _bench_blocker():
    """Why `bench` cannot run here (a sentence), or None when torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (bench times against torch ops on a CUDA GPU)"
    except Exception as e:  # a broken install: say what broke
        return f"torch failed to import: {type(e).__name__}: {e}"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch"
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA GPU"
                f" (no GPU, or a driver too old for CUDA {torch.version.cuda})")
    return None


def bench(argv):
    from . import bench as engine

    args = engine.parse_args(argv)  # --help works anywhere
    blocker = _bench_blocker()
    if blocker is not None:
        print(f"nsa-metadata bench needs torch with a CUDA GPU: {blocker}.", file=sys.stderr)
        return 2
    return engine.main(args)


def parser():
    """The top-level parser and the demo's."""
    p = argparse.ArgumentParser(prog="nsa-metadata", description=__doc__)
    p.add_argument("--version", action="version", version=f"nsa-metadata {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{demo,bench}",
                           help="what to run (nsa-metadata COMMAND --help tells more)")
    d = sub.add_parser(
        "demo", help="compute one random batch in every mode and show it beside the reference",
        description="Builds one random batch (KV slots laid out in scattered pages, as an engine "
        "holds them) and computes decode, target_verify and draft_extend on it. On a GPU (torch "
        "first, then CuPy) every output is compared with the NumPy reference; without one the "
        "reference's outputs are shown. Exit status: 0 when all match, 1 on a mismatch, 2 on a "
        "bad flag.")
    d.add_argument("--bs", type=_at_least(1), default=64, metavar="N",
                   help="number of requests in the batch (default: %(default)s)")
    d.add_argument("--context", type=_at_least(2), default=32768, metavar="N",
                   help="req_to_token width and max_len, in tokens; seq_lens are drawn from "
                   "[(N - next_n) / 2, N - next_n] (default: %(default)s)")
    d.add_argument("--next-n", type=_at_least(1), default=4, metavar="N",
                   help="target_verify's draft tokens per request; draft_extend extends each "
                   "request by 1 to N tokens (default: %(default)s)")
    d.add_argument("--topk", type=_at_least(1), default=2048, metavar="N",
                   help="the sparse-attention top-k that clamps nsa_cache_seqlens "
                   "(default: %(default)s)")
    d.add_argument("--kpool", type=_at_least(1), default=1, metavar="N",
                   help="the indexer's pooling granularity: the clamp keeps whole groups of N "
                   "tokens (default: %(default)s)")
    d.add_argument("--page-size", type=_at_least(1), default=64, metavar="N",
                   help="KV cache page size in tokens, the unit of real_page_table "
                   "(default: %(default)s)")
    d.add_argument("--seed", type=_at_least(0), default=0, metavar="N",
                   help="random seed of the batch (default: %(default)s)")
    d.add_argument("--host", action="store_true",
                   help="show the NumPy reference only, even when a GPU is present")
    sub.add_parser("bench", add_help=False,
                   help="time GPU cost against torch ops and the copy floor, and host cost against "
                   "an empty launch timed round-robin with each row (needs torch with a CUDA GPU; "
                   "nsa-metadata bench --help)")
    return p, d


def _check_demo(args, error):
    """Flags that are each valid but impossible together: error() exits 2 with the message."""
    if args.context <= args.next_n:
        error(f"--context ({args.context}) must be greater than --next-n ({args.next_n})")
    biggest = args.bs * max(2, args.next_n) * args.context  # req_to_token or page_table_1
    if biggest > DEMO_MAX_ELEMENTS:
        error(f"--bs {args.bs}, --next-n {args.next_n} and --context {args.context} need a table of"
              f" {biggest} elements; the demo stays within {DEMO_MAX_ELEMENTS}")
    slots = 2 * args.bs * -(-args.context // args.page_size) * args.page_size
    if slots > INT32_MAX:
        error(f"--page-size {args.page_size} makes KV slot indices past int32 for this batch")


def main(argv=None):
    p, d = parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options belong to the benchmark's own parser
        return bench(argv[1:])
    args = p.parse_args(argv)
    _check_demo(args, d.error)
    try:
        return demo(args)
    except BrokenPipeError:  # `nsa-metadata demo | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
