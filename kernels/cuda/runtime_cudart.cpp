// The runtime of the real cuda device (LATHE_CUDA): thin wrappers over cudart with every status
// checked by LATHE_CUDA_CHECK. device_count() never throws, so a build with CUDA on a machine
// without a GPU or driver simply reports no cuda device.
#include <cuda.h>  // CUtensorMap and its enums only: the driver is reached through cudart
#include <cuda_runtime.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/cuda/tensor_map.h"
#include "lathe/core/error.h"

namespace lathe::cuda {

namespace {

constexpr int kMaxDevices = 64;
thread_local std::array<cudaStream_t, kMaxDevices> t_current_stream{};
std::atomic<uint64_t> g_host_waits{0};

}  // namespace

std::string error_string(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

void throw_error(cudaError_t status, const char* expr, const char* file, int line) {
  // A failed call also sets the thread's last error, which cudaGetLastError would report for the
  // next kernel launch (cuda::launch checks it): this error is reported here, so clear it.
  (void)cudaGetLastError();
  LATHE_FAIL(file, ":", line, ": ", expr, " failed: ", error_string(status));
}

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: clear the sticky status
      return 0;
    }
    return n < kMaxDevices ? n : kMaxDevices;
  }();
  return count;
}

void check_device(int device, const char* what) {
  LATHE_CHECK(device >= 0 && device < device_count(), what, ": device cuda:", device,
              " does not exist (", device_count(), " cuda devices)");
}

const DeviceProperties& device_properties(int device) {
  check_device(device, "device_properties");
  static std::once_flag once;
  static std::vector<DeviceProperties> all;
  std::call_once(once, [] {
    all.resize(size_t(device_count()));
    for (int d = 0; d < device_count(); ++d) {
      cudaDeviceProp prop{};
      LATHE_CUDA_CHECK(cudaGetDeviceProperties(&prop, d));
      DeviceProperties& p = all[size_t(d)];
      p.name = prop.name;
      p.simulated = false;
      p.compute_major = prop.major;
      p.compute_minor = prop.minor;
      p.multiprocessor_count = prop.multiProcessorCount;
      p.max_threads_per_block = prop.maxThreadsPerBlock;
      p.warp_size = prop.warpSize;
      p.total_memory = prop.totalGlobalMem;
      p.max_shared_memory_per_block = prop.sharedMemPerBlockOptin;
      p.l2_cache_bytes = size_t(prop.l2CacheSize);
    }
  });
  return all[size_t(device)];
}

std::string describe_device(int device) {
  const DeviceProperties& p = device_properties(device);
  char memory[32];
  std::snprintf(memory, sizeof memory, "%.1f GiB", double(p.total_memory) / double(1ull << 30));
  return "cuda:" + std::to_string(device) + " (" + p.name + ", sm_" +
         std::to_string(p.compute_major * 10 + p.compute_minor) + ", " +
         std::to_string(p.multiprocessor_count) + " SMs, " + memory + ")";
}

