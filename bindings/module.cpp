// nanobind module: plain integers (device pointers, strides, capacities) -> nsa:: structs ->
// nsa::launch. No framework names here: python/nsa_metadata/_arrays.py reads the pointers and
// strides off the caller's arrays, and _api.py validates them, once per call or once per Plan.
//
// Why integers and not nb::ndarray: importing one torch tensor through DLPack costs ~6.6 us
// (H100, nanobind 3.1, torch 2.11); a call passes 9 to 11 arrays per destination set, which
// would cost more than the launch itself.
#include <string>
#include <tuple>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "../kernels/launch.h"

namespace nb = nanobind;

namespace {

using IndexDesc = std::tuple<uintptr_t, int64_t, bool>;      // pointer, element stride, int64?
using TableDesc = std::tuple<uintptr_t, int64_t, int64_t, int64_t>;  // pointer, P, W, row stride
// cache, cu, nsa, nsa_cu, expanded, page_table_1, its row stride, real table, its row stride
using DestDesc = std::tuple<uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, int64_t,
                            uintptr_t, int64_t>;

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

nsa::IndexArray index_array(const IndexDesc& d) {
  return {ptr<const void>(std::get<0>(d)), std::get<1>(d), std::get<2>(d)};
}

// A launch bound to its buffers. Built once (the buffers validated by _api), then called each
// step with the live batch size, max_len, total and stream, checked against the capacities.
class Plan {
 public:
  Plan(int mode, const IndexDesc& seq_lens, const IndexDesc& req_pool_indices,
       const IndexDesc& extend_lens, const TableDesc& req_to_token, const std::vector<DestDesc>& dests,
       int64_t bs_capacity, int64_t rows_capacity, int64_t width_capacity, int64_t real_width_capacity,
       int32_t topk, int32_t kpool, int32_t page_size, int32_t next_n, bool live, uintptr_t status,
       int device)
      : bs_capacity_(bs_capacity), rows_capacity_(rows_capacity), width_capacity_(width_capacity),
        real_width_capacity_(real_width_capacity), device_(device) {
    if (mode < 0 || mode > 2) throw nb::value_error("mode must be 0, 1 or 2");
    if (dests.empty() || dests.size() > static_cast<size_t>(nsa::kMaxDests))
      throw nb::value_error("out must hold 1 to 16 destination sets");
    p_.mode = static_cast<nsa::Mode>(mode);
    in_.seq_lens = index_array(seq_lens);
    in_.req_pool_indices = index_array(req_pool_indices);
    in_.extend_lens = index_array(extend_lens);
    in_.req_to_token = ptr<const int32_t>(std::get<0>(req_to_token));
    in_.pool_rows = std::get<1>(req_to_token);
    table_width_ = std::get<2>(req_to_token);
    in_.table_width = table_width_;
    in_.row_stride = std::get<3>(req_to_token);
    out_.n = static_cast<int>(dests.size());
    for (int d = 0; d < out_.n; ++d) {
      const DestDesc& t = dests[d];
      nsa::Dest& D = out_.dest[d];
      D.cache_seqlens = ptr<int32_t>(std::get<0>(t));
      D.cu_seqlens_k = ptr<int32_t>(std::get<1>(t));
      D.nsa_cache_seqlens = ptr<int32_t>(std::get<2>(t));
      D.nsa_cu_seqlens_k = ptr<int32_t>(std::get<3>(t));
      D.seqlens_expanded = ptr<int32_t>(std::get<4>(t));
      D.page_table_1 = ptr<int32_t>(std::get<5>(t));
      D.page_table_1_stride = std::get<6>(t);
      D.real_page_table = ptr<int32_t>(std::get<7>(t));
      D.real_page_table_stride = std::get<8>(t);
    }
    p_.topk = topk;
    p_.kpool = kpool;
    p_.page_size = page_size;
    p_.next_n = next_n;
    p_.live = live;
    p_.status = ptr<unsigned long long>(status);
  }

  void launch(int64_t bs, int64_t max_len, int64_t total, uintptr_t stream) {
    if (bs < 0 || bs > bs_capacity_)
      throw nb::value_error(("bs = " + std::to_string(bs) + " is outside [0, " +
                             std::to_string(bs_capacity_) + "], the bound buffers' capacity").c_str());
    if (max_len < 0 || max_len > table_width_ || max_len > width_capacity_)
      throw nb::value_error(("max_len = " + std::to_string(max_len) + " is outside [0, " +
                             std::to_string(std::min(table_width_, width_capacity_)) + "]").c_str());
    if ((max_len + p_.page_size - 1) / p_.page_size > real_width_capacity_)
      throw nb::value_error("max_len needs a wider real_page_table than the bound one");
    const int64_t rows = p_.mode == nsa::Mode::decode ? bs
                         : p_.mode == nsa::Mode::target_verify ? bs * p_.next_n : total;
    if (total < 0 || rows > rows_capacity_)
      throw nb::value_error(("this step needs " + std::to_string(rows) + " rows; the bound buffers hold " +
                             std::to_string(rows_capacity_)).c_str());
    in_.bs = bs;
    p_.max_len = max_len;
    p_.total = total;
    cudaError_t cuda_error = cudaSuccess;
    const int rc = nsa::launch(in_, out_, p_, device_, reinterpret_cast<cudaStream_t>(stream), &cuda_error);
    if (rc == nsa::kCudaError)
      throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
    if (rc != nsa::kOk) throw nb::value_error((std::string("nsa-metadata: ") + nsa::status_string(rc)).c_str());
  }

 private:
  nsa::Inputs in_;
  nsa::Outputs out_;
  nsa::Params p_;
  int64_t table_width_ = 0;
  int64_t bs_capacity_, rows_capacity_, width_capacity_, real_width_capacity_;
  int device_;
};

void empty_launch(int device, uintptr_t stream) {
  cudaError_t cuda_error = cudaSuccess;
  if (nsa::launch_empty(device, reinterpret_cast<cudaStream_t>(stream), &cuda_error) != nsa::kOk)
    throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "nsa-metadata CUDA kernels (use the nsa_metadata package, not this module)";
  // A Plan still referenced at interpreter exit (a global Prepared, a test's frame) is not a
  // leak worth a warning in every user's log.
  nb::set_leak_warnings(false);
  nb::class_<Plan>(m, "Plan", "A launch bound to validated device buffers (see nsa_metadata._api).")
      .def(nb::init<int, const IndexDesc&, const IndexDesc&, const IndexDesc&, const TableDesc&,
                    const std::vector<DestDesc>&, int64_t, int64_t, int64_t, int64_t, int32_t, int32_t,
                    int32_t, int32_t, bool, uintptr_t, int>(),
           nb::arg("mode"), nb::arg("seq_lens"), nb::arg("req_pool_indices"), nb::arg("extend_lens"),
           nb::arg("req_to_token"), nb::arg("dests"), nb::arg("bs_capacity"), nb::arg("rows_capacity"),
           nb::arg("width_capacity"), nb::arg("real_width_capacity"), nb::arg("topk"), nb::arg("kpool"),
           nb::arg("page_size"), nb::arg("next_n"), nb::arg("live"), nb::arg("status"), nb::arg("device"))
      .def("launch", &Plan::launch, nb::arg("bs"), nb::arg("max_len"), nb::arg("total"), nb::arg("stream"),
           "One kernel launch for this step on `stream`; never synchronises.");
  m.def("empty_launch", &empty_launch, nb::arg("device"), nb::arg("stream"),
        "Launch an empty kernel (the benchmark's host-cost floor).");
}
