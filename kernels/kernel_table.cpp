#include "kernels/kernel_table.h"

#include "kernels/device_api.h"
#include "kernels/kernel_profile.h"
#include "lathe/core/threading.h"

// Builds with a cuda device (nvcc, or the CPU simulator) provide its tables.
#if defined(LATHE_CUDA_BUILD) || defined(LATHE_CUDA_SIM_BUILD)
#define LATHE_HAS_CUDA_DEVICE 1
#include "kernels/cuda/cuda_device.h"
#endif

namespace lathe::kernels {

namespace {
const KernelTable& backend_kernel_table(DeviceType type) {
  static const KernelTable empty_table{};
  switch (type) {
    case DeviceType::CPU:
      return cpu_kernel_table();
    case DeviceType::CUDA:
#ifdef LATHE_HAS_CUDA_DEVICE
      return cuda_kernel_table();
#else
      return empty_table;
#endif
  }
  return empty_table;
}

const DeviceApi* backend_device_api(DeviceType type) {
  switch (type) {
    case DeviceType::CPU:
      return &cpu_device_api();
    case DeviceType::CUDA:
#ifdef LATHE_HAS_CUDA_DEVICE
      return &cuda_device_api();
#else
      return nullptr;
#endif
  }
  return nullptr;
}
}  // namespace

const KernelTable& kernel_table(DeviceType type) {
  const KernelTable& base = backend_kernel_table(type);
  return profiling_enabled() ? profiled_kernel_table(type, base) : base;
}

const KernelTable& kernel_table(Device device) {
  if (device.type == DeviceType::CPU) {
    ::lathe::detail::sync_num_threads();
  } else {
    const DeviceApi* api = backend_device_api(device.type);
    if (api && api->set_current) api->set_current(device.index);
  }
  return kernel_table(device.type);
}

const DeviceApi* device_api(DeviceType type) {
  const DeviceApi* base = backend_device_api(type);
  return base && profiling_enabled() ? &profiled_device_api(type, *base) : base;
}

bool has_kernel(DeviceType type, std::string_view family) {
  const KernelTable& table = kernel_table(type);
#define X(name, Fn) \
  if (family == #name) return table.name != nullptr;
#include "kernels/kernel_table.def"
#undef X
  return false;
}

std::vector<std::string_view> kernel_family_names() {
  return {
#define X(name, Fn) #name,
#include "kernels/kernel_table.def"
#undef X
  };
}

}  // namespace lathe::kernels
