"""Drop-in replacements for SGLang's three fused DSA metadata functions.

SGLang's sparse-attention backend (``DeepseekSparseAttnBackend``) fills its per-step metadata
with ``fused_dsa_decode_metadata``, ``fused_dsa_target_verify_metadata`` and
``fused_dsa_draft_extend_metadata``. The functions here take the same parameters in the same
order and write the same buffers in place; swapping the import is the whole patch (see
docs/integration.md). Both spellings of the page-size keyword work: ``physical_page_size``
(SGLang 0.5.x) and ``real_page_size`` (SGLang main), and ``index_kpool`` is the pooling
granularity (``kpool``). Results are SPEC.md's with ``live=True``: each page-table row is
written over its live prefix only, the rest keeps what it held.

Each call is one kernel launch on the current stream, with no allocation and no host
synchronisation, so it can be captured in a CUDA graph. SGLang passes the same persistent
buffers at every replay: the first call on a set of buffers validates them and binds a plan
(`nsa_metadata.prepare`'s), later calls on the same buffer objects only look the plan up and
launch it. Host (NumPy, torch CPU) arrays run the reference. Bad input raises TypeError or
ValueError naming SGLang's argument.
"""

from __future__ import annotations

import atexit
import functools
import re
import weakref
from typing import Any, Callable, Hashable, Optional, Sequence, Tuple

from . import _api, _arrays, _core, _plans, _validate
from ._metadata import Metadata, Schedule

__all__ = ["fused_dsa_decode_metadata", "fused_dsa_target_verify_metadata",
           "fused_dsa_draft_extend_metadata", "get_mla_metadata"]

# SGLang's name for each of ours, in error messages.
_NAMES = {"out.cache_seqlens": "cache_seqlens", "out.cu_seqlens_k": "cu_seqlens_k",
          "out.nsa_cache_seqlens": "dsa_cache_seqlens", "out.nsa_cu_seqlens_k": "dsa_cu_seqlens_k",
          "out.page_table_1": "page_table_1", "out.real_page_table": "real_page_table",
          "out.seqlens_expanded": "seqlens_expanded",
          "out.paged_mqa_ctx_lens_2d": "paged_mqa_ctx_lens_2d", "extend_lens": "extend_seq_lens",
          "topk": "dsa_index_topk", "kpool": "index_kpool", "total": "total_len"}
_OUR_NAME = re.compile(r"(?<![\w.])(out\.\w+|extend_lens|topk|kpool|total|page_size|max_len)\b")


def _renamed(e: Exception, page_name: str, max_name: str) -> Exception:
    names = dict(_NAMES, page_size=page_name, max_len=max_name)
    return type(e)(_OUR_NAME.sub(lambda m: names.get(m.group(0), m.group(0)), str(e)))


def _page_size(physical_page_size: Any, real_page_size: Any) -> Tuple[Any, str]:
    """The page size and the keyword it came by."""
    if real_page_size is None:
        if physical_page_size is None:
            raise TypeError("missing the page size: real_page_size= (SGLang main) or "
                            "physical_page_size= (SGLang 0.5)")
        return physical_page_size, "physical_page_size"
    if physical_page_size is not None:
        raise TypeError("got both real_page_size and physical_page_size: pass one")
    return real_page_size, "real_page_size"


def _step_int(name: str, value: Any) -> int:
    return value if type(value) is int else _validate.integer(name, value, 0, 2**63 - 1)


# ---------------------------------------------------------------------------- bound plans

class _Bound:
    """A plan bound to one set of buffer objects: the objects (weakly), their addresses then,
    the plan and its device's current-stream lookup. Holds no array alive."""

    __slots__ = ("refs", "ptrs", "plan", "stream")

    def __init__(self, refs: Tuple[Any, ...], ptrs: Tuple[int, ...], plan: _core.Plan,
                 stream: Callable[[], int]) -> None:
        self.refs, self.ptrs, self.plan, self.stream = refs, ptrs, plan, stream


_BOUND: _plans.PlanCache[_Bound] = _plans.PlanCache(64)  # (the one-shot calls' cache kind)
atexit.register(_BOUND.clear)  # release the plans before the extension is torn down


