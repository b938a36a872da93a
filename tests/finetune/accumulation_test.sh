#!/usr/bin/env bash
# --gradient-accumulation-steps: one optimizer step over several batches has the loss and the
# gradient of one batch holding all of their examples. With 48 training examples, dropout off and
# one step, a batch of 48, three batches of 16 and five of 10 (the last of 8: each batch's loss is
# weighted by its share of the step's examples, not by 1/5) all see every example once, so the
# step's loss and gradient norm (metrics.jsonl) must agree up to float rounding; a plain mean of
# the batch losses would differ. Also: the step count follows the accumulation.
# Usage: accumulation_test.sh LATHE_FINETUNE SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

common=("${tiny[@]}" --dropout 0 --train-eval-size 0)

# The first "train" record of metrics.jsonl: "loss grad_norm".
first_step() {
  grep '"kind": "train"' "$1/metrics.jsonl" | head -1 |
    sed -E 's/.*"loss": ([^,}]*).*"grad_norm": ([^,}]*).*/\1 \2/'
}

run() {  # $1: name, then flags
  local name="$1"
  shift
  "$bin" "${common[@]}" --out "$work/$name" "$@" >"$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; fail "run $name failed"; }
}

run whole --batch-size 48 --max-steps 1
run thirds --batch-size 16 --gradient-accumulation-steps 3 --max-steps 1
run fifths --batch-size 10 --gradient-accumulation-steps 5 --max-steps 1
read -r loss norm <<<"$(first_step "$work/whole")"
[[ -n "$loss" && -n "$norm" ]] || fail "no train record in $work/whole/metrics.jsonl"
for name in thirds fifths; do
  read -r l n <<<"$(first_step "$work/$name")"
  echo "$name: loss $l, grad norm $n"
  awk -v a="$loss" -v b="$l" -v c="$norm" -v d="$n" 'BEGIN {
    dl = a - b; if (dl < 0) dl = -dl
    dn = c - d; if (dn < 0) dn = -dn
    exit !(dl <= 1e-6 * (a < 0 ? -a : a) && dn <= 1e-5 * c)
  }' || fail "$name: loss $l, grad norm $n; one batch of 48: loss $loss, grad norm $norm"
done

# 12 batches of 4 per epoch, 3 per step: 4 steps per epoch, 8 in two epochs.
run steps --batch-size 4 --gradient-accumulation-steps 3 --epochs 2
grep -q '"steps": 8' "$work/steps/summary.json" ||
  fail "expected 8 steps: $(grep '"steps"' "$work/steps/summary.json")"
grep -q "batch 4 x 3 accumulated" "$work/steps.log" ||
  fail "the run does not report the accumulation: $(grep training: "$work/steps.log")"
echo "accumulation: batches of 48, 3 x 16 and 5 x 10 (+8) give loss $loss, grad norm $norm"
