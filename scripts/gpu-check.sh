#!/usr/bin/env bash
# One-call check of the real CUDA backend on a lent GPU.
#
#   scripts/gpu-check.sh prepare   # here (no GPU): nvcc build into build-gpu/, plus the shared
#                                  # libraries the device machine lacks (OpenBLAS, gfortran...) in
#                                  # build-gpu/bundle/, so that build-gpu can be carried over
#   scripts/gpu-check.sh           # on the GPU machine: runs everything below, prints a table
#
# With the device tool: run `prepare` here, then one `run` with
#   carry = ["build-gpu/gpu-carry.tar.gz"]   (~20 MiB: stripped binaries, liblathe, the bundle)
#   command = "bash scripts/gpu-check.sh"   and a timeout of ~540 s.
#
# On the GPU it runs, each with a time limit so the whole fits one device call (< 9 min):
#   1. nvidia-smi (card, driver);
#   2. the PTX wrapper tests, each test case in a process of its own (scripts/lib/each-test.sh),
#      including the self-check of mma/ldmatrix/cp.async/wgmma/mbarrier/TMA against known products,
#      which prints each line as it goes (LATHE_SELF_CHECK_ECHO) — the confirmation that the
#      simulator's emulation matches the hardware;
#   3. the sm_90a attention tests ([sm90]: forward variants 2-4, backward variants 2 and 4), each
#      case in its own process too, a failed one again without variant 4
#      (LATHE_TEST_WGMMA_VARIANTS=2,3);
#   4. the rest of the cuda device's own tests (runtime, caching allocator, every kernel family);
#   5. lathe-bench's sm_90a attention entries, one process per variant, then its other cuda entries
#      in three groups, one process each (BM_Cuda*: the BERT training step and inference in f32 and
#      bf16; attention; every kernel in GB/s, GEMM through lathe and through cuBLAS directly),
#      merged into one JSON;
#   6. bench/compare_torch_gpu.py: PyTorch eager / torch.compile / SDPA on the same shapes, and the
#      ratio and %-of-copy-bandwidth tables of docs/benchmarks.md (compare.md);
#   7. the BERT-base bf16 training step again under LATHE_PROFILE=1 (time per kernel family);
#   8. the core op suite on cuda:0 (every device-generic test body, LATHE_TEST_DEVICE=cuda);
#   9. scripts/gpu-profile.sh: Nsight Compute counters of a few kernels (ncu.txt), when ncu exists.
# The kernels not yet confirmed on hardware run first and in processes of their own: one that hangs
# or traps then costs its own time limit and entries, not the run. The order is what a run cut
# short should still answer: correctness and timing of the new kernels first.
# Test binaries are run directly (not through ctest), because the carried build tree's ctest files
# hold this machine's absolute paths; the source path compiled into the tests (golden files) is
# linked to this checkout when it does not exist there. Results go to $OUT (or
# build-gpu/gpu-check/): 8 files, as many as the device tool returns (the PTX and cuda tests share
# tests-cuda.log).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD="${LATHE_GPU_BUILD_DIR:-build-gpu}"

if [[ "${1:-}" == "prepare" ]]; then
  set -e
  source scripts/lib/deps.sh
  lathe_ensure_packages "${LATHE_PACKAGES[@]}"
  lathe_ccache_setup
  # Hopper only: the lent machines are H100/H200, and one arch halves nvcc's time.
  lathe_configure_and_build "$BUILD" -DLATHE_CUDA=ON -DLATHE_CUDA_SIM=OFF \
    -DLATHE_CUDA_ARCHS="${LATHE_CUDA_ARCHS:-90a}" -DLATHE_NATIVE=OFF
  mkdir -p "$BUILD/bundle"
  # Every non-glibc, non-CUDA library the binaries need, from this machine.
  { ldd "$BUILD"/bin/lathe-* "$BUILD"/lib/liblathe.so* 2>/dev/null || true; } | awk '/=> \//{print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas[^/]*|libnvidia[^/]*)\.so' |
    grep -v "$PWD/$BUILD" | while read -r lib; do cp -L "$lib" "$BUILD/bundle/"; done
  echo "$PWD" >"$BUILD/bin/source-dir.txt"
  # One compressed file to carry: the binaries gpu-check runs (stripped), liblathe and the bundle.
  rm -rf "$BUILD/pack" && mkdir -p "$BUILD/pack/bin" "$BUILD/pack/lib"
  cp "$BUILD"/bin/{lathe-tests-core,lathe-tests-cuda,lathe-tests-ptx,lathe-bench,source-dir.txt} \
    "$BUILD/pack/bin/"
  cp -P "$BUILD"/lib/liblathe.so* "$BUILD/pack/lib/"
  cp -r "$BUILD/bundle" "$BUILD/pack/"
  strip --strip-unneeded "$BUILD"/pack/bin/lathe-* "$BUILD"/pack/lib/liblathe.so.*.*
  tar -C "$BUILD/pack" -czf "$BUILD/gpu-carry.tar.gz" .
  du -h "$BUILD/gpu-carry.tar.gz" |
    awk '{print "carry " $2 ": " $1 " (the device tool carries at most 64 MiB with the tree)"}'
  exit 0
