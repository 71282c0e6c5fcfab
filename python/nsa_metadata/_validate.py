"""SPEC's arguments: every host-visible check, before anything is written, for the device and
the host alike, so both give the same errors.

A one-shot call is validated for exactly its step (`one_shot`); `prepare` validates whole
buffers once (`destinations` with open shapes, then `capacity`). The capacities of a bound plan
are the extents for which that validation holds, and its launches check each step against them.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _arrays, _core, reference
from . import schedule as sch
from ._arrays import Arr
from ._metadata import CTX_2D, OPTIONAL, SCHEDULE, Metadata, Schedule
from .schedule import INT32_MAX

INDEX_DTYPES = ("int32", "int64")
UNBOUNDED = 2**62
Regions = Dict[str, Optional[Tuple[int, ...]]]  # the region of each output (None: not one)
Shapes = Mapping[str, Optional[Tuple[Optional[int], ...]]]  # the same, None entries: any size
Span = Tuple[str, Optional[Tuple[int, int]], bool]
Dests = List[Dict[str, Arr]]


# ---------------------------------------------------------------------------- scalars

def integer(name: str, value: Any, lo: int, hi: int = INT32_MAX) -> int:
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int, not bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")
    return value  # type: ignore[no-any-return]


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def mode_of(mode: Any) -> _core.Mode:
    if mode not in _core.Mode.__members__:
        raise ValueError(f"mode must be one of {tuple(_core.Mode.__members__)}, not {mode!r}")
    return _core.Mode.__members__[mode]


def schedule_of(mode: str, schedule: Any) -> Optional[Schedule]:
    """schedule=: None or a Schedule, in decode and target_verify."""
    if schedule is None:
        return None
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a nsa_metadata.Schedule or None, not "
                        f"{type(schedule).__name__}")
    if mode == "draft_extend":
        raise ValueError("schedule= is for decode and target_verify (FlashMLA's decode), "
                         "not draft_extend")
    return schedule


def parts_of(schedule: Optional[Schedule]) -> int:
    return 0 if schedule is None else schedule.num_sm_parts


def check_schedule_fits(schedule: Optional[Schedule], rows: int, topk: int, kpool: int) -> None:
    """FlashMLA's int32 arithmetic for the longest row the length source allows (sparse(x) is
    at most topk + kpool - 1), as the launcher checks it."""
    if schedule is None:
        return
    longest = topk if schedule.lengths == "topk" else topk + kpool - 1
    if (longest > INT32_MAX or
            rows * (int(sch.num_blocks(longest)) + sch.OVERHEAD) + schedule.num_sm_parts - 1
            > INT32_MAX):
        raise ValueError(f"schedule: {rows} rows of up to {longest} tokens on "
                         f"{schedule.num_sm_parts} parts exceed FlashMLA's int32 arithmetic")


def where(device: Optional[int]) -> str:
    return "the host" if device is None else f"cuda:{device}"


# ---------------------------------------------------------------------------- arrays

def index_array(name: str, x: Any, bs: Optional[int] = None) -> Arr:
    a = _arrays.describe(x, name)
    if a.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, not {a.dtype}")
    if len(a.shape) != 1:
        raise ValueError(f"{name} must be 1-D, not {len(a.shape)}-D")
    if bs is not None and a.shape[0] != bs:
        raise ValueError(f"{name} has {a.shape[0]} elements but seq_lens has {bs}")
    return a


def table(name: str, x: Any) -> Arr:
    a = _arrays.describe(x, name)
    if a.dtype != "int32":
        raise TypeError(f"{name} must be int32, not {a.dtype}")
    if len(a.shape) != 2:
        raise ValueError(f"{name} must be 2-D, not {len(a.shape)}-D")
    rows, width = a.shape
    if rows == 0 or width == 0:  # nothing is read: any layout will do
        return a
    if width > 1 and a.strides[1] != 1:
        raise ValueError(f"{name} must have unit column stride, not {a.strides[1]}")
    if rows > 1 and a.strides[0] < width:
        raise ValueError(f"{name} row stride {a.strides[0]} is smaller than its width {width}")
    return a


def inputs(mode: str, seq_lens: Any, req_pool_indices: Any, req_to_token: Any,
           extend_lens: Any) -> List[Arr]:
    """The input arrays, validated; all on one device (None: the host). Order: seq_lens,
    req_pool_indices, req_to_token, then extend_lens in draft_extend."""
    lens = index_array("seq_lens", seq_lens)
    bs = lens.shape[0]
    arrs = [lens, index_array("req_pool_indices", req_pool_indices, bs),
            table("req_to_token", req_to_token)]
    if mode == "draft_extend":
        arrs.append(index_array("extend_lens", extend_lens, bs))
    for a, name in zip(arrs[1:], ("req_pool_indices", "req_to_token", "extend_lens")):
        if a.device != lens.device:
            raise ValueError(f"{name} is on {where(a.device)} but seq_lens is on {where(lens.device)}")
    return arrs


def output(name: str, x: Any, shape: Tuple[Optional[int], ...], device: Optional[int],
           any_strides: bool = False) -> Tuple[Arr, Optional[Tuple[int, int]]]:
    """One output buffer: int32, writeable, on `device`, holding `shape` (None entries: any),
    with unit last stride (or, with `any_strides`, any strides whose elements in the region do
    not overlap). Returns it and the span of the region a call writes."""
    a = _arrays.describe(x, name, output=True)
    if a.dtype != "int32":
        raise TypeError(f"{name} must be int32, not {a.dtype}")
    if len(a.shape) != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D, not {len(a.shape)}-D")
    if a.device != device:
        raise ValueError(f"{name} is on {where(a.device)} but the inputs are on {where(device)}")
    if not _arrays.writeable(a):
        raise ValueError(f"{name} is read-only")
    region = tuple(a.shape[k] if n is None else n for k, n in enumerate(shape))
    if any(have < need for have, need in zip(a.shape, region)):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; this call needs at least {region}")
    if 0 in region:  # nothing is written: any layout will do
        return a, None
    if any_strides:
        if not distinct(region, a.strides):
            raise ValueError(f"{name} has strides {tuple(a.strides)}: elements of its {region} "
                             "region overlap")
        return a, a.resized(region).span()
    if region[-1] > 1 and a.strides[-1] != 1:
        which = "column stride" if len(region) == 2 else "stride"
        raise ValueError(f"{name} must have unit {which}, not {a.strides[-1]}")
    if len(region) == 2 and region[0] > 1 and a.strides[0] < region[1]:
        raise ValueError(f"{name} row stride {a.strides[0]} is smaller than the width {region[1]}")
    return a, a.resized(region).span()


def distinct(region: Tuple[int, ...], strides: Tuple[int, ...]) -> bool:
    """Whether every element of `region` has an address of its own: with the dimensions taken
    by growing stride, each stride reaches past everything the smaller ones span."""
    reach = 1
    for stride, n in sorted((abs(s), n) for n, s in zip(region, strides) if n > 1):
        if stride < reach:
            return False
        reach = stride * n
    return True


def shapes(mode: str, bs: int, next_n: int, total: int, max_len: int, page_size: int,
           parts: int = 0) -> Regions:
    """The region each output must hold (None: the field is not an output of this mode), from
    the one function the binding and the launcher size with. parts > 0: the schedule's too."""
    s = _core.shape_of(_core.Mode.__members__[mode], bs, next_n, total, max_len, page_size)
    return {"cache_seqlens": (bs,), "cu_seqlens_k": (bs + 1,), "nsa_cache_seqlens": (s.rows,),
            "nsa_cu_seqlens_k": (s.rows + 1,), "page_table_1": (s.rows, s.width),
            "real_page_table": (s.rows, s.real_width),
            "seqlens_expanded": None if mode == "decode" else (s.rows,),
            CTX_2D: (bs, next_n) if mode == "target_verify" else None,
            "tile_scheduler_metadata": (parts, sch.WIDTH) if parts else None,
            "num_splits": (s.rows + 1,) if parts else None}


