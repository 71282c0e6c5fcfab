// The kernel of a call, as templates a C++ engine can include and instantiate; launch.cu is the
// only file that knows the CUDA runtime and says which instance runs for which call.
//
// One launch, specialised at compile time by mode, by the set of page tables written and by the
// number of destination slots; grid (1 + groups, splits) of 128 threads:
// - block (0, 0) builds the 1-D outputs: a block scan over requests (one per thread for small
//   batches, up to kItems per thread per step beyond), and check=True's validation;
// - block (1 + g, s) is the page program of group g, split s: for each request of its group it
//   reads the live source columns of steps s, s + splits, ... once and writes them to each of the
//   request's rows in every destination, taking the real table from the same loads. The launcher
//   bounds groups x splits by the size of the chip, so a table width far beyond the live lengths
//   costs few idle programs;
// - or, for full-width tables (live=False) of at least kRowMin columns, every page_table_1 and
//   req_to_token row on 16 bytes, block 1 + b is the row program b: in decode and target_verify
//   8 or 16 KB of one row (row_program), in the order of the output; in draft_extend 8 KB of
//   every row of a group of requests (extend_row_program, sm_90 and newer);
// - FlashMLA's schedule, when asked for: its closed form (topk rows) spread over every thread
//   (blocks (0, s >= 1) first, which have nothing else to do and compute their part before the
//   wait for the previous kernel), its walk (per-row lengths) by block (0, 0) after the 1-D outputs.
// Small batches run a kernel of their own (small.cuh), chosen by the launcher.
// Latency is a chain of dependent instructions at small sizes, so indices are 32-bit (requests,
// rows and columns are int32 by SPEC; pointer offsets stay 64-bit) and every loop that stores
// has one store site.
#pragma once

#include <type_traits>

#include "metadata.cuh"
#include "schedule.cuh"

namespace nsa {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;             // requests per thread per step of the 1-D outputs
constexpr int kChunk = kThreads * 4;  // page_table_1 columns per program step: 16 bytes a thread
// A row program's steps (kChunk columns each), all in flight together: 8 (16 KB) in target_verify
// for tables of at least 16384 columns, else 4. (H100, full width: 16 KB took target_verify
// 1024 x 32768 from 1.10x to 1.08x the copy floor but 4096 x 4096 from 1.12x to 1.20x, and decode
// 1024 x 32768 from 0.85x to 0.86x; 4 KB, 2 steps, took target_verify 4096 x 4096 to 1.34x.)
constexpr int kRowSteps = 4, kWideRowSteps = 8;
constexpr int64_t kRowMin = 4096;  // narrower tables keep the page programs (gains measured from 4096)
__host__ __device__ constexpr int row_steps(Mode mode, int64_t max_len) {
  return mode == Mode::target_verify && max_len >= 16384 ? kWideRowSteps : kRowSteps;
}
constexpr int kUnroll = 2;            // program steps in flight per thread (H100: 2 and 4 tie on
                                      // bandwidth; 2 is 0.1-0.3 us faster at small batches)

// draft_extend's row programs are compiled for sm_90 and newer only (on sm_80-89 the instance
// with both tables spills at the 64-register cap); the launcher takes them only where the
// kernels' image is sm_90 or newer (DeviceFacts::sm90_code).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
constexpr bool kExtendRowPrograms = true;
#else
constexpr bool kExtendRowPrograms = false;
#endif

#ifndef NSA_MIN_BLOCKS
#define NSA_MIN_BLOCKS 8  // resident blocks per SM the registers allow: <= 64 each, no spills
#endif

// Before a block's first load or store. The launcher may start this kernel while the previous
// kernel of the stream is still finishing (programmatic dependent launch, sm_90 and newer): its
// blocks are then resident early, and here they wait until that kernel has completed and its
// memory is visible. Without that launch attribute this returns at once. A block with no load or
// store may return without it; block (0, 0) always waits, so this grid never completes before the
// previous kernel (what a later kernel's own wait relies on).
__device__ inline void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The page tables some destination writes (the code for the others is not compiled).
enum Tables : int { kPageTable1 = 1, kRealTable = 2, kBothTables = 3 };

template <int kSlots>
struct Args {
  Inputs in;
  Dest dest[kSlots];
  int n_dest;
  Params p;
  int32_t bs;         // in.bs
  int32_t rows;       // shape_of(...).rows
  int32_t per_group;  // requests of group g: [g * per_group, (g + 1) * per_group)
  int32_t splits;     // programs per group (gridDim.y), striding over the steps of its rows
  int32_t row_chunks;  // > 0: row programs (row_program), this many per row; 0: page programs
  int ps_shift;       // log2(page_size) when it is a power of two, else -1
  sched::UniformPlan uniform;  // the schedule's closed form (ScheduleLengths::topk), from the host
  __device__ int dests() const { return kSlots == 1 ? 1 : n_dest; }  // (a constant for one slot)
};

// Moves the next loaded value into v[0]: a rolled loop over values loaded by an unrolled one
// keeps loads in flight together and one store site in the code.
template <class T, int N>
__device__ inline void rotate(T (&v)[N]) {
#pragma unroll
  for (int w = 0; w + 1 < N; ++w) v[w] = v[w + 1];
}

// ------------------------------------------------------------------ block (0, 0): 1-D outputs

// Running sums of cache_seqlens, of nsa_cache_seqlens and of rows. T is uint32_t on the fast
// path (the outputs wrap modulo 2^32, so 32-bit sums are exact there) and int64 under
// check=True, which must see an overflow. Rows are scanned only in draft_extend, in 64 bits
// (hostile extend_lens may sum past 2^32).
template <class T>
struct Sums {
  T cache, nsa;
  long long rows;
};
template <class T>
__device__ inline Sums<T> operator+(const Sums<T>& a, const Sums<T>& b) {
  return {static_cast<T>(a.cache + b.cache), static_cast<T>(a.nsa + b.nsa), a.rows + b.rows};
}
template <class T>
__device__ inline Sums<T> operator-(const Sums<T>& a, const Sums<T>& b) {
  return {static_cast<T>(a.cache - b.cache), static_cast<T>(a.nsa - b.nsa), a.rows - b.rows};
}

// Exclusive scan of the block's Sums; *total gets the block's sum. one_warp: only warp 0 holds
// values (bs <= 32), so its own scan is the block's, without a barrier.
template <bool kScanRows, class T>
__device__ inline Sums<T> block_exclusive_scan(const Sums<T>& v, Sums<T>* total, bool one_warp) {
  __shared__ Sums<T> warp_sum[kWarps];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  Sums<T> inc = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const Sums<T> t{__shfl_up_sync(~0u, inc.cache, off), __shfl_up_sync(~0u, inc.nsa, off),
                    kScanRows ? __shfl_up_sync(~0u, inc.rows, off) : 0};
    if (lane >= off) inc = inc + t;
  }
  if (one_warp) {  // (a uniform branch: the last step of every warp's loop agrees)
    *total = {__shfl_sync(~0u, inc.cache, 31), __shfl_sync(~0u, inc.nsa, 31),
              kScanRows ? __shfl_sync(~0u, inc.rows, 31) : 0};
    return inc - v;
  }
  if (lane == 31) warp_sum[w] = inc;
  __syncthreads();
  Sums<T> before{0, 0, 0}, all{0, 0, 0};
#pragma unroll
  for (int k = 0; k < kWarps; ++k) {
    if (k < w) before = before + warp_sum[k];
    all = all + warp_sum[k];
  }
  __syncthreads();  // warp_sum is reused by the next step
  *total = all;
  return before + (inc - v);
}

