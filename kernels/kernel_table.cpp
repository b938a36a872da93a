#include "kernels/kernel_table.h"

#include "kernels/device_api.h"

namespace lathe::kernels {

const KernelTable& kernel_table(DeviceType type) {
  static const KernelTable empty_table{};
  switch (type) {
    case DeviceType::CPU: return cpu_kernel_table();
    case DeviceType::CUDA: return empty_table;  // the cuda backend registers here once it exists
  }
  return empty_table;
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

const DeviceApi* device_api(DeviceType type) {
  switch (type) {
    case DeviceType::CPU: return &cpu_device_api();
    case DeviceType::CUDA: return nullptr;
  }
  return nullptr;
}

}  // namespace lathe::kernels
