"""The host fallback: a validated call on host arrays runs the NumPy reference through the same
API, with the same errors."""

from __future__ import annotations

from typing import List

from . import _arrays, reference
from ._metadata import FIELDS, Metadata
from ._validate import Call, raise_bad_element


def run(c: Call, outs: List[Metadata]) -> None:
    """Fill `outs` (host arrays) with the reference's results for call `c`; check=True raises
    naming the first bad element."""
    views = [_arrays.host_view(a) for a in c.arrs]
    seq_lens, pool, table = views[:3]
    extend_lens = views[3] if c.mode == "draft_extend" else None
    produced = c.regions
    host_outs = [Metadata(**{f: None if getattr(md, f) is None or produced[f] is None else
                             _arrays.host_view(_arrays.describe(getattr(md, f), f))
                             for f in FIELDS}) for md in outs]
    reference.compute(c.mode, seq_lens, pool, extend_lens, table, host_outs, max_len=c.max_len,
                      topk=c.topk, kpool=c.kpool, page_size=c.page_size, next_n=c.next_n,
                      total=c.total, live=c.live, schedule=c.schedule)
    if c.check:
        bad = reference.first_error(c.mode, seq_lens, pool, extend_lens, table.shape[0], c.topk,
                                    c.kpool, c.next_n, c.total)
        if bad is not None:
            raise_bad_element(*bad, c.arrs, c.total)
