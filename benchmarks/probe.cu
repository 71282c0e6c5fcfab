// Latency probe for small batches (no Python): our launch against a minimal decode kernel and an
// empty kernel of the same grid, each as a CUDA graph of K calls over rotating input sets
// (median replay / K), so a kernel change can be judged without the package. Ours goes through
// nsa::launch, so on sm_90+ it overlaps the previous call; the other two do not
// (NSA_METADATA_PDL=0 times ours the same way). PROBE_EAGER=1 launches each kernel a few times
// without a graph instead and prints nothing, as a target for Nsight Compute (ncu -k regex:"min_kernel|small_kernel|metadata_kernel" ./probe).
//   nvcc -O3 -std=c++17 -arch=sm_90 -Ikernels benchmarks/probe.cu kernels/launch.cu -o probe
// (or the nsa_probe target of a -DNSA_BUILD_TESTS=ON build). Exits 77 without a GPU.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "launch.h"
#include "../tests/cpp/check_cuda.h"

namespace {

constexpr int K = 16, TOPK = 2048, PAGE = 64;
// rotating input sets (PROBE_SETS, default 4; the benchmark grid uses up to 64 at these sizes)
const int SETS = std::getenv("PROBE_SETS") ? std::max(1, std::atoi(std::getenv("PROBE_SETS"))) : 4;

__global__ void empty_kernel() {}

// The smallest decode kernel we know how to write (live, page 64, both tables, bs <= 32): block 0
// scans the lengths with warp shuffles, block 1 + row * splits + s copies 16-byte chunks.
struct MinArgs {
  const int32_t* seq_lens;
  const int64_t* req_pool_indices;
  const int32_t* req_to_token;
  int64_t row_stride;
  int32_t *cache, *cu, *nsa, *nsa_cu, *pt1, *real;
  int32_t pt1_stride, real_stride, bs, splits, max_len;
};

__global__ void __launch_bounds__(128) min_kernel(const __grid_constant__ MinArgs a) {
  const int tid = threadIdx.x;
  if (blockIdx.x == 0) {
    if (tid >= 32) return;
    const int32_t L = tid < a.bs ? a.seq_lens[tid] : 0;
    int32_t c = L, s = min(L, TOPK);
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int32_t tc = __shfl_up_sync(~0u, c, off), ts = __shfl_up_sync(~0u, s, off);
      if (tid >= off) c += tc, s += ts;
    }
    if (tid < a.bs) {
      a.cache[tid] = L;
      a.cu[tid + 1] = c;
      a.nsa[tid] = min(L, TOPK);
      a.nsa_cu[tid + 1] = s;
    }
    if (tid == 0) a.cu[0] = 0, a.nsa_cu[0] = 0;
    return;
  }
  const int row = (blockIdx.x - 1) / a.splits, split = (blockIdx.x - 1) % a.splits;
  const int32_t L = a.seq_lens[row];
  const int64_t q = a.req_pool_indices[row];
  const int4* src = reinterpret_cast<const int4*>(a.req_to_token + q * a.row_stride);
  const int n = min(max(L, 0), a.max_len), nvec = n / 4;
  int4* dst = reinterpret_cast<int4*>(a.pt1 + int64_t{row} * a.pt1_stride);
  for (int k = split * 128 + tid; k < nvec; k += a.splits * 128) {
    const int4 v = __ldg(src + k);
    dst[k] = v;
    if ((k * 4) % PAGE == 0) a.real[int64_t{row} * a.real_stride + k * 4 / PAGE] = v.x >> 6;
  }
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// GPU us per call: a graph of K calls (call(k) for k < K), replayed.
float graph_us(cudaStream_t st, const std::function<void(int)>& call) {
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CHECK_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  for (int k = 0; k < K; ++k) call(k);
  CHECK_CUDA(cudaStreamEndCapture(st, &g));
  CHECK_CUDA(cudaGraphInstantiate(&ge, g, 0));
  cudaEvent_t e0, e1;
  CHECK_CUDA(cudaEventCreate(&e0));
  CHECK_CUDA(cudaEventCreate(&e1));
  for (int w = 0; w < 50; ++w) CHECK_CUDA(cudaGraphLaunch(ge, st));
  std::vector<float> t;
  for (int r = 0; r < 100; ++r) {
    CHECK_CUDA(cudaEventRecord(e0, st));
    CHECK_CUDA(cudaGraphLaunch(ge, st));
    CHECK_CUDA(cudaEventRecord(e1, st));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 1000 / K);
  }
  CHECK_CUDA(cudaGraphExecDestroy(ge));
  CHECK_CUDA(cudaGraphDestroy(g));
  return median(t);
}

