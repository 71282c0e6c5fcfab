"""The one-shot call's bound plans, on a fake device (tests/fakes.py): keyed on the identity and
device of the buffers, never on bs, max_len or total; a thread-safe LRU; a step the bound buffers
cannot take is validated again and refused with the message a fresh call gives."""

import re
import sys
import threading

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import _plans
import fakes
from fakes import FakeTensor
from helpers import random_inputs

MODES = ["decode", "target_verify", "draft_extend"]
CAP, W, NEXT_N, EXT, PAGE, TOPK = 12, 64, 3, 2, 16, 30


def buffers(mode, seed=0, device=1):
    """FakeTensor inputs of CAP requests and outputs with room for CAP requests and W columns."""
    rng = np.random.default_rng(seed)
    inp = random_inputs(rng, mode, CAP, W, P=CAP + 3, W=W, bad_pool=False, next_n=NEXT_N,
                        max_extend=EXT)
    inp["extend_lens"][:] = EXT
    rows = CAP * (1 if mode == "decode" else NEXT_N if mode == "target_verify" else EXT)
    full = lambda *shape: FakeTensor(np.full(shape, fakes.POISON, np.int32), device)  # noqa: E731
    md = nm.Metadata(full(CAP), full(CAP + 1), full(rows), full(rows + 1), full(rows, W),
                     full(rows, -(-W // PAGE)), None if mode == "decode" else full(rows))
    dev = {k: FakeTensor(v, device) for k, v in inp.items() if isinstance(v, np.ndarray)}
    return dev, md


def step(mode, dev, md, bs, max_len, **kw):
    """One one-shot call on the first bs requests."""
    args = (dev["seq_lens"][:bs], dev["req_pool_indices"][:bs], dev["req_to_token"])
    kw = dict(dict(max_len=max_len, topk=TOPK, page_size=PAGE, out=md), **kw)
    if mode == "decode":
        return nm.decode(*args, **kw)
    if mode == "target_verify":
        return nm.target_verify(*args, next_n=NEXT_N, **kw)
    kw.setdefault("total", bs * EXT)
    return nm.draft_extend(args[0], dev["extend_lens"][:bs], *args[1:], **kw)


@pytest.mark.parametrize("mode", MODES)
def test_bs_max_len_and_total_travel_per_call_through_one_plan(rec, mode):
    """The issue's cliff: max_len (and bs through slices) changing every call bound a new plan
    each time. Now one plan serves every step that fits its buffers."""
    dev, md = buffers(mode)
    rng = np.random.default_rng(1)
    want = []
    for _ in range(40):
        bs, max_len = int(rng.integers(0, CAP + 1)), int(rng.integers(0, W + 1))
        assert step(mode, dev, md, bs, max_len) is md
        want.append((bs, max_len, bs * EXT if mode == "draft_extend" else 0, fakes.SENTINEL))
    assert len(rec.plans) == 1, "one bind for every step on the same buffers"
    assert rec.launches == want
    assert len(_plans.PLANS) == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_step_that_does_not_fit_gets_the_fresh_calls_message(rec, mode):
    dev, md = buffers(mode)
    step(mode, dev, md, 5, 10)
    with pytest.raises(ValueError, match=re.escape(f"max_len = {W + 1} is outside [0, {W}]")):
        step(mode, dev, md, 5, W + 1)
    small = nm.Metadata(**{f: getattr(md, f) for f in nm.Metadata.__slots__})
    small.cache_seqlens = FakeTensor(np.zeros(4, np.int32))
    step(mode, dev, small, 4, 10)
    with pytest.raises(ValueError, match=re.escape("out.cache_seqlens has shape (4,); this call "
                                                   "needs at least (5,)")):
        step(mode, dev, small, 5, 10)
    assert len(rec.launches) == 2


def test_an_input_that_grows_into_an_output_is_refused(rec):
    """bs is not part of the key, so a longer seq_lens slice at the same address must still be
    checked against the outputs it may now overlap."""
    buf = np.zeros(3 * CAP, np.int32)
    dev, md = buffers("decode")
    seq, pool = FakeTensor(buf), FakeTensor(np.zeros(3 * CAP, np.int32))
    md.cache_seqlens = FakeTensor(buf[CAP - 2:2 * CAP - 2])
    for bs in (CAP - 2, 3, CAP - 3, 0):
        nm.decode(seq[:bs], pool[:bs], dev["req_to_token"], max_len=W, out=md, page_size=PAGE)
    with pytest.raises(ValueError, match="out.cache_seqlens overlaps seq_lens"):
        nm.decode(seq[:CAP - 1], pool[:CAP - 1], dev["req_to_token"], max_len=W, out=md,
                  page_size=PAGE)
    assert [launch[0] for launch in rec.launches] == [CAP - 2, 3, CAP - 3, 0]


def test_an_output_valid_only_for_a_narrow_step_is_checked_again(rec):
    """A column stride of 2 is fine while a step writes one column; a wider step is refused."""
    dev, md = buffers("decode")
    md.page_table_1 = FakeTensor(np.zeros((CAP, 2 * W), np.int32)[:, ::2])
    step("decode", dev, md, CAP, 1)
    with pytest.raises(ValueError, match="out.page_table_1 must have unit column stride"):
        step("decode", dev, md, CAP, 2)
    assert len(rec.launches) == 1


@pytest.mark.parametrize("mode", MODES)
def test_check_zero_is_refused_on_a_cached_plan_too(rec, mode):
    """Bug 7: check=0 was accepted on a cache hit and refused on a miss."""
    dev, md = buffers(mode)
    step(mode, dev, md, CAP, W)
    for bad in (0, 1, None, "no"):
        with pytest.raises(TypeError, match="check must be a bool"):
            step(mode, dev, md, CAP, W, check=bad)
    assert len(rec.launches) == 1


@pytest.mark.parametrize("mode", MODES)
def test_the_device_is_part_of_the_key(rec, mode):
    """Bug 11: the same addresses, shapes and strides on another device are another plan (a
    freed address reused on another GPU must not hit the plan bound on the first)."""
    dev, md = buffers(mode, device=1)
    step(mode, dev, md, CAP, W)
    # the same memory seen on cuda:0: what a freed address reused there looks like
    dev = {k: FakeTensor(x.a, 0) for k, x in dev.items()}
    md = nm.Metadata(**{f: None if getattr(md, f) is None else FakeTensor(getattr(md, f).a, 0)
                        for f in nm.Metadata.__slots__})
    step(mode, dev, md, CAP, W)
    assert [p.device for p in rec.plans] == [1, 0]
    for name in ("seq_lens", "page_table_1"):  # one array left behind is an error, not a hit
        dev1, md1 = dict(dev), nm.Metadata(**{f: getattr(md, f) for f in nm.Metadata.__slots__})
        if name == "seq_lens":
            dev1["seq_lens"] = FakeTensor(dev["seq_lens"].a, 1)
            msg = "req_pool_indices is on cuda:0 but seq_lens is on cuda:1"
        else:
            md1.page_table_1 = FakeTensor(md.page_table_1.a, 1)
            msg = "out.page_table_1 is on cuda:1 but the inputs are on cuda:0"
        with pytest.raises(ValueError, match=re.escape(msg)):
            step(mode, dev1, md1, CAP, W)
    assert len(rec.launches) == 2


def test_least_recently_used_plans_are_evicted(rec):
    sets = [buffers("decode", seed=s) for s in range(_plans.PLANS.capacity + 5)]
    for dev, md in sets:
        step("decode", dev, md, CAP, W)
    assert len(_plans.PLANS) == _plans.PLANS.capacity
    built = len(rec.plans)
    step("decode", *sets[-1], 3, 7)  # recent: a hit
    assert len(rec.plans) == built
    step("decode", *sets[0], 3, 7)  # evicted: bound again
    assert len(rec.plans) == built + 1


def test_eviction_from_many_threads(rec):
    """Bug 1: with the cache full, threads evicting at once raised KeyError (or 'dictionary
    changed size during iteration'). Every call must succeed."""
    sets = [buffers("decode", seed=s) for s in range(_plans.PLANS.capacity + 16)]
    errors = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def work(t):
        try:
            for k in range(150):
                dev, md = sets[(7 * t + 13 * k) % len(sets)]
                step("decode", dev, md, 1 + k % CAP, 1 + k % W)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(rec.launches) == 8 * 150
    assert len(_plans.PLANS) <= _plans.PLANS.capacity


def test_an_output_changed_in_place_is_validated_again(rec):
    """Outputs keep their key between calls (tests/fakes.py: the same FakeTensor objects); one
    resized or moved in place (torch's resize_, set_) is read again and validated."""
    dev, md = buffers("decode")
    step("decode", dev, md, CAP, W)
    md.cache_seqlens.a = md.cache_seqlens.a[:CAP - 1]  # resized in place: same address
    with pytest.raises(ValueError, match=re.escape(f"out.cache_seqlens has shape ({CAP - 1},)")):
        step("decode", dev, md, CAP, W)
    step("decode", dev, md, CAP - 1, W)
    md.page_table_1.a = np.zeros((CAP, W), np.int32)  # another buffer of the same shape
    step("decode", dev, md, CAP - 1, W - 1)
    assert len(rec.plans) == 3
    ptrs = [d.page_table_1 for d in rec.plans[-1].kw["dests"]]
    assert ptrs == [md.page_table_1.data_ptr()]
