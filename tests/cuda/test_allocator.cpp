// The caching allocator's reuse rules (kernels/cuda/allocator.h), driven through a fake backend
// whose memory is counted and whose events complete only when the test says so, plus the device
// allocator behind cuda tensors.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <set>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/runtime.h"
#include "support/test_util.h"

using namespace lathe;
using cuda::CachingAllocator;

namespace {

// Fake device: host memory with a byte limit; events are ints that complete when released.
struct FakeDevice {
  size_t limit = size_t(1) << 40;
  size_t used = 0;
  int mallocs = 0, frees = 0, syncs = 0;
  std::set<int*> events;
  bool events_complete = true;  // state of newly recorded events
};
FakeDevice g_fake;

void* fake_malloc(size_t bytes, int) {
  if (g_fake.used + bytes > g_fake.limit) return nullptr;
  g_fake.used += bytes;
  ++g_fake.mallocs;
  // Remember the size in a header so free can count it.
  auto* p = static_cast<size_t*>(std::malloc(bytes + 64));
  *p = bytes;
  return reinterpret_cast<char*>(p) + 64;
}
void fake_free(void* ptr, int) {
  auto* p = reinterpret_cast<size_t*>(static_cast<char*>(ptr) - 64);
  g_fake.used -= *p;
  ++g_fake.frees;
  std::free(p);
}
cudaEvent_t fake_event_create(int) {
  int* e = new int(0);
  g_fake.events.insert(e);
  return reinterpret_cast<cudaEvent_t>(e);
}
void fake_event_destroy(cudaEvent_t e) {
  int* p = reinterpret_cast<int*>(e);
  g_fake.events.erase(p);
  delete p;
}
void fake_event_record(cudaEvent_t e, cudaStream_t) {
  *reinterpret_cast<int*>(e) = g_fake.events_complete ? 1 : 0;
}
bool fake_event_query(cudaEvent_t e) {
  return *reinterpret_cast<int*>(e) == 1;
}
void fake_synchronize(int) {
  ++g_fake.syncs;
  for (int* e : g_fake.events) *e = 1;
}
void complete_all_events() {
  for (int* e : g_fake.events) *e = 1;
}

cuda::AllocatorBackend fake_backend() {
  g_fake = FakeDevice{};
  cuda::AllocatorBackend b;
  b.malloc = fake_malloc;
  b.free = fake_free;
  b.event_create = fake_event_create;
  b.event_destroy = fake_event_destroy;
  b.event_record = fake_event_record;
  b.event_query = fake_event_query;
  b.synchronize = fake_synchronize;
  return b;
}

cudaStream_t stream_id(int i) {
  return reinterpret_cast<cudaStream_t>(uintptr_t(0x1000 * i));
}

constexpr size_t MiB = size_t(1) << 20;

}  // namespace

TEST_CASE("cuda allocator: size classes", "[cuda][allocator]") {
  CHECK(CachingAllocator::round_size(0) == 512);
  CHECK(CachingAllocator::round_size(1) == 512);
  CHECK(CachingAllocator::round_size(512) == 512);
  CHECK(CachingAllocator::round_size(513) == 1024);
  CHECK(CachingAllocator::round_size(MiB - 1) == MiB);
  CHECK(CachingAllocator::round_size(MiB) == 2 * MiB);
  CHECK(CachingAllocator::round_size(2 * MiB + 1) == 4 * MiB);
  CHECK(CachingAllocator::round_size(100 * MiB) == 100 * MiB);
}

TEST_CASE("cuda allocator: a freed block is reused by the same size class on the same stream",
          "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  void* a = alloc.allocate(1000, stream_id(1));
  alloc.deallocate(a);
  CHECK(alloc.stats().cached_blocks == 1);
  void* b = alloc.allocate(1024, stream_id(1));  // same class (1024)
  CHECK(b == a);
  CHECK(alloc.stats().cache_hits == 1);
  CHECK(g_fake.mallocs == 1);
  // A smaller class does not take the larger block, even when it is free.
  alloc.deallocate(b);
  void* c = alloc.allocate(100, stream_id(1));
  CHECK(c != a);
  CHECK(g_fake.mallocs == 2);
  alloc.deallocate(c);
  auto s = alloc.stats();
  CHECK(s.allocated_bytes == 0);
  CHECK(s.reserved_bytes == 1024 + 512);
  CHECK(s.peak_allocated_bytes == 1024);
  CHECK(s.allocations == 3);
}

