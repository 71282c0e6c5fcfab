"""A typed use of the public API, checked by `mypy --strict` in CI (.ci/run) and run by
tests/test_typed_usage.py. Every name a user reaches is used here with the types it documents;
a wrong type (say `page_size="64"`) must be a mypy error, as it is a TypeError at run time."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import numpy.typing as npt

import nsa_metadata as nm
from nsa_metadata import sglang

Ints = npt.NDArray[np.int32]


def inputs(bs: int, width: int) -> Tuple[Ints, Ints, Ints, Ints]:
    seq_lens = np.full(bs, width - 1, np.int32)
    req_pool_indices = np.arange(bs, dtype=np.int32)
    req_to_token = np.arange(bs * width, dtype=np.int32).reshape(bs, width)
    extend_lens = np.full(bs, 2, np.int32)
    return seq_lens, req_pool_indices, req_to_token, extend_lens


def buffers(bs: int, rows: int, width: int, page_size: int, expanded: bool) -> nm.Metadata:
    return nm.Metadata(
        cache_seqlens=np.empty(bs, np.int32), cu_seqlens_k=np.empty(bs + 1, np.int32),
        nsa_cache_seqlens=np.empty(rows, np.int32), nsa_cu_seqlens_k=np.empty(rows + 1, np.int32),
        page_table_1=np.empty((rows, width), np.int32),
        real_page_table=np.empty((rows, -(-width // page_size)), np.int32),
        seqlens_expanded=np.empty(rows, np.int32) if expanded else None)


def main() -> None:
    bs, width, page = 4, 130, 64
    seq_lens, pool, table, ext = inputs(bs, width)

    md: nm.Metadata = nm.decode(seq_lens, pool, table, max_len=width, topk=2048, page_size=page)
    page_table: Optional[object] = md.page_table_1
    assert page_table is not None
    tv: nm.Metadata = nm.target_verify(seq_lens, pool, table, next_n=2, max_len=width, kpool=1,
                                       live=True, check=True, stream=None)
    de: nm.Metadata = nm.draft_extend(seq_lens, ext, pool, table, total=2 * bs, max_len=width,
                                      page_size=page)
    assert tv.seqlens_expanded is not None and de.seqlens_expanded is not None

    out = buffers(bs, bs, width, page, expanded=False)
    same: nm.Metadata = nm.decode(seq_lens, pool, table, max_len=width, page_size=page, out=out)
    sets: List[nm.Metadata] = nm.decode(seq_lens, pool, table, max_len=width, page_size=page,
                                        out=[out, buffers(bs, bs, width, page, expanded=False)])
    assert same is out and sets[0] is out

    ref: nm.Metadata = nm.reference.decode(seq_lens, pool, table, max_len=width, page_size=page)
    assert ref.cu_seqlens_k is not None

    prep: nm.Prepared = nm.prepare("draft_extend", seq_lens, pool, table, extend_lens=ext,
                                   out=buffers(bs, 2 * bs, width, page, expanded=True),
                                   page_size=page)
    prep(bs, width, 2 * bs)
    prep(2, 64, total=4, stream=0)
    assert repr(prep).startswith("Prepared(")

    # target_verify's optional 2-D context lengths, and SGLang's functions (nsa_metadata.sglang)
    tv_out = buffers(bs, 2 * bs, width, page, expanded=True)
    tv_out.paged_mqa_ctx_lens_2d = np.empty((bs, 2), np.int32)
    nm.target_verify(seq_lens, pool, table, next_n=2, max_len=width, page_size=page, out=tv_out)
    d = buffers(bs, bs, width, page, expanded=False)
    sglang.fused_dsa_decode_metadata(seq_lens, pool, table, d.cache_seqlens, d.cu_seqlens_k,
                                     d.page_table_1, d.nsa_cache_seqlens, d.nsa_cu_seqlens_k,
                                     d.real_page_table, bs, width, 2048, page)
    v = buffers(bs, 2 * bs, width, page, expanded=True)
    sglang.fused_dsa_target_verify_metadata(
        seq_lens, pool, table, v.cache_seqlens, v.cu_seqlens_k, None, v.seqlens_expanded,
        v.nsa_cache_seqlens, v.nsa_cu_seqlens_k, v.real_page_table, bs, width, 2048,
        real_page_size=page, next_n=2, paged_mqa_ctx_lens_2d=np.empty((bs, 2), np.int32))
    e = buffers(bs, 2 * bs, width, page, expanded=True)
    sglang.fused_dsa_draft_extend_metadata(
        seq_lens, ext, pool, table, e.cache_seqlens, e.cu_seqlens_k, e.page_table_1,
        e.seqlens_expanded, e.nsa_cache_seqlens, e.nsa_cu_seqlens_k, e.real_page_table, bs,
        2 * bs, width, 2048, page, 2, 2 * bs, static_extend_len=True, index_kpool=1)

    # FlashMLA's schedule in the same call, and SGLang's get_mla_metadata
    sched: nm.Schedule = nm.Schedule(num_sm_parts=66, lengths="sparse")
    ms: nm.Metadata = nm.decode(seq_lens, pool, table, max_len=width, schedule=sched)
    assert ms.tile_scheduler_metadata is not None and ms.num_splits is not None
    nm.target_verify(seq_lens, pool, table, next_n=2, max_len=width, schedule=nm.Schedule(3))
    nm.prepare("decode", seq_lens, pool, table, out=ms, schedule=sched)(bs, width)
    tsm, splits = sglang.get_mla_metadata(seq_lens, 128, 1, 128, True, 2048, num_sm_parts=66)
    assert tsm is not None and splits is not None


if __name__ == "__main__":
    main()
