// The cpu device's caching allocator (kernels/cpu/host_allocator.h): size rounding, reuse of freed
// blocks under the 1/8-waste best-fit rule, the cache limit, bad frees, statistics, threads, and
// the public memory_stats / empty_cache over tensors.
#include <algorithm>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "kernels/cpu/host_allocator.h"
#include "lathe/core/memory.h"
#include "support/test_util.h"

using namespace lathe;
using lathe::kernels::cpu::HostCachingAllocator;

namespace {
constexpr size_t KiB = 1024, MiB = 1024 * 1024;
}

TEST_CASE("host allocator: size classes", "[allocator][cpu-only]") {
  CHECK(HostCachingAllocator::round_size(0) == 64);
  CHECK(HostCachingAllocator::round_size(1) == 64);
  CHECK(HostCachingAllocator::round_size(65) == 128);
  CHECK(HostCachingAllocator::round_size(64 * KiB - 1) == 64 * KiB);
  CHECK(HostCachingAllocator::round_size(64 * KiB + 1) == 128 * KiB);
  CHECK(HostCachingAllocator::round_size(4 * MiB - 1) == 4 * MiB);
  CHECK(HostCachingAllocator::round_size(4 * MiB + 1) == 5 * MiB);
  CHECK(HostCachingAllocator::round_size(100 * MiB) == 100 * MiB);
}

TEST_CASE("host allocator: freed blocks are reused within the waste rule",
          "[allocator][cpu-only]") {
  HostCachingAllocator alloc(64 * MiB);
  void* a = alloc.allocate(8 * MiB);
  REQUIRE(reinterpret_cast<uintptr_t>(a) % 64 == 0);
  std::memset(a, 1, 8 * MiB);  // the whole block is usable
  alloc.deallocate(a, 8 * MiB);
  CHECK(alloc.stats().cached_bytes == 8 * MiB);
  CHECK(alloc.stats().allocated_bytes == 0);

  // 7.5 MiB rounds to 8 MiB: the same block comes back.
  void* b = alloc.allocate(7 * MiB + 512 * KiB);
  CHECK(b == a);
  CHECK(alloc.stats().cache_hits == 1);
  alloc.deallocate(b, 7 * MiB + 512 * KiB);

  // 7 MiB: an 8 MiB block wastes 1 MiB = 1/7 of the request, more than 1/8: a fresh block.
  void* c = alloc.allocate(7 * MiB);
  CHECK(c != a);
  CHECK(alloc.stats().cache_hits == 1);
  CHECK(alloc.stats().system_allocations == 2);
  // 9 MiB does not fit in the cached 8 MiB.
  void* d = alloc.allocate(9 * MiB);
  CHECK(d != a);
  CHECK(alloc.stats().allocated_bytes == 16 * MiB);
  CHECK(alloc.stats().peak_allocated_bytes == 16 * MiB);
  alloc.deallocate(c, 7 * MiB);
  alloc.deallocate(d, 9 * MiB);
  CHECK(alloc.stats().cached_bytes == 24 * MiB);
  alloc.empty_cache();
  CHECK(alloc.stats().cached_bytes == 0);
  alloc.reset_peak_stats();
  CHECK(alloc.stats().peak_allocated_bytes == 0);
}

TEST_CASE("host allocator: the cache limit and small requests", "[allocator][cpu-only]") {
  HostCachingAllocator alloc(10 * MiB);
  void* a = alloc.allocate(6 * MiB);
  void* b = alloc.allocate(6 * MiB);
  alloc.deallocate(a, 6 * MiB);
  alloc.deallocate(b, 6 * MiB);  // would exceed 10 MiB: returned to the system
  CHECK(alloc.stats().cached_bytes == 6 * MiB);

  HostCachingAllocator off(0);
  void* c = off.allocate(1 * MiB);
  off.deallocate(c, 1 * MiB);
  CHECK(off.stats().cached_bytes == 0);
  void* e = off.allocate(1 * MiB);
  CHECK(off.stats().cache_hits == 0);
  off.deallocate(e, 1 * MiB);

  // Below 64 KiB the allocator is a pass-through: not counted, never cached.
  void* s = alloc.allocate(1000);
  REQUIRE(reinterpret_cast<uintptr_t>(s) % 64 == 0);
  alloc.deallocate(s, 1000);
  CHECK(alloc.stats().allocations == 2);
}

TEST_CASE("host allocator: freeing a block it did not hand out is an error",
          "[allocator][cpu-only]") {
  HostCachingAllocator alloc(64 * MiB);
  void* a = alloc.allocate(1 * MiB);
  alloc.deallocate(a, 1 * MiB);
  lathe::testing::check_error([&] { alloc.deallocate(a, 1 * MiB); },
                              {"cpu allocator", "1048576 bytes", "did not hand out"});
}

TEST_CASE("host allocator: threads allocating and freeing concurrently", "[allocator][cpu-only]") {
  HostCachingAllocator alloc(256 * MiB);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        const size_t bytes = (64 + size_t((i * 7 + t) % 13) * 64) * KiB;
        auto* p = static_cast<unsigned char*>(alloc.allocate(bytes));
        std::memset(p, t + 1, bytes);
        if (p[0] != t + 1 || p[bytes - 1] != t + 1) ++failures[size_t(t)];
        alloc.deallocate(p, bytes);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(std::count(failures.begin(), failures.end(), 0) == 4);
  CHECK(alloc.stats().allocated_bytes == 0);
  CHECK(alloc.stats().allocations == 800);
  CHECK(alloc.stats().cache_hits > 0);
}

TEST_CASE("memory_stats: tensors on the cpu device go through the cache", "[allocator][cpu-only]") {
  empty_cache(Device::cpu());
  const MemoryStats before = memory_stats(Device::cpu());
  const void* first = nullptr;
  {
    Tensor t = zeros({1024, 1024});  // 4 MiB
    first = t.data_ptr();
    CHECK(memory_stats(Device::cpu()).allocated_bytes == before.allocated_bytes + 4 * MiB);
  }
  const MemoryStats freed = memory_stats(Device::cpu());
  CHECK(freed.allocated_bytes == before.allocated_bytes);
  CHECK(freed.reserved_bytes >= before.reserved_bytes + 4 * MiB);
  {
    Tensor u = ones({1024, 1024});
    CHECK(u.data_ptr() == first);  // the cached block, and its contents are the new tensor's
    CHECK(u.sum().item<float>() == 1024.0f * 1024.0f);
  }
  CHECK(memory_stats(Device::cpu()).cache_hits > before.cache_hits);
  empty_cache(Device::cpu());
  CHECK(memory_stats(Device::cpu()).reserved_bytes == memory_stats(Device::cpu()).allocated_bytes);
}
