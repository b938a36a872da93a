#include "lathe/core/storage.h"

#include "kernels/device_api.h"
#include "lathe/core/error.h"

namespace lathe {

namespace {
const kernels::DeviceApi& api_for(Device device) {
  const kernels::DeviceApi* api = kernels::device_api(device.type);
  LATHE_CHECK(api != nullptr, "device ", device.str(), " is not available in this build of lathe");
  if (device.is_cuda()) {
    int count = api->device_count ? api->device_count() : 0;
    LATHE_CHECK(device.index >= 0 && device.index < count, "device ", device.str(),
                " does not exist (", count, " cuda devices)");
  }
  return *api;
}
}  // namespace

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  const kernels::DeviceApi& api = api_for(device);
  data_ = api.allocate(nbytes, device.index);
  release_ = [&api, nbytes, index = device.index](void* p) { api.deallocate(p, nbytes, index); };
}

Storage::Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release)
    : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}

Storage::~Storage() {
  if (release_) release_(data_);
}

}  // namespace lathe
