#!/usr/bin/env bash
# lathe-finetune's exact-resume promise: a run killed with SIGKILL (at a step between
# checkpoints, or in the middle of writing one) and continued with --resume ends with weights
# bit-identical to an uninterrupted run (full fine-tuning, LoRA, and 3 batches per step), also
# when the resumed part runs with --gradient-checkpointing; a changed setting is refused. The tiny
# BERT of common.sh, dropout on so the RNG state matters.
# Usage: resume_test.sh LATHE_FINETUNE SOURCE_DIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

common=("${tiny[@]}" --test "$src/tests/data/finetune/test.tsv" --batch-size 4 --epochs 3
  --eval-every 5)

run() { "$bin" "${common[@]}" "$@" >"$work/log" 2>&1; }

same_weights() {  # $1 $2: run directories
  for ck in last best; do
    cmp -s "$1/checkpoints/$ck/model.safetensors" "$2/checkpoints/$ck/model.safetensors" ||
      fail "$ck weights of $2 differ from the uninterrupted run $1"
  done
  # Optimizer moments too: the next step would differ otherwise.
  "$src/tests/finetune/strip_volatile.sh" "$1/summary.json" >"$work/s1"
  "$src/tests/finetune/strip_volatile.sh" "$2/summary.json" >"$work/s2"
  cmp -s "$work/s1" "$work/s2" || fail "summary.json of $2 differs: $(diff "$work/s1" "$work/s2")"
}

for extra in "" "--lora-rank 2" "--gradient-accumulation-steps 3"; do
  # shellcheck disable=SC2206
  flags=($extra)
  tag="${extra// /}"
  run --out "$work/full$tag" "${flags[@]}" || { cat "$work/log"; fail "uninterrupted run failed"; }

  # Killed at step 8 (of 36; 12 with 3 batches per step): the last checkpoint is step 5.
  LATHE_FINETUNE_KILL_AT_STEP=8 run --out "$work/a$tag" "${flags[@]}"
  [[ $? -eq 137 ]] || fail "the run was not killed at step 8"
  [[ -f "$work/a$tag/checkpoints/last/training_state.safetensors" ]] || fail "no checkpoint"
  # Resumed with gradient checkpointing: the layers re-run in backward replay their dropout
  # draws, so the weights stay bit-identical.
  run --out "$work/a$tag" --resume --gradient-checkpointing "${flags[@]}" ||
    { cat "$work/log"; fail "resume failed"; }
  grep -q '"gradient_checkpointing": true' "$work/a$tag/summary.json" ||
    fail "summary.json of the resumed run does not record gradient checkpointing"
  grep -q "(gradient checkpointing)" "$work/log" ||
    fail "the resumed run does not report gradient checkpointing: $(tail -3 "$work/log")"
  same_weights "$work/full$tag" "$work/a$tag"

  # Killed inside the checkpoint write of step 10 (its files written, not yet swapped in).
  LATHE_FINETUNE_KILL_IN_CHECKPOINT=10 run --out "$work/b$tag" "${flags[@]}"
  [[ $? -eq 137 ]] || fail "the run was not killed while writing checkpoint 10"
  run --out "$work/b$tag" --resume "${flags[@]}" || { cat "$work/log"; fail "resume failed"; }
  same_weights "$work/full$tag" "$work/b$tag"
  ls -a "$work/b$tag/checkpoints" | grep -q tmp && fail "a temporary checkpoint was left behind"
done

# A different setting is refused on --resume, naming it; so is dropping the accumulation (a
# setting the fingerprint leaves out at its default).
run --out "$work/a" --resume --lr 2e-3 && fail "--resume with another --lr was accepted"
grep -q -- "--lr" "$work/log" || fail "the refusal does not name --lr: $(cat "$work/log")"
run --out "$work/a--gradient-accumulation-steps3" --resume &&
  fail "--resume without the run's --gradient-accumulation-steps was accepted"
grep -q -- "--gradient_accumulation_steps: checkpoint 3, now (default)" "$work/log" ||
  fail "the refusal does not name the accumulation: $(cat "$work/log")"
echo "resume: bit-identical after kill -9 (between and during checkpoints, full, LoRA and accumulated, with and without gradient checkpointing)"
