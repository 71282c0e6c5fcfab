// ctest, host only (runs without a GPU): metadata.cuh's closed-form sums against plain loops over
// sparse(). Both kernels take their nsa running sums from these functions: exact in int64_t
// (check=True must see an overflow), modulo 2^32 in uint32_t (the fast paths' outputs wrap there).
// Exhaustive over small arguments, random over large ones; int32 edge values included.
#include <cstdint>
#include <cstdio>
#include <random>

#include "metadata.cuh"

namespace {

int failures = 0;

void expect(bool ok, const char* what, long long a, long long b, long long c, long long d) {
  if (ok) return;
  if (++failures <= 20) std::printf("FAIL %s (%lld, %lld, %lld, %lld)\n", what, a, b, c, d);
}

// SPEC's sparse(x) and seqlens_expanded, written again from SPEC.md (not metadata.cuh's)
int64_t spec_sparse(int64_t x, int64_t topk, int64_t kpool) {
  if (kpool == 1) return x < topk ? x : topk;
  const int64_t q = x >= 0 ? x / kpool : -((-x + kpool - 1) / kpool);  // floor(x / kpool)
  const int64_t c = q * kpool;
  return (c < topk ? c : topk) + (x - c);
}
template <nsa::Mode M>
int64_t spec_expanded(int32_t lens, int64_t nrows, int64_t j) {
  if (M == nsa::Mode::decode) return lens;
  if (M == nsa::Mode::target_verify) return static_cast<int32_t>(static_cast<uint32_t>(int64_t{lens} + j + 1));
  const int64_t v = int64_t{lens} - nrows + j + 1;
  return v > 0 ? v : 0;
}

// sum of sparse(y) for lo <= y < hi, one at a time
int64_t brute(int64_t lo, int64_t hi, int32_t topk, int32_t kpool) {
  int64_t s = 0;
  for (int64_t y = lo; y < hi; ++y) s += spec_sparse(y, topk, kpool);
  return s;
}

// sparse_prefix in both types against the loop (x small enough to loop)
void prefix_case(int64_t x, int32_t topk, int32_t kpool) {
  const int64_t want = brute(0, x, topk, kpool);
  expect(nsa::sparse_prefix<int64_t>(x, topk, kpool) == want, "sparse_prefix<int64_t>", x, topk, kpool, want);
  expect(nsa::sparse_prefix<uint32_t>(static_cast<uint32_t>(x), topk, kpool) == static_cast<uint32_t>(want),
         "sparse_prefix<uint32_t>", x, topk, kpool, want);
}

// the row sums of a request, rows [0, m), against sparse() of each row's seqlens_expanded
template <nsa::Mode M>
void rows_case(int32_t lens, int64_t nrows, int64_t m, int32_t topk, int32_t kpool) {
  int64_t want = 0;
  for (int64_t j = 0; j < m; ++j) want += spec_sparse(spec_expanded<M>(lens, nrows, j), topk, kpool);
  expect(nsa::expanded_sparse_sum<M, int64_t>(lens, nrows, m, topk, kpool) == want, "expanded_sparse_sum<int64_t>",
         lens, nrows, m, want);
  expect(nsa::expanded_sparse_sum<M, uint32_t>(lens, nrows, m, topk, kpool) == static_cast<uint32_t>(want),
         "expanded_sparse_sum<uint32_t>", lens, nrows, m, want);
}

}  // namespace

