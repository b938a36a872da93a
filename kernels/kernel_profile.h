// LATHE_PROFILE=1: where a program's time goes, kernel family by kernel family.
//
// Why: the cuda device runs asynchronously, so a slow training step gives no hint of which
// kernels (or which host work between them) cost the time, and the lent GPUs have no Nsight
// Systems. With the variable set, kernel_table() and device_api() hand out wrappers that
// synchronize the device before and after every kernel call and every host<->device copy, and
// add the elapsed time to a per-(device, family, op) counter; at exit a table goes to stderr:
// calls, total and mean time, share of the wall time since the first call. "host + idle" is the
// wall time no kernel was running: op dispatch, autograd, allocation. The synchronizations slow
// the program down (a few microseconds per call on a GPU), so compare shares, not absolute times,
// with an unprofiled run.
#pragma once

#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

bool profiling_enabled();
// The profiling wrappers around a backend's table / API (built once per device type).
const KernelTable& profiled_kernel_table(DeviceType type, const KernelTable& base);
const DeviceApi& profiled_device_api(DeviceType type, const DeviceApi& base);

}  // namespace lathe::kernels
