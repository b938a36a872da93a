// The caching device allocator (design in allocator.h).
#include "kernels/cuda/allocator.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>

#include "kernels/cuda/runtime.h"
#include "lathe/core/error.h"

namespace lathe::cuda {

namespace {

cudaEvent_t runtime_event_create(int device) {
  return event_create(device, false);
}

std::string mib(size_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f MiB", double(bytes) / double(1 << 20));
  return text;
}

}  // namespace

AllocatorBackend runtime_allocator_backend() {
  AllocatorBackend b;
  b.malloc = raw_malloc;
  b.free = raw_free;
  b.event_create = runtime_event_create;
  b.event_destroy = event_destroy;
  b.event_record = event_record;
  b.event_query = event_query;
  b.synchronize = device_synchronize;
  return b;
}

bool CachingAllocator::PoolKey::operator<(const PoolKey& o) const {
  std::less<const void*> before;
  if (stream != o.stream) return before(stream, o.stream);
  if (size != o.size) return size < o.size;
  return before(ptr, o.ptr);
}

CachingAllocator::CachingAllocator(int device, AllocatorBackend backend)
    : device_(device), backend_(backend) {}

CachingAllocator::~CachingAllocator() {
  try {
    std::lock_guard<std::mutex> lock(mutex_);
    for (Block* b : pending_) {
      for (cudaEvent_t e : b->pending) backend_.event_destroy(e);
      b->pending.clear();
      insert_free(b);
    }
    pending_.clear();
    release_cached();
    for (auto& [ptr, b] : blocks_) delete b;  // blocks still in use: their memory is leaked
    blocks_.clear();
  } catch (...) {
    // Destructors must not throw; the process is usually exiting and the memory goes with it.
  }
}

size_t CachingAllocator::round_size(size_t bytes) {
  if (bytes < kSmallLimit) {
    return std::max(kSmallRound, (bytes + kSmallRound - 1) / kSmallRound * kSmallRound);
  }
  return (bytes + kLargeRound - 1) / kLargeRound * kLargeRound;
}

void CachingAllocator::update_peaks() {
  stats_.peak_allocated_bytes = std::max(stats_.peak_allocated_bytes, stats_.allocated_bytes);
  stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
}

void CachingAllocator::insert_free(Block* b) {
  auto& pool = b->size < kSmallLimit ? small_pool_ : large_pool_;
  pool.emplace(PoolKey{b->stream, b->size, b->ptr}, b);
  ++stats_.cached_blocks;
}

void CachingAllocator::process_events() {
  auto done = [&](Block* b) {
    for (cudaEvent_t e : b->pending) {
      if (!backend_.event_query(e)) return false;
    }
    return true;
  };
  for (size_t i = 0; i < pending_.size();) {
    Block* b = pending_[i];
    if (done(b)) {
      for (cudaEvent_t e : b->pending) backend_.event_destroy(e);
      b->pending.clear();
      --stats_.pending_blocks;
      if (released_pools_.count(b->stream)) {  // its graph is gone: back to the device
        free_raw(b);
      } else {
        insert_free(b);
      }
      pending_[i] = pending_.back();
      pending_.pop_back();
    } else {
      ++i;
    }
  }
}

void CachingAllocator::free_raw(Block* b) {
  backend_.free(b->ptr, device_);
  ++stats_.raw_frees;
  stats_.reserved_bytes -= b->size;
  blocks_.erase(b->ptr);
  delete b;
}

template <class Which>
void CachingAllocator::release_cached_where(Which which) {
  for (auto* pool : {&small_pool_, &large_pool_}) {
    for (auto it = pool->begin(); it != pool->end();) {
      if (!which(it->first.stream)) {
        ++it;
        continue;
      }
      free_raw(it->second);
      --stats_.cached_blocks;
      it = pool->erase(it);
    }
  }
}

void CachingAllocator::release_cached() {
  // A live graph's pool keeps its blocks: its replays write them.
  release_cached_where([&](cudaStream_t key) { return !live_pools_.count(key); });
}

void* CachingAllocator::malloc_with_retry(size_t size) {
  void* p = backend_.malloc(size, device_);
  if (!p) {
    // Cached blocks may be what fills the device: wait for all streams (so pending blocks are
    // free too), release the cache and try once more.
    ++stats_.oom_retries;
    backend_.synchronize(device_);
    process_events();
    release_cached();
    p = backend_.malloc(size, device_);
  }
  if (!p) {
    size_t free_bytes = 0, total_bytes = 0;
    if (backend_.malloc == raw_malloc) memory_info(device_, &free_bytes, &total_bytes);
    LATHE_FAIL("cuda:", device_, ": out of memory allocating ", mib(size), " (lathe has ",
               mib(stats_.allocated_bytes), " allocated and ", mib(stats_.reserved_bytes),
               " reserved; the device reports ", mib(free_bytes), " free of ", mib(total_bytes),
               ")");
  }
  ++stats_.raw_mallocs;
  return p;
}

void* CachingAllocator::allocate(size_t bytes, cudaStream_t stream) {
  const size_t size = round_size(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.allocations;
  process_events();

  stream = pool_of(stream);
  Block* found = nullptr;
  const bool small = size < kSmallLimit;
  auto& pool = small ? small_pool_ : large_pool_;
  auto it = pool.lower_bound(PoolKey{stream, size, nullptr});
  if (it != pool.end() && it->first.stream == stream) {
    const size_t have = it->first.size;
    if (small ? have == size : have - size <= have / 8) {
      found = it->second;
      pool.erase(it);
      --stats_.cached_blocks;
      ++stats_.cache_hits;
    }
  }
  if (!found) {
    void* p = malloc_with_retry(size);
    found = new Block;
    found->ptr = p;
    found->size = size;
    blocks_.emplace(p, found);
    stats_.reserved_bytes += size;
  }
  found->stream = stream;
  found->in_use = true;
  found->requested = bytes;
  found->used_on.clear();
  stats_.allocated_bytes += found->size;
  stats_.requested_bytes += bytes;
  update_peaks();
  return found->ptr;
}

void CachingAllocator::deallocate(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  release(ptr, nullptr, false);
}

void CachingAllocator::deallocate(void* ptr, cudaStream_t also_used_on) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  release(ptr, also_used_on, true);
}

void CachingAllocator::release(void* ptr, cudaStream_t also_used_on, bool record) {
  auto it = blocks_.find(ptr);
  LATHE_CHECK(it != blocks_.end() && it->second->in_use, "cuda:", device_,
              ": deallocate of pointer ", ptr,
              " that the caching allocator did not hand out (or that was already freed)");
  Block* b = it->second;
  b->in_use = false;
  stats_.allocated_bytes -= b->size;
  stats_.requested_bytes -= b->requested;
  if (record && !capturing_.empty()) {
    if (auto capture = capturing_.find(also_used_on); capture != capturing_.end()) {
      // Freed inside a capture: the graph may read the block at every replay, so it joins the
      // graph's pool. Earlier work of other streams on it is the caller's to order (the capture
      // starts after the current stream's work, lathe/core/graph.h).
      b->stream = capture->second;
      b->used_on.clear();
      record = false;
    }
  }
  if (released_pools_.count(b->stream)) {
    free_raw(b);  // a destroyed graph's block: back to the device (cudaFree waits for its users)
    return;
  }
  if (record && also_used_on != b->stream) b->used_on.insert(also_used_on);
  if (b->used_on.empty()) {
    insert_free(b);
    return;
  }
  for (cudaStream_t s : b->used_on) {
    cudaEvent_t e = backend_.event_create(device_);
    backend_.event_record(e, s);
    b->pending.push_back(e);
  }
  b->used_on.clear();
  pending_.push_back(b);
  ++stats_.pending_blocks;
}

cudaStream_t CachingAllocator::pool_of(cudaStream_t stream) const {
  if (capturing_.empty()) return stream;
  auto it = capturing_.find(stream);
  return it == capturing_.end() ? stream : it->second;
}

void CachingAllocator::begin_private_pool(cudaStream_t stream, cudaStream_t pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  LATHE_CHECK(stream != nullptr && !capturing_.count(stream), "cuda:", device_,
              ": begin_private_pool on the legacy stream or on a stream that has one already");
  capturing_[stream] = pool;
  live_pools_.insert(pool);
}

void CachingAllocator::end_private_pool(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  capturing_.erase(stream);
}

void CachingAllocator::release_private_pool(cudaStream_t pool) {
  std::lock_guard<std::mutex> lock(mutex_);
  live_pools_.erase(pool);
  released_pools_.insert(pool);
  release_cached_where([&](cudaStream_t key) { return key == pool; });
}

cudaStream_t CachingAllocator::new_private_pool() {
  // Odd values above any heap address, never a handle: cudaStream_t handles are pointers.
  static std::atomic<uintptr_t> next{1};
  return reinterpret_cast<cudaStream_t>((uintptr_t(1) << 63) | (next.fetch_add(2) | 1));
}

void CachingAllocator::record_stream(void* ptr, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = blocks_.find(ptr);
  LATHE_CHECK(it != blocks_.end() && it->second->in_use, "cuda:", device_, ": record_stream of ",
              ptr, ", which is not an allocated block");
  if (stream != it->second->stream) it->second->used_on.insert(stream);
}

bool CachingAllocator::owns(const void* ptr) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = blocks_.find(const_cast<void*>(ptr));
  return it != blocks_.end() && it->second->in_use;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!pending_.empty()) backend_.synchronize(device_);
  process_events();
  release_cached();
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

CachingAllocator& device_allocator(int device) {
  check_device(device, "device_allocator");
  // Created once and never destroyed: at exit the CUDA runtime may already be unloaded, and the
  // driver reclaims device memory with the process anyway.
  static CachingAllocator** all = [] {
    auto** table = new CachingAllocator*[size_t(device_count())];
    for (int d = 0; d < device_count(); ++d) table[d] = new CachingAllocator(d);
    return table;
  }();
  return *all[device];
}

}  // namespace lathe::cuda
