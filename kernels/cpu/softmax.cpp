// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const SoftmaxForwardFn softmax_forward = nullptr;
extern const SoftmaxBackwardFn softmax_backward = nullptr;

}  // namespace lathe::kernels::cpu
