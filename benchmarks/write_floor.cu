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
  std::printf("%-14s %6s %8s %8s %8s %8s %8s %8s %8s\n", "rows x cols", "copies", "MB", "copy", "memset", "fan u2",
              "perm u2", "perm u4", "x copy");
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
    CHECK_CUDA(cudaMemset(src, 1, src_bytes));
    CHECK_CUDA(cudaMemset(a, 1, total / 2));
    const float copy = time_us([&] { CHECK_CUDA(cudaMemcpyAsync(b, a, total / 2, cudaMemcpyDeviceToDevice)); });
    const float set = time_us([&] { CHECK_CUDA(cudaMemsetAsync(dst, 2, dst_bytes)); });
    const int blocks = std::min(c.rows, sms * 16);
    auto fan = [&](auto kernel) {
      return time_us([&] {
        kernel<<<blocks, 128>>>(static_cast<const int4*>(src), perm, static_cast<int4*>(dst), c.rows, c.cols / 4,
                                c.copies);
        CHECK_CUDA(cudaGetLastError());
      });
    };
    const float f2 = fan(fan_out<false, 2>), p2 = fan(fan_out<true, 2>), p4 = fan(fan_out<true, 4>);
    std::printf("%5d x %-7d %6d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.2f\n", c.rows, c.cols, c.copies, total / 1e6, copy,
                set, f2, p2, p4, std::min(f2, std::min(p2, p4)) / copy);
    for (void* p : {src, dst, a, b, static_cast<void*>(perm)}) CHECK_CUDA(cudaFree(p));
  }
  return 0;
}
