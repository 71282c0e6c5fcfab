#!/usr/bin/env bash
# A throwaway copy of the tracked tree in .snap/ (git-ignored locally) for diagnostic variants on
# the device; its edits are never committed:
# - a spill warns instead of failing the build, so -DNSA_MIN_BLOCKS=12 or 16 builds (spilling);
# - -DNSA_DIAG_FAKE_ROWS=E makes draft_extend's row programs take i0 * E as the rows before their
#   group instead of summing extend_lens. That is right only for uniform extend_lens of E (the
#   bench's are 4); the bench times and does not compare, so it shows what the sum costs.
#   bash benchmarks/diag_snapshot.sh   # then run with carry [".snap"], "cd .snap && ..."
set -eu
cd "$(git rev-parse --show-toplevel)"
rm -rf .snap && mkdir .snap && git ls-files | tar -cT - | tar -x -C .snap
sed -i 's/-Xptxas=-warn-spills,-Werror>)  # a spill fails the build/-Xptxas=-warn-spills>)  # diagnostic copy: spills allowed/' .snap/CMakeLists.txt
grep -q "diagnostic copy: spills allowed" .snap/CMakeLists.txt || { echo "CMakeLists.txt: spill flag not found" >&2; exit 1; }
python3 - <<'PY'
p = ".snap/kernels/kernels.cuh"
s = open(p).read()
head = "__device__ int64_t rows_before(const Args<kSlots>& a, int32_t i0) {\n"
if s.count(head) != 1:
    raise SystemExit("kernels.cuh: rows_before not found")
open(p, "w").write(s.replace(head, head + "#ifdef NSA_DIAG_FAKE_ROWS\n  return int64_t{i0} * NSA_DIAG_FAKE_ROWS;\n#endif\n"))
PY
echo ".snap: $(git ls-files | wc -l) files, spills allowed, NSA_DIAG_FAKE_ROWS available"
