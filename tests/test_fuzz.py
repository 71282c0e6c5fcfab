"""Seeded random cases on the GPU against the reference, across every mode and option.

NSA_FUZZ_CASES sets the count (default 10000); a failure prints its seed, which replays it alone
with NSA_FUZZ_SEED=<seed>."""

import os

import numpy as np
import pytest

from helpers import Lib, check_device_matches_reference, random_inputs

pytestmark = pytest.mark.gpu
MODES = ["decode", "target_verify", "draft_extend"]
TABLES = [("page_table_1", "real_page_table"), ("page_table_1",), ("real_page_table",), ()]


def one_case(lib, seed):
    rng = np.random.default_rng(seed)
    mode = MODES[rng.integers(3)]
    bs = int(rng.choice([0, 1, 2, 7, 31, 32, 33, 64, 255, 257, int(rng.integers(0, 600))]))
    max_len = int(rng.choice([0, 1, 3, 4, 5, 63, 64, 65, 255, 1000, int(rng.integers(0, 5000))]))
    page_size = int(rng.choice([1, 2, 3, 4, 16, 64, 100, 4096]))
    kpool = int(rng.choice([1, 1, 2, 3, 64]))
    topk = int(rng.choice([1, 7, 64, 2048, 2**31 - 1]))
    inp = random_inputs(rng, mode, bs, max_len, idx_dtype=rng.choice([np.int32, np.int64]),
                        bad_pool=bool(rng.integers(2)), next_n=int(rng.integers(1, 6)),
                        max_extend=int(rng.integers(0, 7)))
    check_device_matches_reference(
        lib, mode, inp, max_len=max_len, page_size=page_size, topk=topk, kpool=kpool,
        live=bool(rng.integers(2)), ndest=int(rng.choice([1, 1, 2, 3, 16])),
        tables=TABLES[rng.integers(4)], strided=bool(rng.integers(2)))


def test_fuzz_against_reference():
    pytest.importorskip("torch")
    libs = [Lib("torch")]
    try:
        libs.append(Lib("cupy"))
    except ImportError:
        pass
    seeds = ([int(os.environ["NSA_FUZZ_SEED"])] if "NSA_FUZZ_SEED" in os.environ
             else range(int(os.environ.get("NSA_FUZZ_CASES", "10000"))))
    ran = 0
    for seed in seeds:
        try:
            one_case(libs[seed % len(libs)], seed)
        except AssertionError as e:
            raise AssertionError(f"fuzz case NSA_FUZZ_SEED={seed} ({libs[seed % len(libs)].name}): {e}") from None
        ran += 1
    print(f"\nfuzz: {ran} cases, 0 mismatches")