fi

OUT_DIR="${OUT:-$BUILD/gpu-check}"
mkdir -p "$OUT_DIR"
export LD_LIBRARY_PATH="$PWD/$BUILD/lib:$PWD/$BUILD/bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
ROWS=()
# The whole check stays under this many seconds (the device call's limit minus the transfers).
TOTAL_LIMIT="${LATHE_GPU_TOTAL_LIMIT:-520}"
STATUS=0

# step <name> <timeout s> <log> <command...>: runs a step, records pass/fail and Catch2's counts.
# Steps append to their log, so two steps can share one file (started empty below).
step() {
  local name="$1" limit="$2" log="$OUT_DIR/$3"
  shift 3
  # Never past the whole check's budget, so the table and the files always come back.
  local left=$((TOTAL_LIMIT - SECONDS - 15))
  ((left < limit)) && limit=$left
  if ((limit < 10)); then
    ROWS+=("$(printf '%-34s %-6s' "$name" "skipped (LATHE_GPU_TOTAL_LIMIT=${TOTAL_LIMIT}s spent)")")
    STATUS=1
    return
  fi
  local start=$SECONDS rc=0
  timeout "$limit" "$@" >>"$log" 2>&1 || rc=$?
  local counts
  counts="$(grep -E '^(All tests passed|test cases:)' "$log" | tail -n 1)"
  ROWS+=("$(printf '%-34s %-6s %5ss  %s' "$name" "$([[ $rc == 0 ]] && echo ok || echo "FAIL($rc)")" \
    "$((SECONDS - start))" "${counts:-see $(basename "$log")}")")
  ((rc == 0)) || STATUS=1
}

if [[ ! -x "$BUILD/bin/lathe-tests-cuda" && -f "$BUILD/gpu-carry.tar.gz" ]]; then
  tar -C "$BUILD" -xzf "$BUILD/gpu-carry.tar.gz"
fi
if [[ ! -x "$BUILD/bin/lathe-tests-cuda" ]]; then
  echo "gpu-check: $BUILD/bin/lathe-tests-cuda is missing; run 'scripts/gpu-check.sh prepare'" \
    "where the build dependencies are installed and carry $BUILD" >&2
  exit 2
