// Entry points of the cuda backend for kernels/kernel_table.cpp (present in builds with a cuda
// device, real or simulated).
#pragma once

#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

const DeviceApi& cuda_device_api();
const KernelTable& cuda_kernel_table();

}  // namespace lathe::kernels
