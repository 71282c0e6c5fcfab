"""One benchmark row's call, a few times, for Nsight Compute to profile (no timing here).
  ncu --kernel-name regex:metadata_kernel --launch-skip 3 --launch-count 1 --section SpeedOfLight \
      python3 benchmarks/ncu_row.py draft_extend 4096 4096 full
(last argument: live or full; the inputs are bench.Case's, so the profile is the grid's row)."""
import sys

import torch

from nsa_metadata import bench

if not torch.cuda.is_available():
    sys.exit("ncu_row.py needs torch with a CUDA GPU")
mode, bs, ctx, extent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
case = bench.Case(mode, bs, ctx, live=extent == "live")
for s in range(4):
    case.ours(s)
torch.cuda.synchronize()
print(f"{mode} {bs}x{ctx} {extent}: {case.bytes / 1e6:.1f} MB")
