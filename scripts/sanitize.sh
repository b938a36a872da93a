#!/usr/bin/env bash
# Sanitizer runs, kept out of scripts/test.sh to hold CI under its time budget:
#   build-tsan: LATHE_SANITIZE=thread, the `cuda` tests (kernels in the CPU simulator, whose fibers
#               are announced to ThreadSanitizer), including the check that a planted missing
#               barrier is reported as a data race;
#   build-asan: LATHE_SANITIZE="address;undefined", every test, including the check that an
#               out-of-bounds read inside a kernel is reported.
# Usage: scripts/sanitize.sh [tsan|asan]...   (default: both)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

lathe_ensure_packages "${LATHE_PACKAGES[@]}"
lathe_ccache_setup
TIMEOUT="${LATHE_TEST_TIMEOUT:-900}"
# The sm_90a flash attention cases run 5-10x slower under TSan (one took 611 s on 2 busy cores).
TSAN_TIMEOUT="${LATHE_TSAN_TEST_TIMEOUT:-1800}"
# Tests that force several OpenMP threads on the cpu: libgomp is not instrumented, so TSan does
# not see its barriers and reports the workers' writes as racing with the caller's later reads.
TSAN_EXCLUDE="${LATHE_TSAN_EXCLUDE:-more threads than cores split the work}"
status=0
kinds=("$@")
((${#kinds[@]})) || kinds=(tsan asan)

for kind in "${kinds[@]}"; do
  case "$kind" in
    tsan)
      lathe_configure_and_build build-tsan -DLATHE_SANITIZE=thread -DLATHE_BUILD_BENCH=OFF \
        -DLATHE_BUILD_EXAMPLES=OFF
      # One OpenMP thread: libgomp is not instrumented, and the simulator runs kernels on the
      # calling thread anyway.
      (cd build-tsan && OMP_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=0" \
        ctest --output-on-failure -j "$(lathe_jobs)" --timeout "$TSAN_TIMEOUT" -L cuda \
        -E "$TSAN_EXCLUDE") || status=1
      ;;
    asan)
      lathe_configure_and_build build-asan "-DLATHE_SANITIZE=address;undefined" \
        -DLATHE_BUILD_BENCH=OFF
      (cd build-asan && ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
        ctest --output-on-failure -j "$(lathe_jobs)" --timeout "$TIMEOUT") || status=1
      ;;
    *)
      echo "scripts/sanitize.sh: unknown kind '$kind' (expected tsan or asan)" >&2
      exit 2
      ;;
  esac
done
exit "$status"
