// The launcher: the only file that knows the CUDA runtime. It validates the structs, says which
// kernel instance runs for a call (choose_kernel) and how the call is cut into programs
// (plan_grid), and launches it on the caller's stream without synchronising.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels.cuh"
#include "launch.h"
#include "small.cuh"

namespace nsa {
namespace {

#ifndef NSA_ROW_PROGRAMS
#define NSA_ROW_PROGRAMS 1  // 0: never row programs (benchmarks/variants.sh compares the two)
#endif

#ifndef NSA_EXTEND_PROGRAMS_PER_SM
#define NSA_EXTEND_PROGRAMS_PER_SM 64  // draft_extend's row programs (each sums the rows before its group;
                                       // H100: 32 beat 16 by 1-5% on the full-width rows >= 16 MB, and
                                       // 64 beat 32 by 2% at 1024 x 32768 and 4096 x 4096, tie at 256 x 32768)
#endif

#ifndef NSA_PROGRAMS_PER_SM
#define NSA_PROGRAMS_PER_SM 16  // two waves of resident blocks (8 per SM): balances rows of unequal length
#endif

// (in the kernels' translation unit: device_facts reads the PTX version of their common image)
__global__ void empty_kernel() {}

int log2_exact(int64_t x) {
  int s = 0;
  while ((int64_t{1} << s) < x) ++s;
  return (int64_t{1} << s) == x ? s : -1;
}

// What a launch needs to know of `device`, asked once per device (the launch path never asks the
// driver again): its multiprocessors, whether the kernels' image was built from sm_90 or newer PTX
// (it then holds draft_extend's row programs), and whether a launch may overlap the previous
// kernel of the stream (programmatic dependent launch): sm_90 or newer, that image (so the kernels
// wait for that kernel first: wait_for_previous_kernel), and NSA_METADATA_PDL not "0".
// (Device ordinals past the cache are asked at every launch.)
struct DeviceFacts {
  int sms = 0;
  bool overlap = false;
  bool sm90_code = false;  // ptxVersion >= 90: kernels.cuh's kExtendRowPrograms holds there
};

cudaError_t device_facts(int device, DeviceFacts* f) {
  constexpr int kCached = 64;
  static std::atomic<int> cache[kCached];  // 0: not asked yet, else sms << 2 | sm90_code << 1 | overlap
  if (device >= 0 && device < kCached) {
    const int c = cache[device].load(std::memory_order_relaxed);
    if (c > 0) {
      f->sms = c >> 2, f->sm90_code = (c & 2) != 0, f->overlap = (c & 1) != 0;
      return cudaSuccess;
    }
  }
  int major = 0;
  cudaFuncAttributes fa{};
  cudaError_t err = cudaDeviceGetAttribute(&f->sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(&empty_kernel));
  if (err != cudaSuccess) return err;
  const char* env = std::getenv("NSA_METADATA_PDL");
  f->sm90_code = fa.ptxVersion >= 90;
  f->overlap = major >= 9 && f->sm90_code && !(env != nullptr && std::strcmp(env, "0") == 0);
  if (device >= 0 && device < kCached)
    cache[device].store(f->sms << 2 | (f->sm90_code ? 2 : 0) | (f->overlap ? 1 : 0), std::memory_order_relaxed);
  return cudaSuccess;
}

// One kernel launch of kThreads-thread blocks with its one parameter struct; overlap: see
// DeviceFacts. The launch's own return code: an earlier error elsewhere is neither reported nor
// cleared.
cudaError_t launch_kernel(const void* kernel, dim3 grid, void* arg, bool overlap, cudaStream_t stream) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = overlap ? 1 : 0;
  void* args[] = {arg};
  return cudaLaunchKernelExC(&cfg, kernel, args);
}

struct Grid {
  int64_t groups = 0, per_group = 1, splits = 1;
  int64_t row_chunks = 0;  // > 0: groups row programs, row_chunks per row (kernels.cuh's row_program)
  dim3 dims() const { return dim3(static_cast<unsigned>(1 + groups), static_cast<unsigned>(splits)); }
};

// How a call is cut into page programs: about `target` programs in all, so the grid depends
// only on (bs, table width) and a graph captured at a width far beyond the live lengths
// launches few idle programs. Up to `target` requests, each gets splits programs striding over
// its `steps`; beyond, each program takes a group of consecutive requests (draft_extend then
// sums the rows before a group once per program: O(target * bs) reads, not O(bs^2)).
Grid plan_grid(int64_t bs, int64_t steps, int64_t target) {
  Grid g;
  if (bs == 0 || steps == 0) return g;
  if (bs >= target) {
    g.per_group = (bs + target - 1) / target;
    g.groups = (bs + g.per_group - 1) / g.per_group;
    return g;
  }
  g.groups = bs;
  g.splits = target / bs;
  if (g.splits > steps) g.splits = steps;
  return g;
}

template <Mode M, int kTables, int kSlots>
cudaError_t launch_instance(const Inputs& in, const Outputs& out, const Params& p, const Shape& shape,
                            const Grid& grid, bool overlap, cudaStream_t stream) {
  Args<kSlots> a{};
  a.in = in;
  for (int d = 0; d < out.n; ++d) a.dest[d] = out.dest[d];
  a.n_dest = out.n;
  a.p = p;
  a.bs = static_cast<int32_t>(in.bs);
  a.rows = static_cast<int32_t>(shape.rows);
  a.per_group = static_cast<int32_t>(grid.per_group);
  a.splits = static_cast<int32_t>(grid.splits);
  a.row_chunks = static_cast<int32_t>(grid.row_chunks);
  a.ps_shift = log2_exact(p.page_size);
  if (p.num_sm_parts > 0 && p.schedule_lengths == ScheduleLengths::topk)  // (host: 1 to 148 steps)
    a.uniform = sched::uniform_plan(p.topk, a.rows, p.num_sm_parts);
  return launch_kernel(reinterpret_cast<const void*>(&metadata_kernel<M, kTables, kSlots>), grid.dims(), &a,
                       overlap, stream);
}

// The small kernel (small.cuh): one destination set, what launch() checked it may take.
template <Mode M, int kTables, int kIndex>
cudaError_t launch_small(const Inputs& in, const Outputs& out, const Params& p, const Shape& shape,
                         const Grid& grid, bool overlap, cudaStream_t stream) {
  const Dest& D = out.dest[0];
  SmallArgs a{};
  a.seq_lens = in.seq_lens.data;
  a.req_pool_indices = in.req_pool_indices.data;
  a.extend_lens = in.extend_lens.data;
  a.req_to_token = in.req_to_token;
  a.page_table_1 = D.page_table_1;
  a.real_page_table = D.real_page_table;
  a.row_stride = in.row_stride;
  a.pool_rows = in.pool_rows;
  a.page_table_1_stride = D.page_table_1_stride;
  a.real_page_table_stride = D.real_page_table_stride;
  a.max_len = static_cast<int32_t>(p.max_len);
  a.splits = static_cast<int32_t>(grid.splits);
  a.rows = static_cast<int32_t>(shape.rows);
  a.next_n = p.next_n;
  a.ps_shift = log2_exact(p.page_size);
  a.live = p.live;
  a.bs = static_cast<int32_t>(in.bs);
  a.topk = p.topk;
  a.cache_seqlens = D.cache_seqlens;
  a.cu_seqlens_k = D.cu_seqlens_k;
  a.nsa_cache_seqlens = D.nsa_cache_seqlens;
  a.nsa_cu_seqlens_k = D.nsa_cu_seqlens_k;
  a.seqlens_expanded = D.seqlens_expanded;
  a.paged_mqa_ctx_lens_2d = D.paged_mqa_ctx_lens_2d;
  a.paged_mqa_stride0 = D.paged_mqa_stride0;
  a.paged_mqa_stride1 = D.paged_mqa_stride1;
  if (p.num_sm_parts > 0 && D.tile_scheduler_metadata != nullptr) {  // (topk rows: launch() checked)
    a.num_sm_parts = p.num_sm_parts;
    a.tile_scheduler_metadata = D.tile_scheduler_metadata;
    a.num_splits = D.num_splits;
    a.uniform = sched::uniform_plan(p.topk, a.rows, p.num_sm_parts);
  }
  return launch_kernel(reinterpret_cast<const void*>(&small_kernel<M, kTables, kIndex>), grid.dims(), &a, overlap,
                       stream);
}

using LaunchFn = cudaError_t (*)(const Inputs&, const Outputs&, const Params&, const Shape&, const Grid&, bool,
                                 cudaStream_t);

// The small kernel's instance for the index dtypes (IndexBits; extend_lens' only in draft_extend).
template <Mode M, int kTables, int kIndex = 0>
LaunchFn small_by_index(int bits) {
  constexpr int kLast = M == Mode::draft_extend ? 7 : 3;
  if constexpr (kIndex == kLast) {
    return launch_small<M, kTables, kIndex>;
  } else {
    return bits == kIndex ? launch_small<M, kTables, kIndex> : small_by_index<M, kTables, kIndex + 1>(bits);
  }
}

// small: the IndexBits of a call the small kernel takes, or -1.
template <Mode M, int kTables>
LaunchFn by_slots(int n, int small) {
  if (small >= 0) return small_by_index<M, kTables>(small);
  if (n == 1) return launch_instance<M, kTables, 1>;
  if (n <= 4) return launch_instance<M, kTables, 4>;
  return launch_instance<M, kTables, kMaxDests>;
}

template <Mode M>
LaunchFn by_tables(int tables, int n, int small) {
  if (tables == kRealTable) return by_slots<M, kRealTable>(n, small);
  if (tables == kPageTable1) return by_slots<M, kPageTable1>(n, small);
  return by_slots<M, kBothTables>(n, small);  // also when no table is written (no page programs)
}

// Which kernel instance runs for (mode, tables written, destination slots, the small kernel's
// index dtypes or -1 for the general kernel).
LaunchFn choose_kernel(Mode mode, int tables, int n, int small) {
  if (mode == Mode::decode) return by_tables<Mode::decode>(tables, n, small);
  if (mode == Mode::target_verify) return by_tables<Mode::target_verify>(tables, n, small);
  return by_tables<Mode::draft_extend>(tables, n, small);
}

// Whether every page_table_1 row read or written starts on 16 bytes (copy_request's phase 0).
bool rows_aligned(const Inputs& in, const Outputs& out) {
  const auto on16 = [](const int32_t* row0, int64_t stride) {
    return reinterpret_cast<uintptr_t>(row0) % 16 == 0 && stride % 4 == 0;
  };
  if (!on16(in.req_to_token, in.row_stride)) return false;
  for (int d = 0; d < out.n; ++d)
    if (out.dest[d].page_table_1 != nullptr && !on16(out.dest[d].page_table_1, out.dest[d].page_table_1_stride))
      return false;
  return true;
}

// Sets the device, runs f (which returns a cudaError_t), restores the device.
template <class F>
int on_device(int device, cudaError_t* cuda_error, F&& f) {
  int prev = -1;
  cudaError_t err = cudaGetDevice(&prev);
  if (err == cudaSuccess && prev != device) err = cudaSetDevice(device);
  if (err == cudaSuccess) {
    err = f();
    if (prev >= 0 && prev != device) {
      const cudaError_t restore = cudaSetDevice(prev);
      if (err == cudaSuccess) err = restore;
    }
  }
  *cuda_error = err;
  return err == cudaSuccess ? kOk : kCudaError;
}

}  // namespace

