// The cuda device's runtime layer: devices, raw device memory, streams, events and copies, as a
// small lathe-flavoured API over cudart. Two implementations share this header:
//  - runtime_cudart.cpp (LATHE_CUDA): thin wrappers over the CUDA runtime, every call checked;
//  - runtime_sim.cpp (LATHE_CUDA_SIM): simulated devices ("cuda:0 (simulated)", two unless
//    LATHE_SIM_DEVICE_COUNT says otherwise) whose memory is host memory. Work on the legacy
//    default stream runs at once (a kernel already ran when launch() returned); work on a created
//    stream is queued and runs as late as CUDA's ordering rules allow (at a wait for that stream
//    or one of its events, or when a legacy-stream operation needs a blocking stream's work), so
//    a missing stream_wait_event shows as stale data in the simulator too. It also checks what a
//    GPU would get wrong silently or fail on: a kernel given memory of another device than the
//    current one, a launch on a stream of another device, a copy ordered on a stream of another
//    device than its memory's.
// Code above (the caching allocator, the kernel launchers, core/) is written once against this
// header and cannot tell the builds apart. Only host-side CUDA types (driver_types.h) appear here,
// so the header compiles without cudart in the simulated build.
#pragma once

#include <driver_types.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace lathe::cuda {

// ---- errors ----

// The CUDA error's name and description ("cudaErrorMemoryAllocation: out of memory").
std::string error_string(cudaError_t status);
// Throws lathe::Error "<file>:<line>: <expr> failed: <error string>".
[[noreturn]] void throw_error(cudaError_t status, const char* expr, const char* file, int line);

}  // namespace lathe::cuda

// Checks a cudaError_t-returning expression; throws lathe::Error naming file:line, the expression
// and the CUDA error string.
#define LATHE_CUDA_CHECK(expr)                                                   \
  do {                                                                           \
    const cudaError_t lathe_cuda_status_ = (expr);                               \
    if (lathe_cuda_status_ != cudaSuccess) [[unlikely]] {                        \
      ::lathe::cuda::throw_error(lathe_cuda_status_, #expr, __FILE__, __LINE__); \
    }                                                                            \
  } while (0)

namespace lathe::cuda {

// ---- devices ----

struct DeviceProperties {
  std::string name;  // "NVIDIA H100 80GB HBM3" or "simulated"
  bool simulated = false;
  int compute_major = 0, compute_minor = 0;
  int multiprocessor_count = 0;
  int max_threads_per_block = 0;
  int warp_size = 32;
  size_t total_memory = 0;                 // bytes
  size_t max_shared_memory_per_block = 0;  // bytes, with the opt-in carve-out
  size_t l2_cache_bytes = 0;
};

// 0 when the build has no cuda device or no GPU/driver is present (never throws).
int device_count();
const DeviceProperties& device_properties(int device);
// "cuda:0 (simulated)" or "cuda:0 (NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB)".
std::string describe_device(int device);
// The device of this OS thread's kernel launches (cudaGetDevice / cudaSetDevice). Every
// function here that takes a device works on that device and leaves the current one as it was;
// kernel launchers launch on the current device, so the op layer makes a tensor's device current
// before calling its kernels (kernels::kernel_table(Device)).
int current_device();
void set_device(int device);

// Makes `device` current for the scope and restores the previous device at its end.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// Throws a lathe::Error naming `what` unless 0 <= device < device_count().
void check_device(int device, const char* what);
// Waits for all work on the device.
void device_synchronize(int device);

// ---- raw device memory (the caching allocator sits on top of these) ----

// Device memory aligned to at least 256 bytes, or nullptr when the device is out of memory
// (other failures throw).
void* raw_malloc(size_t bytes, int device);
void raw_free(void* ptr, int device);
// Free and total device memory in bytes.
void memory_info(int device, size_t* free_bytes, size_t* total_bytes);

// ---- streams ----

// Streams are cudaStream_t handles; nullptr is the device's default (legacy) stream. A blocking
// stream (cudaStreamDefault) and the legacy stream wait for each other's earlier work; a
// non-blocking one (cudaStreamNonBlocking) is ordered with nothing but its own work and the
// events it is told to wait for.
cudaStream_t stream_create(int device, bool blocking = false);
// Queued work still runs; the handle is invalid afterwards.
void stream_destroy(cudaStream_t stream);
void stream_synchronize(cudaStream_t stream);
// True once every operation queued on the stream so far has completed (cudaStreamQuery).
bool stream_query(cudaStream_t stream);
// The stream kernels and copies of this OS thread go to (per device; default nullptr).
cudaStream_t current_stream(int device = -1);
void set_current_stream(cudaStream_t stream, int device = -1);

// Makes `stream` current for the scope.
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t stream, int device = -1);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

// ---- events ----

cudaEvent_t event_create(int device, bool timing = false);
void event_destroy(cudaEvent_t event);
void event_record(cudaEvent_t event, cudaStream_t stream);
// True once the work recorded before the event has completed.
bool event_query(cudaEvent_t event);
void event_synchronize(cudaEvent_t event);
// Work later submitted to `stream` waits for `event`.
void stream_wait_event(cudaStream_t stream, cudaEvent_t event);
// Milliseconds between two recorded timing events.
float event_elapsed_ms(cudaEvent_t start, cudaEvent_t end);

// ---- graphs (stream capture) ----

// Starts recording the work queued on `stream` (a created stream, never the legacy one) into a
// graph instead of running it; cudaStreamCaptureModeRelaxed, so the allocator may still call
// raw_malloc. While a stream captures, a host wait on it, a query of it and a wait on an event
// recorded outside the capture fail with cudaErrorStreamCaptureUnsupported /
// cudaErrorStreamCaptureIsolation and invalidate the capture. An event recorded on it marks a
// point of the capture: a created stream that waits for it joins the capture (a fork), and the
// capturing stream must wait for an event recorded on each joined stream after its last work (a
// join) before the capture ends; such an event cannot be queried, synchronized or timed.
void stream_begin_capture(cudaStream_t stream);
// Ends the capture and returns the executable graph; throws if the capture was invalidated or a
// joined stream was not joined back (the capture is over either way, for the joined streams too).
cudaGraphExec_t stream_end_capture(cudaStream_t stream);
// Whether `stream` is capturing (false for the legacy stream).
bool stream_is_capturing(cudaStream_t stream);
// Queues one run of the graph's work on `stream`, in capture order.
void graph_launch(cudaGraphExec_t graph, cudaStream_t stream);
// The graph's runs already queued still complete.
void graph_destroy(cudaGraphExec_t graph);

// ---- copies ----

enum class CopyKind { HostToDevice, DeviceToHost, DeviceToDevice };

// Ordered on `stream`. For HostToDevice the host buffer must stay valid until the stream reaches
// the copy; for DeviceToHost the data is there after stream_synchronize.
void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream);
// memcpy_async followed by stream_synchronize: safe with any host buffer.
void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream);
void memset_async(void* dst, int byte_value, size_t bytes, cudaStream_t stream);

