"""A CUDA device that is not there, for the API's device logic on any machine.

`install(monkeypatch)` patches the device layer: `_arrays.describe` presents NumPy arrays as torch
arrays on a CUDA device (cuda:1 unless `Recorder.devices` says otherwise), and `FakeTensor`s as
torch arrays on their own device; allocation, the status word, host waits and current-stream
lookups are recorded; and the extension's `Plan` is replaced by one that records what it is
built with and every launch. A fake `torch` module whose `Tensor` is `FakeTensor` is installed
too, so the API's real cache keys are computed for FakeTensors exactly as for torch tensors.
"""

import sys
import threading
import types

import numpy as np

from nsa_metadata import _arrays, _core
from helpers import POISON

SENTINEL = 0xABC  # the handle the fake current-stream lookup returns


class FakeTensor:
    """What nsa_metadata reads of a torch CUDA tensor, backed by a NumPy array."""

    is_cuda = True

    def __init__(self, a, device=1):
        self.a, self.device = a, device

    def data_ptr(self):
        return self.a.__array_interface__["data"][0]

    def get_device(self):
        return self.device

    @property
    def shape(self):
        return self.a.shape

    def stride(self):
        return tuple(s // self.a.itemsize for s in self.a.strides)

    @property
    def dtype(self):
        return self.a.dtype.name

    def __len__(self):
        return len(self.a)

    def __getitem__(self, index):
        return FakeTensor(self.a[index], self.device)

    def expand(self, n):
        return FakeTensor(np.broadcast_to(self.a, (n,)), self.device)


class Recorder:
    """Everything the API asks of the (fake) device layer, in order."""

    def __init__(self):
        self.plans = []      # FakePlan of every plan built
        self.launches = []   # (bs, max_len, total, stream) of every launch
        self.streams = []    # devices whose current stream was asked for
        self.empty = []      # (lib, device, shape, stream) of every allocation
        self.status = []     # (lib, device, stream) of every status allocation
        self.syncs = []      # (lib, device, stream) of every host wait (check=True)
        self.devices = {}    # id(NumPy array) -> the device describe() reports (default 1)
        self.lock = threading.Lock()


def install(monkeypatch):
    """Patch the device layer; return the Recorder."""
    r = Recorder()
    real_describe, real_plan = _arrays.describe, _core.Plan

    def describe(x, name, *args, **kwargs):
        device = x.device if isinstance(x, FakeTensor) else r.devices.get(id(x), 1)
        a = real_describe(x.a if isinstance(x, FakeTensor) else x, name, *args, **kwargs)
        assert a.lib == "numpy", "these tests pass NumPy arrays and FakeTensors only"
        return _arrays.Arr(a.obj, "torch", device, a.dtype, a.shape, a.strides, a.ptr, a.itemsize)

    def empty(lib, device, shape, stream=None):
        r.empty.append((lib, device, tuple(shape), stream))
        return np.full(shape, POISON, np.int32)

    def empty_status(lib, device, stream=None):
        r.status.append((lib, device, stream))
        return np.full(1, -1, np.int64)  # the kernel's "no bad element"

    def synchronize(lib, device, stream):
        r.syncs.append((lib, device, stream))

    def current_stream_getter(lib, device):
        assert lib == "torch"

        def get():
            r.streams.append(device)
            return SENTINEL

        return get

    def current_stream(lib, device):
        return current_stream_getter(lib, device)()

    class FakePlan:
        """Records its binding; launches only check the capacities the real Plan checks."""

        def __init__(self, *args, **kw):
            self.args, self.kw = args, kw
            self.device = kw["device"]
            self.status = kw["status"]
            self.mode = kw["mode"]
            self.capacity = kw["capacity"]
            self.real = real_plan(*args, **kw)  # the real binding, for its checks
            with r.lock:
                r.plans.append(self)

        def check(self, bs, max_len, total):
            self.real.check(bs, max_len, total)

        def launch(self, bs, max_len, total, stream):
            self.real.check(bs, max_len, total)
            with r.lock:
                r.launches.append((bs, max_len, total, stream))

    torch = types.ModuleType("torch")
    torch.Tensor = FakeTensor
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setattr(_core, "Plan", FakePlan)
    monkeypatch.setattr(_arrays, "describe", describe)
    monkeypatch.setattr(_arrays, "empty", empty)
    monkeypatch.setattr(_arrays, "empty_status", empty_status)
    monkeypatch.setattr(_arrays, "synchronize", synchronize)
    monkeypatch.setattr(_arrays, "current_stream_getter", current_stream_getter)
    monkeypatch.setattr(_arrays, "current_stream", current_stream)
    return r
