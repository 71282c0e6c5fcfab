"""Arrays on the second GPU: the call runs on the arrays' device (cuda:1) and its current stream,
whatever device is current, leaves the current device as it was, and refuses arrays spread
over two devices before anything runs.

Every test needs two CUDA devices (conftest skips them otherwise).
"""

import re

import numpy as np
import pytest

import nsa_metadata as nm
from helpers import (POISON, Lib, call, check_device_matches_reference, poisoned_out, random_inputs,
                     repoison, rows_of)

pytestmark = pytest.mark.two_gpus
LIBS = ["torch", "cupy"]
MODES = ["decode", "target_verify", "draft_extend"]


class OnDevice(Lib):
    """torch or CuPy with every array made on one given device, whichever device is current
    (so helpers.check_device_matches_reference runs on that device)."""

    def __init__(self, name, index):
        super().__init__(name)
        self.index = index

    def device(self, index):
        """A context manager making `index` the current device."""
        if self.name == "torch":
            return self.m.cuda.device(index)
        return self.m.cuda.Device(index)

    def current_device(self):
        if self.name == "torch":
            return self.m.cuda.current_device()
        return self.m.cuda.runtime.getDevice()

    def device_of(self, a):
        return a.get_device() if self.name == "torch" else a.device.id

    def to_device(self, a):
        if self.name == "torch":
            return self.m.from_numpy(np.ascontiguousarray(a)).to(f"cuda:{self.index}")
        with self.m.cuda.Device(self.index):
            return self.m.asarray(a)

    def to_host(self, a):
        if self.name == "torch":
            return a.cpu().numpy()
        with self.m.cuda.Device(a.device.id):
            return self.m.asnumpy(a)

    def view_like(self, base_dev, host_view, host_base):
        with self.device(self.index):
            return super().view_like(base_dev, host_view, host_base)

    def synchronize(self):
        if self.name == "torch":
            self.m.cuda.synchronize(self.index)
        else:
            self.m.cuda.Device(self.index).synchronize()


@pytest.fixture(params=LIBS)
def lib(request):
    pytest.importorskip(request.param)
    return OnDevice(request.param, 1)


def on_device(lib, inp):
    return {k: (lib.to_device(v) if isinstance(v, np.ndarray) else v) for k, v in inp.items()}


def device_out(lib, mode, inp, max_len, page_size):
    """Poisoned, strided destination buffers on lib's device: (Metadata of views, the bases)."""
    md, bases = poisoned_out(mode, inp, max_len, page_size)
    dmd, dbases = nm.Metadata(), {}
    for f, base in bases.items():
        dbases[f] = lib.to_device(base)
        setattr(dmd, f, lib.view_like(dbases[f], getattr(md, f), base))
    return dmd, dbases


def assert_poisoned(lib, dbases):
    lib.synchronize()
    for f, dbase in dbases.items():
        assert (lib.to_host(dbase) == POISON).all(), f"{f} was written"


def assert_equals_reference(lib, md, want):
    for f in nm.Metadata.__slots__:
        w, g = getattr(want, f), getattr(md, f)
        assert (w is None) == (g is None), f
        if w is not None:
            np.testing.assert_array_equal(lib.to_host(g), w, err_msg=f)


# ----------------------------------------------------------------------------- a. the device

@pytest.mark.parametrize("mode", MODES)
def test_second_device_while_the_first_is_current(lib, mode):
    rng = np.random.default_rng(100 + MODES.index(mode))
    inp = random_inputs(rng, mode, 37, 130)
    want = call(nm, mode, inp, max_len=130, page_size=64, topk=50)
    with lib.device(0):
        d = on_device(lib, inp)
        got = call(nm, mode, d, rows_of(mode, inp), max_len=130, page_size=64, topk=50)
        assert lib.current_device() == 0, "the call changed the current device"
        for live in (False, True):  # given buffers: poisoned, strided, three destination sets
            check_device_matches_reference(lib, mode, inp, max_len=130, page_size=64, topk=50,
                                           live=live, ndest=3)
        assert lib.current_device() == 0, "the call changed the current device"
    lib.synchronize()
    for f in nm.Metadata.__slots__:
        if getattr(got, f) is not None:
            assert type(getattr(got, f)).__module__.split(".")[0] == lib.name, f
            assert lib.device_of(getattr(got, f)) == 1, f"{f} was not allocated on cuda:1"
    assert_equals_reference(lib, got, want)