__device__ inline unsigned long long bad_key(int64_t i, int kind) {
  return (static_cast<unsigned long long>(i) << 3) | static_cast<unsigned long long>(kind);
}

// sum of sparse(seqlens_expanded) over the rows of one request (draft_extend: over at most
// `rows` of them; only rows below the total are ever written).
template <Mode M, class T>
__device__ inline T nsa_sum(int32_t lens, int64_t nrows, int64_t rows, const Params& p) {
  return expanded_sparse_sum<M, T>(lens, nrows, M == Mode::draft_extend && rows < nrows ? rows : nrows, p.topk,
                                   p.kpool);
}

// check=True: the first problem of request i (raw values as the caller passed them), or 8.
template <Mode M>
__device__ inline int bad_kind(const Inputs& in, const Params& p, int64_t i, int64_t raw_len) {
  const int64_t q = load_index(in.req_pool_indices, i);
  if (q < 0 || q >= in.pool_rows) return kBadPoolIndex;
  if (raw_len < 0) return kNegativeLength;
  if constexpr (M == Mode::draft_extend) {
    const int64_t e = load_index(in.extend_lens, i);
    if (e < 0 || e > kInt32Max) return kBadExtend;
  }
  if (outside_int32(raw_len)) return kOverflow;
  if (M == Mode::target_verify && raw_len + p.next_n > kInt32Max) return kOverflow;
  return 8;
}

// Request i's own terms of the running sums (its length `lens` wrapped, its `nrows` rows).
template <Mode M, class T, int kSlots>
__device__ inline Sums<T> request_sums(const Args<kSlots>& a, int32_t lens, int64_t nrows) {
  return {static_cast<T>(cache_seqlen<M>(lens, a.p.next_n)), nsa_sum<M, T>(lens, nrows, a.rows, a.p),
          nrows};
}

