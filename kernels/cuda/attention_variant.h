// Alternative shapes of the flash attention kernels (attention.cu), chosen at run time so that one
// GPU run of lathe-bench (BM_CudaFlashAttention*Variant) times them against the defaults, and so
// that the simulator tests check them against the same references; the winner then becomes the
// default and the knob goes. Internal (not under include/lathe), process-wide and unsynchronized:
// set it between launches, from one thread. Its own header so that changing it rebuilds
// attention.cu and its users only.
//
// 0 = the default kernels. Variant 1 exists for bf16 at head dim 64 without dropout only (anything
// else is an error): forward, 64-row blocks capped for 3 blocks per SM; backward, the dK/dV kernel
// with 32-query tiles capped for 3 blocks per SM. Forward variant 2 is the sm_90a kernel on
// warpgroup MMA (wgmma), f16/bf16 at head dim 64 or 128 (dropout too), on compute capability 9.x
// only (the simulator counts as 9.0); forward variant 3 is the same with FlashAttention-3's
// intra-warpgroup pipelining (the next tile's Q K^T issued before this tile's softmax), same bits;
// forward variant 4 adds FlashAttention-3's TMA producer warpgroup and inter-warpgroup ping-pong,
// same bits again (where an operand's layout has no tensor map, k and v broadcast over batch and
// heads for example, the op runs variant 3 instead, which gives the same bits).
// Backward variant 2 is the backward on wgmma (sm_90a), with the same restrictions: the
// deterministic split (a dK/dV kernel, then a dQ kernel), or in the atomic-dQ mode
// FlashAttention-3's 5 GEMMs in the dK/dV kernel; backward variant 4 runs the same dK/dV and dQ
// steps on forward variant 4's TMA pipeline (producer warpgroup, stage rings on mbarriers), same
// bits (variant 2 where an operand has no tensor map). docs/kernels.md ("flash attention") has
// their registers and what the GPU run must decide.
#pragma once

namespace lathe::kernels::cuda {

struct FlashAttentionVariant {
  int forward = 0;
  int backward = 0;
};

void set_flash_attention_variant(FlashAttentionVariant v);
FlashAttentionVariant flash_attention_variant();
// Launches of a nonzero variant's kernels so far: the tests' proof that the knob reached them
// (the variants' results are bit-identical to the defaults' by design).
long long flash_attention_variant_launches();
// Calls of variant 4 that ran variant 3 (forward) or 2 (backward) instead, because an operand's
// layout has no tensor map.
long long flash_attention_tma_fallbacks();

}  // namespace lathe::kernels::cuda
