// Declarations of the cpu backend's kernels, one per family of kernels/kernel_table.def.
// Each family lives in its own file (copy.cpp, unary.cpp, ...); cpu_device.cpp puts them in the
// cpu KernelTable.
#pragma once

#include "kernels/kernel_api.h"

namespace lathe::kernels::cpu {

#define X(name, Fn) extern const Fn name;
#include "kernels/kernel_table.def"
#undef X

}  // namespace lathe::kernels::cpu
