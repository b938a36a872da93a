// A caching allocator for the cpu device's tensor memory.
//
// Why: a training step frees and re-requests the same large buffers (activations, gradients,
// optimizer temporaries) every iteration. glibc serves requests above its mmap threshold with
// fresh mmap()s, and every first touch of a fresh page is a page fault that zero-fills 4 KiB in
// the kernel: for BERT-sized activations that is milliseconds per step spent outside lathe's
// kernels (and serialized in the kernel's mm lock across OpenMP threads). Keeping freed blocks and
// handing them out again removes both the system calls and the faults, as PyTorch's CPU caching
// allocator and the cuda device's CachingAllocator (kernels/cuda/allocator.h) do.
//
//  - Requests below kMinCached (64 KiB) go straight to aligned_alloc/free: glibc's own bins are
//    fast for them and caching would only fragment.
//  - Larger requests are rounded up to a multiple of 64 KiB (below 4 MiB) or 1 MiB, and take the
//    best-fitting cached block whose waste is at most 1/8 of it; blocks are never split.
//  - The cache holds at most `cache_limit` bytes: a block freed into a full cache goes back to the
//    system at once. LATHE_CPU_CACHE_LIMIT_MB sets the limit of the process-wide allocator
//    (default 4096; 0 turns caching off).
//  - Every block is 64-byte aligned; thread-safe (one mutex: allocation is rare next to the
//    kernels that fill the memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace lathe::kernels::cpu {

struct HostAllocatorStats {
  size_t allocated_bytes = 0;       // in blocks handed out (rounded sizes)
  size_t cached_bytes = 0;          // freed blocks kept for reuse
  size_t peak_allocated_bytes = 0;  // since construction or reset_peak_stats()
  uint64_t allocations = 0;         // allocate() calls of at least kMinCached bytes
  uint64_t cache_hits = 0;          // of those, served from the cache
  uint64_t system_allocations = 0;  // aligned_alloc calls for cacheable sizes
};

class HostCachingAllocator {
 public:
  static constexpr size_t kAlignment = 64;
  static constexpr size_t kMinCached = size_t(64) << 10;  // 64 KiB
  static constexpr size_t kMidLimit = size_t(4) << 20;    // 4 MiB
  static constexpr size_t kLargeRound = size_t(1) << 20;  // 1 MiB

  explicit HostCachingAllocator(size_t cache_limit);
  ~HostCachingAllocator();  // returns the cached blocks; blocks still in use stay with their owner
  HostCachingAllocator(const HostCachingAllocator&) = delete;
  HostCachingAllocator& operator=(const HostCachingAllocator&) = delete;

  // The size a cacheable request is rounded to (requests below kMinCached: to 64 bytes).
  static size_t round_size(size_t bytes);

  void* allocate(size_t bytes);  // throws std::bad_alloc
  // `bytes` is the size given to allocate(); a pointer of a cacheable size that this allocator
  // did not hand out is a programming error (lathe::Error).
  void deallocate(void* ptr, size_t bytes);
  void empty_cache();

  HostAllocatorStats stats() const;
  void reset_peak_stats();
  size_t cache_limit() const { return cache_limit_; }

 private:
  const size_t cache_limit_;
  mutable std::mutex mutex_;
  std::multimap<size_t, void*> free_;         // cached blocks by rounded size
  std::unordered_map<void*, size_t> in_use_;  // handed-out cacheable blocks -> rounded size
  HostAllocatorStats stats_;
};

// The process-wide allocator behind the cpu device (limit from LATHE_CPU_CACHE_LIMIT_MB).
HostCachingAllocator& host_allocator();

}  // namespace lathe::kernels::cpu
