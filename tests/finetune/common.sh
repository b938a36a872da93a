# Sourced by the lathe-finetune test scripts, with their arguments LATHE_FINETUNE SOURCE_DIR:
# sets bin and src, a scratch folder `work` removed on exit, fail(), and `tiny` — the tiny
# random-init BERT (tests/data/tiny-bert) on the 48 hand-written review snippets
# (tests/data/finetune), 24 tokens, lr 1e-3, seed 3, 2 threads, quiet.
set -u
bin="$1"
src="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

tiny=(--model "$src/tests/data/tiny-bert" --random-init
  --train "$src/tests/data/finetune/train.tsv" --dev "$src/tests/data/finetune/dev.tsv"
  --max-len 24 --lr 1e-3 --seed 3 --threads 2 --quiet)
