// Per-device kernel tables (PyTorch's `dispatch: {CPU: ..., CUDA: ...}`, in C++). Each backend
// provides one KernelTable; core/ asks kernel_table(device) for a family and gets a clear error
// when the slot is empty.
#pragma once

#include <string_view>
#include <vector>

#include "kernels/kernel_api.h"
#include "lathe/core/device.h"
#include "lathe/core/error.h"

namespace lathe::kernels {

struct KernelTable {
#define X(name, Fn) Fn name = nullptr;
#include "kernels/kernel_table.def"
#undef X
};

// The table of a device type in this build (an all-null table when the backend is not built).
const KernelTable& kernel_table(DeviceType type);
// The table of the device's type, with `device` made the current device of this thread (a cuda
// kernel launches on the current device), or for the cpu with this thread's OpenMP team size
// brought up to date (lathe/core/threading.h): what the ops call before running kernels on a
// tensor's device. The selection stays after the call, like cudaSetDevice; memory functions take
// their device explicitly and do not depend on it.
const KernelTable& kernel_table(Device device);
// Whether the named family has a kernel for `type` (used to derive docs/ops.md).
bool has_kernel(DeviceType type, std::string_view family);
std::vector<std::string_view> kernel_family_names();

// Backends register their table once at start-up (called from kernel_table()).
const KernelTable& cpu_kernel_table();

}  // namespace lathe::kernels

// Fetches family `name` for `device`, throwing "op: no <name> kernel for cuda:0 in this build".
#define LATHE_KERNEL(device, name, op)                                                      \
  [&]() {                                                                                   \
    auto fn__ = ::lathe::kernels::kernel_table(device).name;                                \
    LATHE_CHECK(fn__ != nullptr, op, ": no '" #name "' kernel for device ", (device).str(), \
                " in this build");                                                          \
    return fn__;                                                                            \
  }()
