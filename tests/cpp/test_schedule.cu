// ctest: kernels/schedule.cuh against a plain C++ port of reference.schedule (FlashMLA's greedy
// fill, python/nsa_metadata/schedule.py). The closed form for equal lengths is checked on the
// host first; then schedule_walk (one block) and schedule_uniform (a grid) run on the GPU.
// Exits 77 (ctest's skip) when no GPU is present, after the host checks pass.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "check_cuda.h"
#include "schedule.cuh"

namespace {

namespace sc = nsa::sched;

constexpr int kGuard = 16;  // poisoned elements after each output, never to be written

struct Sched {
  std::vector<int32_t> meta, splits;  // [parts * 8], [bs + 1]
};

// reference.schedule, written again: the greedy fill, request by request.
Sched greedy(const std::vector<int32_t>& lengths, int32_t parts) {
  const int32_t bs = static_cast<int32_t>(lengths.size());
  std::vector<long long> n(bs);
  long long total = 0;
  for (int32_t i = 0; i < bs; ++i) {
    n[i] = (std::max(lengths[i], 1) - 1) / 64 + 1;
    total += n[i] + 5;
  }
  const long long budget_per_part = (total + parts - 1) / parts + 5;
  Sched s;
  s.meta.assign(size_t(parts) * 8, 0);
  s.splits.assign(bs + 1, 0);
  long long req = 0, blk = 0, pieces = 0, splits = 0;
  for (int32_t p = 0; p < parts; ++p) {
    const long long begin_req = req, begin_blk = blk, begin_split = pieces;
    long long budget = budget_per_part;
    while (req < bs) {
      const long long rest = n[req] - blk;
      if (budget >= rest + 5) {
        budget -= rest + 5;
        splits += pieces + 1;
        s.splits[req + 1] = static_cast<int32_t>(splits);
        ++req;
        blk = pieces = 0;
      } else {
        if (budget > 5) {
          blk += budget - 5;
          ++pieces;
        }
        break;
      }
    }
    long long end_req, end_blk;
    if (blk > 0) {
      end_req = req;
      end_blk = blk;
    } else {
      end_req = req - 1;
      end_blk = req > 0 ? n[req - 1] : 0;
    }
    bool first = begin_blk != 0, last = end_req >= 0 && end_blk != n[end_req];
    if (begin_req == end_req) first = last = first || last;
    const long long row[8] = {begin_req, end_req, begin_blk, end_blk, begin_split, first, last, 0};
    for (int f = 0; f < 8; ++f) s.meta[size_t(p) * 8 + f] = static_cast<int32_t>(row[f]);
  }
  if (req != bs) std::fprintf(stderr, "greedy: the parts do not hold every request\n");
  return s;
}

int failures = 0;

bool same(const Sched& want, const std::vector<int32_t>& meta, const std::vector<int32_t>& splits,
          const std::string& what) {
  const size_t nm = want.meta.size(), ns = want.splits.size();
  for (size_t i = 0; i < meta.size(); ++i) {
    const int32_t w = i < nm ? want.meta[i] : kPoison;
    if (meta[i] != w) {
      std::fprintf(stderr, "FAIL %s: tile_scheduler_metadata[%zu][%zu] = %d, want %d\n", what.c_str(),
                   i / 8, i % 8, meta[i], w);
      ++failures;
      return false;
    }
  }
  for (size_t i = 0; i < splits.size(); ++i) {
    const int32_t w = i < ns ? want.splits[i] : kPoison;
    if (splits[i] != w) {
      std::fprintf(stderr, "FAIL %s: num_splits[%zu] = %d, want %d\n", what.c_str(), i, splits[i], w);
      ++failures;
      return false;
    }
  }
  return true;
}

std::string name(const char* path, const char* kind, int32_t bs, int32_t parts) {
  return std::string(path) + " " + kind + " bs=" + std::to_string(bs) +
         " parts=" + std::to_string(parts);
}

// ------------------------------------------------------------------ host: the closed form

void check_uniform(int32_t length, int32_t bs, int32_t parts) {
  const sc::UniformPlan u = sc::uniform_plan(length, bs, parts);
  std::vector<int32_t> meta(size_t(parts) * 8, kPoison), splits(bs + 1, kPoison);  // (0 is a common want)
  for (int32_t p = 0; p < parts; ++p) sc::uniform_row(u, p, &meta[size_t(p) * 8]);
  for (int32_t k = 0; k <= bs; ++k) splits[k] = sc::uniform_num_splits(u, k);
  const std::string kind = "length " + std::to_string(length);
  same(greedy(std::vector<int32_t>(bs, length), parts), meta, splits,
       name("host uniform", kind.c_str(), bs, parts));
}

// Divider::fast (the closed form's divisions with NSA_FAST_DIV=1) against plain division: every divisor near a power of two
// and random ones, each with the dividends that sit next to its multiples, at 0 and near 2^31.
int divider_checks() {
  std::mt19937_64 rng(7);
  std::vector<int32_t> ds;
  for (int l = 0; l <= 31; ++l)
    for (long long d : {(1LL << l) - 1, 1LL << l, (1LL << l) + 1})
      if (d >= 1 && d <= 2147483647) ds.push_back(static_cast<int32_t>(d));
  for (int k = 0; k < 2000; ++k) ds.push_back(static_cast<int32_t>(rng() % 2147483647 + 1));
  for (int k = 1; k <= 200; ++k) ds.push_back(k);
  int cases = 0;
  for (const int32_t d : ds) {
    const sc::Divider by = sc::make_divider(d);
    std::vector<long long> ns = {0, 1, 2147483646, 2147483647, d - 1LL, d, d + 1LL};
    for (int k = 0; k < 50; ++k) {
      const long long m = static_cast<long long>(rng() % (2147483647LL / d + 1)) * d;
      ns.insert(ns.end(), {m - 1, m, m + 1});
    }
    for (int k = 0; k < 50; ++k) ns.push_back(static_cast<long long>(rng() % 2147483648ULL));
    for (const long long n : ns) {
      if (n < 0 || n > 2147483647) continue;
      ++cases;
      const int32_t n32 = static_cast<int32_t>(n);
      if (by.fast(n32) != n32 / d) {
        if (++failures <= 10) std::printf("FAIL divider: %d / %d gave %d\n", n32, d, by.fast(n32));
      }
    }
  }
  return cases;
}

int host_uniform_checks() {
  const int divider_cases = divider_checks();
  std::printf("host: %d divider cases\n", divider_cases);
  int cases = 0;
  for (int32_t length : {0, 1, 63, 64, 65, 2048, 4096, 1 << 20})
    for (int32_t bs = 0; bs <= 300; bs += (bs < 40 ? 1 : 37))
      for (int32_t parts = 1; parts <= 148; parts += (parts < 20 ? 1 : 9), ++cases)
        check_uniform(length, bs, parts);
  for (int32_t bs : {1024, 4096, 11622, 11623, 20000})
    for (int32_t parts : {1, 66, 132, 148}) check_uniform(2048, bs, parts), ++cases;
  // the int32 limit: 63 requests of 2^31 - 1 tokens (cost 33554437); total + parts - 1 fits
  for (int32_t parts : {1, 66, 148}) check_uniform(2147483647, 63, parts), ++cases;
  return cases;
}

// ------------------------------------------------------------------ device

struct ArrayLength {
  const int32_t* s;
  __device__ int32_t operator()(int32_t i) const { return s[i]; }
};

__global__ void __launch_bounds__(sc::kWalkThreads)
    walk_kernel(ArrayLength len, int32_t bs, int32_t parts, sc::PtrSink sink) {
  sc::schedule_walk(len, bs, parts, sink);
}

__global__ void uniform_kernel(sc::UniformPlan u, sc::PtrSink sink) {
  sc::schedule_uniform(u, sink, static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x),
                       static_cast<int32_t>(gridDim.x * blockDim.x));
}

