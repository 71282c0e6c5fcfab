// FlashMLA's sparse decode schedule (docs/SPEC_schedule.md): tile_scheduler_metadata
// [parts, 8] and num_splits [bs + 1], int32, computed in parallel. Framework-free: include it,
// give it the lengths and a Sink that stores, call it from the threads the contract says.
//
// The rules (FlashMLA's greedy fill, python/nsa_metadata/schedule.py) in positions: request i
// costs c[i] = num_blocks[i] + kOverhead "units", its boundaries are C = cumsum0(c), T = C[bs],
// and q = ceil(T / parts). Part p starts at u[p]: u[0] = 0 and u[p + 1] is the last boundary in
// [u[p] + q, u[p] + q + kOverhead] if there is one (what is left cannot pay for a piece of the
// next request), else u[p] + q, and T once that window reaches T. A start on a boundary is an
// anchor; from an anchor U the starts are U + t*q until the first boundary a window holds, so
// the walk below goes from anchor to anchor with one block-wide vote each, and every start,
// field and num_splits entry follows from the anchor and t. With equal lengths the anchors are
// periodic and every value has a closed form (UniformPlan): no walk at all.
//
// Arithmetic is int32 on purpose (no 64-bit division): it is exact whenever
// schedule_fits(bs, max_length, parts) holds, which is FlashMLA's own int32 domain; the host
// checks it. Whatever the lengths, no store leaves [0, parts) x [0, 8) and [0, bs], and the walk
// ends (every round moves past a boundary).
#pragma once

#include <cstdint>

