// nanobind module: DLPack views -> plain nsa:: structs -> nsa::launch. No framework names here.
// Arrays are taken as they are (never converted or copied); a wrong dtype, layout or device is
// an error naming the argument.
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include "../kernels/launch.h"

namespace nb = nanobind;

namespace {

using Array = nb::ndarray<nb::device::cuda>;

Array view(nb::handle obj, const std::string& name, int device, size_t ndim) {
  Array a;
  if (!nb::try_cast(obj, a, /*convert=*/false))
    throw nb::type_error((name + " must be a CUDA array exporting DLPack").c_str());
  if (a.device_id() != device)
    throw nb::value_error((name + " is on cuda:" + std::to_string(a.device_id()) +
                           ", not cuda:" + std::to_string(device)).c_str());
  if (a.ndim() != ndim)
    throw nb::value_error((name + " must be " + std::to_string(ndim) + "-D").c_str());
  return a;
}

bool is_int(const Array& a, int bits) {
  return a.dtype().code == static_cast<uint8_t>(nb::dlpack::dtype_code::Int) && a.dtype().bits == bits &&
         a.dtype().lanes == 1;
}

// A 1-D index array; bs < 0 takes its length as the batch size.
nsa::IndexArray index_array(nb::handle obj, const std::string& name, int device, int64_t* bs) {
  const Array a = view(obj, name, device, 1);
  if (!is_int(a, 32) && !is_int(a, 64)) throw nb::type_error((name + " must be int32 or int64").c_str());
  if (*bs < 0) *bs = static_cast<int64_t>(a.shape(0));
  if (static_cast<int64_t>(a.shape(0)) != *bs)
    throw nb::value_error((name + " must have as many elements as seq_lens").c_str());
  return {a.data(), a.stride(0), is_int(a, 64)};
}

// An int32 output of at least `len` elements (1-D, contiguous) or `rows` x `len` (2-D).
int32_t* output(nb::handle obj, const std::string& name, int device, int64_t rows, int64_t len,
                int64_t* row_stride) {
  if (obj.is_none()) return nullptr;
  const Array a = view(obj, name, device, row_stride != nullptr ? 2 : 1);
  if (!is_int(a, 32)) throw nb::type_error((name + " must be int32").c_str());
  const size_t col = a.ndim() - 1;
  if (static_cast<int64_t>(a.shape(col)) < len || (row_stride && static_cast<int64_t>(a.shape(0)) < rows))
    throw nb::value_error((name + " is too small for this call").c_str());
  if (len > 1 && rows != 0 && a.stride(col) != 1) throw nb::value_error((name + " must have unit column stride").c_str());
  if (row_stride != nullptr) *row_stride = a.stride(0);
  return static_cast<int32_t*>(a.data());
}

void launch(int mode, nb::handle seq_lens, nb::handle req_pool_indices, nb::handle extend_lens,
            nb::handle req_to_token, nb::list dests, int64_t max_len, int32_t topk, int32_t kpool,
            int32_t page_size, int32_t next_n, int64_t total, bool live, nb::handle status,
            int device, uintptr_t stream) {
  if (mode < 0 || mode > 2) throw nb::value_error("mode must be 0, 1 or 2");
  nsa::Inputs in;
  nsa::Params p;
  p.mode = static_cast<nsa::Mode>(mode);
  in.bs = -1;
  in.seq_lens = index_array(seq_lens, "seq_lens", device, &in.bs);
  in.req_pool_indices = index_array(req_pool_indices, "req_pool_indices", device, &in.bs);
  if (p.mode == nsa::Mode::draft_extend)
    in.extend_lens = index_array(extend_lens, "extend_lens", device, &in.bs);
  const Array table = view(req_to_token, "req_to_token", device, 2);
  if (!is_int(table, 32)) throw nb::type_error("req_to_token must be int32");
  if (table.shape(1) > 1 && table.stride(1) != 1) throw nb::value_error("req_to_token must have unit column stride");
  if (max_len < 0 || max_len > static_cast<int64_t>(table.shape(1))) throw nb::value_error("max_len is outside [0, W]");
  in.req_to_token = static_cast<const int32_t*>(table.data());
  in.pool_rows = static_cast<int64_t>(table.shape(0));
  in.row_stride = table.stride(0);

  p.max_len = max_len;
  p.topk = topk;
  p.kpool = kpool;
  p.page_size = page_size;
  p.next_n = next_n;
  p.total = total;
  p.live = live;
  const int64_t rows = p.mode == nsa::Mode::decode ? in.bs
                       : p.mode == nsa::Mode::target_verify ? in.bs * next_n : total;
  const int64_t width = page_size > 0 ? (max_len + page_size - 1) / page_size : 0;

  nsa::Outputs out;
  if (nb::len(dests) < 1 || nb::len(dests) > static_cast<size_t>(nsa::kMaxDests))
    throw nb::value_error("out must hold 1 to 16 destination sets");
  out.n = static_cast<int>(nb::len(dests));
  for (int d = 0; d < out.n; ++d) {
    const nb::tuple t = nb::cast<nb::tuple>(dests[d]);
    if (nb::len(t) != 7) throw nb::value_error("a destination set has 7 fields");
    const std::string w = out.n == 1 ? "out." : "out[" + std::to_string(d) + "].";
    nsa::Dest& D = out.dest[d];
    D.cache_seqlens = output(t[0], w + "cache_seqlens", device, 1, in.bs, nullptr);
    D.cu_seqlens_k = output(t[1], w + "cu_seqlens_k", device, 1, in.bs + 1, nullptr);
    D.nsa_cache_seqlens = output(t[2], w + "nsa_cache_seqlens", device, 1, rows, nullptr);
    D.nsa_cu_seqlens_k = output(t[3], w + "nsa_cu_seqlens_k", device, 1, rows + 1, nullptr);
    D.seqlens_expanded = output(t[4], w + "seqlens_expanded", device, 1, rows, nullptr);
    D.page_table_1 = output(t[5], w + "page_table_1", device, rows, max_len, &D.page_table_1_stride);
    D.real_page_table = output(t[6], w + "real_page_table", device, rows, width, &D.real_page_table_stride);
  }
  if (!status.is_none()) {
    const Array s = view(status, "status", device, 1);
    if (!is_int(s, 64) || s.shape(0) < 1) throw nb::type_error("status must be one int64");
    p.status = static_cast<unsigned long long*>(s.data());
  }

  cudaError_t cuda_error = cudaSuccess;
  const int rc = nsa::launch(in, out, p, device, reinterpret_cast<cudaStream_t>(stream), &cuda_error);
  if (rc == nsa::kCudaError)
    throw std::runtime_error(std::string("nsa-metadata: ") + cudaGetErrorString(cuda_error));
  if (rc != nsa::kOk) throw nb::value_error((std::string("nsa-metadata: ") + nsa::status_string(rc)).c_str());
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "nsa-metadata CUDA kernels (use the nsa_metadata package, not this module)";
  m.def("launch", &launch, nb::arg("mode"), nb::arg("seq_lens"), nb::arg("req_pool_indices"),
        nb::arg("extend_lens").none(), nb::arg("req_to_token"), nb::arg("dests"), nb::arg("max_len"),
        nb::arg("topk"), nb::arg("kpool"), nb::arg("page_size"), nb::arg("next_n"), nb::arg("total"),
        nb::arg("live"), nb::arg("status").none(), nb::arg("device"), nb::arg("stream"),
        "Fill every destination set in one kernel launch on `stream` of `device` (validated args).");
}
