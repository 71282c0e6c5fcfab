// SPEC.md's formulas as device functions, with SPEC's names: the scalar helpers, then each
// mode's rows and lengths in one place. Nothing else lives here.
#pragma once

#include <cstdint>

#include "launch.h"

namespace nsa {

constexpr int64_t kInt32Min = -2147483648LL;
constexpr int64_t kInt32Max = 2147483647LL;

// Two's-complement truncation to int32 (torch's .to(torch.int32)); sums wrap modulo 2^32.
__host__ __device__ inline int32_t wrap32(int64_t x) {
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(x)));
}

__host__ __device__ inline bool outside_int32(int64_t x) { return x < kInt32Min || x > kInt32Max; }

// The raw value of element i of a 1-D int32/int64 array (never trusted for addressing).
__device__ inline int64_t load_index(const IndexArray& a, int64_t i) {
  return a.is64 ? __ldg(static_cast<const long long*>(a.data) + i * a.stride)
                : __ldg(static_cast<const int32_t*>(a.data) + i * a.stride);
}

// floor division (Python's //) of an int32 value by d >= 1; shift >= 0 when d == 1 << shift.
// 32-bit on purpose: every value divided here is an int32 (a length or a token slot), and a
// 64-bit division is a long subroutine in every kernel that inlines it.
__host__ __device__ inline int32_t floor_div(int32_t v, int32_t d, int shift) {
  if (shift >= 0) return v >> shift;  // arithmetic shift floors negatives too
  const int32_t q = v / d;
  return (q * d != v && v < 0) ? q - 1 : q;
}

// sparse(x) = min(x, topk) when kpool == 1, else min(floor(x/kpool)*kpool, topk) + (x mod kpool);
// x is an int32 value (every mode's seqlens_expanded is), the result exact in int64.
__host__ __device__ inline int64_t sparse(int64_t x, int64_t topk, int64_t kpool) {
  if (kpool == 1) return x < topk ? x : topk;
  const int64_t c = int64_t{floor_div(static_cast<int32_t>(x), static_cast<int32_t>(kpool), -1)} * kpool;
  return (c < topk ? c : topk) + (x - c);
}

// x * (x - 1) / 2 for 0 <= x < 2^32: exact in int64_t, modulo 2^32 in uint32_t (the fast path's
// outputs wrap there, and 32-bit products are its shortest chain).
template <class T>
__host__ __device__ inline T pairs(T x) {
  return (x & 1) ? x * ((x - 1) / 2) : x / 2 * (x - 1);
}

// sum of sparse(y) for 0 <= y < x (0 <= x <= 2^31), in closed form: sparse(y) = y below
// y0 = (floor(topk/kpool) + 1) * kpool, and topk + (y - y0) mod kpool from there. Every value
// compared or divided is below 2^32, so T = uint32_t gives the sum modulo 2^32.
template <class T>
__host__ __device__ inline T sparse_prefix(T x, int32_t topk, int32_t kpool) {
  const T k = static_cast<T>(topk);
  if (kpool == 1) {  // the same sum without the divisions
    const T y1 = k + 1;
    return x <= y1 ? pairs(x) : pairs(y1) + (x - y1) * k;
  }
  const T p = static_cast<T>(kpool);
  const T y0 = (static_cast<T>(topk / kpool) + 1) * p;
  if (x <= y0) return pairs(x);
  const T m = x - y0;  // in (0, 2^31]: unsigned 32-bit division
  const T full = static_cast<T>(static_cast<uint32_t>(m) / static_cast<uint32_t>(kpool)), rem = m - full * p;
  return pairs(y0) + m * k + full * pairs(p) + pairs(rem);
}

// sum of sparse(max(v, 0)) over the consecutive values lo <= v <= hi <= INT32_MAX.
template <class T>
__host__ __device__ inline T sparse_range_sum(int64_t lo, int64_t hi, int32_t topk, int32_t kpool) {
  if (hi < 0 || hi < lo) return 0;  // max(v, 0) = 0 and sparse(0) = 0
  return sparse_prefix(static_cast<T>(hi + 1), topk, kpool) - sparse_prefix(static_cast<T>(lo < 0 ? 0 : lo), topk, kpool);
}

// ---- the modes (SPEC "Modes"): rows a request owns, cache_seqlens, seqlens_expanded, L

