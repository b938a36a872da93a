// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const LayerNormForwardFn layer_norm_forward = nullptr;
extern const LayerNormBackwardFn layer_norm_backward = nullptr;

}  // namespace lathe::kernels::cpu
