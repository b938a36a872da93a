#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang in build-fuzz/ and runs each for a given
# time, starting from the committed seed corpus tests/fuzz/corpus/<name> (copied, so new inputs
# stay in build-fuzz/ and the committed corpus stays small). Prints the executions per target and
# exits non-zero when a target found a crash; reproducers are left in build-fuzz/artifacts/<name>/.
# Usage: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET...]   (TARGET e.g. safetensors)
# Env: LATHE_FUZZ_JOBS=N runs N targets at once (default 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

seconds="${1:-60}"
shift || true
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }
lathe_ensure_packages clang cmake nlohmann-json3-dev libutf8proc-dev

build=build-fuzz
cmake -S tests/fuzz -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release \
  -DLATHE_BUILD_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(lathe_jobs)" >/dev/null

targets=("$@")
if ((${#targets[@]} == 0)); then
  for bin in "$build"/fuzz/fuzz_*; do targets+=("$(basename "$bin" | sed 's/^fuzz_//')"); done
fi

run_one() {
  local name="$1" bin="$build/fuzz/fuzz_$1"
  [[ -x "$bin" ]] || { echo "fuzz: no target fuzz_$name" >&2; return 2; }
  local corpus="$build/corpus/$name" artifacts="$build/artifacts/$name/" log="$build/fuzz_$name.log"
  mkdir -p "$corpus" "$artifacts"
  [[ -d "tests/fuzz/corpus/$name" ]] && cp -n "tests/fuzz/corpus/$name"/* "$corpus"/ 2>/dev/null || true
  # A target's own tests/fuzz/<name>.dict, else the shared JSON one.
  local dict=()
  if [[ -f "tests/fuzz/$name.dict" ]]; then
    dict=(-dict="tests/fuzz/$name.dict")
  elif [[ -f tests/fuzz/json.dict ]]; then
    dict=(-dict=tests/fuzz/json.dict)
  fi
  # -timeout=30: under ASan+UBSan a valid but large input (a config with 100,000 labels) takes
  # seconds; a hang still shows up as a timeout- reproducer.
  local rc=0 start=$SECONDS
  "$bin" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len=8192 -timeout=30 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  local execs
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')
  # crash-, leak-, timeout- and oom- reproducers are failures; slow-unit- ones are reported only.
  local found slow
  found=$(find "$artifacts" -type f ! -name 'slow-unit-*' | wc -l)
  slow=$(find "$artifacts" -type f -name 'slow-unit-*' | wc -l)
  printf 'fuzz_%s: %s execs in %ss, corpus %s inputs, %s findings, %s slow units, exit %s (log %s)\n' \
    "$name" "$execs" "$((SECONDS - start))" "$(find "$corpus" -type f | wc -l)" "$found" "$slow" "$rc" "$log"
  ((rc == 0 && found == 0))
}

status=0
jobs_max="${LATHE_FUZZ_JOBS:-1}"
pids=()
for name in "${targets[@]}"; do
  run_one "$name" &
  pids+=($!)
  if ((${#pids[@]} >= jobs_max)); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit "$status"
