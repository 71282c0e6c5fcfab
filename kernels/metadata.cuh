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

// sum of sparse(y) for 0 <= y < x (0 <= x <= 2^31), in closed form: sparse(y) = y below
// y0 = (floor(topk/kpool) + 1) * kpool, and topk + (y - y0) mod kpool from there.
__host__ __device__ inline int64_t sparse_prefix(int64_t x, int64_t topk, int64_t kpool) {
  const int64_t y0 = (int64_t{static_cast<int32_t>(topk) / static_cast<int32_t>(kpool)} + 1) * kpool;
  if (x <= y0) return x * (x - 1) / 2;
  const int64_t m = x - y0;  // in (0, 2^31]: unsigned 32-bit division
  const int64_t full = static_cast<uint32_t>(m) / static_cast<uint32_t>(kpool), rem = m - full * kpool;
  return y0 * (y0 - 1) / 2 + m * topk + full * (kpool * (kpool - 1) / 2) + rem * (rem - 1) / 2;
}

// sum of sparse(max(v, 0)) over the consecutive values lo <= v <= hi (draft_extend rows).
__host__ __device__ inline int64_t sparse_range_sum(int64_t lo, int64_t hi, int64_t topk,
                                                    int64_t kpool) {
  if (hi < 0 || hi < lo) return 0;  // max(v, 0) = 0 and sparse(0) = 0
  return sparse_prefix(hi + 1, topk, kpool) - sparse_prefix(lo < 0 ? 0 : lo, topk, kpool);
}

// ---- the modes (SPEC "Modes"): rows a request owns, cache_seqlens, seqlens_expanded, L

// Rows request i owns: decode 1, target_verify next_n, draft_extend max(extend_lens[i], 0).
template <Mode M>
__device__ inline int64_t rows_of(const Inputs& in, int32_t next_n, int64_t i) {
  if constexpr (M == Mode::decode) return 1;
  if constexpr (M == Mode::target_verify) return next_n;
  const int64_t e = wrap32(load_index(in.extend_lens, i));
  return e > 0 ? e : 0;
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

// Columns of a page row written: max_len, or with live the row's clamp(L, 0, max_len).
__host__ __device__ inline int64_t live_cols(bool live, int32_t L, int64_t max_len) {
  if (!live) return max_len;
  return L < 0 ? 0 : (L < max_len ? L : max_len);
}

}  // namespace nsa
