// The one kernel of a call, and its launcher. Knows CUDA and SPEC (through metadata.cuh).
//
// Block 0 builds the 1-D outputs: a block-wide scan over requests, tile by tile, so every batch
// size works in one launch; it also runs check=True's validation. Every other block copies one
// tile of page-table columns for one request: it reads those source columns once and writes
// them to each of the request's rows (next_n in target_verify, extend_lens[i] in draft_extend)
// in every destination set.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "launch.h"
#include "metadata.cuh"

namespace nsa {
namespace {

constexpr int kThreads = 256;
#ifndef NSA_UNROLL
#define NSA_UNROLL 4
#endif
constexpr int kUnroll = NSA_UNROLL;                   // independent 16-byte loads per thread
constexpr int64_t kTileCols = kThreads * 4 * kUnroll;  // source columns per page tile
constexpr int64_t kRealTile = kThreads * kUnroll;      // real columns per real-only tile
constexpr int kItems = 4;                             // requests per thread per scan step
#ifndef NSA_MIN_BLOCKS
#define NSA_MIN_BLOCKS 3  // H100: 1024 x 32768 decode 1.33x -> 1.09x the copy floor (80 registers)
#endif
constexpr int kMinBlocks = NSA_MIN_BLOCKS;  // resident blocks per SM the register budget allows

// Kernel parameters; kSlots destination sets travel by value (fewer slots, smaller launches).
template <int kSlots>
struct Args {
  Inputs in;
  struct {
    Dest dest[kSlots];
    int n;
  } out;
  Params p;
  int64_t rows;     // page/nsa rows: bs, bs * next_n, or total
  int64_t ctiles;   // column tiles per request
  bool any_pt1;     // some destination wants page_table_1 (else: real-only tiles)
  int ps_shift;     // log2(page_size) when it is a power of two, else -1
};

struct Sums {
  long long cache, nsa, rows;
};
struct AddSums {
  __device__ Sums operator()(const Sums& a, const Sums& b) const {
    return {a.cache + b.cache, a.nsa + b.nsa, a.rows + b.rows};
  }
};

// Rows a request owns, and their KV length: decode 1 row; target_verify next_n rows of length
// lens + next_n; draft_extend max(extend_lens[i], 0) rows of length lens.
template <class A>
__device__ inline int64_t rows_of(const A& a, int64_t i) {
  if (a.p.mode == Mode::decode) return 1;
  if (a.p.mode == Mode::target_verify) return a.p.next_n;
  const int64_t e = wrap32(load_index(a.in.extend_lens, i));
  return e > 0 ? e : 0;
}

template <class A>
__device__ inline int32_t cache_seqlen(const A& a, int32_t lens) {
  return a.p.mode == Mode::target_verify ? wrap32(int64_t{lens} + a.p.next_n) : lens;
}

// seqlens_expanded of row j of a request (decode: its length).
template <class A>
__device__ inline int64_t expanded(const A& a, int32_t lens, int64_t ext, int64_t j) {
  if (a.p.mode == Mode::decode) return lens;
  if (a.p.mode == Mode::target_verify) return wrap32(int64_t{lens} + j + 1);
  const int64_t v = int64_t{lens} - ext + j + 1;
  return v > 0 ? v : 0;
}

__device__ inline unsigned long long bad_key(int64_t i, int kind) {
  return (static_cast<unsigned long long>(i) << 3) | static_cast<unsigned long long>(kind);
}

template <class A>
__device__ void meta_block(const A& a) {
  using Scan = cub::BlockScan<Sums, kThreads>;
  using Reduce = cub::BlockReduce<unsigned long long, kThreads>;
  __shared__ union {
    typename Scan::TempStorage scan;
    typename Reduce::TempStorage reduce;
  } tmp;
  const Inputs& in = a.in;
  const Params& p = a.p;
  const int tid = threadIdx.x;
  const int64_t topk = p.topk, kpool = p.kpool;
  unsigned long long bad = ~0ull;
  Sums carry{0, 0, 0};

  if (tid == 0) {
    for (int d = 0; d < a.out.n; ++d) {
      a.out.dest[d].cu_seqlens_k[0] = 0;
      a.out.dest[d].nsa_cu_seqlens_k[0] = 0;
    }
  }
  for (int64_t base = 0; base < in.bs; base += int64_t{kThreads} * kItems) {
    int32_t lens[kItems];
    int64_t nrows[kItems];  // rows the request owns
    Sums mine{0, 0, 0};
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t i = base + int64_t{tid} * kItems + k;
      lens[k] = 0;
      nrows[k] = 0;
      if (i >= in.bs) continue;
      const int64_t raw = load_index(in.seq_lens, i);
      lens[k] = wrap32(raw);
      nrows[k] = rows_of(a, i);
      const int64_t cache = cache_seqlen(a, lens[k]);
      int64_t nsa = 0;
      if (p.mode == Mode::decode) {
        nsa = sparse(lens[k], topk, kpool);
      } else if (p.mode == Mode::target_verify) {
        for (int64_t j = 0; j < nrows[k]; ++j) nsa += sparse(expanded(a, lens[k], 0, j), topk, kpool);
      } else {  // only rows below total are ever written: sum those in closed form
        const int64_t m = nrows[k] < a.rows ? nrows[k] : a.rows;
        const int64_t lo = int64_t{lens[k]} - nrows[k] + 1;
        nsa = sparse_range_sum(lo, lo + m - 1, topk, kpool);
      }
      mine = AddSums()(mine, Sums{cache, nsa, nrows[k]});
      if (p.status != nullptr) {
        const int64_t q = load_index(in.req_pool_indices, i);
        bool over = outside_int32(raw) ||
                    (p.mode == Mode::target_verify && int64_t{lens[k]} + p.next_n > kInt32Max);
        bool bad_ext = false;  // negative or outside int32
        if (p.mode == Mode::draft_extend) {
          const int64_t e = load_index(in.extend_lens, i);
          bad_ext = e < 0 || e > kInt32Max;
        }
        int kind = (q < 0 || q >= in.pool_rows) ? 0 : raw < 0 ? 1 : bad_ext ? 2 : over ? 3 : 8;
        if (kind < 8 && bad_key(i, kind) < bad) bad = bad_key(i, kind);
      }
    }
    Sums prefix, total;
    Scan(tmp.scan).ExclusiveScan(mine, prefix, Sums{0, 0, 0}, AddSums(), total);
    __syncthreads();  // tmp is reused by the next step's scan
    prefix = AddSums()(prefix, carry);
    carry = AddSums()(carry, total);
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t i = base + int64_t{tid} * kItems + k;
      if (i >= in.bs) continue;
      const int64_t cache = cache_seqlen(a, lens[k]);
      prefix.cache += cache;
      for (int d = 0; d < a.out.n; ++d) {
        a.out.dest[d].cache_seqlens[i] = static_cast<int32_t>(cache);
        a.out.dest[d].cu_seqlens_k[i + 1] = wrap32(prefix.cache);
      }
      bool over = outside_int32(prefix.cache);
      const int64_t row_end = prefix.rows + nrows[k] < a.rows ? prefix.rows + nrows[k] : a.rows;
      for (int64_t r = prefix.rows; r < row_end; ++r) {
        const int64_t e = expanded(a, lens[k], nrows[k], r - prefix.rows);
        const int64_t s = sparse(e, topk, kpool);
        prefix.nsa += s;
        over = over || outside_int32(prefix.nsa);
        for (int d = 0; d < a.out.n; ++d) {
          const Dest& D = a.out.dest[d];
          if (D.seqlens_expanded != nullptr) D.seqlens_expanded[r] = static_cast<int32_t>(e);
          D.nsa_cache_seqlens[r] = wrap32(s);
          D.nsa_cu_seqlens_k[r + 1] = wrap32(prefix.nsa);
        }
      }
      prefix.rows += nrows[k];
      if (p.status != nullptr && over && bad_key(i, 3) < bad) bad = bad_key(i, 3);
    }
  }
  if (p.status != nullptr) {
    bad = Reduce(tmp.reduce).Reduce(bad, [](unsigned long long x, unsigned long long y) {
      return x < y ? x : y;
    });
    if (tid == 0) {
      if (bad == ~0ull && p.mode == Mode::draft_extend && carry.rows != a.rows) bad = bad_key(in.bs, 4);
      *p.status = bad;
    }
  }
}