struct DeviceBuffers {
  int32_t *len = nullptr, *meta = nullptr, *splits = nullptr;
  size_t cap_len = 0, cap_meta = 0, cap_splits = 0;
  void ensure(int32_t*& p, size_t& cap, size_t n) {
    if (n <= cap) return;
    if (p) CHECK_CUDA(cudaFree(p));
    CHECK_CUDA(cudaMalloc(&p, n * sizeof(int32_t)));
    cap = n;
  }
};

void poison(int32_t* p, size_t n) {
  std::vector<int32_t> h(n, kPoison);
  CHECK_CUDA(cudaMemcpy(p, h.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice));
}

// Runs the walk on `lengths` and, when they are all equal, the closed form on a grid; compares
// both with the greedy, guards included.
void device_case(DeviceBuffers& b, const std::vector<int32_t>& lengths, int32_t parts,
                 const char* kind) {
  const int32_t bs = static_cast<int32_t>(lengths.size());
  const Sched want = greedy(lengths, parts);
  const size_t nm = size_t(parts) * 8 + kGuard, ns = size_t(bs) + 1 + kGuard;
  b.ensure(b.len, b.cap_len, std::max<size_t>(lengths.size(), 1));
  b.ensure(b.meta, b.cap_meta, nm);
  b.ensure(b.splits, b.cap_splits, ns);
  if (bs > 0)
    CHECK_CUDA(cudaMemcpy(b.len, lengths.data(), bs * sizeof(int32_t), cudaMemcpyHostToDevice));
  std::vector<int32_t> meta(nm), splits(ns);
  const sc::PtrSink sink{b.meta, b.splits};

  poison(b.meta, nm);
  poison(b.splits, ns);
  walk_kernel<<<1, sc::kWalkThreads>>>(ArrayLength{b.len}, bs, parts, sink);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaMemcpy(meta.data(), b.meta, nm * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(splits.data(), b.splits, ns * sizeof(int32_t), cudaMemcpyDeviceToHost));
  same(want, meta, splits, name("walk", kind, bs, parts));

  const bool equal =
      std::all_of(lengths.begin(), lengths.end(), [&](int32_t s) { return s == lengths[0]; });
  if (!equal) return;
  poison(b.meta, nm);
  poison(b.splits, ns);
  uniform_kernel<<<3, 64>>>(sc::uniform_plan(bs > 0 ? lengths[0] : 1, bs, parts), sink);
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaMemcpy(meta.data(), b.meta, nm * sizeof(int32_t), cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(splits.data(), b.splits, ns * sizeof(int32_t), cudaMemcpyDeviceToHost));
  same(want, meta, splits, name("uniform", kind, bs, parts));
}