// Request i's outputs in every destination; `prefix` holds the sums of the requests before it and
// leaves with i's own terms added. True when check=True must report an overflow at i.
template <Mode M, bool kCheck, class T, int kSlots>
__device__ inline bool write_request(const Args<kSlots>& a, int32_t i, int32_t lens, int64_t nrows, Sums<T>& prefix) {
  const Params& p = a.p;
  const int32_t cache = cache_seqlen<M>(lens, p.next_n);
  prefix.cache += cache;
  for (int d = 0; d < a.dests(); ++d) {
    const Dest& D = a.dest[d];
    D.cache_seqlens[i] = cache;
    D.cu_seqlens_k[i + 1] = wrap32(prefix.cache);
    if constexpr (M == Mode::target_verify) {
      if (D.paged_mqa_ctx_lens_2d != nullptr)
        for (int32_t j = 0; j < p.next_n; ++j)
          D.paged_mqa_ctx_lens_2d[i * D.paged_mqa_stride0 + j * D.paged_mqa_stride1] = cache;
    }
  }
  bool over = kCheck && outside_int32(prefix.cache);
  const int32_t r0 = static_cast<int32_t>(prefix.rows < a.rows ? prefix.rows : a.rows);
  const int32_t r1 = static_cast<int32_t>(prefix.rows + nrows < a.rows ? prefix.rows + nrows : a.rows);
  for (int32_t r = r0; r < r1; ++r) {
    const int64_t e = expanded<M>(lens, nrows, r - r0);
    const int64_t s = sparse(e, p.topk, p.kpool);
    prefix.nsa += static_cast<T>(s);
    over = over || (kCheck && outside_int32(prefix.nsa));
    for (int d = 0; d < a.dests(); ++d) {
      const Dest& D = a.dest[d];
      if (M != Mode::decode && D.seqlens_expanded != nullptr) D.seqlens_expanded[r] = static_cast<int32_t>(e);
      D.nsa_cache_seqlens[r] = wrap32(s);
      D.nsa_cu_seqlens_k[r + 1] = wrap32(prefix.nsa);
    }
  }
  prefix.rows += nrows;
  return over;
}

