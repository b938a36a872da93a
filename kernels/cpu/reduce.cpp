// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const ReduceFn reduce = nullptr;
extern const ArgReduceFn arg_reduce = nullptr;

}  // namespace lathe::kernels::cpu
