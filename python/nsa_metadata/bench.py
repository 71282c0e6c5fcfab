"""The benchmark engine (torch on one CUDA GPU): ours vs SGLang's fused DSA metadata kernels
(when the `sglang` package is installed) vs SPEC as torch ops vs the copy floor.

GPU time: a CUDA graph of K calls over rotating input/output sets, replays timed with events,
median over replays / K. Host time: median of eager calls (outputs given, at most two on the GPU);
a row's host columns and an empty launch are timed round-robin, in blocks of calls, so they see
the same machine conditions, and `x launch` divides by the row's own empty launch; host calls use
one input/output set (GPU times rotate the sets).
Floor: a device-to-device copy moving the same bytes (read + write) as the call, timed the same
way; for live rows those are the live bytes (the live copy floor).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import collections
import json
import os
import re
import statistics
import sys
import time

import numpy as np

from . import _api, _core
from .reference import MODES

K = 16      # calls per graph
SETS = 4    # rotating input/output sets (more when a set fits in L2)
LEAD_CYCLES = 200_000  # gpu_us' sleeping kernel ahead of a timed replay: about 100 us


def torch_ops(mode, seq_lens, req_pool_indices, req_to_token, extend_lens, *, max_len, topk,
              page_size, next_n, total, out):
    """SPEC's formulas as plain torch ops, writing into `out` (what engines do today)."""
    import torch

    cache = seq_lens.to(torch.int32)
    idx = req_pool_indices
    if mode == "target_verify":
        j = torch.arange(1, next_n + 1, device=cache.device, dtype=torch.int32)
        expanded = (cache[:, None] + j).reshape(-1)
        cache = cache + next_n
        idx = torch.repeat_interleave(idx, next_n)
    elif mode == "draft_extend":
        ext = extend_lens.to(torch.int32)
        rep = torch.repeat_interleave(torch.arange(cache.shape[0], device=cache.device), ext,
                                      output_size=total)
        start = torch.cumsum(ext, 0) - ext
        j = torch.arange(total, device=cache.device) - start[rep]
        expanded = torch.clamp(cache[rep] - ext[rep] + j + 1, min=0).to(torch.int32)
        idx = idx[rep]
    else:
        expanded = cache
    out.cache_seqlens.copy_(cache)
    torch.cumsum(cache, 0, dtype=torch.int32, out=out.cu_seqlens_k[1:])
    nsa = torch.clamp(expanded, max=topk)
    out.nsa_cache_seqlens.copy_(nsa)
    torch.cumsum(nsa, 0, dtype=torch.int32, out=out.nsa_cu_seqlens_k[1:])
    if mode != "decode":
        out.seqlens_expanded.copy_(expanded)
    pt1 = req_to_token[idx, :max_len]
    if out.page_table_1 is not None:
        out.page_table_1.copy_(pt1)
    if out.real_page_table is not None and page_size > 1:
        torch.floor_divide(pt1[:, ::page_size], page_size, out=out.real_page_table)


SGLANG_FILE = "sglang/kernels/ops/attention/dsa/metadata.py"


def load_sglang():
    """SGLang's fused DSA metadata kernels, loaded by file path from the installed `sglang`
    distribution (importing the package itself pulls in far more); None when not installed."""
    try:
        dist = importlib.metadata.distribution("sglang")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = str(dist.locate_file(SGLANG_FILE))
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("_sglang_dsa_metadata", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.VERSION = dist.version
    return mod


def sglang_call(sgl, mode, d, md, *, bs, max_len, topk, page_size, spec, rows):
    """One call of SGLang's kernel for `mode` into `md` (positional: its page-size keyword is
    spelled differently across versions). Writes the live prefix, like live=True."""
    common = (md.cache_seqlens, md.cu_seqlens_k, md.page_table_1)
    if mode == "decode":
        sgl.fused_dsa_decode_metadata(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], *common,
                                      md.nsa_cache_seqlens, md.nsa_cu_seqlens_k, md.real_page_table,
                                      bs, max_len, topk, page_size)
    elif mode == "target_verify":
        sgl.fused_dsa_target_verify_metadata(d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                                             *common, md.seqlens_expanded, md.nsa_cache_seqlens,
                                             md.nsa_cu_seqlens_k, md.real_page_table, bs, max_len, topk,
                                             page_size, spec)
    else:
        sgl.fused_dsa_draft_extend_metadata(d["seq_lens"], d["extend_lens"], d["req_pool_indices"],
                                            d["req_to_token"], *common, md.seqlens_expanded,
                                            md.nsa_cache_seqlens, md.nsa_cu_seqlens_k, md.real_page_table,
                                            bs, rows, max_len, topk, page_size, spec, rows)


