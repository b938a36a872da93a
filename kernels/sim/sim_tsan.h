// ThreadSanitizer annotations for the simulator's own files (sim_runtime.cpp, ptx_emulation.cpp),
// which are compiled without -fsanitize=thread (cmake/LatheCuda.cmake defines LATHE_SIM_TSAN there
// in a TSan build) but run on the simulated threads' fibers, each a TSan thread.
//
// Release/acquire pairs model the synchronization a kernel's barriers give. BookkeepingGuard hides
// the simulator's own bookkeeping from TSan: uninstrumented code is not checked, but libc and
// allocator calls are intercepted everywhere, so a waiter list that grows (memmove) or a pending
// copy's std::function allocated on one simulated thread and freed on another would be reported
// as races between CUDA threads that the kernel never had. TSan threads keep their own ignore
// count, so a guard must not span a fiber switch.
#pragma once

#if defined(__SANITIZE_THREAD__) || defined(LATHE_SIM_TSAN)
#include <sanitizer/tsan_interface.h>
// In the TSan runtime, not declared by GCC 12's sanitizer headers.
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#define LATHE_SIM_TSAN_RELEASE(addr) __tsan_release(addr)
#define LATHE_SIM_TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#define LATHE_SIM_TSAN_IGNORE_BEGIN() __tsan_ignore_thread_begin()
#define LATHE_SIM_TSAN_IGNORE_END() __tsan_ignore_thread_end()
#else
#define LATHE_SIM_TSAN_RELEASE(addr) ((void)(addr))
#define LATHE_SIM_TSAN_ACQUIRE(addr) ((void)(addr))
#define LATHE_SIM_TSAN_IGNORE_BEGIN() ((void)0)
#define LATHE_SIM_TSAN_IGNORE_END() ((void)0)
#endif

namespace lathe::sim {

class BookkeepingGuard {
 public:
  BookkeepingGuard() { LATHE_SIM_TSAN_IGNORE_BEGIN(); }
  ~BookkeepingGuard() { LATHE_SIM_TSAN_IGNORE_END(); }
  BookkeepingGuard(const BookkeepingGuard&) = delete;
  BookkeepingGuard& operator=(const BookkeepingGuard&) = delete;
};

}  // namespace lathe::sim