fi
# cudart / cuBLAS(Lt) 13 come from the machine: the toolkit's lib64, else a pip wheel's copy.
for lib in libcudart.so.13 libcublasLt.so.13 libcublas.so.13; do
  if ! ldconfig -p 2>/dev/null | grep -q "$lib" &&
    ! compgen -G "/usr/local/cuda/lib64/$lib" >/dev/null; then
    found="$(find /usr /opt -name "$lib" 2>/dev/null | head -n 1)"
    [[ -n "$found" ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
  fi
done
ldd "$BUILD/bin/lathe-bench" | grep "not found" >&2 || true
# The golden tests open files under the source path compiled in at `prepare`.
src="$(cat "$BUILD/bin/source-dir.txt" 2>/dev/null || true)"
if [[ -n "$src" && ! -e "$src" ]]; then
  mkdir -p "$(dirname "$src")" && ln -s "$PWD" "$src"
fi

rm -f "$OUT_DIR"/{gpu.txt,tests-cuda.log,core-cuda.log,bench.log,bench.json,profile.txt,compare.md,ncu.txt}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
  >"$OUT_DIR/gpu.txt" 2>&1 || true
EACH="scripts/lib/each-test.sh"
step "ptx wrappers (mma...TMA), each" 90 tests-cuda.log env LATHE_SELF_CHECK_ECHO=1 \
  bash "$EACH" 40 "$BUILD/bin/lathe-tests-ptx" "*"
step "sm_90a attention tests, each" 150 tests-cuda.log \
  env LATHE_EACH_TEST_RETRY=LATHE_TEST_WGMMA_VARIANTS=2,3 \
  bash "$EACH" 30 "$BUILD/bin/lathe-tests-cuda" "[sm90]"
step "cuda runtime, allocator, kernels" 150 tests-cuda.log "$BUILD/bin/lathe-tests-cuda" \
  "~[sm90]" --use-colour no
# The sm_90a variants one process each, into their own JSON files, merged into bench.json below.
PARTS="$(mktemp -d)"
# Backward: the deterministic and the atomic-dQ entries of a variant in one process.
for part in ForwardVariant:2 ForwardVariant:3 ForwardVariant:4 Backward:2 Backward:4; do
  name="${part%:*}"
  [[ "$name" == Backward ]] && name='Backward(Atomic)?Variant'
  step "bench sm_90a ${part/:/ v}" 45 bench.log "$BUILD/bin/lathe-bench" \
    --benchmark_filter="^BM_CudaFlashAttention${name}/.*/variant:${part#*:}/" \
    --benchmark_min_time=0.05 --benchmark_out="$PARTS/${part/:/-}.json" \
    --benchmark_out_format=json
done
# The other BM_Cuda entries (over 400) in three groups, one process each under its own limit: a
# group cut short by its limit writes a truncated JSON and loses its own entries only. The model
# steps first (the headline numbers), then attention, then the kernels. LATHE_GPU_BENCH_FILTER
# runs one group of its own instead.
if [[ -n "${LATHE_GPU_BENCH_FILTER:-}" ]]; then
  GROUP_NAMES=(filtered)
  GROUP_FILTERS=("$LATHE_GPU_BENCH_FILTER")
  GROUP_LIMITS=("${LATHE_GPU_BENCH_LIMIT:-200}")
else
  GROUP_NAMES=(models attention kernels)
  GROUP_FILTERS=('^BM_Cuda(TrainStep|Inference)'
    '^BM_Cuda(FlashAttention|SimtAttention|AttentionOp)'
    '^BM_Cuda(Copy|Gemm_|Softmax|LayerNorm|AddLayerNorm|AddThenLayerNorm|RowShapes|Gelu|BiasGelu|BiasThenGelu|CrossEntropy|Embedding|Dropout|AdamW|GradNorm|FfnIn_)')
  GROUP_LIMITS=("${LATHE_GPU_BENCH_LIMIT:-100}" "${LATHE_GPU_BENCH_LIMIT:-70}"
    "${LATHE_GPU_BENCH_LIMIT:-100}")
fi
for i in "${!GROUP_NAMES[@]}"; do
  step "lathe-bench BM_Cuda ${GROUP_NAMES[i]}" "${GROUP_LIMITS[i]}" bench.log \
    env LATHE_BENCH_SKIP_SM90=1 "$BUILD/bin/lathe-bench" \
    --benchmark_filter="${GROUP_FILTERS[i]}" --benchmark_min_time=0.05 \
    --benchmark_out="$PARTS/group-${GROUP_NAMES[i]}.json" --benchmark_out_format=json
done
rm -f "$OUT_DIR/bench.json"
if compgen -G "$PARTS/*.json" >/dev/null; then
  # The groups first, then the sm_90a variants, whose entries replace the groups'
  # skipped placeholders.
  python3 bench/merge_bench_json.py "$OUT_DIR/bench.json" $(ls "$PARTS"/group-*.json 2>/dev/null) \
    $(ls "$PARTS"/*.json | grep -v '/group-') >>"$OUT_DIR/bench.log" 2>&1
fi
rm -rf "$PARTS"
if [[ -s "$OUT_DIR/bench.json" ]] && command -v python3 >/dev/null; then
  step "PyTorch comparison" "${LATHE_GPU_COMPARE_LIMIT:-240}" compare.md env PYTHONUNBUFFERED=1 \
    python3 bench/compare_torch_gpu.py --lathe-json "$OUT_DIR/bench.json" ${LATHE_GPU_COMPARE_ARGS:-}
fi
# Where the headline step's time goes (kernels/kernel_profile.h): per kernel family, synchronized.
step "LATHE_PROFILE BERT-base bf16 step" 90 profile.txt env LATHE_PROFILE=1 \
  "$BUILD/bin/lathe-bench" --benchmark_filter='BM_CudaTrainStep/base:1/T:128/bf16:1/'
step "core ops + BERT goldens on cuda:0" 180 core-cuda.log env LATHE_TEST_DEVICE=cuda \
  "$BUILD/bin/lathe-tests-core" "~[cpu-only]" --use-colour no
# Hardware counters last, with what time is left (about 5 s per kernel plus lathe-bench's start).
step "Nsight Compute counters" "${LATHE_GPU_NCU_LIMIT:-90}" ncu.txt env LATHE_NCU_ONE_FILE=1 \
  bash scripts/gpu-profile.sh

echo "== lathe gpu-check $(date -u +%Y-%m-%dT%H:%MZ) on $(cat "$OUT_DIR/gpu.txt" 2>/dev/null)"
printf '%s\n' "${ROWS[@]}"
grep -E '^(== .*: (FAIL|TIMEOUT)|self-check: FAIL)' "$OUT_DIR/tests-cuda.log" 2>/dev/null | head -n 30
for log in tests-cuda core-cuda; do
  grep -B2 -A12 -E 'FAILED|REQUIRE|CHECK\(' "$OUT_DIR/$log.log" 2>/dev/null | head -n 60
done
sed -n '/LATHE_PROFILE:/,$p' "$OUT_DIR/profile.txt" 2>/dev/null | head -n 16
grep -E '^\| (train step|inference|GEMM 4096x3072|attention|flash)' "$OUT_DIR/compare.md" 2>/dev/null
exit "$STATUS"
