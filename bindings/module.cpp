// nanobind module: the typed contract between Python and nsa::launch. Python builds launch.h's
// structs by field name (device addresses as integers) once, when it binds a Plan; each step then
// passes four integers (bs, max_len, total, stream), checked against the bound capacities with
// nsa::shape_of, the function the launcher sizes its grid with. No framework names here:
// python/nsa_metadata/_arrays.py reads addresses and strides off the caller's arrays and
// _validate.py checks them. A one-shot call's plan is looked up by a key that buffer_key reads
// here through DLPack's C exchange API, when the arrays' type has one (whichever library it is).
//
// Why addresses and not nb::ndarray: importing one torch tensor through DLPack costs ~6.6 us
// (H100, nanobind 3.1, torch 2.11); a bind passes 9 to 11 arrays per destination set, and a
// one-shot call that has to bind again would pay that on every miss.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/vector.h>

#include "../kernels/launch.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

uintptr_t addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// The most a plan's buffers hold: requests, rows, page_table_1 columns, real-table columns.
struct Capacity {
  int64_t bs = 0, rows = 0, width = 0, real_width = 0;
};

std::string outside(const char* name, int64_t value, int64_t hi) {
  return std::string(name) + " = " + std::to_string(value) + " is outside [0, " + std::to_string(hi) + "]";
}

// A launch bound to validated buffers (see python/nsa_metadata/_plans.py). Immutable once built:
// a step works on a copy of the bound structs, so threads may share a plan and the GIL is
// released around the launch. device -1: bound to host buffers; it checks steps, never launches.
class Plan {
 public:
  Plan(nsa::Mode mode, const nsa::Inputs& inputs, const std::vector<nsa::Dest>& dests, const Capacity& capacity,
       int32_t topk, int32_t kpool, int32_t page_size, int32_t next_n, bool live, uintptr_t status, int device,
       int32_t num_sm_parts, nsa::ScheduleLengths schedule_lengths)
      : in_(inputs), cap_(capacity), device_(device) {
    if (dests.empty() || dests.size() > static_cast<size_t>(nsa::kMaxDests))
      throw nb::value_error("dests must hold 1 to 16 destination sets");
    if (topk < 1 || kpool < 1 || page_size < 1 || next_n < 1)
      throw nb::value_error("topk, kpool, page_size and next_n must be at least 1");
    if (cap_.bs < 0 || cap_.rows < 0 || cap_.width < 0 || cap_.real_width < 0 ||
        cap_.bs > std::numeric_limits<int64_t>::max() / next_n)
      throw nb::value_error("capacities must be non-negative (and bs * next_n an int64)");
    in_.bs = 0;
    out_.n = static_cast<int>(dests.size());
    std::copy(dests.begin(), dests.end(), out_.dest);
    p_.mode = mode;
    p_.topk = topk;
    p_.kpool = kpool;
    p_.page_size = page_size;
    p_.next_n = next_n;
    p_.live = live;
    p_.status = ptr<unsigned long long>(status);
    if (num_sm_parts < 0) throw nb::value_error("num_sm_parts must be >= 0 (0: no schedule)");
    if (num_sm_parts > 0 && mode == nsa::Mode::draft_extend)
      throw nb::value_error("the schedule is computed in decode and target_verify only");
    p_.num_sm_parts = num_sm_parts;
    p_.schedule_lengths = schedule_lengths;
  }

