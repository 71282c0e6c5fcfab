"""The one-shot call's key read through DLPack's C exchange API (`_core.buffer_key`), on any
machine: tests/exchange.py's ctypes producer describes NumPy memory as CUDA arrays. Equal for the
same buffers, different when anything validation reads changes, None (never an exception) for
what it cannot read; and the one-shot call's hit path through it, on tests/fakes.py's device."""

import re

import numpy as np
import pytest

import nsa_metadata as nm
from nsa_metadata import _arrays, _core, _plans
import exchange
import fakes
from exchange import KDLCPU, STREAM_BASE
from fakes import FakeTensor

T = exchange.producer()
CAP, P, W, PAGE = 8, 6, 32, 16
MODES = ["decode", "target_verify", "draft_extend"]


def buffers(cls=T, device=1, w=W):
    """Inputs with room for CAP requests and one output set (FIELDS order) of CAP rows."""
    a = lambda *shape, dtype=np.int32: cls(np.zeros(shape, dtype), device)  # noqa: E731
    rows_of = lambda n, width: cls(np.zeros((n, 2 * width), np.int32)[:, :width], device)  # noqa: E731
    inputs = dict(seq_lens=a(CAP, dtype=np.int64), req_pool_indices=a(CAP, dtype=np.int64),
                  extend_lens=a(CAP, dtype=np.int64), req_to_token=rows_of(P, w))
    md = nm.Metadata(a(CAP), a(CAP + 1), cls(np.zeros(2 * CAP, np.int32)[:CAP], device),
                     a(CAP + 1), rows_of(CAP, w), a(CAP, -(-w // PAGE)), a(CAP))
    return inputs, md


def fields(md):
    return tuple(getattr(md, f) for f in nm.Metadata.__slots__)


def key(inputs, outs, bs=4, ext=True):
    """buffer_key of the first bs requests (extend_lens too unless not ext)."""
    i = inputs
    return _core.buffer_key(i["seq_lens"][:bs], i["req_pool_indices"][:bs],
                            i["extend_lens"][:bs] if ext else None, i["req_to_token"], outs)


def test_the_same_buffers_give_the_same_key():
    inputs, md = buffers()
    first, second = key(inputs, fields(md)), key(inputs, fields(md))  # fresh slices each time
    assert first is not None and first == second
    raw, bs, stream = first
    assert type(raw) is bytes and bs == 4 and stream == STREAM_BASE + 1
    assert T.producer.streams[-1] == (2, 1)  # asked for the current stream of cuda:1
    other = buffers(device=3)
    assert key(*(other[0], fields(other[1])))[2] == STREAM_BASE + 3


def test_the_length_of_the_1d_inputs_is_not_keyed_but_their_stride_is():
    inputs, md = buffers()
    outs = fields(md)
    by_bs = {bs: key(inputs, outs, bs) for bs in range(CAP + 1)}
    assert [by_bs[bs][1] for bs in range(CAP + 1)] == list(range(CAP + 1))
    assert len({by_bs[bs][0] for bs in range(2, CAP + 1)}) == 1
    assert by_bs[0][0] == by_bs[1][0] != by_bs[2][0]  # below 2 elements no stride addresses
    strided = {k: v[::2] if k != "req_to_token" else v for k, v in inputs.items()}
    assert key(strided, outs, 3)[0] != by_bs[3][0]
    assert key(strided, outs, 1)[0] == by_bs[1][0]  # one element: its stride addresses nothing
    # broadcast inputs (stride 0, as sglang's static extend_lens) are not one-element ones
    broadcast = {k: T(np.broadcast_to(v.a[:1], (CAP,)), 1) if v.a.ndim == 1 else v
                 for k, v in inputs.items()}
    assert broadcast["extend_lens"].stride() == (0,)
    assert key(broadcast, outs, 4)[0] != key(inputs, outs, 1)[0]
    assert key(broadcast, outs, 4)[0] == key(broadcast, outs, 3)[0]


def variants():
    """(name, change) pairs: change(inputs, md) -> (inputs, outs) of a call that must key apart
    from buffers()'s, each changing one thing validation reads."""
    def shift(name):
        def change(i, md):
            return dict(i, **{name: type(i[name])(i[name].a[1:], 1)}), fields(md)
        return change

    def field(f, make):
        def change(i, md):
            md2 = nm.Metadata(**{g: getattr(md, g) for g in nm.Metadata.__slots__})
            setattr(md2, f, make(getattr(md, f)))
            return i, fields(md2)
        return change

    def dl(name, **report):
        def change(i, md):
            x = i[name][:]
            x.dl = report
            return dict(i, **{name: x}), fields(md)
        return change

    def restride(x, *strides):  # the same memory and shape, other strides (in elements)
        return T(np.lib.stride_tricks.as_strided(x.a, x.a.shape, [4 * k for k in strides]), 1)

    compact = lambda x: restride(x, x.a.shape[1], 1)  # noqa: E731  (buffers()'s: 2 * width)
    return [
        ("seq_lens address", shift("seq_lens")),
        ("req_pool_indices address", shift("req_pool_indices")),
        ("extend_lens address", shift("extend_lens")),
        ("req_to_token address", shift("req_to_token")),
        ("req_to_token shape", lambda i, md: (dict(i, req_to_token=i["req_to_token"][:, :W - 1]),
                                              fields(md))),
        ("req_to_token row stride", lambda i, md: (dict(i, req_to_token=compact(i["req_to_token"])),
                                                   fields(md))),
        ("req_pool_indices dtype", dl("req_pool_indices", bits=32)),
        ("seq_lens dtype code", dl("seq_lens", code=1)),
        ("req_to_token device", lambda i, md: (dict(i, req_to_token=T(i["req_to_token"].a, 0)),
                                               fields(md))),
        ("output address", field("cache_seqlens", lambda x: T(x.a[1:], 1))),
        ("output shape", field("nsa_cache_seqlens", lambda x: x[:CAP - 1])),
        ("output dtype", field("cu_seqlens_k", lambda x: T(x.a.view(np.uint32), 1))),
        ("output device", field("page_table_1", lambda x: T(x.a, 2))),
        ("output row stride", field("page_table_1", compact)),
        ("output column stride", field("page_table_1", lambda x: restride(x, 2 * W, 2))),
        ("1-D output stride", field("nsa_cache_seqlens", lambda x: restride(x, 2))),
        ("output omitted", field("seqlens_expanded", lambda x: None)),
        ("output given", field("paged_mqa_ctx_lens_2d", lambda x: T(np.zeros((CAP, 2), np.int32), 1))),
        ("extend_lens omitted", lambda i, md: (dict(i, extend_lens=None), fields(md))),
    ]


@pytest.mark.parametrize("name,change", variants(), ids=[v[0] for v in variants()])
def test_every_field_validation_reads_changes_the_key(name, change):
    inputs, md = buffers()
    base = key(inputs, fields(md))[0]
    i2, outs = change(inputs, md)
    got = _core.buffer_key(i2["seq_lens"][:4], i2["req_pool_indices"][:4],
                           None if i2["extend_lens"] is None else i2["extend_lens"][:4],
                           i2["req_to_token"], outs)
    assert got is not None and got[0] != base


def test_an_output_that_is_the_previous_object_is_keyed_as_such():
    """page_table_1 as its own real table (page_size 1) is not the same key as another object
    over the same memory: validation accepts the first and refuses the second."""
    inputs, md = buffers()
    md.real_page_table = md.page_table_1
    same = key(inputs, fields(md))[0]
    md.real_page_table = md.page_table_1[:]
    assert md.real_page_table.a.__array_interface__ == md.page_table_1.a.__array_interface__
    assert key(inputs, fields(md))[0] != same


def test_address_is_data_plus_byte_offset():
    inputs, md = buffers()
    split = dict(inputs, req_to_token=inputs["req_to_token"][:])
    split["req_to_token"].dl = {"split": 64}
    assert key(split, fields(md))[0] == key(inputs, fields(md))[0]


def test_strides_of_extent_one_dimensions_are_not_keyed():
    inputs, md = buffers()
    memory = np.zeros(3 * W, np.int32)
    one_row = lambda stride: T(np.lib.stride_tricks.as_strided(memory, (1, W), (4 * stride, 4)), 1)  # noqa: E731
    md.page_table_1 = one_row(W)
    base = key(inputs, fields(md))[0]
    md.page_table_1 = one_row(3 * W)
    assert key(inputs, fields(md))[0] == base
    md.page_table_1.dl = {"strides": (1, 1)}  # what a producer that normalises reports
    assert key(inputs, fields(md))[0] == base


def test_the_owning_reader_gives_the_same_key_and_releases_each_tensor():
    """A producer without dltensor_from_py_object_no_sync: its managed tensors are read and
    released, and (normalising extent-1 strides) they key as the non-owning reader's."""
    M = exchange.producer("OwningTensor", non_owning=False)
    a, md = buffers()
    b = {k: M(v.a, v.device) for k, v in a.items()}
    md.page_table_1 = T(np.zeros((1, 4 * W), np.int32)[:, :W], 1)
    mb = nm.Metadata(*[None if x is None else M(x.a, x.device) for x in fields(md)])
    want = key(a, fields(md))
    got = key(b, fields(mb))
    assert got == want
    assert M.producer.freed == len(M.producer.reads) == 3 + 1 + 7 and not M.producer.managed
    b["req_to_token"].dl = {"refuse": True}
    assert key(b, fields(mb)) is None
    assert not M.producer.managed


def test_older_producers_int_attribute_and_version_chain():
    a, md = buffers()
    want = key(a, fields(md))
    Old = exchange.producer("OldTensor", attr="__c_dlpack_exchange_api__", form="int")
    assert key({k: Old(v.a, 1) for k, v in a.items()},
               tuple(None if x is None else Old(x.a, 1) for x in fields(md))) == want
    newer = exchange.producer("NewerTensor", major=2, prev=T.producer)
    assert _core.exchange_api_version(newer) == (1, 3, True)  # walked back to major 1
    assert key({k: newer(v.a, 1) for k, v in a.items()},
               tuple(None if x is None else newer(x.a, 1) for x in fields(md))) == want
    assert T.producer.reads[-1].__class__ is newer  # major 1's callbacks read it
    assert _core.exchange_api_version(exchange.producer("Major2", major=2)) is None
    assert _core.exchange_api_version(exchange.producer("NoReader", non_owning=False)) == (1, 3, False)
    assert _core.exchange_api_version(T) == (1, 3, True)
    assert _core.exchange_api_version(FakeTensor) is None
    assert _core.exchange_api_version(np.ndarray) is None
    assert _core.exchange_api_version(T(np.zeros(1), 1)) is None  # (a type, not an instance)


def none_cases():
    def with_output(make):
        def case(i, outs):
            return i, outs[:2] + (make(outs[2]),) + outs[3:]
        return case

    def reported(name, **report):
        def case(i, outs):
            x = i[name][:]
            x.dl = report
            return dict(i, **{name: x}), outs
        return case

    Wrong = exchange.producer("WrongCapsule")
    Wrong.__dlpack_c_exchange_api__ = Wrong.producer.capsule(b"another_name")
    NoStream = exchange.producer("NoStream", stream=False)
    return [
        ("FakeTensor inputs", lambda i, outs: ({k: FakeTensor(v.a, 1) for k, v in i.items()}, outs)),
        ("NumPy inputs", lambda i, outs: ({k: v.a for k, v in i.items()}, outs)),
        ("one output of a type without the API", with_output(lambda x: FakeTensor(x.a, 1))),
        ("one output of another API type", with_output(lambda x: NoStream(x.a, 1))),
        ("one input of another type", lambda i, outs: (dict(i, req_pool_indices=i["req_pool_indices"].a), outs)),
        ("host memory", with_output(lambda x: _reported(x, device_type=KDLCPU))),
        ("a refused input", reported("req_pool_indices", refuse=True)),
        ("a refused output", with_output(lambda x: _reported(x, refuse=True))),
        ("a 3-D output", with_output(lambda x: T(np.zeros((2, 2, 2), np.int32), 1))),
        ("2-D seq_lens", lambda i, outs: (dict(i, seq_lens=T(np.zeros((CAP, 1), np.int64), 1)), outs)),
        ("req_pool_indices shorter", lambda i, outs: (dict(i, req_pool_indices=i["req_pool_indices"][:3]), outs)),
        ("extend_lens longer", lambda i, outs: (dict(i, extend_lens=T(np.zeros(5, np.int64), 1)), outs)),
        ("req_to_token None", lambda i, outs: (dict(i, req_to_token=None), outs)),
        ("outputs a list", lambda i, outs: (i, list(outs))),
        ("a capsule of another name", lambda i, outs: ({k: Wrong(v.a, 1) for k, v in i.items()},
                                                       tuple(None if x is None else Wrong(x.a, 1) for x in outs))),
        ("no current_work_stream", lambda i, outs: ({k: NoStream(v.a, 1) for k, v in i.items()},
                                                    tuple(None if x is None else NoStream(x.a, 1) for x in outs))),
        ("not arrays", lambda i, outs: ({k: object() for k in i}, outs)),
    ]


def _reported(x, **report):
    x = x[:]
    x.dl = report
    return x


@pytest.mark.parametrize("name,case", none_cases(), ids=[c[0] for c in none_cases()])
def test_none_for_what_it_cannot_read(name, case):
    inputs, md = buffers()
    i, outs = case({k: v[:4] if v.a.ndim == 1 else v for k, v in inputs.items()}, fields(md))
    assert _core.buffer_key(i["seq_lens"], i["req_pool_indices"], i["extend_lens"],
                            i["req_to_token"], outs) is None
    assert key(inputs, fields(md)) is not None  # (no Python error left pending)


# ---------------------------------------------------------------------------- the call's hit path

def step(mode, inputs, md, bs, max_len, **kw):
    args = (inputs["seq_lens"][:bs], inputs["req_pool_indices"][:bs], inputs["req_to_token"])
    kw = dict(dict(max_len=max_len, topk=30, page_size=PAGE, out=md), **kw)
    if mode == "decode":
        return nm.decode(*args, **kw)
    if mode == "target_verify":
        return nm.target_verify(*args, next_n=1, **kw)
    kw.setdefault("total", bs)
    return nm.draft_extend(args[0], inputs["extend_lens"][:bs], *args[1:], **kw)


def set_up(rec, mode):
    inputs, md = buffers()
    inputs["extend_lens"].a[:] = 1
    inputs["req_pool_indices"].a[:] = np.arange(CAP) % P
    if mode == "decode":
        md.seqlens_expanded = None
    return inputs, md


@pytest.mark.parametrize("mode", MODES)
def test_hits_read_the_buffers_through_the_exchange_api_only(rec, monkeypatch, mode):
    """Two plans for every step (one for bs below 2, whose input strides are not keyed); each hit
    is one C read of the key, one lookup and the launch on the producer's current stream (the
    Python attribute reads of _arrays are never made)."""
    inputs, md = set_up(rec, mode)
    step(mode, inputs, md, CAP, W)
    step(mode, inputs, md, 1, W)
    for name in ("keyed_type", "input_keys", "output_keys", "quick_keys", "describe"):
        monkeypatch.setattr(_arrays, name, None)  # a hit that reads any of them fails
    rng = np.random.default_rng(1)
    want = [(bs, W, bs if mode == "draft_extend" else 0, fakes.SENTINEL) for bs in (CAP, 1)]
    for _ in range(40):
        bs, max_len = int(rng.integers(0, CAP + 1)), int(rng.integers(0, W + 1))
        assert step(mode, inputs, md, bs, max_len) is md
        want.append((bs, max_len, bs if mode == "draft_extend" else 0, STREAM_BASE + 1))
    assert len(rec.plans) == 2 and len(_plans.PLANS) == 2
    assert rec.launches == want
    step(mode, inputs, md, 3, 5, stream=77)
    assert rec.launches[-1] == (3, 5, 3 if mode == "draft_extend" else 0, 77)


def test_the_key_keeps_every_setting_apart(rec):
    """Each call differs from the first in one setting or in its list of destination sets: a
    plan each, and each again is a hit."""
    inputs, md = set_up(rec, "target_verify")
    md.tile_scheduler_metadata = T(np.zeros((4, 8), np.int32), 1)
    md.num_splits = T(np.zeros(CAP + 1, np.int32), 1)
    other = nm.Metadata(*[None if x is None else T(np.zeros(x.a.shape, np.int32), 1)
                          for x in fields(md)])
    seq, pool, table = inputs["seq_lens"], inputs["req_pool_indices"], inputs["req_to_token"]
    base = dict(next_n=1, max_len=8, topk=30, page_size=PAGE, out=md)
    calls = [("target_verify", {}), ("target_verify", dict(topk=31)),
             ("target_verify", dict(kpool=2)), ("target_verify", dict(page_size=PAGE // 2)),
             ("target_verify", dict(next_n=2)), ("target_verify", dict(live=True)),
             ("target_verify", dict(out=[md])), ("target_verify", dict(out=(md, other))),
             ("target_verify", dict(schedule=nm.Schedule(4))),
             ("target_verify", dict(schedule=nm.Schedule(4, "sparse"))),
             ("decode", {}), ("draft_extend", {})]
    for _ in range(2):
        for mode, kw in calls:
            kw = dict(base, **kw)
            if mode == "target_verify":
                nm.target_verify(seq[:4], pool[:4], table, **kw)
            elif mode == "decode":
                kw.pop("next_n")
                nm.decode(seq[:4], pool[:4], table, **kw)
            else:
                kw.pop("next_n")
                nm.draft_extend(seq[:4], inputs["extend_lens"][:4], pool[:4], table, total=4, **kw)
        assert len(rec.plans) == len(calls)
    assert len(rec.launches) == 2 * len(calls)


def test_a_real_table_that_is_not_page_table_1_itself_is_validated(rec):
    inputs, md = set_up(rec, "decode")
    md.real_page_table = md.page_table_1
    step("decode", inputs, md, 4, 8, page_size=1)
    step("decode", inputs, md, 5, 9, page_size=1)
    md.real_page_table = md.page_table_1[:]  # the same memory, another object
    with pytest.raises(ValueError, match="overlaps"):
        step("decode", inputs, md, 5, 9, page_size=1)
    assert len(rec.launches) == 2


def test_misfits_and_unusual_calls_get_the_validated_paths_messages(rec):
    inputs, md = set_up(rec, "draft_extend")
    step("draft_extend", inputs, md, 4, 8)
    with pytest.raises(ValueError, match=re.escape(f"max_len = {W + 1} is outside [0, {W}]")):
        step("draft_extend", inputs, md, 4, W + 1)
    with pytest.raises(ValueError, match="req_pool_indices has 3 elements but seq_lens has 4"):
        nm.draft_extend(inputs["seq_lens"][:4], inputs["extend_lens"][:4],
                        inputs["req_pool_indices"][:3], inputs["req_to_token"], total=4,
                        max_len=8, topk=30, page_size=PAGE, out=md)
    with pytest.raises(TypeError, match="max_len must be an int"):
        step("draft_extend", inputs, md, 4, 8.0)
    with pytest.raises(TypeError, match="check must be a bool"):
        step("draft_extend", inputs, md, 4, 8, check=0)
    step("draft_extend", inputs, md, 4, 8, check=True)  # validated, with the status word
    assert len(rec.status) == 1 and len(rec.syncs) == 1
    assert len(rec.launches) == 2


def test_the_array_type_is_part_of_the_key(rec):
    """The same memory seen through another exchange type is validated again (a type that
    validation refuses as an output must not hit a plan bound through another)."""
    inputs, md = set_up(rec, "decode")
    step("decode", inputs, md, 4, 8)
    M = exchange.producer("OtherTensor", non_owning=False)
    other = {k: M(v.a, v.device) for k, v in inputs.items()}
    step("decode", other, nm.Metadata(*[None if x is None else M(x.a, x.device) for x in fields(md)]), 4, 8)
    assert len(rec.plans) == 2


def test_torch_tensors_take_the_exchange_path():
    """torch 2.11 and 2.13 carry DLPack 1.3's table with the non-owning reader (what the host
    figures in docs/performance.md rest on); a torch of that line without it would silently put
    every one-shot call back on the Python attribute reads."""
    torch = pytest.importorskip("torch")
    if tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2]) < (2, 11):
        pytest.skip(f"torch {torch.__version__}: not checked before 2.11")
    version = _core.exchange_api_version(torch.Tensor)
    assert version is not None and version[0] == 1 and version[2], version
