"""FlashMLA's sparse decode schedule (docs/SPEC_schedule.md), in NumPy.

`schedule` is the contract: FlashMLA's greedy fill of the SM parts, request by request, written
plainly. The other functions compute the same result another way and exist to be tested against
it: every part of the greedy fill starts where the previous one started plus a fixed quota, moved
forward onto a request boundary when one lies at most OVERHEAD blocks past it (`part_starts`). A
start that lands on a boundary is an anchor; between anchors the starts are an arithmetic
sequence, so one vectorised pass over the boundaries finds the next anchor (`part_starts_walk`,
the device's algorithm), and when every request has the same length the anchors are periodic
(`part_starts_uniform`, a closed form). `fields` turns part starts into the two outputs.

Positions are counted in "cost units": request i costs num_blocks[i] + OVERHEAD units, and
C = cumsum0(cost) are the request boundaries (C[bs] = T, the total cost).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt

Ints = npt.NDArray[Any]

BLOCK_N = 64  # tokens per block of FlashMLA's sparse decode
OVERHEAD = 5  # FlashMLA's fixed cost of one piece of a request, in blocks
WIDTH = 8  # int32 fields per part: the last is padding
INT32_MAX = 2**31 - 1

# tile_scheduler_metadata columns: begin_req_idx, end_req_idx, begin_block_idx, end_block_idx,
# begin_split_idx, is_first_req_splitted, is_last_req_splitted, pad (written 0)


def num_blocks(s: npt.ArrayLike) -> Ints:
    """Blocks of 64 tokens a request of s tokens is scheduled for; s <= 0 counts as 1 token."""
    x: Ints = np.asarray(s, np.int64)
    return (np.maximum(x, 1) - 1) // BLOCK_N + 1


def blocks_of(lengths: Optional[npt.ArrayLike], bs: int, topk: int, num_sm_parts: int) -> Ints:
    """num_blocks of every request (int64), after validating the arguments."""
    if bs < 0:
        raise ValueError(f"bs must be >= 0, got {bs}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    if num_sm_parts < 1:
        raise ValueError(f"num_sm_parts must be >= 1, got {num_sm_parts}")
    if lengths is None:
        s = np.full(bs, topk, np.int64)
    else:
        s = np.asarray(lengths).astype(np.int64).astype(np.int32).astype(np.int64)  # int32 values
        if s.shape != (bs,):
            raise ValueError(f"topk_length must have shape ({bs},), got {s.shape}")
    n = num_blocks(s)
    total = int(np.sum(n + OVERHEAD))
    if total + num_sm_parts - 1 > INT32_MAX:  # FlashMLA's int32 arithmetic holds up to here
        raise ValueError(f"the schedule's total cost {total} (+ num_sm_parts - 1) exceeds int32")
    return n


def quota(total: int, num_sm_parts: int) -> int:
    """Cost units every part advances at least: ceil(total / parts). The budget adds OVERHEAD."""
    return -(-total // num_sm_parts)


def schedule(lengths: Optional[npt.ArrayLike], bs: int, topk: int,
             num_sm_parts: int) -> Tuple[Ints, Ints]:
    """(tile_scheduler_metadata [num_sm_parts, 8], num_splits [bs + 1]), both int32.

    lengths: FlashMLA's topk_length (the tokens each request attends), or None for topk tokens
    for every request.
    """
    n = blocks_of(lengths, bs, topk, num_sm_parts)
    parts = num_sm_parts
    budget_per_part = quota(int(np.sum(n + OVERHEAD)), parts) + OVERHEAD
    meta = np.zeros((parts, WIDTH), np.int32)
    num_splits = np.zeros(bs + 1, np.int32)
    # The next block to schedule is block `blk` of request `req`, of which `pieces` pieces are
    # already scheduled; `splits` counts the pieces of the finished requests.
    req = blk = pieces = splits = 0
    for p in range(parts):
        begin_req, begin_blk, begin_split = req, blk, pieces
        budget = budget_per_part
        while req < bs:
            rest = int(n[req]) - blk
            if budget >= rest + OVERHEAD:  # the part finishes the request
                budget -= rest + OVERHEAD
                splits += pieces + 1
                num_splits[req + 1] = splits
                req, blk, pieces = req + 1, 0, 0
            else:  # it takes what the budget leaves after the overhead, if anything
                if budget > OVERHEAD:
                    blk += budget - OVERHEAD
                    pieces += 1
                break
        if blk > 0:  # the part ends inside request req
            end_req, end_blk = req, blk
        else:  # at the end of the request before (none when bs == 0)
            end_req, end_blk = req - 1, (int(n[req - 1]) if req > 0 else 0)
        first = begin_blk != 0
        last = end_req >= 0 and end_blk != n[end_req]
        if begin_req == end_req:  # one request: either flag means "a piece of a split request"
            first = last = first or last
        meta[p] = (begin_req, end_req, begin_blk, end_blk, begin_split, first, last, 0)
    assert req == bs and blk == 0 and pieces == 0, "the parts hold every request"
    return meta, num_splits


# ----------------------------------------------------------------- the same, from part starts


def part_starts(n: Ints, parts: int) -> Ints:
    """u[p], the position where part p starts (u[parts] = T), one part after the other.

    From u, a part's budget covers the positions up to u + q + OVERHEAD (q = the quota): it
    ends on the last request boundary in that range when the boundary is at least u + q (what
    is left, at most OVERHEAD, cannot pay for a piece of the next request), else at u + q.
    """
    C = cumsum0(n + OVERHEAD)
    T = int(C[-1])
    q = quota(T, parts)
    u = np.empty(parts + 1, np.int64)
    u[0] = 0
    for p in range(parts):
        t = int(u[p]) + q
        if t + OVERHEAD >= T:
            u[p + 1] = T
        else:
            last_boundary = int(C[np.searchsorted(C, t + OVERHEAD, side="right") - 1])
            u[p + 1] = max(t, last_boundary)
    return u


def part_starts_walk(n: Ints, parts: int) -> Ints:
    """part_starts, one anchor (a start on a boundary) at a time: the device's algorithm.

    From an anchor U the starts are U + t*q until a boundary k lies in a part's window
    [U + t*q, U + t*q + OVERHEAD]; the first window that reaches it is t = ceil((d - OVERHEAD) / q)
    (d = C[k] - U >= OVERHEAD + 1), and it holds it when t*q <= d. At most one boundary lies in a
    window (a request costs more than OVERHEAD), so the first boundary held is the next anchor.
    T is held by the first window that reaches it (the part after would pass it).
    """
    C = cumsum0(n + OVERHEAD)
    T = int(C[-1])
    q = quota(T, parts)
    u = np.full(parts + 1, T, np.int64)
    u[0] = 0
    U, pa, a = 0, 0, 0  # the anchor: position, part, boundary index
    while U < T:
        d = C[a + 1:] - U  # every boundary after the anchor
        t = (d - OVERHEAD - 1) // q + 1
        hit = t * q <= d
        hit[-1] = True
        j = int(np.argmax(hit))
        m = int(t[j])
        u[pa + 1:pa + m] = U + q * np.arange(1, m)
        a, U, pa = a + 1 + j, int(C[a + 1 + j]), pa + m
        u[pa] = U
    return u


def uniform_plan(n_each: int, bs: int, parts: int) -> Tuple[int, int, int, int, int]:
    """(c, T, q, G, D) when every request has n_each blocks: the cost c of a request, the total
    T, the quota q, and the period: G parts from one anchor to the next, D requests apart
    (G = parts + 1 when no anchor follows within the parts). The first G with a boundary at
    most OVERHEAD past G*q is the first whose distance to the next multiple of c is that small.
    """
    c = n_each + OVERHEAD
    T = bs * c
    q = quota(T, parts)
    for m in range(1, min(parts, c) + 1):  # m = c always has distance 0
        if (-(m * q)) % c <= OVERHEAD:
            return c, T, q, m, -(-(m * q) // c)
    return c, T, q, parts + 1, 0


def part_starts_uniform(n_each: int, bs: int, parts: int) -> Ints:
    """part_starts for requests of n_each blocks, in closed form (no part waits for another)."""
    c, T, q, G, D = uniform_plan(n_each, bs, parts)
    p = np.arange(parts + 1, dtype=np.int64)
    u: Ints = np.minimum(T, (p // G) * D * c + (p % G) * q)
    return u


def fields(n: Ints, u: Ints) -> Tuple[Ints, Ints]:
    """The two outputs from the part starts u ([parts + 1], u[parts] = T)."""
    bs, parts = n.shape[0], u.shape[0] - 1
    C = cumsum0(n + OVERHEAD)
    req = np.searchsorted(C, u, side="right") - 1  # C[req] <= u < C[req + 1]; req = bs at T
    blk = u - C[req]
    inside = blk > 0  # the part starts inside a request: the request is split there
    # pieces of the request before this one: 1 + the parts that started inside it earlier
    first_inside = np.searchsorted(u, C[req], side="right")
    begin_split = np.where(inside, np.arange(parts + 1) - first_inside + 1, 0)
    nxt = slice(1, parts + 1)  # a part ends where the next starts
    end_req = np.where(inside[nxt], req[nxt], req[nxt] - 1)
    n_before = n[np.maximum(req[nxt] - 1, 0)] if bs > 0 else np.zeros(parts, np.int64)
    end_blk = np.where(inside[nxt], blk[nxt], np.where(req[nxt] > 0, n_before, 0))
    first, last = inside[:parts], inside[nxt]
    one = req[:parts] == end_req
    first, last = np.where(one, first | last, first), np.where(one, first | last, last)
    meta = np.stack([req[:parts], end_req, blk[:parts], end_blk, begin_split[:parts], first, last,
                     np.zeros(parts, np.int64)], axis=1).astype(np.int32)
    split_starts = u[inside]  # sorted
    num_splits = np.arange(bs + 1) + np.searchsorted(split_starts, C, side="left")
    return meta, num_splits.astype(np.int32)


def cumsum0(v: npt.ArrayLike) -> Ints:
    """[0, v0, v0+v1, ...] exactly (int64); callers truncate."""
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(np.asarray(v, np.int64))])
