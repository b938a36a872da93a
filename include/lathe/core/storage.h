// A Storage is a ref-counted block of device memory; many tensors (views) share one. The version
// counter lives here, not on the tensor, because an in-place write through any view changes what
// every other view of the same memory sees (PyTorch's "version counter sharing").
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "lathe/core/device.h"

namespace lathe {

class Storage {
 public:
  // Allocates `nbytes` on `device` through that device's allocator.
  Storage(size_t nbytes, Device device);
  // Wraps memory owned elsewhere (for example a memory-mapped file); `release` runs on destruction.
  Storage(void* data, size_t nbytes, Device device, std::function<void(void*)> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::function<void(void*)> release_;
  std::atomic<uint64_t> version_{0};
};

using StoragePtr = std::shared_ptr<Storage>;

}  // namespace lathe
