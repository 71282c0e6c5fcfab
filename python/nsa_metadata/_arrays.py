"""What nsa-metadata knows of array libraries: layout, device, current stream, allocation.

Everything here is host-side bookkeeping; nothing launches device work. torch and CuPy are
imported only when the caller already uses them. Any other `__dlpack__` producer is viewed,
zero-copy, through torch (or CuPy) and handled as that library's array.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable, ContextManager, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np


class Array(Protocol):
    """What the public API accepts as an array: NumPy, torch and CuPy arrays, and (as inputs)
    any other DLPack producer."""

    def __dlpack__(self) -> object: ...


class _TorchStream(Protocol):
    @property
    def cuda_stream(self) -> int: ...


class _CupyStream(Protocol):
    @property
    def ptr(self) -> int: ...


Stream = Union[int, _TorchStream, _CupyStream]
"""A CUDA stream: an integer handle, or a torch or CuPy stream object."""


class Arr:
    """The host-visible facts of one array: enough to validate it and to find its bytes."""

    __slots__ = ("obj", "lib", "device", "dtype", "shape", "strides", "ptr", "itemsize")

    def __init__(self, obj: Any, lib: str, device: Optional[int], dtype: str,
                 shape: Tuple[int, ...], strides: Tuple[int, ...], ptr: int, itemsize: int) -> None:
        self.obj, self.lib, self.device, self.dtype = obj, lib, device, dtype
        self.shape, self.strides, self.ptr, self.itemsize = shape, strides, ptr, itemsize

    def resized(self, shape: Tuple[int, ...]) -> "Arr":
        """The same memory and strides seen with another shape (a region of it, or a capacity)."""
        return Arr(self.obj, self.lib, self.device, self.dtype, shape, self.strides, self.ptr,
                   self.itemsize)

    def span(self) -> Optional[Tuple[int, int]]:
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


def _torch() -> Any:
    return sys.modules["torch"]


def _cupy() -> Any:
    return sys.modules["cupy"]


_TORCH_DTYPES: Dict[Any, str] = {}


def describe(x: Any, name: str, output: bool = False) -> Arr:
    """An `Arr` for any supported array, or TypeError naming the argument. An output (written
    in place) must be a NumPy, torch or CuPy array: one seen only through DLPack, such as an
    immutable JAX array, is refused, since writing through a view would go behind its owner."""
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
        if output:
            raise TypeError(f"{name} is seen only through DLPack ({type(x).__module__}."
                            f"{type(x).__name__}); outputs are written in place, so they must be "
                            "NumPy, torch or CuPy arrays")
        for lib in ("torch", "cupy"):
            try:
                m = sys.modules.get(lib) or __import__(lib)
            except ImportError:
                continue
            return describe(m.from_dlpack(x), name)
        raise TypeError(f"{name} is a DLPack array; viewing it needs torch or CuPy installed")
    raise TypeError(f"{name} must be a NumPy, torch, CuPy or DLPack array, not {type(x).__name__}")


def keyed_type(x: Any) -> Optional[Tuple[Any, bool]]:
    """(torch.Tensor, True) or (cupy.ndarray, False) when x is exactly one: the arrays whose
    one-shot plans are cached (see _plans.cache_key); None for any other x."""
    t = type(x)
    torch = sys.modules.get("torch")
    if torch is not None and t is torch.Tensor:
        return t, True
    cupy = sys.modules.get("cupy")
    if cupy is not None and t is cupy.ndarray:
        return t, False
    return None


def input_keys(t: Any, is_torch: bool, index: Sequence[Any], table: Any) -> Optional[Tuple[Any, ...]]:
    """What validation reads of the inputs, all of exact type `t`: (address, device, strides,
    dtype) of the 1-D `index` arrays, whose length is a step's bs, then (address, device, shape,
    strides, dtype) of `table`. None when one is of another type."""
    if type(table) is not t:
        return None
    for a in index:
        if type(a) is not t:
            return None
    if is_torch:
        return (*[(a.data_ptr(), a.get_device(), a.stride(), a.dtype) for a in index],
                (table.data_ptr(), table.get_device(), table.shape, table.stride(), table.dtype))
    return (*[(a.data.ptr, a.device.id, a.strides, a.dtype.char) for a in index],
            (table.data.ptr, table.device.id, table.shape, table.strides, table.dtype.char))


def output_keys(t: Any, is_torch: bool, arrays: Sequence[Any]) -> Optional[Tuple[Any, ...]]:
    """(address, device, shape, strides, dtype) of each array of exact type `t` (None stays
    None); None when one is of another type."""
    for a in arrays:
        if type(a) is not t and a is not None:
            return None
    if is_torch:
        return tuple([None if a is None else
                      (a.data_ptr(), a.get_device(), a.shape, a.stride(), a.dtype) for a in arrays])
    return tuple([None if a is None else (a.data.ptr, a.device.id, a.shape, a.strides, a.dtype.char)
                  for a in arrays])


def quick_keys(is_torch: bool, arrays: Sequence[Any]) -> List[Any]:
    """(address, shape) of each array (None stays None): what an array object changes when
    resized or moved in place (see _plans.cache_key)."""
    if is_torch:
        return [None if a is None else (a.data_ptr(), a.shape) for a in arrays]
    return [None if a is None else (a.data.ptr, a.shape) for a in arrays]


def repeat_first(x: Any, n: int) -> Any:
    """A view of `n` copies of x[0] (element stride 0) in x's own library, without a copy;
    x[:0] when n is 0. For an input only: the copies share one address."""
    if n == 0:
        return x[:0]
    if isinstance(x, np.ndarray):
        return np.broadcast_to(x[:1], (n,))
    keyed = keyed_type(x)
    if keyed is not None:
        return x[:1].expand(n) if keyed[1] else _cupy().broadcast_to(x[:1], (n,))
    raise TypeError(f"cannot view {type(x).__name__} with a zero stride; pass a NumPy, torch or "
                    "CuPy array")


def writeable(a: Arr) -> bool:
    """False only for arrays their library marks read-only (NumPy)."""
    return a.lib != "numpy" or bool(a.obj.flags.writeable)


def host_view(a: Arr) -> np.ndarray:
    """A NumPy array sharing the memory of a host array."""
    return a.obj if a.lib == "numpy" else a.obj.numpy()  # type: ignore[no-any-return]


def _allocating_on(lib: str, device: int, stream: Optional[int]) -> ContextManager[Any]:
    """Allocations inside belong to `stream` of `device` (the stream the kernel writes them on),
    so the caching allocators hand their memory out again only after that stream's work."""
    if lib == "torch":
        torch = _torch()
        if stream is None or stream == current_stream(lib, device):
            return contextlib.nullcontext()
        context: ContextManager[Any] = torch.cuda.stream(
            torch.cuda.ExternalStream(stream, device=torch.device("cuda", device)))
        return context
    cupy = _cupy()
    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(device))
    if stream is not None and stream != current_stream(lib, device):
        stack.enter_context(cupy.cuda.ExternalStream(stream, device))
    return stack


