"""SPEC's arguments: validation, the three modes, Metadata, and the reference fallback.

Every host-visible check happens here, before anything is written, for the GPU path and the
reference path alike, so both give the same errors.
"""

from __future__ import annotations

import operator

import numpy as np

from . import _arrays, reference
from .reference import INT32_MAX

FIELDS = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
          "page_table_1", "real_page_table", "seqlens_expanded")
TABLES = ("page_table_1", "real_page_table")
MAX_DESTS = 16  # kernels/launch.h: kMaxDests
INDEX_DTYPES = ("int32", "int64")


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
        parts = []
        for f in FIELDS:
            v = getattr(self, f)
            parts.append(f"{f}={'None' if v is None else tuple(v.shape)}")
        return "Metadata(" + ", ".join(parts) + ")"


def _int(name, value, lo, hi=INT32_MAX):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} = {v} is outside [{lo}, {hi}]")
    return v


def _bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


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
    if width > 1 and a.strides[1] != 1:
        raise ValueError(f"{name} must have unit column stride, not {a.strides[1]}")
    if rows > 1 and a.strides[0] < width:
        raise ValueError(f"{name} row stride {a.strides[0]} is smaller than its width {width}")
    return a


def _output(name, x, shape):
    """Check one output buffer against the region it must hold; return (Arr, region span)."""
    a = _arrays.describe(x, name)
    if a.dtype != "int32":
        raise TypeError(f"{name} must be int32, not {a.dtype}")
    if len(a.shape) != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D, not {len(a.shape)}-D")
    if any(have < need for have, need in zip(a.shape, shape)):
        raise ValueError(f"{name} has shape {tuple(a.shape)}; this call needs at least {shape}")
    if 0 in shape:  # an empty region: nothing is written, any layout will do
        return a, None
    if shape[-1] > 1 and a.strides[-1] != 1:
        raise ValueError(f"{name} must have unit (column) stride, not {a.strides[-1]}")
    if len(shape) == 2 and shape[0] > 1 and a.strides[0] < shape[1]:
        raise ValueError(f"{name} row stride {a.strides[0]} is smaller than the width {shape[1]}")
    region = _arrays.Arr(a.obj, a.lib, a.device, a.dtype, shape, a.strides, a.ptr, a.itemsize)
    return a, region.span()


def _check_disjoint(spans):
    """spans: (name, (lo, hi) or None). Outputs may not overlap inputs or each other."""
    live = sorted((s[0], s[1], n) for n, s in spans if s is not None)
    for (lo0, hi0, n0), (lo1, hi1, n1) in zip(live, live[1:]):
        if lo1 < hi0:
            raise ValueError(f"{n1} overlaps {n0}: outputs may not alias inputs or each other")