def _ptrs(is_torch: bool, arrays: Sequence[Any]) -> Tuple[int, ...]:
    if is_torch:
        return tuple([0 if a is None else a.data_ptr() for a in arrays])
    return tuple([0 if a is None else a.data.ptr for a in arrays])


def _key(mode: str, index: Sequence[Any], table: Any, persistent: Sequence[Any],
         scalars: Tuple[Any, ...]) -> Optional[Tuple[Hashable, bool]]:
    """The key of a call's plan and whether its arrays are torch's; None when the call cannot
    have one (host arrays, an unusual type: bound afresh every call).

    The 1-D inputs are fresh views at every SGLang call (``seq_lens[:bs]``), so they are keyed
    on what validation reads of them (address, device, stride, dtype, length); the outputs are
    the backend's persistent buffers, so they are keyed on identity (checked with weak
    references) and their addresses are re-read at every call. An output changed in place so
    that it keeps its address but not its shape or strides is not seen: pass a new object.
    """
    if not all(type(s) is int or type(s) is bool for s in scalars):
        return None
    keyed = _arrays.keyed_type(index[0])
    if keyed is None:
        return None
    t, is_torch = keyed
    inputs = _arrays.input_keys(t, is_torch, index, table)
    if inputs is None or not all(a is None or type(a) is t for a in persistent):
        return None
    return (mode, scalars, inputs, tuple([a.shape[0] for a in index]),
            tuple([id(a) for a in persistent])), is_torch


def _bind(mode: str, seq_lens: Any, pool: Any, ext: Any, table: Any, md: Metadata, *,
          topk: Any, kpool: Any, page_size: Any, next_n: Any, static: bool) -> _api.Prepared:
    """Validate the call's buffers whole and bind them (`nsa_metadata.prepare`). The 1-D inputs
    are cut to the shortest; with `static`, extend_lens reads extend_seq_lens[0] for every
    request (a zero-stride view)."""
    index = [seq_lens, pool] + ([] if ext is None or static else [ext])
    arrs = [_validate.index_array(n, a) for n, a in
            zip(("seq_lens", "req_pool_indices", "extend_lens"), index)]
    n = min(a.shape[0] for a in arrs)
    if static:
        if _validate.index_array("extend_lens", ext).shape[0] == 0:
            n = 0  # nothing to repeat: no request can run
        ext = _arrays.repeat_first(ext, n)
    elif ext is not None:
        ext = ext if len(ext) == n else ext[:n]
    seq_lens, pool = (a if len(a) == n else a[:n] for a in (seq_lens, pool))
    return _api.Prepared(mode, seq_lens, pool, table, out=md, extend_lens=ext, next_n=next_n,
                         topk=topk, kpool=kpool, page_size=page_size, live=True)


def _explain(e: ValueError, mode: str, seq_lens: Any, pool: Any, ext: Any, table: Any,
             md: Metadata, bs: int, max_len: int, total: int, static: bool,
             **scalars: Any) -> Exception:
    """A step the bound buffers cannot take: the error of this step validated on its own (as a
    one-shot call validates it), which names the buffer that is too small; `e` (the bound
    capacity's message, naming bs, max_len or total) when that finds nothing."""
    index = [seq_lens, pool] + ([] if ext is None or static else [ext])
    if any(len(a) < bs for a in index) or (static and bs and not len(ext)):
        return e
    if ext is not None:
        ext = _arrays.repeat_first(ext, bs) if static else ext[:bs]
    try:
        _validate.one_shot(mode, seq_lens[:bs], pool[:bs], table, ext, max_len=max_len,
                           total=total if mode == "draft_extend" else None, live=True, out=md,
                           stream=None, check=False, **scalars)
    except (TypeError, ValueError) as named:
        return named
    return e