  // Why a step does not fit the bound buffers; empty when it does.
  std::string misfit(int64_t bs, int64_t max_len, int64_t total) const {
    if (bs < 0 || bs > cap_.bs) return outside("bs", bs, cap_.bs) + ", the bound buffers' capacity";
    const int64_t widest = std::min(in_.table_width, cap_.width);
    if (max_len < 0 || max_len > widest) return outside("max_len", max_len, widest);
    const bool extend = p_.mode == nsa::Mode::draft_extend;
    if (extend && (total < 0 || total > cap_.rows))
      return outside("total", total, cap_.rows) + ", the bound buffers' capacity";
    const nsa::Shape s = nsa::shape_of(p_.mode, bs, p_.next_n, extend ? total : 0, max_len, p_.page_size);
    if (s.rows > cap_.rows)
      return "this step needs " + std::to_string(s.rows) + " rows; the bound buffers hold " +
             std::to_string(cap_.rows);
    if (s.real_width > cap_.real_width) return "max_len needs a wider real_page_table than the bound one";
    if (p_.num_sm_parts > 0 && !nsa::schedule_fits(p_, s.rows))
      return "the schedule of " + std::to_string(s.rows) + " rows exceeds FlashMLA's int32 arithmetic " +
             "(rows * (ceil(longest / 64) + 5) + num_sm_parts - 1 > 2^31 - 1)";
    return {};
  }

  void check(int64_t bs, int64_t max_len, int64_t total) const {
    const std::string why = misfit(bs, max_len, total);
    if (!why.empty()) throw nb::value_error(why.c_str());
  }

  void launch(int64_t bs, int64_t max_len, int64_t total, uintptr_t stream) const {
    check(bs, max_len, total);
    if (device_ < 0) throw nb::value_error("this plan is bound to host buffers: it checks steps, never launches");
    nsa::Inputs in = in_;
    nsa::Params p = p_;
    in.bs = bs;
    p.max_len = max_len;
    p.total = p.mode == nsa::Mode::draft_extend ? total : 0;
    cudaError_t cuda_error = cudaSuccess;
    int rc;
    {
      nb::gil_scoped_release released;
      rc = nsa::launch(in, out_, p, device_, reinterpret_cast<cudaStream_t>(stream), &cuda_error);
    }
    if (rc == nsa::kCudaError)
      throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
    if (rc != nsa::kOk) throw nb::value_error((std::string("nsa-metadata: ") + nsa::status_string(rc)).c_str());
  }

  nsa::Mode mode() const { return p_.mode; }
  const Capacity& capacity() const { return cap_; }
  int device() const { return device_; }

 private:
  nsa::Inputs in_;
  nsa::Outputs out_;
  nsa::Params p_;
  Capacity cap_;
  int device_;
};

// check=True's status word, as the int64 the caller's array reads back: None when nothing is
// bad, else (request index, kind).
std::optional<std::pair<int64_t, nsa::BadKind>> bad_element(int64_t word) {
  const auto w = static_cast<unsigned long long>(word);
  if (w == nsa::kStatusOk) return std::nullopt;
  return std::make_pair(static_cast<int64_t>(w >> 3), static_cast<nsa::BadKind>(w & 7));
}

bool overlaps_previous_kernel(int device) {
  cudaError_t cuda_error = cudaSuccess;
  bool overlap = false;
  if (nsa::overlaps_previous_kernel(device, &overlap, &cuda_error) != nsa::kOk)
    throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
  return overlap;
}

void empty_launch(int device, uintptr_t stream) {
  cudaError_t cuda_error = cudaSuccess;
  if (nsa::launch_empty(device, reinterpret_cast<cudaStream_t>(stream), &cuda_error) != nsa::kOk)
    throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
}

