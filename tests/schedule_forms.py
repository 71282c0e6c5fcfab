"""FlashMLA's schedule (nsa_metadata.schedule.schedule, the contract) computed the other ways,
to be tested against it: every part of the greedy fill starts where the previous one started plus
a fixed quota, moved forward onto a request boundary when one lies at most OVERHEAD blocks past it
(`part_starts`). A start that lands on a boundary is an anchor; between anchors the starts are an
arithmetic sequence, so one vectorised pass over the boundaries finds the next anchor
(`part_starts_walk`, the device's algorithm, kernels/schedule.cuh), and when every request has the
same length the anchors are periodic (`part_starts_uniform`, a closed form). `fields` turns part
starts into the two outputs.

Positions are counted in "cost units": request i costs num_blocks[i] + OVERHEAD units, and
C = cumsum0(cost) are the request boundaries (C[bs] = T, the total cost).
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from nsa_metadata.schedule import OVERHEAD, Ints, cumsum0, quota


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