def whole(mode: str, next_n: int = 1, parts: int = 0) -> Shapes:
    """Whole buffers, any size (prepare, and a one-shot plan's capacities); the 2-D context
    lengths hold next_n columns, the schedule's metadata num_sm_parts rows."""
    return {"cache_seqlens": (None,), "cu_seqlens_k": (None,), "nsa_cache_seqlens": (None,),
            "nsa_cu_seqlens_k": (None,), "page_table_1": (None, None),
            "real_page_table": (None, None),
            "seqlens_expanded": None if mode == "decode" else (None,),
            CTX_2D: (None, next_n) if mode == "target_verify" else None,
            "tile_scheduler_metadata": (parts, sch.WIDTH) if parts else None,
            "num_splits": (None,) if parts else None}


def destinations(out: Any, want: Shapes, device: Optional[int],
                 page_size: int) -> Tuple[List[Metadata], Dests, List[Span]]:
    """Validate `out` (one Metadata or a list): the list, each field's Arr and written span."""
    many = isinstance(out, (list, tuple))
    outs = list(out) if many else [out]
    if not 1 <= len(outs) <= _core.MAX_DESTS:
        raise ValueError(f"out must hold 1 to {_core.MAX_DESTS} Metadata, not {len(outs)}")
    dests: Dests = []
    spans: List[Span] = []
    for k, md in enumerate(outs):
        at = f"out[{k}]" if many else "out"
        if not isinstance(md, Metadata):
            raise TypeError(f"{at} must be a nsa_metadata.Metadata, not {type(md).__name__}")
        arrs = {}
        for f, shape in want.items():
            x = getattr(md, f)
            if shape is None or x is None:
                if x is None and shape is not None and f not in OPTIONAL:
                    raise ValueError(f"{at}.{f} is required (only the page tables and "
                                     f"{CTX_2D} may be None)")
                continue
            if f == "real_page_table" and page_size == 1 and x is md.page_table_1:
                continue  # SPEC: with page_size 1 the real table is page_table_1 itself
            arrs[f], span = output(f"{at}.{f}", x, shape, device, any_strides=f == CTX_2D)
            spans.append((f"{at}.{f}", span, True))
        if want.get(SCHEDULE[0]) is not None:
            schedule_buffers(at, arrs)
        dests.append(arrs)
    return outs, dests, spans


