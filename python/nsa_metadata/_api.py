"""The public calls: the three modes (one-shot calls) and the prepared path.

Every call goes one way: a plan bound to its buffers (`_plans`), launched with this step's bs,
max_len and total. A prepared object binds its plan once; a one-shot call with `out=` looks its
plan up by its buffers, and binds one (after validating the call, `_validate`) when there is
none or the step does not fit it. Host arrays run the NumPy reference (`_host`) after the same
validation.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, TypeVar, overload

from . import _arrays, _core, _host, _plans, _validate
from ._arrays import Array, Stream
from ._metadata import CTX_2D, FIELDS, Metadata, Schedule

Outs = TypeVar("Outs", bound=Sequence[Metadata])

def _call(mode: str, seq_lens: Any, req_pool_indices: Any, req_to_token: Any, extend_lens: Any,
          max_len: Any, topk: Any, kpool: Any, page_size: Any, next_n: Any, total: Any,
          live: Any, out: Any, stream: Any, check: Any, schedule: Any = None) -> Any:
    """One call: the cached plan of its buffers when there is one and the step fits it, else
    validation and a new plan (or the reference on host arrays)."""
    key = None
    found = (None if out is None or check is not False else
             _plans.cache_key(mode, seq_lens, req_pool_indices, req_to_token, extend_lens, topk,
                              kpool, page_size, next_n, live, out, schedule))
    if found is not None:
        key, bs, current = found
        entry = _plans.PLANS.get(key)
        if entry is not None and type(max_len) is int and (total is None or type(total) is int):
            plan, current_stream = entry
            if bs is None:  # a key read through Python attributes: bs and the stream read here
                bs = seq_lens.shape[0]  # (torch's len() is a Python-level wrapper: 4x the cost)
                if not (req_pool_indices.shape[0] == bs
                        and (extend_lens is None or extend_lens.shape[0] == bs)):
                    bs = None
            if bs is not None:
                try:
                    plan.launch(bs, max_len, 0 if total is None else total,
                                _arrays.stream_handle(stream) if stream is not None
                                else current_stream() if current is None else current)
                    return out
                except ValueError:
                    pass  # a step these buffers cannot take: validated below, with its message
    c = _validate.one_shot(mode, seq_lens, req_pool_indices, req_to_token, extend_lens,
                           max_len=max_len, topk=topk, kpool=kpool, page_size=page_size,
                           next_n=next_n, total=total, live=live, out=out, stream=stream,
                           check=check, schedule=schedule)
    if c.device is None:
        outs = [_allocate(c, None)] if c.outs is None else c.outs
        _host.run(c, outs)
        return outs[0] if out is None else out
    device = c.device
    current_stream = _arrays.current_stream_getter(c.lib, device)
    handle = current_stream() if c.stream is None else c.stream
    if c.outs is None:
        md = _allocate(c, handle)
        dests = _validate.destinations(md, c.regions, device, c.page_size)[1]
        cap = c.step_capacity()
    else:
        assert c.dests is not None
        dests = c.dests
        cap = (c.whole_capacity() if key is not None else None) or c.step_capacity()
    status = _arrays.empty_status(c.lib, device, handle) if c.check else None
    plan = _plans.bind(mode, c.arrs, dests, cap, topk=c.topk, kpool=c.kpool,
                       page_size=c.page_size, next_n=c.next_n, live=c.live,
                       status=0 if status is None else _arrays.describe(status, "status").ptr,
                       schedule=c.schedule)
    plan.launch(c.bs, c.max_len, c.total, handle)
    if key is not None:  # (only a call with check=False has a key)
        _plans.PLANS.put(key, (plan, current_stream))
    if status is not None:  # synchronises: check=True is the debugging mode
        _arrays.synchronize(c.lib, device, handle)  # the kernel's stream, maybe not the current one
        bad = _core.bad_element(int(status[0].item()))
        if bad is not None:
            _validate.raise_bad_element(bad[0], bad[1], c.arrs, c.total)
    return md if c.outs is None else out


def _allocate(c: _validate.Call, stream: Optional[int]) -> Metadata:
    """New outputs for call `c`, with its inputs' library on their device, for `stream`."""
    want = c.regions
    md = Metadata(**{f: None if s is None else _arrays.empty(c.lib, c.device, s, stream)
                     for f, s in want.items() if f not in ("real_page_table", CTX_2D)})
    real = want["real_page_table"]
    assert real is not None
    md.real_page_table = (md.page_table_1 if c.page_size == 1 else
                          _arrays.empty(c.lib, c.device, real, stream))
    return md


