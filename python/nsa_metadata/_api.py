"""SPEC's arguments: validation, the three modes, Metadata, the prepared path and the reference
fallback.

Every host-visible check happens here, before anything is written, for the GPU path and the
reference path alike, so both give the same errors. A one-shot call validates its arrays for
exactly this step; `prepare` validates persistent buffers once and leaves each step only the
capacity checks of the binding.
"""

from __future__ import annotations

import atexit
import operator

import numpy as np

from . import _arrays, reference
from .reference import INT32_MAX

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded")
TABLES = ("page_table_1", "real_page_table")
MAX_DESTS = 16  # kernels/launch.h: kMaxDests
MODE_CODES = {"decode": 0, "target_verify": 1, "draft_extend": 2}  # kernels/launch.h: Mode
INDEX_DTYPES = ("int32", "int64")
UNBOUNDED = 2**62


class Metadata:
    """The outputs of one call (or one destination set), with SPEC's names."""

    __slots__ = FIELDS

    def __init__(self, cache_seqlens=None, cu_seqlens_k=None, nsa_cache_seqlens=None,
                 nsa_cu_seqlens_k=None, page_table_1=None, real_page_table=None,
                 seqlens_expanded=None):
        self.cache_seqlens, self.cu_seqlens_k = cache_seqlens, cu_seqlens_k
        self.nsa_cache_seqlens, self.nsa_cu_seqlens_k = nsa_cache_seqlens, nsa_cu_seqlens_k
        self.page_table_1, self.real_page_table = page_table_1, real_page_table
        self.seqlens_expanded = seqlens_expanded

    def __repr__(self):
        parts = [f"{f}={'None' if getattr(self, f) is None else tuple(getattr(self, f).shape)}"
                 for f in FIELDS]
        return "Metadata(" + ", ".join(parts) + ")"


# ---------------------------------------------------------------------------- scalars

def _int(name, value, lo, hi=INT32_MAX):
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int, not bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside [{lo}, {hi}]")
    return value


def _bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def _where(device):
    return "the host" if device is None else f"cuda:{device}"


# ---------------------------------------------------------------------------- arrays

def _index_array(name, x, bs=None):
    a = _arrays.describe(x, name)
    if a.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, not {a.dtype}")
    if len(a.shape) != 1:
        raise ValueError(f"{name} must be 1-D, not {len(a.shape)}-D")
    if bs is not None and a.shape[0] != bs:
        raise ValueError(f"{name} has {a.shape[0]} elements but seq_lens has {bs}")
    return a


def _table(name, x):
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


def _inputs(mode, seq_lens, req_pool_indices, req_to_token, extend_lens):
    """The input arrays, validated; all on one device (None: the host)."""
    lens = _index_array("seq_lens", seq_lens)
    bs = lens.shape[0]
    inputs = [lens, _index_array("req_pool_indices", req_pool_indices, bs),
              _table("req_to_token", req_to_token)]
    if mode == "draft_extend":
        inputs.append(_index_array("extend_lens", extend_lens, bs))
    for a, name in zip(inputs[1:], ("req_pool_indices", "req_to_token", "extend_lens")):
        if a.device != lens.device:
            raise ValueError(f"{name} is on {_where(a.device)} but seq_lens is on {_where(lens.device)}")
    return inputs


def _output(name, x, shape, device):
    """One output buffer: int32, writeable, on `device`, holding `shape` (None entries: any)."""
    a = _arrays.describe(x, name)
    if a.dtype != "int32":
        raise TypeError(f"{name} must be int32, not {a.dtype}")
    if len(a.shape) != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D, not {len(a.shape)}-D")
    if a.device != device:
        raise ValueError(f"{name} is on {_where(a.device)} but the inputs are on {_where(device)}")
    if not _arrays.writeable(a):
        raise ValueError(f"{name} is read-only")
    if any(need is not None and have < need for have, need in zip(a.shape, shape)):
        want = tuple(a.shape[k] if n is None else n for k, n in enumerate(shape))
        raise ValueError(f"{name} has shape {tuple(a.shape)}; this call needs at least {want}")
    region = tuple(a.shape[k] if n is None else n for k, n in enumerate(shape))
    if 0 in region:  # nothing is written: any layout will do
        return a, None
    if region[-1] > 1 and a.strides[-1] != 1:
        raise ValueError(f"{name} must have unit (column) stride, not {a.strides[-1]}")
    if len(region) == 2 and region[0] > 1 and a.strides[0] < region[1]:
        raise ValueError(f"{name} row stride {a.strides[0]} is smaller than the width {region[1]}")
    return a, _arrays.Arr(a.obj, a.lib, a.device, a.dtype, region, a.strides, a.ptr, a.itemsize).span()


