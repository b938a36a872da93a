// Errors that kernels find in their data (an index or a class target out of range) reach the
// host through one record in mapped host memory, read after the host's next wait for the device
// (cuda_device.cpp: every copy to or from the host and every synchronize).
//
// Why not check before the launch, as the cpu does: reading the verdict back is a host wait per
// call (~20 us on the H200), and each wait drains the stream, so the device idles while the host
// queues the next kernels. An embedding lookup, its backward and the loss made ~10 of them per
// training step. Like CUDA's own device-side asserts, the error is then reported late, but here
// with the op, the value and the limit, and the device stays usable: the kernel that finds a bad
// index skips it (a copy writes 0, an accumulation adds nothing) and the record is cleared once
// raised. LATHE_CUDA_SYNC_CHECKS=1 makes those launchers wait at once, so the error points at the
// call (a debugging aid, like CUDA_LAUNCH_BLOCKING).
#pragma once

#include <driver_types.h>

#include <cstdint>

namespace lathe::kernels::cuda {

enum class ReportKind : int32_t {
  Index = 1,      // "<op>: index V is out of range for dim D of size L"
  Embedding = 2,  // "<op>: index V (at position P) is out of range for L embeddings"
  Target = 3,     // "<op>: target V (at row P) is out of range for L classes (...ignore_index X)"
};

struct DeviceReport {
  uint32_t claimed;  // the first kernel thread to find an error sets it and fills the rest
  uint32_t ready;    // 1 once the fields below are written
  const char* op;    // a string literal of the host launcher (never read on the device)
  int32_t kind;      // ReportKind
  int32_t dim;
  int64_t value, limit, position, extra;
};

// The record kernels file into: the same address on host and device, shared by every device.
DeviceReport* device_report();

// Throws the filed error as a lathe::Error (and clears the record) if a kernel filed one. Called
// after a host wait: the kernels queued before it have finished.
void raise_device_report();

// Whether launchers that can file a report wait right after the launch and raise it there
// (LATHE_CUDA_SYNC_CHECKS=1 at start-up; tests switch it).
bool sync_checks();
void set_sync_checks(bool on);
// The launchers' call after such a launch: waits for `stream` and raises when sync_checks().
void after_reporting_launch(cudaStream_t stream);

}  // namespace lathe::kernels::cuda
