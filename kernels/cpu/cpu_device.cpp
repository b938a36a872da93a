// The cpu device: 64-byte aligned host memory (full cache lines, AVX-512 friendly) and the table
// of cpu kernels.
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

namespace {
void* cpu_allocate(size_t nbytes, int) {
  size_t rounded = (std::max<size_t>(nbytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw std::bad_alloc();
  return p;
}
void cpu_deallocate(void* p, size_t, int) {
  std::free(p);
}
void cpu_copy(void* dst, const void* src, size_t nbytes, int) {
  std::memcpy(dst, src, nbytes);
}
void cpu_synchronize(int) {}
int cpu_count() {
  return 1;
}
}  // namespace

const DeviceApi& cpu_device_api() {
  static const DeviceApi api{cpu_allocate, cpu_deallocate,  cpu_copy,
                             cpu_copy,     cpu_synchronize, cpu_count};
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