// Rows a draft_extend request owns, from its raw extend_lens value: max(int32(raw), 0).
__host__ __device__ inline int64_t extend_rows(int64_t raw) {
  const int64_t e = wrap32(raw);
  return e > 0 ? e : 0;
}

// Rows request i owns: decode 1, target_verify next_n, draft_extend max(extend_lens[i], 0).
template <Mode M>
__device__ inline int64_t rows_of(const Inputs& in, int32_t next_n, int64_t i) {
  if constexpr (M == Mode::decode) return 1;
  if constexpr (M == Mode::target_verify) return next_n;
  return extend_rows(load_index(in.extend_lens, i));
}

// cache_seqlens[i], which is also L of every row of request i.
template <Mode M>
__host__ __device__ inline int32_t cache_seqlen(int32_t lens, int32_t next_n) {
  if constexpr (M == Mode::target_verify) return wrap32(int64_t{lens} + next_n);
  return lens;
}

// seqlens_expanded of row j of a request that owns `nrows` rows (decode: its length).
template <Mode M>
__host__ __device__ inline int64_t expanded(int32_t lens, int64_t nrows, int64_t j) {
  if constexpr (M == Mode::decode) return lens;
  if constexpr (M == Mode::target_verify) return wrap32(int64_t{lens} + j + 1);
  const int64_t v = int64_t{lens} - nrows + j + 1;
  return v > 0 ? v : 0;
}

// lo + (lo + 1) + ... + hi for INT32_MIN <= lo, hi <= INT32_MAX and fewer than 2^32 terms (0 when
// hi < lo): exact in int64_t, modulo 2^32 in uint32_t.
template <class T>
__host__ __device__ inline T linear_sum(int64_t lo, int64_t hi) {
  if (hi < lo) return 0;
  const T n = static_cast<T>(hi - lo + 1);
  return n * static_cast<T>(lo) + pairs(n);
}

// expanded_sparse_sum of target_verify's hostile lengths: the values lens + 1 .. lens + m (int64,
// m <= INT32_MAX) in closed form. Those below 0 count themselves (sparse(x) = x there); those
// from 0 to INT32_MAX, sparse(x); those past INT32_MAX wrap to x - 2^32, below 0 again. (Out of
// line: cold.)
template <class T>
__host__ __device__ __noinline__ T wrapped_sparse_sum(int32_t lens, int64_t m, int32_t topk, int32_t kpool) {
  constexpr int64_t kWrap = int64_t{1} << 32;
  const int64_t lo = int64_t{lens} + 1, hi = int64_t{lens} + m;
  const int64_t hi_int = hi < kInt32Max ? hi : kInt32Max;  // the values that do not wrap: [lo, hi_int]
  const int64_t lo_wrap = lo > kInt32Max ? lo : kInt32Max + 1;  // those that do: [lo_wrap, hi]
  return linear_sum<T>(lo, hi_int < -1 ? hi_int : -1) + sparse_range_sum<T>(lo, hi_int, topk, kpool) +
         linear_sum<T>(lo_wrap - kWrap, hi - kWrap);
}

// sum of sparse(seqlens_expanded) over rows [0, m) of a request that owns `nrows` rows (exact in
// int64_t, modulo 2^32 in uint32_t), in closed form (target_verify's hostile lengths, which wrap or
// are negative, out of line).
template <Mode M, class T>
__host__ __device__ inline T expanded_sparse_sum(int32_t lens, int64_t nrows, int64_t m, int32_t topk, int32_t kpool) {
  if (m <= 0) return 0;
  if constexpr (M == Mode::decode) return static_cast<T>(sparse(lens, topk, kpool));
  if constexpr (M == Mode::target_verify) {
    if (lens >= 0 && int64_t{lens} + m <= kInt32Max)
      return sparse_range_sum<T>(int64_t{lens} + 1, int64_t{lens} + m, topk, kpool);
    return wrapped_sparse_sum<T>(lens, m, topk, kpool);
  }
  const int64_t lo = int64_t{lens} - nrows + 1;
  return sparse_range_sum<T>(lo, lo + m - 1, topk, kpool);
}

// Columns of a page row written: max_len, or with live the row's clamp(L, 0, max_len).
__host__ __device__ inline int64_t live_cols(bool live, int32_t L, int64_t max_len) {
  if (!live) return max_len;
  return L < 0 ? 0 : (L < max_len ? L : max_len);
}

}  // namespace nsa