// ---------------------------------------------------------------------------------------------
// The one-shot call's buffer key, read through DLPack's C exchange API (DLPack 1.2 and later).
//
// An array type that implements it carries, on the type, a table of C functions: one fills a
// DLTensor describing an object (no allocation, no Python call), another gives a device's
// current work stream. Reading a call's 10 to 14 arrays that way costs far less than the
// attribute reads the Python path makes (_plans.cache_key). The structs below are declared
// here, in the layout that DLPack's dlpack.h publishes; only what this file reads is named.
namespace dlpack {

struct Version {
  uint32_t major, minor;
};
struct Device {
  int32_t type, id;  // DLDeviceType (a C enum: an int), device index
};
struct DataType {
  uint8_t code, bits;
  uint16_t lanes;
};
struct Tensor {  // DLTensor
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL (compact row-major) was allowed before DLPack 1.2
  uint64_t byte_offset;
};
struct ManagedTensor {  // DLManagedTensorVersioned
  Version version;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
  uint64_t flags;
  Tensor tensor;
};
struct ApiHeader {  // stable across versions: the consumer checks the major version first
  Version version;
  ApiHeader* prev_api;  // an older table of the same producer, or NULL
};
struct Api {  // DLPackExchangeAPI, major version 1
  ApiHeader header;
  void* managed_tensor_allocator;  // (not used here)
  int (*managed_tensor_from_py_object_no_sync)(void* object, ManagedTensor** out);
  void* managed_tensor_to_py_object_no_sync;  // (not used here)
  int (*dltensor_from_py_object_no_sync)(void* object, Tensor* out);  // may be NULL
  int (*current_work_stream)(int32_t device_type, int32_t device_id, void** stream);
};
static_assert(sizeof(Tensor) == 48 && sizeof(ManagedTensor) == 80, "DLTensor's layout");
static_assert(sizeof(ApiHeader) == 16 && sizeof(Api) == 56, "DLPackExchangeAPI's layout");
static_assert(offsetof(Api, current_work_stream) == 48, "DLPackExchangeAPI's layout");

constexpr int32_t kCUDA = 2;  // kDLCUDA: CUDA device memory
const char* const kCapsuleName = "dlpack_exchange_api";

// The type attributes that may hold the table: DLPack 1.3's capsule, then the name producers
// used before it (a capsule or an int holding the address). Interned at module init.
PyObject* g_attr_names[2] = {nullptr, nullptr};

// The exchange table of `type` with major version 1, or NULL. The attribute is looked up in
// the type's own MRO (CPython's per-type attribute cache: no exception on a miss), every call,
// so a type that gets the attribute later (tvm-ffi installs one on older torch) is seen then.
// The table itself lives as long as the process (DLPack requires it).
const Api* exchange_api(PyTypeObject* type) {
  for (PyObject* name : g_attr_names) {
    PyObject* attr = _PyType_Lookup(type, name);  // borrowed
    if (attr == nullptr) continue;
    const void* at = nullptr;
    if (PyCapsule_IsValid(attr, kCapsuleName)) {
      at = PyCapsule_GetPointer(attr, kCapsuleName);
    } else if (PyLong_CheckExact(attr)) {
      at = PyLong_AsVoidPtr(attr);
    }
    if (PyErr_Occurred()) PyErr_Clear();
    auto* header = static_cast<const ApiHeader*>(at);
    for (int depth = 0; header != nullptr && depth < 8; ++depth, header = header->prev_api) {
      if (header->version.major == 1) return reinterpret_cast<const Api*>(header);
    }
  }
  return nullptr;
}

// What the key reads of one array (1-D or 2-D, on a CUDA device).
struct View {
  uint64_t address = 0;  // data + byte_offset: the first element
  Device device{};
  DataType dtype{};
  int32_t ndim = 0;
  int64_t shape[2] = {0, 0};
  int64_t strides[2] = {0, 0};
};

bool view_of(const Tensor& t, View& v) {
  if (t.ndim < 1 || t.ndim > 2 || t.shape == nullptr || t.device.type != kCUDA) return false;
  v.address = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(t.data)) + t.byte_offset;
  v.device = t.device;
  v.dtype = t.dtype;
  v.ndim = t.ndim;
  for (int d = 0; d < t.ndim; ++d) v.shape[d] = t.shape[d];
  if (t.strides != nullptr) {
    for (int d = 0; d < t.ndim; ++d) v.strides[d] = t.strides[d];
  } else {  // compact row-major
    v.strides[t.ndim - 1] = 1;
    if (t.ndim == 2) v.strides[0] = t.shape[1];
  }
  return true;
}

