"""A producer of DLPack's C exchange API for tests on any machine: array types whose class carries
a table of ctypes callbacks that describe NumPy memory as a DLTensor (by default on CUDA device 1;
the memory is never dereferenced by the key), and give a current work stream per device.

`producer(...)` builds one such type, a `fakes.FakeTensor` (so tests/fakes.py's device layer
describes it as a torch CUDA array) whose slices are of the same type. Per instance, `dl` may
override what the callback reports: `device_type`, `strides`, `code`/`bits` (the dtype), `split`
(report the address as data + byte_offset), `refuse` (return -1).
"""

import ctypes

import numpy as np

from fakes import FakeTensor

STREAM_BASE = 0x5000  # a producer's current stream on device d is STREAM_BASE + d
KDLCUDA, KDLCPU = 2, 1
DTYPE_CODES = {"i": 0, "u": 1, "f": 2, "b": 6}


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8),
                ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
                ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class ManagedTensor(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


READ = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(DLTensor))
READ_MANAGED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object,
                                ctypes.POINTER(ctypes.POINTER(ManagedTensor)))
STREAM = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_int32,
                          ctypes.POINTER(ctypes.c_void_p))
DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class Api(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("prev_api", ctypes.c_void_p), ("managed_tensor_allocator", ctypes.c_void_p),
                ("managed_tensor_from_py_object_no_sync", READ_MANAGED),
                ("managed_tensor_to_py_object_no_sync", ctypes.c_void_p),
                ("dltensor_from_py_object_no_sync", READ), ("current_work_stream", STREAM)]


assert ctypes.sizeof(DLTensor) == 48 and ctypes.sizeof(ManagedTensor) == 80
assert ctypes.sizeof(Api) == 56

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)


def _fill(obj, t):
    """Describe obj (a FakeTensor over NumPy memory) into DLTensor t; False to refuse."""
    dl = obj.dl
    if dl.get("refuse"):
        return False
    a = obj.a
    shape = (ctypes.c_int64 * max(a.ndim, 1))(*a.shape)
    strides = (ctypes.c_int64 * max(a.ndim, 1))(*dl.get("strides", obj.stride()))
    obj.reported = (shape, strides)  # alive until the next read: longer than the consumer's call
    address = a.__array_interface__["data"][0]
    split = dl.get("split", 0)
    t.data, t.byte_offset = address - split, split
    t.device_type, t.device_id = dl.get("device_type", KDLCUDA), obj.device
    t.ndim = a.ndim
    t.code, t.bits, t.lanes = dl.get("code", DTYPE_CODES[a.dtype.kind]), dl.get("bits", a.itemsize * 8), 1
    t.shape, t.strides = shape, strides
    return True


class Producer:
    """One exchange table and what its callbacks saw."""

    def __init__(self, *, non_owning=True, major=1, minor=3, prev=None, stream=True):
        self.reads, self.managed, self.streams = [], {}, []
        self.freed = 0
        self._read = READ(self.read)
        self._read_managed = READ_MANAGED(self.read_managed)
        self._stream = STREAM(self.stream)
        self._deleter = DELETER(self.delete)
        self.api = Api(major=major, minor=minor,
                       prev_api=None if prev is None else ctypes.addressof(prev.api),
                       managed_tensor_from_py_object_no_sync=self._read_managed,
                       dltensor_from_py_object_no_sync=self._read if non_owning else READ(),
                       current_work_stream=self._stream if stream else STREAM())
        self.prev = prev  # (kept alive with this one)

    def address(self):
        return ctypes.addressof(self.api)

    def capsule(self, name=b"dlpack_exchange_api"):
        return _capsule_new(self.address(), name, None)

    def read(self, obj, out):
        self.reads.append(obj)
        return 0 if _fill(obj, out.contents) else -1

    def read_managed(self, obj, out):
        """The owning reader: a fresh ManagedTensor, released by `delete`; it reports stride 1
        for dimensions of extent 0 or 1, as torch's owning export does."""
        self.reads.append(obj)
        m = ManagedTensor(major=1, minor=3, deleter=ctypes.cast(self._deleter, ctypes.c_void_p))
        if not _fill(obj, m.dl_tensor):
            return -1
        for d, n in enumerate(obj.a.shape):
            if n < 2:
                m.dl_tensor.strides[d] = 1
        self.managed[ctypes.addressof(m)] = (m, obj.reported)
        out[0] = ctypes.pointer(m)
        return 0

    def delete(self, address):
        del self.managed[address]
        self.freed += 1

    def stream(self, device_type, device_id, out):
        self.streams.append((device_type, device_id))
        out[0] = STREAM_BASE + device_id
        return 0


def producer(name="ExchangeTensor", attr="__dlpack_c_exchange_api__", form="capsule", **kw):
    """A FakeTensor type carrying a new Producer's table as class attribute `attr`: a capsule,
    or (form="int") the table's address as an int. The Producer is the type's `producer`; a
    slice is of the same type and keeps `dl` but its strides."""
    p = Producer(**kw)

    def getitem(self, index):
        x = cls(self.a[index], self.device)
        x.dl = {k: v for k, v in self.dl.items() if k != "strides"}
        return x

    cls = type(name, (FakeTensor,), {attr: p.capsule() if form == "capsule" else p.address(),
                                     "producer": p, "dl": {}, "__getitem__": getitem})
    return cls
