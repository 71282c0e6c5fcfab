"""The bound plan (a `_core.Plan`: one launch bound to validated buffers, each step passing bs,
max_len, total and the stream) and the cache of the one-shot call's plans.

A one-shot call with `out=` on device arrays looks its plan up by what validation reads of its
buffers (each array's address, device, strides and dtype, the shape of all but the 1-D inputs
whose length is the step's bs) and the scalars a plan binds. bs, max_len and total are never
part of the key: they travel with every launch, checked against the plan's capacities, exactly
as a prepared step. A key that matches denotes the very same memory and settings, so the plan is
what a fresh validation would bind; a step it cannot take is validated afresh by the caller.
The cache keeps no array alive.

The buffers are read in one C call (`_core.buffer_key`, through DLPack's C exchange API) when
their type has that API, which also gives bs and the device's current stream; otherwise (torch
and CuPy versions without it) through their Python attributes, as `_arrays` reads them.
"""

from __future__ import annotations

import atexit
import itertools
import operator
import threading
from typing import Any, Callable, Dict, Generic, Hashable, List, Optional, Sequence, Tuple, TypeVar

from . import _arrays, _core
from ._arrays import Arr
from ._metadata import CTX_2D, FIELDS, Metadata, Schedule
from ._validate import Dests

Entry = Tuple[_core.Plan, Callable[[], int]]  # the plan, and its device's current-stream lookup

_fields = operator.attrgetter(*FIELDS)


def bind(mode: str, arrs: Sequence[Arr], dests: Dests, cap: _core.Capacity, *, topk: int,
         kpool: int, page_size: int, next_n: int, live: bool, status: int = 0,
         schedule: Optional[Schedule] = None) -> _core.Plan:
    """A `_core.Plan` over validated arrays (host arrays: one that only checks steps)."""
    def index(a: Optional[Arr]) -> _core.IndexArray:
        if a is None:
            return _core.IndexArray()
        return _core.IndexArray(data=a.ptr, stride=a.strides[0], is64=a.dtype == "int64")

    def dest(d: Dict[str, Arr]) -> _core.Dest:
        at = {f: d[f].ptr for f in FIELDS if f in d}
        rows = {f"{f}_stride": d[f].strides[0] for f in ("page_table_1", "real_page_table") if f in d}
        if CTX_2D in d:
            rows["paged_mqa_stride0"], rows["paged_mqa_stride1"] = d[CTX_2D].strides
        return _core.Dest(**at, **rows)

    table = arrs[2]
    inputs = _core.Inputs(seq_lens=index(arrs[0]), req_pool_indices=index(arrs[1]),
                          extend_lens=index(arrs[3] if mode == "draft_extend" else None),
                          req_to_token=table.ptr, pool_rows=table.shape[0],
                          table_width=table.shape[1], row_stride=table.strides[0])
    device = arrs[0].device
    return _core.Plan(mode=_core.Mode.__members__[mode], inputs=inputs,
                      dests=[dest(d) for d in dests], capacity=cap, topk=topk, kpool=kpool,
                      page_size=page_size, next_n=next_n, live=live, status=status,
                      device=-1 if device is None else device,
                      num_sm_parts=0 if schedule is None else schedule.num_sm_parts,
                      schedule_lengths=_core.ScheduleLengths.__members__[
                          "topk" if schedule is None else schedule.lengths])


Found = Tuple[Hashable, Optional[int], Optional[int]]  # a key, its call's bs and stream (or None)


