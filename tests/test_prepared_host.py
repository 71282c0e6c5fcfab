"""The prepared path on host arrays: each step equals a one-shot reference call on the first
`bs` requests, writes only that step's regions of the bound buffers, and refuses steps that do
not fit."""

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import POISON, random_inputs

MODES = ["decode", "target_verify", "draft_extend"]
CAP, W, NEXT_N, MAX_EXT = 20, 90, 3, 4


def bound(mode, rng, page_size, same_real=False):
    inp = random_inputs(rng, mode, CAP, W - 10, P=CAP + 4, W=W, next_n=NEXT_N, max_extend=MAX_EXT)
    rows = CAP * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else MAX_EXT)
    full = lambda *shape: np.full(shape, POISON, np.int32)  # noqa: E731
    pt1 = full(rows, W)
    md = nm.Metadata(full(CAP), full(CAP + 1), full(rows), full(rows + 1), pt1,
                     pt1 if same_real else full(rows, -(-W // page_size)),
                     None if mode == "decode" else full(rows))
    return inp, md


def snapshot(md):
    return {f: getattr(md, f).copy() for f in nm.Metadata.__slots__ if getattr(md, f) is not None
            and not (f == "real_page_table" and md.real_page_table is md.page_table_1)}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("page_size", [1, 16])
def test_steps_equal_one_shot_calls_on_the_first_bs_requests(mode, page_size):
    rng = np.random.default_rng([MODES.index(mode), page_size])
    inp, md = bound(mode, rng, page_size, same_real=page_size == 1)
    plan = nm.prepare(mode, inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"], out=md,
                      extend_lens=inp["extend_lens"], next_n=NEXT_N, topk=30, page_size=page_size)
    for step in range(12):
        bs, max_len = int(rng.integers(0, CAP + 1)), int(rng.integers(0, W + 1))
        total = int(inp["extend_lens"][:bs].sum())
        want = snapshot(md)
        rows = bs if mode == "decode" else bs * NEXT_N if mode == "target_verify" else total
        width = -(-max_len // page_size)
        region = {"cache_seqlens": (bs,), "cu_seqlens_k": (bs + 1,), "nsa_cache_seqlens": (rows,),
                  "nsa_cu_seqlens_k": (rows + 1,), "seqlens_expanded": (rows,),
                  "page_table_1": (rows, max_len), "real_page_table": (rows, width)}
        got = {"decode": lambda: nm.decode(inp["seq_lens"][:bs], inp["req_pool_indices"][:bs],
                                           inp["req_to_token"], max_len=max_len, topk=30,
                                           page_size=page_size),
               "target_verify": lambda: nm.target_verify(
                   inp["seq_lens"][:bs], inp["req_pool_indices"][:bs], inp["req_to_token"],
                   next_n=NEXT_N, max_len=max_len, topk=30, page_size=page_size),
               "draft_extend": lambda: nm.draft_extend(
                   inp["seq_lens"][:bs], inp["extend_lens"][:bs], inp["req_pool_indices"][:bs],
                   inp["req_to_token"], total=total, max_len=max_len, topk=30,
                   page_size=page_size)}[mode]()
        for f, arr in want.items():
            arr[tuple(slice(n) for n in region[f])] = getattr(got, f)
        plan(bs, max_len, total)
        for f, arr in want.items():
            np.testing.assert_array_equal(getattr(md, f), arr, err_msg=f"step {step}: {f}")


def test_steps_that_do_not_fit_are_refused_and_write_nothing():
    rng = np.random.default_rng(3)
    inp, md = bound("target_verify", rng, 16)
    plan = nm.prepare("target_verify", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                      out=md, next_n=NEXT_N, page_size=16)
    before = snapshot(md)
    for bs, max_len, name in ((CAP + 1, 10, "bs"), (2, W + 1, "max_len"), (-1, 10, "bs")):
        with pytest.raises(ValueError, match=name):
            plan(bs, max_len)
    for f, arr in before.items():
        np.testing.assert_array_equal(getattr(md, f), arr, err_msg=f)


def test_draft_extend_needs_total():
    """Bug 8, on the host: the same TypeError as on the device (before, the message depended on
    the arrays: a ValueError about the sum on the host, nothing on the GPU)."""
    rng = np.random.default_rng(4)
    inp, md = bound("draft_extend", rng, 16)
    plan = nm.prepare("draft_extend", inp["seq_lens"], inp["req_pool_indices"], inp["req_to_token"],
                      out=md, extend_lens=inp["extend_lens"], page_size=16)
    before = snapshot(md)
    for bs in (0, 3):
        with pytest.raises(TypeError, match="draft_extend needs total"):
            plan(bs, 10)
    for f, arr in before.items():
        np.testing.assert_array_equal(getattr(md, f), arr, err_msg=f)