int current_device() {
  int d = 0;
  LATHE_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int device) {
  check_device(device, "set_device");
  // cudaSetDevice is not free (it may initialize the device's context), and ops call this before
  // each kernel: skip it when the device is current already.
  if (current_device() != device) LATHE_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::DeviceGuard(int device) : previous_(current_device()) {
  set_device(device);
}

DeviceGuard::~DeviceGuard() {
  if (current_device() != previous_) (void)cudaSetDevice(previous_);
}

void device_synchronize(int device) {
  DeviceGuard on_device(device);
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  LATHE_CUDA_CHECK(cudaDeviceSynchronize());
}

void* raw_malloc(size_t bytes, int device) {
  DeviceGuard on_device(device);
  void* p = nullptr;
  cudaError_t status = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (status == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky, but keep cudaGetLastError clean for launch checks
    return nullptr;
  }
  LATHE_CUDA_CHECK(status);
  return p;
}

void raw_free(void* ptr, int device) {
  if (!ptr) return;
  DeviceGuard on_device(device);
  LATHE_CUDA_CHECK(cudaFree(ptr));
}

void memory_info(int device, size_t* free_bytes, size_t* total_bytes) {
  DeviceGuard on_device(device);
  size_t f = 0, t = 0;
  LATHE_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  if (free_bytes) *free_bytes = f;
  if (total_bytes) *total_bytes = t;
}

cudaStream_t stream_create(int device, bool blocking) {
  DeviceGuard on_device(device);
  cudaStream_t s = nullptr;
  LATHE_CUDA_CHECK(
      cudaStreamCreateWithFlags(&s, blocking ? cudaStreamDefault : cudaStreamNonBlocking));
  return s;
}

void stream_destroy(cudaStream_t stream) {
  if (stream) LATHE_CUDA_CHECK(cudaStreamDestroy(stream));
}

void stream_synchronize(cudaStream_t stream) {
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  LATHE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

namespace {
// cudaStreamQuery / cudaEventQuery: cudaErrorNotReady means "not yet", not a failure.
bool completed(cudaError_t status, const char* expr) {
  if (status == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  if (status != cudaSuccess) throw_error(status, expr, __FILE__, __LINE__);
  return true;
}
}  // namespace

bool stream_query(cudaStream_t stream) {
  return completed(cudaStreamQuery(stream), "cudaStreamQuery(stream)");
}

cudaStream_t current_stream(int device) {
  if (device < 0) device = current_device();
  check_device(device, "current_stream");
  return t_current_stream[size_t(device)];
}

void set_current_stream(cudaStream_t stream, int device) {
  if (device < 0) device = current_device();
  check_device(device, "set_current_stream");
#if CUDART_VERSION >= 12080
  // Kernels queued on another device's stream fail at launch with an unhelpful status; say which
  // stream and device here instead (the simulator checks the same). The legacy and per-thread
  // default streams are handles every device shares.
  if (stream != nullptr && stream != cudaStreamLegacy && stream != cudaStreamPerThread) {
    int stream_device = -1;
    LATHE_CUDA_CHECK(cudaStreamGetDevice(stream, &stream_device));
    LATHE_CHECK(stream_device == device, "set_current_stream: a stream of cuda:", stream_device,
                " cannot be the current stream of cuda:", device);
  }
#endif
  t_current_stream[size_t(device)] = stream;
}

StreamGuard::StreamGuard(cudaStream_t stream, int device)
    : device_(device < 0 ? current_device() : device), previous_(current_stream(device_)) {
  set_current_stream(stream, device_);
}

StreamGuard::~StreamGuard() {
  t_current_stream[size_t(device_)] = previous_;
}

cudaEvent_t event_create(int device, bool timing) {
  DeviceGuard on_device(device);
  cudaEvent_t e = nullptr;
  LATHE_CUDA_CHECK(
      cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
  return e;
}

void event_destroy(cudaEvent_t event) {
  if (event) LATHE_CUDA_CHECK(cudaEventDestroy(event));
}

void event_record(cudaEvent_t event, cudaStream_t stream) {
  // On a capturing stream this records a point of the capture that other streams may wait for
  // (CUDA's fork and join). lathe's own users of events (the allocator, the staging uploads) never
  // record on a capturing stream: they would query the event later, which CUDA refuses.
  LATHE_CUDA_CHECK(cudaEventRecord(event, stream));
}

bool event_query(cudaEvent_t event) {
  return completed(cudaEventQuery(event), "cudaEventQuery(event)");
}

void event_synchronize(cudaEvent_t event) {
  g_host_waits.fetch_add(1, std::memory_order_relaxed);
  LATHE_CUDA_CHECK(cudaEventSynchronize(event));
}

void stream_wait_event(cudaStream_t stream, cudaEvent_t event) {
  LATHE_CUDA_CHECK(cudaStreamWaitEvent(stream, event, 0));
}

float event_elapsed_ms(cudaEvent_t start, cudaEvent_t end) {
  float ms = 0;
  LATHE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, end));
  return ms;
}

void stream_begin_capture(cudaStream_t stream) {
  LATHE_CHECK(stream != nullptr, "stream_begin_capture: the legacy default stream cannot capture");
  LATHE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
}

cudaGraphExec_t stream_end_capture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  LATHE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);  // the executable graph is a copy
  LATHE_CUDA_CHECK(status);
  return exec;
}

bool stream_is_capturing(cudaStream_t stream) {
  if (stream == nullptr) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  LATHE_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

void graph_launch(cudaGraphExec_t graph, cudaStream_t stream) {
  LATHE_CUDA_CHECK(cudaGraphLaunch(graph, stream));
}

void graph_destroy(cudaGraphExec_t graph) {
  if (graph) LATHE_CUDA_CHECK(cudaGraphExecDestroy(graph));
}

namespace {
cudaMemcpyKind to_cuda(CopyKind kind) {
  switch (kind) {
    case CopyKind::HostToDevice:
      return cudaMemcpyHostToDevice;
    case CopyKind::DeviceToHost:
      return cudaMemcpyDeviceToHost;
    case CopyKind::DeviceToDevice:
      return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}
}  // namespace

void memcpy_async(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream) {
  if (bytes == 0) return;
  LATHE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, to_cuda(kind), stream));
}