int main() {
  std::mt19937_64 rng(15);
  const int32_t kMax = 2147483647;
  // pairs: x (x - 1) / 2, exact and modulo 2^32, up to 2^32 - 1
  for (int64_t x : {0LL, 1LL, 2LL, 3LL, 65535LL, 65536LL, 2147483647LL, 2147483648LL, 4294967295LL}) {
    const __int128 want = static_cast<__int128>(x) * (x - 1) / 2;  // (x (x - 1) passes 2^63)
    expect(nsa::pairs<int64_t>(x) == static_cast<int64_t>(want), "pairs<int64_t>", x, 0, 0, 0);
    expect(nsa::pairs<uint32_t>(static_cast<uint32_t>(x)) == static_cast<uint32_t>(want), "pairs<uint32_t>", x, 0,
           0, 0);
  }
  for (int k = 0; k < 100000; ++k) {
    const int64_t x = static_cast<int64_t>(rng() % 4294967296ULL);
    expect(nsa::pairs<uint32_t>(static_cast<uint32_t>(x)) == static_cast<uint32_t>(nsa::pairs<int64_t>(x)),
           "pairs<uint32_t> vs int64_t", x, 0, 0, 0);
  }
  // sparse_prefix: every small argument, then large x with every kind of topk and kpool
  for (int32_t kpool = 1; kpool <= 12; ++kpool)
    for (int32_t topk = 1; topk <= 40; ++topk)
      for (int64_t x = 0; x <= 130; ++x) prefix_case(x, topk, kpool);
  for (int k = 0; k < 300; ++k) {
    const int32_t kpools[] = {1, 1, 2, 3, 64, static_cast<int32_t>(rng() % 5000 + 1), kMax};
    const int32_t topks[] = {1, 7, 2048, static_cast<int32_t>(rng() % 100000 + 1), kMax};
    prefix_case(static_cast<int64_t>(rng() % 200000), topks[rng() % 5], kpools[rng() % 7]);
  }
  // large x, looped: sums past 2^32 (the uint32_t result wraps), x past y0 with small pools
  prefix_case(int64_t{1} << 27, kMax, 1);
  prefix_case((int64_t{1} << 27) - 3, 2048, 1);
  prefix_case((int64_t{1} << 27) + 5, 100000, 64);
  prefix_case(int64_t{1} << 26, kMax, 3);
  // uint32_t against int64_t where looping is out of reach (x up to 2^31)
  for (int k = 0; k < 200000; ++k) {
    const int64_t x = static_cast<int64_t>(rng() % 2147483649ULL);
    const int32_t topk = k % 3 == 0 ? kMax : static_cast<int32_t>(rng() % kMax + 1);
    const int32_t kpool = k % 2 == 0 ? 1 : static_cast<int32_t>(rng() % (k % 5 == 1 ? kMax : 4096) + 1);
    expect(nsa::sparse_prefix<uint32_t>(static_cast<uint32_t>(x), topk, kpool) ==
               static_cast<uint32_t>(nsa::sparse_prefix<int64_t>(x, topk, kpool)),
           "sparse_prefix<uint32_t> vs int64_t", x, topk, kpool, 0);
  }
  // sparse_range_sum over runs that start below 0 (max(v, 0) counts 0) or are empty
  for (int32_t kpool : {1, 3})
    for (int32_t topk : {1, 5, 17})
      for (int64_t lo = -20; lo <= 40; ++lo)
        for (int64_t hi = lo - 2; hi <= lo + 60; ++hi) {
          const int64_t want = hi < 0 || hi < lo ? 0 : brute(lo < 0 ? 0 : lo, hi + 1, topk, kpool);
          expect(nsa::sparse_range_sum<int64_t>(lo, hi, topk, kpool) == want, "sparse_range_sum", lo, hi, topk, kpool);
        }
  // the rows of one request: target_verify (lengths negative or wrapping past INT32_MAX take the
  // loop) and draft_extend (rows before 0 count 0), decode's one row
  const int32_t lens_of[] = {-2147483647 - 1, -7, -1, 0, 1, 5, 2047, 2048, 2049, 100000, kMax - 5, kMax - 1, kMax};
  for (int32_t kpool : {1, 2, 64})
    for (int32_t topk : {1, 2048, kMax})
      for (int32_t lens : lens_of) {
        for (int64_t m = 0; m <= 9; ++m) {
          rows_case<nsa::Mode::target_verify>(lens, 9, m, topk, kpool);
          rows_case<nsa::Mode::decode>(lens, 1, m < 1 ? m : 1, topk, kpool);
        }
        for (int64_t nrows : {0LL, 1LL, 4LL, 9LL, 70000LL})
          for (int64_t m : {0LL, 1LL, 3LL, 4LL, 9LL, 70000LL})
            if (m <= nrows) rows_case<nsa::Mode::draft_extend>(lens, nrows, m, topk, kpool);
      }
  // target_verify's hostile lengths with many rows: below 0 up to past 0, up to past INT32_MAX
  for (int32_t kpool : {1, 3, 64})
    for (int32_t topk : {1, 2048, kMax})
      for (int32_t lens : {-2147483647 - 1, -70000, -5, 0, 3, kMax - 70000, kMax - 5, kMax})
        for (int64_t m : {10LL, 4097LL, 70000LL, 140001LL}) rows_case<nsa::Mode::target_verify>(lens, m, m, topk, kpool);
  for (int k = 0; k < 3000; ++k) {
    const int64_t m = 1 + static_cast<int64_t>(rng() % 3000);
    const int32_t lens = static_cast<int32_t>(rng() % 2 ? kMax - static_cast<int64_t>(rng() % 6000)
                                                        : -static_cast<int64_t>(rng() % 6000));
    rows_case<nsa::Mode::target_verify>(lens, m, 1 + static_cast<int64_t>(rng() % m), 1 + static_cast<int32_t>(rng() % 4000),
                                        1 + static_cast<int32_t>(rng() % 5));
  }
  // one run at full scale, INT32_MAX - 1 rows from 2^30 below INT32_MAX: past it and wrapped
  rows_case<nsa::Mode::target_verify>(kMax - (1 << 30), kMax - 1, kMax - 1, 2048, 1);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("test_sums: every closed form equals its loop\n");
  return 0;
}
