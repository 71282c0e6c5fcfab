// ctest: drives nsa::launch directly against a plain C++ reference written from SPEC.md
// (independent of kernels/metadata.cuh). Exits 77 (ctest's skip) when no GPU is present.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "check_cuda.h"
#include "launch.h"

namespace {


int32_t trunc32(long long x) { return static_cast<int32_t>(static_cast<uint32_t>(x)); }
long long floordiv(long long a, long long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
long long sparse_ref(long long x, long long topk, long long kpool) {
  if (kpool == 1) return std::min(x, topk);
  const long long f = floordiv(x, kpool) * kpool;
  return std::min(f, topk) + (x - f);
}

struct Case {
  nsa::Mode mode;
  int bs, P, W, max_len, topk, kpool, page_size, next_n;
  bool live, is64, pt1, real;
  int ndest;
};

struct Expect {  // full expected outputs, -2^31 marking "left untouched"
  std::vector<int32_t> cache, cu, nsa, nsa_cu, expanded, pt1, real;
  long long rows;
};

Expect reference(const Case& c, const std::vector<long long>& seq, const std::vector<long long>& pool,
                 const std::vector<long long>& ext, const std::vector<int32_t>& table) {
  Expect e;
  std::vector<long long> row_req, row_j;
  for (int i = 0; i < c.bs; ++i) {
    const long long n = c.mode == nsa::Mode::decode ? 1 : c.mode == nsa::Mode::target_verify ? c.next_n
                                                                                          : std::max<long long>(trunc32(ext[i]), 0);
    for (long long j = 0; j < n; ++j) { row_req.push_back(i); row_j.push_back(j); }
  }
  e.rows = row_req.size();
  long long cu = 0, nsa_cu = 0;
  e.cu.push_back(0);
  for (int i = 0; i < c.bs; ++i) {
    const int32_t lens = trunc32(seq[i]);
    const int32_t cache = c.mode == nsa::Mode::target_verify ? trunc32((long long)lens + c.next_n) : lens;
    e.cache.push_back(cache);
    cu += cache;
    e.cu.push_back(trunc32(cu));
  }
  const int width = (c.max_len + c.page_size - 1) / c.page_size;
  e.nsa_cu.push_back(0);
  for (long long r = 0; r < e.rows; ++r) {
    const long long i = row_req[r], j = row_j[r];
    const int32_t lens = trunc32(seq[i]);
    long long x = lens, L = lens;
    if (c.mode == nsa::Mode::target_verify) { x = trunc32((long long)lens + j + 1); L = trunc32((long long)lens + c.next_n); }
    if (c.mode == nsa::Mode::draft_extend) x = std::max<long long>((long long)lens - trunc32(ext[i]) + j + 1, 0);
    if (c.mode != nsa::Mode::decode) e.expanded.push_back(static_cast<int32_t>(x));
    const long long s = sparse_ref(x, c.topk, c.kpool);
    e.nsa.push_back(trunc32(s));
    nsa_cu += s;
    e.nsa_cu.push_back(trunc32(nsa_cu));
    const long long live_n = c.live ? std::min<long long>(std::max<long long>(L, 0), c.max_len) : c.max_len;
    const bool ok = pool[i] >= 0 && pool[i] < c.P;
    for (int col = 0; col < c.max_len; ++col)
      e.pt1.push_back(col < live_n ? (ok ? table[pool[i] * c.W + col] : -1) : kPoison);
    for (int col = 0; col < width; ++col) {
      const bool w = (long long)col * c.page_size < live_n;
      e.real.push_back(w ? (ok ? (int32_t)floordiv(table[pool[i] * c.W + (long long)col * c.page_size], c.page_size) : -1)
                         : kPoison);
    }
  }
  return e;
}

template <class T>
T* upload(const std::vector<T>& v) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, std::max<size_t>(v.size(), 1) * sizeof(T)));
  if (!v.empty()) CHECK_CUDA(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

int32_t* poisoned(size_t n) {
  return upload(std::vector<int32_t>(std::max<size_t>(n, 1), kPoison));
}

bool same(const char* what, const Case& c, int32_t* dev, const std::vector<int32_t>& want) {
  std::vector<int32_t> got(want.size());
  if (!want.empty()) CHECK_CUDA(cudaMemcpy(got.data(), dev, want.size() * 4, cudaMemcpyDeviceToHost));
  size_t bad = 0, first = 0;
  for (size_t k = 0; k < want.size(); ++k)
    if (got[k] != want[k] && bad++ == 0) first = k;
  if (bad > 0)
    std::fprintf(stderr, "%zu mismatches in %s, first [%zu]: got %d want %d (mode %d bs %d max_len %d ps %d live %d "
                 "next_n %d ndest %d)\n", bad, what, first, got[first], want[first], (int)c.mode, c.bs, c.max_len,
                 c.page_size, (int)c.live, c.next_n, c.ndest);
  return bad == 0;
}

bool run_case(const Case& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<long long> len(0, c.W + 40), val(-1000, 1 << 24), q(-2, c.P);
  std::uniform_int_distribution<int> e(0, 5);
  std::vector<long long> seq(c.bs), pool(c.bs), ext(c.bs);
  std::vector<int32_t> table((size_t)c.P * c.W);
  for (auto& x : table) x = static_cast<int32_t>(val(rng));
  for (int i = 0; i < c.bs; ++i) { seq[i] = len(rng); pool[i] = q(rng); ext[i] = e(rng); }
  long long total = 0;
  for (auto x : ext) total += x;

  const Expect want = reference(c, seq, pool, ext, table);
  auto narrow = [&](const std::vector<long long>& v) {
    if (c.is64) return static_cast<void*>(upload(v));
    std::vector<int32_t> n(v.begin(), v.end());
    return static_cast<void*>(upload(n));
  };
  nsa::Inputs in;
  in.seq_lens = {narrow(seq), 1, c.is64};
  in.req_pool_indices = {narrow(pool), 1, c.is64};
  in.extend_lens = {narrow(ext), 1, c.is64};
  in.req_to_token = upload(table);
  in.pool_rows = c.P;
  in.row_stride = c.W;
  in.table_width = c.W;
  in.bs = c.bs;
  nsa::Params p;
  p.mode = c.mode;
  p.max_len = c.max_len;
  p.topk = c.topk;
  p.kpool = c.kpool;
  p.page_size = c.page_size;
  p.next_n = c.next_n;
  p.total = total;
  p.live = c.live;
  const int width = (c.max_len + c.page_size - 1) / c.page_size;
  nsa::Outputs out;
  out.n = c.ndest;
  for (int d = 0; d < c.ndest; ++d) {
    nsa::Dest& D = out.dest[d];
    D.cache_seqlens = poisoned(c.bs);
    D.cu_seqlens_k = poisoned(c.bs + 1);
    D.nsa_cache_seqlens = poisoned(want.rows);
    D.nsa_cu_seqlens_k = poisoned(want.rows + 1);
    if (c.mode != nsa::Mode::decode) D.seqlens_expanded = poisoned(want.rows);
    if (c.pt1) { D.page_table_1 = poisoned(want.rows * c.max_len); D.page_table_1_stride = c.max_len; }
    if (c.real) { D.real_page_table = poisoned(want.rows * width); D.real_page_table_stride = width; }
  }
  // A pageable cudaMemcpy may return before its DMA lands, and the non-blocking stream below
  // does not wait for the legacy stream: without this, late poison can overwrite the result.
  CHECK_CUDA(cudaDeviceSynchronize());
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaError_t err;
  const int rc = nsa::launch(in, out, p, 0, stream, &err);
  if (rc != nsa::kOk) {
    std::fprintf(stderr, "launch: %s (%s)\n", nsa::status_string(rc), cudaGetErrorString(err));
    return false;
  }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  bool ok = true;
  for (int d = 0; d < c.ndest && ok; ++d) {
    const nsa::Dest& D = out.dest[d];
    ok = same("cache_seqlens", c, D.cache_seqlens, want.cache) && same("cu_seqlens_k", c, D.cu_seqlens_k, want.cu) &&
         same("nsa_cache_seqlens", c, D.nsa_cache_seqlens, want.nsa) &&
         same("nsa_cu_seqlens_k", c, D.nsa_cu_seqlens_k, want.nsa_cu) &&
         (c.mode == nsa::Mode::decode || same("seqlens_expanded", c, D.seqlens_expanded, want.expanded)) &&
         (!c.pt1 || same("page_table_1", c, D.page_table_1, want.pt1)) &&
         (!c.real || same("real_page_table", c, D.real_page_table, want.real));
  }
  for (int d = 0; d < c.ndest; ++d) {
    const nsa::Dest& D = out.dest[d];
    for (void* ptr : {(void*)D.cache_seqlens, (void*)D.cu_seqlens_k, (void*)D.nsa_cache_seqlens,
                      (void*)D.nsa_cu_seqlens_k, (void*)D.seqlens_expanded, (void*)D.page_table_1,
                      (void*)D.real_page_table})
      CHECK_CUDA(cudaFree(ptr));
  }
  for (const void* ptr : {in.seq_lens.data, in.req_pool_indices.data, in.extend_lens.data,
                          (const void*)in.req_to_token})
    CHECK_CUDA(cudaFree(const_cast<void*>(ptr)));
  CHECK_CUDA(cudaStreamDestroy(stream));
  return ok;
}

// nsa::takes_small_kernel on the host (it reads no memory): the call the GPU tests that name the
// small kernel make (tests/test_gpu.py::test_small_kernel, test_gpu_schedule.py::test_small_batches)
// takes it, and each condition alone sends it to the general kernel. Returns the failures.
int small_choice_failures() {
  alignas(16) static int32_t table[64], pt1[64], small[8];
  const auto base = [&](nsa::Mode mode) {
    nsa::Inputs in;
    in.seq_lens = {small, 1, false};
    in.req_pool_indices = {small, 1, true};
    in.extend_lens = {small, 1, false};
    in.req_to_token = table;
    in.pool_rows = 4;
    in.table_width = in.row_stride = 16;
    in.bs = 32;
    nsa::Outputs out;
    out.n = 1;
    out.dest[0].page_table_1 = pt1;
    out.dest[0].page_table_1_stride = 16;
    nsa::Params p;
    p.mode = mode;
    p.page_size = 64;
    p.num_sm_parts = 66;
    return std::make_tuple(in, out, p);
  };
  int failures = 0;
  const auto expect = [&](bool got, bool want, const char* what) {
    if (got != want) {
      std::printf("takes_small_kernel: %s: %d, want %d\n", what, got, want);
      ++failures;
    }
  };
  for (nsa::Mode mode : {nsa::Mode::decode, nsa::Mode::target_verify, nsa::Mode::draft_extend}) {
    auto [in, out, p] = base(mode);
    expect(nsa::takes_small_kernel(in, out, p, 3, 1), true, "the tests' call");
    expect(nsa::takes_small_kernel(in, out, p, 3, 2), false, "two requests per program");
    auto o = out;
    o.n = 2;
    expect(nsa::takes_small_kernel(in, o, p, 3, 1), false, "two destination sets");
    auto q = p;
    unsigned long long status;
    q.status = &status;
    expect(nsa::takes_small_kernel(in, out, q, 3, 1), false, "check=True");
    auto i = in;
    i.bs = 33;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), false, "bs 33");
    q = p;
    q.kpool = 2;
    expect(nsa::takes_small_kernel(in, out, q, 3, 1), false, "kpool 2");
    q = p;
    q.schedule_lengths = nsa::ScheduleLengths::sparse;
    expect(nsa::takes_small_kernel(in, out, q, 3, 1), false, "the schedule walk");
    i = in;
    i.row_stride = 18;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), false, "table rows off 16 bytes");
    i = in;
    i.req_to_token = table + 1;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), false, "table off 16 bytes");
    o = out;
    o.dest[0].page_table_1_stride = 17;
    expect(nsa::takes_small_kernel(in, o, p, 3, 1), false, "page_table_1 rows off 16 bytes");
    i = in;
    i.seq_lens.stride = 2;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), false, "strided seq_lens");
    i = in;
    i.req_pool_indices.stride = 3;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), false, "strided req_pool_indices");
    i = in;
    i.extend_lens.stride = 2;
    expect(nsa::takes_small_kernel(i, out, p, 3, 1), mode != nsa::Mode::draft_extend, "strided extend_lens");
    q = p;
    q.page_size = 2;
    expect(nsa::takes_small_kernel(in, out, q, 3, 1), false, "page 2 with a real table");
    expect(nsa::takes_small_kernel(in, out, q, 1, 1), true, "page 2, page_table_1 only");
    q.page_size = 48;
    expect(nsa::takes_small_kernel(in, out, q, 2, 1), false, "page 48 with a real table");
  }
  return failures;
}

}  // namespace