class Case:
    """One benchmark configuration with SETS independent input/output sets on the GPU."""

    def __init__(self, mode, bs, ctx, *, cap=None, topk=2048, page_size=64, spec=4, live=False,
                 real_only=False, schedule=False, seed=0):
        import torch

        self.mode, self.bs, self.ctx, self.live, self.real_only = mode, bs, ctx, live, real_only
        self.topk, self.page_size = topk, page_size
        cap = ctx if cap is None else cap  # every length <= cap: a graph captured at width ctx
        self.kw = dict(max_len=ctx, topk=topk, page_size=page_size, live=live)
        if schedule:  # FlashMLA's schedule in the same launch (66 parts: an H100, 128 heads)
            self.kw["schedule"] = _api.Schedule(66)
        rng = np.random.default_rng(seed)
        self.rows = bs if mode == "decode" else bs * spec
        width = -(-ctx // page_size)
        one_set = bs * ctx * 4 + self.rows * (ctx + width) * 4
        self.nsets = SETS if one_set > 64 << 20 else max(SETS, min(64, (256 << 20) // max(one_set, 1)))
        self.sets, self.plans = [], []
        for s in range(self.nsets):
            lens = rng.integers(cap // 2, cap + 1, size=bs)
            lens[rng.integers(0, bs)] = cap
            d = dict(
                seq_lens=torch.from_numpy(lens).cuda(),
                req_pool_indices=torch.from_numpy(rng.permutation(bs)).cuda(),
                req_to_token=torch.randint(0, 2**31 - 1, (bs, ctx), dtype=torch.int32, device="cuda"),
                extend_lens=torch.full((bs,), spec, dtype=torch.int64, device="cuda"),
            )
            md = _api.Metadata(
                cache_seqlens=torch.empty(bs, dtype=torch.int32, device="cuda"),
                cu_seqlens_k=torch.zeros(bs + 1, dtype=torch.int32, device="cuda"),
                nsa_cache_seqlens=torch.empty(self.rows, dtype=torch.int32, device="cuda"),
                nsa_cu_seqlens_k=torch.zeros(self.rows + 1, dtype=torch.int32, device="cuda"),
                seqlens_expanded=None if mode == "decode" else torch.empty(self.rows, dtype=torch.int32, device="cuda"),
                page_table_1=None if real_only else torch.empty(self.rows, ctx, dtype=torch.int32, device="cuda"),
                real_page_table=torch.empty(self.rows, width, dtype=torch.int32, device="cuda"),
            )
            if schedule:
                md.tile_scheduler_metadata = torch.empty(66, 8, dtype=torch.int32, device="cuda")
                md.num_splits = torch.empty(self.rows + 1, dtype=torch.int32, device="cuda")
            self.sets.append((d, md))
            self.plans.append(_api.prepare(mode, d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                                           out=md, extend_lens=d["extend_lens"], next_n=spec,
                                           topk=topk, page_size=page_size, live=live,
                                           schedule=self.kw.get("schedule")))
        # bytes the call must move: each source column read once, each output written once
        live_cols = (sum(min(int(x), ctx) for x in self.sets[0][0]["seq_lens"].tolist()) / bs
                     if live else ctx)
        per_req = bs * (-(-live_cols // page_size) if real_only else live_cols) * 4
        written = self.rows * ((0 if real_only else live_cols) + live_cols / page_size) * 4
        self.bytes = per_req + written + bs * 16 + self.rows * 12
        self.spec = spec
        self.views = {}  # (set, bs) -> the first bs requests' input views (ours_varying)
        self.host = False  # True while host times are taken: every call uses set 0 (pick)

    def pick(self, s):
        """The input/output set of call s: rotating for GPU times (so the inputs do not all sit
        in L2), set 0 for host times (an engine's one set of buffers: more sets than the
        one-shot plan cache holds would time rebinding, not the call)."""
        return 0 if self.host else s % self.nsets

    def ours(self, s):
        d, md = self.sets[self.pick(s)]
        if self.mode == "decode":
            _api.decode(d["seq_lens"], d["req_pool_indices"], d["req_to_token"], out=md, **self.kw)
        elif self.mode == "target_verify":
            _api.target_verify(d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                               next_n=self.spec, out=md, **self.kw)
        else:
            _api.draft_extend(d["seq_lens"], d["extend_lens"], d["req_pool_indices"],
                              d["req_to_token"], total=self.rows, out=md, **self.kw)

    def sglang(self, sgl):
        def call(s):
            d, md = self.sets[self.pick(s)]
            sglang_call(sgl, self.mode, d, md, bs=self.bs, max_len=self.ctx, topk=self.topk,
                        page_size=self.page_size, spec=self.spec, rows=self.rows)
        return call

    def ours_varying(self, s):
        """The one-shot call with bs and max_len different on every call, as engines call it (the
        batch's longest KV length changes nearly every step): views of the first bs requests,
        made outside the timed call, into the same output buffers."""
        i = self.pick(s)
        d, md = self.sets[i]
        bs, max_len = self.bs - 1 + s % 2 if self.bs > 1 else s % 2, self.ctx - s % 64
        views = self.views.get((i, bs))
        if views is None:
            views = self.views[(i, bs)] = tuple(
                d[k][:bs] for k in ("seq_lens", "extend_lens", "req_pool_indices"))
        kw = dict(self.kw, max_len=max_len)
        if self.mode == "decode":
            _api.decode(views[0], views[2], d["req_to_token"], out=md, **kw)
        elif self.mode == "target_verify":
            _api.target_verify(views[0], views[2], d["req_to_token"], next_n=self.spec, out=md, **kw)
        else:
            _api.draft_extend(views[0], views[1], views[2], d["req_to_token"],
                              total=bs * self.spec, out=md, **kw)

    def prepared(self, s):
        self.plans[self.pick(s)](self.bs, self.ctx, self.rows)

    def torch(self, s):
        d, md = self.sets[self.pick(s)]
        kw = {k: v for k, v in self.kw.items() if k != "live"}
        torch_ops(self.mode, d["seq_lens"], d["req_pool_indices"], d["req_to_token"],
                  d["extend_lens"], next_n=self.spec, total=self.rows, out=md, **kw)


def gpu_us(fn, replays=None):
    """Median GPU microseconds per call: a graph of K calls (fn(k) for k < K), replayed (100
    times, or 30 when a replay takes a millisecond or more). A sleeping kernel ahead of each
    timed replay keeps the stream busy while the host records the start event and launches the
    graph, so the events time the graph alone, not the host's launch latency (on an H100 that
    latency added 0.2-0.3 us per call at small rows, and outliers of several us)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for k in range(K):  # warm-up outside capture (allocations, lazy init)
            fn(k)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for k in range(K):
            fn(k)
    # replays for 20 ms first: the clocks come back up after the host's setup of the row (with
    # 3 replays the small rows moved by 0.2 us between runs); then more replays when they are short
    t0 = time.perf_counter()
    while True:
        t1 = time.perf_counter()
        g.replay()
        torch.cuda.synchronize()
        if time.perf_counter() - t0 > 0.02:
            break
    if replays is None:
        replays = 100 if time.perf_counter() - t1 < 1e-3 else 30
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(LEAD_CYCLES)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / K)
    return statistics.median(times)


def _host_block(fn, ks, in_flight, warm):
    """Host seconds of fn(k) for each k in ks (eager calls): `warm` untimed calls first, then at
    most `in_flight` calls on the GPU: before each timed call the host waits (outside the timed
    region) for the call `in_flight` before it, so a call whose GPU time exceeds its host time
    cannot fill the launch queue and hold the host back (the launch would then wait for the GPU,
    and the column would read the GPU's pace)."""
    import torch

    for k in range(warm):
        fn(k)
    torch.cuda.synchronize()
    queued = collections.deque()
    times = []
    for k in ks:
        if len(queued) >= in_flight:
            queued.popleft().synchronize()
        t0 = time.perf_counter()
        fn(k)
        times.append(time.perf_counter() - t0)
        queued.append(torch.cuda.Event())
        queued[-1].record()
    torch.cuda.synchronize()
    return times


def host_us(fn, calls=300, in_flight=2, warm=20):
    """Median host microseconds of one eager call (`warm` warm-up calls, then `calls` timed calls
    with at most `in_flight` on the GPU: _host_block)."""
    return statistics.median(_host_block(fn, range(calls), in_flight, warm=warm)) * 1e6


def row_empty_us(r, empty_us):
    """A row's own empty launch, timed round-robin with its host columns; JSON from before those
    has none, and the run's figure stands in."""
    return r.get("empty_host_us") or empty_us


def host_us_interleaved(fns, rounds=10, calls=30, in_flight=2, warm=20):
    """Median host microseconds of one eager call of each fn in `fns` (name -> fn), measured
    round-robin so every fn sees the same machine conditions (the host's speed drifts by up to 2x
    between rows): each round times a block of `calls` calls of each fn in turn, as host_us does
    (at most `in_flight` on the GPU; `warm` untimed calls before a fn's first block, 2 before its
    others). Returns name -> the median over all rounds x calls timed calls of that fn (not a
    median of per-round medians); fn(k) gets k = round * calls + i, so calls vary over rounds as
    in one host_us block."""
    times = {name: [] for name in fns}
    for n in range(rounds):
        for name, fn in fns.items():
            times[name] += _host_block(fn, range(n * calls, (n + 1) * calls), in_flight,
                                       warm=warm if n == 0 else 2)
    return {name: statistics.median(t) * 1e6 for name, t in times.items()}


def copy_floor_us(nbytes):
    """GPU us of D2D copies moving nbytes in total (nbytes/2 read + nbytes/2 written)."""
    import torch

    n = max(int(nbytes // 2) // 4 * 4, 4)
    bufs = [(torch.empty(n, dtype=torch.uint8, device="cuda"),
             torch.empty(n, dtype=torch.uint8, device="cuda")) for _ in range(2 if n > 64 << 20 else 8)]
    return gpu_us(lambda k: bufs[k % len(bufs)][1].copy_(bufs[k % len(bufs)][0]))


def warm_up_gpu(seconds=0.5):
    """Keep the GPU busy for a moment so the first row is not timed at idle clocks."""
    import torch

    a, b = (torch.empty(64 << 20, dtype=torch.uint8, device="cuda") for _ in range(2))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            b.copy_(a)
        torch.cuda.synchronize()


def empty_launch():
    """fn(k): one empty kernel launch through this extension (the launch floor)."""
    import torch

    stream = torch.cuda.current_stream().cuda_stream
    dev = torch.cuda.current_device()
    return lambda k: _core.empty_launch(dev, stream)


def empty_launch_host_us():
    """Host us of one empty kernel launch through this extension (the launch floor)."""
    return host_us(empty_launch(), calls=2000)


def label(mode, bs, ctx, opts):
    cap = f"@{opts['cap']}" if opts.get("cap") else ""
    flags = ",".join(k for k in ("live", "real_only", "schedule") if opts.get(k)) or "-"
    return f"{mode} {bs}x{ctx}{cap} {flags}"


def target_us(r):
    """The issue's GPU target for a row: live rows <= 0.9x SGLang's kernel (the lower of this
    run's and its main branch's, TRITON_MAIN) or <= 1.2x the live copy floor, whichever is larger;
    real-table-only rows <= 0.9x SGLang's kernel with its wide table dropped; live=False rows
    moving >= 16 MB <= 1.1x the copy floor. None: no target."""
    if r["live"] or r["real_only"]:
        peers = [x for x in (r.get("sglang_gpu_us"), TRITON_MAIN.get(r["key"])) if x is not None]
        if not peers:
            return None
        return 0.9 * min(peers) if r["real_only"] else max(0.9 * min(peers), 1.2 * r["floor_gpu_us"])
    return 1.1 * r["floor_gpu_us"] if r["bytes"] >= 16e6 else None


def run(configs, progress=True, gpu_only=False, sgl=None, partial=None):
    """Measure every configuration; `partial(rows)` is called after each (to save progress)."""
    rows = []
    for n, (mode, bs, ctx, opts) in enumerate(configs):
        name = label(mode, bs, ctx, opts)
        if progress:
            done = int(30 * n / len(configs))
            print(f"\r[{'#' * done}{'.' * (30 - done)}] {n + 1}/{len(configs)} {name:<44}", end="",
                  file=sys.stderr, flush=True)
        c = Case(mode, bs, ctx, **opts)
        r = dict(mode=mode, bs=bs, ctx=ctx, cap=opts.get("cap"), live=bool(opts.get("live")),
                 real_only=bool(opts.get("real_only")), schedule=bool(opts.get("schedule")),
                 bytes=c.bytes, key=name)
        r["ours_gpu_us"] = gpu_us(c.ours)
        r["floor_gpu_us"] = copy_floor_us(c.bytes)
        # SGLang writes the live prefix only: a peer of live=True (and of real-only, its wide
        # table dropped); its single scan program does not scale past a few thousand requests
        sgl_ok = sgl is not None and (r["live"] or r["real_only"]) and bs <= 4096
        r["sglang_gpu_us"] = gpu_us(c.sglang(sgl)) if sgl_ok else None
        # torch ops have no live or real-only form: they always build the full wide table
        # (torch ops build no schedule: a schedule row has no torch figure)
        torch_peer = not gpu_only and not r["real_only"] and not r["schedule"]
        r["torch_gpu_us"] = gpu_us(c.torch) if torch_peer else None
        if not gpu_only:  # round-robin with the row's own empty launch (host_us_interleaved)
            fns = dict(ours_host_us=c.ours, ours_varying_host_us=c.ours_varying,
                       prepared_host_us=c.prepared, sglang_host_us=c.sglang(sgl) if sgl_ok else None,
                       torch_host_us=c.torch if r["torch_gpu_us"] is not None else None,
                       empty_host_us=empty_launch())
            r.update(dict.fromkeys(fns))
            c.host = True
            r.update(host_us_interleaved({k: fn for k, fn in fns.items() if fn is not None}))
            c.host = False
        r["target_gpu_us"] = target_us(r)
        rows.append(r)
        del c
        if partial is not None:
            partial(rows)
    if progress:
        print(f"\r[{'#' * 30}] {len(configs)}/{len(configs)} done{' ' * 50}", file=sys.stderr)
    return rows


def table(rows, empty_us=None):
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    x = lambda a, b: "-" if a is None or b is None else f"{a / b:.2f}"  # noqa: E731
    header = ["mode", "bs x ctx", "opts", "MB", "ours GPU", "SGLang", "x SGLang", "floor", "x floor",
              "torch", "x torch", "target", "met"]
    if empty_us:
        header += ["host", "varying", "prepared", "SGLang host", "torch host", "launch", "x launch"]
    out = []
    for r in rows:
        mode, shape, opts = r["key"].split(" ")
        t = r.get("target_gpu_us")
        line = [mode, shape, opts, f"{r['bytes'] / 1e6:.1f}", f(r["ours_gpu_us"]), f(r.get("sglang_gpu_us")),
                x(r["ours_gpu_us"], r.get("sglang_gpu_us")), f(r["floor_gpu_us"]),
                x(r["ours_gpu_us"], r["floor_gpu_us"]), f(r.get("torch_gpu_us")),
                x(r["ours_gpu_us"], r.get("torch_gpu_us")), f(t),
                "-" if t is None else ("yes" if r["ours_gpu_us"] <= t else "MISS")]
        if empty_us:
            e = row_empty_us(r, empty_us)
            line += [f(r.get("ours_host_us")), f(r.get("ours_varying_host_us")), f(r.get("prepared_host_us")),
                     f(r.get("sglang_host_us")), f(r.get("torch_host_us")), f(e),
                     " / ".join("-" if r.get(k) is None else f"{r[k] / e:.1f}"
                                for k in ("ours_host_us", "ours_varying_host_us", "prepared_host_us"))]
        out.append(line)
    widths = [max(len(str(v)) for v in col) for col in zip(header, *out)]
    fmt = lambda row: "  ".join(str(v).rjust(w) for v, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in out])


def schedule_cost(rows):
    """(schedule row's key, GPU us without, with, the difference) for every schedule row whose
    twin without the schedule (the same key less ",schedule") was measured in the same run."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for r in rows:
        if r["key"].endswith(",schedule") and r["key"][:-len(",schedule")] in by_key:
            without, with_ = by_key[r["key"][:-len(",schedule")]]["ours_gpu_us"], r["ours_gpu_us"]
            out.append((r["key"], without, with_, with_ - without))
    return out


def plot(rows, empty_us, path, title):
    """GPU us of the live rows (ours, SGLang's kernels, the live copy floor) and host us per call."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    base = [r for r in rows if r["live"] and not r["real_only"] and not r.get("schedule")]
    for mode, color in zip(("decode", "target_verify", "draft_extend"), ("C0", "C1", "C2")):
        rs = sorted((r for r in base if r["mode"] == mode), key=lambda r: r["bytes"])
        x = [r["bytes"] / 1e6 for r in rs]
        axes[0].plot(x, [r["ours_gpu_us"] for r in rs], "o-", color=color, label=f"ours, {mode}")
        if any(r.get("sglang_gpu_us") for r in rs):
            axes[0].plot(x, [r.get("sglang_gpu_us") or float("nan") for r in rs], "x--", color=color,
                         alpha=0.6, label=f"SGLang, {mode}")
        axes[0].plot(x, [r["floor_gpu_us"] for r in rs], ":", color=color, alpha=0.8,
                     label=f"copy floor, {mode}")
        axes[1].plot(x, [r["ours_host_us"] for r in rs], "o-", color=color, label=f"ours one-shot, {mode}")
        axes[1].plot(x, [r["prepared_host_us"] for r in rs], "s-", color=color, alpha=0.5,
                     label=f"ours prepared, {mode}")
        axes[1].plot(x, [r["torch_host_us"] for r in rs], "x--", color=color, alpha=0.6,
                     label=f"torch ops, {mode}")
        axes[1].plot(x, [row_empty_us(r, empty_us) for r in rs], ":", color=color,
                     label=f"its row's empty launch, {mode}")  # (older JSON: the run's)
    for ax, what in zip(axes, ("GPU us per call, live=True (graph of 16, median)",
                               "host us per eager call (median)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MB moved per call (bs x context grid, top-k 2048, page 64)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# SGLang's fused kernels on its main branch (November 2026), GPU us per call on an H100 measured
# the same way (issue 15): targets where this run's SGLang (a release) is slower.
TRITON_MAIN = {
    "decode 1x4096 live": 1.9, "decode 8x4096 live": 2.1, "decode 32x8192 live": 3.0,
    "decode 64x32768 live": 8.3, "decode 256x32768 live": 18.1, "decode 1024x32768 live": 65.2,
    "decode 4096x4096 live": 58.8, "decode 1x131072@2048 live": 2.1, "decode 64x131072@2048 live": 6.5,
    "decode 256x131072@4096 live": 7.0, "target_verify 1x4096 live": 2.1,
    "target_verify 8x4096 live": 2.4, "target_verify 64x32768 live": 15.5,
    "target_verify 1024x32768 live": 306.4, "target_verify 64x131072@2048 live": 6.5,
    "draft_extend 8x4096 live": 2.3, "draft_extend 64x32768 live": 12.3,
    "draft_extend 1024x32768 live": 232.9, "draft_extend 64x131072@2048 live": 6.3,
    "decode 8x4096 real_only": 2.0, "decode 64x32768 real_only": 7.6,
}
SHAPES = [(1, 4096), (8, 4096), (32, 8192), (64, 32768), (256, 32768), (1024, 32768), (4096, 4096),
          (16, 131072)]
STATIC = [(1, 131072, 2048), (64, 131072, 2048), (256, 131072, 4096)]  # graph width, lengths <= cap
FULL = ([(m, bs, ctx, {"live": True}) for m in MODES for bs, ctx in SHAPES]
        + [(m, bs, ctx, {"live": True, "cap": cap}) for m in MODES for bs, ctx, cap in STATIC]
        + [(m, bs, ctx, {}) for m in MODES for bs, ctx in SHAPES]
        + [("decode", bs, ctx, {"live": True, "real_only": True}) for bs, ctx in SHAPES]
        + [(m, 65536, 256, {"live": True}) for m in ("target_verify", "draft_extend")]
        # each with its twin without the schedule among the live rows above, so one run gives
        # the schedule's cost (issue 14: <= 1 us up to bs 1024, <= 3 us at 4096; schedule_cost)
        + [("decode", bs, ctx, {"live": True, "schedule": True})
           for bs, ctx in ((1, 4096), (64, 32768), (1024, 32768), (4096, 4096))])
QUICK = [("decode", 1, 4096, {"live": True}), ("decode", 8, 4096, {"live": True}),
         ("decode", 1024, 32768, {"live": True}), ("decode", 64, 131072, {"live": True, "cap": 2048}),
         ("decode", 256, 131072, {"live": True, "cap": 4096}), ("target_verify", 8, 4096, {"live": True}),
         ("draft_extend", 8, 4096, {"live": True}), ("draft_extend", 64, 32768, {"live": True}),
         ("decode", 1024, 32768, {}), ("decode", 64, 32768, {"live": True, "real_only": True})]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="nsa-metadata bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help=f"{len(QUICK)} rows (the GPU-machine script's table)")
    p.add_argument("--gpu-only", action="store_true", help="GPU times only (no host columns, no torch ops)")
    p.add_argument("--sglang", action="store_true",
                   help="also time SGLang's fused DSA metadata kernels (needs the sglang package)")
    p.add_argument("--match", metavar="REGEX", help="only rows whose label matches, e.g. 'decode .*@'")
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--plot", help="write the PNG plot here (needs matplotlib)")
    return p.parse_args(argv)


def main(args):
    import torch

    sgl = None
    if args.sglang:
        sgl = load_sglang()
        if sgl is None:
            print(f"--sglang: no installed sglang distribution with {SGLANG_FILE}", file=sys.stderr)
            return 2
    configs = [c for c in (QUICK if args.quick else FULL)
               if args.match is None or re.search(args.match, label(*c))]
    overlap = _core.overlaps_previous_kernel(torch.cuda.current_device())  # (the launcher's choice)
    title = (f"nsa-metadata on {torch.cuda.get_device_name()}, torch {torch.__version__}"
             f"{f', sglang {sgl.VERSION}' if sgl else ''}, {time.strftime('%Y-%m-%d')}"
             f", launches {'' if overlap else 'do not '}overlap the previous kernel")
    warm_up_gpu()
    empty = None if args.gpu_only else empty_launch_host_us()

    def save(rows):
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"title": title, "device": torch.cuda.get_device_name(),
                           "overlap": overlap,
                           "empty_launch_host_us": empty, "calls_per_graph": K, "rows": rows}, f,
                          indent=1)

    rows = run(configs, gpu_only=args.gpu_only, sgl=sgl, partial=save)
    print(f"# {title}; K={K} calls per graph; GPU us per call; empty launch: "
          f"{'-' if empty is None else f'{empty:.1f}'} us host")
    print(table(rows, empty))
    for key, without, with_, more in schedule_cost(rows):
        print(f"# {key}: {with_:.1f} us, {without:.1f} without the schedule ({more:+.1f} us)")
    if args.plot and not args.gpu_only:
        plot(rows, empty, args.plot, title)
    return 0