def _shapes(mode, bs, rows, max_len, page_size):
    width = -(-max_len // page_size)
    return {
        "cache_seqlens": (bs,), "cu_seqlens_k": (bs + 1,), "nsa_cache_seqlens": (rows,),
        "nsa_cu_seqlens_k": (rows + 1,), "page_table_1": (rows, max_len),
        "real_page_table": (rows, width),
        "seqlens_expanded": None if mode == "decode" else (rows,),
    }


def _allocate(lib, device, shapes, page_size):
    md = Metadata(**{f: None if s is None else _arrays.empty(lib, device, s)
                     for f, s in shapes.items() if f != "real_page_table"})
    md.real_page_table = (md.page_table_1 if page_size == 1
                          else _arrays.empty(lib, device, shapes["real_page_table"]))
    return md


def _destinations(out, shapes, device, page_size):
    """Validate `out` (one Metadata or a list); return the list and the output spans."""
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if not 1 <= len(outs) <= MAX_DESTS:
        raise ValueError(f"out must hold 1 to {MAX_DESTS} Metadata, not {len(outs)}")
    spans = []
    for k, md in enumerate(outs):
        where = "out" if len(outs) == 1 and not isinstance(out, (list, tuple)) else f"out[{k}]"
        if not isinstance(md, Metadata):
            raise TypeError(f"{where} must be a nsa_metadata.Metadata, not {type(md).__name__}")
        for f, shape in shapes.items():
            x = getattr(md, f)
            if shape is None or x is None:
                if x is None and f not in TABLES and shape is not None:
                    raise ValueError(f"{where}.{f} is required (only the page tables may be None)")
                continue
            if f == "real_page_table" and page_size == 1 and x is md.page_table_1:
                continue  # SPEC: with page_size 1 the real table is page_table_1 itself
            a, span = _output(f"{where}.{f}", x, shape)
            if a.device != device:
                raise ValueError(f"{where}.{f} is on {_where(a.device)} but the inputs are on {_where(device)}")
            spans.append((f"{where}.{f}", span))
    return outs, spans


def _where(device):
    return "the host" if device is None else f"cuda:{device}"


def run(mode, seq_lens, req_pool_indices, req_to_token, extend_lens=None, *, max_len, topk=2048,
        kpool=1, page_size=1, next_n=1, total=None, live=False, out=None, stream=None,
        check=False):
    """Validate, then run one call on the arrays' device (or the reference on the host)."""
    topk = _int("topk", topk, 1)
    kpool = _int("kpool", kpool, 1)
    page_size = _int("page_size", page_size, 1)
    live, check = _bool("live", live), _bool("check", check)

    lens = _index_array("seq_lens", seq_lens)
    bs = lens.shape[0]
    pool = _index_array("req_pool_indices", req_pool_indices, bs)
    table = _table("req_to_token", req_to_token)
    max_len = _int("max_len", max_len, 0, table.shape[1])
    inputs = [lens, pool, table]
    if mode == "target_verify":
        next_n = _int("next_n", next_n, 1)
        rows = bs * next_n
        if rows > INT32_MAX:
            raise ValueError(f"bs * next_n = {rows} rows exceeds int32")
    elif mode == "draft_extend":
        inputs.append(_index_array("extend_lens", extend_lens, bs))
        if total is None:
            raise TypeError("draft_extend needs total= (the sum of extend_lens, or a capacity)")
        rows = total = _int("total", total, 0)
    else:
        rows = bs
    device = lens.device
    for a, name in zip(inputs[1:], ("req_pool_indices", "req_to_token", "extend_lens")):
        if a.device != device:
            raise ValueError(f"{name} is on {_where(a.device)} but seq_lens is on {_where(device)}")
    if mode == "draft_extend" and device is None:  # host-visible here, so checked here
        s = int(np.maximum(reference.int32(_arrays.host_view(inputs[3])), 0).sum())
        if s != total:
            raise ValueError(f"total = {total} but sum(extend_lens) = {s}")

    shapes = _shapes(mode, bs, rows, max_len, page_size)
    if out is None:
        outs, spans = None, []
    else:
        outs, spans = _destinations(out, shapes, device, page_size)
        names = ("seq_lens", "req_pool_indices", "req_to_token", "extend_lens")
        _check_disjoint(spans + [(n, a.span()) for n, a in zip(names, inputs)])
    handle = None
    if device is not None:
        handle = (_arrays.current_stream(lens.lib, device) if stream is None
                  else _arrays.stream_handle(stream))
    if outs is None:
        outs = [_allocate(lens.lib, device, shapes, page_size)]

    if device is None:
        _run_reference(mode, inputs, outs, max_len=max_len, topk=topk, kpool=kpool,
                       page_size=page_size, next_n=next_n, total=total, live=live, check=check)
    else:
        _run_device(mode, inputs, outs, device, handle, max_len=max_len, topk=topk, kpool=kpool,
                    page_size=page_size, next_n=next_n, total=total, live=live, check=check)
    return outs[0] if out is None or isinstance(out, Metadata) else outs


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


MODE_CODES = {"decode": 0, "target_verify": 1, "draft_extend": 2}  # kernels/launch.h: Mode


def _run_device(mode, inputs, outs, device, stream, *, check, **kw):
    from . import _core

    extend = inputs[3].obj if mode == "draft_extend" else None
    dests = []
    for md in outs:
        real = md.real_page_table
        if kw["page_size"] == 1 and real is md.page_table_1:
            real = None  # the same buffer: write it once
        dests.append((md.cache_seqlens, md.cu_seqlens_k, md.nsa_cache_seqlens,
                      md.nsa_cu_seqlens_k, None if mode == "decode" else md.seqlens_expanded,
                      md.page_table_1, real))
    status = _arrays.empty_status(inputs[0].lib, device) if check else None
    _core.launch(MODE_CODES[mode], inputs[0].obj, inputs[1].obj, extend, inputs[2].obj, dests,
                 kw["max_len"], kw["topk"], kw["kpool"], kw["page_size"], kw["next_n"],
                 kw["total"] or 0, kw["live"], status, device, stream)
    if check:
        key = int(status[0].item())  # synchronises: check=True is the debugging mode
        if key != -1:
            _raise_bad_element(key >> 3, key & 7, inputs, kw["total"])


def _raise_bad_element(i, kind, inputs, total):
    if kind == reference.TOTAL:
        ext = np.asarray([_arrays.scalar_int64(inputs[3], k) for k in range(inputs[0].shape[0])])
        s = int(np.maximum(reference.int32(ext), 0).sum())
        raise ValueError(f"total = {total} but sum(extend_lens) = {s}")
    name, arr = {reference.POOL_INDEX: ("req_pool_indices", inputs[1]),
                 reference.NEGATIVE_EXTEND: ("extend_lens", inputs[-1])}.get(kind, ("seq_lens", inputs[0]))
    v = _arrays.scalar_int64(arr, i)
    what = {reference.POOL_INDEX: f"is outside [0, {inputs[2].shape[0]})",
            reference.NEGATIVE_LEN: "is negative", reference.NEGATIVE_EXTEND: "is negative",
            reference.OVERFLOW: "overflows int32 (its length or a cumulative sum through it)"}[kind]
    raise ValueError(f"{name}[{i}] = {v} {what}")


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
