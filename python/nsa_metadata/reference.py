"""NumPy reference: SPEC.md line for line, and the oracle of every test.

The public functions take and return NumPy arrays and validate exactly as the GPU path does
(they are the GPU path's own entry points, pinned to the reference). `compute` is the
arithmetic itself, on arrays that `_api` has already validated.

Arithmetic is exact (int64) and truncated to int32 at the end, which is what torch's int32
ops give: sums wrap modulo 2^32, and `sparse` is computed on the int32 value of its argument.

`schedule` (from schedule.py) is FlashMLA's decode schedule (docs/SPEC_schedule.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, TypeVar, overload

import numpy as np
import numpy.typing as npt

from ._core import BadKind
from . import schedule as _schedule
from .schedule import INT32_MAX, cumsum0, schedule  # noqa: F401  (schedule re-exported)

if TYPE_CHECKING:
    from ._arrays import Stream
    from ._metadata import Metadata, Schedule

Ints = npt.NDArray[Any]
Outs = TypeVar("Outs", bound="Sequence[Metadata]")

MODES = ("decode", "target_verify", "draft_extend")
INT32_MIN = -(2**31)

# check=True's error kinds (kernels/launch.h, exported by the extension), in the order they win
# when one request has several: the first bad element is the one with the smallest
# (request index, kind). bad_extend: an extend length that is negative or outside int32.


def int32(x: npt.ArrayLike) -> Ints:
    """Two's-complement truncation, as torch's `.to(torch.int32)`."""
    return np.asarray(x).astype(np.int64).astype(np.int32)


def sparse(x: npt.ArrayLike, topk: int, kpool: int) -> Ints:
    """SPEC's sparse(x) on int32 values x, computed exactly, truncated to int32."""
    x = np.asarray(x, dtype=np.int64)
    if kpool == 1:
        return int32(np.minimum(x, topk))
    return int32(np.minimum((x // kpool) * kpool, topk) + x % kpool)


def layout(mode: str, seq_lens: Ints, extend_lens: Optional[Ints], next_n: int,
           total: int) -> Tuple[Ints, Ints, Ints, Optional[Ints]]:
    """rows, L (per-row KV length), the request of every row and seqlens_expanded (or None)."""
    lens = int32(seq_lens).astype(np.int64)
    bs = lens.shape[0]
    if mode == "decode":
        row_req = np.arange(bs)
        return lens, lens, row_req, None
    if mode == "target_verify":
        cache = int32(lens + next_n).astype(np.int64)
        row_req = np.repeat(np.arange(bs), next_n)
        j = np.tile(np.arange(next_n), bs)
        return cache, cache[row_req], row_req, int32(lens[row_req] + j + 1).astype(np.int64)
    # draft_extend: a negative extend length places no rows (check=True reports it).
    assert extend_lens is not None
    ext = np.maximum(int32(extend_lens).astype(np.int64), 0)
    p = cumsum0(ext)
    row_req = np.repeat(np.arange(bs), ext)[:total]
    j = np.arange(row_req.shape[0]) - p[row_req]
    expanded = np.maximum(lens[row_req] - ext[row_req] + j + 1, 0)
    return lens, lens[row_req], row_req, expanded


def first_error(mode: str, seq_lens: Ints, req_pool_indices: Ints, extend_lens: Optional[Ints],
                pool_rows: int, topk: int, kpool: int, next_n: int,
                total: int) -> Optional[Tuple[int, BadKind]]:
    """check=True: (request index, kind) of the first bad element, or None."""
    raw = np.asarray(seq_lens, np.int64)
    q = np.asarray(req_pool_indices, np.int64)
    bs = raw.shape[0]
    cache, _, row_req, expanded = layout(mode, seq_lens, extend_lens, next_n, total)
    bad = np.zeros((bs, len(BadKind)), bool)
    bad[:, BadKind.bad_pool_index] = (q < 0) | (q >= pool_rows)
    bad[:, BadKind.negative_length] = raw < 0
    over = (raw > INT32_MAX) | (raw < INT32_MIN)
    if mode == "target_verify":
        over |= int32(raw).astype(np.int64) + next_n > INT32_MAX
    if mode == "draft_extend":
        ext_raw = np.asarray(extend_lens, np.int64)
        bad[:, BadKind.bad_extend] = (ext_raw < 0) | (ext_raw > INT32_MAX)
    cu = cumsum0(int32(cache))[1:]
    over |= (cu > INT32_MAX) | (cu < INT32_MIN)
    nsa_src = int32(cache) if expanded is None else expanded
    nsa_cu = cumsum0(sparse(nsa_src, topk, kpool))[1:]
    rows_over = (nsa_cu > INT32_MAX) | (nsa_cu < INT32_MIN)
    np.logical_or.at(over, row_req[rows_over], True)
    bad[:, BadKind.overflow] = over
    hits = np.argwhere(bad)
    if hits.shape[0]:
        return int(hits[0, 0]), BadKind(int(hits[0, 1]))
    if mode == "draft_extend":
        assert extend_lens is not None
        ext = np.maximum(int32(extend_lens).astype(np.int64), 0)
        if int(ext.sum()) != total:
            return bs, BadKind.bad_total
    return None


def compute(mode: str, seq_lens: Ints, req_pool_indices: Ints, extend_lens: Optional[Ints],
            req_to_token: Ints, outs: Sequence[Any], *, max_len: int, topk: int, kpool: int,
            page_size: int, next_n: int, total: int, live: bool,
            schedule: Optional[Schedule] = None) -> None:
    """Fill every destination in `outs` (objects with SPEC's field names, NumPy arrays or None);
    with `schedule`, FlashMLA's schedule over the rows too (docs/SPEC_schedule.md)."""
    cache, L, row_req, expanded = layout(mode, seq_lens, extend_lens, next_n, total)
    rows = row_req.shape[0]  # in draft_extend, the live rows: min(sum(extend_lens), total)
    nsa = sparse(cache if expanded is None else expanded, topk, kpool)
    fields = {
        "cache_seqlens": int32(cache),
        "cu_seqlens_k": int32(cumsum0(int32(cache))),
        "nsa_cache_seqlens": nsa,
        "nsa_cu_seqlens_k": int32(cumsum0(nsa)),
        "seqlens_expanded": None if expanded is None else int32(expanded),
        # [bs, next_n]: cache_seqlens[i] in every column of row i
        "paged_mqa_ctx_lens_2d": (np.repeat(int32(cache)[:, None], next_n, axis=1)
                                  if mode == "target_verify" else None),
    }
    if schedule is not None:  # FlashMLA's batch is the rows; topk_length: nsa_cache_seqlens
        fields["tile_scheduler_metadata"], fields["num_splits"] = _schedule.schedule(
            None if schedule.lengths == "topk" else nsa, rows, topk, schedule.num_sm_parts)

    P = req_to_token.shape[0]
    q = np.asarray(req_pool_indices, np.int64)[row_req]
    valid = (q >= 0) & (q < P)
    page_table_1 = np.full((rows, max_len), -1, np.int32)
    page_table_1[valid] = req_to_token[q[valid], :max_len]
    width = -(-max_len // page_size)
    real_page_table = page_table_1[:, ::page_size][:, :width] // page_size
    # Live extent of each row: columns j < clamp(L, 0, max_len).
    n_live = np.clip(L, 0, max_len)
    pt1_mask = np.arange(max_len)[None, :] < (n_live[:, None] if live else max_len)
    real_mask = np.arange(width)[None, :] < (-(-n_live[:, None] // page_size) if live else width)

    for md in outs:
        for name, value in fields.items():
            dst = getattr(md, name)
            if dst is not None and value is not None:
                dst[tuple(slice(n) for n in value.shape)] = value
        for dst, value, mask in ((md.page_table_1, page_table_1, pt1_mask),
                                 (md.real_page_table, real_page_table, real_mask)):
            if dst is None:
                continue
            region = dst[:rows, : value.shape[1]]
            mask = np.broadcast_to(mask, value.shape)
            region[mask] = value[mask]


def _host_only(*arrays: Any) -> None:
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray):
            raise TypeError(f"nsa_metadata.reference takes NumPy arrays, not {type(a).__name__}")


@overload
def decode(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, *, max_len: int,
           topk: int = ..., kpool: int = ..., page_size: int = ..., live: bool = ...,
           out: Optional[Metadata] = ..., stream: Optional[Stream] = ...,
           check: bool = ...) -> Metadata: ...
@overload
def decode(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, *, max_len: int,
           topk: int = ..., kpool: int = ..., page_size: int = ..., live: bool = ..., out: Outs,
           stream: Optional[Stream] = ..., check: bool = ...) -> Outs: ...
def decode(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, **kw: Any) -> Any:
    """SPEC decode on NumPy arrays: `nsa_metadata.decode`'s parameters, validation, errors and
    result (NumPy arrays)."""
    from . import _api
    _host_only(seq_lens, req_pool_indices, req_to_token)
    return _api.decode(seq_lens, req_pool_indices, req_to_token, **kw)


@overload
def target_verify(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, *, next_n: int,
                  max_len: int, topk: int = ..., kpool: int = ..., page_size: int = ...,
                  live: bool = ..., out: Optional[Metadata] = ..., stream: Optional[Stream] = ...,
                  check: bool = ...) -> Metadata: ...
@overload
def target_verify(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, *, next_n: int,
                  max_len: int, topk: int = ..., kpool: int = ..., page_size: int = ...,
                  live: bool = ..., out: Outs, stream: Optional[Stream] = ...,
                  check: bool = ...) -> Outs: ...
def target_verify(seq_lens: Ints, req_pool_indices: Ints, req_to_token: Ints, **kw: Any) -> Any:
    """SPEC target_verify on NumPy arrays: `nsa_metadata.target_verify`'s parameters,
    validation, errors and result (NumPy arrays)."""
    from . import _api
    _host_only(seq_lens, req_pool_indices, req_to_token)
    return _api.target_verify(seq_lens, req_pool_indices, req_to_token, **kw)


@overload
def draft_extend(seq_lens: Ints, extend_lens: Ints, req_pool_indices: Ints, req_to_token: Ints,
                 *, total: int, max_len: int, topk: int = ..., kpool: int = ...,
                 page_size: int = ..., live: bool = ..., out: Optional[Metadata] = ...,
                 stream: Optional[Stream] = ..., check: bool = ...) -> Metadata: ...
@overload
def draft_extend(seq_lens: Ints, extend_lens: Ints, req_pool_indices: Ints, req_to_token: Ints,
                 *, total: int, max_len: int, topk: int = ..., kpool: int = ...,
                 page_size: int = ..., live: bool = ..., out: Outs,
                 stream: Optional[Stream] = ..., check: bool = ...) -> Outs: ...
def draft_extend(seq_lens: Ints, extend_lens: Ints, req_pool_indices: Ints, req_to_token: Ints,
                 **kw: Any) -> Any:
    """SPEC draft_extend on NumPy arrays: `nsa_metadata.draft_extend`'s parameters, validation,
    errors and result (NumPy arrays)."""
    from . import _api
    _host_only(seq_lens, extend_lens, req_pool_indices, req_to_token)
    return _api.draft_extend(seq_lens, extend_lens, req_pool_indices, req_to_token, **kw)