namespace nsa {
namespace sched {

constexpr int kBlockN = 64;        // tokens per block of FlashMLA's sparse decode
constexpr int kOverhead = 5;       // FlashMLA's fixed cost of a piece of a request, in blocks
constexpr int kWidth = 8;          // int32 fields per part, the last one padding
constexpr int kWalkThreads = 128;  // schedule_walk's block size
constexpr int kWalkWarps = kWalkThreads / 32;

// tile_scheduler_metadata columns
enum Field : int {
  kBeginReq = 0,
  kEndReq = 1,
  kBeginBlock = 2,
  kEndBlock = 3,
  kBeginSplit = 4,
  kFirstSplit = 5,
  kLastSplit = 6,
  kPad = 7,
};

// Blocks a request of s tokens is scheduled for; s <= 0 counts as one token.
__host__ __device__ inline int32_t num_blocks(int32_t s) {
  return (s > 1 ? s - 1 : 0) / kBlockN + 1;
}

// The host's check: every request has at most max_length tokens, and FlashMLA's int32
// arithmetic holds (total cost + parts - 1 <= INT32_MAX).
__host__ __device__ inline bool schedule_fits(int64_t bs, int32_t max_length, int32_t parts) {
  return bs >= 0 && parts >= 1 &&
         bs * (num_blocks(max_length) + kOverhead) + parts - 1 <= int64_t{2147483647};
}

// A Sink has
//   __device__ void meta(int32_t part, int field, int32_t v) const;  // tile_scheduler_metadata
//   __device__ void num_splits(int32_t k, int32_t v) const;          // num_splits[k]
// and stores wherever the caller wants (several destination sets: a loop). This one stores to
// one pair of contiguous arrays.
struct PtrSink {
  int32_t* tile_scheduler_metadata;  // [parts, kWidth]
  int32_t* splits;                   // [bs + 1]
  __device__ void meta(int32_t part, int field, int32_t v) const {
    tile_scheduler_metadata[int64_t{part} * kWidth + field] = v;
  }
  __device__ void num_splits(int32_t k, int32_t v) const { splits[k] = v; }
};

// One part's row from where it starts and where it ends: (request, block) of both, its split
// index, whether the start lies inside a request (the request is split there), and whether its
// start and end lie in one request.
template <class Sink>
__device__ inline void store_row(const Sink& sink, int32_t p, int32_t begin_req, int32_t begin_blk,
                                 int32_t begin_split, int32_t end_req, int32_t end_blk, bool first,
                                 bool last, bool one_request) {
  if (one_request) first = last = first || last;  // either end split: the one request is split
  sink.meta(p, kBeginReq, begin_req);
  sink.meta(p, kEndReq, end_req);
  sink.meta(p, kBeginBlock, begin_blk);
  sink.meta(p, kEndBlock, end_blk);
  sink.meta(p, kBeginSplit, begin_split);
  sink.meta(p, kFirstSplit, first);
  sink.meta(p, kLastSplit, last);
  sink.meta(p, kPad, 0);
}

// ------------------------------------------------------------------ every request of one length

#ifndef NSA_FAST_DIV
#define NSA_FAST_DIV 1  // the plan's divisions by multiply and shift (Divider::fast); 0: plain division
                        // (H100, decode 1 x 4096 live with the schedule: 1.12-1.13x the copy floor against
                        // 1.21x; plain division stays as the fallback until the device tests pass on this)
#endif

// n / d for 0 <= n < 2^31 and 1 <= d < 2^31, d fixed on the host. The GPU has no integer divide
// instruction, so a run-time int32 division is a sequence of dependent ones, and a part's row
// needs several in a row; fast() is one multiply and a shift:
// m = ceil(2^(31 + l) / d) with 2^l >= d fits 32 bits, and its error m d - 2^(31 + l) < 2^l keeps
// n m / 2^(31 + l) below the next integer for every n < 2^31 (Granlund and Montgomery's bound;
// test_schedule checks it against plain division on the host).
struct Divider {
  uint32_t m;
  int32_t shift;  // 31 + l
  __host__ __device__ int32_t fast(int32_t n) const {
    return static_cast<int32_t>((uint64_t{static_cast<uint32_t>(n)} * m) >> shift);
  }
};

__host__ __device__ inline Divider make_divider(int32_t d) {
  if (d < 1) d = 1;  // (a plan's unused divisor: D without an anchor, q without requests)
  int l = 0;
  while ((int64_t{1} << l) < d) ++l;
  const uint64_t m = ((uint64_t{1} << (31 + l)) + static_cast<uint64_t>(d) - 1) / static_cast<uint64_t>(d);
  return {static_cast<uint32_t>(m), 31 + l};
}

// Every request has n blocks (FlashMLA without topk_length: n = num_blocks(topk)). From an anchor
// the first window that holds a boundary is the G-th, D requests on; every anchor repeats it.
// Computed once per (length, bs, parts), on the host or in one thread.
struct UniformPlan {
  int32_t bs, parts;
  int32_t n;      // blocks of every request
  int32_t c;      // cost of a request: n + kOverhead
  int32_t total;  // bs * c
  int32_t q;      // ceil(total / parts): every part moves at least this far
  int32_t G;      // parts from an anchor to the next (parts + 1: no next anchor)
  int32_t D;      // requests from an anchor to the next
#if NSA_FAST_DIV
  Divider by[4];  // the divisions by c, q, G and D (plan_div)
#endif
};

enum PlanDivisor : int { kByC = 0, kByQ = 1, kByG = 2, kByD = 3 };

// n / (u.c, u.q, u.G or u.D) for 0 <= n < 2^31.
template <PlanDivisor k>
__host__ __device__ inline int32_t plan_div(const UniformPlan& u, int32_t n) {
#if NSA_FAST_DIV
  return u.by[k].fast(n);
#else
  return n / (k == kByC ? u.c : k == kByQ ? u.q : k == kByG ? u.G : u.D);
#endif
}

// p % u.G for 0 <= p < 2^31.
__host__ __device__ inline int32_t plan_mod_G(const UniformPlan& u, int32_t p) {
#if NSA_FAST_DIV
  return p - u.by[kByG].fast(p) * u.G;
#else
  return p % u.G;
#endif
}

__host__ __device__ inline UniformPlan uniform_plan(int32_t length, int32_t bs, int32_t parts) {
  UniformPlan u;
  u.bs = bs;
  u.parts = parts;
  u.n = num_blocks(length);
  u.c = u.n + kOverhead;
  u.total = bs * u.c;
  u.q = u.total / parts + (u.total % parts != 0);
  u.G = parts + 1;
  u.D = 0;
  for (int32_t m = 1; m <= parts && m <= u.c; ++m) {  // m = c has a boundary at m * q itself
    const int64_t at = int64_t{m} * u.q;
    const int64_t next = (at + u.c - 1) / u.c;  // the first boundary at or after m * q
    if (next * u.c - at <= kOverhead) {
      u.G = m;
      u.D = static_cast<int32_t>(next);
      break;
    }
  }
#if NSA_FAST_DIV
  u.by[kByC] = make_divider(u.c);
  u.by[kByQ] = make_divider(u.q);
  u.by[kByG] = make_divider(u.G);
  u.by[kByD] = make_divider(u.D);
#endif
  return u;
}

// Where part p (0 <= p <= parts) starts; *anchor gets the position of its anchor.
__host__ __device__ inline int32_t uniform_start(const UniformPlan& u, int32_t p, int32_t* anchor) {
  const int64_t a = int64_t{plan_div<kByG>(u, p)} * u.D * u.c;
  const int64_t x = a + int64_t{plan_mod_G(u, p)} * u.q;
  *anchor = a < u.total ? static_cast<int32_t>(a) : u.total;
  return x < u.total ? static_cast<int32_t>(x) : u.total;
}

// Row p of tile_scheduler_metadata, as store_row's arguments, into row[kWidth].
__host__ __device__ inline void uniform_row(const UniformPlan& u, int32_t p, int32_t row[kWidth]) {
  int32_t a0, a1;
  const int32_t s0 = uniform_start(u, p, &a0), s1 = uniform_start(u, p + 1, &a1);
  const int32_t r0 = plan_div<kByC>(u, s0), b0 = s0 - r0 * u.c;  // request and block where p starts
  const int32_t r1 = plan_div<kByC>(u, s1), b1 = s1 - r1 * u.c;  // ... and where it ends (p + 1 starts)
  // split index: t - (the parts of this anchor that start at or before the request's start)
  const int32_t split = b0 > 0 ? plan_mod_G(u, p) - plan_div<kByQ>(u, r0 * u.c - a0) : 0;
  bool first = b0 > 0, last = b1 > 0;
  const int32_t end_req = b1 > 0 ? r1 : r1 - 1;
  if (r0 == end_req) first = last = first || last;
  row[kBeginReq] = r0;
  row[kEndReq] = end_req;
  row[kBeginBlock] = b0;
  row[kEndBlock] = b1 > 0 ? b1 : (r1 > 0 ? u.n : 0);
  row[kBeginSplit] = split;
  row[kFirstSplit] = first;
  row[kLastSplit] = last;
  row[kPad] = 0;
}

// num_splits[k] (0 <= k <= bs): k + the parts that start inside a request before boundary k.
__host__ __device__ inline int32_t uniform_num_splits(const UniformPlan& u, int32_t k) {
  if (k == 0) return 0;
  const int32_t i = u.G <= u.parts ? plan_div<kByD>(u, k) : 0;  // the anchor at or before boundary k
  const int32_t r = k - i * u.D;
  int32_t inside = i * (u.G - 1);                   // the split starts of the anchors before
  if (r > 0) {                                      // ... and of anchor i below r * c past it
    const int32_t t = plan_div<kByQ>(u, r * u.c - 1);
    inside += t < u.G - 1 ? t : u.G - 1;
  }
  return k + inside;
}

// Every row and num_splits entry, threads thread, thread + nthreads, ... of the caller's (any
// threads of any blocks: no barrier, no shared memory). The values depend on the plan alone, so a
// thread's first row and entry are computed before `wait()` and stored after it: a kernel that may
// start while the previous kernel of its stream still runs (kernels.cuh's
// wait_for_previous_kernel) passes its wait, and the arithmetic leaves the launch's chain.
struct NoWait {
  __device__ void operator()() const {}
};
template <class Sink, class Wait = NoWait>
__device__ void schedule_uniform(const UniformPlan& u, const Sink& sink, int32_t thread,
                                 int32_t nthreads, Wait wait = {}) {
  int32_t row[kWidth];
  if (thread < u.parts) uniform_row(u, thread, row);
  const int32_t splits = thread <= u.bs ? uniform_num_splits(u, thread) : 0;
  wait();
  // (64-bit steps: thread + nthreads may pass INT32_MAX when parts or bs come near it)
  for (int64_t p = thread; p < u.parts; p += nthreads) {
    if (p != thread) uniform_row(u, static_cast<int32_t>(p), row);
#pragma unroll
    for (int f = 0; f < kWidth; ++f) sink.meta(static_cast<int32_t>(p), f, row[f]);
  }
  if (thread > u.bs) return;
  sink.num_splits(thread, splits);
  for (int64_t k = int64_t{thread} + nthreads; k <= u.bs; k += nthreads)
    sink.num_splits(static_cast<int32_t>(k), uniform_num_splits(u, static_cast<int32_t>(k)));
}

// ------------------------------------------------------------------ any lengths: the walk

struct WalkShared {
  int32_t C[kWalkThreads + 1];     // boundaries of the tile's requests (C[0]: its first start)
  int32_t n[kWalkThreads];         // blocks of the tile's requests
  int32_t hit[2][kWalkWarps];      // per warp, its first boundary a window holds (by round parity)
  int32_t warp_sum[kWalkWarps];    // scan of a tile
  long long warp_total[kWalkWarps];
};

// Inclusive scan of v over the block; *all gets the block's sum. Two barriers.
__device__ inline int32_t walk_scan(int32_t v, int32_t* all, WalkShared& sh) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int32_t t = __shfl_up_sync(~0u, v, off);
    if (lane >= off) v += t;
  }
  if (lane == 31) sh.warp_sum[w] = v;
  __syncthreads();
  int32_t before = 0, sum = 0;
#pragma unroll
  for (int k = 0; k < kWalkWarps; ++k) {
    before += k < w ? sh.warp_sum[k] : 0;
    sum += sh.warp_sum[k];
  }
  __syncthreads();  // warp_sum is reused by the next tile
  *all = sum;
  return before + v;
}

