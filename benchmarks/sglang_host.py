"""Host microseconds per call of nsa_metadata.sglang's drop-in, beside SGLang's own launcher, our
prepared path and an empty kernel launch, on the same persistent buffers (as SGLang's backend
calls them at every CUDA-graph replay).

    python benchmarks/sglang_host.py

Needs torch with a CUDA GPU and the `sglang` distribution installed (its metadata module is
loaded by file path, so only torch and triton must import); exits with code 2 and says what is
missing otherwise. Each figure is the median of eager calls with at most two in flight on the
GPU (nsa_metadata.bench.host_us), so a kernel slower than its launch does not pace the host.
"""

from __future__ import annotations

import sys

NEXT_N, EXT, TOPK, PAGE = 4, 4, 2048, 64
CONFIGS = [("decode", 32, 4096), ("decode", 256, 32768), ("target_verify", 32, 4096),
           ("target_verify", 256, 32768), ("draft_extend", 32, 4096), ("draft_extend", 256, 32768)]


def measure(sgl, mode, bs, ctx, *, real_only=False):
    """Host us per call: (ours, prepared, SGLang's) for one configuration."""
    import torch

    import nsa_metadata as nm
    from nsa_metadata import bench
    from nsa_metadata import sglang as ours

    dev = dict(device="cuda")
    g = torch.Generator(device="cpu").manual_seed(bs)
    seq_lens = torch.randint(ctx // 2, ctx - NEXT_N, (bs,), generator=g).to(**dev)
    pool = torch.randperm(bs, generator=g).to(**dev)
    ext = torch.full((bs,), EXT, dtype=torch.int64, **dev)
    table = torch.randint(0, 2**31 - 1, (bs, ctx), generator=g, dtype=torch.int32).to(**dev)
    rows = bs * {"decode": 1, "target_verify": NEXT_N, "draft_extend": EXT}[mode]
    i32 = dict(dtype=torch.int32, **dev)
    b = dict(cache_seqlens=torch.empty(bs, **i32), cu_seqlens_k=torch.empty(bs + 1, **i32),
             page_table_1=None if real_only else torch.empty(rows, ctx, **i32),
             dsa_cache_seqlens=torch.empty(rows, **i32), dsa_cu_seqlens_k=torch.empty(rows + 1, **i32),
             real_page_table=torch.empty(rows, -(-ctx // PAGE), **i32),
             seqlens_expanded=torch.empty(rows, **i32))
    common = (b["cache_seqlens"], b["cu_seqlens_k"], b["page_table_1"])
    tail = (b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"], b["real_page_table"])
    if mode == "decode":
        args = (seq_lens, pool, table, *common, *tail, bs, ctx, TOPK, PAGE)
    elif mode == "target_verify":
        args = (seq_lens, pool, table, *common, b["seqlens_expanded"], *tail, bs, ctx, TOPK, PAGE,
                NEXT_N)
    else:
        args = (seq_lens, ext, pool, table, *common, b["seqlens_expanded"], *tail, bs, rows, ctx,
                TOPK, PAGE, EXT, rows, True)
    name = {"decode": "fused_dsa_decode_metadata", "target_verify": "fused_dsa_target_verify_metadata",
            "draft_extend": "fused_dsa_draft_extend_metadata"}[mode]
    mine, theirs = getattr(ours, name), getattr(sgl, name)
    prep = nm.prepare(mode, seq_lens, pool, table, extend_lens=ext if mode == "draft_extend" else None,
                      next_n=NEXT_N if mode == "target_verify" else 1, topk=TOPK, page_size=PAGE,
                      live=True, out=nm.Metadata(b["cache_seqlens"], b["cu_seqlens_k"],
                                                 b["dsa_cache_seqlens"], b["dsa_cu_seqlens_k"],
                                                 b["page_table_1"], b["real_page_table"],
                                                 None if mode == "decode" else b["seqlens_expanded"]))
    return (bench.host_us(lambda k: mine(*args)), bench.host_us(lambda k: prep(bs, ctx, rows)),
            bench.host_us(lambda k: theirs(*args)))


def main() -> int:
    try:
        import torch
    except ImportError:
        print("sglang_host: needs torch with CUDA (torch is not installed)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("sglang_host: needs a CUDA GPU that torch can see", file=sys.stderr)
        return 2
    from nsa_metadata import bench

    try:
        sgl = bench.load_sglang()
    except ImportError as e:
        print(f"sglang_host: SGLang's metadata module does not import: {e}", file=sys.stderr)
        return 2
    if sgl is None:
        print(f"sglang_host: needs the sglang distribution installed (with {bench.SGLANG_FILE})",
              file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, sglang {sgl.VERSION}; "
          f"host us per call (median), page size {PAGE}, live=True")
    print(f"# empty launch: {bench.empty_launch_host_us():.1f} us")
    print(f"{'mode':<14} {'bs x ctx':>10} {'tables':>7} {'drop-in':>8} {'prepared':>9} "
          f"{'sglang':>8} {'sglang / drop-in':>17}")
    for mode, bs, ctx in CONFIGS:
        for real_only in (False, True):
            mine, prep, theirs = measure(sgl, mode, bs, ctx, real_only=real_only)
            print(f"{mode:<14} {f'{bs}x{ctx}':>10} {'real' if real_only else 'both':>7} "
                  f"{mine:8.1f} {prep:9.1f} {theirs:8.1f} {theirs / mine:16.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
