"""Metadata: the outputs of one call (or one destination set), with SPEC's names."""

from __future__ import annotations

from typing import Any

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded", "paged_mqa_ctx_lens_2d")
TABLES = ("page_table_1", "real_page_table")
CTX_2D = "paged_mqa_ctx_lens_2d"  # target_verify's optional [bs, next_n] output, any strides
OPTIONAL = TABLES + (CTX_2D,)  # the outputs a destination set may leave None in every mode


class _Memo:
    __slots__ = ("_memo",)  # what the plan cache last read of the fields (_plans.cache_key)


class Metadata(_Memo):
    """The outputs of one call, or one set of output buffers passed as ``out=``.

    Every field is an int32 array of the inputs' array library (NumPy, torch or CuPy) on their
    device, or None.

    Parameters
    ----------
    cache_seqlens : array ``[bs]``
        KV length of each request (``lens + next_n`` in target_verify).
    cu_seqlens_k : array ``[bs + 1]``
        ``cumsum0(cache_seqlens)``.
    nsa_cache_seqlens : array ``[rows]``
        ``sparse(L)`` of each row: the KV tokens the sparse attention reads.
    nsa_cu_seqlens_k : array ``[rows + 1]``
        ``cumsum0(nsa_cache_seqlens)``.
    page_table_1 : array ``[rows, max_len]`` or None
        Token slot of each position of each row; None: not produced.
    real_page_table : array ``[rows, ceil(max_len / page_size)]`` or None
        Page of each page column (``page_table_1`` itself when ``page_size == 1``); None: not
        produced.
    seqlens_expanded : array ``[rows]`` or None
        Per-row KV length in target_verify and draft_extend; None in decode.
    paged_mqa_ctx_lens_2d : array ``[bs, next_n]`` or None
        target_verify only, written only when given (never allocated): ``cache_seqlens[i]``
        in every column of row ``i`` (DeepGEMM's paged MQA context lengths); any strides
        whose elements do not overlap. Ignored by the other modes.

    As ``out=``, arrays may be larger than a call needs (1-D: at least the stated length, unit
    stride; 2-D: at least the stated rows and width, unit column stride, any row stride); only
    the stated region is written.
    """

    __slots__ = FIELDS

    cache_seqlens: Any
    cu_seqlens_k: Any
    nsa_cache_seqlens: Any
    nsa_cu_seqlens_k: Any
    page_table_1: Any
    real_page_table: Any
    seqlens_expanded: Any
    paged_mqa_ctx_lens_2d: Any

    def __init__(self, cache_seqlens: Any = None, cu_seqlens_k: Any = None,
                 nsa_cache_seqlens: Any = None, nsa_cu_seqlens_k: Any = None,
                 page_table_1: Any = None, real_page_table: Any = None,
                 seqlens_expanded: Any = None, paged_mqa_ctx_lens_2d: Any = None) -> None:
        self.cache_seqlens, self.cu_seqlens_k = cache_seqlens, cu_seqlens_k
        self.nsa_cache_seqlens, self.nsa_cu_seqlens_k = nsa_cache_seqlens, nsa_cu_seqlens_k
        self.page_table_1, self.real_page_table = page_table_1, real_page_table
        self.seqlens_expanded = seqlens_expanded
        self.paged_mqa_ctx_lens_2d = paged_mqa_ctx_lens_2d
        self._memo: Any = None

    def __repr__(self) -> str:
        parts = [f"{f}={'None' if getattr(self, f) is None else tuple(getattr(self, f).shape)}"
                 for f in FIELDS]
        return "Metadata(" + ", ".join(parts) + ")"