# ---------------------------------------------------------------------------- one-shot calls

@overload
def decode(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, max_len: int,
           topk: int = ..., kpool: int = ..., page_size: int = ..., live: bool = ...,
           out: Optional[Metadata] = ..., stream: Optional[Stream] = ...,
           check: bool = ...,
           schedule: Optional[Schedule] = ...) -> Metadata: ...
@overload
def decode(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, max_len: int,
           topk: int = ..., kpool: int = ..., page_size: int = ..., live: bool = ..., out: Outs,
           stream: Optional[Stream] = ..., check: bool = ...,
           schedule: Optional[Schedule] = ...) -> Outs: ...
def decode(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, max_len: int,
           topk: int = 2048, kpool: int = 1, page_size: int = 1, live: bool = False,
           out: Any = None, stream: Optional[Stream] = None, check: bool = False,
           schedule: Optional[Schedule] = None) -> Any:
    """SPEC decode: one kernel launch on the arrays' device (the reference on the host).

    ``rows = bs``, ``cache_seqlens = lens``, and page row ``i`` is pool row
    ``req_pool_indices[i]``.

    Parameters
    ----------
    seq_lens : array ``[bs]``, int32 or int64
        KV tokens already cached for each request (draft tokens excluded).
    req_pool_indices : array ``[bs]``, int32 or int64
        The row of `req_to_token` that holds each request.
    req_to_token : array ``[P, W]``, int32
        Token slot of every position of every pool row (unit column stride, row stride >= W).
    max_len : int
        Width of the token page table, ``0 <= max_len <= W`` (the batch's longest KV length).
    topk : int, default 2048
        Sparse top-k of the indexer.
    kpool : int, default 1
        Index pooling granularity of ``sparse`` (1: a plain top-k clamp).
    page_size : int, default 1
        Page size of the real KV cache (64 for FlashMLA); with 1 the real table is
        ``page_table_1`` itself.
    live : bool, default False
        True: write each page-table row only over its live extent (``clamp(L, 0, max_len)``
        columns) and leave the rest as it was.
    out : Metadata, or a list or tuple of 1 to 16 of them, optional
        Buffers written in place (persistent CUDA-graph buffers may be larger than the step).
        None: the outputs are allocated with the inputs' array library on their device.
    stream : int, torch or CuPy stream, optional
        The stream to launch on. None: the current stream of the arrays' device.
    check : bool, default False
        Synchronise and raise ValueError naming the first bad element (a pool index outside
        ``[0, P)``, a negative length, an int32 overflow). Without it no device-only value
        addresses memory out of bounds, and a row with a bad pool index is filled with -1.
    schedule : Schedule, optional
        Also compute FlashMLA's decode schedule over the rows in the same launch
        (``tile_scheduler_metadata``, ``num_splits``; docs/SPEC_schedule.md).

    Returns
    -------
    Metadata
        The outputs; with `out=`, `out` itself (the same Metadata, list or tuple).

    Raises
    ------
    TypeError, ValueError
        For anything the host can see (dtype, shape, device, strides, aliasing, scalar ranges,
        a buffer too small), naming the argument, before anything is written.
    """
    return _call("decode", seq_lens, req_pool_indices, req_to_token, None, max_len, topk, kpool,
                 page_size, 1, None, live, out, stream, check, schedule)


@overload
def target_verify(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, next_n: int,
                  max_len: int, topk: int = ..., kpool: int = ..., page_size: int = ...,
                  live: bool = ..., out: Optional[Metadata] = ..., stream: Optional[Stream] = ...,
                  check: bool = ...,
                  schedule: Optional[Schedule] = ...) -> Metadata: ...
@overload
def target_verify(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, next_n: int,
                  max_len: int, topk: int = ..., kpool: int = ..., page_size: int = ...,
                  live: bool = ..., out: Outs, stream: Optional[Stream] = ...,
                  check: bool = ...,
                  schedule: Optional[Schedule] = ...) -> Outs: ...
