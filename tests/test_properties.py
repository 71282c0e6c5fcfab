"""Property tests (hypothesis) of the host path against SPEC.md, through oracles written here in
plain Python integers: no NumPy arithmetic, nothing shared with nsa_metadata.reference.

Inputs cover the whole valid domain: batch sizes 0..40, lengths that are negative, near and
beyond the int32 limits (given as int64), pool indices out of range, topk up to 2**31 - 1,
kpool up to 70, page sizes up to 100, tables with negative entries and a row stride above
their width, and draft_extend's extend_lens 0..6.
"""

import re

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import nsa_metadata as nm  # noqa: E402
from helpers import POISON, call, poisoned_out, rows_of  # noqa: E402

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
MODES = ("decode", "target_verify", "draft_extend")
SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ----------------------------------------------------------------------------- the oracle

def wrap(x):
    """Python int -> the int32 it truncates to (two's complement)."""
    return (x + 2**31) % 2**32 - 2**31


def sparse(x, topk, kpool):
    """SPEC: min(x, topk) when kpool == 1, else min(floor(x / kpool) * kpool, topk) + (x mod kpool)."""
    if kpool == 1:
        return min(x, topk)
    return min((x // kpool) * kpool, topk) + x % kpool


def cumsum0_wrapped(values):
    out, s = [0], 0
    for v in values:
        s += v
        out.append(wrap(s))
    return out


def layout(c):
    """Per SPEC's modes: cache_seqlens, and per row (request, L, seqlens_expanded or None)."""
    lens = [wrap(int(v)) for v in c["seq_lens"]]
    n = c["next_n"]
    if c["mode"] == "decode":
        return lens, [(i, lens[i], None) for i in range(len(lens))]
    if c["mode"] == "target_verify":
        cache = [wrap(v + n) for v in lens]
        return cache, [(i, cache[i], wrap(lens[i] + j + 1)) for i in range(len(lens)) for j in range(n)]
    rows = []
    for i, e in enumerate(int(v) for v in c["extend_lens"]):
        for j in range(e):
            rows.append((i, lens[i], wrap(max(lens[i] - e + j + 1, 0))))
    return lens, rows


def oracle(c):
    """Every output of SPEC as lists of Python ints."""
    cache, rows = layout(c)
    topk, kpool, ps, max_len = c["topk"], c["kpool"], c["page_size"], c["max_len"]
    nsa = [wrap(sparse(cache[i] if e is None else e, topk, kpool)) for i, _, e in rows]
    table = c["req_to_token"].tolist()
    pool = [int(v) for v in c["req_pool_indices"]]
    pt1 = []
    for i, _, _ in rows:
        q = pool[i]
        pt1.append(list(table[q][:max_len]) if 0 <= q < len(table) else [-1] * max_len)
    width = (max_len + ps - 1) // ps
    real = [[row[col * ps] // ps for col in range(width)] for row in pt1]
    return {"cache_seqlens": cache, "cu_seqlens_k": cumsum0_wrapped(cache),
            "nsa_cache_seqlens": nsa, "nsa_cu_seqlens_k": cumsum0_wrapped(nsa),
            "seqlens_expanded": None if c["mode"] == "decode" else [e for _, _, e in rows],
            "page_table_1": pt1, "real_page_table": real}


def oracle_ctx_2d(c):
    """target_verify's paged_mqa_ctx_lens_2d: cache_seqlens[i] in each of next_n columns."""
    cache, _ = layout(c)
    return [[v] * c["next_n"] for v in cache]


def live_extent(c):
    """Per row: (page_table_1 columns, real_page_table columns) that live=True writes."""
    _, rows = layout(c)
    ps, max_len = c["page_size"], c["max_len"]
    out = []
    for _, L, _ in rows:
        n = min(max(L, 0), max_len)
        out.append((n, (n + ps - 1) // ps))
    return out


def first_bad(c):
    """check=True: the message prefix naming the first bad element, or None. The first is the
    smallest request index; within one request: pool index, negative length, overflow."""
    raw = [int(v) for v in c["seq_lens"]]
    pool = [int(v) for v in c["req_pool_indices"]]
    P = c["req_to_token"].shape[0]
    cache, rows = layout(c)
    topk, kpool = c["topk"], c["kpool"]
    over = [not I32_MIN <= v <= I32_MAX for v in raw]
    if c["mode"] == "target_verify":
        for i, v in enumerate(raw):
            over[i] |= wrap(v) + c["next_n"] > I32_MAX
    s = 0
    for i, v in enumerate(cache):
        s += v
        over[i] |= not I32_MIN <= s <= I32_MAX
    s = 0
    for i, _, e in rows:
        s += wrap(sparse(cache[i] if e is None else e, topk, kpool))
        over[i] |= not I32_MIN <= s <= I32_MAX
    for i, v in enumerate(raw):
        if not 0 <= pool[i] < P:
            return f"req_pool_indices[{i}] = {pool[i]} is outside [0, {P})"
        if v < 0:
            return f"seq_lens[{i}] = {v} is negative"
        if over[i]:
            return f"seq_lens[{i}] = {v} overflows int32"
    return None


# ----------------------------------------------------------------------------- strategies

def bounded(lo, hi, dtype):
    """integers(lo, hi) clipped to what `dtype` holds (None when nothing of it fits)."""
    info = np.iinfo(dtype)
    lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
    return st.integers(lo, hi) if lo <= hi else None


def lengths(dtype, clean):
    """Typical lengths, lengths near the int32 limits (within a few draft tokens of them), around
    2**32 (int64 values that truncate to small ones), mid-range ones whose sums overflow, and
    anything the dtype holds. clean: non-negative values only."""
    parts = [bounded(0, 90, dtype), bounded(I32_MAX - 8, I32_MAX + 8, dtype),
             bounded(2**32 - 8, 2**32 + 90, dtype), bounded(2**27, 2**30, dtype),
             bounded(0 if clean else I64_MIN, I64_MAX, dtype)]
    if not clean:
        parts += [bounded(-6, -1, dtype), bounded(I32_MIN - 8, I32_MIN + 8, dtype)]
    return st.one_of([p for p in parts if p is not None])


def pool_indices(dtype, P, clean):
    """Valid rows, and (unless clean) rows just outside [0, P) and extreme values."""
    if clean:
        return st.integers(0, P - 1)
    parts = [bounded(0, P - 1, dtype), bounded(-3, P + 3, dtype),
             st.sampled_from([v for v in (I32_MIN, I32_MAX, 2**31, 2**32, 2**62, I64_MIN, I64_MAX)
                              if bounded(v, v, dtype) is not None])]
    return st.one_of([p for p in parts if p is not None])


@st.composite
def cases(draw, modes=MODES):
    """One call's arguments; about half the cases have only valid pool indices and non-negative
    lengths, so that check=True and the overflow paths are reached past the first request."""
    mode = draw(st.sampled_from(modes))
    bs = draw(st.integers(0, 40))
    P = draw(st.integers(0, 6))
    W = draw(st.integers(0, 64))
    pad = draw(st.integers(0, 3))
    clean = P > 0 and draw(st.booleans())
    base = draw(hnp.arrays(np.int32, (P, W + pad), elements=st.integers(I32_MIN, I32_MAX)))
    if P == 0:  # NumPy 2 gives empty arrays strides (0, 0), which the API refuses: give real ones
        base = np.lib.stride_tricks.as_strided(np.zeros(1, np.int32), (0, W + pad), ((W + pad) * 4, 4))
    dtypes = [draw(st.sampled_from([np.int32, np.int64])) for _ in range(3)]
    seq_lens = np.array(draw(st.lists(lengths(dtypes[0], clean), min_size=bs, max_size=bs)), dtypes[0])
    pool = np.array(draw(st.lists(pool_indices(dtypes[1], P, clean), min_size=bs, max_size=bs)),
                    dtypes[1])
    ext = np.array(draw(st.lists(st.integers(0, 6), min_size=bs, max_size=bs)), dtypes[2])
    return dict(mode=mode, seq_lens=seq_lens, req_pool_indices=pool, req_to_token=base[:, :W],
                extend_lens=ext, next_n=draw(st.integers(1, 6)), max_len=draw(st.integers(0, W)),
                topk=draw(st.one_of(st.integers(1, 100), st.integers(1, I32_MAX), st.just(I32_MAX))),
                kpool=draw(st.one_of(st.just(1), st.integers(1, 70))),
                page_size=draw(st.one_of(st.just(1), st.integers(1, 100))))


def run(c, **kw):
    return call(nm, c["mode"], c, max_len=c["max_len"], topk=c["topk"], kpool=c["kpool"],
                page_size=c["page_size"], **kw)


CTX_2D = "paged_mqa_ctx_lens_2d"  # never allocated: checked in a buffer of the caller's
SCHEDULE = ("tile_scheduler_metadata", "num_splits")  # only with schedule= (test_schedule_opt_in)


def as_lists(md):
    return {f: None if getattr(md, f) is None else getattr(md, f).tolist()
            for f in nm.Metadata.__slots__ if f != CTX_2D and f not in SCHEDULE}


# ----------------------------------------------------------------------------- properties

@SETTINGS
@given(cases())
def test_every_output_equals_the_python_oracle(c):
    md = run(c)
    want, got = oracle(c), as_lists(md)
    rows = len(want["nsa_cache_seqlens"])
    shapes = {"page_table_1": (rows, c["max_len"]),
              "real_page_table": (rows, -(-c["max_len"] // c["page_size"]))}
    assert md.paged_mqa_ctx_lens_2d is None, "never allocated"
    for f in got:
        if want[f] is None:
            assert got[f] is None, f
            continue
        assert getattr(md, f).dtype == np.int32, f
        assert getattr(md, f).shape == shapes.get(f, (len(want[f]),)), f
        assert got[f] == want[f], f
    if c["page_size"] == 1:
        assert md.real_page_table is md.page_table_1
    if c["mode"] == "target_verify":  # into a transposed, strided view of a poisoned buffer
        bs, n = len(c["seq_lens"]), c["next_n"]
        base = np.full((n + 1, 2 * bs), POISON, np.int32)
        md.paged_mqa_ctx_lens_2d = base[1:, ::2].T
        run(c, out=md)
        assert md.paged_mqa_ctx_lens_2d.tolist() == oracle_ctx_2d(c)
        assert (base[0] == POISON).all() and (base[1:, 1::2] == POISON).all()


@SETTINGS
@given(cases())
def test_identities_between_outputs(c):
    """Relations SPEC states among the outputs themselves."""
    md = run(c)
    cache, cu = md.cache_seqlens.tolist(), md.cu_seqlens_k.tolist()
    nsa, nsa_cu = md.nsa_cache_seqlens.tolist(), md.nsa_cu_seqlens_k.tolist()
    assert cu == cumsum0_wrapped(cache)
    assert nsa_cu == cumsum0_wrapped(nsa)
    src = cache if md.seqlens_expanded is None else md.seqlens_expanded.tolist()
    assert nsa == [wrap(sparse(x, c["topk"], c["kpool"])) for x in src]
    ps = c["page_size"]
    pt1 = md.page_table_1.tolist()
    assert md.real_page_table.tolist() == [[v // ps for v in row[::ps]] for row in pt1]
    lens = [wrap(int(v)) for v in c["seq_lens"]]
    assert cache == ([wrap(v + c["next_n"]) for v in lens] if c["mode"] == "target_verify" else lens)
    if c["mode"] == "target_verify":
        n = c["next_n"]
        for i in range(len(lens)):
            rows = pt1[i * n:(i + 1) * n]
            assert all(r == rows[0] for r in rows), f"page rows of request {i} differ"
            assert md.seqlens_expanded.tolist()[i * n:(i + 1) * n] == [
                wrap(cache[i] - n + j + 1) for j in range(n)]
    pool, P = [int(v) for v in c["req_pool_indices"]], c["req_to_token"].shape[0]
    for (i, _, _), row in zip(layout(c)[1], pt1):
        if not 0 <= pool[i] < P:
            assert row == [-1] * c["max_len"]


@SETTINGS
@given(cases(modes=("draft_extend",)))
def test_draft_extend_rows(c):
    """SPEC draft_extend, with plain loops: row p[i] + j of request i."""
    md = run(c)
    lens = [wrap(int(v)) for v in c["seq_lens"]]
    ext = [int(v) for v in c["extend_lens"]]
    table, P = c["req_to_token"].tolist(), c["req_to_token"].shape[0]
    pool = [int(v) for v in c["req_pool_indices"]]
    expanded, pt1 = md.seqlens_expanded.tolist(), md.page_table_1.tolist()
    assert len(expanded) == sum(ext) == md.page_table_1.shape[0]
    p = 0
    for i in range(len(lens)):
        for j in range(ext[i]):
            assert expanded[p + j] == max(lens[i] - ext[i] + j + 1, 0), (i, j)
            want = table[pool[i]][:c["max_len"]] if 0 <= pool[i] < P else [-1] * c["max_len"]
            assert pt1[p + j] == want, (i, j)
        p += ext[i]
    assert md.cache_seqlens.tolist() == lens


def covered(base, view):
    """The elements of `base` that `view` (a view into it) covers, as a mask."""
    off = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    grid = np.indices(view.shape)
    flat = off + sum(grid[k] * (view.strides[k] // base.itemsize) for k in range(view.ndim))
    mask = np.zeros(base.size, bool)
    mask[flat.ravel()] = True
    return mask.reshape(base.shape)


@SETTINGS
@given(cases(), st.booleans(), st.booleans(), st.integers(1, 3),
       st.sampled_from([("page_table_1", "real_page_table"), ("page_table_1",), ("real_page_table",),
                        ()]))
def test_write_extent(c, live, strided, ndest, tables):
    """Into larger poisoned buffers: every destination gets exactly the stated region (live=True:
    each table row only its live extent); every other element keeps its poison."""
    want, extent = oracle(c), live_extent(c)
    rows, max_len = rows_of(c["mode"], c), c["max_len"]
    width = -(-max_len // c["page_size"])
    dests = [poisoned_out(c["mode"], c, max_len, c["page_size"], tables, strided) for _ in range(ndest)]
    got = run(c, live=live, out=[md for md, _ in dests])
    assert len(got) == ndest and all(g is md for g, (md, _) in zip(got, dests))
    for md, bases in dests:
        for f, base in bases.items():
            view = getattr(md, f)
            expect = np.full(view.shape, POISON, np.int32)
            if f in ("page_table_1", "real_page_table"):
                k = 0 if f == "page_table_1" else 1
                for r in range(rows):
                    n = extent[r][k] if live else (max_len, width)[k]
                    expect[r, :n] = want[f][r][:n]
            else:
                expect[:] = want[f]
            assert view.tolist() == expect.tolist(), f
            assert (base[~covered(base, view)] == POISON).all(), f"{f} written outside its view"


@SETTINGS
@given(cases())
def test_check_true_names_the_first_bad_element(c):
    want = first_bad(c)
    if want is None:
        md = run(c, check=True)
        assert as_lists(md) == as_lists(run(c))
    else:
        with pytest.raises(ValueError, match="^" + re.escape(want)):
            run(c, check=True)


@SETTINGS
@given(st.integers(0, 8), st.integers(1, 6), st.sampled_from([np.int32, np.int64]),
       st.integers(1, I32_MAX), st.lists(st.integers(0, 90), max_size=3))
def test_target_verify_at_the_int32_limit(below, next_n, dtype, topk, before):
    """A length within next_n of INT32_MAX, after a few ordinary requests: lens + next_n overflows
    (check=True names it, or an earlier cumulative sum), and the outputs wrap."""
    c = dict(mode="target_verify", seq_lens=np.array(before + [I32_MAX - below], dtype),
             req_pool_indices=np.zeros(len(before) + 1, dtype),
             req_to_token=np.arange(8, dtype=np.int32).reshape(1, 8),
             extend_lens=None, next_n=next_n, max_len=8, topk=topk, kpool=1, page_size=1)
    want = first_bad(c)
    if below < next_n:
        assert want == f"seq_lens[{len(before)}] = {I32_MAX - below} overflows int32"
    if want is None:
        run(c, check=True)
    else:
        with pytest.raises(ValueError, match="^" + re.escape(want)):
            run(c, check=True)
    assert as_lists(run(c)) == oracle(c)
