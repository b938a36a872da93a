// Placeholder: replaced by the real kernels of this family.
#include "kernels/cpu/cpu_kernels.h"

namespace lathe::kernels::cpu {

extern const IndexSelectFn index_select = nullptr;
extern const IndexAddFn index_add = nullptr;
extern const GatherFn gather = nullptr;
extern const ScatterAddFn scatter_add = nullptr;

}  // namespace lathe::kernels::cpu