def target_verify(seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *, next_n: int,
                  max_len: int, topk: int = 2048, kpool: int = 1, page_size: int = 1,
                  live: bool = False, out: Any = None, stream: Optional[Stream] = None,
                  check: bool = False,
                  schedule: Optional[Schedule] = None) -> Any:
    """SPEC target_verify: `next_n` draft tokens per request, in one kernel launch.

    ``rows = bs * next_n``, ``cache_seqlens = lens + next_n`` and
    ``seqlens_expanded[i * next_n + j] = lens[i] + j + 1``.

    Parameters
    ----------
    seq_lens : array ``[bs]``, int32 or int64
        KV tokens already cached for each request (draft tokens excluded).
    req_pool_indices : array ``[bs]``, int32 or int64
        The row of `req_to_token` that holds each request.
    req_to_token : array ``[P, W]``, int32
        Token slot of every position of every pool row (unit column stride, row stride >= W).
    next_n : int
        Draft tokens per request (>= 1).
    max_len : int
        Width of the token page table, ``0 <= max_len <= W`` (the batch's longest KV length).
    topk : int, default 2048
        Sparse top-k of the indexer.
    kpool : int, default 1
        Index pooling granularity of ``sparse`` (1: a plain top-k clamp).
    page_size : int, default 1
        Page size of the real KV cache (64 for FlashMLA); with 1 the real table is
        ``page_table_1`` itself.
    live : bool, default False
        True: write each page-table row only over its live extent (``clamp(L, 0, max_len)``
        columns) and leave the rest as it was.
    out : Metadata, or a list or tuple of 1 to 16 of them, optional
        Buffers written in place (persistent CUDA-graph buffers may be larger than the step).
        None: the outputs are allocated with the inputs' array library on their device.
    stream : int, torch or CuPy stream, optional
        The stream to launch on. None: the current stream of the arrays' device.
    check : bool, default False
        Synchronise and raise ValueError naming the first bad element (a pool index outside
        ``[0, P)``, a negative length, an int32 overflow). Without it no device-only value
        addresses memory out of bounds, and a row with a bad pool index is filled with -1.
    schedule : Schedule, optional
        Also compute FlashMLA's decode schedule over the rows in the same launch
        (``tile_scheduler_metadata``, ``num_splits``; docs/SPEC_schedule.md).

    Returns
    -------
    Metadata
        The outputs; with `out=`, `out` itself (the same Metadata, list or tuple).

    Raises
    ------
    TypeError, ValueError
        For anything the host can see (dtype, shape, device, strides, aliasing, scalar ranges,
        a buffer too small), naming the argument, before anything is written.
    """
    return _call("target_verify", seq_lens, req_pool_indices, req_to_token, None, max_len, topk,
                 kpool, page_size, next_n, None, live, out, stream, check, schedule)


@overload
def draft_extend(seq_lens: Array, extend_lens: Array, req_pool_indices: Array,
                 req_to_token: Array, *, total: int, max_len: int, topk: int = ...,
                 kpool: int = ..., page_size: int = ..., live: bool = ...,
                 out: Optional[Metadata] = ..., stream: Optional[Stream] = ...,
                 check: bool = ...) -> Metadata: ...
@overload
def draft_extend(seq_lens: Array, extend_lens: Array, req_pool_indices: Array,
                 req_to_token: Array, *, total: int, max_len: int, topk: int = ...,
                 kpool: int = ..., page_size: int = ..., live: bool = ..., out: Outs,
                 stream: Optional[Stream] = ..., check: bool = ...) -> Outs: ...
