// A caching device allocator (the idea of PyTorch's CUDACachingAllocator, kept small). cudaMalloc
// and cudaFree synchronize the device and cost tens of microseconds, while a training step frees
// and re-requests the same sizes every iteration; so freed blocks are kept and handed out again.
//
//  - Size classes: requests below 1 MiB are rounded up to a multiple of 512 bytes and reused only
//    by requests of the same class; larger requests are rounded up to a multiple of 2 MiB and take
//    the best-fitting cached block whose waste is at most 1/8 of it (blocks are never split).
//  - Streams: a block belongs to the stream it was allocated on. Work on one stream runs in
//    order, so a block freed on stream S can be handed to the next request on S at once, even
//    while S still runs kernels that read it. It is never handed to another stream. When a block
//    was also used on other streams (record_stream), freeing it records an event on each of them
//    and the block returns to the pool only once every event has completed.
//  - Graph capture (lathe/core/graph.h): while `stream` captures into a graph, its requests are
//    served from the graph's private pool (a pool key of its own instead of the stream), and any
//    block freed while the capturing stream is current joins that pool, wherever it came from:
//    the graph's kernels may read it at every replay, so nothing outside the graph may reuse it.
//    The pool is handed back when the graph is destroyed (release_private_pool): its cached blocks
//    go back to the device, and blocks still in use (the graph's outputs held by the caller) are
//    returned to the device when they are freed. Until then empty_cache and the out-of-memory
//    retry leave the pool's cached blocks alone.
//  - Out of memory: the cache is released (after a device synchronize) and the allocation retried
//    once before a lathe::Error reports the request and the statistics.
//
// The raw memory and event calls come through AllocatorBackend, so tests drive the allocator with
// fake memory and events they complete by hand. (No <memory> here: this header is included by .cu
// files, and the simulator's __noinline__ macro breaks libstdc++'s shared_ptr_base.h.)
#pragma once

#include <driver_types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

namespace lathe::cuda {

struct AllocatorBackend {
  void* (*malloc)(size_t bytes, int device) = nullptr;  // nullptr when out of memory
  void (*free)(void* ptr, int device) = nullptr;
  cudaEvent_t (*event_create)(int device) = nullptr;
  void (*event_destroy)(cudaEvent_t event) = nullptr;
  void (*event_record)(cudaEvent_t event, cudaStream_t stream) = nullptr;
  bool (*event_query)(cudaEvent_t event) = nullptr;
  void (*synchronize)(int device) = nullptr;
};

// The backend over runtime.h (cudart, or the simulated device).
AllocatorBackend runtime_allocator_backend();

struct AllocatorStats {
  size_t allocated_bytes = 0;       // in blocks handed out (rounded sizes)
  size_t reserved_bytes = 0;        // obtained from the raw allocator (in use + cached)
  size_t peak_allocated_bytes = 0;  // since construction or reset_peak_stats()
  size_t peak_reserved_bytes = 0;
  size_t requested_bytes = 0;  // sum of the sizes asked for by blocks in use
  uint64_t allocations = 0;    // allocate() calls
  uint64_t cache_hits = 0;     // allocate() calls served from the cache
  uint64_t raw_mallocs = 0;
  uint64_t raw_frees = 0;
  uint64_t oom_retries = 0;   // raw malloc failures that released the cache and retried
  size_t cached_blocks = 0;   // blocks ready for reuse
  size_t pending_blocks = 0;  // freed blocks waiting for events of other streams
};

class CachingAllocator {
 public:
  static constexpr size_t kSmallLimit = size_t(1) << 20;  // 1 MiB
  static constexpr size_t kSmallRound = 512;
  static constexpr size_t kLargeRound = size_t(2) << 20;  // 2 MiB

  explicit CachingAllocator(int device, AllocatorBackend backend = runtime_allocator_backend());
  ~CachingAllocator();  // returns every cached block; blocks still in use are leaked
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // The size a request is rounded to.
  static size_t round_size(size_t bytes);

  // A block of at least `bytes` (a 0-byte request gets the smallest block) for use on `stream`.
  void* allocate(size_t bytes, cudaStream_t stream);
  // Returns a block to the cache; throws lathe::Error for a pointer this allocator did not give.
  void deallocate(void* ptr);
  // The same after record_stream(ptr, also_used_on), under one lock.
  void deallocate(void* ptr, cudaStream_t also_used_on);
  // Declares that `ptr` is also used by work on `stream`: the block is not reused before that
  // work (as of the time of deallocate) has completed.
  void record_stream(void* ptr, cudaStream_t stream);
  // Whether `ptr` is the start of a block handed out by this allocator and not yet freed.
  bool owns(const void* ptr) const;
  // Releases every cached block to the raw allocator (blocks in use are untouched).
  void empty_cache();

  // From now on requests on `stream` come from the private pool `pool` and blocks freed with
  // `stream` current join it (see the top of the file); `pool` is a key no stream uses
  // (new_private_pool()).
  void begin_private_pool(cudaStream_t stream, cudaStream_t pool);
  void end_private_pool(cudaStream_t stream);
  // The pool's cached blocks go back to the device; its blocks in use go back when freed.
  void release_private_pool(cudaStream_t pool);
  // A pool key never handed out before (never a stream handle).
  static cudaStream_t new_private_pool();

  AllocatorStats stats() const;
  void reset_peak_stats();
  int device() const { return device_; }

 private:
  struct Block {
    void* ptr = nullptr;
    size_t size = 0;       // rounded
    size_t requested = 0;  // as asked
    cudaStream_t stream = nullptr;
    bool in_use = false;
    std::set<cudaStream_t> used_on;    // other streams, from record_stream
    std::vector<cudaEvent_t> pending;  // events that must complete before reuse
  };
  struct PoolKey {
    cudaStream_t stream;
    size_t size;
    void* ptr;
    bool operator<(const PoolKey& o) const;
  };

  void release(void* ptr, cudaStream_t also_used_on, bool record);  // deallocate, locked
  cudaStream_t pool_of(cudaStream_t stream) const;  // the private pool `stream` draws on, or it
  void* malloc_with_retry(size_t size);
  void process_events();    // moves pending blocks whose events completed into the pools
  void release_cached();    // frees every cached block (except live graphs' pools)
  void free_raw(Block* b);  // back to the raw allocator; `b` is gone (the caller unlists it)
  template <class Which>
  void release_cached_where(Which which);  // frees the cached blocks whose pool key `which` takes
  void insert_free(Block* b);
  void update_peaks();

  const int device_;
  const AllocatorBackend backend_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, Block*> blocks_;           // every block, by pointer (owned)
  std::map<PoolKey, Block*> small_pool_, large_pool_;  // cached blocks
  std::vector<Block*> pending_;
  std::unordered_map<cudaStream_t, cudaStream_t> capturing_;  // capturing stream -> its pool
  std::set<cudaStream_t> live_pools_;      // kept by empty_cache and the out-of-memory retry
  std::set<cudaStream_t> released_pools_;  // their blocks go back to the device when freed
  AllocatorStats stats_;
};

// The allocator of cuda device `device` (created on first use, lives until exit).
CachingAllocator& device_allocator(int device);

}  // namespace lathe::cuda
