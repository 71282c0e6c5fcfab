"""FlashMLA's decode schedule (docs/SPEC_schedule.md) in NumPy, on the host.

`reference.schedule` is FlashMLA's greedy fill written plainly; these tests hold it to
hand-computed cases and to what FlashMLA's decode kernel needs of a schedule, and hold the other
formulations in tests/schedule_forms.py (part starts one after the other, anchor by anchor as the device
does, and the closed form for equal lengths) to it on random and edge batches.
"""

import numpy as np
import pytest

from nsa_metadata import reference
from nsa_metadata import schedule as sch
import schedule_forms as forms

P66 = 66  # FlashMLA's SM parts on an H100 for 128 query heads


def rows(*r):
    return np.array(r, dtype=np.int32).reshape(len(r), 8)


def formulations(lengths, bs, topk, parts):
    """(meta, num_splits) of every formulation that applies, by name."""
    n = sch.blocks_of(lengths, bs, topk, parts)
    out = {"greedy": sch.schedule(lengths, bs, topk, parts),
           "part_starts": forms.fields(n, forms.part_starts(n, parts)),
           "walk": forms.fields(n, forms.part_starts_walk(n, parts))}
    if bs > 0 and np.all(n == n[0]):
        out["uniform"] = forms.fields(n, forms.part_starts_uniform(int(n[0]), bs, parts))
    return out


def assert_agree(lengths, bs, topk, parts):
    res = formulations(lengths, bs, topk, parts)
    meta, num_splits = res.pop("greedy")
    assert meta.shape == (parts, 8) and meta.dtype == np.int32
    assert num_splits.shape == (bs + 1,) and num_splits.dtype == np.int32
    for name, (m, s) in res.items():
        np.testing.assert_array_equal(m, meta, err_msg=f"{name}: tile_scheduler_metadata")
        np.testing.assert_array_equal(s, num_splits, err_msg=f"{name}: num_splits")
    return meta, num_splits


def assert_decodable(meta, num_splits, n):
    """What FlashMLA's decode kernel relies on: walking the parts in order, every request's
    blocks are covered once, in order, by pieces numbered num_splits[r] .. num_splits[r+1] - 1,
    and a piece is flagged split exactly when its request has more than one piece."""
    bs = n.shape[0]
    payload = sch.quota(int(np.sum(n + sch.OVERHEAD)), meta.shape[0]) + sch.OVERHEAD
    nxt_blk = np.zeros(bs, np.int64)  # next block of each request to be covered
    nxt_split = num_splits[:-1].astype(np.int64).copy()
    for b_req, e_req, b_blk, e_blk, b_split, first, last, pad in meta:
        assert pad == 0
        cost = 0
        for r in range(b_req, e_req + 1):
            lo = b_blk if r == b_req else 0
            hi = e_blk if r == e_req else n[r]
            assert lo == nxt_blk[r] and lo < hi <= n[r]
            assert num_splits[r] + (b_split if r == b_req else 0) == nxt_split[r]
            pieces = num_splits[r + 1] - num_splits[r]
            flag = first if r == b_req else last if r == e_req else 0
            assert flag == (pieces > 1), (r, pieces, flag)
            nxt_blk[r], nxt_split[r] = hi, nxt_split[r] + 1
            cost += hi - lo + sch.OVERHEAD
        assert cost <= payload
    np.testing.assert_array_equal(nxt_blk, n)
    np.testing.assert_array_equal(nxt_split, num_splits[1:])


# ------------------------------------------------------------------------- hand-computed


def test_one_request_per_part_with_leftover_parts():
    # SGLang's call: no topk_length, top-k 2048 (32 blocks, cost 37), 64 requests on 66 parts.
    # quota ceil(64*37/66) = 36, budget 41: each part finishes one request and the 4 units left
    # cannot pay for a piece of the next. Parts 64 and 65 hold nothing.
    meta, num_splits = assert_agree(None, 64, 2048, P66)
    expect = np.zeros((P66, 8), np.int32)
    expect[:64, 0] = expect[:64, 1] = np.arange(64)
    expect[64:, 0], expect[64:, 1] = 64, 63
    expect[:, 3] = 32
    np.testing.assert_array_equal(meta, expect)
    np.testing.assert_array_equal(num_splits, np.arange(65))


