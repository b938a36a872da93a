// LATHE_PROFILE=1: where a program's time goes, kernel family by kernel family.
//
// Why: the cuda device runs asynchronously, so a slow training step gives no hint of which
// kernels (or which host work between them) cost the time, and the lent GPUs have no Nsight
// Systems. With the variable set, kernel_table() and device_api() hand out wrappers that
// synchronize the device before and after every kernel call and every host<->device copy, and
// add the elapsed time to a per-(device, family, op) counter; at exit a table goes to stderr:
// calls, total and mean time, share of the wall time since the first call. "host + idle" is the
// wall time no kernel was running: op dispatch, autograd, allocation. The synchronizations slow
// the program down (a few microseconds per call on a GPU), so compare shares, not absolute times,
// with an unprofiled run.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

// LATHE_PROFILE is set, or a KernelCallCounter is alive.
bool profiling_enabled();

// The same counters read from inside a program, without LATHE_PROFILE and without the report at
// exit: while a KernelCallCounter lives, kernel_table() and device_api() hand out the profiling
// wrappers, and calls(key) is the number of calls of a key of the report ("cuda copy", "cuda
// binary 0") made since it was created. Tests use it to check which kernels an op launches (the
// attention op on head views launches no copy). For one thread at a time.
class KernelCallCounter {
 public:
  KernelCallCounter();
  ~KernelCallCounter();
  KernelCallCounter(const KernelCallCounter&) = delete;
  KernelCallCounter& operator=(const KernelCallCounter&) = delete;

  uint64_t calls(const std::string& key) const;

 private:
  std::map<std::string, uint64_t> start_;
};
// The profiling wrappers around a backend's table / API (built once per device type).
const KernelTable& profiled_kernel_table(DeviceType type, const KernelTable& base);
const DeviceApi& profiled_device_api(DeviceType type, const DeviceApi& base);

}  // namespace lathe::kernels
