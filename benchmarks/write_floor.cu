// What the card gives a write-heavy call (target_verify and draft_extend at full width read a
// table row once and write it to next_n rows): a plain copy of the same bytes (the benchmark's
// floor, half read and half written), a memset of the written bytes, and the smallest kernel that
// reads each row once and writes it `copies` times. GPU us, median of 7 timings of 10 calls.
//   nvcc -O3 -std=c++17 -arch=sm_90 benchmarks/write_floor.cu -o write_floor && ./write_floor
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "../tests/cpp/check_cuda.h"

namespace {

// Row r (or, kIndirect, row perm[r]: the index load our kernel waits on first) of src (width
// int4s) to rows r * copies .. r * copies + copies - 1 of dst; a block strides over rows, kUnroll
// 16-byte loads in flight per thread.
template <bool kIndirect, int kUnroll>
__global__ void __launch_bounds__(128) fan_out(const int4* __restrict__ src, const int* __restrict__ perm,
                                               int4* __restrict__ dst, int rows, int width, int copies) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int4* s = src + static_cast<long long>(kIndirect ? perm[r] : r) * width;
    int4* d = dst + static_cast<long long>(r) * copies * width;
    for (int k = threadIdx.x; k < width; k += 128 * kUnroll) {
      int4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = k + 128 * u < width ? s[k + 128 * u] : int4{};
      for (int c = 0; c < copies; ++c)
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (k + 128 * u < width) d[static_cast<long long>(c) * width + k + 128 * u] = v[u];
    }
  }
}

// As fan_out<true, 2>, but the next step's loads are issued before this step's stores, so the
// reads stay in flight while the store queue drains (software pipelining in registers).
__global__ void __launch_bounds__(128) fan_out_pipelined(const int4* __restrict__ src, const int* __restrict__ perm,
                                                         int4* __restrict__ dst, int rows, int width, int copies) {
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const int4* s = src + static_cast<long long>(perm[r]) * width;
    int4* d = dst + static_cast<long long>(r) * copies * width;
    int k = threadIdx.x;
    int4 a = k < width ? s[k] : int4{}, b = k + 128 < width ? s[k + 128] : int4{};
    for (; k < width; k += 256) {
      const int4 na = k + 256 < width ? s[k + 256] : int4{}, nb = k + 384 < width ? s[k + 384] : int4{};
      for (int c = 0; c < copies; ++c) {
        d[static_cast<long long>(c) * width + k] = a;
        if (k + 128 < width) d[static_cast<long long>(c) * width + k + 128] = b;
      }
      a = na, b = nb;
    }
  }
}

// Destination-major: block step t writes chunk t of the destination (row o = t / chunks, 128 x
// kUnroll int4s) from source row perm[o / copies], so consecutive blocks write consecutive memory
// and the copies of a source chunk, read by blocks `chunks` steps apart, hit L2 after the first.
template <int kUnroll>
__global__ void __launch_bounds__(128) fan_out_by_dest(const int4* __restrict__ src, const int* __restrict__ perm,
                                                       int4* __restrict__ dst, int rows, int width, int copies) {
  const int chunks = (width + 128 * kUnroll - 1) / (128 * kUnroll);
  const long long steps = static_cast<long long>(rows) * copies * chunks;
  for (long long t = blockIdx.x; t < steps; t += gridDim.x) {
    const int o = static_cast<int>(t / chunks), k = static_cast<int>(t % chunks) * 128 * kUnroll + threadIdx.x;
    const int4* s = src + static_cast<long long>(perm[o / copies]) * width;
    int4* d = dst + static_cast<long long>(o) * width;
    int4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = k + 128 * u < width ? s[k + 128 * u] : int4{};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
      if (k + 128 * u < width) d[k + 128 * u] = v[u];
  }
}

// The bulk-copy engine (TMA, sm_90): one thread per block moves tiles of kTile bytes from the
// source row into shared memory (kStages in flight) and from there to each copy with bulk stores.
__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

