"""CuPy arrays on a CuPy stream: the call launches on the current stream and returns CuPy arrays.

Run: python examples/cupy_eager.py   (needs CuPy and a CUDA GPU; prints OK)
"""

import sys

import cupy
import numpy as np

import nsa_metadata as nm

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded")


def check(name, got, want):
    """Every output the reference computed must be equal on the GPU."""
    for f in FIELDS:
        if getattr(want, f) is not None and not np.array_equal(cupy.asnumpy(getattr(got, f)),
                                                               getattr(want, f)):
            sys.exit(f"{name}: {f} differs from the reference")


try:
    n_gpus = cupy.cuda.runtime.getDeviceCount()
except cupy.cuda.runtime.CUDARuntimeError:
    n_gpus = 0
if n_gpus == 0:
    sys.exit("this example needs a CUDA GPU visible to CuPy")

P, W, PAGE, bs, MAX_EXT = 16, 4096, 64, 8, 4
rng = np.random.default_rng(0)
pages = rng.permutation(P * W // PAGE).reshape(P, W // PAGE)
table = (np.repeat(pages, PAGE, axis=1) * PAGE + np.arange(W) % PAGE).astype(np.int32)
lens = rng.integers(MAX_EXT, W + 1, size=bs).astype(np.int32)  # int32 inputs work as well
pool = rng.permutation(P)[:bs].astype(np.int32)
ext = rng.integers(0, MAX_EXT + 1, size=bs).astype(np.int32)     # a request may add none
total = int(ext.sum())
kw = dict(max_len=W, topk=2048, page_size=PAGE)

stream = cupy.cuda.Stream(non_blocking=True)
with stream:  # the calls below launch on `stream`, the current CuPy stream
    seq_lens, req_pool_indices, req_to_token, extend_lens = map(cupy.asarray, (lens, pool, table, ext))
    decoded = nm.decode(seq_lens, req_pool_indices, req_to_token, **kw)
    extended = nm.draft_extend(seq_lens, extend_lens, req_pool_indices, req_to_token,
                               total=total, **kw)
stream.synchronize()  # the calls never synchronise: wait before reading

assert isinstance(decoded.page_table_1, cupy.ndarray)
check("decode", decoded, nm.reference.decode(lens, pool, table, **kw))
check("draft_extend", extended, nm.reference.draft_extend(lens, ext, pool, table, total=total, **kw))
print("OK")
