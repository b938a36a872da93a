#include "lathe/core/memory.h"

#include "kernels/device_api.h"
#include "lathe/core/error.h"

namespace lathe {

namespace {
const kernels::DeviceApi& api_for(Device device, const char* what) {
  const kernels::DeviceApi* api = kernels::device_api(device.type);
  LATHE_CHECK(api && api->memory_stats, what, ": this build has no allocator for ", device.str());
  return *api;
}
}  // namespace

MemoryStats memory_stats(Device device) {
  return api_for(device, "memory_stats").memory_stats(device.index);
}

void empty_cache(Device device) {
  api_for(device, "empty_cache").empty_cache(device.index);
}

void reset_peak_memory_stats(Device device) {
  api_for(device, "reset_peak_memory_stats").reset_peak_memory_stats(device.index);
}

}  // namespace lathe