template <Mode M, bool kCheck, int kSlots>
__device__ void meta_block(const Args<kSlots>& a) {
  using T = typename std::conditional<kCheck, long long, uint32_t>::type;
  const Inputs& in = a.in;
  const Params& p = a.p;
  const int tid = threadIdx.x;
  __shared__ unsigned long long first_bad;
  if (tid == 0) {
    if (kCheck) first_bad = kStatusOk;
    for (int d = 0; d < a.dests(); ++d) {
      a.dest[d].cu_seqlens_k[0] = 0;
      a.dest[d].nsa_cu_seqlens_k[0] = 0;
    }
  }
  if (kCheck) __syncthreads();
  // requests per thread: one for small batches (the shortest chain), up to kItems per step
  const int items = a.bs <= kThreads ? 1 : a.bs < kThreads * kItems ? (a.bs + kThreads - 1) / kThreads : kItems;
  Sums<T> carry{0, 0, 0};
  for (int32_t base = 0; base < a.bs; base += kThreads * items) {
    const int32_t first = base + tid * items;  // this thread's requests [first, end)
    const int32_t end = first < a.bs - items ? first + items : a.bs;
    int64_t raw_lens[kItems], nrows_of[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {  // loads in flight together
      raw_lens[k] = first + k < end ? load_index(in.seq_lens, first + k) : 0;
      nrows_of[k] = first + k < end ? rows_of<M>(in, p.next_n, first + k) : 0;
    }
    int64_t lens_of[kItems];  // phase 3 reads these too: no second round trip
#pragma unroll
    for (int k = 0; k < kItems; ++k) lens_of[k] = raw_lens[k];
    Sums<T> mine{0, 0, 0};
#pragma unroll 1
    for (int32_t i = first; i < end; ++i, rotate(raw_lens), rotate(nrows_of)) {
      mine = mine + request_sums<M, T>(a, wrap32(raw_lens[0]), nrows_of[0]);
      if (kCheck) {
        const int kind = bad_kind<M>(in, p, i, raw_lens[0]);
        if (kind < 8) atomicMin(&first_bad, bad_key(i, kind));
      }
    }
    Sums<T> total;
    Sums<T> prefix = block_exclusive_scan<M == Mode::draft_extend>(mine, &total, a.bs <= 32) + carry;
    carry = carry + total;
    if constexpr (M != Mode::draft_extend) prefix.rows = M == Mode::decode ? first : int64_t{first} * p.next_n;
#pragma unroll 1
    for (int32_t i = first; i < end; ++i, rotate(lens_of)) {
      const int32_t lens = wrap32(lens_of[0]);
      const int64_t nrows = rows_of<M>(in, p.next_n, i);  // (a reload hits L1)
      const bool over = write_request<M, kCheck>(a, i, lens, nrows, prefix);
      if (kCheck && over) atomicMin(&first_bad, bad_key(i, kOverflow));
    }
  }
  if (kCheck) {
    __syncthreads();
    if (tid == 0) {
      unsigned long long bad = first_bad;
      if (bad == kStatusOk && M == Mode::draft_extend && carry.rows != a.rows) bad = bad_key(a.bs, kBadTotal);
      *p.status = bad;
    }
  }
}

// ------------------------------------------------------------------ block (0, 0): the schedule

// schedule.cuh's Sink over every destination set that wants the schedule.
template <int kSlots>
struct ScheduleSink {
  const Args<kSlots>& a;
  __device__ void meta(int32_t part, int field, int32_t v) const {
    for (int d = 0; d < a.dests(); ++d)
      if (a.dest[d].tile_scheduler_metadata != nullptr)
        a.dest[d].tile_scheduler_metadata[int64_t{part} * sched::kWidth + field] = v;
  }
  __device__ void num_splits(int32_t k, int32_t v) const {
    for (int d = 0; d < a.dests(); ++d)
      if (a.dest[d].num_splits != nullptr) a.dest[d].num_splits[k] = v;
  }
};

// Row r's tokens for the walk: nsa_cache_seqlens as meta_block wrote it (a plain load: __ldg's
// cache is not coherent with this kernel's own stores).
struct WrittenLengths {
  const int32_t* nsa_cache_seqlens;
  __device__ int32_t operator()(int32_t r) const { return nsa_cache_seqlens[r]; }
};

// FlashMLA's schedule from per-row lengths (ScheduleLengths::sparse): the walk, by the whole
// metadata block after its 1-D outputs (every thread calls it), reading the nsa_cache_seqlens of
// destination 0 once the barrier has made them visible. Kept out of line: the page programs never
// run it, and inlined it would raise the kernel's register count.
template <int kSlots>
__device__ __noinline__ void schedule_block(const Args<kSlots>& a) {
  static_assert(kThreads == sched::kWalkThreads, "the walk runs on the metadata block");
  const ScheduleSink<kSlots> sink{a};
  __syncthreads();  // the stores of nsa_cache_seqlens
  sched::schedule_walk(WrittenLengths{a.dest[0].nsa_cache_seqlens}, a.rows, a.p.num_sm_parts, sink);
}

// A block's place in schedule_spread's order: blocks (0, s >= 1) -> 0 .. gy - 2; page programs (1 + g, s)
// -> gy - 1 ..; block (0, 0) last.
__device__ inline int32_t spread_rank() {
  const int32_t gx = static_cast<int32_t>(gridDim.x), gy = static_cast<int32_t>(gridDim.y);
  const int32_t bx = static_cast<int32_t>(blockIdx.x), by = static_cast<int32_t>(blockIdx.y);
  return bx == 0 ? (by == 0 ? gx * gy - 1 : by - 1) : gy - 1 + (bx - 1) * gy + by;
}

// Whether this block holds any of the closed form's `parts` rows or `rows` + 1 num_splits
// entries (one per thread): a block without any never calls the out-of-line function, so it
// never reads the plan (a constant-cache miss at the end of a page program's chain).
__device__ inline bool spread_has_work(int32_t parts, int32_t rows) {
  return int64_t{spread_rank()} * kThreads < (parts > rows ? parts : int64_t{rows} + 1);
}

// The threads schedule_uniform strides over: the grid's, at most 2^30 (row programs make grids of
// up to 2^31 - 1 blocks).
__device__ inline int32_t spread_threads() {
  const int64_t threads = int64_t{gridDim.x} * gridDim.y * kThreads;
  return static_cast<int32_t>(threads < (int64_t{1} << 30) ? threads : int64_t{1} << 30);
}

// A kernel's wait, or none where the caller has waited already (sched::schedule_uniform's Wait).
template <bool kWaited>
struct WaitUnless {
  __device__ void operator()() const {
    if (!kWaited) wait_for_previous_kernel();
  }
};

// FlashMLA's schedule with topk for every row: the host's closed form, no barrier, spread over
// every thread of the grid so no block runs more than a few entries (num_splits has rows + 1).
// Blocks without a page program come first and the metadata block last: at small batches those
// two are what the launch waits for. (Out of line, as schedule_block; the plan comes by value,
// as small.cuh's small_schedule says why.)
template <bool kWaited, int kSlots>
__device__ __noinline__ void schedule_spread(const sched::UniformPlan u, const Args<kSlots>& a) {
  sched::schedule_uniform(u, ScheduleSink<kSlots>{a}, spread_rank() * kThreads + static_cast<int32_t>(threadIdx.x),
                          spread_threads(), WaitUnless<kWaited>{});
}

// ------------------------------------------------------------------ page programs

// Pool row q of req_to_token, or null where q is out of range (its columns then read as -1).
__device__ inline const int32_t* source_row(const Inputs& in, int64_t q) {
  return q >= 0 && q < in.pool_rows ? in.req_to_token + q * in.row_stride : nullptr;
}

// p[i0] = sum(max(extend_lens[:i0], 0)) (draft_extend), summed by the whole block.
template <int kSlots>
__device__ int64_t rows_before(const Args<kSlots>& a, int32_t i0) {
  __shared__ long long warp_sum[kWarps];
  constexpr int kInFlight = 8;  // independent loads per thread per round trip
  long long part[kInFlight] = {};
  for (int64_t k = threadIdx.x; k < i0; k += kInFlight * kThreads) {  // (64-bit: no wrap near INT32_MAX)
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t kk = k + u * kThreads;
      if (kk < i0) part[u] += rows_of<Mode::draft_extend>(a.in, 1, kk);
    }
  }
  long long s = 0;
#pragma unroll
  for (int u = 0; u < kInFlight; ++u) s += part[u];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(~0u, s, off);
  if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = s;
  __syncthreads();
  long long all = 0;
#pragma unroll
  for (int k = 0; k < kWarps; ++k) all += warp_sum[k];
  return all;
}

