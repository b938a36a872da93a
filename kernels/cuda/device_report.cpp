// The host side of device_report.h: the record's allocation, the messages and the
// LATHE_CUDA_SYNC_CHECKS switch.
#include "kernels/cuda/device_report.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/cuda/runtime.h"
#include "kernels/env_flag.h"
#include "lathe/core/error.h"

namespace lathe::kernels::cuda {

namespace {

std::atomic<bool>& sync_checks_flag() {
  static std::atomic<bool> on{kernels::env_flag("LATHE_CUDA_SYNC_CHECKS", false)};
  return on;
}

std::string describe(const DeviceReport& r) {
  const std::string op = r.op != nullptr ? r.op : "a cuda kernel";
  const std::string v = std::to_string(r.value), limit = std::to_string(r.limit),
                    at = std::to_string(r.position);
  switch (ReportKind(r.kind)) {
    case ReportKind::Index:
      return op + ": index " + v + " is out of range for dim " + std::to_string(r.dim) +
             " of size " + limit;
    case ReportKind::Embedding:
      return op + ": index " + v + " (at position " + at + ") is out of range for " + limit +
             " embeddings";
    case ReportKind::Target:
      return op + ": target " + v + " (at row " + at + ") is out of range for " + limit +
             " classes (valid: 0.." + std::to_string(r.limit - 1) + " or ignore_index " +
             std::to_string(r.extra) + ")";
  }
  return op + ": invalid value " + v + " (report kind " + std::to_string(r.kind) + ")";
}

}  // namespace

DeviceReport* device_report() {
  static DeviceReport* record =
      static_cast<DeviceReport*>(::lathe::cuda::host_alloc_mapped(sizeof(DeviceReport)));
  return record;
}

void raise_device_report() {
  DeviceReport* r = device_report();
  // Written by a kernel that has finished (the caller waited); volatile: the compiler must not
  // keep an earlier read of mapped memory.
  if (reinterpret_cast<volatile uint32_t&>(r->ready) == 0) return;
  const DeviceReport copy = *r;
  std::memset(static_cast<void*>(r), 0, sizeof *r);
  LATHE_FAIL(describe(copy),
             " [found on the device by a kernel queued before this wait; LATHE_CUDA_SYNC_CHECKS=1 "
             "reports it at the call]");
}

bool sync_checks() {
  return sync_checks_flag().load(std::memory_order_relaxed);
}

void set_sync_checks(bool on) {
  sync_checks_flag().store(on, std::memory_order_relaxed);
}

void after_reporting_launch(cudaStream_t stream) {
  if (!sync_checks()) return;
  ::lathe::cuda::stream_synchronize(stream);
  raise_device_report();
}

}  // namespace lathe::kernels::cuda
