// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const AttentionForwardFn attention_forward = nullptr;
extern const AttentionBackwardFn attention_backward = nullptr;

}  // namespace lathe::kernels::cpu