def cache_key(mode: str, seq_lens: Any, req_pool_indices: Any, req_to_token: Any,
              extend_lens: Any, topk: Any, kpool: Any, page_size: Any, next_n: Any, live: Any,
              out: Any, schedule: Any = None) -> Optional[Found]:
    """(key, bs, stream) of a one-shot call's plan, or None when the call cannot have one (host
    arrays, an argument of an unusual type, lengths that differ: those are validated every time).

    Read through DLPack's C exchange API (`_core.buffer_key`), bs is the call's and stream the
    current stream of its device; read through Python attributes (`_python_buffers`), both are
    None and the caller reads them on a hit.
    """
    if not (type(topk) is int and type(kpool) is int and type(page_size) is int
            and type(next_n) is int and (live is True or live is False)
            and (schedule is None or type(schedule) is Schedule)):
        return None
    many = type(out) is list or type(out) is tuple
    if many:
        if not all([type(md) is Metadata for md in out]):
            return None
        fields = tuple(itertools.chain.from_iterable(map(_fields, out)))
    elif type(out) is Metadata:
        fields = _fields(out)
    else:
        return None
    read = _core.buffer_key(seq_lens, req_pool_indices, extend_lens, req_to_token, fields)
    if read is not None:  # (bytes: never equal to the tuple of a key read through Python)
        return ((mode, topk, kpool, page_size, next_n, live, schedule, many, type(seq_lens),
                 read[0]), read[1], read[2])
    buffers = _python_buffers(seq_lens, req_pool_indices, req_to_token, extend_lens,
                              out if many else (out,))
    if buffers is None:
        return None
    return (mode, topk, kpool, page_size, next_n, live, schedule, many, buffers), None, None


# _core.buffer_key keys an output that is the very object before it as such: with page_size 1
# the real table may be page_table_1 itself, and that is part of a key.
assert FIELDS.index("real_page_table") == FIELDS.index("page_table_1") + 1


def _python_buffers(seq_lens: Any, req_pool_indices: Any, req_to_token: Any, extend_lens: Any,
                    mds: Sequence[Metadata]) -> Optional[Hashable]:
    """The buffers' part of a key, read through torch's or CuPy's Python attributes (`_arrays`);
    None for other types.

    Output buffers are persistent, so each Metadata keeps the full key of its fields (`_memo`)
    with the field objects; a call re-reads only their identity, address and shape (torch's
    stride() and get_device() cost more than the rest of a cached call). An array changed in
    place so that it keeps both its address and shape but not its strides (as_strided_, set_,
    transposing a square table in place) is not seen: assign it to its field again.
    """
    keyed = _arrays.keyed_type(seq_lens)
    if keyed is None:
        return None
    t, is_torch = keyed
    inputs = _arrays.input_keys(t, is_torch, (seq_lens, req_pool_indices) if extend_lens is None
                                else (seq_lens, req_pool_indices, extend_lens), req_to_token)
    if inputs is None:
        return None
    outs = []
    for md in mds:
        xs = _fields(md)
        memo = md._memo
        if (memo is None or memo[0] is not t or not all(map(operator.is_, xs, memo[1]))
                or _arrays.quick_keys(is_torch, xs) != memo[2]):
            keys = _arrays.output_keys(t, is_torch, xs)
            if keys is None:
                return None
            memo = md._memo = (t, xs, _arrays.quick_keys(is_torch, xs), keys)
        outs.append(memo[3])
        outs.append(md.real_page_table is md.page_table_1)
    return inputs, tuple(outs)


E = TypeVar("E")


class PlanCache(Generic[E]):
    """A least-recently-used map from cache keys to entries (a plan and what its caller needs
    to launch it), safe to share between threads.

    Changes (put, clear, eviction) hold the lock; a lookup is one dict read and stamps the entry
    with a use count, so a hit costs one hash of its key. Eviction drops the entry with the
    oldest stamp (at most `capacity` entries: a scan on a miss, never on a hit).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: Dict[Hashable, List[Any]] = {}  # key -> [entry, last use]
        self._uses = itertools.count()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[E]:
        slot = self._entries.get(key)
        if slot is None:
            return None
        slot[1] = next(self._uses)
        entry: E = slot[0]
        return entry

    def put(self, key: Hashable, entry: E) -> None:
        with self._lock:
            self._entries[key] = [entry, next(self._uses)]
            while len(self._entries) > self.capacity:
                oldest = min(self._entries, key=lambda k: self._entries[k][1])
                del self._entries[oldest]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


PLANS: PlanCache[Entry] = PlanCache(64)
atexit.register(PLANS.clear)  # release the plans before the extension is torn down
