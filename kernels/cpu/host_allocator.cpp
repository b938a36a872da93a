#include "kernels/cpu/host_allocator.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <string>

#include "lathe/core/error.h"

namespace lathe::kernels::cpu {

namespace {

void* system_alloc(size_t bytes) {
  void* p = std::aligned_alloc(HostCachingAllocator::kAlignment, bytes);
  if (!p) throw std::bad_alloc();
  return p;
}

size_t limit_from_env() {
  const char* env = std::getenv("LATHE_CPU_CACHE_LIMIT_MB");
  if (!env || !*env) return size_t(4096) << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  LATHE_CHECK(end && *end == '\0' && mb >= 0,
              "LATHE_CPU_CACHE_LIMIT_MB must be a whole number of "
              "MiB >= 0 (0 turns the cpu allocator's cache off), got '",
              env, "'");
  return size_t(mb) << 20;
}

}  // namespace

HostCachingAllocator::HostCachingAllocator(size_t cache_limit) : cache_limit_(cache_limit) {}

HostCachingAllocator::~HostCachingAllocator() {
  empty_cache();
}

size_t HostCachingAllocator::round_size(size_t bytes) {
  bytes = std::max<size_t>(bytes, 1);
  if (bytes < kMinCached) return (bytes + kAlignment - 1) / kAlignment * kAlignment;
  const size_t unit = bytes < kMidLimit ? kMinCached : kLargeRound;
  return (bytes + unit - 1) / unit * unit;
}

void* HostCachingAllocator::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  if (size < kMinCached) return system_alloc(size);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.allocations;
    auto it = free_.lower_bound(size);
    if (it != free_.end() && it->first - size <= size / 8) {
      void* p = it->second;
      const size_t block = it->first;
      free_.erase(it);
      stats_.cached_bytes -= block;
      ++stats_.cache_hits;
      in_use_.emplace(p, block);
      stats_.allocated_bytes += block;
      stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
      return p;
    }
  }
  // Outside the lock: the system call (and a possible retry after releasing the cache) must not
  // serialize the other threads' cache hits.
  void* p = nullptr;
  try {
    p = system_alloc(size);
  } catch (const std::bad_alloc&) {
    empty_cache();
    p = system_alloc(size);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.system_allocations;
  in_use_.emplace(p, size);
  stats_.allocated_bytes += size;
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  return p;
}

void HostCachingAllocator::deallocate(void* ptr, size_t bytes) {
  if (!ptr) return;
  if (round_size(bytes) < kMinCached) {
    std::free(ptr);
    return;
  }
  void* release = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = in_use_.find(ptr);
    LATHE_CHECK(it != in_use_.end(), "cpu allocator: freeing a block of ", bytes,
                " bytes that it did not hand out (or freed twice)");
    const size_t block = it->second;
    in_use_.erase(it);
    stats_.allocated_bytes -= block;
    if (stats_.cached_bytes + block <= cache_limit_) {
      free_.emplace(block, ptr);
      stats_.cached_bytes += block;
    } else {
      release = ptr;
    }
  }
  std::free(release);
}

void HostCachingAllocator::empty_cache() {
  std::multimap<size_t, void*> blocks;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    blocks.swap(free_);
    stats_.cached_bytes = 0;
  }
  for (auto& [size, p] : blocks) std::free(p);
}

HostAllocatorStats HostCachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void HostCachingAllocator::reset_peak_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

HostCachingAllocator& host_allocator() {
  // Never destroyed: tensors in static storage may be freed after main returns.
  static HostCachingAllocator* allocator = new HostCachingAllocator(limit_from_env());
  return *allocator;
}

}  // namespace lathe::kernels::cpu