// nsa::row_programs on the host (it reads no memory): which full-width calls run row programs, and
// how many, on a 132-SM card at the default 64 draft_extend programs per SM (the shapes
// tests/test_gpu.py::test_row_programs names: 4301 x 4096 and 1201 x 16387 give groups of 2).
// Returns the failures.
int row_program_failures() {
  alignas(16) static int32_t table[8], pt1[8], idx[8];
  int failures = 0;
  const auto check = [&](const char* what, nsa::Mode mode, int64_t bs, int64_t max_len, auto&& change,
                         int64_t programs, int64_t per_group, int64_t row_chunks) {
    nsa::Inputs in;
    in.seq_lens = in.req_pool_indices = in.extend_lens = {idx, 1, false};
    in.req_to_token = table;
    in.pool_rows = 4;
    const int64_t stride = (max_len + 3) / 4 * 4 + 4;  // rows on 16 bytes
    in.table_width = in.row_stride = stride;
    in.bs = bs;
    nsa::Outputs out;
    out.n = 1;
    out.dest[0].page_table_1 = pt1;
    out.dest[0].page_table_1_stride = stride;
    nsa::Params p;
    p.mode = mode;
    p.max_len = max_len;
    p.page_size = 64;
    p.next_n = 3;
    p.total = bs;
    int tables = 3;
    bool sm90 = true;
    change(in, out, p, tables, sm90);
    const nsa::RowPrograms rp = nsa::row_programs(in, out, p, tables, 132, sm90);
    if (rp.programs != programs || rp.per_group != per_group || rp.row_chunks != row_chunks) {
      std::printf("row_programs: %s: %lld programs, %lld per group, %lld chunks; want %lld, %lld, %lld\n", what,
                  static_cast<long long>(rp.programs), static_cast<long long>(rp.per_group),
                  static_cast<long long>(rp.row_chunks), static_cast<long long>(programs),
                  static_cast<long long>(per_group), static_cast<long long>(row_chunks));
      ++failures;
    }
  };
  const auto same = [](nsa::Inputs&, nsa::Outputs&, nsa::Params&, int&, bool&) {};
  using nsa::Mode;
  check("decode 40 x 4096", Mode::decode, 40, 4096, same, 80, 1, 2);
  check("target_verify 40 x 16384 (16 KB chunks)", Mode::target_verify, 40, 16384, same, 480, 1, 4);
  check("draft_extend 40 x 4096", Mode::draft_extend, 40, 4096, same, 80, 1, 2);
  check("draft_extend 4301 x 4096", Mode::draft_extend, 4301, 4096, same, 4302, 2, 2);
  check("draft_extend 1201 x 16387", Mode::draft_extend, 1201, 16387, same, 5409, 2, 9);
  const int64_t none = 0;
  check("draft_extend, image before sm_90", Mode::draft_extend, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs&, nsa::Params&, int&, bool& sm90) { sm90 = false; }, none, 1, 0);
  check("decode, image before sm_90", Mode::decode, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs&, nsa::Params&, int&, bool& sm90) { sm90 = false; }, 80, 1, 2);
  check("live", Mode::decode, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs&, nsa::Params& p, int&, bool&) { p.live = true; }, none, 1, 0);
  check("4095 columns", Mode::draft_extend, 40, 4095, same, none, 1, 0);
  check("real table only", Mode::target_verify, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs&, nsa::Params&, int& tables, bool&) { tables = 2; }, none, 1, 0);
  check("a source row off 16 bytes", Mode::decode, 40, 4096,
        [](nsa::Inputs& in, nsa::Outputs&, nsa::Params&, int&, bool&) { in.req_to_token += 1; }, none, 1, 0);
  check("an output row stride off 16 bytes", Mode::draft_extend, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs& out, nsa::Params&, int&, bool&) { out.dest[0].page_table_1_stride += 1; },
        none, 1, 0);
  check("no rows", Mode::draft_extend, 40, 4096,
        [](nsa::Inputs&, nsa::Outputs&, nsa::Params& p, int&, bool&) { p.total = 0; }, none, 1, 0);
  return failures;
}

int main() {
  if (small_choice_failures() != 0 || row_program_failures() != 0) return 1;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("no CUDA device: skipped (after the host checks of takes_small_kernel and row_programs)\n");
    return 77;
  }
  std::mt19937_64 rng(1234);
  int cases = 0, failed = 0;
  const nsa::Mode modes[] = {nsa::Mode::decode, nsa::Mode::target_verify, nsa::Mode::draft_extend};
  for (nsa::Mode mode : modes)
    for (int bs : {0, 1, 31, 257, 1100})
      for (int max_len : {0, 1, 77, 4099})
        for (int ps : {1, 3, 64})
          for (int variant = 0; variant < 4; ++variant) {
            Case c{mode, bs, 9, max_len + 5, max_len, variant % 2 ? 7 : 2048, variant == 3 ? 4 : 1, ps, 1 + variant,
                   variant % 2 == 1, variant >= 2, variant != 2, variant != 1, 1 + (variant == 3 ? 2 : 0)};
            ++cases;
            if (!run_case(c, rng)) ++failed;
          }
  std::printf("%d cases, %d failed\n", cases, failed);
  return failed == 0 ? 0 : 1;
}