TEST_CASE("cuda allocator: blocks never cross streams without an event", "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  void* a = alloc.allocate(4096, stream_id(1));
  alloc.deallocate(a);
  void* b = alloc.allocate(4096, stream_id(2));
  CHECK(b != a);  // the cached block belongs to stream 1
  void* c = alloc.allocate(4096, stream_id(1));
  CHECK(c == a);
  alloc.deallocate(b);
  alloc.deallocate(c);
  CHECK(alloc.stats().cache_hits == 1);
}

TEST_CASE("cuda allocator: record_stream delays reuse until the other stream's event completes",
          "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  void* a = alloc.allocate(8192, stream_id(1));
  alloc.record_stream(a, stream_id(2));  // a kernel on stream 2 reads the block
  g_fake.events_complete = false;        // ... and has not finished yet
  alloc.deallocate(a);
  CHECK(alloc.stats().pending_blocks == 1);
  CHECK(g_fake.events.size() == 1);
  void* b = alloc.allocate(8192, stream_id(1));
  CHECK(b != a);  // not reusable yet
  complete_all_events();
  void* c = alloc.allocate(8192, stream_id(1));
  CHECK(c == a);  // the event completed: back in stream 1's pool
  CHECK(alloc.stats().pending_blocks == 0);
  CHECK(g_fake.events.empty());  // events are destroyed once processed
  alloc.deallocate(b);
  alloc.deallocate(c);
  // record_stream on the block's own stream needs no event.
  void* d = alloc.allocate(8192, stream_id(1));
  alloc.record_stream(d, stream_id(1));
  alloc.deallocate(d);
  CHECK(alloc.stats().pending_blocks == 0);
}

TEST_CASE("cuda allocator: large blocks are best fit with bounded waste", "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  void* big = alloc.allocate(16 * MiB, stream_id(1));
  void* small = alloc.allocate(4 * MiB, stream_id(1));
  alloc.deallocate(big);
  alloc.deallocate(small);
  // 14 MiB: the 16 MiB block wastes 2 MiB = 1/8 of it: reused.
  void* a = alloc.allocate(14 * MiB, stream_id(1));
  CHECK(a == big);
  // 3 MiB (rounded to 4): the 4 MiB block is an exact fit.
  void* b = alloc.allocate(3 * MiB, stream_id(1));
  CHECK(b == small);
  alloc.deallocate(a);
  alloc.deallocate(b);
  // 2 MiB would waste half of the 4 MiB block: a new block instead.
  void* c = alloc.allocate(2 * MiB, stream_id(1));
  CHECK(c != small);
  CHECK(c != big);
  alloc.deallocate(c);
  CHECK(alloc.stats().reserved_bytes == 22 * MiB);
}

TEST_CASE("cuda allocator: empty_cache, out-of-memory retry and errors", "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  g_fake.limit = 8 * MiB;
  void* a = alloc.allocate(4 * MiB, stream_id(1));
  void* b = alloc.allocate(2 * MiB, stream_id(2));
  alloc.deallocate(a);
  // 6 MiB does not fit next to the cached 4 MiB + live 2 MiB: the cache is released and retried.
  void* c = alloc.allocate(6 * MiB, stream_id(1));
  REQUIRE(c != nullptr);
  auto s = alloc.stats();
  CHECK(s.oom_retries == 1);
  CHECK(s.reserved_bytes == 8 * MiB);
  CHECK(g_fake.syncs >= 1);
  // Nothing left to release: a clear error with the statistics.
  testing::check_error([&] { (void)alloc.allocate(4 * MiB, stream_id(1)); },
                       {"cuda:0", "out of memory", "4.00 MiB", "8.00 MiB reserved"});
  alloc.deallocate(c);
  alloc.deallocate(b);
  CHECK(alloc.stats().cached_blocks == 2);
  alloc.empty_cache();
  s = alloc.stats();
  CHECK(s.cached_blocks == 0);
  CHECK(s.reserved_bytes == 0);
  CHECK(g_fake.used == 0);
  CHECK(s.peak_reserved_bytes == 8 * MiB);
  alloc.reset_peak_stats();
  CHECK(alloc.stats().peak_reserved_bytes == 0);
  int local = 0;
  testing::check_error([&] { alloc.deallocate(&local); }, {"did not hand out"});
  testing::check_error([&] { alloc.record_stream(&local, stream_id(3)); }, {"record_stream"});
}

