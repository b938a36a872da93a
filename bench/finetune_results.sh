#!/usr/bin/env bash
# Reproduces the tables of docs/results.md: lathe-finetune and Hugging Face Trainer
# (bench/hf_finetune.py) on the same split and recipe, run back to back on this machine, then
# lathe's fine-tuning variants. Prints one markdown row per run and keeps every run's output in
# $OUT/<name>/.
#
# Usage: bench/finetune_results.sh [EPOCHS (default 1)]   (after scripts/demo.sh or a build)
# Env: LATHE_BUILD_DIR (default build), OUT (default runs/results), THREADS (default 2),
#      SKIP_HF=1 (lathe only), ONLY="name ..." (a subset of the runs below).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
epochs="${1:-1}"
build="${LATHE_BUILD_DIR:-build}"
out="${OUT:-runs/results}"
threads="${THREADS:-2}"
cache="${LATHE_CACHE:-$HOME/.cache/lathe}"
py="$cache/venv-torch/bin/python"
data="$cache/data/movie-review-snippets"
model="$cache/models/all-MiniLM-L6-v2"
mkdir -p "$out"

recipe=(--epochs "$epochs" --lr 5e-5 --batch-size 32 --warmup-ratio 0.1 --max-len 64
  --weight-decay 0.01 --seed 42 --threads "$threads")
files=(--model "$model" --train "$data/train.tsv" --dev "$data/dev.tsv" --test "$data/test.tsv")

want() { [[ -z "${ONLY:-}" ]] || [[ " $ONLY " == *" $1 "* ]]; }

row() {  # name summary.json
  python3 - "$1" "$2" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
t = s.get("test", {})
dev = s.get("dev", s.get("best", {}))
acc = t.get("accuracy", t.get("test_accuracy"))
f1 = t.get("macro_f1", t.get("test_macro_f1"))
secs = s.get("train_seconds")
eps = s.get("train_examples_per_second")
print(f"| {name} | {100*acc:.2f} | {100*f1:.2f} | {secs:.0f} | {eps:.1f} |")
EOF
}

echo "| run | test accuracy % | test macro-F1 % | train seconds | train examples/s |"
echo "|---|---|---|---|---|"
run_lathe() {  # name extra-args...
  local name="$1"
  shift
  want "$name" || return 0
  rm -rf "${out:?}/$name"
  OMP_WAIT_POLICY=passive "$build/bin/lathe-finetune" "${files[@]}" "${recipe[@]}" --quiet \
    --out "$out/$name" "$@" >"$out/$name.log" 2>&1
  row "$name" "$out/$name/summary.json"
}
run_hf() {  # name extra-args...
  local name="$1"
  shift
  want "$name" || return 0
  [[ "${SKIP_HF:-0}" == 1 ]] && return 0
  rm -rf "${out:?}/$name"
  HF_HUB_OFFLINE=1 "$py" bench/hf_finetune.py "${files[@]}" "${recipe[@]}" --out "$out/$name" \
    "$@" >"$out/$name.log" 2>&1
  row "$name" "$out/$name/summary.json"
}

# Side by side: the Hugging Face head (pooler over [CLS]); lathe without its extra train-sample
# evaluation so that both do the same work per evaluation.
run_lathe lathe-cls --pooling cls --train-eval-size 0
run_hf hf-trainer-cls --pooling cls
run_lathe lathe-mean --pooling mean --train-eval-size 0
run_hf hf-trainer-mean --pooling mean
# lathe's variants (mean pooling, which suits MiniLM).
run_lathe lathe-freeze3 --pooling mean --freeze-layers 3
run_lathe lathe-lora8 --pooling mean --lora-rank 8 --lora-alpha 16 --lr 5e-4
run_lathe lathe-llrd0.8 --pooling mean --layerwise-lr-decay 0.8 --lr 1e-4
