// The memory side of a backend: allocation and host<->device copies. Kept apart from the kernel
// families so that a device is "an allocator + a KernelTable", nothing more.
#pragma once

#include <cstddef>

#include "lathe/core/device.h"
#include "lathe/core/memory.h"

namespace lathe::kernels {

struct DeviceApi {
  void* (*allocate)(size_t nbytes, int index) = nullptr;
  void (*deallocate)(void* ptr, size_t nbytes, int index) = nullptr;
  void (*copy_from_host)(void* dst, const void* src, size_t nbytes, int index) = nullptr;
  void (*copy_to_host)(void* dst, const void* src, size_t nbytes, int index) = nullptr;
  void (*synchronize)(int index) = nullptr;
  int (*device_count)() = nullptr;
  // The allocator's bookkeeping (lathe/core/memory.h).
  MemoryStats (*memory_stats)(int index) = nullptr;
  void (*empty_cache)(int index) = nullptr;
  void (*reset_peak_memory_stats)(int index) = nullptr;
  // The device this thread's kernels run on (cudaSetDevice / cudaGetDevice); null on the cpu,
  // which has one device.
  void (*set_current)(int index) = nullptr;
  int (*current)() = nullptr;
};

// Null when this build has no backend for `type`.
const DeviceApi* device_api(DeviceType type);
const DeviceApi& cpu_device_api();

}  // namespace lathe::kernels