template <int kStages, int kTile>
__global__ void __launch_bounds__(32) fan_out_bulk(const int4* __restrict__ src, const int* __restrict__ perm,
                                                   int4* __restrict__ dst, int rows, int width, int copies) {
  extern __shared__ __align__(128) unsigned char tile[];
  __shared__ __align__(8) unsigned long long bar[kStages];
  if (threadIdx.x != 0) return;
  const long long row_bytes = static_cast<long long>(width) * 16;
  const int chunks = static_cast<int>((row_bytes + kTile - 1) / kTile);
  const int mine = rows > static_cast<int>(blockIdx.x) ? (rows - 1 - static_cast<int>(blockIdx.x)) / gridDim.x + 1 : 0;
  const long long tiles = static_cast<long long>(mine) * chunks;
  for (int k = 0; k < kStages; ++k)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_addr(&bar[k])) : "memory");
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  const auto where = [&](long long t, long long* row, long long* off, uint32_t* bytes) {
    *row = blockIdx.x + (t / chunks) * gridDim.x;
    *off = (t % chunks) * kTile;
    *bytes = static_cast<uint32_t>(row_bytes - *off < kTile ? row_bytes - *off : kTile);
  };
  const auto load = [&](long long t) {
    long long row, off;
    uint32_t bytes;
    where(t, &row, &off, &bytes);
    const int st = static_cast<int>(t % kStages);
    const char* from = reinterpret_cast<const char*>(src + static_cast<long long>(perm[row]) * width) + off;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(&bar[st])), "r"(bytes)
                 : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_addr(tile + st * kTile)),
                 "l"(from), "r"(bytes), "r"(smem_addr(&bar[st]))
                 : "memory");
  };
  for (long long t = 0; t < kStages - 1 && t < tiles; ++t) load(t);
  for (long long t = 0; t < tiles; ++t) {
    const int st = static_cast<int>(t % kStages);
    const uint32_t parity = static_cast<uint32_t>((t / kStages) & 1);
    uint32_t done = 0;
    while (!done)
      asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                   : "=r"(done)
                   : "r"(smem_addr(&bar[st])), "r"(parity)
                   : "memory");
    long long row, off;
    uint32_t bytes;
    where(t, &row, &off, &bytes);
    char* to = reinterpret_cast<char*>(dst + row * copies * width) + off;
    for (int c = 0; c < copies; ++c)
      asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(to + c * row_bytes),
                   "r"(smem_addr(tile + st * kTile)), "r"(bytes)
                   : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    if (t + kStages - 1 < tiles) {  // its stage was tile t - 1's: wait until those stores read it
      asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory");
      load(t + kStages - 1);
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
}

__global__ void fill_hash(int* p, long long n) {
  for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += 256LL * gridDim.x)
    p[i] = static_cast<int>((i * 2654435761LL) ^ (i >> 13));
}