def _run(mode: str, seq_lens: Any, pool: Any, ext: Any, table: Any,
         persistent: Tuple[Any, ...], bs: Any, max_len: Any, total: Any, *, topk: Any,
         kpool: Any, page_size: Any, next_n: Any, static: bool, page_name: str,
         max_name: str) -> None:
    """One SGLang call: the bound plan of its buffers, launched for this step (bs, max_len,
    total) on the current stream; a new plan when there is none. `persistent`: the outputs in
    SPEC's field order (a Metadata is built only to bind)."""
    try:
        bs, max_len = _step_int("bs", bs), _step_int("max_len", max_len)
        total = _step_int("total", total)
        if bs == 0:  # as SGLang: only the zero heads of the cumulative sums
            max_len = total = 0
        index = (seq_lens, pool) if ext is None else (seq_lens, pool, ext)
        keyed = _key(mode, index, table, persistent, (topk, kpool, page_size, next_n, static))
        if keyed is not None:
            key, is_torch = keyed
            hit = _BOUND.get(key)
            if (hit is not None and all([r is None or r() is a for r, a in zip(hit.refs, persistent)])
                    and hit.ptrs == _ptrs(is_torch, persistent)):
                try:
                    hit.plan.launch(bs, max_len, total, hit.stream())
                except ValueError as e:
                    raise _explain(e, mode, seq_lens, pool, ext, table, Metadata(*persistent),
                                   bs, max_len, total, static, topk=topk, kpool=kpool,
                                   page_size=page_size, next_n=next_n) from None
                return
        md = Metadata(*persistent)
        prep = _bind(mode, seq_lens, pool, ext, table, md, topk=topk, kpool=kpool,
                     page_size=page_size, next_n=next_n, static=static)
        stream = prep._current_stream
        if keyed is not None and stream is not None:  # (host arrays: the reference, every call)
            try:
                refs = tuple([None if a is None else weakref.ref(a) for a in persistent])
            except TypeError:  # an array type without weak references: not cached
                refs = None
            if refs is not None:
                # the Prepared's plan and stream lookup, not the Prepared: it keeps arrays alive
                _BOUND.put(key, _Bound(refs, _ptrs(is_torch, persistent), prep._plan, stream))
        try:
            prep(bs, max_len, total)
        except ValueError as e:
            raise _explain(e, mode, seq_lens, pool, ext, table, md, bs, max_len, total, static,
                           topk=topk, kpool=kpool, page_size=page_size, next_n=next_n) from None
    except (TypeError, ValueError) as e:
        raise _renamed(e, page_name, max_name) from None


def _tables(page_size: Any, page_table_1: Any, real_page_table: Any) -> Tuple[Any, Any]:
    """SGLang's rule: with page size 1 the real table is page_table_1 itself (the
    real_page_table argument is then not written); either table may be None otherwise."""
    if page_size == 1 and page_table_1 is not None:
        return page_table_1, page_table_1
    return page_table_1, real_page_table


# ---------------------------------------------------------------------------- SGLang's functions

def fused_dsa_decode_metadata(seq_lens: Any, req_pool_indices: Any, req_to_token: Any,
                              cache_seqlens: Any, cu_seqlens_k: Any, page_table_1: Any,
                              dsa_cache_seqlens: Any, dsa_cu_seqlens_k: Any,
                              real_page_table: Any, bs: int, max_len: int, dsa_index_topk: int,
                              physical_page_size: Optional[int] = None, index_kpool: int = 1, *,
                              real_page_size: Optional[int] = None) -> None:
    """SPEC decode (live=True) for the first `bs` requests, in place into SGLang's buffers.

    cache_seqlens[:bs] and cu_seqlens_k[:bs + 1] get the KV lengths and their cumulative sum,
    dsa_cache_seqlens / dsa_cu_seqlens_k their top-k-clamped versions, and rows [:bs] of
    page_table_1 (None: not written) and real_page_table the live prefix of the pool rows
    ``req_pool_indices[:bs]`` over ``max_len`` columns. The page size comes as
    `physical_page_size` or `real_page_size`; with 1, page_table_1 is the real table.
    """
    page, page_name = _page_size(physical_page_size, real_page_size)
    pt1, real = _tables(page, page_table_1, real_page_table)
    outs = (cache_seqlens, cu_seqlens_k, dsa_cache_seqlens, dsa_cu_seqlens_k, pt1, real, None, None)
    _run("decode", seq_lens, req_pool_indices, None, req_to_token, outs, bs, max_len, 0,
         topk=dsa_index_topk, kpool=index_kpool, page_size=page, next_n=1, static=False,
         page_name=page_name, max_name="max_len")