def draft_extend(seq_lens: Array, extend_lens: Array, req_pool_indices: Array,
                 req_to_token: Array, *, total: int, max_len: int, topk: int = 2048,
                 kpool: int = 1, page_size: int = 1, live: bool = False, out: Any = None,
                 stream: Optional[Stream] = None, check: bool = False) -> Any:
    """SPEC draft_extend: ``extend_lens[i]`` rows for request ``i``, in one kernel launch.

    ``rows = total`` and ``seqlens_expanded[p[i] + j] = max(lens[i] - extend_lens[i] + j + 1, 0)``
    with ``p[i] = sum(extend_lens[:i])``.

    Parameters
    ----------
    seq_lens : array ``[bs]``, int32 or int64
        KV tokens already cached for each request.
    extend_lens : array ``[bs]``, int32 or int64
        Rows of each request (>= 0).
    req_pool_indices : array ``[bs]``, int32 or int64
        The row of `req_to_token` that holds each request.
    req_to_token : array ``[P, W]``, int32
        Token slot of every position of every pool row (unit column stride, row stride >= W).
    total : int
        ``sum(extend_lens)``, known on the host (where it must equal the sum), or a capacity
        under a CUDA graph (rows past the live sum are left untouched).
    max_len : int
        Width of the token page table, ``0 <= max_len <= W`` (the batch's longest KV length).
    topk : int, default 2048
        Sparse top-k of the indexer.
    kpool : int, default 1
        Index pooling granularity of ``sparse`` (1: a plain top-k clamp).
    page_size : int, default 1
        Page size of the real KV cache (64 for FlashMLA); with 1 the real table is
        ``page_table_1`` itself.
    live : bool, default False
        True: write each page-table row only over its live extent (``clamp(L, 0, max_len)``
        columns) and leave the rest as it was.
    out : Metadata, or a list or tuple of 1 to 16 of them, optional
        Buffers written in place (persistent CUDA-graph buffers may be larger than the step).
        None: the outputs are allocated with the inputs' array library on their device.
    stream : int, torch or CuPy stream, optional
        The stream to launch on. None: the current stream of the arrays' device.
    check : bool, default False
        Synchronise and raise ValueError naming the first bad element (a pool index outside
        ``[0, P)``, a negative length, an int32 overflow). Without it no device-only value
        addresses memory out of bounds, and a row with a bad pool index is filled with -1.

    Returns
    -------
    Metadata
        The outputs; with `out=`, `out` itself (the same Metadata, list or tuple).

    Raises
    ------
    TypeError, ValueError
        For anything the host can see (dtype, shape, device, strides, aliasing, scalar ranges,
        a buffer too small), naming the argument, before anything is written.
    """
    return _call("draft_extend", seq_lens, req_pool_indices, req_to_token, extend_lens, max_len,
                 topk, kpool, page_size, 1, total, live, out, stream, check)


# ---------------------------------------------------------------------------- prepared calls

class Prepared:
    """One mode bound once to persistent buffers; each step passes only what changes.

    Built by `prepare`, which validates the buffers once. Each call ``prep(bs, max_len, total,
    stream)`` launches one kernel on the first `bs` requests of the bound inputs, after checking
    the step against the bound buffers' capacities (see `__call__`). On host arrays each step
    runs the reference on the same regions. The bound buffers stay alive with this object.
    """

    def __init__(self, mode: str, seq_lens: Array, req_pool_indices: Array, req_to_token: Array,
                 *, out: Any, extend_lens: Optional[Array] = None, next_n: int = 1,
                 topk: int = 2048, kpool: int = 1, page_size: int = 1, live: bool = False,
                 schedule: Optional[Schedule] = None) -> None:
        _validate.mode_of(mode)
        self.mode = mode
        self.schedule = _validate.schedule_of(mode, schedule)
        self.topk, self.kpool = _validate.integer("topk", topk, 1), _validate.integer("kpool", kpool, 1)
        self.page_size = _validate.integer("page_size", page_size, 1)
        self.live = _validate.boolean("live", live)
        self.next_n = _validate.integer("next_n", next_n, 1) if mode == "target_verify" else 1
        self.inputs = _validate.inputs(mode, seq_lens, req_pool_indices, req_to_token, extend_lens)
        self.device = self.inputs[0].device
        self.outs, dests, spans = _validate.destinations(
            out, _validate.whole(mode, self.next_n, _validate.parts_of(self.schedule)),
            self.device, self.page_size)
        _validate.check_disjoint(spans + _validate.input_spans(self.inputs))
        self.capacity = _validate.capacity(mode, dests, self.next_n, self.inputs[0].shape[0])
        self._plan = _plans.bind(mode, self.inputs, dests, self.capacity, topk=self.topk,
                                 kpool=self.kpool, page_size=self.page_size, next_n=self.next_n,
                                 live=self.live, schedule=self.schedule)
        self._launch = self._plan.launch
        self._current_stream = (None if self.device is None else
                                _arrays.current_stream_getter(self.inputs[0].lib, self.device))

    def __call__(self, bs: int, max_len: int, total: Optional[int] = None,
                 stream: Optional[Stream] = None) -> None:
        """Launch one step on the first `bs` requests of the bound inputs; never synchronises.

        Parameters
        ----------
        bs : int
            Live requests this step, ``0 <= bs <=`` the bound batch capacity.
        max_len : int
            Width of the token page table this step, ``0 <= max_len <= W`` and within the bound
            page tables.
        total : int
            draft_extend only, and required there: ``sum(extend_lens[:bs])``, or a capacity under
            a CUDA graph (rows past the live sum are not written). Ignored by the other modes.
        stream : int, torch or CuPy stream, optional
            The stream to launch on; None: the current stream of the bound arrays' device.

        Returns
        -------
        None: the results are in the bound output buffers.

        Raises
        ------
        ValueError
            Naming what of the step exceeds the bound buffers (bs, max_len, total or rows).
        TypeError
            A missing total in draft_extend, or an argument of the wrong type.
        """
        if total is None:
            if self.mode == "draft_extend":
                raise TypeError("draft_extend needs total= (the sum of extend_lens, or a capacity)")
            total = 0
        if self._current_stream is not None:
            self._launch(bs, max_len, total,
                         self._current_stream() if stream is None else _arrays.stream_handle(stream))
        else:
            self._host_step(bs, max_len, total, stream)

    def _host_step(self, bs: int, max_len: int, total: int, stream: Optional[Stream]) -> None:
        """The reference on the first `bs` requests, written into the bound buffers' regions."""
        if stream is not None:
            _arrays.stream_handle(stream)  # validated as on the device, then unused
        self._plan.check(bs, max_len, total)
        shapes = _validate.shapes(self.mode, bs, self.next_n, total, max_len, self.page_size,
                                  _validate.parts_of(self.schedule))
        outs = []
        for bound in self.outs:
            md = Metadata(**{f: None if shape is None or getattr(bound, f) is None else
                             getattr(bound, f)[tuple(slice(n) for n in shape)]
                             for f, shape in shapes.items()})
            if bound.real_page_table is bound.page_table_1:
                md.real_page_table = md.page_table_1
            outs.append(md)
        lens, pool = (a.obj[:bs] for a in self.inputs[:2])
        ext = self.inputs[3].obj[:bs] if self.mode == "draft_extend" else None
        _call(self.mode, lens, pool, self.inputs[2].obj, ext, max_len, self.topk, self.kpool,
              self.page_size, self.next_n, total if self.mode == "draft_extend" else None,
              self.live, outs, None, False, self.schedule)

    def __repr__(self) -> str:
        c = self.capacity
        widest = min(self.inputs[2].shape[1], c.width, c.real_width * self.page_size)
        return (f"Prepared({self.mode!r} on {_validate.where(self.device)}: bs <= {c.bs}, "
                f"rows <= {c.rows}, max_len <= {widest}, {len(self.outs)} destination set"
                f"{'s' if len(self.outs) > 1 else ''}; topk={self.topk}, kpool={self.kpool}, "
                f"page_size={self.page_size}"
                f"{f', next_n={self.next_n}' if self.mode == 'target_verify' else ''}, "
                f"live={self.live}"
                f"{'' if self.schedule is None else f', schedule={self.schedule!r}'})")


