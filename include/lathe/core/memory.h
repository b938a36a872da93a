// What a device's allocator holds. Both devices cache freed blocks for reuse (the cpu device:
// kernels/cpu/host_allocator.h, blocks of 64 KiB and more; cuda: kernels/cuda/allocator.h), so
// memory given back by tensors is not returned to the system until empty_cache(). On a cuda device
// empty_cache() also frees the pinned host blocks that small host-to-device copies are staged in
// (kernels/cuda/upload.h), except those a queued copy still reads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "lathe/core/device.h"

namespace lathe {

struct MemoryStats {
  size_t allocated_bytes = 0;       // in blocks held by live tensors (rounded sizes)
  size_t reserved_bytes = 0;        // allocated + kept in the cache
  size_t peak_allocated_bytes = 0;  // since the start or reset_peak_memory_stats()
  uint64_t allocations = 0;         // requests the cache could serve
  uint64_t cache_hits = 0;          // of those, served from the cache
};

// Throws lathe::Error for a device this build has no backend for.
MemoryStats memory_stats(Device device);
void empty_cache(Device device);
void reset_peak_memory_stats(Device device);

}  // namespace lathe