// Read `object` through `api`: the non-owning DLTensor when the producer has that function, else
// a managed tensor released right after. False (any Python error cleared) when the producer
// refuses it or it is not a 1-D or 2-D CUDA array.
bool read(const Api* api, PyObject* object, View& v) {
  if (api->dltensor_from_py_object_no_sync != nullptr) {
    Tensor t{};
    if (api->dltensor_from_py_object_no_sync(object, &t) != 0) {
      PyErr_Clear();
      return false;
    }
    return view_of(t, v);
  }
  ManagedTensor* owned = nullptr;
  if (api->managed_tensor_from_py_object_no_sync == nullptr ||
      api->managed_tensor_from_py_object_no_sync(object, &owned) != 0 || owned == nullptr) {
    PyErr_Clear();
    return false;
  }
  const bool ok = owned->version.major == 1 && view_of(owned->tensor, v);  // (major 1: the layout)
  if (owned->deleter != nullptr) owned->deleter(owned);
  return ok;
}

// The key's bytes, in the machine's byte order (a key never leaves the process).
class KeyBytes {
 public:
  template <class T>
  void put(T value) {
    const auto* p = reinterpret_cast<const char*>(&value);
    bytes_.append(p, sizeof(T));
  }
  void reserve(size_t n) { bytes_.reserve(n); }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

enum Tag : uint8_t { kAbsent = 0, kArray = 1, kSameAsPrevious = 2 };

// One array's part of the key. A dimension of extent 0 or 1 keys stride 0: its stride addresses
// nothing, and producers differ in what they report for it (one normalises it to 1). `batch`:
// one of the 1-D inputs, whose length is the step's bs and is not keyed; it keys only whether the
// length is at least 2 (its stride matters only then).
void put_view(KeyBytes& key, const View& v, bool batch) {
  key.put(kArray);
  key.put(v.address);
  key.put(v.device.type);
  key.put(v.device.id);
  key.put(v.dtype.code);
  key.put(v.dtype.bits);
  key.put(v.dtype.lanes);
  key.put(static_cast<uint8_t>(v.ndim));
  for (int d = 0; d < v.ndim; ++d) {
    const bool addresses = v.shape[d] >= 2;
    key.put(batch ? static_cast<int64_t>(addresses) : v.shape[d]);
    key.put(addresses ? v.strides[d] : int64_t{0});
  }
}

// See buffer_key's docstring (NB_MODULE below).
nb::object buffer_key(nb::handle seq_lens, nb::handle req_pool_indices, nb::handle extend_lens,
                      nb::handle req_to_token, nb::handle outputs) {
  PyObject* outs = outputs.ptr();
  // (a valid call passes at most kMaxDests sets of Metadata's 10 fields; 16 a set leaves room for
  // fields added later, which must not fall back to the Python path unnoticed)
  if (!PyTuple_CheckExact(outs) || PyTuple_GET_SIZE(outs) > 16 * nsa::kMaxDests) return nb::none();
  PyTypeObject* type = Py_TYPE(seq_lens.ptr());
  const Api* api = exchange_api(type);
  if (api == nullptr || api->current_work_stream == nullptr) return nb::none();
  auto same_type = [type](nb::handle h) { return h.is_none() || Py_TYPE(h.ptr()) == type; };
  const Py_ssize_t n_outs = PyTuple_GET_SIZE(outs);
  if (!same_type(req_pool_indices) || req_pool_indices.is_none() || !same_type(extend_lens) ||
      !same_type(req_to_token) || req_to_token.is_none())
    return nb::none();
  for (Py_ssize_t i = 0; i < n_outs; ++i)
    if (!same_type(PyTuple_GET_ITEM(outs, i))) return nb::none();

  KeyBytes key;
  key.reserve(64 * static_cast<size_t>(4 + n_outs));
  View lens, v;
  if (!read(api, seq_lens.ptr(), lens) || lens.ndim != 1) return nb::none();
  const int64_t bs = lens.shape[0];
  put_view(key, lens, true);
  for (nb::handle index : {req_pool_indices, extend_lens}) {
    if (index.is_none()) {
      key.put(kAbsent);
      continue;
    }
    if (!read(api, index.ptr(), v) || v.ndim != 1 || v.shape[0] != bs) return nb::none();
    put_view(key, v, true);
  }
  if (!read(api, req_to_token.ptr(), v)) return nb::none();
  put_view(key, v, false);
  for (Py_ssize_t i = 0; i < n_outs; ++i) {
    PyObject* x = PyTuple_GET_ITEM(outs, i);
    if (x == Py_None) {
      key.put(kAbsent);
    } else if (i > 0 && x == PyTuple_GET_ITEM(outs, i - 1)) {
      key.put(kSameAsPrevious);
    } else {
      if (!read(api, x, v)) return nb::none();
      put_view(key, v, false);
    }
  }
  void* stream = nullptr;
  if (api->current_work_stream(kCUDA, lens.device.id, &stream) != 0) {
    PyErr_Clear();
    return nb::none();
  }
  return nb::make_tuple(nb::bytes(key.bytes().data(), key.bytes().size()), bs,
                        static_cast<uint64_t>(reinterpret_cast<uintptr_t>(stream)));
}

// For the probe and the tests: (major, minor, whether it has the non-owning reader) of the
// exchange table `type` carries (major version 1), or None.
nb::object exchange_api_version(nb::handle type) {
  if (!PyType_Check(type.ptr())) return nb::none();
  const Api* api = exchange_api(reinterpret_cast<PyTypeObject*>(type.ptr()));
  if (api == nullptr) return nb::none();
  return nb::make_tuple(api->header.version.major, api->header.version.minor,
                        api->dltensor_from_py_object_no_sync != nullptr);
}

}  // namespace dlpack

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "nsa-metadata CUDA kernels (use the nsa_metadata package, not this module)";
  // A Plan still referenced at interpreter exit (a global Prepared, a test's frame) is not a leak
  // worth a warning in every user's log. This extension has a nanobind domain of its own
  // (NB_DOMAIN in CMakeLists.txt), so the setting reaches no other nanobind extension.
  nb::set_leak_warnings(false);

  m.attr("MAX_DESTS") = nsa::kMaxDests;
  nb::enum_<nsa::Mode>(m, "Mode", "SPEC's modes.")
      .value("decode", nsa::Mode::decode, "rows = bs")
      .value("target_verify", nsa::Mode::target_verify, "rows = bs * next_n")
      .value("draft_extend", nsa::Mode::draft_extend, "rows = total");
  nb::enum_<nsa::BadKind>(m, "BadKind", nb::is_arithmetic(),
                          "What check=True found first; request-major, then in this order.")
      .value("bad_pool_index", nsa::kBadPoolIndex, "req_pool_indices[i] outside [0, P)")
      .value("negative_length", nsa::kNegativeLength, "seq_lens[i] < 0")
      .value("bad_extend", nsa::kBadExtend, "extend_lens[i] negative or outside int32")
      .value("overflow", nsa::kOverflow, "an int32 overflow through request i")
      .value("bad_total", nsa::kBadTotal, "total != sum(extend_lens) (index bs)");

  nb::enum_<nsa::ScheduleLengths>(m, "ScheduleLengths", "The schedule's per-row token count.")
      .value("topk", nsa::ScheduleLengths::topk, "topk for every row (SGLang's call: no topk_length)")
      .value("sparse", nsa::ScheduleLengths::sparse, "nsa_cache_seqlens (FlashMLA's topk_length)");

  nb::class_<nsa::IndexArray>(m, "IndexArray", "A 1-D int32 or int64 device array.")
      .def("__init__",
           [](nsa::IndexArray* a, uintptr_t data, int64_t stride, bool is64) {
             new (a) nsa::IndexArray{ptr<const void>(data), stride, is64};
           },
           nb::kw_only(), "data"_a = 0, "stride"_a = 1, "is64"_a = false,
           "data: address; stride: in elements; is64: int64 elements (else int32).")
      .def_prop_ro("data", [](const nsa::IndexArray& a) { return addr(a.data); })
      .def_ro("stride", &nsa::IndexArray::stride)
      .def_ro("is64", &nsa::IndexArray::is64);

  nb::class_<nsa::Inputs>(m, "Inputs", "The input arrays (bs travels with each step).")
      .def("__init__",
           [](nsa::Inputs* in, const nsa::IndexArray& seq_lens, const nsa::IndexArray& req_pool_indices,
              const nsa::IndexArray& extend_lens, uintptr_t req_to_token, int64_t pool_rows,
              int64_t table_width, int64_t row_stride) {
             new (in) nsa::Inputs{seq_lens, req_pool_indices, extend_lens, ptr<const int32_t>(req_to_token),
                                  pool_rows, table_width, row_stride, 0};
           },
           nb::kw_only(), "seq_lens"_a, "req_pool_indices"_a, "extend_lens"_a = nsa::IndexArray{},
           "req_to_token"_a = 0, "pool_rows"_a = 0, "table_width"_a = 0, "row_stride"_a = 0,
           "req_to_token: address of the [pool_rows, table_width] int32 table, unit column stride, "
           "row_stride elements between rows; extend_lens: draft_extend only.")
      .def_ro("seq_lens", &nsa::Inputs::seq_lens)
      .def_ro("req_pool_indices", &nsa::Inputs::req_pool_indices)
      .def_ro("extend_lens", &nsa::Inputs::extend_lens)
      .def_prop_ro("req_to_token", [](const nsa::Inputs& in) { return addr(in.req_to_token); })
      .def_ro("pool_rows", &nsa::Inputs::pool_rows)
      .def_ro("table_width", &nsa::Inputs::table_width)
      .def_ro("row_stride", &nsa::Inputs::row_stride);

  nb::class_<nsa::Dest>(m, "Dest", "One destination set: int32 addresses (0: not written), strides in elements.")
      .def("__init__",
           [](nsa::Dest* d, uintptr_t cache_seqlens, uintptr_t cu_seqlens_k, uintptr_t nsa_cache_seqlens,
              uintptr_t nsa_cu_seqlens_k, uintptr_t seqlens_expanded, uintptr_t page_table_1,
              int64_t page_table_1_stride, uintptr_t real_page_table, int64_t real_page_table_stride,
              uintptr_t paged_mqa_ctx_lens_2d, int64_t paged_mqa_stride0, int64_t paged_mqa_stride1,
              uintptr_t tile_scheduler_metadata, uintptr_t num_splits) {
             new (d) nsa::Dest{};
             d->cache_seqlens = ptr<int32_t>(cache_seqlens);
             d->cu_seqlens_k = ptr<int32_t>(cu_seqlens_k);
             d->nsa_cache_seqlens = ptr<int32_t>(nsa_cache_seqlens);
             d->nsa_cu_seqlens_k = ptr<int32_t>(nsa_cu_seqlens_k);
             d->seqlens_expanded = ptr<int32_t>(seqlens_expanded);
             d->page_table_1 = ptr<int32_t>(page_table_1);
             d->page_table_1_stride = page_table_1_stride;
             d->real_page_table = ptr<int32_t>(real_page_table);
             d->real_page_table_stride = real_page_table_stride;
             d->paged_mqa_ctx_lens_2d = ptr<int32_t>(paged_mqa_ctx_lens_2d);
             d->paged_mqa_stride0 = paged_mqa_stride0;
             d->paged_mqa_stride1 = paged_mqa_stride1;
             d->tile_scheduler_metadata = ptr<int32_t>(tile_scheduler_metadata);
             d->num_splits = ptr<int32_t>(num_splits);
           },
           nb::kw_only(), "cache_seqlens"_a = 0, "cu_seqlens_k"_a = 0, "nsa_cache_seqlens"_a = 0,
           "nsa_cu_seqlens_k"_a = 0, "seqlens_expanded"_a = 0, "page_table_1"_a = 0,
           "page_table_1_stride"_a = 0, "real_page_table"_a = 0, "real_page_table_stride"_a = 0,
           "paged_mqa_ctx_lens_2d"_a = 0, "paged_mqa_stride0"_a = 0, "paged_mqa_stride1"_a = 0,
           "tile_scheduler_metadata"_a = 0, "num_splits"_a = 0,
           "paged_mqa_ctx_lens_2d (target_verify, optional): [bs, next_n] with strides "
           "paged_mqa_stride0/1 in elements. tile_scheduler_metadata [num_sm_parts, 8] and "
           "num_splits [rows + 1], contiguous: FlashMLA's schedule (both or neither).")
      .def_prop_ro("cache_seqlens", [](const nsa::Dest& d) { return addr(d.cache_seqlens); })
      .def_prop_ro("cu_seqlens_k", [](const nsa::Dest& d) { return addr(d.cu_seqlens_k); })
      .def_prop_ro("nsa_cache_seqlens", [](const nsa::Dest& d) { return addr(d.nsa_cache_seqlens); })
      .def_prop_ro("nsa_cu_seqlens_k", [](const nsa::Dest& d) { return addr(d.nsa_cu_seqlens_k); })
      .def_prop_ro("seqlens_expanded", [](const nsa::Dest& d) { return addr(d.seqlens_expanded); })
      .def_prop_ro("page_table_1", [](const nsa::Dest& d) { return addr(d.page_table_1); })
      .def_ro("page_table_1_stride", &nsa::Dest::page_table_1_stride)
      .def_prop_ro("real_page_table", [](const nsa::Dest& d) { return addr(d.real_page_table); })
      .def_ro("real_page_table_stride", &nsa::Dest::real_page_table_stride)
      .def_prop_ro("paged_mqa_ctx_lens_2d", [](const nsa::Dest& d) { return addr(d.paged_mqa_ctx_lens_2d); })
      .def_ro("paged_mqa_stride0", &nsa::Dest::paged_mqa_stride0)
      .def_ro("paged_mqa_stride1", &nsa::Dest::paged_mqa_stride1)
      .def_prop_ro("tile_scheduler_metadata", [](const nsa::Dest& d) { return addr(d.tile_scheduler_metadata); })
      .def_prop_ro("num_splits", [](const nsa::Dest& d) { return addr(d.num_splits); });

  nb::class_<Capacity>(m, "Capacity", "The most a plan's buffers hold.")
      .def("__init__",
           [](Capacity* c, int64_t bs, int64_t rows, int64_t width, int64_t real_width) {
             new (c) Capacity{bs, rows, width, real_width};
           },
           nb::kw_only(), "bs"_a = 0, "rows"_a = 0, "width"_a = 0, "real_width"_a = 0,
           "bs: requests; rows: nsa/page rows; width: page_table_1 columns; real_width: real-table columns.")
      .def_ro("bs", &Capacity::bs)
      .def_ro("rows", &Capacity::rows)
      .def_ro("width", &Capacity::width)
      .def_ro("real_width", &Capacity::real_width);

  nb::class_<nsa::Shape>(m, "Shape", "The regions one step writes: rows, page_table_1 and real-table widths.")
      .def_ro("rows", &nsa::Shape::rows)
      .def_ro("width", &nsa::Shape::width)
      .def_ro("real_width", &nsa::Shape::real_width);
  m.def("shape_of", &nsa::shape_of, "mode"_a, "bs"_a, "next_n"_a, "total"_a, "max_len"_a, "page_size"_a,
        "The regions one step writes (kernels/launch.h; the launcher sizes its grid with it).");

  nb::class_<Plan>(m, "Plan", "A launch bound to validated buffers; each step passes bs, max_len, total, stream.")
      .def(nb::init<nsa::Mode, const nsa::Inputs&, const std::vector<nsa::Dest>&, const Capacity&, int32_t,
                    int32_t, int32_t, int32_t, bool, uintptr_t, int, int32_t, nsa::ScheduleLengths>(),
           nb::kw_only(), "mode"_a, "inputs"_a, "dests"_a, "capacity"_a, "topk"_a, "kpool"_a, "page_size"_a,
           "next_n"_a, "live"_a, "status"_a, "device"_a, "num_sm_parts"_a = 0,
           "schedule_lengths"_a = nsa::ScheduleLengths::topk,
           "status: address of check=True's status word (0: none); device: -1 for host buffers; "
           "num_sm_parts > 0: FlashMLA's schedule into the sets that have its buffers.")
      .def("check", &Plan::check, "bs"_a, "max_len"_a, "total"_a,
           "Raise ValueError naming what of this step exceeds the bound buffers.")
      .def("launch", &Plan::launch, "bs"_a, "max_len"_a, "total"_a, "stream"_a,
           "check(), then one kernel launch for this step on `stream`; never synchronises.")
      .def_prop_ro("mode", &Plan::mode)
      .def_prop_ro("capacity", &Plan::capacity)
      .def_prop_ro("device", &Plan::device);

  m.def("bad_element", &bad_element, "status"_a,
        "Decode check=True's status word: None, or (request index, BadKind).");
  m.def("empty_launch", &empty_launch, "device"_a, "stream"_a,
        "Launch an empty kernel (the benchmark's host-cost floor).");
  dlpack::g_attr_names[0] = PyUnicode_InternFromString("__dlpack_c_exchange_api__");
  dlpack::g_attr_names[1] = PyUnicode_InternFromString("__c_dlpack_exchange_api__");
  if (dlpack::g_attr_names[0] == nullptr || dlpack::g_attr_names[1] == nullptr) throw nb::python_error();
  m.def("buffer_key", &dlpack::buffer_key, "seq_lens"_a.none(), "req_pool_indices"_a.none(),
        "extend_lens"_a.none(), "req_to_token"_a.none(), "outputs"_a.none(),
        nb::sig("def buffer_key(seq_lens: object, req_pool_indices: object, extend_lens: object, "
                "req_to_token: object, outputs: tuple[object, ...]) -> tuple[bytes, int, int] | None"),
        "(key, bs, stream) of a one-shot call's buffers, read through DLPack's C exchange API of their "
        "type; None when any of them cannot be read that way (another type, a type without the API, "
        "a producer that refuses one, not 1-D or 2-D, not CUDA device memory, lengths that differ), "
        "never an exception.\n\n"
        "All arrays must be of seq_lens' exact type; extend_lens and any of `outputs` may be None. "
        "key: bytes naming, for each array in order (inputs, then outputs), its address, device, "
        "dtype, ndim, extents and strides (stride 0 for an extent of 0 or 1), except the lengths of "
        "the three 1-D inputs (only whether each is at least 2); an output that is the very object "
        "before it in `outputs` is keyed as such. bs: seq_lens' length (req_pool_indices' and "
        "extend_lens' must equal it). stream: the current work stream of seq_lens' device.");
  m.def("exchange_api_version", &dlpack::exchange_api_version, "type"_a.none(),
        nb::sig("def exchange_api_version(type: object) -> tuple[int, int, bool] | None"),
        "(major, minor, has dltensor_from_py_object_no_sync) of the DLPack C exchange API that "
        "`type` carries (major version 1), or None.");
  m.def("overlaps_previous_kernel", &overlaps_previous_kernel, "device"_a,
        "Whether launches on `device` overlap the end of the stream's previous kernel (sm_90+ PTX "
        "and device, NSA_METADATA_PDL not '0'); the kernel waits for it before any load or store.");
}
