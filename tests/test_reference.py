"""The NumPy reference against SPEC.md: hand-computed cases, an independent pure-Python oracle
on seeded random inputs, SPEC's identities, `out=` semantics and check=True.

Everything here runs on the host: NumPy inputs go through the public API
(`nsa_metadata.decode/target_verify/draft_extend`), which runs the reference.
"""

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import Metadata, reference
from nsa_metadata._core import BadKind

POISON = -777_777  # never a value any test table or length produces
I32 = np.int32
FIELDS_1D = ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
             "seqlens_expanded")


# ----------------------------------------------------------------------------- helpers

def a32(*values):
    return np.array(values, dtype=I32)


def t32(rows):
    return np.array(rows, dtype=I32).reshape(len(rows), -1)


def call(mode, seq, pool, table, ext=None, **kw):
    if mode == "decode":
        return nm.decode(seq, pool, table, **kw)
    if mode == "target_verify":
        return nm.target_verify(seq, pool, table, **kw)
    return nm.draft_extend(seq, ext, pool, table, **kw)


def blank(bs, rows, max_len, page_size=1, *, expanded=True, real=True, fill=POISON):
    """A Metadata of exactly-sized output buffers filled with `fill`."""
    width = -(-max_len // page_size)
    return Metadata(
        cache_seqlens=np.full(bs, fill, I32), cu_seqlens_k=np.full(bs + 1, fill, I32),
        nsa_cache_seqlens=np.full(rows, fill, I32), nsa_cu_seqlens_k=np.full(rows + 1, fill, I32),
        page_table_1=np.full((rows, max_len), fill, I32),
        real_page_table=np.full((rows, width), fill, I32) if real else None,
        seqlens_expanded=np.full(rows, fill, I32) if expanded else None)


def assert_md(md, **expected):
    """Every named field equals the expected array exactly (dtype int32, same shape)."""
    for name, want in expected.items():
        got = getattr(md, name)
        if want is None:
            assert got is None, name
            continue
        want = np.asarray(want)
        assert got.dtype == I32, name
        assert got.shape == want.shape, (name, got.shape, want.shape)
        np.testing.assert_array_equal(got, want, err_msg=name)


def wrap32(v):
    return (int(v) + 2**31) % 2**32 - 2**31


def cumsum0_py(values):
    out, s = [0], 0
    for v in values:
        s += v
        out.append(s)
    return out


def sparse_py(x, topk, kpool):
    if kpool == 1:
        return min(x, topk)
    return min((x // kpool) * kpool, topk) + x % kpool


def oracle(mode, seq, pool, table, ext=None, *, max_len, topk, kpool=1, page_size=1, next_n=1,
           total=None, live=False, fill=POISON):
    """SPEC.md written again in plain Python ints, independently of the package.

    Page-table elements that SPEC leaves unwritten hold `fill`.
    """
    lens = [wrap32(v) for v in seq.tolist()]
    q = pool.tolist()
    bs = len(lens)
    if mode == "decode":
        cache = lens
        rows = [(i, lens[i], lens[i]) for i in range(bs)]  # (request, L, nsa source)
    elif mode == "target_verify":
        cache = [wrap32(n + next_n) for n in lens]
        rows = [(i, cache[i], wrap32(lens[i] + j + 1)) for i in range(bs) for j in range(next_n)]
    else:
        e = [max(wrap32(v), 0) for v in ext.tolist()]
        cache = lens
        rows = [(i, lens[i], max(lens[i] - e[i] + j + 1, 0)) for i in range(bs)
                for j in range(e[i])]
    nsa = [wrap32(sparse_py(x, topk, kpool)) for _, _, x in rows]
    width = -(-max_len // page_size)
    pt1 = np.full((len(rows), max_len), fill, np.int64)
    real = np.full((len(rows), width), fill, np.int64)
    P, W = table.shape
    for r, (i, L, _) in enumerate(rows):
        src = table[q[i]].tolist() if 0 <= q[i] < P else [-1] * W
        n = min(max(L, 0), max_len) if live else max_len
        for j in range(n):
            pt1[r, j] = src[j]
        for c in range(-(-n // page_size)):
            real[r, c] = src[c * page_size] // page_size
    return dict(
        cache_seqlens=[wrap32(c) for c in cache],
        cu_seqlens_k=[wrap32(s) for s in cumsum0_py(cache)],
        nsa_cache_seqlens=nsa,
        nsa_cu_seqlens_k=[wrap32(s) for s in cumsum0_py(nsa)],
        seqlens_expanded=None if mode == "decode" else [wrap32(x) for _, _, x in rows],
        page_table_1=pt1, real_page_table=real)


def random_case(seed, mode):
    """Seeded random valid arguments (out-of-range pool indices included)."""
    rng = np.random.default_rng(seed)
    bs = int(rng.integers(0, 9))
    P = int(rng.integers(1, 6))
    W = int(rng.integers(0, 70))
    table = rng.integers(-300, 300, (P, W)).astype(I32)
    if rng.random() < 0.3:  # a padded pool: row stride > W
        big = rng.integers(-300, 300, (P, W + 5)).astype(I32)
        big[:, :W] = table
        table = big[:, :W]
    seq = rng.integers(-3, W + 20, bs)
    if bs and rng.random() < 0.2:  # lengths at the top of int32: sums wrap
        seq[rng.integers(0, bs)] = 2**31 - int(rng.integers(1, 4))
    seq = seq.astype(rng.choice([np.int32, np.int64]))
    if seq.dtype == np.int64 and rng.random() < 0.4:  # int64 lengths truncated to int32
        seq += rng.integers(-2, 3, bs) * 2**32
    pool = rng.integers(0, P, bs)
    if bs and rng.random() < 0.3:
        pool[rng.integers(0, bs)] = rng.choice([-1, P, P + 7])
    pool = pool.astype(rng.choice([np.int32, np.int64]))
    kw = dict(max_len=int(rng.integers(0, W + 1)), topk=int(rng.integers(1, 40)),
              kpool=int(rng.choice([1, 1, 2, 3, 4, 64])),
              page_size=int(rng.choice([1, 2, 3, 4, 64])), live=bool(rng.random() < 0.4))
    ext = None
    if mode == "target_verify":
        kw["next_n"] = int(rng.integers(1, 5))
    if mode == "draft_extend":
        ext = rng.integers(-1, 5, bs).astype(rng.choice([np.int32, np.int64]))
        kw["total"] = int(np.maximum(ext, 0).sum())
    return seq, pool, table, ext, kw


def rows_of(mode, seq, ext, kw):
    if mode == "decode":
        return len(seq)
    if mode == "target_verify":
        return len(seq) * kw["next_n"]
    return kw["total"]


MODES = ("decode", "target_verify", "draft_extend")
SEEDS = range(40)


# ----------------------------------------------------------------------------- hand-computed

# P=3, W=5
TABLE_A = t32([[10, 11, 12, 13, 14],
               [20, 21, 22, 23, 24],
               [30, 31, 32, 33, 34]])

# P=3, W=7: columns 0 and 4 feed the real table at page_size 4
TABLE_B = t32([[0, 1, 2, 3, 64, 65, 66],
               [-1, -2, -3, -4, -65, -66, -67],
               [7, 8, 9, 10, 11, 12, 13]])


def test_decode_plain():
    md = nm.decode(a32(3, 5, 1), a32(2, 0, 1), TABLE_A, max_len=4, topk=2)
    assert_md(md, cache_seqlens=[3, 5, 1], cu_seqlens_k=[0, 3, 8, 9],
              nsa_cache_seqlens=[2, 2, 1], nsa_cu_seqlens_k=[0, 2, 4, 5],
              page_table_1=[[30, 31, 32, 33], [10, 11, 12, 13], [20, 21, 22, 23]],
              seqlens_expanded=None)
    assert md.real_page_table is md.page_table_1  # page_size 1: the real table is page_table_1


def test_decode_topk_above_every_length():
    md = nm.decode(a32(3, 5, 1), a32(2, 0, 1), TABLE_A, max_len=2, topk=2048)
    assert_md(md, nsa_cache_seqlens=[3, 5, 1], nsa_cu_seqlens_k=[0, 3, 8, 9],
              page_table_1=[[30, 31], [10, 11], [20, 21]])


def test_decode_kpool_page_size_negative_table():
    # sparse(x) = min(x // 4 * 4, 8) + x % 4: 3 -> 3, 13 -> 9, 11 -> 11, 6 -> 6
    md = nm.decode(a32(3, 13, 11, 6), a32(1, 0, 1, 2), TABLE_B, max_len=6, topk=8, kpool=4,
                   page_size=4)
    assert_md(md, cache_seqlens=[3, 13, 11, 6], cu_seqlens_k=[0, 3, 16, 27, 33],
              nsa_cache_seqlens=[3, 9, 11, 6], nsa_cu_seqlens_k=[0, 3, 12, 23, 29],
              page_table_1=[[-1, -2, -3, -4, -65, -66],
                            [0, 1, 2, 3, 64, 65],
                            [-1, -2, -3, -4, -65, -66],
                            [7, 8, 9, 10, 11, 12]],
              # floor division: -1 // 4 == -1, -65 // 4 == -17, 7 // 4 == 1, 11 // 4 == 2
              real_page_table=[[-1, -17], [0, 16], [-1, -17], [1, 2]],
              seqlens_expanded=None)


def test_decode_page_size_64_floor_of_negatives():
    row = np.full((1, 130), 7, I32)
    row[0, 0], row[0, 64], row[0, 128] = -1, -65, 320
    for max_len, want in ((130, [[-1, -2, 5]]), (129, [[-1, -2, 5]]), (128, [[-1, -2]]),
                          (65, [[-1, -2]]), (64, [[-1]]), (1, [[-1]])):
        md = nm.decode(a32(130), a32(0), row, max_len=max_len, topk=2048, page_size=64)
        assert_md(md, real_page_table=want, page_table_1=row[:, :max_len])


def test_decode_live_keeps_poison_outside_live_extent():
    Z = POISON
    md = blank(4, 4, 6, 4, expanded=False)
    # L = [3, 13, 5, -2] -> live columns [3, 6, 5, 0], live pages [1, 2, 2, 0]
    nm.decode(a32(3, 13, 5, -2), a32(1, 0, 2, 0), TABLE_B, max_len=6, topk=8, page_size=4,
              live=True, out=md)
    assert_md(md, cache_seqlens=[3, 13, 5, -2], cu_seqlens_k=[0, 3, 16, 21, 19],
              nsa_cache_seqlens=[3, 8, 5, -2], nsa_cu_seqlens_k=[0, 3, 11, 16, 14],
              page_table_1=[[-1, -2, -3, Z, Z, Z],
                            [0, 1, 2, 3, 64, 65],
                            [7, 8, 9, 10, 11, Z],
                            [Z, Z, Z, Z, Z, Z]],
              real_page_table=[[-1, Z], [0, 16], [1, 2], [Z, Z]],
              seqlens_expanded=None)


def test_decode_live_page_size_64_partial_page():
    row = np.arange(130, dtype=I32).reshape(1, 130) - 1  # row[0] = -1, row[64] = 63
    md = blank(1, 1, 130, 64, expanded=False)
    nm.decode(a32(65), a32(0), row, max_len=130, topk=2048, page_size=64, live=True, out=md)
    assert_md(md, real_page_table=[[-1, 0, POISON]])
    np.testing.assert_array_equal(md.page_table_1[0, :65], row[0, :65])
    assert (md.page_table_1[0, 65:] == POISON).all()


@pytest.mark.parametrize("bad", [3, -1, 2**31 - 1, -(2**31)])
def test_out_of_range_pool_index_gives_minus_one_row(bad):
    md = nm.decode(a32(2, 4), a32(0, bad), TABLE_B, max_len=5, topk=3, page_size=2)
    assert_md(md, cache_seqlens=[2, 4], nsa_cache_seqlens=[2, 3],
              page_table_1=[[0, 1, 2, 3, 64], [-1, -1, -1, -1, -1]],
              real_page_table=[[0, 1, 32], [-1, -1, -1]])


def test_out_of_range_pool_index_live():
    Z = POISON
    md = blank(2, 2, 5, 2, expanded=False)
    nm.decode(a32(2, 3), a32(5, 2), TABLE_B, max_len=5, topk=3, page_size=2, live=True, out=md)
    assert_md(md, page_table_1=[[-1, -1, Z, Z, Z], [7, 8, 9, Z, Z]],
              real_page_table=[[-1, Z, Z], [3, 4, Z]])


def test_target_verify_plain():
    table = t32([[5, 6, 7, 8], [9, 10, 11, 12]])
    md = nm.target_verify(a32(2, 6), a32(1, 0), table, next_n=3, max_len=3, topk=4)
    assert_md(md, cache_seqlens=[5, 9], cu_seqlens_k=[0, 5, 14],
              seqlens_expanded=[3, 4, 5, 7, 8, 9],
              nsa_cache_seqlens=[3, 4, 4, 4, 4, 4], nsa_cu_seqlens_k=[0, 3, 7, 11, 15, 19, 23],
              page_table_1=[[9, 10, 11]] * 3 + [[5, 6, 7]] * 3)
    assert md.real_page_table is md.page_table_1


def test_target_verify_kpool_page_size_live():
    Z = POISON
    table = t32([[100, 101, 102, 103, 104, 105], [-1, -2, -3, -4, -5, -6]])
    md = blank(2, 4, 5, 2)
    # expanded [1, 2, 5, 6]; sparse with kpool 2, topk 5: [1, 2, 5, 5]
    # L per row [2, 2, 6, 6] -> live columns [2, 2, 5, 5], live pages [1, 1, 3, 3]
    nm.target_verify(a32(0, 4), a32(0, 1), table, next_n=2, max_len=5, topk=5, kpool=2,
                     page_size=2, live=True, out=md)
    assert_md(md, cache_seqlens=[2, 6], cu_seqlens_k=[0, 2, 8], seqlens_expanded=[1, 2, 5, 6],
              nsa_cache_seqlens=[1, 2, 5, 5], nsa_cu_seqlens_k=[0, 1, 3, 8, 13],
              page_table_1=[[100, 101, Z, Z, Z], [100, 101, Z, Z, Z],
                            [-1, -2, -3, -4, -5], [-1, -2, -3, -4, -5]],
              real_page_table=[[50, Z, Z], [50, Z, Z], [-1, -2, -3], [-1, -2, -3]])


def test_draft_extend_plain_with_a_zero_extend_length():
    table = t32([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    md = nm.draft_extend(a32(5, 3, 7), a32(2, 0, 3), a32(2, 0, 1), table, total=5, max_len=3,
                         topk=4)
    assert_md(md, cache_seqlens=[5, 3, 7], cu_seqlens_k=[0, 5, 8, 15],
              seqlens_expanded=[4, 5, 5, 6, 7],
              nsa_cache_seqlens=[4, 4, 4, 4, 4], nsa_cu_seqlens_k=[0, 4, 8, 12, 16, 20],
              page_table_1=[[9, 10, 11]] * 2 + [[5, 6, 7]] * 3)


def test_draft_extend_longer_than_seq_len_live():
    Z = POISON
    table = t32([[1, 2, 3, 4], [5, 6, 7, 8]])
    md = blank(2, 4, 3, 2)
    # expanded: max(1 - 3 + j + 1, 0) = [0, 0, 1]; 4 - 1 + 0 + 1 = 4
    # L per row [1, 1, 1, 4] -> live columns [1, 1, 1, 3], live pages [1, 1, 1, 2]
    nm.draft_extend(a32(1, 4), a32(3, 1), a32(0, 1), table, total=4, max_len=3, topk=2,
                    page_size=2, live=True, out=md)
    assert_md(md, cache_seqlens=[1, 4], cu_seqlens_k=[0, 1, 5], seqlens_expanded=[0, 0, 1, 4],
              nsa_cache_seqlens=[0, 0, 1, 2], nsa_cu_seqlens_k=[0, 0, 0, 1, 3],
              page_table_1=[[1, Z, Z]] * 3 + [[5, 6, 7]],
              real_page_table=[[0, Z]] * 3 + [[2, 3]])


def test_draft_extend_all_extend_lengths_zero():
    md = blank(2, 0, 3, 2)
    md.nsa_cu_seqlens_k = np.full(4, POISON, I32)  # larger than the 1 element this call needs
    nm.draft_extend(a32(4, 2), a32(0, 0), a32(0, 1), TABLE_A, total=0, max_len=3, topk=2,
                    page_size=2, out=md)
    assert_md(md, cache_seqlens=[4, 2], cu_seqlens_k=[0, 4, 6],
              nsa_cu_seqlens_k=[0, POISON, POISON, POISON])
    ret = nm.draft_extend(a32(4, 2), a32(0, 0), a32(0, 1), TABLE_A, total=0, max_len=3, topk=2,
                          page_size=2)
    assert_md(ret, cache_seqlens=[4, 2], cu_seqlens_k=[0, 4, 6], nsa_cache_seqlens=np.zeros(0),
              nsa_cu_seqlens_k=[0], seqlens_expanded=np.zeros(0),
              page_table_1=np.zeros((0, 3)), real_page_table=np.zeros((0, 2)))


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch(mode):
    empty = np.zeros(0, I32)
    kw = dict(next_n=2) if mode == "target_verify" else dict(total=0) if mode == "draft_extend" \
        else {}
    md = call(mode, empty, empty, TABLE_A, empty, max_len=4, topk=3, page_size=3, **kw)
    assert_md(md, cache_seqlens=np.zeros(0), cu_seqlens_k=[0], nsa_cache_seqlens=np.zeros(0),
              nsa_cu_seqlens_k=[0], page_table_1=np.zeros((0, 4)),
              real_page_table=np.zeros((0, 2)))
    assert (md.seqlens_expanded is None) == (mode == "decode")


def test_empty_batch_into_poisoned_buffers():
    md = blank(3, 3, 4, expanded=False)
    nm.decode(np.zeros(0, I32), np.zeros(0, np.int64), TABLE_A, max_len=4, topk=3, out=md)
    assert_md(md, cache_seqlens=[POISON] * 3, cu_seqlens_k=[0, POISON, POISON, POISON],
              nsa_cu_seqlens_k=[0, POISON, POISON, POISON],
              page_table_1=np.full((3, 4), POISON), real_page_table=np.full((3, 4), POISON))


@pytest.mark.parametrize("page_size", [1, 4])
def test_max_len_zero(page_size):
    md = blank(2, 2, 0, page_size, expanded=False)
    md.page_table_1 = np.full((2, 3), POISON, I32)  # wider than needed: must stay untouched
    md.real_page_table = np.full((2, 3), POISON, I32)
    nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=0, topk=2, page_size=page_size, out=md)
    assert_md(md, cache_seqlens=[3, 1], cu_seqlens_k=[0, 3, 4], nsa_cache_seqlens=[2, 1],
              nsa_cu_seqlens_k=[0, 2, 3], page_table_1=np.full((2, 3), POISON),
              real_page_table=np.full((2, 3), POISON))
    ret = nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=0, topk=2, page_size=page_size)
    assert ret.page_table_1.shape == (2, 0) and ret.real_page_table.shape == (2, 0)


# ----------------------------------------------------------------------------- int32 wrap

def test_int64_seq_lens_wrap_to_int32():
    seq = np.array([2**32 + 5, -(2**32) + 3, 2**31, 2**33 - 1], np.int64)
    table = t32([[1, 2, 3, 4, 5, 6]])
    md = nm.decode(seq, np.zeros(4, np.int64), table, max_len=6, topk=4, live=True,
                   out=blank(4, 4, 6, expanded=False))
    Z = POISON
    # int32: [5, 3, -2**31, -1]
    assert_md(md, cache_seqlens=[5, 3, -(2**31), -1],
              cu_seqlens_k=[0, 5, 8, 8 - 2**31, 7 - 2**31],
              nsa_cache_seqlens=[4, 3, -(2**31), -1],
              page_table_1=[[1, 2, 3, 4, 5, Z], [1, 2, 3, Z, Z, Z], [Z] * 6, [Z] * 6])


def test_cumulative_sum_wraps():
    big = 2**31 - 1
    md = nm.decode(a32(big, big, 3), a32(0, 0, 0), TABLE_A, max_len=1, topk=2**31 - 1)
    # big + big = 2**32 - 2 -> -2;  -2 + 3 = 1
    assert_md(md, cu_seqlens_k=[0, big, -2, 1], nsa_cu_seqlens_k=[0, big, -2, 1])
    md = nm.decode(a32(big, big), a32(0, 0), TABLE_A, max_len=1, topk=2048)
    assert_md(md, cu_seqlens_k=[0, big, -2], nsa_cu_seqlens_k=[0, 2048, 4096])


def test_target_verify_cache_wraps():
    md = nm.target_verify(a32(2**31 - 2), a32(0), TABLE_A, next_n=3, max_len=1, topk=2**31 - 1)
    assert_md(md, cache_seqlens=[-(2**31) + 1], cu_seqlens_k=[0, -(2**31) + 1],
              seqlens_expanded=[2**31 - 1, -(2**31), -(2**31) + 1],
              nsa_cache_seqlens=[2**31 - 1, -(2**31), -(2**31) + 1])


def test_target_verify_int64_seq_lens_wrap():
    md = nm.target_verify(np.array([2**32 + 5], np.int64), a32(1), TABLE_A, next_n=2, max_len=2,
                          topk=100)
    assert_md(md, cache_seqlens=[7], seqlens_expanded=[6, 7], nsa_cu_seqlens_k=[0, 6, 13])


# ----------------------------------------------------------------------------- random: oracle

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_matches_independent_oracle(mode, seed):
    seq, pool, table, ext, kw = random_case(seed, mode)
    rows = rows_of(mode, seq, ext, kw)
    md = blank(len(seq), rows, kw["max_len"], kw["page_size"], expanded=mode != "decode")
    ret = call(mode, seq, pool, table, ext, out=md, **kw)
    assert ret is md
    want = oracle(mode, seq, pool, table, ext, **kw)
    assert_md(md, **want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_allocated_equals_written(mode, seed):
    seq, pool, table, ext, kw = random_case(seed, mode)
    kw["live"] = False
    md = call(mode, seq, pool, table, ext, **kw)
    want = oracle(mode, seq, pool, table, ext, **kw)
    assert_md(md, **want)
    assert (md.real_page_table is md.page_table_1) == (kw["page_size"] == 1)


# ----------------------------------------------------------------------------- random: identities

def identity_case(seed, mode):
    seq, pool, table, ext, kw = random_case(seed, mode)
    kw["live"] = False
    return seq, pool, table, ext, kw, call(mode, seq, pool, table, ext, **kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_identity_cu_is_wrapped_cumsum(mode, seed):
    seq, pool, table, ext, kw, md = identity_case(seed, mode)
    for v, cu in ((md.cache_seqlens, md.cu_seqlens_k), (md.nsa_cache_seqlens, md.nsa_cu_seqlens_k)):
        want = np.concatenate([[0], np.cumsum(v.astype(np.int64))]).astype(I32)
        np.testing.assert_array_equal(cu, want)
    if mode != "target_verify":
        np.testing.assert_array_equal(md.cache_seqlens, seq.astype(I32))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_identity_nsa_is_clamp(mode, seed):
    seq, pool, table, ext, kw, md = identity_case(seed, mode)
    kw["kpool"] = 1
    md = call(mode, seq, pool, table, ext, **kw)
    src = md.cache_seqlens if mode == "decode" else md.seqlens_expanded
    np.testing.assert_array_equal(md.nsa_cache_seqlens, np.minimum(src, kw["topk"]))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_identity_page_rows_are_pool_rows(mode, seed):
    seq, pool, table, ext, kw, md = identity_case(seed, mode)
    if mode == "decode":
        req = np.arange(len(seq))
    elif mode == "target_verify":
        req = np.repeat(np.arange(len(seq)), kw["next_n"])
    else:
        req = np.repeat(np.arange(len(seq)), np.maximum(ext, 0))
    P, m = table.shape[0], kw["max_len"]
    assert md.page_table_1.shape == (len(req), m)
    for r, i in enumerate(req):
        q = int(pool[i])
        want = table[q, :m] if 0 <= q < P else np.full(m, -1)
        np.testing.assert_array_equal(md.page_table_1[r], want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_identity_real_table_is_strided_floor(mode, seed):
    seq, pool, table, ext, kw, md = identity_case(seed, mode)
    ps = kw["page_size"]
    np.testing.assert_array_equal(md.real_page_table, md.page_table_1[:, ::ps] // ps)


@pytest.mark.parametrize("seed", SEEDS)
def test_identity_target_verify_rows_repeat(seed):
    seq, pool, table, ext, kw, md = identity_case(seed, "target_verify")
    n, bs = kw["next_n"], len(seq)
    lens = seq.astype(I32).astype(np.int64)
    np.testing.assert_array_equal(md.cache_seqlens, (lens + n).astype(I32))
    np.testing.assert_array_equal(md.seqlens_expanded.reshape(bs, n),
                                  (lens[:, None] + np.arange(1, n + 1)).astype(I32))
    pt = md.page_table_1.reshape(bs, n, md.page_table_1.shape[1])
    assert (pt == pt[:, :1]).all()
    rt = md.real_page_table.reshape(bs, n, md.real_page_table.shape[1])
    assert (rt == rt[:, :1]).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_identity_draft_extend_expanded(seed):
    seq, pool, table, ext, kw, md = identity_case(seed, "draft_extend")
    want = []
    for n, e in zip(seq.astype(I32).tolist(), ext.tolist()):
        want += [max(n - e + j + 1, 0) for j in range(max(e, 0))]
    np.testing.assert_array_equal(md.seqlens_expanded, np.array(want, np.int64))


@pytest.mark.parametrize("seed", range(10))
def test_identity_int64_lengths_equal_their_int32_truncation(seed):
    rng = np.random.default_rng(1000 + seed)
    bs = int(rng.integers(1, 9))
    small = rng.integers(0, 50, bs)
    seq64 = small + rng.integers(-3, 4, bs) * 2**32
    table = rng.integers(-99, 99, (3, 20)).astype(I32)
    pool = rng.integers(0, 3, bs).astype(I32)
    for mode in MODES:
        ext = rng.integers(0, 3, bs).astype(I32)
        kw = dict(max_len=20, topk=17, kpool=2, page_size=3)
        kw.update(next_n=3) if mode == "target_verify" else None
        kw.update(total=int(ext.sum())) if mode == "draft_extend" else None
        a = call(mode, seq64.astype(np.int64), pool, table, ext, **kw)
        b = call(mode, small.astype(I32), pool, table, ext, **kw)
        for f in FIELDS_1D + ("page_table_1", "real_page_table"):
            if getattr(b, f) is not None:
                np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# ----------------------------------------------------------------------------- out= semantics

def strided_blank(bs, rows, max_len, page_size, expanded):
    """Outputs as windows of larger poisoned buffers: (Metadata, the parent buffers)."""
    width = -(-max_len // page_size)
    parents, md = {}, Metadata()
    for name, n in (("cache_seqlens", bs), ("cu_seqlens_k", bs + 1),
                    ("nsa_cache_seqlens", rows), ("nsa_cu_seqlens_k", rows + 1),
                    ("seqlens_expanded", rows if expanded else None)):
        if n is not None:
            parents[name] = np.full(n + 7, POISON, I32)
            setattr(md, name, parents[name][2:2 + n + 3])  # longer than needed, offset by 2
    for name, w in (("page_table_1", max_len), ("real_page_table", width)):
        parents[name] = np.full((2 * rows + 3, w + 10), POISON, I32)
        setattr(md, name, parents[name][::2, 3:3 + w])
    return md, parents


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(15))
def test_strided_larger_buffers_only_stated_region_changes(mode, seed):
    seq, pool, table, ext, kw = random_case(seed, mode)
    rows = rows_of(mode, seq, ext, kw)
    md, parents = strided_blank(len(seq), rows, kw["max_len"], kw["page_size"], mode != "decode")
    call(mode, seq, pool, table, ext, out=md, **kw)
    want = oracle(mode, seq, pool, table, ext, **kw)
    for name, parent in parents.items():
        expected = np.full(parent.shape, POISON, np.int64)
        value = np.asarray(want[name])
        if parent.ndim == 1:
            expected[2:2 + len(value)] = value
        else:
            expected[0:2 * rows:2, 3:3 + value.shape[1]] = value
        np.testing.assert_array_equal(parent, expected, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(10))
def test_several_destinations_identical(mode, seed):
    seq, pool, table, ext, kw = random_case(seed, mode)
    rows = rows_of(mode, seq, ext, kw)
    mds = [blank(len(seq), rows, kw["max_len"], kw["page_size"], expanded=mode != "decode")
           for _ in range(3)]
    ret = call(mode, seq, pool, table, ext, out=mds, **kw)
    assert isinstance(ret, list) and len(ret) == 3
    assert all(r is m for r, m in zip(ret, mds))
    want = oracle(mode, seq, pool, table, ext, **kw)
    for md in mds:
        assert_md(md, **want)


def test_sixteen_destinations_accepted():
    mds = [blank(2, 2, 3, expanded=False) for _ in range(16)]
    ret = nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=3, topk=2, out=mds)
    assert ret == mds
    for md in mds:
        assert_md(md, nsa_cache_seqlens=[2, 1], page_table_1=[[20, 21, 22], [30, 31, 32]])


def test_out_is_returned_as_given():
    md = blank(2, 2, 3, expanded=False)
    assert nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=3, topk=2, out=md) is md
    md2 = blank(2, 2, 3, expanded=False)
    dests = (md2,)
    assert nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=3, topk=2, out=dests) is dests
    assert_md(md2, cu_seqlens_k=[0, 3, 4])


def test_page_size_one_real_table_separate_buffer_equals_page_table_1():
    md = blank(3, 3, 4, 1, expanded=False)
    nm.decode(a32(3, 5, 1), a32(2, 0, 1), TABLE_A, max_len=4, topk=2, out=md)
    want = [[30, 31, 32, 33], [10, 11, 12, 13], [20, 21, 22, 23]]
    assert_md(md, page_table_1=want, real_page_table=want)


def test_page_size_one_real_table_is_page_table_1_itself():
    md = blank(3, 3, 4, 1, expanded=False)
    md.real_page_table = md.page_table_1
    nm.decode(a32(3, 5, 1), a32(2, 0, 1), TABLE_A, max_len=4, topk=2, out=md)
    assert md.real_page_table is md.page_table_1
    assert_md(md, page_table_1=[[30, 31, 32, 33], [10, 11, 12, 13], [20, 21, 22, 23]])


@pytest.mark.parametrize("omit", ["page_table_1", "real_page_table", "both"])
def test_omitted_tables(omit):
    md = blank(4, 4, 6, 4, expanded=False)
    if omit in ("page_table_1", "both"):
        md.page_table_1 = None
    if omit in ("real_page_table", "both"):
        md.real_page_table = None
    nm.decode(a32(3, 13, 11, 6), a32(1, 0, 1, 2), TABLE_B, max_len=6, topk=8, kpool=4,
              page_size=4, out=md)
    assert_md(md, nsa_cache_seqlens=[3, 9, 11, 6])
    if md.page_table_1 is not None:
        assert_md(md, page_table_1=[[-1, -2, -3, -4, -65, -66], [0, 1, 2, 3, 64, 65],
                                    [-1, -2, -3, -4, -65, -66], [7, 8, 9, 10, 11, 12]])
    if md.real_page_table is not None:
        assert_md(md, real_page_table=[[-1, -17], [0, 16], [-1, -17], [1, 2]])
    assert (md.page_table_1 is None) == (omit != "real_page_table")
    assert (md.real_page_table is None) == (omit != "page_table_1")


def test_decode_ignores_seqlens_expanded_buffer():
    md = blank(2, 2, 3)  # decode has no seqlens_expanded: a passed buffer stays untouched
    nm.decode(a32(3, 1), a32(1, 2), TABLE_A, max_len=3, topk=2, out=md)
    assert_md(md, seqlens_expanded=[POISON, POISON], cache_seqlens=[3, 1])


def test_strided_and_reversed_inputs():
    seq = np.array([3, 99, 13, 99, 11], np.int64)[::2]  # [3, 13, 11]
    pool = a32(2, 0, 1)[::-1]  # [1, 0, 2], negative stride
    padded = np.full((3, 12), 555, I32)
    padded[:, :7] = TABLE_B
    md = nm.decode(seq, pool, padded[:, :7], max_len=6, topk=8, kpool=4, page_size=4)
    assert_md(md, cache_seqlens=[3, 13, 11], nsa_cache_seqlens=[3, 9, 11],
              page_table_1=[[-1, -2, -3, -4, -65, -66], [0, 1, 2, 3, 64, 65],
                            [7, 8, 9, 10, 11, 12]],
              real_page_table=[[-1, -17], [0, 16], [1, 2]])


def test_inputs_are_not_modified():
    seq, pool, table = a32(3, 13, 11, 6), a32(1, 0, 1, 2), TABLE_B.copy()
    nm.decode(seq, pool, table, max_len=6, topk=8, page_size=4)
    np.testing.assert_array_equal(seq, [3, 13, 11, 6])
    np.testing.assert_array_equal(pool, [1, 0, 1, 2])
    np.testing.assert_array_equal(table, TABLE_B)


# ----------------------------------------------------------------------------- check=True

def test_check_passes_on_valid_input():
    md = nm.target_verify(a32(2, 6), a32(1, 0), TABLE_A, next_n=3, max_len=3, topk=4, check=True)
    assert_md(md, cache_seqlens=[5, 9])


@pytest.mark.parametrize("pool,match", [
    (a32(0, 3, 1), r"req_pool_indices\[1\] = 3 is outside \[0, 3\)"),
    (a32(0, 1, -1), r"req_pool_indices\[2\] = -1 is outside \[0, 3\)"),
    (np.array([0, 2**32, 1], np.int64), r"req_pool_indices\[1\] = 4294967296"),
])
def test_check_pool_index(pool, match):
    with pytest.raises(ValueError, match=match):
        nm.decode(a32(1, 2, 3), pool, TABLE_A, max_len=3, topk=2, check=True)


def test_check_negative_length():
    with pytest.raises(ValueError, match=r"seq_lens\[2\] = -4 is negative"):
        nm.decode(a32(1, 2, -4, -5), a32(0, 0, 0, 0), TABLE_A, max_len=3, topk=2, check=True)


def test_check_negative_length_target_verify():
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = -1 is negative"):
        nm.target_verify(a32(1, -1), a32(0, 0), TABLE_A, next_n=3, max_len=3, topk=2,
                         check=True)


def test_check_negative_extend_length():
    with pytest.raises(ValueError, match=r"extend_lens\[1\] = -2 is negative"):
        nm.draft_extend(a32(4, 4, 4), a32(1, -2, 1), a32(0, 1, 2), TABLE_A, total=2, max_len=3,
                        topk=2, check=True)


@pytest.mark.parametrize("mode", MODES)
def test_check_cumulative_overflow(mode):
    big = 2**31 - 1
    kw = dict(next_n=1) if mode == "target_verify" else dict(total=2) if mode == "draft_extend" \
        else {}
    seq = a32(big, big) if mode != "target_verify" else a32(2**30, 2**30)
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = \d+ overflows int32"):
        call(mode, seq, a32(0, 1), TABLE_A, a32(1, 1), max_len=3, topk=2, check=True, **kw)


def test_check_nsa_cumulative_overflow_alone():
    half = 2**30
    # cache_seqlens and its sum fit in int32; the per-row lengths' sum does not
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 1073741824 overflows"):
        nm.target_verify(a32(half), a32(0), TABLE_A, next_n=3, max_len=1, topk=2**31 - 1,
                         check=True)
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = 1073741824 overflows"):
        nm.draft_extend(a32(1, half), a32(1, 3), a32(0, 0), TABLE_A, total=4, max_len=1,
                        topk=2**31 - 1, check=True)
    md = nm.target_verify(a32(half), a32(0), TABLE_A, next_n=3, max_len=1, topk=2048,
                          check=True)  # clamped: nothing overflows
    assert_md(md, cache_seqlens=[half + 3], nsa_cu_seqlens_k=[0, 2048, 4096, 6144])
    md = nm.target_verify(a32(half), a32(0), TABLE_A, next_n=3, max_len=1, topk=2**31 - 1)
    assert_md(md, nsa_cu_seqlens_k=[0, half + 1, 2**31 - 1 + 4 - 2**32, half + 6 - 2**31])


def test_check_target_verify_length_plus_next_n_overflows():
    with pytest.raises(ValueError, match=r"seq_lens\[0\] = 2147483646 overflows"):
        nm.target_verify(a32(2**31 - 2), a32(0), TABLE_A, next_n=2, max_len=1, topk=5,
                         check=True)


def test_check_int64_length_overflows_int32():
    with pytest.raises(ValueError, match=r"seq_lens\[1\] = 4294967301 overflows"):
        nm.decode(np.array([1, 2**32 + 5], np.int64), a32(0, 0), TABLE_A, max_len=1, topk=5,
                  check=True)


@pytest.mark.parametrize("seq,pool,match", [
    # one request with two faults: the pool index (kind 0) wins over the length (kind 1)
    (a32(1, -3), a32(0, 9), r"req_pool_indices\[1\]"),
    # the smallest request wins whatever the kind
    (a32(1, -3, 2), a32(0, 1, 9), r"seq_lens\[1\]"),
    (a32(-3, 1, 2), a32(0, 9, 1), r"seq_lens\[0\]"),
    (a32(2**31 - 1, 1, -3), a32(0, 0, 0), r"seq_lens\[1\] = 1 overflows"),
    (a32(2**31 - 1, 1, 2), a32(0, 0, 7), r"seq_lens\[1\] = 1 overflows"),
    (a32(2**31 - 1, 1, 2), a32(0, 7, 0), r"req_pool_indices\[1\] = 7"),
])
def test_check_first_error_ordering(seq, pool, match):
    with pytest.raises(ValueError, match=match):
        nm.decode(seq, pool, TABLE_A, max_len=1, topk=2**31 - 1, check=True)


def test_first_error_kinds_direct():
    fe = reference.first_error
    d = dict(topk=2**31 - 1, kpool=1, next_n=1, total=None)
    assert fe("decode", a32(1, 2), a32(0, 1), None, 3, **d) is None
    assert fe("decode", a32(1, -2), a32(0, 5), None, 3, **d) == (1, BadKind.bad_pool_index)
    assert fe("decode", a32(1, -2), a32(0, 1), None, 3, **d) == (1, BadKind.negative_length)
    assert fe("decode", a32(2**31 - 1, 1), a32(0, 1), None, 3, **d) == (1, BadKind.overflow)
    de = dict(d, total=1)
    assert fe("draft_extend", a32(-1, 2), a32(0, 1), a32(-1, 1), 3, **de) == \
        (0, BadKind.negative_length)
    assert fe("draft_extend", a32(1, 2), a32(0, 1), a32(-1, 1), 3, **de) == \
        (0, BadKind.bad_extend)
    assert fe("draft_extend", a32(1, 2), a32(0, 1), a32(2, 1), 3, **de) == (2, BadKind.bad_total)
    tv = dict(d, next_n=2)
    assert fe("target_verify", a32(2**31 - 2, 0), a32(0, 1), None, 3, **tv) == \
        (0, BadKind.overflow)
    assert BadKind.bad_pool_index < BadKind.negative_length < BadKind.bad_extend \
        < BadKind.overflow


def test_check_writes_the_exact_result_when_no_error():
    md = blank(3, 3, 4, expanded=False)
    nm.decode(a32(3, 5, 1), a32(2, 0, 1), TABLE_A, max_len=4, topk=2, out=md, check=True)
    assert_md(md, nsa_cu_seqlens_k=[0, 2, 4, 5], page_table_1=[[30, 31, 32, 33],
                                                                [10, 11, 12, 13],
                                                                [20, 21, 22, 23]])


def test_check_extend_length_overflow_names_extend_lens():
    with pytest.raises(ValueError, match=r"extend_lens\[0\]"):
        nm.draft_extend(np.array([5], np.int64), np.array([2**32 + 1], np.int64), a32(0),
                        TABLE_A, total=1, max_len=3, topk=4, check=True)