// Columns are int32 (max_len <= INT32_MAX), so the page arithmetic is 32-bit.
template <int kSlots>
__device__ inline int32_t page_of_col(const Args<kSlots>& a, int32_t c) {
  return a.ps_shift >= 0 ? c >> a.ps_shift : static_cast<int32_t>(static_cast<uint32_t>(c) / a.p.page_size);
}
template <int kSlots>
__device__ inline int32_t page_of_token(const Args<kSlots>& a, int32_t v) {
  return floor_div(v, a.p.page_size, a.ps_shift);
}
// The first page start (a multiple of page_size) at or after column c >= 0 (fits uint32).
template <int kSlots>
__device__ inline int64_t next_page_start(const Args<kSlots>& a, int32_t c) {
  const uint32_t up = static_cast<uint32_t>(c) + static_cast<uint32_t>(a.p.page_size) - 1u;
  return a.ps_shift >= 0 ? (up >> a.ps_shift) << a.ps_shift : up / a.p.page_size * a.p.page_size;
}

// The rows of one request: decode's single row is a compile-time count.
template <Mode M>
struct Rows {
  int32_t r0, n;
  __device__ int32_t count() const { return M == Mode::decode ? 1 : n; }
};

template <Mode M, class V>
__device__ inline void fill(int32_t* row0, int64_t stride, Rows<M> rows, V v) {
#pragma unroll 1
  for (int32_t r = 0; r < rows.count(); ++r, row0 += stride) *reinterpret_cast<V*>(row0) = v;
}

// Real-table column rc of the rows, in every destination that has a real table.
template <Mode M, int kSlots>
__device__ inline void store_real(const Args<kSlots>& a, Rows<M> rows, int32_t rc, int32_t page) {
#pragma unroll 1
  for (int d = 0; d < a.dests(); ++d) {
    const Dest& D = a.dest[d];
    if (D.real_page_table != nullptr)
      fill(D.real_page_table + rows.r0 * D.real_page_table_stride + rc, D.real_page_table_stride, rows, page);
  }
}

// Source columns [c, c + 4) (values v, c 16-byte aligned in every page_table_1 row) or the one
// column c (a scalar v) to the rows: page_table_1, and the real table where a column starts a page.
template <int kTables, Mode M, int kSlots, class V>
__device__ inline void store(const Args<kSlots>& a, Rows<M> rows, int32_t c, V v) {
  constexpr int kWidth = sizeof(V) / sizeof(int32_t);
#pragma unroll 1
  for (int d = 0; d < a.dests(); ++d) {
    const Dest& D = a.dest[d];
    if (D.page_table_1 != nullptr)
      fill(D.page_table_1 + rows.r0 * D.page_table_1_stride + c, D.page_table_1_stride, rows, v);
  }
  if constexpr ((kTables & kRealTable) != 0) {
#pragma unroll 1
    for (int64_t col = next_page_start(a, c); col < int64_t{c} + kWidth; col += a.p.page_size) {
      int32_t e;
      if constexpr (kWidth == 1) {
        e = v;
      } else {
        const int32_t k = static_cast<int32_t>(col - c);  // (a select, not a local array)
        e = k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w;
      }
      store_real(a, rows, page_of_col(a, static_cast<int32_t>(col)), page_of_token(a, e));
    }
  }
}

