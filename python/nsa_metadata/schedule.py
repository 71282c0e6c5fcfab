"""FlashMLA's sparse decode schedule (docs/SPEC_schedule.md), in NumPy.

`schedule` is the contract: FlashMLA's greedy fill of the SM parts, request by request, written
plainly. (tests/schedule_forms.py computes the same result the ways the device does, and
tests/test_schedule.py checks them against it.)

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


def cumsum0(v: npt.ArrayLike) -> Ints:
    """[0, v0, v0+v1, ...] exactly (int64); callers truncate."""
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(np.asarray(v, np.int64))])
