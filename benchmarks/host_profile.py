"""Where the host time of one eager call goes (torch, outputs given): cProfile of N calls."""

import cProfile
import pstats

import torch

import nsa_metadata as nm

bs, ctx = 64, 4096
d = dict(seq_lens=torch.full((bs,), ctx, device="cuda"), req_pool_indices=torch.arange(bs, device="cuda"),
         req_to_token=torch.randint(0, 2**31 - 1, (bs, ctx), dtype=torch.int32, device="cuda"))
md = nm.decode(**d, max_len=ctx, page_size=64)
for _ in range(100):
    nm.decode(**d, max_len=ctx, page_size=64, out=md)
pr = cProfile.Profile()
pr.enable()
for _ in range(2000):
    nm.decode(**d, max_len=ctx, page_size=64, out=md)
pr.disable()
torch.cuda.synchronize()
pstats.Stats(pr).sort_stats("tottime").print_stats(18)
