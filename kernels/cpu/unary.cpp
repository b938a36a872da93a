// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const UnaryFn unary = nullptr;
extern const UnaryBackwardFn unary_backward = nullptr;

}  // namespace lathe::kernels::cpu
