#!/usr/bin/env bash
# Hardware counters of a few cuda kernels on a lent GPU, through Nsight Compute (ncu) when the
# machine has it: where a kernel's time goes (throughput vs the roofline, occupancy and what
# limits it, warp stall reasons), which a wall-clock benchmark cannot say.
#
#   scripts/gpu-check.sh prepare      # here: the nvcc build and its carry (see gpu-check.sh)
#   scripts/gpu-profile.sh            # on the GPU machine, carry = ["build-gpu/gpu-carry.tar.gz"]
#
# Each target below profiles one launch (after two warm-up launches) of the kernels whose function
# name matches a regex, while `lathe-bench` runs one entry. LATHE_NCU_TARGETS replaces the list:
# "name|kernel regex|benchmark filter" entries separated by ';'. One text report per target goes
# to $OUT (or build-gpu/gpu-profile/) as ncu-<name>.txt, or with LATHE_NCU_ONE_FILE=1 all of
# them to standard output (gpu-check.sh's last step, which must keep to 8 files). Without ncu, or
# without permission to read the counters, the script says so and exits 0.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD="${LATHE_GPU_BUILD_DIR:-build-gpu}"
OUT_DIR="${OUT:-$BUILD/gpu-profile}"
mkdir -p "$OUT_DIR"

if [[ ! -x "$BUILD/bin/lathe-bench" && -f "$BUILD/gpu-carry.tar.gz" ]]; then
  tar -C "$BUILD" -xzf "$BUILD/gpu-carry.tar.gz"
fi
export LD_LIBRARY_PATH="$PWD/$BUILD/lib:$PWD/$BUILD/bundle:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

ncu="$(command -v ncu || true)"
if [[ -z "$ncu" ]]; then
  ncu="$(ls -d /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)"
fi
if [[ -z "$ncu" ]]; then
  echo "gpu-profile: no ncu (Nsight Compute) on this machine; nothing profiled"
  exit 0
fi
ONE_FILE="${LATHE_NCU_ONE_FILE:-0}"
SUMMARY="$OUT_DIR/ncu.txt"
[[ "$ONE_FILE" == 1 ]] && SUMMARY=/dev/null

DEFAULT_TARGETS="flash-dkdv|dkdv_kernel|BM_CudaFlashAttentionBackward/T:2048/d:64/causal:0/"
DEFAULT_TARGETS+=";flash-dq|dq_kernel|BM_CudaFlashAttentionBackward/T:2048/d:64/causal:0/"
DEFAULT_TARGETS+=";flash-forward|forward_kernel|BM_CudaFlashAttentionForward/T:2048/d:64/causal:0/"
DEFAULT_TARGETS+=";layer-norm-bf16|layer_norm_forward_kernel|BM_CudaLayerNormForward/32768/384/1/"
# Forward variant 2, the sm_90a wgmma kernel (issue #8), to set against flash-forward.
DEFAULT_TARGETS+=";flash-forward-wgmma|forward_wgmma_kernel|BM_CudaFlashAttentionForwardVariant/T:2048/d:64/causal:0/variant:2/"
# Variant 3, the same with intra-warpgroup pipelining: fewer stalls on the wgmma waits than variant 2?
DEFAULT_TARGETS+=";flash-forward-wgmma-overlap|forward_wgmma_overlap_kernel|BM_CudaFlashAttentionForwardVariant/T:2048/d:64/causal:0/variant:3/"
# Variant 4, FlashAttention-3's pipeline (TMA producer, ping-pong): the moonshot's kernel.
DEFAULT_TARGETS+=";flash-forward-tma|forward_tma_kernel|BM_CudaFlashAttentionForwardVariant/T:2048/d:64/causal:0/variant:4/"
# Backward variant 2, the sm_90a wgmma dK/dV and dQ kernels, to set against flash-dkdv and flash-dq.
DEFAULT_TARGETS+=";flash-dkdv-wgmma|dkdv_wgmma_kernel|BM_CudaFlashAttentionBackwardVariant/T:2048/d:64/causal:0/variant:2/"
DEFAULT_TARGETS+=";flash-dq-wgmma|dq_wgmma_kernel|BM_CudaFlashAttentionBackwardVariant/T:2048/d:64/causal:0/variant:2/"
# Backward variant 4, the same dK/dV step on the TMA pipeline: fewer stalls than flash-dkdv-wgmma?
DEFAULT_TARGETS+=";flash-dkdv-tma|dkdv_tma_kernel|BM_CudaFlashAttentionBackwardVariant/T:2048/d:64/causal:0/variant:4/"
DEFAULT_TARGETS+=";flash-dq-tma|dq_tma_kernel|BM_CudaFlashAttentionBackwardVariant/T:2048/d:64/causal:0/variant:4/"
# The occupancy variants of kernels/cuda/attention_variant.h, to set against flash-dkdv and
# flash-forward above (last, so that a short time limit cuts them first).
DEFAULT_TARGETS+=";flash-dkdv-variant|dkdv_variant_kernel|BM_CudaFlashAttentionBackwardVariant/T:2048/d:64/causal:0/variant:1/"
DEFAULT_TARGETS+=";flash-forward-variant|forward_variant_kernel|BM_CudaFlashAttentionForwardVariant/T:2048/d:64/causal:0/variant:1/"
IFS=';' read -r -a targets <<<"${LATHE_NCU_TARGETS:-$DEFAULT_TARGETS}"
echo "gpu-profile: $("$ncu" --version | tail -n 1)" | tee "$SUMMARY"
for t in "${targets[@]}"; do
  IFS='|' read -r name regex filter <<<"$t"
  echo "== $name: kernel /$regex/ in $filter" | tee -a "$SUMMARY"
  report="$OUT_DIR/ncu-$name.txt"
  timeout "${LATHE_NCU_LIMIT:-90}" "$ncu" --kernel-name "regex:$regex" --launch-skip 2 \
    --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis \
    "$BUILD/bin/lathe-bench" --benchmark_filter="$filter" --benchmark_min_time=0.01 \
    >"$report" 2>&1
  echo "   exit $?; $(grep -c . "$report") lines" | tee -a "$SUMMARY"
  grep -m 3 -E "ERR_NVGPUCTRPERM|==ERROR==|==WARNING==" "$report" | tee -a "$SUMMARY"
  if [[ "$ONE_FILE" == 1 ]]; then
    grep -v -E "^==PROF==|^\s*$" "$report"
    rm -f "$report"
  fi
done
exit 0
