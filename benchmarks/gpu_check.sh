#!/usr/bin/env bash
# The GPU machine in one call: build, GPU tests, ctest, sanitizers, then a short timing table.
# Usage (repo root, on the device): [STEPS="build pytest ctest sanitize bench"] bash benchmarks/gpu_check.sh
# (those five steps by default; "grid" adds the full benchmark grid with its JSON and PNG,
# "sglang_host" the drop-in's host cost beside SGLang's launcher, "variants" benchmarks/variants.sh
# over VARIANTS (compile flags, '|'-separated; MATCH picks the rows, ROUNDS repeats them), "ncu"
# Nsight Compute's counters for NCU_ROWS (benchmarks/ncu_row.py's arguments, ';'-separated); BENCH_ARGS adds options to
# bench and grid, e.g. BENCH_ARGS="--gpu-only --match @"; PYTEST_ARGS (paths) and PYTEST_K (-k) narrow the pytest step,
# SUBSET the sanitizers' tests, STEP_TIMEOUT seconds per step so one slow step leaves the others' logs). A carried SGLang wheel in .whl/ is
# installed with --no-deps --target and timed beside ours (--sglang). A carried FlashMLA ops library
# in .flashmla/ (sgl_kernel/flashmla_ops.abi3.so of the sglang-kernel 0.4.5 wheel, built for
# torch 2.11 + CUDA 13.0) is what tests/test_gpu_schedule.py's parity test compares with.
# Logs go to $OUT (or ./gpu_check_out); the table is printed last.
set -u -o pipefail
OUT=${OUT:-gpu_check_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
: > "$OUT/verdicts.txt"
step() {  # step NAME CMD...: run, log to $OUT/NAME.log, append a one-line verdict (steps may run at once)
  local name=$1; shift
  local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-3600}" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-12s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - t0))" "$(tail -n 1 "$OUT/$name.log" | cut -c1-100)" >> "$OUT/verdicts.txt"
  return $rc
}
STEPS=${STEPS:-build pytest ctest sanitize bench}
want() { [[ " $STEPS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
SGLANG=()
if ls .whl/sglang-*.whl >/dev/null 2>&1; then
  # installed for the wheel's own tags (cp311 on PyPI): only its pure-Python metadata.py is loaded
  whl=$(ls .whl/sglang-*.whl | head -n 1); IFS=- read -r _ _ py abi plat <<< "$(basename "$whl" .whl)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    --only-binary=:all: --implementation cp --python-version "${py#cp}" --abi "$abi" --platform "$plat" "$whl" \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} && SGLANG=(--sglang)
fi
if ls .flashmla/*.so >/dev/null 2>&1; then
  export NSA_FLASHMLA_OPS=$(ls .flashmla/*.so | head -n 1)
fi

if want build; then
  step build env CUDAARCHS=${CUDAARCHS:-90} python3 -m pip install --no-build-isolation --no-deps -v . || { tail -40 "$OUT/build.log"; exit 1; }
  grep -E "spill|ptxas (error|warning)" "$OUT/build.log" > "$OUT/spills.txt"; echo "ptxas spill/warning lines: $(wc -l < "$OUT/spills.txt")" >> "$OUT/build.log"
fi
# ctest (its own build, about 60 s) runs beside the pytest processes
want ctest && step ctest bash -c "cmake -S . -B build/ctest -G Ninja -DNSA_BUILD_TESTS=ON -DCMAKE_CUDA_ARCHITECTURES=90 >/dev/null && cmake --build build/ctest >/dev/null && ctest --test-dir build/ctest --output-on-failure" &
# In one process the suite ran past 220 s at 41% on an H100 (10,000 fuzz cases take 77 s, the
# 16-thread plan cache tests 60-66 s each), so by default it runs as three processes at once on the
# one GPU (there: 211, 98 and 67 s side by side).
pytest_=(env NSA_FUZZ_CASES=${NSA_FUZZ_CASES:-10000} python3 -m pytest -q -rs -p no:cacheprovider --durations=5 ${PYTEST_K:+-k "$PYTEST_K"})
if want pytest && [ -n "${PYTEST_ARGS:-}" ]; then
  step pytest "${pytest_[@]}" $PYTEST_ARGS
elif want pytest; then
  slow="tests/test_fuzz.py tests/test_gpu_one_path.py"
  gpu="tests/test_gpu.py tests/test_gpu_schedule.py tests/test_prepared_graphs.py tests/test_sglang_parity.py"
  step pytest_slow "${pytest_[@]}" $slow & step pytest_gpu "${pytest_[@]}" $gpu &
  step pytest_rest "${pytest_[@]}" tests $(for f in $slow $gpu; do echo "--ignore=$f"; done) &
  wait
fi
wait  # (ctest)
# every mode x index dtype x live x table omission x 1 and 3 destinations, plus 16 destinations,
# hostile values and a batch past one scan tile, with torch's caching allocator off
# and the prepared path, the graph replays (20 under a sanitizer) and concurrent streams/threads
SUBSET=${SUBSET:-"torch and (test_matches_reference or test_hostile_values or test_sixteen_destinations or test_batch_sizes and 1025 or test_check_true) or test_prepared_graphs.py"}
# (the four tools at once: on an H100 each took 15-26 s so)
want sanitize && for tool in ${SANITIZERS:-memcheck racecheck initcheck synccheck}; do
  step "$tool" env NSA_SANITIZE=1 PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    --target-processes all python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_prepared_graphs.py -k "$SUBSET" &
done; wait
want sanitize && for tool in ${SANITIZERS:-memcheck racecheck initcheck synccheck}; do
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/$tool.log" | tail -n 2 | sed "s/^/$tool: /" >> "$OUT/sanitizer_summary.txt"
done
want sglang_host && step sglang_host python3 benchmarks/sglang_host.py
if want variants; then
  IFS='|' read -r -a flag_sets <<< "${VARIANTS:-|-DNSA_ROW_PROGRAMS=0}"
  step variants bash benchmarks/variants.sh "${flag_sets[@]}"
fi
if want ncu; then
  IFS=';' read -r -a ncu_rows <<< "${NCU_ROWS:-draft_extend 4096 4096 full;target_verify 4096 4096 full}"
  metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_bytes.sum,smsp__inst_executed.sum,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread,launch__grid_size
  for row in "${ncu_rows[@]}"; do
    echo "== $row" >> "$OUT/ncu.log"
    timeout "${STEP_TIMEOUT:-3600}" ncu --kernel-name regex:metadata_kernel --launch-skip 3 --launch-count 1 --metrics "$metrics" \
      python3 benchmarks/ncu_row.py $row 2>&1 | grep -E "^==|metadata_kernel|__|MB" >> "$OUT/ncu.log"
  done
  echo "ncu           $(grep -c gpu__time_duration "$OUT/ncu.log") profiles" >> "$OUT/verdicts.txt"
fi
want bench && step bench python3 -m nsa_metadata.cli bench --quick "${SGLANG[@]}" ${BENCH_ARGS:-} --json "$OUT/bench_quick.json"
want grid && step grid python3 -m nsa_metadata.cli bench "${SGLANG[@]}" ${BENCH_ARGS:-} --json "$OUT/bench.json" --plot "$OUT/bench.png"

echo "== $(cat "$OUT/gpu.txt")"
cat "$OUT/verdicts.txt"
cat "$OUT/sanitizer_summary.txt" 2>/dev/null
echo
want bench && grep -v "^\\[" "$OUT/bench.log"
want grid && cat "$OUT/grid.log"
want sglang_host && cat "$OUT/sglang_host.log"
want ncu && cat "$OUT/ncu.log"
want variants && cat "$OUT/variants.log"
