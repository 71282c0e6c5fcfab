#!/usr/bin/env bash
# Build kernel variants (sm_90 only) and print each one's GPU table: bash benchmarks/variants.sh "-DNSA_PROGRAMS_PER_SM=8" "-DNSA_MIN_BLOCKS=6"
set -u
for flags in "$@"; do
  echo "=== variant: ${flags:-default}"
  CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS='$flags'" python3 -m pip install --no-build-isolation --no-deps -q -C build-dir=build/variant . >/dev/null 2>&1 || { echo build failed; continue; }
  python3 -m nsa_metadata.cli bench --quick --gpu-only 2>/dev/null | tail -n 7
done