void memcpy_sync(void* dst, const void* src, size_t bytes, CopyKind kind, cudaStream_t stream) {
  memcpy_async(dst, src, bytes, kind, stream);
  stream_synchronize(stream);
}

void memset_async(void* dst, int byte_value, size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return;
  LATHE_CUDA_CHECK(cudaMemsetAsync(dst, byte_value, bytes, stream));
}

uint64_t host_waits() {
  return g_host_waits.load(std::memory_order_relaxed);
}

void* host_alloc_mapped(size_t bytes) {
  void* host = nullptr;
  LATHE_CUDA_CHECK(cudaHostAlloc(&host, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(host, 0, bytes);
  void* device = nullptr;
  LATHE_CUDA_CHECK(cudaHostGetDevicePointer(&device, host, 0));
  LATHE_CHECK(device == host, "host_alloc_mapped: the device address of mapped host memory ",
              device, " differs from its host address ", host, " (no unified addressing)");
  return host;
}

void host_free_mapped(void* host) {
  if (host) LATHE_CUDA_CHECK(cudaFreeHost(host));
}

namespace detail {

namespace {

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
using GetErrorName = CUresult (*)(CUresult, const char**);

// A driver function by name, for the ABI of the CUDA version given (12000: the first with tensor
// maps), without linking libcuda.
void* driver_function(const char* name, unsigned version) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  LATHE_CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &found));
  LATHE_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr, "the CUDA driver has no ",
              name, " (query result ", int(found), "); tensor maps need a CUDA 12 or newer driver");
  return fn;
}

CUtensorMapDataType driver_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return CU_TENSOR_MAP_DATA_TYPE_FLOAT32;
    case DType::F64:
      return CU_TENSOR_MAP_DATA_TYPE_FLOAT64;
    case DType::F16:
      return CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    case DType::BF16:
      return CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    case DType::I32:
      return CU_TENSOR_MAP_DATA_TYPE_INT32;
    case DType::I64:
      return CU_TENSOR_MAP_DATA_TYPE_INT64;
    case DType::Bool:
      return CU_TENSOR_MAP_DATA_TYPE_UINT8;
  }
  return CU_TENSOR_MAP_DATA_TYPE_UINT8;
}

}  // namespace

TensorMap encode_tensor_map(const TensorMapArgs& a) {
  // CUDA 13 declares CUtensorMap 128-byte aligned, CUDA 12 64: ours (128) must be at least as
  // strict for the driver to write one in place.
  static_assert(
      sizeof(TensorMap) == sizeof(CUtensorMap) && alignof(TensorMap) % alignof(CUtensorMap) == 0,
      "cuda::TensorMap must be layout-compatible with CUtensorMap");
  static const auto encode =
      reinterpret_cast<EncodeTiled>(driver_function("cuTensorMapEncodeTiled", 12000));
  cuuint64_t sizes[3], strides[2];
  cuuint32_t box[3], element_strides[3] = {1, 1, 1};
  for (int d = 0; d < a.rank; ++d) {
    sizes[d] = a.sizes[d];
    box[d] = a.box[d];
    if (d > 0) strides[d - 1] = a.strides[d];
  }
  TensorMap map{};
  const CUresult status = encode(
      reinterpret_cast<CUtensorMap*>(&map), driver_dtype(a.dtype), cuuint32_t(a.rank),
      const_cast<void*>(a.base), sizes, strides, box, element_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE,
      a.swizzle == TensorMapSwizzle::B128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
      // 256-byte L2 promotion, as CUTLASS's and DeepGEMM's maps use: a box row is 128 bytes (64
      // bf16), and at d = 128 the row's other half is the next box the producer loads.
      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) {
    const char* name = "unknown CUresult";
    static const auto error_name =
        reinterpret_cast<GetErrorName>(driver_function("cuGetErrorName", 12000));
    error_name(status, &name);
    LATHE_FAIL("cuTensorMapEncodeTiled failed with ", name, " (", int(status), ") for a rank-",
               a.rank, " ", dtype_name(a.dtype), " tensor at ", a.base, ", sizes {", a.sizes[0],
               ", ", a.sizes[1], ", ", a.sizes[2], "}, strides {", a.strides[1], ", ", a.strides[2],
               "} bytes, box {", a.box[0], ", ", a.box[1], ", ", a.box[2], "}, swizzle ",
               a.swizzle == TensorMapSwizzle::B128 ? "128B" : "none",
               " (the arguments passed lathe's checks of the documented constraints)");
  }
  return map;
}

}  // namespace detail

}  // namespace lathe::cuda
