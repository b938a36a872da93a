// Whether the fused layer-norm backward (layer_norm.cu) keeps each bf16 row's dy in registers as
// the loaded packs, widened to f32 at each of its two uses (the dweight / dbias sums, then dx), or
// widened once at the load. Packed takes fewer registers (sm_90a, 3 packs per lane: 94 against
// 100, so 5 blocks of 128 threads per SM instead of 4) for more instructions (the row loop: 1005
// against 944): more blocks hide more latency, more instructions cost issue slots, and the bf16
// row kernels are bound by instruction issue. Chosen at run time so that one GPU run of lathe-bench
// (BM_CudaLayerNormBackwardDy) times both; the loser goes once a GPU has measured them. f32 has
// nothing to pack, and f16's widening is a conversion per element (packed, its kernel took more
// registers, not fewer), so both always run widened. The two compute the same values (widening is
// exact); only a compiler's FMA contraction of the rearranged loops may move a result by a
// rounding.
// Internal (not under include/lathe), process-wide and unsynchronized: set it between launches.
#pragma once

namespace lathe::kernels::cuda {

enum class LayerNormDy { Widened, Packed };

void set_layer_norm_dy(LayerNormDy mode);
LayerNormDy layer_norm_dy();
// Launches of the fused backward with packed dy so far (tests check that the mode took effect).
long long layer_norm_packed_dy_launches();

}  // namespace lathe::kernels::cuda
