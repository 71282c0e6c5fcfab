// The small path: the kernel engines run at small batches, as templates a C++ engine can include.
// launch.cu chooses it when a call has bs <= 32 (one request per program group), one destination
// set, check=False, kpool == 1 (the plain top-k clamp), no schedule walk, unit-stride index arrays,
// every page_table_1 row read or written starting on 16 bytes, and a power-of-two page size >= 4
// (or no real table); the general kernel (kernels.cuh) runs everything else. At these sizes a
// call's time is its longest chain of dependent instructions, so this kernel is built around it:
// - SmallArgs keeps what a page program reads in its first two 64-byte lines (each launch
//   starts with a cold constant cache);
// - the index dtypes are template parameters (the host knows them): no branch or select per load;
// - a page program issues every load its copy waits on first, then its first round of 16-byte
//   loads, and only then the arithmetic its stores need (draft_extend's row start);
// - block (0, 0) builds the 1-D outputs with its 4 warps (decode, one row per request: warp 0):
//   each warp scans the requests (one per lane) with shuffles, then warp w writes rows w, w + 4,
//   ... of every request, so no lane writes all of its request's rows one after another.
// The grid is the general kernel's (plan_grid): (1 + bs, splits) of 128 threads, block (1 + i, s)
// split s of request i; (1, 1) when there is nothing to copy (no table, no request or no column).
#pragma once

#include "kernels.cuh"  // kThreads, kWarps, kUnroll, Tables, rotate

namespace nsa {

// kIndex bits: which index arrays are int64 (a template parameter of the small kernel).
enum IndexBits : int { kLens64 = 1, kPool64 = 2, kExtend64 = 4 };

struct SmallArgs {
  // what every page program reads: two constant-cache lines
  const void* seq_lens;
  const void* req_pool_indices;
  const void* extend_lens;  // draft_extend
  const int32_t* req_to_token;
  int32_t* page_table_1;
  int32_t* real_page_table;
  int64_t row_stride;           // of req_to_token, in elements
  int64_t pool_rows;            // P
  int64_t page_table_1_stride;  // in elements
  int64_t real_page_table_stride;
  int32_t max_len, splits, rows, next_n;
  int32_t ps_shift;      // log2(page_size)
  int32_t num_sm_parts;  // FlashMLA's schedule (topk rows): 0 = off
  bool live;
  // block (0, 0) and the schedule
  int32_t bs, topk;
  int32_t* cache_seqlens;
  int32_t* cu_seqlens_k;
  int32_t* nsa_cache_seqlens;
  int32_t* nsa_cu_seqlens_k;
  int32_t* seqlens_expanded;  // target_verify and draft_extend
  int32_t* paged_mqa_ctx_lens_2d;
  int64_t paged_mqa_stride0, paged_mqa_stride1;
  int32_t* tile_scheduler_metadata;
  int32_t* num_splits;
  sched::UniformPlan uniform;  // the schedule's closed form (topk rows), from the host
};

// Element i of a unit-stride int32 or int64 array (never trusted for addressing).
template <bool k64>
__device__ inline int64_t load_as(const void* a, int32_t i) {
  if constexpr (k64) return __ldg(static_cast<const long long*>(a) + i);
  return __ldg(static_cast<const int32_t*>(a) + i);
}

template <Mode M, int kIndex>
__device__ inline int64_t small_rows_of(const SmallArgs& a, int32_t i) {
  if constexpr (M == Mode::decode) return 1;
  if constexpr (M == Mode::target_verify) return a.next_n;
  return extend_rows(load_as<(kIndex & kExtend64) != 0>(a.extend_lens, i));
}

// ------------------------------------------------------------------ block (0, 0): 1-D outputs

// kpool is 1 here (the host's choice): sparse(x) = min(x, topk), and the sums' branches for
// kpool > 1 are not compiled (they sat between the hot instructions: 0.07 us at bs 1 on an H100)
constexpr int32_t kSmallPool = 1;

template <Mode M, int kIndex>
__device__ void small_meta(const SmallArgs& a) {
  const int32_t lane = static_cast<int32_t>(threadIdx.x & 31), w = static_cast<int32_t>(threadIdx.x >> 5);
  if (M == Mode::decode && w > 0) return;  // one row per request: warp 0 writes everything
  const bool mine = lane < a.bs;
  const int32_t lens = mine ? wrap32(load_as<(kIndex & kLens64) != 0>(a.seq_lens, lane)) : 0;
  const int64_t nrows = mine ? small_rows_of<M, kIndex>(a, lane) : 0;
  const int32_t cache = cache_seqlen<M>(lens, a.next_n);
  // request terms (outputs wrap modulo 2^32: 32-bit sums are exact), rows in 64 bits (draft_extend)
  const uint32_t own = expanded_sparse_sum<M, uint32_t>(lens, nrows, nrows < a.rows ? nrows : a.rows, a.topk, kSmallPool);
  uint32_t c = static_cast<uint32_t>(cache), s = own;
  long long r = nrows;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t tc = __shfl_up_sync(~0u, c, off), ts = __shfl_up_sync(~0u, s, off);
    const long long tr = M == Mode::draft_extend ? __shfl_up_sync(~0u, r, off) : 0;
    if (lane >= off) c += tc, s += ts, r += tr;
  }
  const uint32_t nsa_before = s - own;  // the rows of the requests before this one
  const int64_t r0 = M == Mode::decode ? lane : M == Mode::target_verify ? int64_t{lane} * a.next_n : r - nrows;
  if (w == 0) {
    if (lane == 0) a.cu_seqlens_k[0] = 0, a.nsa_cu_seqlens_k[0] = 0;
    if (mine) a.cache_seqlens[lane] = cache, a.cu_seqlens_k[lane + 1] = static_cast<int32_t>(c);
  }
  if constexpr (M == Mode::target_verify) {
    if (mine && a.paged_mqa_ctx_lens_2d != nullptr)
      for (int32_t j = w; j < a.next_n; j += kWarps)
        a.paged_mqa_ctx_lens_2d[lane * a.paged_mqa_stride0 + j * a.paged_mqa_stride1] = cache;
  }
  // rows w, w + 4, ... of this request (draft_extend: those below `rows`)
  const int64_t n = r0 + nrows < a.rows ? nrows : a.rows - r0;
  for (int64_t j = w; j < n; j += kWarps) {
    const int64_t e = expanded<M>(lens, nrows, j);
    const int64_t sp = sparse(e, a.topk, kSmallPool);
    const uint32_t before = nsa_before + expanded_sparse_sum<M, uint32_t>(lens, nrows, j, a.topk, kSmallPool);
    const int64_t row = r0 + j;
    if (M != Mode::decode) a.seqlens_expanded[row] = static_cast<int32_t>(e);
    a.nsa_cache_seqlens[row] = wrap32(sp);
    a.nsa_cu_seqlens_k[row + 1] = static_cast<int32_t>(before + static_cast<uint32_t>(sp));
  }
}

