// The cpu device: 64-byte aligned host memory from a caching allocator (kernels/cpu/
// host_allocator.h says why) and the table of cpu kernels.
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/host_allocator.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

namespace {
void* cpu_allocate(size_t nbytes, int) {
  return cpu::host_allocator().allocate(nbytes);
}
void cpu_deallocate(void* p, size_t nbytes, int) {
  cpu::host_allocator().deallocate(p, nbytes);
}
void cpu_copy(void* dst, const void* src, size_t nbytes, int) {
  std::memcpy(dst, src, nbytes);
}
void cpu_synchronize(int) {}
int cpu_count() {
  return 1;
}
MemoryStats cpu_memory_stats(int) {
  const cpu::HostAllocatorStats s = cpu::host_allocator().stats();
  MemoryStats m;
  m.allocated_bytes = s.allocated_bytes;
  m.reserved_bytes = s.allocated_bytes + s.cached_bytes;
  m.peak_allocated_bytes = s.peak_allocated_bytes;
  m.allocations = s.allocations;
  m.cache_hits = s.cache_hits;
  return m;
}
void cpu_empty_cache(int) {
  cpu::host_allocator().empty_cache();
}
void cpu_reset_peak(int) {
  cpu::host_allocator().reset_peak_stats();
}
}  // namespace

const DeviceApi& cpu_device_api() {
  static const DeviceApi api{cpu_allocate,     cpu_deallocate,  cpu_copy,
                             cpu_copy,         cpu_synchronize, cpu_count,
                             cpu_memory_stats, cpu_empty_cache, cpu_reset_peak};
  return api;
}

const KernelTable& cpu_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t;
#define X(name, Fn) t.name = cpu::name;
#include "kernels/kernel_table.def"
#undef X
    return t;
  }();
  return table;
}

}  // namespace lathe::kernels
