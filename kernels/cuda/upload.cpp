// The pinned staging pool behind upload_async. Pinned memory is expensive to allocate and free (a
// driver call that maps pages for the device; freeing may synchronize), so blocks are kept and
// reused; capacities are powers of two so that tables whose size drifts a little from call to call
// (a chunk list as gradients come and go) still fit an existing block. The pool stays as small as
// the number of uploads in flight at once: a training step queues a few, and the device runs at
// most a few steps behind the host. A burst (a host far ahead of its device, or one large table)
// can leave it larger, so empty_cache(cuda:N) gives back the device's idle blocks like the
// allocator's cached memory.
#include "kernels/cuda/upload.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "lathe/core/error.h"

namespace lathe::cuda {

namespace {

constexpr size_t kMinBlockBytes = size_t(4) << 10;

struct StagingBlock {
  void* data = nullptr;
  size_t capacity = 0;
  int device = 0;  // an event belongs to one device, so a block serves that device only
  cudaEvent_t last_copy_done = nullptr;
};

struct StagingPool {
  std::mutex mutex;
  std::vector<StagingBlock> blocks;
};

StagingPool& pool() {
  // Leaked: uploads may still be queued from static destructors of other translation units.
  static auto* p = new StagingPool;
  return *p;
}

size_t block_capacity(size_t bytes) {
  size_t capacity = kMinBlockBytes;
  while (capacity < bytes) capacity *= 2;
  return capacity;
}

// The smallest block of `device` that holds `bytes` and that no queued copy still reads, or a new
// one. The caller holds the pool's mutex.
StagingBlock& free_block(StagingPool& p, size_t bytes, int device) {
  StagingBlock* best = nullptr;
  for (StagingBlock& b : p.blocks) {
    if (b.device != device || b.capacity < bytes || (best && best->capacity <= b.capacity)) {
      continue;
    }
    if (event_query(b.last_copy_done)) best = &b;
  }
  if (best) return *best;
  StagingBlock b;
  b.capacity = block_capacity(bytes);
  b.data = host_alloc_mapped(b.capacity);
  b.device = device;
  b.last_copy_done = event_create(device);  // the caller records it before the block is free
  p.blocks.push_back(b);
  return p.blocks.back();
}

}  // namespace

void upload_async(void* device_dst, const void* host_src, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  LATHE_CHECK(device_dst != nullptr && host_src != nullptr, "upload_async: null pointer (dst ",
              device_dst, ", src ", host_src, ", ", bytes, " bytes)");
  if (stream_is_capturing(stream)) {
    upload_by_launch(device_dst, host_src, bytes, stream);
    return;
  }
  StagingPool& p = pool();
  // Held until the event is recorded: another thread must not pick the block between the copy
  // being queued and the event that guards it.
  std::lock_guard lock(p.mutex);
  StagingBlock& block = free_block(p, bytes, current_device());
  std::memcpy(block.data, host_src, bytes);
  memcpy_async(device_dst, block.data, bytes, CopyKind::HostToDevice, stream);
  event_record(block.last_copy_done, stream);
}

size_t upload_staging_blocks(std::optional<int> device) {
  StagingPool& p = pool();
  std::lock_guard lock(p.mutex);
  if (!device) return p.blocks.size();
  return size_t(std::count_if(p.blocks.begin(), p.blocks.end(),
                              [&](const StagingBlock& b) { return b.device == *device; }));
}

size_t upload_release_idle(int device) {
  StagingPool& p = pool();
  std::lock_guard lock(p.mutex);
  size_t freed = 0;
  std::erase_if(p.blocks, [&](StagingBlock& b) {
    // A block whose last copy has not completed is still read by the device.
    if (b.device != device || !event_query(b.last_copy_done)) return false;
    event_destroy(b.last_copy_done);
    host_free_mapped(b.data);
    freed += b.capacity;
    return true;
  });
  return freed;
}

}  // namespace lathe::cuda