// Stores value v of source column c to every row of every destination (and, where c is a
// multiple of page_size, its page to the real tables).
template <class A>
__device__ inline void store_col(const A& a, int64_t row0, int64_t nrows, int64_t c, int32_t v) {
  const int64_t ps = a.p.page_size;
  const bool page_start = a.ps_shift >= 0 ? (c & (ps - 1)) == 0 : c % ps == 0;
  const int64_t rc = a.ps_shift >= 0 ? c >> a.ps_shift : c / ps;
  const int32_t page = static_cast<int32_t>(floor_div(v, ps, a.ps_shift));
  for (int d = 0; d < a.out.n; ++d) {
    const Dest& D = a.out.dest[d];
    for (int64_t r = row0; r < row0 + nrows; ++r) {
      if (D.page_table_1 != nullptr) D.page_table_1[r * D.page_table_1_stride + c] = v;
      if (page_start && D.real_page_table != nullptr) D.real_page_table[r * D.real_page_table_stride + rc] = page;
    }
  }
}

template <class A>
__device__ inline void store_vec(const A& a, int64_t row0, int64_t nrows, int64_t c, int4 v) {
  for (int d = 0; d < a.out.n; ++d) {
    const Dest& D = a.out.dest[d];
    if (D.page_table_1 == nullptr) continue;
    for (int64_t r = row0; r < row0 + nrows; ++r)
      *reinterpret_cast<int4*>(D.page_table_1 + r * D.page_table_1_stride + c) = v;
  }
  const int64_t ps = a.p.page_size;
  const int32_t e[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const int64_t col = c + k;
    const bool page_start = a.ps_shift >= 0 ? (col & (ps - 1)) == 0 : col % ps == 0;
    if (!page_start) continue;
    const int64_t rc = a.ps_shift >= 0 ? col >> a.ps_shift : col / ps;
    const int32_t page = static_cast<int32_t>(floor_div(e[k], ps, a.ps_shift));
    for (int d = 0; d < a.out.n; ++d) {
      const Dest& D = a.out.dest[d];
      if (D.real_page_table == nullptr) continue;
      for (int64_t r = row0; r < row0 + nrows; ++r) D.real_page_table[r * D.real_page_table_stride + rc] = page;
    }
  }
}

