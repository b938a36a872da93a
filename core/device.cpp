#include "lathe/core/device.h"

#include <string>

#include "kernels/device_api.h"
#include "lathe/core/error.h"

namespace lathe {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string digits = text.substr(5);
    bool ok = !digits.empty() && digits.size() < 4 &&
              digits.find_first_not_of("0123456789") == std::string::npos;
    LATHE_CHECK(ok, "Device::parse: bad device index in '", text, "'");
    return cuda(std::stoi(digits));
  }
  LATHE_FAIL("Device::parse: unknown device '", text, "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
  return type == DeviceType::CPU ? "cpu" : "cuda:" + std::to_string(index);
}

int cuda_device_count() {
  const kernels::DeviceApi* api = kernels::device_api(DeviceType::CUDA);
  return api && api->device_count ? api->device_count() : 0;
}

bool cuda_available() {
  return cuda_device_count() > 0;
}

void synchronize(Device device) {
  const kernels::DeviceApi* api = kernels::device_api(device.type);
  LATHE_CHECK(api && api->synchronize, "synchronize: this build has no backend for ", device.str());
  api->synchronize(device.index);
}

}  // namespace lathe
