"""GPU us per call, the bench's method (a CUDA graph of 16 calls, median replay / 16): FlashMLA's own
scheduler kernel (get_mla_decoding_metadata, loaded from NSA_FLASHMLA_OPS) beside our decode
launch with and without the schedule in it (live, ctx 4096, top-k 2048, 66 parts: an H100 with 128
query heads). Usage: NSA_FLASHMLA_OPS=.flashmla/flashmla_ops.abi3.so python3 benchmarks/flashmla_sched.py"""

import os

import torch

import nsa_metadata as nm
from nsa_metadata.bench import gpu_us, warm_up_gpu

CTX, TOPK, PARTS = 4096, 2048, 66


def eager_us(fn, n=200):
    fn()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(n):
        fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) * 1e3 / n


def main():
    torch.ops.load_library(os.path.abspath(os.environ["NSA_FLASHMLA_OPS"]))
    op = torch.ops.sgl_kernel.get_mla_decoding_metadata
    warm_up_gpu()
    print(f"# {torch.cuda.get_device_name()}; GPU us per call (graph of 16, median); ctx {CTX}, "
          f"top-k {TOPK}, {PARTS} parts")
    print(f"{'bs':>6} {'FlashMLA sched':>15} {'ours':>8} {'ours+sched':>11} {'sched cost':>11}")
    for bs in (1, 8, 32, 64, 128, 256, 512, 1024, 4096):
        lens = torch.randint(CTX // 2, CTX + 1, (bs,), device="cuda", dtype=torch.int32)
        pool = torch.randperm(bs, device="cuda")
        table = torch.randint(0, 2**31 - 1, (bs, CTX), dtype=torch.int32, device="cuda")
        kw = dict(max_len=CTX, topk=TOPK, page_size=64, live=True)
        md = nm.decode(lens, pool, table, **kw)
        mds = nm.decode(lens, pool, table, schedule=nm.Schedule(PARTS), **kw)
        assert mds.tile_scheduler_metadata.shape[0] == PARTS
        how = "graph"
        try:
            theirs = gpu_us(lambda k: op(lens, 128, 1, 128, True, TOPK))
        except RuntimeError:  # not capturable: the mean of 200 back-to-back calls instead
            theirs, how = eager_us(lambda: op(lens, 128, 1, 128, True, TOPK)), "eager"
        plain = gpu_us(lambda k: nm.decode(lens, pool, table, out=md, **kw))
        sched = gpu_us(lambda k: nm.decode(lens, pool, table, out=mds, schedule=nm.Schedule(PARTS), **kw))
        print(f"{bs:>6} {theirs:>9.1f} {how:>5} {plain:>8.1f} {sched:>11.1f} {sched - plain:>11.1f}")


if __name__ == "__main__":
    main()