@pytest.mark.parametrize("mode", MODES)
def test_prepared_on_the_second_device(lib, mode):
    rng = np.random.default_rng(200 + MODES.index(mode))
    inp = random_inputs(rng, mode, 21, 90)
    md, bases = poisoned_out(mode, inp, 90, 16)
    call(nm, mode, inp, max_len=90, page_size=16, out=md)  # the reference, into host buffers
    d = on_device(lib, inp)
    dmd, dbases = device_out(lib, mode, inp, 90, 16)
    kw = {}
    if mode == "target_verify":
        kw["next_n"] = inp["next_n"]
    if mode == "draft_extend":
        kw["extend_lens"] = d["extend_lens"]
    with lib.device(0):
        plan = nm.prepare(mode, d["seq_lens"], d["req_pool_indices"], d["req_to_token"], out=dmd,
                          page_size=16, **kw)
        plan(inp["seq_lens"].shape[0], 90, rows_of(mode, inp))
        assert lib.current_device() == 0, "the call changed the current device"
    lib.synchronize()
    for f, base in bases.items():
        np.testing.assert_array_equal(lib.to_host(dbases[f]), base, err_msg=f)


# ----------------------------------------------------------------------------- b. the stream

@pytest.mark.parametrize("mode", MODES)
def test_torch_current_stream_of_the_arrays_device(mode):
    """Queued behind a sleep on cuda:1's current (non-default) stream, with cuda:1 current and
    with cuda:0 current; and an explicit stream= of cuda:1 wins over the current one."""
    torch = pytest.importorskip("torch")
    lib = OnDevice("torch", 1)
    rng = np.random.default_rng(300 + MODES.index(mode))
    inp = random_inputs(rng, mode, 64, 2000, bad_pool=False)
    want = call(nm, mode, inp, max_len=2000, page_size=64)
    rows = rows_of(mode, inp)
    assert rows > 0
    d = on_device(lib, inp)
    torch.cuda.set_device(0)
    out = call(nm, mode, d, rows, max_len=2000, page_size=64)  # on cuda:1; loads the kernel there
    s1, other, reader = (torch.cuda.Stream(device=1) for _ in range(3))

    def poison():
        repoison(out)
        torch.cuda.synchronize(1)

    def early():  # read on a third stream of cuda:1, not ordered after s1 or `other`
        with torch.cuda.device(1), torch.cuda.stream(reader):
            return out.page_table_1[0, :4].cpu()

    for nested in (False, True):
        poison()
        with torch.cuda.device(1), torch.cuda.stream(s1):
            torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on s1
            if nested:  # cuda:0 current again; cuda:1's current stream is still s1
                with torch.cuda.device(0):
                    call(nm, mode, d, rows, max_len=2000, page_size=64, out=out)
            else:
                call(nm, mode, d, rows, max_len=2000, page_size=64, out=out)
        assert (early() == POISON).all(), "the kernel did not wait for cuda:1's current stream"
        s1.synchronize()
        assert_equals_reference(lib, out, want)
    assert torch.cuda.current_device() == 0

    poison()
    with torch.cuda.device(1), torch.cuda.stream(other):
        torch.cuda._sleep(200_000_000)
    with torch.cuda.device(1), torch.cuda.stream(s1):  # s1 idle and current on cuda:1
        with torch.cuda.device(0):
            call(nm, mode, d, rows, max_len=2000, page_size=64, out=out, stream=other)
    assert (early() == POISON).all(), "the kernel did not run on the stream passed"
    other.synchronize()
    assert_equals_reference(lib, out, want)
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("mode", MODES)
def test_cupy_current_stream_of_the_arrays_device(mode):
    cupy = pytest.importorskip("cupy")
    lib = OnDevice("cupy", 1)
    rng = np.random.default_rng(400 + MODES.index(mode))
    inp = random_inputs(rng, mode, 33, 500)
    with cupy.cuda.Device(1):
        s1 = cupy.cuda.Stream(non_blocking=True)
        other = cupy.cuda.Stream(non_blocking=True)
    with cupy.cuda.Device(1), s1:
        check_device_matches_reference(lib, mode, inp, max_len=500, page_size=64)
        with cupy.cuda.Device(0):  # cuda:1's current stream is still s1
            check_device_matches_reference(lib, mode, inp, max_len=500, page_size=64, live=True)
            assert cupy.cuda.runtime.getDevice() == 0
    with cupy.cuda.Device(0):
        check_device_matches_reference(lib, mode, inp, max_len=500, page_size=64, stream=other)
        assert cupy.cuda.runtime.getDevice() == 0


