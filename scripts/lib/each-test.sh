#!/usr/bin/env bash
# Runs every Catch2 test case of a binary that matches a spec in a process of its own, each under
# its own time limit (used by scripts/gpu-check.sh for the kernels not yet confirmed on hardware).
#
#   scripts/lib/each-test.sh <seconds per case> <test binary> <test spec> [catch2 args...]
#
# Why: a kernel that hangs the GPU (an mbarrier phase that never completes) or traps (a sticky
# error: every later CUDA call of the process fails) would otherwise take every later test of the
# same process with it, and leave no word of which one it was. Here each case prints one line,
#   == <name>: ok | FAIL (rc N) | TIMEOUT (N s)
# followed by Catch2's report of a failed case, and the last line is Catch2-like
# ("test cases: N | P passed | F failed"), which gpu-check's table picks up.
#
# LATHE_EACH_TEST_RETRY="VAR=value": a failed case runs once more with that variable set, to tell
# what failed (gpu-check: LATHE_TEST_WGMMA_VARIANTS=2,3, the wgmma variants without variant 4's
# TMA pipeline). Exit status: 0 when every case passed on its first run, else 1.
set -uo pipefail
if (($# < 3)); then
  sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
limit="$1" binary="$2" spec="$3"
shift 3

# Catch2 test specs treat , [ ] * " ~ and \ as syntax: escape them to name one case exactly.
escape_name() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//,/\\,}"
  s="${s//[/\\[}"
  s="${s//]/\\]}"
  s="${s//\*/\\*}"
  s="${s//\"/\\\"}"
  [[ "$s" == "~"* ]] && s="\\$s"
  printf '%s' "$s"
}

# run_case <name> [env assignment...]: runs one case, prints its line, returns 0 when it passed.
run_case() {
  local name="$1" out rc=0 start=$SECONDS
  shift
  out="$(timeout "$limit" env "$@" "$binary" "$(escape_name "$name")" --use-colour no "${EXTRA[@]}" \
    2>&1)" || rc=$?
  local tag="${*:+ [$*]}"
  if ((rc == 0)) && grep -q '^All tests passed' <<<"$out"; then
    echo "== $name$tag: ok ($((SECONDS - start)) s)"
    # The GPU self-check's lines (LATHE_SELF_CHECK_ECHO) are kept even when it passes.
    grep '^self-check: ' <<<"$out"
    return 0
  fi
  if ((rc == 124 || rc == 137)); then
    echo "== $name$tag: TIMEOUT ($limit s)"
  elif ((rc == 0)); then
    echo "== $name$tag: FAIL (no test case matched)"
  else
    echo "== $name$tag: FAIL (rc $rc, $((SECONDS - start)) s)"
  fi
  printf '%s\n' "$out" | tail -n 80
  return 1
}

EXTRA=("$@")
mapfile -t names < <("$binary" --list-test-names-only "$spec" "${EXTRA[@]}" 2>/dev/null |
  sed '/^[[:space:]]*$/d; /^[0-9]* matching test case/d')
if ((${#names[@]} == 0)); then
  echo "each-test: no test case of $binary matches $spec" >&2
  exit 1
fi

passed=0 failed=0
for name in "${names[@]}"; do
  if run_case "$name"; then
    passed=$((passed + 1))
    continue
  fi
  failed=$((failed + 1))
  if [[ -n "${LATHE_EACH_TEST_RETRY:-}" ]]; then
    run_case "$name" "$LATHE_EACH_TEST_RETRY" || true
  fi
done
total=$((passed + failed))
if ((failed == 0)); then
  echo "All tests passed ($total test cases, each in its own process)"
else
  echo "test cases: $total | $passed passed | $failed failed (each in its own process)"
fi
((failed == 0))
