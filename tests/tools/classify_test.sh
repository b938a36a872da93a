#!/usr/bin/env bash
# lathe-classify on a classifier lathe-finetune wrote (the tiny random-init BERT trained for 24
# steps on tests/data/finetune; probabilities 0.5-0.8): one line per text with the best label and
# its probability, the same answers from --json, batch size and padding changing nothing,
# --precision bf16 within bf16's error of fp32, and bad arguments rejected with exit status 2 and
# a reason.
# Usage: classify_test.sh LATHE_FINETUNE LATHE_CLASSIFY SOURCE_DIR
set -u
finetune="$1"
classify="$2"
src="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$finetune" --model "$src/tests/data/tiny-bert" --random-init \
  --train "$src/tests/data/finetune/train.tsv" --dev "$src/tests/data/finetune/dev.tsv" \
  --max-len 24 --lr 1e-2 --seed 3 --threads 2 --quiet --max-steps 24 --eval-every 12 \
  --out "$work/run" > "$work/finetune.log" 2>&1 || { cat "$work/finetune.log"; fail "lathe-finetune"; }
model="$work/run/checkpoints/best"

# The dev texts: different lengths, so a batch pads all but its longest.
tail -n +2 "$src/tests/data/finetune/dev.tsv" | cut -f1 > "$work/texts"
n=$(wc -l < "$work/texts")

run() { "$classify" --model "$model" "$@" < "$work/texts"; }
run --batch-size 16 > "$work/fp32" || fail "fp32 run"
run --batch-size 1 > "$work/fp32-b1" || fail "batch-size 1 run"
run --batch-size 5 --json > "$work/fp32.json" || fail "--json run"
run --batch-size 16 --precision bf16 > "$work/bf16" || fail "bf16 run"

[ "$(wc -l < "$work/fp32")" -eq "$n" ] || fail "expected $n lines, got $(wc -l < "$work/fp32")"
# Each line: a label of the checkpoint's id2label, a probability of the winning label (>= 1/2 with
# two labels), the text as given.
paste "$work/fp32" "$work/texts" | awk -F'\t' -v n="$n" '
  $1 != "negative" && $1 != "positive" { print "line " NR ": label " $1; bad = 1 }
  $2 < 0.5 || $2 > 1 { print "line " NR ": probability " $2; bad = 1 }
  $3 != $4 { print "line " NR ": text " $3 " != " $4; bad = 1 }
  END { exit bad }' || fail "fp32 output"
# Not every text gets the same label, or the checks below would say little.
[ "$(cut -f1 "$work/fp32" | sort -u | wc -l)" -eq 2 ] || fail "the trained head gives one label to every text"

# Padding (batch of 1 vs of 16) moves the probabilities by f32 rounding at most.
paste "$work/fp32" "$work/fp32-b1" | awk -F'\t' '
  $1 != $4 || ($2 - $5) > 2e-4 || ($5 - $2) > 2e-4 { print "line " NR ": " $0; bad = 1 }
  END { exit bad }' || fail "batch size changes the result"

# --json: the same label and probability, and the probabilities of all labels sum to 1.
awk '{
  match($0, /"label": "[a-z]+"/); label = substr($0, RSTART + 10, RLENGTH - 11)
  match($0, /"probability": [0-9.e-]+/); p = substr($0, RSTART + 15, RLENGTH - 15)
  match($0, /"probabilities": \{[^}]*\}/); probs = substr($0, RSTART, RLENGTH)
  gsub(/"[a-z]+": /, "", probs); gsub(/[{}]/, "", probs)
  k = split(probs, v, ", "); s = 0; for (i = 1; i <= k; ++i) s += v[i]
  printf "%s\t%s\t%.9f\t%d\n", label, p, s, k
}' "$work/fp32.json" > "$work/json-fields"
paste "$work/fp32" "$work/json-fields" | awk -F'\t' '
  $1 != $4 || ($2 - $5) > 6e-5 || ($5 - $2) > 6e-5 { print "line " NR ": " $0; bad = 1 }
  $6 < 0.9999 || $6 > 1.0001 || $7 != 2 { print "line " NR ": probabilities " $6 " over " $7; bad = 1 }
  END { exit bad }' || fail "--json disagrees with the text output"

# bf16 autocast: probabilities within bf16's error of fp32's (6e-4 measured; labels may flip only
# near 1/2), and not all equal to them (the flag took effect).
paste "$work/fp32" "$work/bf16" | awk -F'\t' '
  { d = $2 - $5; if (d < 0) d = -d; if (d > worst) worst = d }
  $1 != $4 && $2 > 0.51 { print "line " NR ": label flips at probability " $2; bad = 1 }
  END {
    print "bf16 vs fp32: largest probability difference " worst
    exit bad || worst > 5e-3 || worst == 0
  }' || fail "bf16 output"

# On a cuda device (the simulated one in the default build), CUDA graphs give the eager forward's
# output exactly. Batches of 5 make several shapes (lengths, and the last partial batch), so
# several graphs share one pool; batches of 2 truncated to 8 tokens have one shape, so one graph
# is replayed for every batch with new inputs copied in.
if "$classify" --model "$model" --device cuda hello > /dev/null 2>&1; then
  for flags in "--batch-size 5" "--batch-size 2 --max-length 8"; do
    # shellcheck disable=SC2086
    run $flags --device cuda > "$work/cuda" || fail "cuda run ($flags)"
    # shellcheck disable=SC2086
    run $flags --device cuda --cuda-graphs > "$work/cuda-graphs" || fail "--cuda-graphs ($flags)"
    cmp -s "$work/cuda" "$work/cuda-graphs" || {
      diff "$work/cuda" "$work/cuda-graphs" | head -5
      fail "--cuda-graphs changes the output ($flags)"
    }
    [ "$(wc -l < "$work/cuda-graphs")" -eq "$n" ] || fail "--cuda-graphs: expected $n lines"
  done
else
  echo "no cuda device in this build: --cuda-graphs not run"
fi

# Bad arguments: exit status 2 and a one-line reason naming the flag or the file.
expect_error() {
  local pattern="$1"
  shift
  "$classify" "$@" < /dev/null > "$work/out" 2> "$work/err"
  local status=$?
  [ "$status" -eq 2 ] || fail "$* exited with $status, expected 2"
  grep -q -- "$pattern" "$work/err" || fail "$*: stderr '$(cat "$work/err")' lacks '$pattern'"
  [ ! -s "$work/out" ] || fail "$*: wrote to stdout"
}
expect_error "--precision must be fp32, bf16 or tf32, got 'fp8'" --model "$model" --precision fp8
expect_error "--batch-size needs a positive integer" --model "$model" --batch-size 0
expect_error "/nonexistent" --model /nonexistent hello
expect_error "unknown argument '--colour'" --model "$model" --colour
expect_error "--cuda-graphs needs --device cuda" --model "$model" --cuda-graphs hello
echo "PASS: $n texts"
