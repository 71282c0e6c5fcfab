"""The extension's own contract, without a GPU: what it exports, the capacity checks of a bound
plan, that a launch leaves the plan as bound (bug 6), and that its nanobind settings stay its own
(bug 5)."""

import ctypes
import re
import struct
import subprocess
import sys
import textwrap

import pytest

from nsa_metadata import _core

MARK = 0x5EED00012345  # a table width no other field of the plan holds


def host_plan(mode="decode", *, bs=40, rows=100, width=2**40, real_width=2**40, next_n=1,
              page_size=1, table_width=MARK, device=-1):
    """A plan over no memory (null pointers); device -1: bound to host buffers, never launched."""
    none = _core.IndexArray(data=0, stride=1, is64=False)
    inputs = _core.Inputs(seq_lens=none, req_pool_indices=none, extend_lens=none, req_to_token=0,
                          pool_rows=0, table_width=table_width, row_stride=table_width)
    return _core.Plan(mode=_core.Mode.__members__[mode], inputs=inputs, dests=[_core.Dest()],
                      capacity=_core.Capacity(bs=bs, rows=rows, width=width, real_width=real_width),
                      topk=1, kpool=1, page_size=page_size, next_n=next_n, live=False, status=0,
                      device=device)


def test_constants_come_from_launch_h():
    assert _core.MAX_DESTS == 16
    assert [m.name for m in _core.Mode] == ["decode", "target_verify", "draft_extend"]
    assert [m.value for m in _core.Mode] == [0, 1, 2]
    assert [(k.name, int(k)) for k in _core.BadKind] == [
        ("bad_pool_index", 0), ("negative_length", 1), ("bad_extend", 2), ("overflow", 3),
        ("bad_total", 4)]


def test_the_status_word_is_decoded_in_one_place():
    assert _core.bad_element(-1) is None  # kStatusOk: all ones, read back as an int64
    assert _core.bad_element(17 << 3 | 2) == (17, _core.BadKind.bad_extend)
    assert _core.bad_element(0) == (0, _core.BadKind.bad_pool_index)


@pytest.mark.parametrize("mode, bs, next_n, total, rows", [
    ("decode", 5, 3, 9, 5), ("target_verify", 5, 3, 9, 15), ("draft_extend", 5, 3, 9, 9)])
def test_shape_of(mode, bs, next_n, total, rows):
    s = _core.shape_of(_core.Mode.__members__[mode], bs, next_n, total, 130, 64)
    assert (s.rows, s.width, s.real_width) == (rows, 130, 3)


def test_capacity_checks_name_what_does_not_fit():
    plan = host_plan("target_verify", bs=10, rows=25, width=70, real_width=4, next_n=3,
                     page_size=16, table_width=90)
    plan.check(8, 64, 0)
    for args, msg in (((11, 10, 0), "bs = 11 is outside [0, 10], the bound buffers' capacity"),
                      ((-1, 10, 0), "bs = -1 is outside [0, 10]"),
                      ((2, 71, 0), "max_len = 71 is outside [0, 70]"),
                      ((2, -1, 0), "max_len = -1 is outside [0, 70]"),
                      ((9, 10, 0), "this step needs 27 rows; the bound buffers hold 25")):
        with pytest.raises(ValueError, match=re.escape(msg)):
            plan.check(*args)
    plan = host_plan("decode", width=2**40, real_width=4, page_size=16, table_width=90)
    with pytest.raises(ValueError, match=re.escape("max_len = 91 is outside [0, 90]")):
        plan.check(1, 91, 0)
    with pytest.raises(ValueError, match="max_len needs a wider real_page_table"):
        plan.check(1, 65, 0)
    plan = host_plan("draft_extend", rows=25)
    plan.check(3, 10, 25)
    with pytest.raises(ValueError, match=re.escape("total = 26 is outside [0, 25]")):
        plan.check(3, 10, 26)
    with pytest.raises(ValueError, match=re.escape("total = -1 is outside [0, 25]")):
        plan.check(3, 10, -1)


def test_a_host_plan_is_never_launched():
    with pytest.raises(ValueError, match="bound to host buffers"):
        host_plan().launch(1, 2, 0, 0)


def plan_bytes(plan):
    """The bytes of the nanobind instance past its refcount and type: the bound C++ plan."""
    return ctypes.string_at(id(plan) + 16, type(plan).__basicsize__ - 16)


def test_a_launch_leaves_the_plan_as_bound():
    """Bug 6: the launch wrote bs, max_len and total into the plan's own fields before
    launching, safe only while the GIL serialises calls. Now every step is a local copy. Here
    (no GPU: a host plan) this covers check() and a refused launch only; the launch itself is
    covered on the device by test_gpu_one_path.py::test_prepared_launches_leave_the_plan_as_bound."""
    plan = host_plan()
    before = plan_bytes(plan)
    assert struct.pack("<q", MARK) in before, "the snapshot must see the plan's fields"
    for args in ((7, 0x12345678, 0x2345678), (0, 0x3456789, 0x456789A)):
        with pytest.raises(ValueError):
            plan.launch(*args, 0)
        plan.check(*args)
    assert plan_bytes(plan) == before


def test_leak_warnings_are_silenced_in_our_domain_only():
    """Bug 5: nb::set_leak_warnings(false) applies to a nanobind domain; in the default domain
    it silenced every other extension built with nanobind. Ours has a domain of its own, and a
    plan alive at exit still prints nothing."""
    code = textwrap.dedent("""
        import builtins, ctypes
        from nsa_metadata import _core
        api = ctypes.pythonapi
        api.PyInterpreterState_Get.restype = ctypes.c_void_p
        api.PyInterpreterState_GetDict.restype = ctypes.py_object
        api.PyInterpreterState_GetDict.argtypes = [ctypes.c_void_p]
        d = api.PyInterpreterState_GetDict(api.PyInterpreterState_Get())
        print(sorted(k for k in d if isinstance(k, str) and k.startswith("__nb_internals_")))
        none = _core.IndexArray()
        builtins.kept = _core.Plan(
            mode=_core.Mode.decode, dests=[_core.Dest()], capacity=_core.Capacity(), topk=1,
            inputs=_core.Inputs(seq_lens=none, req_pool_indices=none, extend_lens=none),
            kpool=1, page_size=1, next_n=1, live=False, status=0, device=-1)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    keys = eval(r.stdout.strip())  # noqa: S307 (our own subprocess's list of strings)
    assert len(keys) == 1 and keys[0].endswith("_nsa_metadata__"), keys
    assert "leak" not in r.stderr, r.stderr