def schedule_buffers(at: str, arrs: Dict[str, Arr]) -> None:
    """A set takes the schedule whole or not at all, its metadata in rows of 8 (the kernel and
    FlashMLA index it as [part * 8 + field])."""
    have = [f in arrs for f in SCHEDULE]
    if have[0] != have[1]:
        given, missing = SCHEDULE if have[0] else SCHEDULE[::-1]
        raise ValueError(f"{at}.{missing} is required with {at}.{given} (the schedule is "
                         "written whole or not at all)")
    meta = arrs.get(SCHEDULE[0])
    if meta is not None and meta.shape[0] > 1 and meta.strides[0] != sch.WIDTH:
        raise ValueError(f"{at}.tile_scheduler_metadata must have row stride {sch.WIDTH} "
                         f"(contiguous rows of 8), not {meta.strides[0]}")


def check_disjoint(spans: Sequence[Span]) -> None:
    """spans: (name, (lo, hi) or None, is_output). An output may overlap nothing else;
    inputs may share memory with each other (they are only read)."""
    any_end: Tuple[int, Optional[str]] = (0, None)
    out_end: Tuple[int, Optional[str]] = (0, None)
    for lo, hi, name, is_out in sorted((s[0], s[1], n, o) for n, s, o in spans if s is not None):
        other = any_end if is_out else out_end
        if other[1] is not None and lo < other[0]:
            raise ValueError(f"{name} overlaps {other[1]}: outputs may not alias inputs or each other")
        if hi > any_end[0]:
            any_end = (hi, name)
        if is_out and hi > out_end[0]:
            out_end = (hi, name)