// 16-byte accesses need the source and every destination row at the same offset mod 16 bytes
// (column 0); *phase gets that offset in elements.
template <Mode M, int kSlots>
__device__ inline bool same_phase(const Args<kSlots>& a, const int32_t* src, Rows<M> rows, unsigned* phase) {
  unsigned ph = src != nullptr ? (reinterpret_cast<uintptr_t>(src) >> 2) & 3u : 4u;
  for (int d = 0; d < a.dests(); ++d) {
    const Dest& D = a.dest[d];
    if (D.page_table_1 == nullptr) continue;
    const unsigned mine = (reinterpret_cast<uintptr_t>(D.page_table_1 + rows.r0 * D.page_table_1_stride) >> 2) & 3u;
    if (ph == 4u) ph = mine;
    if (mine != ph || (rows.count() > 1 && (D.page_table_1_stride & 3) != 0)) return false;
  }
  *phase = ph == 4u ? 0u : ph;
  return true;
}

// The columns [0, n_cols) of one request (source row src, or -1 where src is null) in the steps
// s, s + splits, ... of this program; the loads of kUnroll steps are in flight together.
template <int kTables, Mode M, int kSlots>
__device__ void copy_request(const Args<kSlots>& a, const int32_t* src, Rows<M> rows, int32_t n_cols, int32_t s) {
  const int tid = threadIdx.x;
  const int32_t round = a.splits * kUnroll;  // steps between this program's rounds
  if constexpr (kTables == kRealTable) {  // real-only: one element per page is all it needs
    const int32_t n_real = page_of_col(a, static_cast<int32_t>(next_page_start(a, n_cols)));
    for (int32_t m = s; m * kThreads < n_real; m += round) {
      int32_t v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t rc = (m + u * a.splits) * kThreads + tid;
        v[u] = (rc < n_real && src != nullptr) ? __ldg(src + int64_t{rc} * a.p.page_size) : -1;
      }
#pragma unroll 1
      for (int u = 0; u < kUnroll; ++u, rotate(v)) {
        const int32_t rc = (m + u * a.splits) * kThreads + tid;
        if (rc < n_real) store_real(a, rows, rc, page_of_token(a, v[0]));
      }
    }
    return;
  }
  unsigned phase = 0;
  if (same_phase(a, src, rows, &phase)) {
    int32_t h = (4 - phase) & 3;  // scalar columns before the first 16-byte boundary
    if (h > n_cols) h = n_cols;
    const int32_t nvec = (n_cols - h) / 4;
    const int32_t tail = h + 4 * nvec;
    // threads 0-3 of split 0: the head columns, 4-7: the tail columns; loaded here, stored
    // last, so their load is in flight with the others instead of ahead of them
    const bool has_edge = s == 0 && (tid < 4 ? tid < h : tid < 8 && tid - 4 < n_cols - tail);
    const int32_t edge = has_edge ? (tid < 4 ? tid : tail + tid - 4) : 0;  // (no int32 wrap near INT32_MAX)
    const int32_t edge_v = has_edge && src != nullptr ? __ldg(src + edge) : -1;
    const int4* vsrc = src != nullptr ? reinterpret_cast<const int4*>(src + h) : nullptr;
    for (int32_t m = s; m * kThreads < nvec; m += round) {
      int4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t k = (m + u * a.splits) * kThreads + tid;
        v[u] = (k < nvec && src != nullptr) ? __ldg(vsrc + k) : make_int4(-1, -1, -1, -1);
      }
#pragma unroll 1
      for (int u = 0; u < kUnroll; ++u, rotate(v)) {
        const int32_t k = (m + u * a.splits) * kThreads + tid;
        if (k < nvec) store<kTables>(a, rows, h + 4 * k, v[0]);
      }
    }
    if (has_edge) store<kTables>(a, rows, edge, edge_v);
    return;
  }
  constexpr int kPer = kChunk / kThreads;  // scalar columns a thread loads per step
  for (int32_t m = s; int64_t{m} * kChunk < n_cols; m += a.splits) {  // scalar: rows out of phase
    int32_t v[kPer];
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int64_t c = int64_t{m} * kChunk + u * kThreads + tid;
      v[u] = (c < n_cols && src != nullptr) ? __ldg(src + c) : -1;
    }
#pragma unroll 1
    for (int u = 0; u < kPer; ++u, rotate(v)) {
      const int64_t c = int64_t{m} * kChunk + u * kThreads + tid;
      if (c < n_cols) store<kTables>(a, rows, static_cast<int32_t>(c), v[0]);
    }
  }
}