template <class F>
float time_us(F f) {
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  for (int i = 0; i < 5; ++i) f();
  std::vector<float> t;
  for (int rep = 0; rep < 7; ++rep) {
    CHECK_CUDA(cudaEventRecord(e0));
    for (int i = 0; i < 10; ++i) f();
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 100.f);  // us per call
  }
  std::sort(t.begin(), t.end());
  CHECK_CUDA(cudaEventDestroy(e0));
  CHECK_CUDA(cudaEventDestroy(e1));
  return t[t.size() / 2];
}

}  // namespace

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return 77;
  int sms = 0;
  CHECK_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  struct Case { int rows, cols, copies; };
  const Case cases[] = {{4096, 4096, 1}, {4096, 4096, 4}, {1024, 32768, 1}, {1024, 32768, 4}, {256, 32768, 4}};
  std::printf("%-14s %6s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s\n", "rows x cols", "copies", "MB", "copy",
              "memset", "fan u2", "perm u2", "perm u4", "u2 8/SM", "pipe", "dest u4", "dest 1/t", "d1/t 8", "d1/t 12", "bulk4x8K",
              "bulk3x16K", "x copy");
  for (const Case& c : cases) {
    const size_t src_bytes = size_t{4} * c.rows * c.cols, dst_bytes = src_bytes * c.copies;
    const size_t total = src_bytes + dst_bytes;
    void *src, *dst, *a, *b;
    int* perm;
    CHECK_CUDA(cudaMalloc(&src, src_bytes));
    CHECK_CUDA(cudaMalloc(&dst, dst_bytes));
    CHECK_CUDA(cudaMalloc(&a, total / 2));
    CHECK_CUDA(cudaMalloc(&b, total / 2));
    CHECK_CUDA(cudaMalloc(&perm, sizeof(int) * c.rows));
    std::vector<int> h(c.rows);
    for (int i = 0; i < c.rows; ++i) h[i] = i;
    std::shuffle(h.begin(), h.end(), std::mt19937(1));
    CHECK_CUDA(cudaMemcpy(perm, h.data(), sizeof(int) * c.rows, cudaMemcpyHostToDevice));
    fill_hash<<<1024, 256>>>(static_cast<int*>(src), static_cast<long long>(src_bytes / 4));
    CHECK_CUDA(cudaGetLastError());
    CHECK_CUDA(cudaMemset(a, 1, total / 2));
    const float copy = time_us([&] { CHECK_CUDA(cudaMemcpyAsync(b, a, total / 2, cudaMemcpyDeviceToDevice)); });
    const float set = time_us([&] { CHECK_CUDA(cudaMemsetAsync(dst, 2, dst_bytes)); });
    auto fan = [&](auto kernel, int blocks = 0, int smem = 0) {
      if (blocks == 0) blocks = std::min(c.rows, sms * 16);
      return time_us([&] {
        kernel<<<blocks, 128, smem>>>(static_cast<const int4*>(src), perm, static_cast<int4*>(dst), c.rows, c.cols / 4,
                                c.copies);
        CHECK_CUDA(cudaGetLastError());
      });
    };
    const float f2 = fan(fan_out<false, 2>), p2 = fan(fan_out<true, 2>), p4 = fan(fan_out<true, 4>);
    // every variant must write what the plain kernel (fan_out<true, 4>, timed last) wrote, into a
    // destination poisoned (0xff bytes) before it runs, so a variant that writes nothing fails
    std::vector<int> want(dst_bytes / 4), got(dst_bytes / 4);
    CHECK_CUDA(cudaMemcpy(want.data(), dst, dst_bytes, cudaMemcpyDeviceToHost));
    const auto same_as_fan_out = [&] {
      CHECK_CUDA(cudaMemcpy(got.data(), dst, dst_bytes, cudaMemcpyDeviceToHost));
      return got == want;
    };
    CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
    const float pipe = fan(fan_out_pipelined);
    if (!same_as_fan_out()) std::printf("pipelined kernel wrong!\n");
    CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
    const float eight = fan(fan_out<true, 2>, std::min(c.rows, sms * 8));  // our kernel's occupancy
    if (!same_as_fan_out()) std::printf("8/SM kernel wrong!\n");
    CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
    const float dest4 = fan(fan_out_by_dest<4>, sms * 16);
    if (!same_as_fan_out()) std::printf("destination-major kernel wrong!\n");
    const long long dest_steps = static_cast<long long>(c.rows) * c.copies * ((c.cols / 4 + 511) / 512);
    CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
    const float dest1 = fan(fan_out_by_dest<4>, static_cast<int>(std::min(dest_steps, 1LL << 30)));
    if (!same_as_fan_out()) std::printf("destination-major (a block per step) kernel wrong!\n");
    // the same at 8 and 12 resident blocks per SM (our kernel's occupancy is the register limit:
    // 8 at 64 registers, 12 at 40): unused dynamic shared memory holds the others back (and leaves
    // less L1, which this kernel's once-read loads hardly use); the carveout goes back after
    const auto dest1_at = [&](int per_sm) {
      const auto kernel = fan_out_by_dest<4>;
      CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
      int smem = 0, resident = 0;
      for (;; smem += 1024) {
        CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, 128, smem));
        if (resident <= per_sm) break;
      }
      if (resident != per_sm) std::printf("dest 1/t at %d/SM: %d resident\n", per_sm, resident);
      CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
      const float us = fan(kernel, static_cast<int>(std::min(dest_steps, 1LL << 30)), smem);
      if (!same_as_fan_out()) std::printf("destination-major at %d/SM wrong!\n", per_sm);
      CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, cudaSharedmemCarveoutDefault));
      return us;
    };
    const float dest1_8 = dest1_at(8), dest1_12 = dest1_at(12);
    auto bulk = [&](auto kernel, int smem) {
      CHECK_CUDA(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      int per_sm = 0;
      CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32, smem));
      const int grid = std::min(c.rows, sms * per_sm);
      CHECK_CUDA(cudaMemset(dst, 0xff, dst_bytes));
      kernel<<<grid, 32, smem>>>(static_cast<const int4*>(src), perm, static_cast<int4*>(dst), c.rows, c.cols / 4,
                                 c.copies);
      CHECK_CUDA(cudaGetLastError());
      CHECK_CUDA(cudaDeviceSynchronize());
      if (!same_as_fan_out()) std::printf("bulk kernel wrong!\n");
      return time_us([&] {
        kernel<<<grid, 32, smem>>>(static_cast<const int4*>(src), perm, static_cast<int4*>(dst), c.rows, c.cols / 4,
                                   c.copies);
        CHECK_CUDA(cudaGetLastError());
      });
    };
    const float b8 = bulk(fan_out_bulk<4, 8192>, 4 * 8192), b16 = bulk(fan_out_bulk<3, 16384>, 3 * 16384);
    std::printf("%5d x %-7d %6d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.2f\n",
                c.rows, c.cols, c.copies, total / 1e6, copy, set, f2, p2, p4, eight, pipe, dest4, dest1, dest1_8, dest1_12, b8, b16,
                std::min({f2, p2, p4, eight, pipe, dest4, dest1, b8, b16}) / copy);
    for (void* p : {src, dst, a, b, static_cast<void*>(perm)}) CHECK_CUDA(cudaFree(p));
  }
  return 0;
}
