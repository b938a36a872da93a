#!/usr/bin/env bash
# bench/merge_bench_json.py, as scripts/gpu-check.sh uses it: parts written by lathe-bench processes
# merged into one bench.json; a part cut short mid-write (truncated JSON) or missing is left out
# with a message and exit status 1, the rest still merged; a later part's entry replaces an
# earlier one of the same name; nothing valid gives exit status 2 and no file.
# Usage: merge_bench_json_test.sh SOURCE_DIR   (exit 77, skipped, without python3)
set -u
src="$1"
command -v python3 >/dev/null || { echo "no python3: skipped"; exit 77; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
merge() { python3 "$src/bench/merge_bench_json.py" "$@"; }

echo '{"context": {"host": "a"}, "benchmarks": [{"name": "A", "real_time": 1}, {"name": "V", "skipped": true}]}' >"$work/models.json"
echo '{"context": {"host": "b"}, "benchmarks": [{"name": "B", "real_time' >"$work/attention.json"
echo '{"context": {"host": "c"}, "benchmarks": [{"name": "V", "real_time": 3}, {"name": "C", "real_time": 4}]}' >"$work/variant.json"

merge "$work/bench.json" "$work/models.json" "$work/attention.json" "$work/missing.json" \
  "$work/variant.json" >"$work/log" 2>&1
status=$?
[[ $status == 1 ]] || fail "expected exit status 1 for a truncated and a missing part, got $status"
grep -q "attention.json left out" "$work/log" || fail "the truncated part is not named: $(cat "$work/log")"
grep -q "missing.json left out" "$work/log" || fail "the missing part is not named: $(cat "$work/log")"
got=$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
entries = ["%s=%s" % (b["name"], b.get("real_time", "skipped")) for b in d["benchmarks"]]
print(d["context"]["host"], " ".join(entries))' "$work/bench.json")
[[ "$got" == "a A=1 V=3 C=4" ]] || fail "merged: '$got', expected 'a A=1 V=3 C=4'"

rm -f "$work/bench.json"
merge "$work/bench.json" "$work/attention.json" >"$work/log" 2>&1
status=$?
[[ $status == 2 ]] || fail "expected exit status 2 with nothing valid, got $status"
[[ ! -e "$work/bench.json" ]] || fail "a bench.json was written from nothing"
echo "merge_bench_json: truncated and missing parts left out, the rest merged in order"
