#!/usr/bin/env bash
# Kernel variants side by side (sm_90 only): each set of compile flags is built in parallel into a
# directory of its own, then the same bench rows run against each, one after another.
#   MATCH='4096x4096 -$' bash benchmarks/variants.sh "" "-DNSA_MIN_BLOCKS=6" "-DNSA_PROGRAMS_PER_SM=32"
# ROUNDS=2 times every variant twice (all of them, then all again): the spread between a
# variant's two rounds is the noise a difference must beat.
set -u
MATCH=${MATCH:-}
ROUNDS=${ROUNDS:-1}
i=0
for flags in "$@"; do
  rm -rf "/tmp/variant$i"  # (pip --target keeps an earlier build's package)
  ( CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS='$flags'" python3 -m pip install \
      --no-build-isolation --no-deps -q --target "/tmp/variant$i" -C "build-dir=build/variant$i" . \
      > "/tmp/variant$i.log" 2>&1 || echo "variant $i ($flags): build failed: $(grep -m3 -E 'error|spill' /tmp/variant$i.log)" ) &
  i=$((i + 1))
done
wait
for round in $(seq "$ROUNDS"); do
  i=0
  for flags in "$@"; do
    echo "=== variant $i: ${flags:-default} (round $round)"
    [ -d "/tmp/variant$i/nsa_metadata" ] && PYTHONPATH="/tmp/variant$i${PYTHONPATH:+:$PYTHONPATH}" \
      python3 -m nsa_metadata.cli bench --gpu-only ${MATCH:+--match "$MATCH"} 2>&1 | grep -v $'^\r'  # (not the progress line)
    i=$((i + 1))
  done
done