// ---- the simulated build's launch check (runtime_sim.cpp; cuda::launch calls it) ----

// Refuses a launch on a stream of another device than the current one, or with a pointer argument
// into another device's memory. Defined in the simulated build only.
void check_simulated_launch(const char* name, cudaStream_t stream,
                            std::initializer_list<const void*> pointers);

}  // namespace lathe::cuda

#ifndef __CUDACC__
#include <functional>

namespace lathe::cuda {
// Runs `work` (a simulated kernel, or the host computation that stands for a library call such as
// the GEMM) in `stream`'s order: at once on the legacy stream, after the device's blocking
// streams have run what they hold; queued on a created stream. `work` must own copies of what it
// reads from the host: it may run later, on another host thread. Simulated build only.
void simulated_submit(cudaStream_t stream, std::function<void()> work);
}  // namespace lathe::cuda
#endif

namespace lathe::cuda {

// ---- host waits and mapped host memory ----

// How many times a host thread of this process has waited for a device: every memcpy_sync and
// *_synchronize call (the simulated device counts them too, although it never waits). Each wait
// drains the stream: the device idles until the host has queued the next kernels. Tests hold a
// training step to none (tests/cuda/test_host_waits.cpp).
uint64_t host_waits();

// Pinned host memory that kernels on every device write directly (cudaHostAllocMapped |
// cudaHostAllocPortable; with unified addressing the same pointer on both sides). Zeroed. The
// record of device_report.h lives for the process; upload.h's staging blocks are given back with
// host_free_mapped once no copy reads them.
void* host_alloc_mapped(size_t bytes);
// Frees memory of host_alloc_mapped. No kernel or copy may still use it. Null is a no-op.
void host_free_mapped(void* host);

}  // namespace lathe::cuda