// The schedule of bs requests, request i of length_of(i) tokens, by ONE block of kWalkThreads
// threads: every thread of the block calls it, with the same arguments (it has barriers). It
// uses its own shared memory (sizeof(WalkShared)) and reads nothing else the block writes; its
// stores are visible to the block after a __syncthreads.
template <class LengthOf, class Sink>
__device__ void schedule_walk(const LengthOf& length_of, int32_t bs, int32_t parts,
                              const Sink& sink) {
  __shared__ WalkShared sh;
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  if (bs == 0) {  // every part is empty: it begins at request 0 and ends before it
    for (int32_t p = tid; p < parts; p += kWalkThreads)
      store_row(sink, p, 0, 0, 0, -1, 0, false, false, false);
    if (tid == 0) sink.num_splits(0, 0);
    return;
  }
  // the total cost T, and the quota q
  long long mine = 0;
  for (int32_t i = tid; i < bs; i += kWalkThreads) mine += num_blocks(length_of(i)) + kOverhead;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mine += __shfl_xor_sync(~0u, mine, off);
  if (lane == 0) sh.warp_total[w] = mine;
  __syncthreads();
  long long total = 0;
#pragma unroll
  for (int k = 0; k < kWalkWarps; ++k) total += sh.warp_total[k];
  const int32_t T = static_cast<int32_t>(total);
  const int32_t q = T / parts + (T % parts != 0);

  // The walk; the same values in every thread. Part 0 starts at request 0, block 0.
  int32_t a = 0;       // the anchor's boundary index
  int32_t U = 0;       // ... its position
  int32_t pa = 0;      // ... its part
  int32_t inside = 0;  // parts before pa that start inside a request
  int32_t pe = 1;      // the first part whose start is not stored yet
  int32_t carry = 0;   // the start of the tile's first request
  int round = 0;
  if (tid == 0) {
    sink.meta(0, kBeginReq, 0);
    sink.meta(0, kBeginBlock, 0);
    sink.meta(0, kBeginSplit, 0);
    sink.meta(0, kPad, 0);
    sink.num_splits(0, 0);
  }
  for (int32_t r0 = 0; r0 < bs; r0 += kWalkThreads) {
    const int32_t cnt = bs - r0 < kWalkThreads ? bs - r0 : kWalkThreads;
    const int32_t nb = tid < cnt ? num_blocks(length_of(r0 + tid)) : 0;
    int32_t tile_cost;
    const int32_t end = carry + walk_scan(tid < cnt ? nb + kOverhead : 0, &tile_cost, sh);
    sh.C[tid + 1] = end;
    sh.n[tid] = nb;
    if (tid == 0) sh.C[0] = carry;
    carry += tile_cost;
    __syncthreads();
    const int32_t k = r0 + 1 + tid;  // this thread's boundary: the end of request k - 1
    const int32_t C_end = sh.C[cnt];
    for (;;) {
      // the first boundary after the anchor that a window U + t*q .. U + t*q + kOverhead holds:
      // the first window to reach it is t = ceil((d - kOverhead) / q) (d >= kOverhead + 1), and
      // it holds it when t*q <= d, i.e. when (d - kOverhead - 1) mod q >= q - kOverhead - 1.
      // T is held by the first window that reaches it.
      const int32_t d = end - U;
      const bool hit =
          tid < cnt && k > a && (k == bs || (d - kOverhead - 1) % q >= q - kOverhead - 1);
      const unsigned votes = __ballot_sync(~0u, hit);
      if (lane == 0) sh.hit[round & 1][w] = votes ? w * 32 + __ffs(votes) - 1 : kWalkThreads;
      __syncthreads();
      int32_t jl = kWalkThreads;
#pragma unroll
      for (int x = 0; x < kWalkWarps; ++x) jl = min(jl, sh.hit[round & 1][x]);
      ++round;
      const bool found = jl < kWalkThreads;
      const int32_t j = r0 + 1 + jl;  // the next anchor's boundary index, when found
      const int32_t Cj = found ? sh.C[jl + 1] : 0;
      // parts pa + 1 .. pa + m - 1 start inside requests at U + t*q; part pa + m at boundary j
      // (and every later part at T when j == bs). Without an anchor in the tile, the parts up
      // to pa + m - 1 start in it.
      const int32_t m = found ? (Cj - U - kOverhead - 1) / q + 1
                              : (C_end > U ? (C_end - U - 1) / q + 1 : 1);
      const int32_t last = found && j == bs ? parts : pa + (found ? m : m - 1);
      const int32_t first_p = pe > 1 ? pe : 1;
      for (int32_t p = first_p + tid; p <= (last < parts ? last : parts); p += kWalkThreads) {
        const int32_t t = p - pa;
        const bool on_anchor = found && t >= m;
        int32_t req = j, blk = 0, split = 0, u = Cj;
        if (!on_anchor) {
          u = U + t * q;
          int32_t lo = 0, hi = cnt - 1;  // the request of the tile that holds u
          while (lo < hi) {
            const int32_t mid = (lo + hi + 1) >> 1;
            if (sh.C[mid] <= u) lo = mid; else hi = mid - 1;
          }
          req = r0 + lo;
          blk = u - sh.C[lo];
          split = t - (sh.C[lo] - U) / q;  // the anchor's parts that start inside it, so far
        }
        if (p < parts) {
          sink.meta(p, kBeginReq, req);
          sink.meta(p, kBeginBlock, blk);
          sink.meta(p, kBeginSplit, split);
          sink.meta(p, kPad, 0);
        }
        // part p - 1 ends where p starts: inside request req, or at the end of request req - 1
        const int32_t end_req = blk > 0 ? req : req - 1;
        const int32_t prev_t = t - 1;
        const bool prev_on_anchor = prev_t == 0 || (found && prev_t >= m);
        const int32_t prev_u = found && prev_t >= m ? Cj : U + prev_t * q;
        const bool one = prev_u >= sh.C[end_req - r0] && prev_u < u;  // p - 1 starts in end_req
        bool first = !prev_on_anchor, last_split = blk > 0;
        if (one) first = last_split = first || last_split;
        sink.meta(p - 1, kEndReq, end_req);
        sink.meta(p - 1, kEndBlock, blk > 0 ? blk : sh.n[end_req - r0]);
        sink.meta(p - 1, kFirstSplit, first);
        sink.meta(p - 1, kLastSplit, last_split);
      }
      // num_splits at the boundaries the segment passes: k + the parts that start inside a
      // request before boundary k
      if (tid < cnt && k > a && (!found || k <= j)) {
        const int32_t t = (end - U - 1) / q;  // the anchor's parts that start before boundary k
        sink.num_splits(k, k + inside + (found && t > m - 1 ? m - 1 : t));
      }
      if (!found) {
        pe = last + 1 > pe ? last + 1 : pe;
        break;
      }
      a = j;
      U = Cj;
      pa += m;
      inside += m - 1;
      pe = pa + 1;
      if (j == bs) break;
    }
    __syncthreads();  // the next tile overwrites sh.C and sh.n
  }
}

}  // namespace sched
}  // namespace nsa
