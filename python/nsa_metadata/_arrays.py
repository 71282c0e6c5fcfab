"""What nsa-metadata knows of array libraries: layout, device, current stream, allocation.

Everything here is host-side bookkeeping; nothing launches device work. torch and CuPy are
imported only when the caller already uses them. Any other `__dlpack__` producer is viewed,
zero-copy, through torch (or CuPy) and handled as that library's array.
"""

from __future__ import annotations

import functools
import sys

import numpy as np


class Arr:
    """The host-visible facts of one array: enough to validate it and to find its bytes."""

    __slots__ = ("obj", "lib", "device", "dtype", "shape", "strides", "ptr", "itemsize")

    def __init__(self, obj, lib, device, dtype, shape, strides, ptr, itemsize):
        self.obj, self.lib, self.device, self.dtype = obj, lib, device, dtype
        self.shape, self.strides, self.ptr, self.itemsize = shape, strides, ptr, itemsize

    def span(self):
        """[first byte, last byte + 1) that the array's elements cover (None when empty)."""
        if any(n == 0 for n in self.shape):
            return None
        lo = hi = self.ptr
        for n, s in zip(self.shape, self.strides):
            extent = (n - 1) * s * self.itemsize
            if extent < 0:
                lo += extent
            else:
                hi += extent
        return lo, hi + self.itemsize


def _torch():
    return sys.modules["torch"]


def _cupy():
    return sys.modules["cupy"]


_TORCH_DTYPES = {}


def describe(x, name):
    """An `Arr` for any supported array, or TypeError naming the argument."""
    if isinstance(x, np.ndarray):
        if any(st % x.itemsize for st in x.strides):
            raise ValueError(f"{name} has byte strides {x.strides}, not multiples of its item size")
        return Arr(x, "numpy", None, x.dtype.name, x.shape, tuple(st // x.itemsize for st in x.strides),
                   x.__array_interface__["data"][0], x.itemsize)
    mod = type(x).__module__.split(".", 1)[0]
    if mod == "torch":
        dtype = _TORCH_DTYPES.get(x.dtype)
        if dtype is None:
            dtype = _TORCH_DTYPES[x.dtype] = str(x.dtype).replace("torch.", "")
        if x.is_cuda:
            dev = x.get_device()
        elif x.device.type == "cpu":
            dev = None
        else:
            raise ValueError(f"{name} is on {x.device}; nsa-metadata runs on CUDA devices or the host")
        return Arr(x, "torch", dev, dtype, x.shape, x.stride(), x.data_ptr(), x.element_size())
    if mod == "cupy":
        return Arr(x, "cupy", x.device.id, x.dtype.name, x.shape,
                   tuple(st // x.itemsize for st in x.strides), x.data.ptr, x.itemsize)
    if hasattr(x, "__dlpack__"):
        for lib in ("torch", "cupy"):
            try:
                m = sys.modules.get(lib) or __import__(lib)
            except ImportError:
                continue
            return describe(m.from_dlpack(x), name)
        raise TypeError(f"{name} is a DLPack array; viewing it needs torch or CuPy installed")
    raise TypeError(f"{name} must be a NumPy, torch, CuPy or DLPack array, not {type(x).__name__}")


def fingerprint(x):
    """Everything validation reads of a device array (pointer, shape, strides, dtype), cheaply;
    None for arrays that are not torch or CuPy device arrays. Device pointers are unique
    across devices (unified addressing), so the pointer also fixes the device."""
    torch = sys.modules.get("torch")
    if torch is not None and type(x) is torch.Tensor:
        return (x.data_ptr(), x.shape, x.stride(), x.dtype) if x.is_cuda else None
    cupy = sys.modules.get("cupy")
    if cupy is not None and type(x) is cupy.ndarray:
        return (x.data.ptr, x.shape, x.strides, x.dtype.char)
    return None


def writeable(a):
    """False only for arrays their library marks read-only (NumPy)."""
    return a.lib != "numpy" or a.obj.flags.writeable


def host_view(a):
    """A NumPy array sharing the memory of a host array."""
    return a.obj if a.lib == "numpy" else a.obj.numpy()


def empty(lib, device, shape):
    """An uninitialised int32 array of `lib` on `device` (None: the host)."""
    if lib == "numpy" or (lib == "torch" and device is None):
        out = np.empty(shape, np.int32)
        return out if lib == "numpy" else _torch().from_numpy(out)
    if lib == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=torch.int32, device=torch.device("cuda", device))
    cupy = _cupy()
    with cupy.cuda.Device(device):
        return cupy.empty(shape, cupy.int32)


def empty_status(lib, device):
    """One int64 for the kernel's check=True status word (the kernel writes it, no fill needed)."""
    if lib == "torch":
        torch = _torch()
        return torch.empty(1, dtype=torch.int64, device=torch.device("cuda", device))
    cupy = _cupy()
    with cupy.cuda.Device(device):
        return cupy.empty(1, cupy.int64)


def synchronize(lib, device, stream):
    """Wait on the host for the work queued so far on `stream` (check=True only)."""
    if lib == "torch":
        torch = _torch()
        torch.cuda.ExternalStream(stream, device=torch.device("cuda", device)).synchronize()
    else:
        cupy = _cupy()
        with cupy.cuda.Device(device):
            cupy.cuda.runtime.streamSynchronize(stream)


def current_stream(lib, device):
    """The caller's current stream on `device`, as an integer handle."""
    return current_stream_getter(lib, device)()


def current_stream_getter(lib, device):
    """A no-argument callable returning the current stream of `device` (cheap to call)."""
    if lib == "torch":
        torch = _torch()
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # ~20x cheaper than the public call
        if raw is not None:
            return functools.partial(raw, device)
        return lambda: torch.cuda.current_stream(device).cuda_stream
    cupy = _cupy()
    return lambda: cupy.cuda.get_current_stream(device).ptr


def stream_handle(stream):
    """An integer stream handle from an int or a torch/CuPy stream object."""
    if isinstance(stream, bool):
        raise TypeError("stream must be an integer handle or a torch/CuPy stream, not bool")
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):
        h = getattr(stream, attr, None)
        if isinstance(h, int):
            return h
    raise TypeError(f"stream must be an integer handle or a torch/CuPy stream, not {type(stream).__name__}")


def to_list(a):
    """The elements of a 1-D array as Python ints, in one transfer (error paths only)."""
    return a.obj.tolist()


def scalar_int64(a, index):
    """One element of a device or host array as a Python int (synchronises: error paths only)."""
    v = a.obj[index]
    return int(v.item() if hasattr(v, "item") else v)
