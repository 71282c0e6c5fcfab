"""Eager calls with torch: outputs allocated by the call, then written into persistent buffers.

Run: python examples/torch_eager.py   (needs torch and a CUDA GPU; prints OK)
"""

import sys

import numpy as np
import torch

import nsa_metadata as nm

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded")


def check(name, got, want):
    """Every output the reference computed must be equal on the GPU."""
    for f in FIELDS:
        if getattr(want, f) is not None and not np.array_equal(getattr(got, f).cpu().numpy(),
                                                               getattr(want, f)):
            sys.exit(f"{name}: {f} differs from the reference")


if not torch.cuda.is_available():
    sys.exit("this example needs a CUDA GPU visible to torch")

# The engine's state: a pool of P request slots whose req_to_token rows list each token's KV
# cache slot (pages of PAGE tokens scattered over the cache), and a batch of bs requests.
P, W, PAGE, bs, NEXT_N = 16, 4096, 64, 8, 4
rng = np.random.default_rng(0)
pages = rng.permutation(P * W // PAGE).reshape(P, W // PAGE)
table = (np.repeat(pages, PAGE, axis=1) * PAGE + np.arange(W) % PAGE).astype(np.int32)
lens = rng.integers(1, W - NEXT_N + 1, size=bs)     # int64; room for NEXT_N more tokens
pool = rng.permutation(P)[:bs]
ext = rng.integers(1, NEXT_N + 1, size=bs)          # draft_extend: new tokens per request
seq_lens, req_pool_indices, req_to_token, extend_lens = (
    torch.from_numpy(a).cuda() for a in (lens, pool, table, ext))
max_len = W                                         # the page tables' width
kw = dict(max_len=max_len, topk=2048, page_size=PAGE)

# 1. decode: the call allocates its outputs with torch, on the inputs' device.
md = nm.decode(seq_lens, req_pool_indices, req_to_token, **kw)
print(md)
check("decode", md, nm.reference.decode(lens, pool, table, **kw))

# 2. target_verify into persistent buffers sized for the largest batch (MAX_BS requests):
#    only the region this step needs is written, the rest keeps its contents.
MAX_BS = 32
rows = MAX_BS * NEXT_N
i32 = dict(dtype=torch.int32, device="cuda")
bufs = nm.Metadata(
    cache_seqlens=torch.zeros(MAX_BS, **i32), cu_seqlens_k=torch.zeros(MAX_BS + 1, **i32),
    nsa_cache_seqlens=torch.zeros(rows, **i32), nsa_cu_seqlens_k=torch.zeros(rows + 1, **i32),
    page_table_1=torch.zeros(rows, W, **i32), real_page_table=torch.zeros(rows, W // PAGE, **i32),
    seqlens_expanded=torch.zeros(rows, **i32))
out = nm.target_verify(seq_lens, req_pool_indices, req_to_token, next_n=NEXT_N, out=bufs, **kw)
assert out is bufs
host = nm.Metadata(**{f: np.zeros(tuple(getattr(bufs, f).shape), np.int32) for f in FIELDS})
check("target_verify", bufs,
      nm.reference.target_verify(lens, pool, table, next_n=NEXT_N, out=host, **kw))

# 3. draft_extend: total is the number of rows, sum(extend_lens).
total = int(ext.sum())
md = nm.draft_extend(seq_lens, extend_lens, req_pool_indices, req_to_token, total=total, **kw)
check("draft_extend", md, nm.reference.draft_extend(lens, ext, pool, table, total=total, **kw))
print("OK")