def test_one_request_in_four_pieces():
    # 32 blocks (cost 37) on 4 parts: quota 10, budget 15, slices of 10 blocks; the last part
    # finishes the request (2 blocks + 5 <= 15). Every part holds one piece of a split request.
    meta, num_splits = assert_agree(None, 1, 2048, 4)
    np.testing.assert_array_equal(meta, rows([0, 0, 0, 10, 0, 1, 1, 0],
                                             [0, 0, 10, 20, 1, 1, 1, 0],
                                             [0, 0, 20, 30, 2, 1, 1, 0],
                                             [0, 0, 30, 32, 3, 1, 1, 0]))
    np.testing.assert_array_equal(num_splits, [0, 4])


def test_a_part_ends_on_a_boundary_past_its_quota():
    # blocks [3, 1, 10], costs [8, 6, 15], T = 29, 3 parts: quota 10, budget 15. Part 0 takes
    # requests 0 and 1 (14 units) and stops: 1 unit left. Part 1 takes request 2 whole.
    lens = [192, 1, 640]
    meta, num_splits = assert_agree(lens, 3, 2048, 3)
    np.testing.assert_array_equal(meta, rows([0, 1, 0, 1, 0, 0, 0, 0], [2, 2, 0, 10, 0, 0, 0, 0],
                                             [3, 2, 0, 10, 0, 0, 0, 0]))
    np.testing.assert_array_equal(num_splits, [0, 1, 2, 3])
    np.testing.assert_array_equal(forms.part_starts(sch.num_blocks(lens), 3), [0, 14, 29, 29])


def test_a_part_spans_two_split_requests():
    # blocks [10, 10], T = 30, 4 parts: quota 8, budget 13.
    meta, num_splits = assert_agree([640, 640], 2, 2048, 4)
    np.testing.assert_array_equal(meta, rows([0, 0, 0, 8, 0, 1, 1, 0], [0, 1, 8, 1, 1, 1, 1, 0],
                                             [1, 1, 1, 9, 1, 1, 1, 0], [1, 1, 9, 10, 2, 1, 1, 0]))
    np.testing.assert_array_equal(num_splits, [0, 2, 5])


def test_two_requests_five_parts():
    # blocks [1, 1]: quota ceil(12/5) = 3, budget 8; each part takes one request.
    meta, num_splits = assert_agree([1, 1], 2, 2048, 5)
    np.testing.assert_array_equal(meta, rows([0, 0, 0, 1, 0, 0, 0, 0], [1, 1, 0, 1, 0, 0, 0, 0],
                                             *[[2, 1, 0, 1, 0, 0, 0, 0]] * 3))
    np.testing.assert_array_equal(num_splits, [0, 1, 2])


def test_no_requests():
    # FlashMLA refuses bs = 0; here every part is empty: it begins at request 0 and ends before it.
    meta, num_splits = assert_agree(None, 0, 2048, 3)
    np.testing.assert_array_equal(meta, rows(*[[0, -1, 0, 0, 0, 0, 0, 0]] * 3))
    np.testing.assert_array_equal(num_splits, [0])