INPUT_NAMES = ("seq_lens", "req_pool_indices", "req_to_token", "extend_lens")


def input_spans(arrs: Sequence[Arr], bs: Optional[int] = None) -> List[Span]:
    """The inputs' spans; with `bs`, the 1-D inputs' spans over their first bs elements."""
    return [(n, (a if bs is None or n == "req_to_token" else a.resized((bs,))).span(), False)
            for n, a in zip(INPUT_NAMES, arrs)]


def capacity(mode: str, dests: Dests, next_n: int, bs: int = UNBOUNDED) -> _core.Capacity:
    """The most whole buffers hold: requests (at most `bs`), rows, and the two table widths
    (unbounded where no destination has that table)."""
    rows = width = real_width = UNBOUNDED
    for d in dests:
        bs = min(bs, d["cache_seqlens"].shape[0], d["cu_seqlens_k"].shape[0] - 1)
        rows = min(rows, d["nsa_cache_seqlens"].shape[0], d["nsa_cu_seqlens_k"].shape[0] - 1,
                   *(d[f].shape[0] for f in ("seqlens_expanded", "page_table_1", "real_page_table")
                     if f in d))
        if "num_splits" in d:
            rows = min(rows, d["num_splits"].shape[0] - 1)
        if "page_table_1" in d:
            width = min(width, d["page_table_1"].shape[1])
        if "real_page_table" in d:
            real_width = min(real_width, d["real_page_table"].shape[1])
        if CTX_2D in d:
            bs = min(bs, d[CTX_2D].shape[0])
    rows = min(rows, INT32_MAX)  # SPEC: row counts are int32
    if mode != "draft_extend":  # rows follow the batch size
        bs = min(bs, rows // (next_n if mode == "target_verify" else 1))
    return _core.Capacity(bs=max(bs, 0), rows=max(rows, 0), width=width, real_width=real_width)


# ---------------------------------------------------------------------------- one-shot calls

class Call:
    """A validated one-shot call: its arrays, its step and the scalars a plan binds."""

    def __init__(self, mode: str, arrs: List[Arr], regions: Regions, bs: int, max_len: int,
                 total: int, topk: int, kpool: int, page_size: int, next_n: int, live: bool,
                 check: bool, stream: Optional[int], schedule: Optional[Schedule] = None) -> None:
        self.mode, self.arrs = mode, arrs
        self.outs: Optional[List[Metadata]] = None  # out= and its destination sets (one_shot)
        self.dests: Optional[Dests] = None
        self.schedule = schedule
        self.regions = regions  # what this step writes of each output (shapes)
        nsa = regions["nsa_cache_seqlens"]
        real = regions["real_page_table"]
        assert nsa is not None and real is not None
        self.rows, self.real_width = nsa[0], real[1]
        self.bs, self.max_len, self.total = bs, max_len, total
        self.topk, self.kpool, self.page_size, self.next_n = topk, kpool, page_size, next_n
        self.live, self.check, self.stream = live, check, stream
        self.device: Optional[int] = arrs[0].device
        self.lib = arrs[0].lib

    def step_capacity(self) -> _core.Capacity:
        """Exactly this step's extents."""
        return _core.Capacity(bs=self.bs, rows=self.rows, width=self.max_len,
                              real_width=self.real_width)

    def whole_capacity(self) -> Optional[_core.Capacity]:
        """The capacities of the given buffers when they are valid whole (layout, no overlap
        with each other, with req_to_token, or with the 1-D inputs grown to the batch they
        hold); None when only this step's regions are."""
        assert self.outs is not None
        try:
            _, dests, spans = destinations(self.outs, whole(self.mode, self.next_n,
                                                            parts_of(self.schedule)),
                                           self.device, self.page_size)
            cap = capacity(self.mode, dests, self.next_n)
            check_disjoint(spans + input_spans(self.arrs, cap.bs))
        except ValueError:
            return None
        return cap


def one_shot(mode: str, seq_lens: Any, req_pool_indices: Any, req_to_token: Any,
             extend_lens: Any, *, max_len: Any, topk: Any, kpool: Any, page_size: Any,
             next_n: Any, total: Any, live: Any, out: Any, stream: Any, check: Any,
             schedule: Any = None) -> Call:
    """Validate one call for exactly its step; the outputs too when given."""
    sched = schedule_of(mode, schedule)
    topk, kpool = integer("topk", topk, 1), integer("kpool", kpool, 1)
    page_size = integer("page_size", page_size, 1)
    live, check = boolean("live", live), boolean("check", check)
    handle = None if stream is None else _arrays.stream_handle(stream)
    arrs = inputs(mode, seq_lens, req_pool_indices, req_to_token, extend_lens)
    bs, device = arrs[0].shape[0], arrs[0].device
    max_len = integer("max_len", max_len, 0, min(arrs[2].shape[1], INT32_MAX))  # columns are int32
    if mode == "target_verify":
        next_n = integer("next_n", next_n, 1)
        if bs * next_n > INT32_MAX:
            raise ValueError(f"bs * next_n = {bs * next_n} rows exceeds int32")
    else:
        next_n = 1
    if mode == "draft_extend":
        if total is None:
            raise TypeError("draft_extend needs total= (the sum of extend_lens, or a capacity)")
        total = integer("total", total, 0)
        if device is None:  # host-visible here, so checked here
            check_total(total, arrs)
    else:
        total = 0
    want = shapes(mode, bs, next_n, total, max_len, page_size, parts_of(sched))
    c = Call(mode, arrs, want, bs, max_len, total, topk, kpool, page_size, next_n, live, check,
             handle, sched)
    check_schedule_fits(sched, c.rows, topk, kpool)
    if out is not None:
        c.outs, c.dests, spans = destinations(out, want, device, page_size)
        check_disjoint(spans + input_spans(arrs))
    return c


def check_total(total: int, arrs: Sequence[Arr]) -> None:
    """draft_extend on the host: total = sum(extend_lens), naming a bad extend length first."""
    ext = np.asarray(_arrays.host_view(arrs[3]))
    s = int(np.maximum(reference.int32(ext), 0).sum())
    if s != total:
        bad = np.flatnonzero((ext < 0) | (ext > INT32_MAX))
        if bad.size:
            raise_bad_element(int(bad[0]), _core.BadKind.bad_extend, arrs, total)
        raise ValueError(f"total = {total} but sum(extend_lens) = {s}")


def raise_bad_element(i: int, kind: _core.BadKind, arrs: Sequence[Arr], total: int) -> None:
    """The message of check=True's first bad element, as the device or the reference found it."""
    if kind == _core.BadKind.bad_total:
        s = int(np.maximum(reference.int32(_arrays.to_list(arrs[3])), 0).sum())
        raise ValueError(f"total = {total} but sum(extend_lens) = {s}")
    if kind == _core.BadKind.bad_pool_index:
        v = _arrays.scalar_int64(arrs[1], i)
        raise ValueError(f"req_pool_indices[{i}] = {v} is outside [0, {arrs[2].shape[0]})")
    extend = kind == _core.BadKind.bad_extend
    name, arr = ("extend_lens", arrs[3]) if extend else ("seq_lens", arrs[0])
    v = _arrays.scalar_int64(arr, i)
    what = ("is negative" if v < 0 else "overflows int32" if extend else
            "overflows int32 (its length or a cumulative sum through it)")
    raise ValueError(f"{name}[{i}] = {v} {what}")