// 16-byte accesses need the source and every destination row at the same offset mod 16 bytes.
template <class A>
__device__ inline bool same_phase(const A& a, const int32_t* src, int64_t row0, int64_t nrows,
                                  int64_t c0, unsigned* phase) {
  const unsigned want = src != nullptr ? (reinterpret_cast<uintptr_t>(src + c0) >> 2) & 3u : 4u;
  unsigned ph = want;
  for (int d = 0; d < a.out.n; ++d) {
    const Dest& D = a.out.dest[d];
    if (D.page_table_1 == nullptr) continue;
    const unsigned mine = (reinterpret_cast<uintptr_t>(D.page_table_1 + row0 * D.page_table_1_stride + c0) >> 2) & 3u;
    if (ph == 4u) ph = mine;
    if (mine != ph || (nrows > 1 && (D.page_table_1_stride & 3) != 0)) return false;
  }
  *phase = ph == 4u ? 0u : ph;
  return true;
}

template <class A>
__device__ void page_tile(const A& a, int64_t tile) {
  const Inputs& in = a.in;
  const Params& p = a.p;
  const int tid = threadIdx.x;
  const int64_t i = tile / a.ctiles, ct = tile - i * a.ctiles;

  int64_t row0 = i, nrows = 1;
  if (p.mode == Mode::target_verify) {
    row0 = i * p.next_n;
    nrows = p.next_n;
  } else if (p.mode == Mode::draft_extend) {
    // p[i] = sum(max(extend_lens[:i], 0)): a block-wide reduction over the requests before i.
    using Reduce = cub::BlockReduce<long long, kThreads>;
    __shared__ typename Reduce::TempStorage tmp;
    long long part = 0;
    for (int64_t k = tid; k < i; k += kThreads) part += rows_of(a, k);
    __shared__ long long start;
    const long long sum = Reduce(tmp).Sum(part);
    if (tid == 0) start = sum;
    __syncthreads();
    row0 = start;
    nrows = rows_of(a, i);
    if (row0 >= a.rows) return;
    if (nrows > a.rows - row0) nrows = a.rows - row0;
  }
  if (nrows <= 0) return;

  const int64_t q = load_index(in.req_pool_indices, i);
  const int32_t* src = (q >= 0 && q < in.pool_rows) ? in.req_to_token + q * in.row_stride : nullptr;
  int64_t n_cols = p.max_len;
  if (p.live) {
    const int64_t L = cache_seqlen(a, wrap32(load_index(in.seq_lens, i)));
    n_cols = L < 0 ? 0 : (L < p.max_len ? L : p.max_len);
  }

  if (!a.any_pt1) {  // real-only: one element per page is all the real table needs
    const int64_t ps = p.page_size;
    const int64_t n_real = (n_cols + ps - 1) / ps;
    const int64_t rc0 = ct * kRealTile;
    int32_t v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t rc = rc0 + tid + int64_t{u} * kThreads;
      v[u] = (rc < n_real && src != nullptr) ? __ldg(src + rc * ps) : -1;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t rc = rc0 + tid + int64_t{u} * kThreads;
      if (rc < n_real) store_col(a, row0, nrows, rc * ps, v[u]);
    }
    return;
  }

  const int64_t c0 = ct * kTileCols;
  if (c0 >= n_cols) return;
  const int64_t c1 = c0 + kTileCols < n_cols ? c0 + kTileCols : n_cols;
  unsigned phase = 0;
  if (same_phase(a, src, row0, nrows, c0, &phase)) {
    const int64_t h = (4 - phase) & 3;  // scalar columns before the first 16-byte boundary
    const int64_t body = c0 + h;
    const int64_t nvec = c1 > body ? (c1 - body) / 4 : 0;
    if (tid < h && c0 + tid < c1) store_col(a, row0, nrows, c0 + tid, src ? __ldg(src + c0 + tid) : -1);
    const int64_t tail = body + 4 * nvec;
    if (tid < c1 - tail) store_col(a, row0, nrows, tail + tid, src ? __ldg(src + tail + tid) : -1);
    int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = tid + int64_t{u} * kThreads;
      v[u] = (k < nvec && src != nullptr) ? __ldg(reinterpret_cast<const int4*>(src + body) + k)
                                          : make_int4(-1, -1, -1, -1);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = tid + int64_t{u} * kThreads;
      if (k < nvec) store_vec(a, row0, nrows, body + 4 * k, v[u]);
    }
  } else {
    constexpr int kScalar = 4 * kUnroll;
    for (int64_t cb = c0; cb < c1; cb += int64_t{kThreads} * kScalar) {
      int32_t v[kScalar];
#pragma unroll
      for (int u = 0; u < kScalar; ++u) {
        const int64_t c = cb + tid + int64_t{u} * kThreads;
        v[u] = (c < c1 && src != nullptr) ? __ldg(src + c) : -1;
      }
#pragma unroll
      for (int u = 0; u < kScalar; ++u) {
        const int64_t c = cb + tid + int64_t{u} * kThreads;
        if (c < c1) store_col(a, row0, nrows, c, v[u]);
      }
    }
  }
}

