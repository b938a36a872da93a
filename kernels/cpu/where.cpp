// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const WhereFn where = nullptr;

}  // namespace lathe::kernels::cpu
