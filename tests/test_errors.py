"""The bad-input matrix on NumPy inputs (SPEC "Errors").

Every host-visible misuse raises TypeError or ValueError whose message names the argument,
before anything is written: each case starts from a valid call whose output buffers are filled
with POISON, breaks one thing, and checks the error and that every buffer is byte-for-byte as
it was.
"""

import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import nsa_metadata as nm
from helpers import DLPackOnly
from nsa_metadata import Metadata

POISON = -424_242
I32 = np.int32
MODES = ("decode", "target_verify", "draft_extend")
MAX_LEN, TOPK, PAGE = 6, 4, 2
NEXT_N, EXT, TOTAL = 2, (2, 1, 1), 4


# ----------------------------------------------------------------------------- helpers

def a32(*values):
    return np.array(values, dtype=I32)


def table():
    return (np.arange(3 * 8, dtype=I32) * 7 - 50).reshape(3, 8)  # P=3, W=8, some negatives


def rows_of(mode):
    return {"decode": 3, "target_verify": 3 * NEXT_N, "draft_extend": TOTAL}[mode]


def blank(mode, fill=POISON):
    """Exactly-sized poisoned outputs for the valid call of `mode`."""
    bs, rows, width = 3, rows_of(mode), -(-MAX_LEN // PAGE)
    return Metadata(
        cache_seqlens=np.full(bs, fill, I32), cu_seqlens_k=np.full(bs + 1, fill, I32),
        nsa_cache_seqlens=np.full(rows, fill, I32), nsa_cu_seqlens_k=np.full(rows + 1, fill, I32),
        page_table_1=np.full((rows, MAX_LEN), fill, I32),
        real_page_table=np.full((rows, width), fill, I32),
        seqlens_expanded=None if mode == "decode" else np.full(rows, fill, I32))


def valid_call(mode):
    """The arguments of one valid call, as a dict the mutators edit."""
    kw = dict(max_len=MAX_LEN, topk=TOPK, page_size=PAGE)
    if mode == "target_verify":
        kw["next_n"] = NEXT_N
    if mode == "draft_extend":
        kw["total"] = TOTAL
    return dict(mode=mode, seq_lens=a32(3, 5, 2), req_pool_indices=a32(1, 0, 2),
                req_to_token=table(), extend_lens=a32(*EXT), kw=kw, out=blank(mode))


def invoke(c):
    args = (c["seq_lens"], c["req_pool_indices"], c["req_to_token"])
    if c["mode"] == "decode":
        return nm.decode(*args, out=c["out"], **c["kw"])
    if c["mode"] == "target_verify":
        return nm.target_verify(*args, out=c["out"], **c["kw"])
    return nm.draft_extend(c["seq_lens"], c["extend_lens"], *args[1:], out=c["out"], **c["kw"])


def every_array(c):
    """Every NumPy array the call can see (with the buffers views were cut from)."""
    found = [c[k] for k in ("seq_lens", "req_pool_indices", "req_to_token", "extend_lens")]
    outs = c["out"] if isinstance(c["out"], (list, tuple)) else [c["out"]]
    for md in outs:
        if isinstance(md, Metadata):
            found += [getattr(md, f) for f in Metadata.__slots__]
    found = [x for x in found if isinstance(x, np.ndarray)]
    return found + [x.base for x in found if isinstance(x.base, np.ndarray)]


def snapshot(c):
    return [(x, x.copy()) for x in every_array(c)]


def assert_untouched(snap):
    for x, before in snap:
        np.testing.assert_array_equal(x, before)


def names(*args):
    """A regex that matches a message naming every one of `args`, in any order."""
    return "".join(rf"(?=.*(?<![\w.]){re.escape(a)}(?!\w))" for a in args)


def setter(key, make):
    def mutate(c):
        c[key] = make(c)
    return mutate


def set_kw(key, value):
    def mutate(c):
        c["kw"][key] = value
    return mutate


def set_out(field, make):
    def mutate(c):
        setattr(c["out"], field, make(c))
    return mutate


def strided_table(col_stride):
    big = np.tile(table(), (1, col_stride))
    return big[:, ::col_stride]


def overlapping_rows(rows, width):
    """A rows x width int32 view whose rows start one element apart."""
    buf = np.full(rows + width, POISON, I32)
    return as_strided(buf, shape=(rows, width), strides=(4, 4))


def shared_slices(c):
    buf = np.full(20, POISON, I32)
    c["out"].cache_seqlens = buf[0:3]
    c["out"].cu_seqlens_k = buf[2:6]


def expanded_over_extend_lens(c):
    buf = np.full(8, POISON, I32)
    buf[3:6] = EXT
    c["extend_lens"] = buf[3:6]
    c["out"].seqlens_expanded = buf[0:4]


def same_metadata_twice(c):
    c["out"] = [c["out"], c["out"]]


def two_sets_share_a_table(c):
    other = blank(c["mode"])
    other.page_table_1 = c["out"].page_table_1
    c["out"] = [c["out"], other]


def negative_extend_with_raw_total(c):
    c["extend_lens"] = a32(2, -1, 1)  # places 3 rows (a negative length places none) ...
    c["kw"]["total"] = 2  # ... so the plain sum 2 is not the total


def many_destinations(n):
    def mutate(c):
        c["out"] = [blank(c["mode"]) for _ in range(n)]
    return mutate


# ----------------------------------------------------------------------------- the matrix

def case(mutate, exc, *arg_names, modes=MODES, id, regex=None):
    pattern = regex or names(*arg_names)
    return [pytest.param(m, mutate, exc, pattern, id=f"{m}-{id}") for m in modes]


TV_DE = ("target_verify", "draft_extend")
DE = ("draft_extend",)
TV = ("target_verify",)
DEC = ("decode",)

CASES = []
# wrong dtypes
for arg in ("seq_lens", "req_pool_indices"):
    for dt in (np.float64, np.float32, np.int16, np.uint32, np.uint64, np.int8, np.bool_):
        CASES += case(setter(arg, lambda c, a=arg, d=dt: c[a].astype(d)), TypeError, arg,
                      id=f"{arg}-{np.dtype(dt).name}")
for dt in (np.float64, np.int16, np.uint32):
    CASES += case(setter("extend_lens", lambda c, d=dt: c["extend_lens"].astype(d)), TypeError,
                  "extend_lens", modes=DE, id=f"extend_lens-{np.dtype(dt).name}")
for dt in (np.int64, np.float32, np.uint32, np.int16):
    CASES += case(setter("req_to_token", lambda c, d=dt: c["req_to_token"].astype(d)),
                  TypeError, "req_to_token", id=f"req_to_token-{np.dtype(dt).name}")
# not arrays at all
CASES += case(setter("seq_lens", lambda c: [3, 5, 2]), TypeError, "seq_lens", id="seq_lens-list")
CASES += case(setter("req_pool_indices", lambda c: None), TypeError, "req_pool_indices",
              id="req_pool_indices-None")
CASES += case(setter("req_to_token", lambda c: c["req_to_token"].tolist()), TypeError,
              "req_to_token", id="req_to_token-list")
CASES += case(setter("extend_lens", lambda c: None), TypeError, "extend_lens", modes=DE,
              id="extend_lens-None")
# wrong ndim
CASES += case(setter("seq_lens", lambda c: c["seq_lens"].reshape(1, 3)), ValueError, "seq_lens",
              id="seq_lens-2d")
CASES += case(setter("seq_lens", lambda c: np.array(3, I32)), ValueError, "seq_lens",
              id="seq_lens-0d")
CASES += case(setter("req_pool_indices", lambda c: c["req_pool_indices"].reshape(3, 1)),
              ValueError, "req_pool_indices", id="req_pool_indices-2d")
CASES += case(setter("extend_lens", lambda c: c["extend_lens"].reshape(1, 3)), ValueError,
              "extend_lens", modes=DE, id="extend_lens-2d")
CASES += case(setter("req_to_token", lambda c: c["req_to_token"].ravel()), ValueError,
              "req_to_token", id="req_to_token-1d")
CASES += case(setter("req_to_token", lambda c: c["req_to_token"].reshape(3, 2, 4)), ValueError,
              "req_to_token", id="req_to_token-3d")
# length mismatches
CASES += case(setter("req_pool_indices", lambda c: a32(1, 0)), ValueError, "req_pool_indices",
              id="req_pool_indices-short")
CASES += case(setter("req_pool_indices", lambda c: a32(1, 0, 2, 0)), ValueError,
              "req_pool_indices", id="req_pool_indices-long")
CASES += case(setter("extend_lens", lambda c: a32(2, 2)), ValueError, "extend_lens", modes=DE,
              id="extend_lens-short")
CASES += case(setter("extend_lens", lambda c: a32(2, 1, 1, 0)), ValueError, "extend_lens",
              modes=DE, id="extend_lens-long")
# strides
CASES += case(setter("req_to_token", lambda c: strided_table(2)), ValueError, "req_to_token",
              id="req_to_token-col-stride-2")
CASES += case(setter("req_to_token", lambda c: c["req_to_token"][:, ::-1]), ValueError,
              "req_to_token", id="req_to_token-col-stride-neg")
CASES += case(setter("req_to_token", lambda c: as_strided(c["req_to_token"], (3, 8), (16, 4))),
              ValueError, "req_to_token", id="req_to_token-row-stride-lt-W")
for f, w in (("page_table_1", MAX_LEN), ("real_page_table", -(-MAX_LEN // PAGE))):
    CASES += case(set_out(f, lambda c, f=f, w=w: np.full((rows_of(c["mode"]), 2 * w), POISON,
                                                         I32)[:, ::2]),
                  ValueError, f"out.{f}", id=f"out.{f}-col-stride-2")
    CASES += case(set_out(f, lambda c, f=f: getattr(c["out"], f)[:, ::-1]), ValueError,
                  f"out.{f}", id=f"out.{f}-col-stride-neg")
    CASES += case(set_out(f, lambda c, w=w: overlapping_rows(rows_of(c["mode"]), w)), ValueError,
                  f"out.{f}", id=f"out.{f}-overlapping-rows")
# outputs aliasing inputs or each other
CASES += case(set_out("cache_seqlens", lambda c: c["seq_lens"]), ValueError,
              "out.cache_seqlens", "seq_lens", id="out-is-seq_lens")
CASES += case(set_out("cache_seqlens", lambda c: c["req_pool_indices"]), ValueError,
              "out.cache_seqlens", "req_pool_indices", id="out-is-req_pool_indices")
CASES += case(set_out("nsa_cache_seqlens", lambda c: c["req_pool_indices"]), ValueError,
              "out.nsa_cache_seqlens", "req_pool_indices", modes=DEC,
              id="nsa-out-is-req_pool_indices")
CASES += case(set_out("page_table_1", lambda c: c["req_to_token"][:, :MAX_LEN]), ValueError,
              "out.page_table_1", "req_to_token", modes=DEC, id="out-inside-req_to_token")
CASES += case(set_out("nsa_cu_seqlens_k", lambda c: c["out"].cu_seqlens_k), ValueError,
              "out.nsa_cu_seqlens_k", "out.cu_seqlens_k", modes=DEC, id="same-buffer-twice")
CASES += case(set_out("real_page_table", lambda c: c["out"].page_table_1), ValueError,
              "out.real_page_table", "out.page_table_1", id="real-is-page_table_1-ps2")
CASES += case(shared_slices, ValueError, "out.cache_seqlens", "out.cu_seqlens_k",
              id="overlapping-slices")
CASES += case(expanded_over_extend_lens, ValueError, "out.seqlens_expanded", "extend_lens",
              modes=DE, id="out-overlaps-extend_lens")
CASES += case(same_metadata_twice, ValueError, id="out-list-same-metadata-twice",
              regex=r"out\[1\]\.\w+ overlaps out\[0\]\.\w+|out\[0\]\.\w+ overlaps out\[1\]\.\w+")
CASES += case(two_sets_share_a_table, ValueError, "out[0].page_table_1", "out[1].page_table_1",
              id="out-list-shared-table")
# outputs too small, of the wrong dtype or ndim, not arrays, or missing
SHORT = {
    "cache_seqlens": lambda c: np.full(2, POISON, I32),
    "cu_seqlens_k": lambda c: np.full(3, POISON, I32),
    "nsa_cache_seqlens": lambda c: np.full(rows_of(c["mode"]) - 1, POISON, I32),
    "nsa_cu_seqlens_k": lambda c: np.full(rows_of(c["mode"]), POISON, I32),
    "page_table_1": lambda c: np.full((rows_of(c["mode"]) - 1, MAX_LEN), POISON, I32),
    "real_page_table": lambda c: np.full((rows_of(c["mode"]), 2), POISON, I32),
}
for f, make in SHORT.items():
    CASES += case(set_out(f, make), ValueError, f"out.{f}", id=f"out.{f}-too-small")
CASES += case(set_out("page_table_1", lambda c: np.full((rows_of(c["mode"]), MAX_LEN - 1),
                                                        POISON, I32)),
              ValueError, "out.page_table_1", id="out.page_table_1-too-narrow")
CASES += case(set_out("seqlens_expanded", lambda c: np.full(rows_of(c["mode"]) - 1, POISON, I32)),
              ValueError, "out.seqlens_expanded", modes=TV_DE, id="out.seqlens_expanded-too-small")
for f, dt in (("cache_seqlens", np.int64), ("cu_seqlens_k", np.float32),
              ("nsa_cache_seqlens", np.uint32), ("nsa_cu_seqlens_k", np.int16),
              ("page_table_1", np.int64), ("real_page_table", np.uint32)):
    CASES += case(set_out(f, lambda c, f=f, d=dt: getattr(c["out"], f).astype(d)), TypeError,
                  f"out.{f}", id=f"out.{f}-{np.dtype(dt).name}")
CASES += case(set_out("seqlens_expanded", lambda c: c["out"].seqlens_expanded.astype(np.int64)),
              TypeError, "out.seqlens_expanded", modes=TV_DE, id="out.seqlens_expanded-int64")
CASES += case(set_out("cache_seqlens", lambda c: c["out"].cache_seqlens.reshape(1, 3)),
              ValueError, "out.cache_seqlens", id="out.cache_seqlens-2d")
CASES += case(set_out("page_table_1", lambda c: c["out"].page_table_1.ravel()), ValueError,
              "out.page_table_1", id="out.page_table_1-1d")
CASES += case(set_out("real_page_table", lambda c: c["out"].real_page_table[None]), ValueError,
              "out.real_page_table", id="out.real_page_table-3d")
CASES += case(set_out("cu_seqlens_k", lambda c: c["out"].cu_seqlens_k.tolist()), TypeError,
              "out.cu_seqlens_k", id="out.cu_seqlens_k-list")
for f in ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k"):
    CASES += case(set_out(f, lambda c: None), ValueError, f"out.{f}", id=f"out.{f}-missing")
CASES += case(set_out("seqlens_expanded", lambda c: None), ValueError, "out.seqlens_expanded",
              modes=TV_DE, id="out.seqlens_expanded-missing")
# scalars out of range or of the wrong type
for key, value, exc in (("max_len", 9, ValueError), ("max_len", -1, ValueError),
                        ("max_len", 6.0, TypeError), ("max_len", True, TypeError),
                        ("max_len", None, TypeError), ("max_len", "6", TypeError),
                        ("topk", 0, ValueError), ("topk", -4, ValueError),
                        ("topk", 2**31, ValueError), ("topk", True, TypeError),
                        ("topk", 4.0, TypeError), ("kpool", 0, ValueError),
                        ("kpool", 2.5, TypeError), ("page_size", 0, ValueError),
                        ("page_size", -64, ValueError), ("page_size", None, TypeError),
                        ("live", "yes", TypeError), ("live", 1, TypeError),
                        ("live", None, TypeError), ("check", "no", TypeError)):
    CASES += case(set_kw(key, value), exc, key, id=f"{key}={value!r}")
for value, exc in ((0, ValueError), (-1, ValueError), (1.0, TypeError), (False, TypeError),
                   (2**30, ValueError)):  # 3 * 2**30 rows exceed int32
    CASES += case(set_kw("next_n", value), exc, "next_n", modes=TV, id=f"next_n={value!r}")
for value, exc in ((-1, ValueError), (None, TypeError), (4.0, TypeError), (True, TypeError),
                   (2**31, ValueError), (3, ValueError), (5, ValueError), (0, ValueError)):
    CASES += case(set_kw("total", value), exc, "total", modes=DE, id=f"total={value!r}")
CASES += case(negative_extend_with_raw_total, ValueError, "extend_lens[1]", modes=DE,
              id="total-is-raw-sum-with-negative-extend")  # the negative entry is named (bug 9)
# the out argument itself
CASES += case(many_destinations(17), ValueError, "out", id="out-17-destinations")
CASES += case(many_destinations(0), ValueError, "out", id="out-empty-list")
CASES += case(setter("out", lambda c: [c["out"], {}]), TypeError, "out[1]", id="out-list-dict")
CASES += case(setter("out", lambda c: [c["out"], None]), TypeError, "out[1]", id="out-list-None")
CASES += case(setter("out", lambda c: {"cache_seqlens": c["out"].cache_seqlens}), TypeError,
              "out", id="out-dict")
CASES += case(setter("out", lambda c: c["out"].page_table_1), TypeError, "out", id="out-array")


@pytest.mark.parametrize("mode,mutate,exc,pattern", CASES)
def test_bad_input_raises_and_writes_nothing(mode, mutate, exc, pattern):
    c = valid_call(mode)
    mutate(c)
    snap = snapshot(c)
    with pytest.raises(exc, match=pattern):
        invoke(c)
    assert_untouched(snap)


@pytest.mark.parametrize("mode", MODES)
def test_the_valid_call_works_and_overwrites_the_poison(mode):
    """The baseline every case breaks: proves the untouched-checks above can fail."""
    c = valid_call(mode)
    before = snapshot(c)
    assert invoke(c) is c["out"]
    for f in ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
              "page_table_1", "real_page_table"):
        assert not (getattr(c["out"], f) == POISON).any(), f
    with pytest.raises(AssertionError):
        assert_untouched(before)


def test_sixteen_destinations_is_the_limit():
    c = valid_call("decode")
    many_destinations(16)(c)
    assert len(invoke(c)) == 16


def test_error_messages_quote_the_bad_value():
    c = valid_call("draft_extend")
    c["kw"]["total"] = 7
    with pytest.raises(ValueError, match=r"total = 7 but sum\(extend_lens\) = 4"):
        invoke(c)
    c = valid_call("decode")
    c["kw"]["max_len"] = 9
    with pytest.raises(ValueError, match=r"max_len = 9 is outside \[0, 8\]"):
        invoke(c)


def test_errors_without_out_too():
    with pytest.raises(TypeError, match="seq_lens"):
        nm.decode(np.array([1.0, 2.0]), a32(0, 1), table(), max_len=2)
    with pytest.raises(ValueError, match="max_len"):
        nm.target_verify(a32(1, 2), a32(0, 1), table(), next_n=1, max_len=-1)
    with pytest.raises(TypeError, match="total"):
        nm.draft_extend(a32(1, 2), a32(1, 1), a32(0, 1), table(), total=None, max_len=2)


# ----------------------------------------------------------------------------- reference entry

REF = {
    "decode": lambda s, p, t, e: nm.reference.decode(s, p, t, max_len=2),
    "target_verify": lambda s, p, t, e: nm.reference.target_verify(s, p, t, next_n=2, max_len=2),
    "draft_extend": lambda s, p, t, e: nm.reference.draft_extend(s, e, p, t, total=2, max_len=2),
}
ARGS = ("seq_lens", "req_pool_indices", "req_to_token", "extend_lens")
REF_CASES = [pytest.param(m, k, id=f"{m}-{ARGS[k]}") for m in MODES
             for k in range(4 if m == "draft_extend" else 3)]


@pytest.mark.parametrize("mode,which", REF_CASES)
def test_reference_refuses_non_numpy(mode, which):
    args = [a32(3, 4), a32(0, 1), table(), a32(1, 1)]
    REF[mode](*args)  # valid as given
    args[which] = args[which].tolist()
    with pytest.raises(TypeError, match="NumPy arrays, not list"):
        REF[mode](*args)


def test_reference_decode_refuses_non_numpy_with_numpy_named():
    with pytest.raises(TypeError, match="NumPy arrays, not list"):
        nm.reference.decode([3, 4], a32(0, 1), table(), max_len=2)
    with pytest.raises(TypeError, match="NumPy arrays, not memoryview"):
        nm.reference.decode(a32(3, 4), memoryview(a32(0, 1)), table(), max_len=2)


def test_reference_decode_equals_public_decode_on_numpy():
    a = nm.reference.decode(a32(3, 9), a32(2, 0), table(), max_len=6, topk=4, page_size=4)
    b = nm.decode(a32(3, 9), a32(2, 0), table(), max_len=6, topk=4, page_size=4)
    for f in ("cache_seqlens", "cu_seqlens_k", "nsa_cache_seqlens", "nsa_cu_seqlens_k",
              "page_table_1", "real_page_table"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    np.testing.assert_array_equal(a.real_page_table, [[62 // 4, 90 // 4], [-50 // 4, -22 // 4]])
    np.testing.assert_array_equal(a.real_page_table, [[15, 22], [-13, -6]])


# ----------------------------------------------------------------------------- once package bugs, now fixed

def test_inputs_may_share_memory():
    idx = a32(1, 2)  # used as both seq_lens and req_pool_indices
    md = nm.decode(idx, idx, table(), max_len=3, topk=4)  # fine without out=
    out = Metadata(*(np.full(n, POISON, I32) for n in (2, 3, 2, 3)),
                   page_table_1=np.full((2, 3), POISON, I32))
    nm.decode(idx, idx, table(), max_len=3, topk=4, out=out)
    np.testing.assert_array_equal(out.page_table_1, md.page_table_1)


def test_read_only_output_is_refused_before_writing():
    c = valid_call("decode")
    c["out"].page_table_1.flags.writeable = False
    snap = snapshot(c)
    with pytest.raises(ValueError, match=names("out.page_table_1")):
        invoke(c)
    assert_untouched(snap)


def _have(module):
    try:
        __import__(module)
        return True
    except ImportError:
        return False


class _UnreadableDLPack:
    def __dlpack__(self, stream=None):
        raise BufferError("not really")

    def __dlpack_device__(self):
        return (1, 0)


@pytest.mark.skipif(_have("torch") or _have("cupy"), reason="only without torch and CuPy")
def test_dlpack_input_without_torch_or_cupy_is_a_type_error():
    with pytest.raises(TypeError, match="seq_lens"):
        nm.decode(_UnreadableDLPack(), a32(0, 1), table(), max_len=2)


# ----------------------------------------------------------------------------- issue 13 bugs

def test_negative_extend_length_is_named_when_the_total_disagrees():
    """Bug 9: the message named the total and never the negative entry."""
    c = valid_call("draft_extend")
    c["extend_lens"], c["kw"]["total"] = a32(-1, 2, 2), 3
    snap = snapshot(c)
    with pytest.raises(ValueError, match=re.escape("extend_lens[0] = -1 is negative")):
        invoke(c)
    assert_untouched(snap)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream, exc", [("side", TypeError), (1.5, TypeError), (True, TypeError),
                                         (-1, ValueError), (2**64, ValueError)])
def test_stream_is_validated_on_the_host_too(mode, stream, exc):
    """Bug 10: the same call gives the same errors whatever the arrays; stream= was ignored on
    the host."""
    c = valid_call(mode)
    c["kw"]["stream"] = stream
    snap = snapshot(c)
    with pytest.raises(exc, match=names("stream")):
        invoke(c)
    assert_untouched(snap)
    c["out"] = None
    with pytest.raises(exc, match=names("stream")):
        invoke(c)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("field", ["cache_seqlens", "page_table_1"])
def test_dlpack_only_output_is_refused(mode, field):
    """Bug 2: an output seen only through DLPack (JAX) was written in place through torch's
    view of it. Outputs must be arrays the caller's library lets us write."""
    c = valid_call(mode)
    setattr(c["out"], field, DLPackOnly(getattr(c["out"], field)))
    snap = snapshot(c) + [(getattr(c["out"], field).a, getattr(c["out"], field).a.copy())]
    with pytest.raises(TypeError, match=rf"out\.{field} is seen only through DLPack"):
        invoke(c)
    assert_untouched(snap)