template <int kSlots>
__global__ void __launch_bounds__(kThreads, kMinBlocks) metadata_kernel(const __grid_constant__ Args<kSlots> a) {
  if (blockIdx.x == 0) {
    meta_block(a);
  } else {
    page_tile(a, int64_t{blockIdx.x} - 1);
  }
}

__global__ void empty_kernel() {}

int log2_exact(int64_t x) {
  int s = 0;
  while ((int64_t{1} << s) < x) ++s;
  return (int64_t{1} << s) == x ? s : -1;
}

}  // namespace

const char* status_string(int status) {
  switch (status) {
    case kOk: return "ok";
    case kBadArgument: return "invalid argument to nsa::launch";
    case kTooLarge: return "problem too large for one launch";
    case kCudaError: return "CUDA error";
    default: return "unknown status";
  }
}

// Sets the device, launches, checks the launch, restores the device.
template <class F>
int on_device(int device, cudaError_t* cuda_error, F&& launch_fn) {
  int prev = -1;
  cudaError_t err = cudaGetDevice(&prev);
  if (err == cudaSuccess && prev != device) err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    launch_fn();
    err = cudaGetLastError();
    if (prev >= 0 && prev != device) {
      const cudaError_t restore = cudaSetDevice(prev);
      if (err == cudaSuccess) err = restore;
    }
  }
  *cuda_error = err;
  return err == cudaSuccess ? kOk : kCudaError;
}