def prepare(mode: str, seq_lens: Array, req_pool_indices: Array, req_to_token: Array, *,
            out: Any, extend_lens: Optional[Array] = None, next_n: int = 1, topk: int = 2048,
            kpool: int = 1, page_size: int = 1, live: bool = False,
            schedule: Optional[Schedule] = None) -> Prepared:
    """Bind `mode` to persistent buffers once; each step then passes only what changes.

    Parameters
    ----------
    mode : str
        ``"decode"``, ``"target_verify"`` or ``"draft_extend"``.
    seq_lens, req_pool_indices : array ``[capacity]``, int32 or int64
        The inputs' persistent buffers; a step reads their first `bs` entries.
    req_to_token : array ``[P, W]``, int32
        The token table (unit column stride, row stride >= W).
    out : Metadata, or a sequence of 1 to 16 of them
        Persistent output buffers; their sizes bound each step (see `Prepared.__call__`).
    extend_lens : array ``[capacity]``, int32 or int64, optional
        draft_extend only (required there).
    next_n : int, default 1
        target_verify only: draft tokens per request.
    topk, kpool, page_size, live
        As in `decode`.
    schedule : Schedule, optional
        decode and target_verify: also FlashMLA's schedule, into the sets that have its
        buffers (``num_splits`` bounds the rows a step may have).

    Returns
    -------
    Prepared
        Call it as ``prep(bs, max_len, total=None, stream=None)`` each step.

    Raises
    ------
    TypeError, ValueError
        For anything wrong with the buffers or scalars, naming the argument.
    """
    return Prepared(mode, seq_lens, req_pool_indices, req_to_token, out=out,
                    extend_lens=extend_lens, next_n=next_n, topk=topk, kpool=kpool,
                    page_size=page_size, live=live, schedule=schedule)



__all__ = ["FIELDS", "Metadata", "Prepared", "Schedule", "decode", "draft_extend", "prepare", "target_verify"]