template <class T>
T* upload(const std::vector<T>& h) {
  T* d;
  CHECK_CUDA(cudaMalloc(&d, h.size() * sizeof(T) + 16));
  CHECK_CUDA(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

struct Case {
  nsa::Mode mode;
  int bs, ctx;
};

}  // namespace

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return 77;
  cudaStream_t st;
  CHECK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  std::mt19937_64 rng(1);
  const Case cases[] = {{nsa::Mode::decode, 1, 4096},        {nsa::Mode::decode, 8, 4096},
                        {nsa::Mode::decode, 32, 8192},       {nsa::Mode::target_verify, 1, 4096},
                        {nsa::Mode::target_verify, 8, 4096}, {nsa::Mode::draft_extend, 8, 4096}};
  std::printf("%-14s %8s %8s %8s %8s %8s %8s %8s   (%d sets)\n", "mode", "bs x ctx", "empty", "min", "ours", "meta",
              "real", "sched", SETS);
  for (const Case& c : cases) {
    const int bs = c.bs, ctx = c.ctx, next_n = c.mode == nsa::Mode::decode ? 1 : 4;
    const int P = bs * SETS;
    std::vector<int32_t> table(int64_t{P} * ctx);
    for (auto& x : table) x = static_cast<int32_t>(rng() % 2000000000);
    int32_t* d_table = upload(table);
    std::vector<int32_t*> lens(SETS), ext(SETS);
    std::vector<int64_t*> pool(SETS);
    for (int s = 0; s < SETS; ++s) {
      std::vector<int32_t> l(bs), e(bs, 4);
      std::vector<int64_t> q(bs);
      for (int i = 0; i < bs; ++i) l[i] = i == 0 ? ctx : ctx / 2 + static_cast<int>(rng() % (ctx / 2));
      for (int i = 0; i < bs; ++i) q[i] = static_cast<int64_t>(rng() % P);
      lens[s] = upload(l), pool[s] = upload(q), ext[s] = upload(e);
    }
    const int rows = bs * next_n, real_w = (ctx + PAGE - 1) / PAGE;
    std::vector<int32_t> zero(int64_t{rows} * ctx + 64, 0);
    int32_t *cache = upload(zero), *cu = upload(zero), *nsa = upload(zero), *nsa_cu = upload(zero),
            *exp = upload(zero), *pt1 = upload(zero), *real = upload(zero);
    int32_t *tsm = upload(zero), *splits_out = upload(zero);
    auto ours = [&](int k, bool tables, bool pt1_too, bool sched = false) {
      const int s = k % SETS;
      nsa::Inputs in;
      in.seq_lens = {lens[s], 1, false};
      in.req_pool_indices = {pool[s], 1, true};
      in.extend_lens = {ext[s], 1, false};
      in.req_to_token = d_table, in.pool_rows = P, in.table_width = ctx, in.row_stride = ctx, in.bs = bs;
      nsa::Outputs out;
      out.n = 1;
      nsa::Dest& D = out.dest[0];
      D.cache_seqlens = cache, D.cu_seqlens_k = cu, D.nsa_cache_seqlens = nsa, D.nsa_cu_seqlens_k = nsa_cu;
      D.seqlens_expanded = exp;
      if (tables) {
        if (pt1_too) D.page_table_1 = pt1, D.page_table_1_stride = ctx;
        D.real_page_table = real, D.real_page_table_stride = real_w;
      }
      nsa::Params p;
      p.mode = c.mode, p.max_len = ctx, p.topk = TOPK, p.page_size = PAGE, p.next_n = next_n;
      p.total = rows, p.live = true;
      if (sched && c.mode != nsa::Mode::draft_extend)  // FlashMLA's schedule, 66 parts (an H100)
        p.num_sm_parts = 66, D.tile_scheduler_metadata = tsm, D.num_splits = splits_out;
      cudaError_t err;
      if (nsa::launch(in, out, p, 0, st, &err) != nsa::kOk) std::exit(2);
    };
    const int splits = std::max(1, std::min(132 * 16 / bs, (ctx + 511) / 512));
    const bool eager = std::getenv("PROBE_EAGER") != nullptr;
    if (eager) {  // for Nsight Compute: each kernel a few times, no graph
      for (int k = 0; k < 3; ++k) {
        MinArgs a{lens[0], pool[0], d_table, ctx, cache, cu, nsa, nsa_cu, pt1, real, ctx, real_w, bs, splits, ctx};
        if (c.mode == nsa::Mode::decode) min_kernel<<<1 + bs * splits, 128, 0, st>>>(a);
        CHECK_CUDA(cudaGetLastError());
        ours(k, true, true);
        if (c.mode != nsa::Mode::draft_extend) ours(k, true, true, true);  // with the schedule
      }
      CHECK_CUDA(cudaStreamSynchronize(st));
    }
    const float t_empty = eager ? 0 : graph_us(st, [&](int) {
      empty_kernel<<<1 + bs * splits, 128, 0, st>>>();
      CHECK_CUDA(cudaGetLastError());
    });
    float t_min = 0;
    if (c.mode == nsa::Mode::decode && !eager)
      t_min = graph_us(st, [&](int k) {
        const int s = k % SETS;
        MinArgs a{lens[s], pool[s], d_table, ctx, cache, cu, nsa, nsa_cu, pt1, real, ctx, real_w, bs, splits, ctx};
        min_kernel<<<1 + bs * splits, 128, 0, st>>>(a);
        CHECK_CUDA(cudaGetLastError());
      });
    const float t_ours = eager ? 0 : graph_us(st, [&](int k) { ours(k, true, true); });
    const float t_meta = eager ? 0 : graph_us(st, [&](int k) { ours(k, false, false); });
    const float t_real = eager ? 0 : graph_us(st, [&](int k) { ours(k, true, false); });
    const bool sched = !eager && c.mode != nsa::Mode::draft_extend;  // (draft_extend has no schedule)
    const float t_sched = sched ? graph_us(st, [&](int k) { ours(k, true, true, true); }) : 0;
    const char* names[] = {"decode", "target_verify", "draft_extend"};
    if (!eager)
      std::printf("%-14s %3dx%-5d %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f\n", names[static_cast<int>(c.mode)], bs, ctx,
                t_empty, t_min, t_ours, t_meta, t_real, t_sched);
    for (void* ptr : {(void*)tsm, (void*)splits_out, (void*)d_table, (void*)cache, (void*)cu, (void*)nsa,
                      (void*)nsa_cu, (void*)exp, (void*)pt1, (void*)real})
      CHECK_CUDA(cudaFree(ptr));
    for (int s = 0; s < SETS; ++s) {
      CHECK_CUDA(cudaFree(lens[s]));
      CHECK_CUDA(cudaFree(pool[s]));
      CHECK_CUDA(cudaFree(ext[s]));
    }
  }
  return 0;
}