def _shapes(mode, bs, rows, max_len, page_size):
    """The region each output must hold (None: the field is not an output of this mode)."""
    return {"cache_seqlens": (bs,), "cu_seqlens_k": (bs + 1,), "nsa_cache_seqlens": (rows,),
            "nsa_cu_seqlens_k": (rows + 1,), "page_table_1": (rows, max_len),
            "real_page_table": (rows, -(-max_len // page_size)),
            "seqlens_expanded": None if mode == "decode" else (rows,)}


def _destinations(out, shapes, device, page_size):
    """Validate `out` (one Metadata or a list): the list, each field's Arr and written span."""
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not 1 <= len(outs) <= MAX_DESTS:
        raise ValueError(f"out must hold 1 to {MAX_DESTS} Metadata, not {len(outs)}")
    dests, spans = [], []
    for k, md in enumerate(outs):
        where = f"out[{k}]" if isinstance(out, (list, tuple)) else "out"
        if not isinstance(md, Metadata):
            raise TypeError(f"{where} must be a nsa_metadata.Metadata, not {type(md).__name__}")
        arrs = {}
        for f, shape in shapes.items():
            x = getattr(md, f)
            if shape is None or x is None:
                if x is None and shape is not None and f not in TABLES:
                    raise ValueError(f"{where}.{f} is required (only the page tables may be None)")
                continue
            if f == "real_page_table" and page_size == 1 and x is md.page_table_1:
                continue  # SPEC: with page_size 1 the real table is page_table_1 itself
            arrs[f], span = _output(f"{where}.{f}", x, shape, device)
            spans.append((f"{where}.{f}", span, True))
        dests.append(arrs)
    return outs, dests, spans


def _check_disjoint(spans):
    """spans: (name, (lo, hi) or None, is_output). An output may overlap nothing else;
    inputs may share memory with each other (they are only read)."""
    any_end = out_end = (0, None)
    for lo, hi, name, is_out in sorted((s[0], s[1], n, o) for n, s, o in spans if s is not None):
        other = any_end if is_out else out_end
        if other[1] is not None and lo < other[0]:
            raise ValueError(f"{name} overlaps {other[1]}: outputs may not alias inputs or each other")
        if hi > any_end[0]:
            any_end = (hi, name)
        if is_out and hi > out_end[0]:
            out_end = (hi, name)


def _input_spans(inputs):
    names = ("seq_lens", "req_pool_indices", "req_to_token", "extend_lens")
    return [(n, a.span(), False) for n, a in zip(names, inputs)]


def _allocate(lib, device, shapes, page_size):
    md = Metadata(**{f: None if s is None else _arrays.empty(lib, device, s)
                     for f, s in shapes.items() if f != "real_page_table"})
    md.real_page_table = (md.page_table_1 if page_size == 1
                          else _arrays.empty(lib, device, shapes["real_page_table"]))
    return md


# ---------------------------------------------------------------------------- the device

def _plan(mode, inputs, dests, caps, *, topk, kpool, page_size, next_n, live, status, device):
    """A _core.Plan over validated arrays; caps: (bs, rows, width, real width) capacities."""
    from . import _core

    def index(a):
        return (0, 1, False) if a is None else (a.ptr, a.strides[0], a.dtype == "int64")

    def ptr(arrs, f):
        a = arrs.get(f)
        return 0 if a is None else a.ptr

    def stride(arrs, f):
        a = arrs.get(f)
        return 0 if a is None else a.strides[0]

    table = inputs[2]
    descs = [(ptr(d, "cache_seqlens"), ptr(d, "cu_seqlens_k"), ptr(d, "nsa_cache_seqlens"),
              ptr(d, "nsa_cu_seqlens_k"), ptr(d, "seqlens_expanded"), ptr(d, "page_table_1"),
              stride(d, "page_table_1"), ptr(d, "real_page_table"), stride(d, "real_page_table"))
             for d in dests]
    return _core.Plan(MODE_CODES[mode], index(inputs[0]), index(inputs[1]),
                      index(inputs[3] if mode == "draft_extend" else None),
                      (table.ptr, table.shape[0], table.shape[1], table.strides[0]), descs, *caps,
                      topk, kpool, page_size, next_n, live, status, device)


def _raise_bad_element(i, kind, inputs, total):
    if kind == reference.TOTAL:
        s = int(np.maximum(reference.int32(_arrays.to_list(inputs[3])), 0).sum())
        raise ValueError(f"total = {total} but sum(extend_lens) = {s}")
    if kind == reference.POOL_INDEX:
        v = _arrays.scalar_int64(inputs[1], i)
        raise ValueError(f"req_pool_indices[{i}] = {v} is outside [0, {inputs[2].shape[0]})")
    name, arr = ("extend_lens", inputs[3]) if kind == reference.BAD_EXTEND else ("seq_lens", inputs[0])
    v = _arrays.scalar_int64(arr, i)
    what = ("is negative" if v < 0 else "overflows int32" if kind == reference.BAD_EXTEND else
            "overflows int32 (its length or a cumulative sum through it)")
    raise ValueError(f"{name}[{i}] = {v} {what}")


# ---------------------------------------------------------------------------- one-shot calls

# Validated plans of one-shot calls with `out` given, keyed by everything validation reads
# (each array's pointer, shape, strides and dtype; every scalar). Serving engines call with the
# same persistent buffers every step, so a step costs a key lookup instead of a validation. A
# key that matches denotes the very same memory and arguments, so the plan is exactly what a
# fresh validation would build; nothing is kept alive by it.
_PLANS = {}
_PLANS_MAX = 64
atexit.register(_PLANS.clear)  # release the plans before the extension is torn down


def _cache_key(mode, arrays, scalars, out):
    for v in scalars:
        if type(v) is not int:
            return None
    key = [mode, type(out) is list or type(out) is tuple, *scalars]
    for x in arrays:
        if x is not None:
            fp = _arrays.fingerprint(x)
            if fp is None:
                return None
            key.append(fp)
    for md in out if key[1] else (out,):
        if type(md) is not Metadata:
            return None
        for f in FIELDS:
            x = getattr(md, f)
            fp = None if x is None else _arrays.fingerprint(x)
            if fp is None and x is not None:
                return None
            key.append(fp)
        key.append(md.real_page_table is md.page_table_1)
    return tuple(key)


def run(mode, seq_lens, req_pool_indices, req_to_token, extend_lens=None, *, max_len, topk=2048,
        kpool=1, page_size=1, next_n=1, total=None, live=False, out=None, stream=None,
        check=False):
    """Validate, then run one call on the arrays' device (or the reference on the host)."""
    key = None
    if out is not None and not check and (live is True or live is False):
        key = _cache_key(mode, (seq_lens, req_pool_indices, req_to_token, extend_lens),
                         (max_len, topk, kpool, page_size, next_n, -1 if total is None else total,
                          int(live)), out)
        hit = _PLANS.get(key) if key is not None else None
        if hit is not None:
            plan, current_stream, bs = hit
            plan.launch(bs, max_len, total or 0,
                        current_stream() if stream is None else _arrays.stream_handle(stream))
            return out
    topk, kpool = _int("topk", topk, 1), _int("kpool", kpool, 1)
    page_size = _int("page_size", page_size, 1)
    live, check = _bool("live", live), _bool("check", check)
    inputs = _inputs(mode, seq_lens, req_pool_indices, req_to_token, extend_lens)
    bs, device = inputs[0].shape[0], inputs[0].device
    max_len = _int("max_len", max_len, 0, min(inputs[2].shape[1], INT32_MAX))
    if mode == "target_verify":
        next_n = _int("next_n", next_n, 1)
        rows = bs * next_n
        if rows > INT32_MAX:
            raise ValueError(f"bs * next_n = {rows} rows exceeds int32")
    elif mode == "draft_extend":
        if total is None:
            raise TypeError("draft_extend needs total= (the sum of extend_lens, or a capacity)")
        rows = total = _int("total", total, 0)
        if device is None:  # host-visible here, so checked here
            s = int(np.maximum(reference.int32(_arrays.host_view(inputs[3])), 0).sum())
            if s != total:
                raise ValueError(f"total = {total} but sum(extend_lens) = {s}")
    else:
        rows = bs
    shapes = _shapes(mode, bs, rows, max_len, page_size)
    if out is None:
        outs = [_allocate(inputs[0].lib, device, shapes, page_size)]
        dests = _destinations(outs[0], shapes, device, page_size)[1]
    else:
        outs, dests, spans = _destinations(out, shapes, device, page_size)
        _check_disjoint(spans + _input_spans(inputs))
    kw = dict(topk=topk, kpool=kpool, page_size=page_size, next_n=next_n, live=live)
    if device is None:
        _run_reference(mode, inputs, outs, max_len=max_len, total=total, check=check, **kw)
    else:
        handle = (_arrays.current_stream(inputs[0].lib, device) if stream is None
                  else _arrays.stream_handle(stream))
        status = _arrays.empty_status(inputs[0].lib, device) if check else None
        caps = (bs, rows, max_len, shapes["real_page_table"][1])
        plan = _plan(mode, inputs, dests, caps, status=0 if status is None else
                     _arrays.describe(status, "status").ptr, device=device, **kw)
        plan.launch(bs, max_len, total or 0, handle)
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.pop(next(iter(_PLANS)))
            _PLANS[key] = (plan, _arrays.current_stream_getter(inputs[0].lib, device), bs)
        if check:  # synchronises: check=True is the debugging mode
            _arrays.synchronize(inputs[0].lib, device, handle)  # the kernel's stream, maybe not current
            bad = int(status[0].item())  # (request << 3) | kind, or -1
            if bad != -1:
                _raise_bad_element(bad >> 3, bad & 7, inputs, total)
    return outs[0] if out is None else out


def _run_reference(mode, inputs, outs, *, check, **kw):
    views = [_arrays.host_view(a) for a in inputs]
    seq_lens, pool, table = views[:3]
    extend_lens = views[3] if mode == "draft_extend" else None
    host_outs = [Metadata(**{f: None if getattr(md, f) is None else
                             _arrays.host_view(_arrays.describe(getattr(md, f), f))
                             for f in FIELDS}) for md in outs]
    reference.compute(mode, seq_lens, pool, extend_lens, table, host_outs, **kw)
    if check:
        bad = reference.first_error(mode, seq_lens, pool, extend_lens, table.shape[0],
                                    kw["topk"], kw["kpool"], kw["next_n"], kw["total"])
        if bad is not None:
            _raise_bad_element(*bad, inputs, kw["total"])


def decode(seq_lens, req_pool_indices, req_to_token, *, max_len, topk=2048, kpool=1, page_size=1,
           live=False, out=None, stream=None, check=False):
    """SPEC decode mode: one launch on the arrays' device, or the reference on the host."""
    return run("decode", seq_lens, req_pool_indices, req_to_token, max_len=max_len, topk=topk,
               kpool=kpool, page_size=page_size, live=live, out=out, stream=stream, check=check)


def target_verify(seq_lens, req_pool_indices, req_to_token, *, next_n, max_len, topk=2048, kpool=1,
                  page_size=1, live=False, out=None, stream=None, check=False):
    """SPEC target_verify mode (next_n draft tokens per request)."""
    return run("target_verify", seq_lens, req_pool_indices, req_to_token, next_n=next_n,
               max_len=max_len, topk=topk, kpool=kpool, page_size=page_size, live=live, out=out,
               stream=stream, check=check)


def draft_extend(seq_lens, extend_lens, req_pool_indices, req_to_token, *, total, max_len,
                 topk=2048, kpool=1, page_size=1, live=False, out=None, stream=None, check=False):
    """SPEC draft_extend mode (`total` = sum(extend_lens), or a capacity under a CUDA graph)."""
    return run("draft_extend", seq_lens, req_pool_indices, req_to_token, extend_lens,
               total=total, max_len=max_len, topk=topk, kpool=kpool, page_size=page_size,
               live=live, out=out, stream=stream, check=check)


# ---------------------------------------------------------------------------- prepared calls

class Prepared:
    """One mode bound once to persistent buffers (graph slots, req_to_token, outputs).

    Each step passes only what changes: ``plan(bs, max_len, total=0, stream=None)`` launches
    on the first `bs` requests of the bound arrays, or raises ValueError naming what exceeds
    the bound buffers. The buffers are validated here, once, and kept alive by the plan.
    """

    def __init__(self, mode, seq_lens, req_pool_indices, req_to_token, *, out, extend_lens=None,
                 next_n=1, topk=2048, kpool=1, page_size=1, live=False):
        if mode not in MODE_CODES:
            raise ValueError(f"mode must be one of {tuple(MODE_CODES)}, not {mode!r}")
        self.mode = mode
        self.kw = dict(topk=_int("topk", topk, 1), kpool=_int("kpool", kpool, 1),
                       page_size=_int("page_size", page_size, 1), live=_bool("live", live),
                       next_n=_int("next_n", next_n, 1) if mode == "target_verify" else 1)
        self.inputs = _inputs(mode, seq_lens, req_pool_indices, req_to_token, extend_lens)
        self.device = self.inputs[0].device
        rows_field = None if mode == "decode" else (None,)
        shapes = {"cache_seqlens": (None,), "cu_seqlens_k": (None,), "nsa_cache_seqlens": (None,),
                  "nsa_cu_seqlens_k": (None,), "page_table_1": (None, None),
                  "real_page_table": (None, None), "seqlens_expanded": rows_field}
        self.outs, self.dests, spans = _destinations(out, shapes, self.device, self.kw["page_size"])
        _check_disjoint(spans + _input_spans(self.inputs))
        bs_cap, rows_cap, width, real_width = self.inputs[0].shape[0], UNBOUNDED, UNBOUNDED, UNBOUNDED
        per_request = 1 if mode == "decode" else self.kw["next_n"] if mode == "target_verify" else None
        for d in self.dests:
            bs_cap = min(bs_cap, d["cache_seqlens"].shape[0], d["cu_seqlens_k"].shape[0] - 1)
            rows_cap = min(rows_cap, d["nsa_cache_seqlens"].shape[0], d["nsa_cu_seqlens_k"].shape[0] - 1,
                           *(d[f].shape[0] for f in ("seqlens_expanded", "page_table_1",
                                                     "real_page_table") if f in d))
            if "page_table_1" in d:
                width = min(width, d["page_table_1"].shape[1])
            if "real_page_table" in d:
                real_width = min(real_width, d["real_page_table"].shape[1])
        if per_request is not None:  # decode and target_verify: rows follow the batch size
            bs_cap = min(bs_cap, rows_cap // per_request)
        self.caps = (max(bs_cap, 0), max(rows_cap, 0), width, real_width)
        self._plan = None
        if self.device is not None:
            self._plan = _plan(mode, self.inputs, self.dests, self.caps, status=0,
                               device=self.device, **self.kw)
            self._launch = self._plan.launch
            self._current_stream = _arrays.current_stream_getter(self.inputs[0].lib, self.device)

    def __call__(self, bs, max_len, total=0, stream=None):
        if self._plan is not None:
            self._launch(bs, max_len, total,
                         self._current_stream() if stream is None else _arrays.stream_handle(stream))
            return
        self._host_step(bs, max_len, total)

    def _host_step(self, bs, max_len, total):
        """The reference on the first `bs` requests, written into the bound buffers' regions."""
        bs = _int("bs", bs, 0, self.caps[0])
        max_len = _int("max_len", max_len, 0, min(self.inputs[2].shape[1], self.caps[2]))
        rows = bs * self.kw["next_n"] if self.mode != "draft_extend" else _int("total", total, 0, self.caps[1])
        if rows > self.caps[1] or -(-max_len // self.kw["page_size"]) > self.caps[3]:
            raise ValueError(f"this step needs {rows} rows of width {max_len}; the bound buffers hold less")
        shapes = _shapes(self.mode, bs, rows, max_len, self.kw["page_size"])
        outs = []
        for bound in self.outs:
            md = Metadata(**{f: None if shape is None or getattr(bound, f) is None else
                             getattr(bound, f)[tuple(slice(n) for n in shape)]
                             for f, shape in shapes.items()})
            if bound.real_page_table is bound.page_table_1:
                md.real_page_table = md.page_table_1
            outs.append(md)
        views = [a.obj[:bs] for a in (self.inputs[0], self.inputs[1])]
        ext = self.inputs[3].obj[:bs] if self.mode == "draft_extend" else None
        run(self.mode, views[0], views[1], self.inputs[2].obj, ext, max_len=max_len, total=total,
            out=outs, **self.kw)


def prepare(mode, seq_lens, req_pool_indices, req_to_token, *, out, extend_lens=None, next_n=1,
            topk=2048, kpool=1, page_size=1, live=False):
    """Bind `mode` to persistent buffers once; returns a `Prepared` whose calls take only
    (bs, max_len, total, stream). See Prepared."""
    return Prepared(mode, seq_lens, req_pool_indices, req_to_token, out=out, extend_lens=extend_lens,
                    next_n=next_n, topk=topk, kpool=kpool, page_size=page_size, live=live)
