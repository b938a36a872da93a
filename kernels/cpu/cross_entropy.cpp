// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const CrossEntropyForwardFn cross_entropy_forward = nullptr;
extern const CrossEntropyBackwardFn cross_entropy_backward = nullptr;

}  // namespace lathe::kernels::cpu