def fused_dsa_target_verify_metadata(seq_lens: Any, req_pool_indices: Any, req_to_token: Any,
                                     cache_seqlens: Any, cu_seqlens_k: Any, page_table_1: Any,
                                     seqlens_expanded: Any, dsa_cache_seqlens: Any,
                                     dsa_cu_seqlens_k: Any, real_page_table: Any, bs: int,
                                     max_seqlen_k: int, dsa_index_topk: int,
                                     physical_page_size: Optional[int] = None,
                                     next_n: Optional[int] = None,
                                     paged_mqa_ctx_lens_2d: Any = None, index_kpool: int = 1, *,
                                     real_page_size: Optional[int] = None) -> None:
    """SPEC target_verify (live=True): `next_n` draft tokens for each of the first `bs`
    requests, rows ``bs * next_n``, in place into SGLang's buffers.

    `paged_mqa_ctx_lens_2d` (optional, ``[bs, next_n]``) gets ``cache_seqlens[i]`` in every
    column of row i. The page size comes as `physical_page_size` or `real_page_size`.
    """
    page, page_name = _page_size(physical_page_size, real_page_size)
    if next_n is None:
        raise TypeError("fused_dsa_target_verify_metadata needs next_n")
    pt1, real = _tables(page, page_table_1, real_page_table)
    outs = (cache_seqlens, cu_seqlens_k, dsa_cache_seqlens, dsa_cu_seqlens_k, pt1, real,
            seqlens_expanded, paged_mqa_ctx_lens_2d)
    _run("target_verify", seq_lens, req_pool_indices, None, req_to_token, outs, bs, max_seqlen_k,
         0, topk=dsa_index_topk, kpool=index_kpool, page_size=page, next_n=next_n, static=False,
         page_name=page_name, max_name="max_seqlen_k")


def fused_dsa_draft_extend_metadata(seq_lens: Any, extend_seq_lens: Any, req_pool_indices: Any,
                                    req_to_token: Any, cache_seqlens: Any, cu_seqlens_k: Any,
                                    page_table_1: Any, seqlens_expanded: Any,
                                    dsa_cache_seqlens: Any, dsa_cu_seqlens_k: Any,
                                    real_page_table: Any, bs: int, total_len: int,
                                    max_seqlen_k: int, dsa_index_topk: int,
                                    physical_page_size: Optional[int] = None,
                                    max_extend_len: Optional[int] = None,
                                    max_total_len: Optional[int] = None,
                                    static_extend_len: bool = False, index_kpool: int = 1, *,
                                    real_page_size: Optional[int] = None) -> None:
    """SPEC draft_extend (live=True): ``extend_seq_lens[i]`` rows for each of the first `bs`
    requests, in place into SGLang's buffers; rows at or past `total_len` are never written
    (SPEC's ``total``, a capacity).

    With `static_extend_len`, every request extends by ``extend_seq_lens[0]`` (SGLang passes
    ``total_len = bs * extend_seq_lens[0]``); the other entries are not read. `max_extend_len`
    and `max_total_len` are checked as SGLang checks them (``total_len <= max_total_len``,
    ``total_len <= bs * max_extend_len``) and otherwise unused.
    """
    page, page_name = _page_size(physical_page_size, real_page_size)
    if max_extend_len is None or max_total_len is None:
        raise TypeError("fused_dsa_draft_extend_metadata needs max_extend_len and max_total_len")
    max_extend_len = _validate.integer("max_extend_len", max_extend_len, 0, 2**63 - 1)
    max_total_len = _validate.integer("max_total_len", max_total_len, 0, 2**63 - 1)
    static = _validate.boolean("static_extend_len", static_extend_len)
    if type(bs) is int and type(total_len) is int and bs > 0 and total_len > 0:
        if total_len > max_total_len:
            raise ValueError(f"total_len = {total_len} exceeds max_total_len = {max_total_len}")
        if total_len > bs * max_extend_len:
            raise ValueError(f"total_len = {total_len} exceeds bs * max_extend_len = "
                             f"{bs} * {max_extend_len}")
    pt1, real = _tables(page, page_table_1, real_page_table)
    outs = (cache_seqlens, cu_seqlens_k, dsa_cache_seqlens, dsa_cu_seqlens_k, pt1, real,
            seqlens_expanded, None)
    _run("draft_extend", seq_lens, req_pool_indices, extend_seq_lens, req_to_token, outs, bs,
         max_seqlen_k, total_len, topk=dsa_index_topk, kpool=index_kpool, page_size=page,
         next_n=1, static=static, page_name=page_name, max_name="max_seqlen_k")