# ----------------------------------------------------------------------------- c. two devices

@pytest.mark.parametrize("mode", MODES)
def test_inputs_on_two_devices(lib, mode):
    on0 = OnDevice(lib.name, 0)
    rng = np.random.default_rng(500 + MODES.index(mode))
    inp = random_inputs(rng, mode, 12, 40)
    rows = rows_of(mode, inp)
    names = ["seq_lens", "req_pool_indices", "req_to_token"]
    if mode == "draft_extend":
        names.append("extend_lens")
    for name in names:
        d = {k: ((on0 if k == name else lib).to_device(v) if isinstance(v, np.ndarray) else v)
             for k, v in inp.items()}
        dmd, dbases = device_out(lib, mode, inp, 40, 16)
        # seq_lens sets the device the others must share
        msg = ("req_pool_indices is on cuda:1 but seq_lens is on cuda:0" if name == "seq_lens"
               else f"{name} is on cuda:0 but seq_lens is on cuda:1")
        with lib.device(0):
            with pytest.raises(ValueError, match=re.escape(msg)):
                call(nm, mode, d, rows, max_len=40, page_size=16, out=dmd)
            with pytest.raises(ValueError, match=re.escape(msg)):
                call(nm, mode, d, rows, max_len=40, page_size=16)
        assert_poisoned(lib, dbases)


@pytest.mark.parametrize("mode", MODES)
def test_outputs_on_another_device(lib, mode):
    on0 = OnDevice(lib.name, 0)
    rng = np.random.default_rng(600 + MODES.index(mode))
    inp = random_inputs(rng, mode, 12, 40)
    rows = rows_of(mode, inp)
    d = on_device(lib, inp)
    # (paged_mqa_ctx_lens_2d, never in these buffer sets: tests/test_device_logic.py names it)
    fields = [f for f in nm.Metadata.__slots__ if (mode != "decode" or f != "seqlens_expanded")
              and f != "paged_mqa_ctx_lens_2d"]
    for f in fields:
        dmd, dbases = device_out(lib, mode, inp, 40, 16)
        wrong, wrong_bases = device_out(on0, mode, inp, 40, 16)
        setattr(dmd, f, getattr(wrong, f))
        with lib.device(0):
            msg = f"out.{f} is on cuda:0 but the inputs are on cuda:1"
            with pytest.raises(ValueError, match=re.escape(msg)):
                call(nm, mode, d, rows, max_len=40, page_size=16, out=dmd)
        assert_poisoned(lib, dbases)
        assert_poisoned(on0, wrong_bases)
    # the second of two destination sets, and a host buffer
    good, good_bases = device_out(lib, mode, inp, 40, 16)
    bad, bad_bases = device_out(lib, mode, inp, 40, 16)
    wrong, wrong_bases = device_out(on0, mode, inp, 40, 16)
    bad.page_table_1 = wrong.page_table_1
    msg = "out[1].page_table_1 is on cuda:0 but the inputs are on cuda:1"
    with pytest.raises(ValueError, match=re.escape(msg)):
        call(nm, mode, d, rows, max_len=40, page_size=16, out=[good, bad])
    host_md, _ = poisoned_out(mode, inp, 40, 16)
    bad.page_table_1 = host_md.page_table_1
    msg = "out[1].page_table_1 is on the host but the inputs are on cuda:1"
    with pytest.raises(ValueError, match=re.escape(msg)):
        call(nm, mode, d, rows, max_len=40, page_size=16, out=[good, bad])
    assert (host_md.page_table_1 == POISON).all()
    for lb, bases in ((lib, good_bases), (lib, bad_bases), (on0, wrong_bases)):
        assert_poisoned(lb, bases)