def test_lengths_of_zero_or_less_count_one_block():
    np.testing.assert_array_equal(sch.num_blocks([-7, 0, 1, 64, 65, 2048, 2049]),
                                  [1, 1, 1, 1, 2, 32, 33])
    a = sch.schedule([0, -7, 1], 3, 2048, 2)
    b = sch.schedule(None, 3, 1, 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_topk_length_is_read_as_int32():
    a = sch.schedule(np.array([2**32 + 100], np.int64), 1, 2048, 3)
    b = sch.schedule([100], 1, 2048, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_reference_exports_schedule():
    assert reference.schedule is sch.schedule


@pytest.mark.parametrize("kw, match", [
    (dict(lengths=None, bs=-1, topk=1, num_sm_parts=1), "bs"),
    (dict(lengths=None, bs=1, topk=0, num_sm_parts=1), "topk"),
    (dict(lengths=None, bs=1, topk=1, num_sm_parts=0), "num_sm_parts"),
    (dict(lengths=[1, 2], bs=3, topk=1, num_sm_parts=1), "topk_length"),
    (dict(lengths=None, bs=70, topk=2**31 - 1, num_sm_parts=1), "int32"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        reference.schedule(kw["lengths"], kw["bs"], kw["topk"], kw["num_sm_parts"])


def test_largest_total_accepted():
    # total + parts - 1 == INT32_MAX is the largest FlashMLA's int32 arithmetic holds: 63
    # requests of 2**31 - 1 tokens (33554432 blocks, cost 33554437) and one that brings the
    # total to 2**31 - 2, on 2 parts
    lengths = np.array([2**31 - 1] * 63 + [64 * 33554110], np.int64)
    assert int(np.sum(sch.num_blocks(lengths) + sch.OVERHEAD)) == 2**31 - 2
    assert_agree(lengths, 64, 2048, 2)
    with pytest.raises(ValueError, match="int32"):
        reference.schedule(lengths, 64, 2048, 3)


# ------------------------------------------------------------------------- agreement


def random_lengths(rng, bs, kind):
    if kind == "none":
        return None
    if kind == "short":  # around one block: many requests a part, boundaries everywhere
        return rng.integers(-3, 200, bs)
    if kind == "capped":  # min(len, topk): mostly topk
        return np.minimum(rng.integers(0, 6000, bs), 2048)
    if kind == "equal":
        return np.full(bs, int(rng.integers(0, 10**6)))
    return rng.integers(0, 10**6 + 1, bs)  # "wide": lengths 0 .. 1M


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", ["none", "short", "capped", "equal", "wide"])
def test_random_batches(seed, kind):
    rng = np.random.default_rng(1000 * seed + len(kind))
    for _ in range(6):
        bs = int(rng.choice([rng.integers(0, 40), rng.integers(0, 300), rng.integers(0, 3000),
                             rng.integers(0, 20001)]))
        parts = int(rng.integers(1, 149))
        topk = int(rng.choice([1, 64, 2048, rng.integers(1, 10**6 + 1)]))
        lengths = random_lengths(rng, bs, kind)
        meta, num_splits = assert_agree(lengths, bs, topk, parts)
        if bs <= 4096:  # (time: assert_decodable walks the requests in Python)
            assert_decodable(meta, num_splits, sch.blocks_of(lengths, bs, topk, parts))


@pytest.mark.parametrize("bs", [0, 1, 2, 65, 66, 67, 147, 148, 149, 1024, 4096, 11622, 11623,
                                20000])
def test_edge_batches(bs):
    rng = np.random.default_rng(bs)
    batches = [None, np.zeros(bs), np.full(bs, 64), np.full(bs, 65), np.full(bs, 10**6),
               np.tile([1, 10**6], bs)[:bs], rng.integers(0, 10**6 + 1, bs)]
    for parts in (1, 2, 65, 66, 132, 147, 148):
        for lengths in batches:
            meta, num_splits = assert_agree(lengths, bs, 2048, parts)
            if bs <= 4096:  # (time: assert_decodable walks the requests in Python)
                assert_decodable(meta, num_splits, sch.blocks_of(lengths, bs, 2048, parts))


@pytest.mark.parametrize("topk", [1, 63, 64, 65, 2048, 4096, 10**6])
def test_uniform_small_grid(topk):
    # every (bs, parts) of a small grid: the closed form's period against the greedy
    for bs in range(0, 40, 3):
        for parts in range(1, 80, 2):
            assert_agree(None, bs, topk, parts)