def empty(lib: str, device: Optional[int], shape: Tuple[int, ...], stream: Optional[int] = None) -> Any:
    """An uninitialised int32 array of `lib` on `device` (None: the host), allocated for
    `stream` (None: the current stream)."""
    if lib == "numpy" or (lib == "torch" and device is None):
        out = np.empty(shape, np.int32)
        return out if lib == "numpy" else _torch().from_numpy(out)
    assert device is not None
    with _allocating_on(lib, device, stream):
        if lib == "torch":
            torch = _torch()
            return torch.empty(shape, dtype=torch.int32, device=torch.device("cuda", device))
        cupy = _cupy()
        return cupy.empty(shape, cupy.int32)


def empty_status(lib: str, device: int, stream: Optional[int] = None) -> Any:
    """One int64 for the kernel's check=True status word (the kernel writes it, no fill
    needed), allocated for the launch stream like the outputs."""
    with _allocating_on(lib, device, stream):
        if lib == "torch":
            torch = _torch()
            return torch.empty(1, dtype=torch.int64, device=torch.device("cuda", device))
        cupy = _cupy()
        return cupy.empty(1, cupy.int64)


def synchronize(lib: str, device: int, stream: int) -> None:
    """Wait on the host for the work queued so far on `stream` (check=True only)."""
    if lib == "torch":
        torch = _torch()
        torch.cuda.ExternalStream(stream, device=torch.device("cuda", device)).synchronize()
    else:
        cupy = _cupy()
        with cupy.cuda.Device(device):
            cupy.cuda.runtime.streamSynchronize(stream)


def current_stream(lib: str, device: int) -> int:
    """The caller's current stream on `device`, as an integer handle."""
    return current_stream_getter(lib, device)()


def current_stream_getter(lib: str, device: int) -> Callable[[], int]:
    """A no-argument callable returning the current stream of `device` (cheap to call)."""
    if lib == "torch":
        torch = _torch()
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # ~20x cheaper than the public call
        if raw is not None:
            return functools.partial(raw, device)
        return lambda: torch.cuda.current_stream(device).cuda_stream
    cupy = _cupy()
    return lambda: cupy.cuda.get_current_stream(device).ptr


def stream_handle(stream: Stream) -> int:
    """An integer stream handle from an int or a torch/CuPy stream object."""
    if type(stream) is int and 0 <= stream < 2**64:
        return stream
    if isinstance(stream, bool):
        raise TypeError("stream must be an integer handle or a torch/CuPy stream, not bool")
    if isinstance(stream, int):
        raise ValueError(f"stream = {stream} is outside [0, 2**64)")
    for attr in ("cuda_stream", "ptr"):
        h = getattr(stream, attr, None)
        if type(h) is int:
            return stream_handle(h)
    raise TypeError(f"stream must be an integer handle or a torch/CuPy stream, not {type(stream).__name__}")


def to_list(a: Arr) -> List[int]:
    """The elements of a 1-D array as Python ints, in one transfer (error paths only)."""
    return a.obj.tolist()  # type: ignore[no-any-return]


def scalar_int64(a: Arr, index: int) -> int:
    """One element of a device or host array as a Python int (synchronises: error paths only)."""
    v = a.obj[index]
    return int(v.item() if hasattr(v, "item") else v)
