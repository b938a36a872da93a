#!/usr/bin/env bash
# One-call check of the real CUDA backend on a lent GPU.
#
#   scripts/gpu-check.sh prepare   # here (no GPU): nvcc build into build-gpu/, plus the shared
#                                  # libraries the device machine lacks (OpenBLAS, gfortran...) in
#                                  # build-gpu/bundle/, so that build-gpu can be carried over
#   scripts/gpu-check.sh           # on the GPU machine: runs everything below, prints a table
#
# With the device tool: run `prepare` here, then one `run` with
#   carry = ["build-gpu/bin", "build-gpu/lib", "build-gpu/bundle"]   (~60 MiB of the 64 allowed)
#   command = "bash scripts/gpu-check.sh"   and a timeout of ~480 s.
#
# On the GPU it runs, each with a time limit so the whole fits one device call (< 8 min):
#   1. nvidia-smi (card, driver);
#   2. the core op suite on cuda:0 (every device-generic test body, LATHE_TEST_DEVICE=cuda);
#   3. the cuda device's own tests (runtime, caching allocator, every kernel family vs the cpu);
#   4. the PTX wrapper tests, including the self-check of mma/ldmatrix/cp.async against known
#      products — the confirmation that the simulator's emulation matches the hardware;
#   5. lathe-bench (cpu kernels today; cuda entries arrive with the kernels issue).
# Test binaries are run directly (not through ctest), because the carried build tree's ctest files
# hold this machine's absolute paths. Results go to $OUT (or build-gpu/gpu-check/) as logs.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD="${LATHE_GPU_BUILD_DIR:-build-gpu}"

if [[ "${1:-}" == "prepare" ]]; then
  set -e
  source scripts/lib/deps.sh
  lathe_ensure_packages "${LATHE_PACKAGES[@]}"
  lathe_ccache_setup
  # Hopper only: the lent machines are H100/H200, and one arch halves nvcc's time.
  lathe_configure_and_build "$BUILD" -DLATHE_CUDA=ON -DLATHE_CUDA_SIM=OFF \
    -DLATHE_CUDA_ARCHS="${LATHE_CUDA_ARCHS:-90a}" -DLATHE_NATIVE=OFF
  mkdir -p "$BUILD/bundle"
  # Every non-glibc, non-CUDA library the binaries need, from this machine.
  ldd "$BUILD"/bin/* "$BUILD"/lib/liblathe.so* 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas[^/]*|libnvidia[^/]*)\.so' |
    grep -v "$PWD/$BUILD" | while read -r lib; do cp -L "$lib" "$BUILD/bundle/"; done
  du -shc "$BUILD/bin" "$BUILD/lib" "$BUILD/bundle" | tail -n 1 |
    awk '{print "bin + lib + bundle: " $1 " (the device tool carries at most 64 MiB)"}'
  exit 0
fi

OUT_DIR="${OUT:-$BUILD/gpu-check}"
mkdir -p "$OUT_DIR"
export LD_LIBRARY_PATH="$PWD/$BUILD/lib:$PWD/$BUILD/bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
ROWS=()
STATUS=0

# step <name> <timeout s> <log> <command...>: runs a step, records pass/fail and Catch2's counts.
step() {
  local name="$1" limit="$2" log="$OUT_DIR/$3"
  shift 3
  local start=$SECONDS rc=0
  timeout "$limit" "$@" >"$log" 2>&1 || rc=$?
  local counts
  counts="$(grep -E '^(All tests passed|test cases:)' "$log" | tail -n 1)"
  ROWS+=("$(printf '%-34s %-6s %5ss  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo FAIL)" \
    "$((SECONDS - start))" "${counts:-see $(basename "$log")}")")
  ((rc == 0)) || STATUS=1
}

if [[ ! -x "$BUILD/bin/lathe-tests-cuda" ]]; then
  echo "gpu-check: $BUILD/bin/lathe-tests-cuda is missing; run 'scripts/gpu-check.sh prepare'" \
    "where the build dependencies are installed and carry $BUILD" >&2
  exit 2
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  >"$OUT_DIR/gpu.txt" 2>&1 || true
step "core ops on cuda:0" 300 core-cuda.log env LATHE_TEST_DEVICE=cuda \
  "$BUILD/bin/lathe-tests-core" "~[cpu-only]" --use-colour no
step "cuda runtime, allocator, kernels" 120 cuda.log "$BUILD/bin/lathe-tests-cuda" --use-colour no
step "ptx wrappers (mma/ldmatrix/cp.async)" 60 ptx.log "$BUILD/bin/lathe-tests-ptx" -s \
  "ptx: self-check entry for a real GPU passes" --use-colour no
step "ptx tests (all)" 60 ptx-all.log "$BUILD/bin/lathe-tests-ptx" --use-colour no
step "lathe-bench" 150 bench.log "$BUILD/bin/lathe-bench" --benchmark_min_time=0.05

echo "== lathe gpu-check $(date -u +%Y-%m-%dT%H:%MZ) on $(cat "$OUT_DIR/gpu.txt" 2>/dev/null)"
printf '%s\n' "${ROWS[@]}"
grep -E '^(ok|FAIL)' "$OUT_DIR/ptx.log" 2>/dev/null | head -n 20
exit "$STATUS"