def get_mla_metadata(cache_seqlens: Any, num_q_tokens_per_head_k: int, num_heads_k: int,
                     num_heads_q: Optional[int] = None, is_fp8_kvcache: bool = False,
                     topk: Optional[int] = None, *,
                     num_sm_parts: Optional[int] = None) -> Tuple[Any, Any]:
    """FlashMLA's sparse ``get_mla_metadata`` as SGLang calls it (``_compute_flashmla_metadata``):
    ``(tile_scheduler_metadata [num_sm_parts, 8], num_splits [len(cache_seqlens) + 1])``, int32,
    computed by our kernel (one launch on the current stream; docs/SPEC_schedule.md).

    Sparse only (``topk`` given): FlashMLA then schedules ``topk`` tokens for every request and
    reads nothing of ``cache_seqlens`` but its length. ``num_sm_parts`` defaults to FlashMLA's
    choice on the arrays' GPU: with ``s_q = num_q_tokens_per_head_k * num_heads_k / num_heads_q``
    (SGLang passes ``seq_len_q * num_heads_q`` and ``num_heads_k = 1``), ``max(num_sms / s_q /
    max(1, num_heads_q / 64), 1)`` on SM90 (66 on an H100 for 128 heads) and
    ``max(num_sms / s_q, 1)`` on SM100. Host arrays need ``num_sm_parts=``.

    Like FlashMLA's call, it allocates its two outputs on every call (and four small scratch
    arrays for the 1-D outputs the launch also writes). Cheaper: pass
    ``schedule=nm.Schedule(num_sm_parts)`` to the metadata call that already runs each step
    (docs/integration.md), which removes this launch and these allocations altogether.
    """
    del is_fp8_kvcache  # (the sparse schedule does not depend on it)
    if topk is None:
        raise NotImplementedError("only FlashMLA's sparse schedule (topk=...) is computed here")
    seq = _validate.index_array("cache_seqlens", cache_seqlens)
    bs, device = seq.shape[0], seq.device
    if num_sm_parts is None:
        if device is None:
            raise TypeError("num_sm_parts= is required with host arrays")
        h_q = num_heads_k if num_heads_q is None else num_heads_q
        num_sm_parts = _flashmla_sm_parts(device, num_q_tokens_per_head_k * num_heads_k // h_q, h_q)
    # A decode call that writes no page table (max_len 0) on a one-row table: the schedule
    # and four small 1-D outputs (scratch), nothing else.
    lib = seq.lib
    stream = None if device is None else _arrays.current_stream(lib, device)

    def empty(*shape: int) -> Any:
        return _arrays.empty(lib, device, shape, stream)

    md = Metadata(cache_seqlens=empty(bs), cu_seqlens_k=empty(bs + 1),
                  nsa_cache_seqlens=empty(bs), nsa_cu_seqlens_k=empty(bs + 1),
                  tile_scheduler_metadata=empty(num_sm_parts, 8), num_splits=empty(bs + 1))
    _api.decode(cache_seqlens, cache_seqlens, empty(1, 0), max_len=0, topk=topk,
                out=md, schedule=Schedule(num_sm_parts, "topk"))
    return md.tile_scheduler_metadata, md.num_splits


@functools.lru_cache(maxsize=None)  # (per device and head layout: no driver query per call)
def _flashmla_sm_parts(device: int, s_q: int, h_q: int) -> int:
    import torch  # type: ignore[import-not-found,unused-ignore]  # (SGLang's arrays are torch's)
    props = torch.cuda.get_device_properties(device)
    n = int(props.multi_processor_count) // max(s_q, 1)
    if int(props.major) == 9:
        n //= max(1, h_q // 64)
    return max(n, 1)
