#!/usr/bin/env bash
# --cuda-graphs: after the first step every step replays CUDA graphs (one per kind of batch: its
# shape, and with accumulation its place in the step; and the optimizer step's), and evaluations
# replay a graph per eval batch shape (GraphedFunction, kept across evaluations). Dropout draws and
# AdamW's step count and scheduled lr are refilled at each replay, so with the same padding the run
# is the eager run bit for bit: the same training records (loss, gradient norm, lr at every step),
# evaluations, summary and weights. Batches of 5 from 48 examples padded to multiples of 8 give
# several shapes (a last batch of 3, lengths 8 and 16). Also: --cuda-graphs refuses the cpu. Runs
# on the cuda device (the simulator in CI).
# Usage: graphs_test.sh LATHE_FINETUNE SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

common=("${tiny[@]}" --device cuda --test "$src/tests/data/finetune/test.tsv" --batch-size 5
  --epochs 2 --eval-every 7 --train-eval-size 8 --dropout 0.1 --pad-to-multiple-of 8)

run() {  # $1: name, then flags
  local name="$1"
  shift
  "$bin" "${common[@]}" --out "$work/$name" "$@" >"$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; fail "run $name failed"; }
}

# With accumulation (10 batches per epoch, 9 of 5 examples and one of 3, in a shuffled order), a
# batch's graph also depends on its place in the step: the step's first, middle and last batch
# each have theirs, and a step of one batch (the epoch's last with steps of 3) its own (zero and
# clip). A step that holds the batch of 3 weights its batches' losses (5/13, 3/13...) differently
# from a full step (1/3, 1/4) in graphs of the same kind, so the weight must be refilled.
# LoRA: the adapters' dropout draws inside the graphs, and most weights without gradients.
for extra in "" "--precision bf16 --gradient-checkpointing" "--gradient-accumulation-steps 3" \
  "--gradient-accumulation-steps 4" "--lora-rank 4 --lora-dropout 0.1"; do
  # shellcheck disable=SC2206
  flags=($extra)
  tag="${extra// /}"
  run "eager$tag" "${flags[@]}"
  run "graphs$tag" --cuda-graphs "${flags[@]}"
  e="$work/eager$tag" g="$work/graphs$tag"
  graphs=$(sed -nE 's/.*"cuda_graphs": ([0-9]+).*/\1/p' "$g/summary.json")
  [[ "${graphs:-0}" -ge 3 ]] ||
    fail "$g: expected several step graphs and the optimizer's, summary says '${graphs:-none}'"
  grep -q "CUDA graphs" "$g.log" || fail "the graphed run does not report its graphs"
  grep -q '"cuda_graphs": 0' "$e/summary.json" || fail "the eager run reports graphs"
  # Every record, without the evaluations' timings.
  for f in "$e" "$g"; do
    sed -E 's/"elapsed_s": [^,}]*//' "$f/metrics.jsonl" >"$f.records"
  done
  [[ $(grep -c '"kind": "train"' "$e.records") -ge 6 ]] || fail "too few train records in $e"
  cmp -s "$e.records" "$g.records" ||
    fail "metrics.jsonl differs with --cuda-graphs $extra: $(diff "$e.records" "$g.records" | head)"
  "$src/tests/finetune/strip_volatile.sh" "$e/summary.json" >"$work/s1"
  "$src/tests/finetune/strip_volatile.sh" "$g/summary.json" >"$work/s2"
  cmp -s "$work/s1" "$work/s2" || fail "summary.json differs: $(diff "$work/s1" "$work/s2")"
  for ck in last best; do
    cmp -s "$e/checkpoints/$ck/model.safetensors" "$g/checkpoints/$ck/model.safetensors" ||
      fail "the $ck weights differ with --cuda-graphs $extra"
  done
  echo "--cuda-graphs $extra: $graphs graphs, the eager run's records, summary and weights"
done

# A run killed after its step-7 checkpoint and resumed: the resumed process's first step is eager
# where the uninterrupted run replays graphs; the records and weights are the same.
LATHE_FINETUNE_KILL_AT_STEP=9 "$bin" "${common[@]}" --cuda-graphs --out "$work/resumed" \
  >"$work/killed.log" 2>&1 && fail "the run was not killed at step 9"
run resumed --cuda-graphs --resume
sed -E 's/"elapsed_s": [^,}]*//' "$work/resumed/metrics.jsonl" >"$work/resumed.records"
cmp -s "$work/graphs.records" "$work/resumed.records" ||
  fail "a resumed --cuda-graphs run differs: $(diff "$work/graphs.records" "$work/resumed.records" | head)"
cmp -s "$work/graphs/checkpoints/last/model.safetensors" \
  "$work/resumed/checkpoints/last/model.safetensors" || fail "the resumed run's weights differ"
echo "--cuda-graphs --resume: the uninterrupted run's records and weights"

# Refusals name the flag.
"$bin" "${tiny[@]}" --cuda-graphs --out "$work/cpu" >"$work/log" 2>&1 &&
  fail "--cuda-graphs on the cpu was accepted"
grep -q -- "--cuda-graphs needs --device cuda" "$work/log" || fail "$(cat "$work/log")"
echo "graphs: the refusal names the flag"