template <Mode M, int kTables, int kSlots>
__device__ void page_program(const Args<kSlots>& a, int32_t g, int32_t s) {
  const Inputs& in = a.in;
  const Params& p = a.p;
  const int32_t i0 = g * a.per_group;  // < bs
  const int32_t i1 = i0 < a.bs - a.per_group ? i0 + a.per_group : a.bs;
  int64_t next_row = 0;
  for (int32_t i = i0; i < i1; ++i) {
    // the loads first, in flight together: the chain to the copy is two loads deep
    const int64_t q = load_index(in.req_pool_indices, i);
    const int32_t lens = wrap32(load_index(in.seq_lens, i));
    const int64_t n = rows_of<M>(in, p.next_n, i);
    Rows<M> rows{M == Mode::decode ? i : i * p.next_n, static_cast<int32_t>(n)};
    if constexpr (M == Mode::draft_extend) {
      if (i == i0) next_row = rows_before(a, i0);  // (once)
      if (next_row >= a.rows) return;
      rows.r0 = static_cast<int32_t>(next_row);
      rows.n = static_cast<int32_t>(n < a.rows - next_row ? n : a.rows - next_row);
      next_row += n;
    }
    if (rows.count() <= 0) continue;
    const int32_t* src = source_row(in, q);
    const int32_t n_cols = static_cast<int32_t>(live_cols(p.live, cache_seqlen<M>(lens, p.next_n), p.max_len));
    copy_request<kTables>(a, src, rows, n_cols, s);
  }
}

// Chunk j of a full-width row (columns [j * kSteps * kChunk, (j + 1) * kSteps * kChunk)):
// load_chunk reads it from source row src (null: -1) into registers, store_chunk writes those to
// the given rows of every destination, row_chunk does both for output row o. Row programs run these on the general kernel for
// full-width tables (live=False) of at least kRowMin columns when every page_table_1 and
// req_to_token row starts on 16 bytes: consecutive blocks write consecutive memory, and the rows
// of one request, read from one source row, hit L2 after the first. (An H100 wrote such tables
// 4-6% faster this way than with programs that write every row of their request at once:
// benchmarks/write_floor.cu; draft_extend's programs do store one load to all of a request's
// rows, extend_row_program says why.)
template <int kSteps>
struct ChunkValues {
  int4 v[kSteps];
  int32_t tail_v;
};

template <int kSteps, int kSlots>
__device__ inline ChunkValues<kSteps> load_chunk(const Args<kSlots>& a, const int32_t* src, int32_t j) {
  const int tid = threadIdx.x;
  const int32_t n_cols = static_cast<int32_t>(a.p.max_len), nvec = n_cols / 4;
  const int32_t k0 = j * (kSteps * kThreads) + tid;  // this thread's first int4
  // the last n_cols % 4 columns: threads 0-2 of the last chunk (no int32 wrap near INT32_MAX)
  const bool has_tail = j == a.row_chunks - 1 && tid < (n_cols & 3);
  ChunkValues<kSteps> c;
  c.tail_v = has_tail && src != nullptr ? __ldg(src + 4 * nvec + tid) : -1;
  const int4* vsrc = reinterpret_cast<const int4*>(src);
#pragma unroll
  for (int u = 0; u < kSteps; ++u) {
    const int32_t k = k0 + u * kThreads;
    c.v[u] = k < nvec && src != nullptr ? __ldg(vsrc + k) : make_int4(-1, -1, -1, -1);
  }
  return c;
}

template <Mode M, int kTables, int kSteps, int kSlots>
__device__ inline void store_chunk(const Args<kSlots>& a, ChunkValues<kSteps>& c, Rows<M> rows, int32_t j) {
  const int tid = threadIdx.x;  // (c is consumed: its values rotate out as they are stored)
  const int32_t n_cols = static_cast<int32_t>(a.p.max_len), nvec = n_cols / 4;
  const int32_t k0 = j * (kSteps * kThreads) + tid;
  const bool has_tail = j == a.row_chunks - 1 && tid < (n_cols & 3);
#pragma unroll 1
  for (int u = 0; u < kSteps; ++u, rotate(c.v)) {
    const int32_t k = k0 + u * kThreads;
    if (k < nvec) store<kTables>(a, rows, 4 * k, c.v[0]);
  }
  if (has_tail) store<kTables>(a, rows, 4 * nvec + tid, c.tail_v);
}

template <Mode M, int kTables, int kSteps, int kSlots>
__device__ inline void row_chunk(const Args<kSlots>& a, const int32_t* src, int32_t o, int32_t j) {
  ChunkValues<kSteps> c = load_chunk<kSteps>(a, src, j);
  store_chunk<M, kTables, kSteps>(a, c, Rows<M>{o, 1}, j);
}

// Row program b of decode and target_verify: chunk j of row o (b = o * row_chunks + j).
template <Mode M, int kTables, int kSteps, int kSlots>
__device__ void row_program(const Args<kSlots>& a, int32_t b) {
  const int32_t o = b / a.row_chunks, j = b - o * a.row_chunks;
  const int64_t q = load_index(a.in.req_pool_indices, M == Mode::decode ? o : o / a.p.next_n);
  row_chunk<M, kTables, kSteps>(a, source_row(a.in, q), o, j);
}