// ------------------------------------------------------------------ page programs

// Columns [c, c + 4) (v) to rows [r0, r0 + n) of page_table_1, and the real table where c starts
// a page (page_size is a power of two >= 4: of 4 columns only the first can).
template <Mode M, int kTables>
__device__ inline void small_store(const SmallArgs& a, int64_t r0, int32_t n, int32_t c, int4 v) {
  const int32_t count = M == Mode::decode ? 1 : n;
  if constexpr ((kTables & kPageTable1) != 0) {
    int32_t* dst = a.page_table_1 + r0 * a.page_table_1_stride + c;
#pragma unroll 1
    for (int32_t k = 0; k < count; ++k, dst += a.page_table_1_stride) *reinterpret_cast<int4*>(dst) = v;
  }
  if constexpr ((kTables & kRealTable) != 0) {
    if ((c & ((1 << a.ps_shift) - 1)) == 0) {
      int32_t* dst = a.real_page_table + r0 * a.real_page_table_stride + (c >> a.ps_shift);
#pragma unroll 1
      for (int32_t k = 0; k < count; ++k, dst += a.real_page_table_stride) *dst = v.x >> a.ps_shift;
    }
  }
}

// One column c (value v): page_table_1 rows, and the real table where c starts a page.
template <Mode M, int kTables>
__device__ inline void small_store_one(const SmallArgs& a, int64_t r0, int32_t n, int32_t c, int32_t v) {
  const int32_t count = M == Mode::decode ? 1 : n;
#pragma unroll 1
  for (int32_t k = 0; k < count; ++k) {
    if constexpr ((kTables & kPageTable1) != 0) a.page_table_1[(r0 + k) * a.page_table_1_stride + c] = v;
    if constexpr ((kTables & kRealTable) != 0) {
      if ((c & ((1 << a.ps_shift) - 1)) == 0)
        a.real_page_table[(r0 + k) * a.real_page_table_stride + (c >> a.ps_shift)] = v >> a.ps_shift;
    }
  }
}