std::vector<int32_t> make_lengths(std::mt19937& rng, int32_t bs, int kind) {
  std::vector<int32_t> v(bs);
  for (int32_t i = 0; i < bs; ++i) {
    switch (kind) {
      case 0: v[i] = 2048; break;  // no topk_length
      case 1: v[i] = 0; break;
      case 2: v[i] = 65; break;
      case 3: v[i] = 1000000; break;
      case 4: v[i] = i % 2 ? 1000000 : 1; break;
      case 5: v[i] = static_cast<int32_t>(rng() % 1000001); break;  // 0 .. 1M
      case 6: v[i] = static_cast<int32_t>(rng() % 203) - 3; break;  // short, some < 0
      default: v[i] = std::min<int32_t>(static_cast<int32_t>(rng() % 6000), 2048); break;  // capped
    }
  }
  return v;
}

const char* kKinds[] = {"topk", "zeros", "65", "1M", "alternating", "wide", "short", "capped"};

int device_checks() {
  DeviceBuffers b;
  std::mt19937 rng(14);
  int cases = 0;
  const int32_t batch_sizes[] = {0,   1,   2,   65,   66,   67,   127,   128,   129,
                                 255, 256, 257, 1000, 1024, 4096, 11622, 11623, 20000};
  const int32_t part_counts[] = {1, 2, 65, 66, 132, 147, 148};
  for (int32_t bs : batch_sizes)
    for (int32_t parts : part_counts)
      for (int kind = 0; kind < 8; ++kind) {
        device_case(b, make_lengths(rng, bs, kind), parts, kKinds[kind]);
        ++cases;
      }
  {  // the int32 limit: total = 2^31 - 2 on 2 parts (total + parts - 1 == INT32_MAX)
    std::vector<int32_t> lengths(63, 2147483647);
    lengths.push_back(64 * 33554110);
    device_case(b, lengths, 2, "int32 limit");
    device_case(b, std::vector<int32_t>(63, 2147483647), 148, "int32 limit");
    cases += 2;
  }
  for (int it = 0; it < 400; ++it) {  // random sizes
    const int32_t bs = static_cast<int32_t>(rng() % (it % 4 == 0 ? 3000 : 300));
    const int32_t parts = 1 + static_cast<int32_t>(rng() % 148);
    const int kind = static_cast<int>(rng() % 8);
    device_case(b, make_lengths(rng, bs, kind), parts, kKinds[kind]);
    ++cases;
  }
  return cases;
}

}  // namespace

int main() {
  const int host_cases = host_uniform_checks();
  std::printf("host: %d closed-form cases, %d failures\n", host_cases, failures);
  if (failures) return 1;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: device checks skipped\n");
    return 77;
  }
  const int device_cases = device_checks();
  std::printf("device: %d cases, %d failures\n", device_cases, failures);
  return failures ? 1 : 0;
}