bool schedule_fits(const Params& p, int64_t rows) {
  // sparse(x) <= topk + kpool - 1; a length of 0 or less counts as one token
  const int64_t longest = p.schedule_lengths == ScheduleLengths::topk ? p.topk : int64_t{p.topk} + p.kpool - 1;
  return p.num_sm_parts >= 1 && longest <= kInt32Max &&
         sched::schedule_fits(rows, static_cast<int32_t>(longest), p.num_sm_parts);
}

const char* status_string(int status) {
  switch (status) {
    case kOk: return "ok";
    case kBadArgument: return "invalid argument to nsa::launch";
    case kCudaError: return "CUDA error";
    default: return "unknown status";
  }
}

// The small kernel (small.cuh): what engines run at small batches, with the shortest chain of
// instructions; what it does not handle goes to the general kernel.
bool takes_small_kernel(const Inputs& in, const Outputs& out, const Params& p, int tables, int64_t per_group) {
  return out.n == 1 && p.status == nullptr && in.bs <= 32 && p.kpool == 1 &&
         (p.num_sm_parts == 0 || p.schedule_lengths == ScheduleLengths::topk) && per_group == 1 &&
         rows_aligned(in, out) && in.seq_lens.stride == 1 && in.req_pool_indices.stride == 1 &&
         (p.mode != Mode::draft_extend || in.extend_lens.stride == 1) &&
         ((tables & kRealTable) == 0 || (p.page_size >= 4 && log2_exact(p.page_size) >= 0));
}