// Split s of request i: its live columns (all max_len without live) in steps of 128 x 16 bytes,
// steps s, s + splits, ..., kUnroll steps in flight; the real table from the same loads (or, real
// table only, one element per page).
template <Mode M, int kTables, int kIndex>
__device__ void small_program(const SmallArgs& a, int32_t i, int32_t s) {
  const int32_t tid = static_cast<int32_t>(threadIdx.x);
  // every load the copy waits on, first and together
  const int64_t q = load_as<(kIndex & kPool64) != 0>(a.req_pool_indices, i);
  const int32_t lens = wrap32(load_as<(kIndex & kLens64) != 0>(a.seq_lens, i));
  const int64_t nrows = small_rows_of<M, kIndex>(a, i);
  const int64_t lane_rows = M == Mode::draft_extend && (tid & 31) < i ? small_rows_of<M, kIndex>(a, tid & 31) : 0;
  const bool ok = static_cast<uint64_t>(q) < static_cast<uint64_t>(a.pool_rows);  // else -1s
  const int32_t* src = a.req_to_token + (ok ? q : 0) * a.row_stride;
  const int32_t n_cols = static_cast<int32_t>(live_cols(a.live, cache_seqlen<M>(lens, a.next_n), a.max_len));
  const int32_t round = a.splits * kUnroll;  // steps between this program's rounds
  // the rows: [r0, r0 + n); draft_extend's start is the sum of the requests before (the warp's
  // lanes < i), reduced once the first round's loads are in flight
  const auto rows_start = [&](int64_t* r0, int32_t* n) {
    if constexpr (M == Mode::draft_extend) {
      long long before = lane_rows;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) before += __shfl_xor_sync(~0u, before, off);
      *r0 = before;
      const int64_t left = a.rows - before;
      *n = static_cast<int32_t>(left <= 0 ? 0 : nrows < left ? nrows : left);
    } else {
      *r0 = M == Mode::decode ? i : int64_t{i} * a.next_n;
      *n = static_cast<int32_t>(nrows);
    }
  };
  if constexpr (kTables == kRealTable) {  // real table only: one element per page
    const int32_t n_real = static_cast<int32_t>((int64_t{n_cols} + (1 << a.ps_shift) - 1) >> a.ps_shift);
    int32_t v[kUnroll];
    const auto load = [&](int32_t m) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t rc = (m + u * a.splits) * kThreads + tid;
        v[u] = rc < n_real && ok ? __ldg(src + (int64_t{rc} << a.ps_shift)) : -1;
      }
    };
    load(s);
    int64_t r0;
    int32_t n;
    rows_start(&r0, &n);
    for (int32_t m = s; m * kThreads < n_real; m += round) {
#pragma unroll 1
      for (int u = 0; u < kUnroll; ++u, rotate(v)) {
        const int32_t rc = (m + u * a.splits) * kThreads + tid;
        if (rc < n_real)
          for (int32_t k = 0; k < (M == Mode::decode ? 1 : n); ++k)
            a.real_page_table[(r0 + k) * a.real_page_table_stride + rc] = v[0] >> a.ps_shift;
      }
      if ((m + round) * kThreads < n_real) load(m + round);
    }
    return;
  }
  const int32_t nvec = n_cols >> 2;
  // the last n_cols % 4 columns: threads 0-2 of split 0, loaded with the first round (no int32
  // wrap near INT32_MAX)
  const bool has_tail = s == 0 && tid < (n_cols & 3);
  const int32_t tail_col = has_tail ? 4 * nvec + tid : 0;
  const int32_t tail_v = has_tail && ok ? __ldg(src + tail_col) : -1;
  const int4* vsrc = reinterpret_cast<const int4*>(src);
  int4 v[kUnroll];
  const auto load = [&](int32_t m) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int32_t k = (m + u * a.splits) * kThreads + tid;
      v[u] = k < nvec && ok ? __ldg(vsrc + k) : make_int4(-1, -1, -1, -1);
    }
  };
  load(s);
  int64_t r0;
  int32_t n;
  rows_start(&r0, &n);
  for (int32_t m = s; m * kThreads < nvec; m += round) {
#pragma unroll 1
    for (int u = 0; u < kUnroll; ++u, rotate(v)) {
      const int32_t k = (m + u * a.splits) * kThreads + tid;
      if (k < nvec) small_store<M, kTables>(a, r0, n, 4 * k, v[0]);
    }
    if ((m + round) * kThreads < nvec) load(m + round);
  }
  if (has_tail) small_store_one<M, kTables>(a, r0, n, tail_col, tail_v);
}

// FlashMLA's schedule (topk rows) spread over every thread, blocks without a page program
// first and block (0, 0) last (the order of kernels.cuh's schedule_spread). Out of line, so a
// call without the schedule reads none of its fields; the plan and the pointers come by value:
// through a reference the callee read the kernel's parameters with generic loads (17 of them,
// partly dependent), +0.74 us at decode 1 x 4096 on an H100 (benchmarks/probe.cu).
template <bool kWaited>
__device__ __noinline__ void small_schedule(const sched::UniformPlan u, const sched::PtrSink sink) {
  sched::schedule_uniform(u, sink, spread_rank() * kThreads + static_cast<int32_t>(threadIdx.x), spread_threads(),
                          WaitUnless<kWaited>{});
}

// kIndex: IndexBits of the index arrays' dtypes.
template <Mode M, int kTables, int kIndex>
__global__ void __launch_bounds__(kThreads) small_kernel(const __grid_constant__ SmallArgs a) {
  const bool spread = M != Mode::draft_extend && a.num_sm_parts > 0 && spread_has_work(a.num_sm_parts, a.rows);
  const sched::PtrSink sink{a.tile_scheduler_metadata, a.num_splits};
  if (blockIdx.x == 0 && blockIdx.y > 0) {  // the schedule's alone: its arithmetic before the wait
    if (spread) small_schedule<false>(a.uniform, sink);
    return;
  }
  wait_for_previous_kernel();
  if (blockIdx.x > 0) {
    small_program<M, kTables, kIndex>(a, static_cast<int32_t>(blockIdx.x) - 1, static_cast<int32_t>(blockIdx.y));
  } else {
    small_meta<M, kIndex>(a);
  }
  if (spread) small_schedule<true>(a.uniform, sink);
}

}  // namespace nsa
