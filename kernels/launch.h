// The C++ API of nsa-metadata: plain structs of device pointers, one launcher. No Python here.
// SPEC.md is the contract; field names are SPEC's names.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace nsa {

enum class Mode : int { decode = 0, target_verify = 1, draft_extend = 2 };

constexpr int kMaxDests = 16;  // destination sets filled by one launch

// What check=True found first, as the low 3 bits of the status word (request index << 3 | kind).
enum BadKind : int {
  kBadPoolIndex = 0,    // req_pool_indices[i] outside [0, P)
  kNegativeLength = 1,  // seq_lens[i] < 0
  kBadExtend = 2,       // extend_lens[i] negative or outside int32
  kOverflow = 3,        // an int32 overflow (a length or a cumulative sum through request i)
  kBadTotal = 4,        // total != sum(extend_lens) (index bs)
};
constexpr unsigned long long kStatusOk = ~0ull;  // the status word when nothing is bad

// A 1-D int32 or int64 device array read with any element stride.
struct IndexArray {
  const void* data = nullptr;
  int64_t stride = 1;  // in elements
  bool is64 = false;
};

struct Inputs {
  IndexArray seq_lens;
  IndexArray req_pool_indices;
  IndexArray extend_lens;  // draft_extend only
  const int32_t* req_to_token = nullptr;
  int64_t pool_rows = 0;    // P
  int64_t table_width = 0;  // W: no read goes past column W - 1 of a pool row
  int64_t row_stride = 0;   // in elements, unit column stride
  int64_t bs = 0;
};

// One destination set. 1-D outputs are contiguous; tables have unit column stride and any row
// stride. A null table is not written (and not read for: see real-only in launch.cu).
struct Dest {
  int32_t* cache_seqlens = nullptr;
  int32_t* cu_seqlens_k = nullptr;
  int32_t* nsa_cache_seqlens = nullptr;
  int32_t* nsa_cu_seqlens_k = nullptr;
  int32_t* seqlens_expanded = nullptr;  // target_verify and draft_extend
  int32_t* page_table_1 = nullptr;
  int64_t page_table_1_stride = 0;
  int32_t* real_page_table = nullptr;
  int64_t real_page_table_stride = 0;
  // target_verify, optional: [bs, next_n], any strides (in elements)
  int32_t* paged_mqa_ctx_lens_2d = nullptr;
  int64_t paged_mqa_stride0 = 0, paged_mqa_stride1 = 0;
  // FlashMLA's decode schedule (docs/SPEC_schedule.md), written when Params::num_sm_parts > 0;
  // both or neither (null: this set does not want it). Contiguous int32: [num_sm_parts, 8] and
  // [rows + 1] (FlashMLA's batch is our rows: SGLang passes nsa_cache_seqlens as cache_seqlens).
  int32_t* tile_scheduler_metadata = nullptr;
  int32_t* num_splits = nullptr;
};

// Where the schedule takes each row's tokens from (FlashMLA's topk_length): none, so every row
// has topk (SGLang's call), or nsa_cache_seqlens[r] = sparse(L) (deepseek-ai's min(len, topk)).
enum class ScheduleLengths : int { topk = 0, sparse = 1 };

struct Outputs {
  Dest dest[kMaxDests];
  int n = 0;
};

struct Params {
  Mode mode = Mode::decode;
  int64_t max_len = 0;
  int32_t topk = 1;
  int32_t kpool = 1;
  int32_t page_size = 1;
  int32_t next_n = 1;     // target_verify
  int64_t total = 0;      // draft_extend: rows (a capacity under CUDA graphs)
  bool live = false;
  // FlashMLA's decode schedule, decode and target_verify only: 0 = off, else its num_sm_parts
  int32_t num_sm_parts = 0;
  ScheduleLengths schedule_lengths = ScheduleLengths::topk;
  // check=True: the kernel stores here (request index << 3 | BadKind) of the first bad element,
  // or kStatusOk when there is none.
  unsigned long long* status = nullptr;
};

// The regions one call writes (SPEC): rows of the nsa/page outputs, the width of page_table_1 and
// of the real table. The binding checks capacities with it and the launcher sizes with it.
struct Shape {
  int64_t rows = 0, width = 0, real_width = 0;
};
inline Shape shape_of(Mode mode, int64_t bs, int64_t next_n, int64_t total, int64_t max_len,
                      int64_t page_size) {
  Shape s;
  s.rows = mode == Mode::decode ? bs : mode == Mode::target_verify ? bs * next_n : total;
  s.width = max_len;
  s.real_width = page_size > 0 ? (max_len + page_size - 1) / page_size : 0;
  return s;
}

// Whether FlashMLA's int32 arithmetic holds for the schedule of `rows` rows under p (schedule.cuh's
// schedule_fits for the longest row p's length source allows). The launcher and the binding check it.
bool schedule_fits(const Params& p, int64_t rows);

// Whether launch() runs the small kernel (kernels/small.cuh) for a valid call whose destinations
// write `tables` (1: page_table_1, 2: the real table, 3: both) with `per_group` requests per page
// program (1 up to one program per request): one destination set, check=False, bs <= 32,
// kpool == 1, no schedule walk, unit-stride index arrays, page_table_1 rows read and written on
// 16 bytes, and pages a power of two >= 4 where a real table is written.
bool takes_small_kernel(const Inputs& in, const Outputs& out, const Params& p, int tables, int64_t per_group);

// The row programs launch() runs on the general kernel for a valid call whose destinations write
// `tables` (kernels.cuh's row_program and extend_row_program), on a device of `sms` multiprocessors
// whose kernel image is sm_90 or newer when `sm90_code`: `programs` blocks after block 0, each one
// chunk of a row (decode, target_verify: per_group 1) or of every row of `per_group` requests
// (draft_extend, sm90_code only), `row_chunks` chunks a row; row_chunks 0: page programs instead
// (live, narrower than 4096 columns, rows not on 16 bytes, no page_table_1, too many programs).
struct RowPrograms {
  int64_t programs = 0, per_group = 1, row_chunks = 0;
};
RowPrograms row_programs(const Inputs& in, const Outputs& out, const Params& p, int tables, int sms, bool sm90_code);

enum Status : int {
  kOk = 0,
  kBadArgument = 1,  // a struct field outside what the host-side validation allows
  kCudaError = 3,    // see the cudaError_t written to *cuda_error (2 was kTooLarge, retired)
};

// Launches the one kernel of a call on `stream` of `device` (the caller's current device is
// restored). Never synchronises. The launch may overlap the end of the previous kernel of the
// stream (programmatic dependent launch; see overlaps_previous_kernel): the kernel waits for that
// kernel's completion before its first load or store, so stream order holds. Returns kOk or a
// Status, and on kCudaError the CUDA error of this launch (an earlier, unrelated error is neither
// reported nor cleared).
int launch(const Inputs& in, const Outputs& out, const Params& p, int device, cudaStream_t stream,
           cudaError_t* cuda_error);

// Whether launch() on `device` overlaps the previous kernel of the stream: the device is sm_90
// or newer, the kernels were built from sm_90 or newer PTX, and NSA_METADATA_PDL is not "0" in the
// environment (read with the device's other facts, once per device below ordinal 64, at every call
// past it). Returns kOk or kCudaError.
int overlaps_previous_kernel(int device, bool* overlap, cudaError_t* cuda_error);

// An empty kernel on `stream` of `device`: the floor of what a launch costs the host.
int launch_empty(int device, cudaStream_t stream, cudaError_t* cuda_error);

const char* status_string(int status);

}  // namespace nsa