// Row program b of draft_extend: chunk j of every row of the requests of group g (b = g *
// row_chunks + j), kRowSteps wide; each request's chunk is loaded once and stored to all its rows
// (H100, full width, 256 x 32768: 62.4 us; a load per row read 65.3 in an earlier run). A row finds
// its request only through the sum of extend_lens before it, so a program sums the rows before
// its group once (O(bs) reads, with its first load in flight) and walks the group's requests
// from there; the launcher bounds the programs (groups x row_chunks) by the size of the chip,
// which bounds those reads.
template <int kTables, int kSlots>
__device__ void extend_row_program(const Args<kSlots>& a, int32_t b) {
  constexpr Mode M = Mode::draft_extend;
  const int32_t g = b / a.row_chunks, j = b - g * a.row_chunks;
  const int32_t i0 = g * a.per_group;  // < bs
  const int32_t i1 = i0 < a.bs - a.per_group ? i0 + a.per_group : a.bs;
  static_assert(row_steps(M, kInt32Max) == kRowSteps, "the launcher's chunk width");
  ChunkValues<kRowSteps> c = load_chunk<kRowSteps>(a, source_row(a.in, load_index(a.in.req_pool_indices, i0)), j);
  int64_t r = rows_before(a, i0);
  for (int32_t i = i0; i < i1 && r < a.rows; ++i) {
    if (i > i0) c = load_chunk<kRowSteps>(a, source_row(a.in, load_index(a.in.req_pool_indices, i)), j);
    const int64_t n = rows_of<M>(a.in, a.p.next_n, i);
    const int32_t end = static_cast<int32_t>(r + n < a.rows ? r + n : a.rows);
    if (end > r) {
      store_chunk<M, kTables, kRowSteps>(a, c, Rows<M>{static_cast<int32_t>(r), end - static_cast<int32_t>(r)}, j);
    }
    r += n;
  }
}

template <Mode M, int kTables, int kSlots>
__global__ void __launch_bounds__(kThreads, NSA_MIN_BLOCKS) metadata_kernel(const __grid_constant__ Args<kSlots> a) {
  // (uniform branches on parameters: the path without the schedule is unchanged)
  constexpr bool kScheduled = M != Mode::draft_extend;
  const auto spread = [&] {  // (asked twice, not held in a register across the page program)
    return kScheduled && a.p.num_sm_parts > 0 && a.p.schedule_lengths == ScheduleLengths::topk &&
           spread_has_work(a.p.num_sm_parts, a.rows);
  };
  if (blockIdx.x == 0 && blockIdx.y > 0) {  // no page program, no 1-D outputs: the schedule's alone,
    if (spread()) schedule_spread<false>(a.uniform, a);  // its arithmetic before the wait
    return;  // (without work: no wait, no load or store)
  }
  wait_for_previous_kernel();
  if (blockIdx.x > 0) {
    if constexpr (M == Mode::draft_extend && (kTables & kPageTable1) != 0 && kExtendRowPrograms) {
      if (a.row_chunks > 0) {
        extend_row_program<kTables>(a, static_cast<int32_t>(blockIdx.x) - 1);
      } else {
        page_program<M, kTables>(a, static_cast<int32_t>(blockIdx.x) - 1, static_cast<int32_t>(blockIdx.y));
      }
    } else if constexpr (M != Mode::draft_extend && (kTables & kPageTable1) != 0) {
      if (a.row_chunks > 0 && row_steps(M, a.p.max_len) == kWideRowSteps) {
        row_program<M, kTables, kWideRowSteps>(a, static_cast<int32_t>(blockIdx.x) - 1);
      } else if (a.row_chunks > 0) {
        row_program<M, kTables, kRowSteps>(a, static_cast<int32_t>(blockIdx.x) - 1);
      } else {
        page_program<M, kTables>(a, static_cast<int32_t>(blockIdx.x) - 1, static_cast<int32_t>(blockIdx.y));
      }
    } else {
      page_program<M, kTables>(a, static_cast<int32_t>(blockIdx.x) - 1, static_cast<int32_t>(blockIdx.y));
    }
  } else {
    if (a.p.status != nullptr) {
      meta_block<M, true>(a);
    } else {
      meta_block<M, false>(a);
    }
    if constexpr (kScheduled) {
      if (a.p.num_sm_parts > 0 && a.p.schedule_lengths == ScheduleLengths::sparse) schedule_block(a);
    }
  }
  if (spread()) schedule_spread<true>(a.uniform, a);
}

}  // namespace nsa