template <int kSlots>
int launch_slots(const Inputs& in, const Outputs& out, const Params& p, int device, cudaStream_t stream,
                 cudaError_t* cuda_error) {
  Args<kSlots> a{};
  a.in = in;
  a.p = p;
  a.out.n = out.n;
  for (int d = 0; d < out.n; ++d) a.out.dest[d] = out.dest[d];
  a.rows = p.mode == Mode::decode ? in.bs : p.mode == Mode::target_verify ? in.bs * p.next_n : p.total;
  bool any_real = false;
  for (int d = 0; d < out.n; ++d) {
    const Dest& D = out.dest[d];
    // (an empty array may have a null pointer; nothing is written to it)
    if ((in.bs > 0 && D.cache_seqlens == nullptr) || D.cu_seqlens_k == nullptr ||
        D.nsa_cu_seqlens_k == nullptr ||
        (a.rows > 0 && (D.nsa_cache_seqlens == nullptr ||
                        (p.mode != Mode::decode && D.seqlens_expanded == nullptr))))
      return kBadArgument;
    a.any_pt1 = a.any_pt1 || D.page_table_1 != nullptr;
    any_real = any_real || D.real_page_table != nullptr;
  }
  a.ps_shift = log2_exact(p.page_size);
  if (p.max_len > 0 && (a.any_pt1 || any_real)) {
    a.ctiles = a.any_pt1 ? (p.max_len + kTileCols - 1) / kTileCols
                         : ((p.max_len + p.page_size - 1) / p.page_size + kRealTile - 1) / kRealTile;
  }
  if (a.ctiles > 0 && in.bs > (int64_t{0x7fffffff} - 1) / a.ctiles) return kTooLarge;
  const int64_t blocks = 1 + in.bs * a.ctiles;
  return on_device(device, cuda_error, [&] {
    metadata_kernel<kSlots><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  });
}

int launch(const Inputs& in, const Outputs& out, const Params& p, int device, cudaStream_t stream,
           cudaError_t* cuda_error) {
  *cuda_error = cudaSuccess;
  if (out.n < 1 || out.n > kMaxDests || in.bs < 0 || p.max_len < 0 || p.topk < 1 || p.kpool < 1 ||
      p.page_size < 1 || p.next_n < 1 || p.total < 0 ||
      (in.bs > 0 && (in.seq_lens.data == nullptr || in.req_pool_indices.data == nullptr ||
                     (p.mode == Mode::draft_extend && in.extend_lens.data == nullptr))) ||
      (in.pool_rows > 0 && p.max_len > 0 && in.req_to_token == nullptr))
    return kBadArgument;
  if (out.n == 1) return launch_slots<1>(in, out, p, device, stream, cuda_error);
  if (out.n <= 4) return launch_slots<4>(in, out, p, device, stream, cuda_error);
  return launch_slots<kMaxDests>(in, out, p, device, stream, cuda_error);
}

int launch_empty(int device, cudaStream_t stream, cudaError_t* cuda_error) {
  return on_device(device, cuda_error, [&] { empty_kernel<<<1, 1, 0, stream>>>(); });
}

}  // namespace nsa
