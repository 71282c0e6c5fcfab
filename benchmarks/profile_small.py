"""Nsight Compute target: a few prepared calls of small live batches (one kernel each).

ncu -k regex:metadata_kernel python benchmarks/profile_small.py [mode bs ctx [cap]] ...
"""
import sys

import torch

from nsa_metadata.bench import Case

args = sys.argv[1:] or ["decode", "8", "4096", "target_verify", "8", "4096"]
cases = []
while args:
    mode, bs, ctx = args[0], int(args[1]), int(args[2])
    args = args[3:]
    cap = None
    if args and args[0].isdigit():
        cap, args = int(args[0]), args[1:]
    cases.append(Case(mode, bs, ctx, cap=cap, live=True))
for c in cases:
    for k in range(3):
        c.prepared(k)
torch.cuda.synchronize()
