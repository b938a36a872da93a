#!/usr/bin/env bash
# lathe's showcase: fine-tunes the pretrained sentence encoder all-MiniLM-L6-v2 into a sentiment
# classifier on movie-review snippets, in C++ on the cpu, then classifies a few sentences with the
# saved model. Installs missing Debian packages, fetches the pinned model and data
# (scripts/fetch-assets.sh), builds Release, and runs lathe-finetune on a default sized to finish
# in a few minutes on a 2-core machine: a stratified subset of 2,000 training sentences, 120 steps
# of batch 32 (about two epochs of it), evaluation on the full dev set every 40 steps, test metrics
# with the best checkpoint at the end. Extra arguments go to lathe-finetune (try --help); the full
# recipe is printed at the end.
#
# Environment: LATHE_BUILD_DIR (default build), LATHE_JOBS (default nproc), LATHE_CACHE (assets,
# default ~/.cache/lathe), LATHE_DEMO_OUT (default runs/demo).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib/deps.sh

BUILD_DIR="${LATHE_BUILD_DIR:-build}"
OUT="${LATHE_DEMO_OUT:-runs/demo}"

lathe_ensure_packages "${LATHE_PACKAGES[@]}"
lathe_ccache_setup
scripts/fetch-assets.sh
lathe_configure_and_build "$BUILD_DIR" -DLATHE_BUILD_EXAMPLES=ON -- lathe-finetune lathe-classify
lathe_ccache_report

# A fresh run each time (the previous demo's output is replaced).
rm -rf "$OUT"
args=(--subset 2000 --max-steps 120 --eval-every 40 --batch-size 32 --max-len 64 --lr 1e-4
  --warmup-ratio 0.1 --out "$OUT" "$@")
lathe_log "run ${BUILD_DIR}/bin/lathe-finetune ${args[*]}"
OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" "$BUILD_DIR/bin/lathe-finetune" "${args[@]}"

lathe_log "classify a few sentences with the best checkpoint ($OUT/checkpoints/best)"
"$BUILD_DIR/bin/lathe-classify" --model "$OUT/checkpoints/best" \
  "A gorgeous, funny and deeply moving film." \
  "The plot is a mess and the jokes fall flat." \
  "Not the best film of the year, but I had a good time." \
  "Two hours of my life I will never get back."

cat <<EOF

Outputs: $OUT/summary.json, $OUT/metrics.jsonl, $OUT/plot.svg, and Hugging Face loadable
checkpoints in $OUT/checkpoints/{best,last} (config.json, model.safetensors, vocab.txt).
The full recipe (all 8,058 training sentences, 3 epochs; see docs/results.md for its numbers):
  $BUILD_DIR/bin/lathe-finetune --epochs 3 --lr 5e-5 --batch-size 32 --warmup-ratio 0.1 \\
      --max-len 64 --eval-every 250 --out runs/full
Classify your own text:  echo "what a great movie" | $BUILD_DIR/bin/lathe-classify --model $OUT/checkpoints/best
EOF