// Full-width tables: a chunk of 8 or 16 KB of a row per program, up to 2^31 - 2 programs; in
// decode and target_verify a program per chunk of every row, in draft_extend a program per chunk
// of a group's rows, about NSA_EXTEND_PROGRAMS_PER_SM programs per SM (each sums the rows before
// its group, so those reads are O(sms x bs) per call).
RowPrograms row_programs(const Inputs& in, const Outputs& out, const Params& p, int tables, int sms, bool sm90_code) {
  RowPrograms rp;
  const int64_t rows = shape_of(p.mode, in.bs, p.next_n, p.total, p.max_len, p.page_size).rows;
  if (!NSA_ROW_PROGRAMS || p.live || (tables & kPageTable1) == 0 || p.max_len < kRowMin || rows <= 0 ||
      !rows_aligned(in, out) || (p.mode == Mode::draft_extend && !sm90_code))
    return rp;
  const int64_t row_cols = int64_t{row_steps(p.mode, p.max_len)} * kChunk;
  const int64_t row_chunks = (p.max_len + row_cols - 1) / row_cols;
  int64_t per_group = 1, programs = rows;  // decode and target_verify: a program per row chunk
  if (p.mode == Mode::draft_extend) {
    const int64_t target = int64_t{sms} * NSA_EXTEND_PROGRAMS_PER_SM;
    per_group = std::max<int64_t>(1, (in.bs * row_chunks + target - 1) / target);
    programs = (in.bs + per_group - 1) / per_group;
  }
  if (programs > (kInt32Max - 1) / row_chunks) return rp;
  rp.programs = programs * row_chunks;
  rp.per_group = per_group;
  rp.row_chunks = row_chunks;
  return rp;
}

