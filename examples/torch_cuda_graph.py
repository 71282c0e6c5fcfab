"""A CUDA graph replayed every step: nsa_metadata.prepare binds persistent buffers once, the
graph captures one launch, and each step only writes new lengths and pool indices in place.

Run: python examples/torch_cuda_graph.py   (needs torch and a CUDA GPU; prints OK)
"""

import sys

import numpy as np
import torch

import nsa_metadata as nm

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded")

if not torch.cuda.is_available():
    sys.exit("this example needs a CUDA GPU visible to torch")

CAP_BS, P, W, NEXT_N, PAGE = 32, 64, 2048, 4, 64
rng = np.random.default_rng(0)
pages = rng.permutation(P * W // PAGE).reshape(P, W // PAGE)
table = (np.repeat(pages, PAGE, axis=1) * PAGE + np.arange(W) % PAGE).astype(np.int32)

# Persistent buffers, sized for the largest batch: the graph reads and writes these addresses.
dev = dict(device="cuda")
seq_lens = torch.zeros(CAP_BS, dtype=torch.int64, **dev)
req_pool_indices = torch.zeros(CAP_BS, dtype=torch.int64, **dev)
req_to_token = torch.from_numpy(table).cuda()
rows = CAP_BS * NEXT_N
i32 = dict(dtype=torch.int32, **dev)
bufs = nm.Metadata(
    cache_seqlens=torch.zeros(CAP_BS, **i32), cu_seqlens_k=torch.zeros(CAP_BS + 1, **i32),
    nsa_cache_seqlens=torch.zeros(rows, **i32), nsa_cu_seqlens_k=torch.zeros(rows + 1, **i32),
    page_table_1=torch.zeros(rows, W, **i32), real_page_table=torch.zeros(rows, W // PAGE, **i32),
    seqlens_expanded=torch.zeros(rows, **i32))
plan = nm.prepare("target_verify", seq_lens, req_pool_indices, req_to_token, out=bufs,
                  next_n=NEXT_N, topk=2048, page_size=PAGE)

bs, max_len = 24, W  # fixed at capture, like every shape in a graph
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    plan(bs, max_len)  # warm-up outside the capture
torch.cuda.current_stream().wait_stream(s)
torch.cuda.synchronize()
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    plan(bs, max_len)

for step in range(5):
    lens = rng.integers(1, W - NEXT_N + 1, size=bs)  # this step's lengths and pool slots
    pool = rng.permutation(P)[:bs]
    seq_lens[:bs].copy_(torch.from_numpy(lens))      # written in place: same addresses
    req_pool_indices[:bs].copy_(torch.from_numpy(pool))
    before = nm.Metadata(**{f: getattr(bufs, f).cpu().numpy().copy() for f in FIELDS})
    graph.replay()
    torch.cuda.synchronize()
    # The reference writes the same region of a copy of the buffers as they were before.
    want = nm.reference.target_verify(lens, pool, table, next_n=NEXT_N, max_len=max_len,
                                      topk=2048, page_size=PAGE, out=before)
    for f in FIELDS:
        if not np.array_equal(getattr(bufs, f).cpu().numpy(), getattr(want, f)):
            sys.exit(f"replay {step}: {f} differs from the reference")
print("OK")
