// ctest: a launch that overlaps the previous kernel (programmatic dependent launch, sm_90+) still
// sees that kernel's writes. The previous kernel here lets dependents start at once
// (griddepcontrol.launch_dependents), waits about 50 us, then writes seq_lens and
// req_pool_indices: a kernel of ours that read them before waiting for it would see the old
// values. Small and general kernel, with and without the schedule. Exits 77 without a GPU.
#include <cstdio>
#include <vector>

#include "check_cuda.h"
#include "launch.h"

namespace {

constexpr int kWidth = 256;  // table width and max_len
constexpr int kPool = 4;     // pool rows

__global__ void late_writer(int32_t* seq_lens, int64_t* req_pool_indices, int bs) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
  const long long t0 = clock64();
  while (clock64() - t0 < 100000) {
  }
  for (int i = threadIdx.x; i < bs; i += blockDim.x) seq_lens[i] = 200 + i, req_pool_indices[i] = 3;
}

// One stream, many rounds: old inputs (lengths 1, pool row 0) stored synchronously, then the late
// writer and our launch back to back. Returns the number of wrong elements.
int run(int bs, bool schedule, cudaStream_t st) {
  std::vector<int32_t> table(kPool * kWidth);
  for (size_t k = 0; k < table.size(); ++k) table[k] = static_cast<int32_t>(k * 7 + 1);
  int32_t *d_table, *lens, *cache, *cu, *nsa, *nsa_cu, *pt1, *meta, *splits;
  int64_t* pool;
  CHECK_CUDA(cudaMalloc(&d_table, table.size() * 4));
  CHECK_CUDA(cudaMemcpy(d_table, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMalloc(&lens, bs * 4));
  CHECK_CUDA(cudaMalloc(&pool, bs * 8));
  for (int32_t** p : {&cache, &nsa}) CHECK_CUDA(cudaMalloc(p, bs * 4));
  for (int32_t** p : {&cu, &nsa_cu, &splits}) CHECK_CUDA(cudaMalloc(p, (bs + 1) * 4));
  CHECK_CUDA(cudaMalloc(&pt1, size_t{4} * bs * kWidth));
  CHECK_CUDA(cudaMalloc(&meta, 8 * 66 * 4));
  nsa::Inputs in;
  in.seq_lens = {lens, 1, false};
  in.req_pool_indices = {pool, 1, true};
  in.req_to_token = d_table, in.pool_rows = kPool, in.table_width = kWidth, in.row_stride = kWidth, in.bs = bs;
  nsa::Outputs out;
  out.n = 1;
  nsa::Dest& D = out.dest[0];
  D.cache_seqlens = cache, D.cu_seqlens_k = cu, D.nsa_cache_seqlens = nsa, D.nsa_cu_seqlens_k = nsa_cu;
  D.page_table_1 = pt1, D.page_table_1_stride = kWidth;
  nsa::Params p;
  p.mode = nsa::Mode::decode, p.max_len = kWidth, p.topk = 64, p.page_size = 64, p.live = true;
  if (schedule) p.num_sm_parts = 66, D.tile_scheduler_metadata = meta, D.num_splits = splits;
  int wrong = 0;
  std::vector<int32_t> old_lens(bs, 1), got_cache(bs), got_pt1(size_t{1} * bs * kWidth);
  std::vector<int64_t> old_pool(bs, 0);
  for (int round = 0; round < 20; ++round) {
    CHECK_CUDA(cudaMemcpy(lens, old_lens.data(), bs * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(pool, old_pool.data(), bs * 8, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemset(pt1, 0xff, size_t{4} * bs * kWidth));
    CHECK_CUDA(cudaDeviceSynchronize());
    late_writer<<<1, 128, 0, st>>>(lens, pool, bs);
    CHECK_CUDA(cudaGetLastError());
    cudaError_t err = cudaSuccess;
    if (nsa::launch(in, out, p, 0, st, &err) != nsa::kOk) {
      std::fprintf(stderr, "launch failed: %s\n", cudaGetErrorString(err));
      std::exit(1);
    }
    CHECK_CUDA(cudaStreamSynchronize(st));
    CHECK_CUDA(cudaMemcpy(got_cache.data(), cache, bs * 4, cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(got_pt1.data(), pt1, got_pt1.size() * 4, cudaMemcpyDeviceToHost));
    for (int i = 0; i < bs; ++i) {
      wrong += got_cache[i] != 200 + i;
      for (int c = 0; c < 200 + i && c < kWidth; ++c) wrong += got_pt1[size_t{1} * i * kWidth + c] != table[3 * kWidth + c];
    }
  }
  for (void* ptr : {(void*)d_table, (void*)lens, (void*)pool, (void*)cache, (void*)nsa, (void*)cu, (void*)nsa_cu,
                    (void*)splits, (void*)pt1, (void*)meta})
    CHECK_CUDA(cudaFree(ptr));
  return wrong;
}

}  // namespace

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no GPU: skipped\n");
    return 77;
  }
  cudaStream_t st;
  CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int failures = 0;
  for (int bs : {1, 8, 100}) {  // the small kernel, then the general one (bs > 32)
    for (bool schedule : {false, true}) {
      const int wrong = run(bs, schedule, st);
      std::printf("bs %3d schedule %d: %d wrong elements over 20 rounds\n", bs, schedule, wrong);
      failures += wrong != 0;
    }
  }
  CHECK_CUDA(cudaStreamDestroy(st));
  std::printf(failures == 0 ? "ok\n" : "FAILED\n");
  return failures == 0 ? 0 : 1;
}