int launch(const Inputs& in, const Outputs& out, const Params& p, int device, cudaStream_t stream,
           cudaError_t* cuda_error) {
  *cuda_error = cudaSuccess;
  if (out.n < 1 || out.n > kMaxDests || in.bs < 0 || p.max_len < 0 || p.topk < 1 || p.kpool < 1 ||
      p.page_size < 1 || p.next_n < 1 || p.total < 0 || in.pool_rows < 0 || in.table_width < 0 ||
      p.max_len > in.table_width || p.max_len > kInt32Max || (in.pool_rows > 1 && in.row_stride < in.table_width) ||
      (in.bs > 0 && (in.seq_lens.data == nullptr || in.req_pool_indices.data == nullptr ||
                     (p.mode == Mode::draft_extend && in.extend_lens.data == nullptr))) ||
      (in.pool_rows > 0 && p.max_len > 0 && in.req_to_token == nullptr))
    return kBadArgument;
  const Shape shape = shape_of(p.mode, in.bs, p.next_n, p.total, p.max_len, p.page_size);
  if (in.bs > kInt32Max || shape.rows > kInt32Max) return kBadArgument;  // SPEC: int32 counts
  // the schedule: decode and target_verify, a known length source, FlashMLA's int32 domain
  if (p.num_sm_parts < 0 ||
      (p.num_sm_parts > 0 &&
       (p.mode == Mode::draft_extend ||
        (p.schedule_lengths != ScheduleLengths::topk && p.schedule_lengths != ScheduleLengths::sparse) ||
        !schedule_fits(p, shape.rows))))
    return kBadArgument;
  int tables = 0;
  for (int d = 0; d < out.n; ++d) {
    const Dest& D = out.dest[d];
    if (p.num_sm_parts > 0 && (D.tile_scheduler_metadata == nullptr) != (D.num_splits == nullptr))
      return kBadArgument;
    // (an empty array may have a null pointer; nothing is written to it)
    if ((in.bs > 0 && D.cache_seqlens == nullptr) || D.cu_seqlens_k == nullptr ||
        D.nsa_cu_seqlens_k == nullptr ||
        (shape.rows > 0 && (D.nsa_cache_seqlens == nullptr ||
                            (p.mode != Mode::decode && D.seqlens_expanded == nullptr))))
      return kBadArgument;
    if (D.page_table_1 != nullptr) tables |= kPageTable1;
    if (D.real_page_table != nullptr) tables |= kRealTable;
  }
  // steps of one request: 16-byte column chunks, or real columns when only real tables are written
  const int64_t steps = tables == 0 || p.max_len == 0 ? 0
                        : (tables & kPageTable1) ? (p.max_len + kChunk - 1) / kChunk
                                                 : (shape.real_width + kThreads - 1) / kThreads;
  return on_device(device, cuda_error, [&] {
    DeviceFacts dev;
    const cudaError_t err = device_facts(device, &dev);
    if (err != cudaSuccess) return err;
    // target <= 65535 (gridDim.y) for any chip: splits and groups fit their dimensions
    Grid grid = plan_grid(in.bs, steps, int64_t{dev.sms} * NSA_PROGRAMS_PER_SM);
    const bool small = takes_small_kernel(in, out, p, tables, grid.per_group);
    if (!small) {
      const RowPrograms rp = row_programs(in, out, p, tables, dev.sms, dev.sm90_code);
      if (rp.row_chunks > 0) grid = Grid{rp.programs, rp.per_group, 1, rp.row_chunks};
    }
    const int bits = (in.seq_lens.is64 ? kLens64 : 0) | (in.req_pool_indices.is64 ? kPool64 : 0) |
                     (p.mode == Mode::draft_extend && in.extend_lens.is64 ? kExtend64 : 0);
    return choose_kernel(p.mode, tables, out.n, small ? bits : -1)(in, out, p, shape, grid, dev.overlap, stream);
  });
}

int overlaps_previous_kernel(int device, bool* overlap, cudaError_t* cuda_error) {
  *overlap = false;
  return on_device(device, cuda_error, [&] {
    DeviceFacts dev;
    const cudaError_t err = device_facts(device, &dev);
    *overlap = dev.overlap;
    return err;
  });
}

int launch_empty(int device, cudaStream_t stream, cudaError_t* cuda_error) {
  return on_device(device, cuda_error, [&] {
    return cudaLaunchKernel(reinterpret_cast<const void*>(&empty_kernel), dim3(1), dim3(1), nullptr, 0, stream);
  });
}

}  // namespace nsa
