"""Metadata: the outputs of one call (or one destination set), with SPEC's names."""

from __future__ import annotations

from typing import Any, Literal

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded", "paged_mqa_ctx_lens_2d",
          "tile_scheduler_metadata", "num_splits")
TABLES = ("page_table_1", "real_page_table")
CTX_2D = "paged_mqa_ctx_lens_2d"  # target_verify's optional [bs, next_n] output, any strides
SCHEDULE = ("tile_scheduler_metadata", "num_splits")  # FlashMLA's schedule, with schedule= only
OPTIONAL = TABLES + (CTX_2D,) + SCHEDULE  # the outputs a destination set may leave None
SCHEDULE_LENGTHS = ("topk", "sparse")


class Schedule:
    """FlashMLA's decode schedule (docs/SPEC_schedule.md), computed in the same launch.

    Pass it as ``schedule=`` to `decode`, `target_verify` or `prepare` (not draft_extend).
    FlashMLA's batch is the call's rows (``bs`` in decode, ``bs * next_n`` in target_verify), as
    SGLang passes ``nsa_cache_seqlens`` as FlashMLA's ``cache_seqlens``.

    Parameters
    ----------
    num_sm_parts : int >= 1
        FlashMLA's SM parts (66 on an H100 for 128 query heads).
    lengths : "topk" or "sparse", default "topk"
        The tokens each row attends: ``topk`` for every row (SGLang's call, no ``topk_length``),
        or ``nsa_cache_seqlens`` (``min(L, topk)``: deepseek-ai's ``topk_length``).
    """

    __slots__ = ("num_sm_parts", "lengths")

    num_sm_parts: int
    lengths: Literal["topk", "sparse"]

    def __init__(self, num_sm_parts: int, lengths: Literal["topk", "sparse"] = "topk") -> None:
        if type(num_sm_parts) is not int:
            raise TypeError(f"num_sm_parts must be an int, not {type(num_sm_parts).__name__}")
        if not 1 <= num_sm_parts <= 2**31 - 1:
            raise ValueError(f"num_sm_parts = {num_sm_parts} is outside [1, {2**31 - 1}]")
        if lengths not in SCHEDULE_LENGTHS:
            raise ValueError(f"lengths must be one of {SCHEDULE_LENGTHS}, not {lengths!r}")
        object.__setattr__(self, "num_sm_parts", num_sm_parts)
        object.__setattr__(self, "lengths", lengths)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Schedule is immutable")  # (plans are cached by its value)

    def __eq__(self, other: object) -> bool:
        return (type(other) is Schedule and self.num_sm_parts == other.num_sm_parts
                and self.lengths == other.lengths)

    def __hash__(self) -> int:
        return hash((self.num_sm_parts, self.lengths))

    def __repr__(self) -> str:
        return f"Schedule(num_sm_parts={self.num_sm_parts}, lengths={self.lengths!r})"


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
    tile_scheduler_metadata : array ``[num_sm_parts, 8]`` or None
        With ``schedule=`` only: FlashMLA's per-part schedule (contiguous rows of 8).
    num_splits : array ``[rows + 1]`` or None
        With ``schedule=`` only: FlashMLA's zero-led running count of pieces per row. As
        ``out=``, a set gives both or neither (neither: it does not get the schedule); without
        ``schedule=`` both are ignored.

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
    tile_scheduler_metadata: Any
    num_splits: Any

    def __init__(self, cache_seqlens: Any = None, cu_seqlens_k: Any = None,
                 nsa_cache_seqlens: Any = None, nsa_cu_seqlens_k: Any = None,
                 page_table_1: Any = None, real_page_table: Any = None,
                 seqlens_expanded: Any = None, paged_mqa_ctx_lens_2d: Any = None,
                 tile_scheduler_metadata: Any = None, num_splits: Any = None) -> None:
        self.cache_seqlens, self.cu_seqlens_k = cache_seqlens, cu_seqlens_k
        self.nsa_cache_seqlens, self.nsa_cu_seqlens_k = nsa_cache_seqlens, nsa_cu_seqlens_k
        self.page_table_1, self.real_page_table = page_table_1, real_page_table
        self.seqlens_expanded = seqlens_expanded
        self.paged_mqa_ctx_lens_2d = paged_mqa_ctx_lens_2d
        self.tile_scheduler_metadata, self.num_splits = tile_scheduler_metadata, num_splits
        self._memo: Any = None

    def __repr__(self) -> str:
        parts = [f"{f}={'None' if getattr(self, f) is None else tuple(getattr(self, f).shape)}"
                 for f in FIELDS]
        return "Metadata(" + ", ".join(parts) + ")"