TEST_CASE("cuda allocator: empty_cache waits for pending blocks", "[cuda][allocator]") {
  CachingAllocator alloc(0, fake_backend());
  void* a = alloc.allocate(1 * MiB, stream_id(1));
  alloc.record_stream(a, stream_id(2));
  g_fake.events_complete = false;
  alloc.deallocate(a);
  alloc.empty_cache();  // synchronizes, so the pending block is freed too
  CHECK(alloc.stats().reserved_bytes == 0);
  CHECK(g_fake.used == 0);
}

TEST_CASE("cuda allocator: a graph's private pool", "[cuda][allocator][graphs]") {
  CachingAllocator alloc(0, fake_backend());
  cudaStream_t capture = stream_id(3), other = stream_id(1);
  void* before = alloc.allocate(4096, other);  // a tensor from before the capture
  void* cached = alloc.allocate(4096, capture);
  alloc.deallocate(cached);  // cached for the capture stream itself, outside any pool
  const cudaStream_t pool = CachingAllocator::new_private_pool();
  CHECK(pool != CachingAllocator::new_private_pool());
  alloc.begin_private_pool(capture, pool);
  testing::check_error([&] { alloc.begin_private_pool(capture, pool); }, {"begin_private_pool"});

  // Requests on the capturing stream come from the pool, not from the stream's cache.
  void* temp = alloc.allocate(4096, capture);
  CHECK(temp != cached);
  // Freed with the capturing stream current: back into the pool, no event recorded.
  const size_t events = g_fake.events.size();
  alloc.deallocate(temp, capture);
  CHECK(g_fake.events.size() == events);
  void* out = alloc.allocate(4096, capture);  // the pool reuses its own blocks within the capture
  CHECK(out == temp);
  // A block from outside, dropped during the capture, joins the pool.
  alloc.deallocate(before, capture);
  alloc.end_private_pool(capture);

  // empty_cache leaves a live pool alone: the graph's replays write its blocks.
  const int frees_before_empty = g_fake.frees;
  alloc.empty_cache();
  CHECK(g_fake.frees == frees_before_empty + 1);  // the capture stream's own cached block only
  cached = alloc.allocate(4096, capture);         // (cached again below)
  alloc.deallocate(cached);

  // After the capture nothing outside the graph gets the pool's blocks.
  void* later = alloc.allocate(4096, other);
  CHECK(later != before);
  void* on_capture_stream = alloc.allocate(4096, capture);
  CHECK(on_capture_stream == cached);  // the stream's own cache again
  const int frees = g_fake.frees;
  const size_t reserved = alloc.stats().reserved_bytes;

  // Released: the pool's cached block (`before`) goes back to the device at once, the output when
  // it is freed.
  alloc.release_private_pool(pool);
  CHECK(g_fake.frees == frees + 1);
  CHECK(alloc.stats().reserved_bytes == reserved - 4096);
  alloc.deallocate(out);
  CHECK(g_fake.frees == frees + 2);
  CHECK(alloc.stats().reserved_bytes == reserved - 8192);
  CHECK(!alloc.owns(out));
  alloc.deallocate(later);
  alloc.deallocate(on_capture_stream);
  CHECK(alloc.stats().allocated_bytes == 0);
}

TEST_CASE("cuda allocator: cuda tensors reuse cached device memory", "[cuda][allocator]") {
  cuda::CachingAllocator& alloc = cuda::device_allocator(0);
  Device dev = Device::cuda(0);
  auto step = [&] {
    Tensor t = zeros({123, 45}, dev);
    Tensor u = t + 1.0;
    CHECK(u.sum().item<double>() == 123 * 45);
  };
  step();  // warm the cache with every size the step needs
  auto before = alloc.stats();
  for (int i = 0; i < 5; ++i) step();
  auto after = alloc.stats();
  CHECK(after.raw_mallocs == before.raw_mallocs);  // every block came from the cache
  CHECK(after.cache_hits > before.cache_hits);
  CHECK(after.allocated_bytes == before.allocated_bytes);
}
