// The cuda device as core/ sees it: a DeviceApi (memory from the caching allocator, copies through
// the runtime on the thread's current stream) and the KernelTable of the cuda kernels. The same
// file serves the real and the simulated build; only runtime_*.cpp differs.
//
// copy_to_host waits for the stream before returning: its caller reads the data at once.
// copy_from_host's host buffer may be a temporary freed right after the call: small copies are
// staged in pinned memory first and queued without a wait (upload.h), larger ones wait.
// Kernels run on the current device, which the op layer sets to their tensors' device
// (kernel_table(Device)); the memory functions here take the device and leave the current one as
// it was.
// Every wait here raises the errors that kernels found in their data meanwhile
// (device_report.h).
#include "kernels/cuda/cuda_device.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <mutex>
#include <vector>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_report.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/upload.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe::kernels {

namespace {

namespace rt = ::lathe::cuda;

void* cuda_allocate(size_t nbytes, int index) {
  return rt::device_allocator(index).allocate(nbytes, rt::current_stream(index));
}

void cuda_deallocate(void* ptr, size_t, int index) {
  // Called from Storage's destructor: report instead of throwing through it.
  try {
    // Memory dropped while a created stream other than its own is current was most likely last
    // used there: keep it from reuse on its own stream until that stream's work so far has
    // completed (an event; nothing when the streams are the same). The legacy stream needs no
    // record for a blocking stream's block, which waits for it anyway; other cases need
    // record_stream. No driver call on the common path (the legacy stream current), so frees at
    // exit stay quiet.
    rt::CachingAllocator& allocator = rt::device_allocator(index);
    if (cudaStream_t current = rt::current_stream(index)) {
      allocator.deallocate(ptr, current);
    } else {
      allocator.deallocate(ptr);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe: %s\n", e.what());
  }
}

// Copies up to this size go through upload_async's pinned staging blocks: a batch of token ids
// (32 x 512 i64 is 128 KiB) then reaches the device without a host wait. Larger copies (weights,
// datasets) wait rather than hold that much pinned memory.
constexpr size_t kStagedCopyBytes = size_t(1) << 20;

// Host copies inside a graph capture: the graph would read or write the host buffer at each replay,
// long after the caller's buffer is gone, and a copy to the host is a host wait, which a capture
// refuses anyway; say so in lathe's terms.
void refuse_in_capture(cudaStream_t stream, const char* what) {
  LATHE_CHECK(!rt::stream_is_capturing(stream), what,
              " inside CudaGraph::capture: a graph holds device work only (copy the inputs before "
              "the capture or replay, read the outputs after it)");
}

void cuda_copy_from_host(void* dst, const void* src, size_t nbytes, int index) {
  // On the legacy default stream a copy is ordered after the kernels of the *current* device: make
  // the memory's device current (also for the staging block's event, which belongs to it).
  const rt::DeviceGuard on_device(index);
  refuse_in_capture(rt::current_stream(index), "a copy from host memory (from_vector, to(cuda))");
  if (nbytes <= kStagedCopyBytes) {
    rt::upload_async(dst, src, nbytes, rt::current_stream(index));
    return;
  }
  rt::memcpy_sync(dst, src, nbytes, rt::CopyKind::HostToDevice, rt::current_stream(index));
  cuda::raise_device_report();
}

void cuda_copy_to_host(void* dst, const void* src, size_t nbytes, int index) {
  const rt::DeviceGuard on_device(index);
  refuse_in_capture(rt::current_stream(index), "a copy to the host (Tensor::to(cpu), item())");
  rt::memcpy_sync(dst, src, nbytes, rt::CopyKind::DeviceToHost, rt::current_stream(index));
  cuda::raise_device_report();
}

void cuda_synchronize(int index) {
  rt::device_synchronize(index);
  cuda::raise_device_report();
}

int cuda_count() {
  return rt::device_count();
}

MemoryStats cuda_memory_stats(int index) {
  const rt::AllocatorStats s = rt::device_allocator(index).stats();
  MemoryStats m;
  m.allocated_bytes = s.allocated_bytes;
  m.reserved_bytes = s.reserved_bytes;
  m.peak_allocated_bytes = s.peak_allocated_bytes;
  m.allocations = s.allocations;
  m.cache_hits = s.cache_hits;
  return m;
}
void cuda_empty_cache(int index) {
  rt::device_allocator(index).empty_cache();
  rt::upload_release_idle(index);
}
void cuda_reset_peak(int index) {
  rt::device_allocator(index).reset_peak_stats();
}
void cuda_set_current(int index) {
  rt::set_device(index);
}
int cuda_current() {
  return rt::current_device();
}

// ---- streams and events (lathe/core/stream.h) ----

// Streams handed to lathe::Stream::create come from a pool per device and kind, handed out in
// turn and never destroyed (as PyTorch's stream pool): a Stream is then a plain value, and the
// caching allocator, whose pools are keyed by stream handle, never sees a handle die and be
// reused by a new stream while blocks still belong to it.
constexpr int kPoolStreams = 32;
constexpr int kMaxPoolDevices = 64;

struct StreamPool {
  std::mutex mutex;
  std::vector<cudaStream_t> streams[2];  // [blocking]
  size_t next[2] = {0, 0};
};

StreamPool& stream_pool(int index) {
  // Never destroyed, like the streams: at exit the handles stay reachable (no leak report) and the
  // CUDA runtime may already be unloaded.
  static StreamPool* pools = new StreamPool[kMaxPoolDevices];
  return pools[index];
}

void* cuda_pooled_stream(int index, bool blocking) {
  rt::check_device(index, "Stream::create");
  LATHE_CHECK(index < kMaxPoolDevices, "Stream::create: cuda:", index, " is beyond the ",
              kMaxPoolDevices, " devices the stream pool serves");
  StreamPool& pool = stream_pool(index);
  std::lock_guard<std::mutex> lock(pool.mutex);
  std::vector<cudaStream_t>& kind = pool.streams[blocking ? 1 : 0];
  size_t& next = pool.next[blocking ? 1 : 0];
  if (kind.size() < size_t(kPoolStreams)) kind.push_back(rt::stream_create(index, blocking));
  cudaStream_t s = kind[next % kind.size()];
  ++next;
  return s;
}

bool cuda_stream_blocking(void* stream, int index) {
  if (index < 0 || index >= kMaxPoolDevices) return false;
  StreamPool& pool = stream_pool(index);
  std::lock_guard<std::mutex> lock(pool.mutex);
  const std::vector<cudaStream_t>& blocking = pool.streams[1];
  return std::find(blocking.begin(), blocking.end(), stream) != blocking.end();
}

void* cuda_current_stream(int index) {
  return rt::current_stream(index);
}
void cuda_set_current_stream(void* stream, int index) {
  rt::set_current_stream(static_cast<cudaStream_t>(stream), index);
}
void cuda_stream_synchronize(void* stream, int index) {
  const rt::DeviceGuard on_device(index);  // the legacy stream is the current device's
  rt::stream_synchronize(static_cast<cudaStream_t>(stream));
  cuda::raise_device_report();
}
bool cuda_stream_query(void* stream, int index) {
  const rt::DeviceGuard on_device(index);
  return rt::stream_query(static_cast<cudaStream_t>(stream));
}
void* cuda_event_create(int index, bool timing) {
  return rt::event_create(index, timing);
}
void cuda_event_destroy(void* event) {
  rt::event_destroy(static_cast<cudaEvent_t>(event));
}
void cuda_event_record(void* event, void* stream, int index) {
  const rt::DeviceGuard on_device(index);
  rt::event_record(static_cast<cudaEvent_t>(event), static_cast<cudaStream_t>(stream));
}
bool cuda_event_query(void* event) {
  return rt::event_query(static_cast<cudaEvent_t>(event));
}
void cuda_event_synchronize(void* event, int) {
  rt::event_synchronize(static_cast<cudaEvent_t>(event));
  cuda::raise_device_report();
}
void cuda_stream_wait_event(void* stream, void* event, int index) {
  const rt::DeviceGuard on_device(index);
  rt::stream_wait_event(static_cast<cudaStream_t>(stream), static_cast<cudaEvent_t>(event));
}
float cuda_event_elapsed_ms(void* start, void* end) {
  return rt::event_elapsed_ms(static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end));
}
bool cuda_record_stream(void* ptr, void* stream, int index) {
  rt::CachingAllocator& allocator = rt::device_allocator(index);
  if (!allocator.owns(ptr)) return false;
  allocator.record_stream(ptr, static_cast<cudaStream_t>(stream));
  return true;
}

// ---- graphs (lathe/core/cuda_graph.h) ----

// Captures run on streams of their own, non-blocking (a legacy-stream operation of another thread
// would otherwise have to wait for a capturing stream, which CUDA refuses), kept for the next
// capture when one ends and never destroyed, like the pool's. Several threads may capture at once.
struct CaptureStreams {
  std::mutex mutex;
  std::vector<cudaStream_t> idle[kMaxPoolDevices];
};

CaptureStreams& capture_streams() {
  static CaptureStreams* streams = new CaptureStreams;  // never destroyed, as stream_pool
  return *streams;
}

void* cuda_capture_begin(int index, void** pool) {
  rt::check_device(index, "CudaGraph::capture");
  LATHE_CHECK(index < kMaxPoolDevices, "CudaGraph::capture: cuda:", index, " is beyond the ",
              kMaxPoolDevices, " devices served");
  cudaStream_t stream = nullptr;
  {
    CaptureStreams& streams = capture_streams();
    std::lock_guard<std::mutex> lock(streams.mutex);
    std::vector<cudaStream_t>& idle = streams.idle[index];
    if (!idle.empty()) {
      stream = idle.back();
      idle.pop_back();
    }
  }
  if (stream == nullptr) stream = rt::stream_create(index, false);
  const rt::DeviceGuard on_device(index);
  const bool new_pool = *pool == nullptr;
  cudaStream_t private_pool =
      new_pool ? rt::CachingAllocator::new_private_pool() : static_cast<cudaStream_t>(*pool);
  rt::CachingAllocator& allocator = rt::device_allocator(index);
  allocator.begin_private_pool(stream, private_pool);
  try {
    rt::stream_begin_capture(stream);
  } catch (...) {
    allocator.end_private_pool(stream);
    if (new_pool) allocator.release_private_pool(private_pool);
    std::lock_guard<std::mutex> lock(capture_streams().mutex);
    capture_streams().idle[index].push_back(stream);
    throw;
  }
  *pool = private_pool;
  return stream;
}

void* cuda_capture_end(void* stream_handle, int index, bool keep) {
  const rt::DeviceGuard on_device(index);
  auto stream = static_cast<cudaStream_t>(stream_handle);
  // The workspace the captured GEMMs use is the graph's (from its pool); the stream's next
  // capture takes its own.
  rt::forget_workspace(index, stream);
  cudaGraphExec_t graph = nullptr;
  std::exception_ptr failure;
  try {
    graph = rt::stream_end_capture(stream);
  } catch (...) {
    failure = std::current_exception();
  }
  rt::device_allocator(index).end_private_pool(stream);
  {
    std::lock_guard<std::mutex> lock(capture_streams().mutex);
    capture_streams().idle[index].push_back(stream);
  }
  if (failure) std::rethrow_exception(failure);
  if (!keep) {
    rt::graph_destroy(graph);
    return nullptr;
  }
  return graph;
}

void cuda_graph_launch(void* graph, void* stream, int index) {
  const rt::DeviceGuard on_device(index);
  rt::graph_launch(static_cast<cudaGraphExec_t>(graph), static_cast<cudaStream_t>(stream));
}

void cuda_graph_destroy(void* graph, int index) {
  const rt::DeviceGuard on_device(index);
  rt::graph_destroy(static_cast<cudaGraphExec_t>(graph));
}

void cuda_release_pool(void* pool, int index) {
  rt::device_allocator(index).release_private_pool(static_cast<cudaStream_t>(pool));
}

void cuda_capture_join(void* stream, void* pool, int index) {
  LATHE_CHECK(stream != nullptr, "CudaGraph::capture: the default stream of cuda:", index,
              " cannot join a capture; fork a created stream into it (Stream::create)");
  const rt::DeviceGuard on_device(index);
  rt::device_allocator(index).begin_private_pool(static_cast<cudaStream_t>(stream),
                                                 static_cast<cudaStream_t>(pool));
}

void cuda_capture_leave(void* stream, int index) {
  const rt::DeviceGuard on_device(index);
  auto s = static_cast<cudaStream_t>(stream);
  rt::forget_workspace(index, s);  // the graph's GEMMs on this stream used it
  rt::device_allocator(index).end_private_pool(s);
}

const StreamApi& cuda_stream_api() {
  static const StreamApi api{
      cuda_pooled_stream,      cuda_stream_blocking,    cuda_current_stream,
      cuda_set_current_stream, cuda_stream_synchronize, cuda_stream_query,
      cuda_event_create,       cuda_event_destroy,      cuda_event_record,
      cuda_event_query,        cuda_event_synchronize,  cuda_stream_wait_event,
      cuda_event_elapsed_ms,   cuda_record_stream,      cuda_capture_begin,
      cuda_capture_end,        cuda_graph_launch,       cuda_graph_destroy,
      cuda_release_pool,       cuda_capture_join,       cuda_capture_leave};
  return api;
}

}  // namespace

const DeviceApi& cuda_device_api() {
  static const DeviceApi api{cuda_allocate,     cuda_deallocate,  cuda_copy_from_host,
                             cuda_copy_to_host, cuda_synchronize, cuda_count,
                             cuda_memory_stats, cuda_empty_cache, cuda_reset_peak,
                             cuda_set_current,  cuda_current,     &cuda_stream_api()};
  return api;
}

const KernelTable& cuda_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t;
    t.copy = cuda::copy;
    t.fill = cuda::fill;
    t.unary = cuda::unary;
    t.unary_backward = cuda::unary_backward;
    t.binary = cuda::binary;
    t.where = cuda::where;
    t.reduce = cuda::reduce;
    t.arg_reduce = cuda::arg_reduce;
    t.gemm = cuda::gemm;
    t.index_select = cuda::index_select;
    t.index_add = cuda::index_add;
    t.gather = cuda::gather;
    t.scatter_add = cuda::scatter_add;
    t.random = cuda::random;
    t.dropout = cuda::dropout;
    t.softmax_forward = cuda::softmax_forward;
    t.softmax_backward = cuda::softmax_backward;
    t.layer_norm_forward = cuda::layer_norm_forward;
    t.layer_norm_backward = cuda::layer_norm_backward;
    t.add_layer_norm_forward = cuda::add_layer_norm_forward;
    t.bias_gelu_forward = cuda::bias_gelu_forward;
    t.bias_gelu_backward = cuda::bias_gelu_backward;
    t.cross_entropy_forward = cuda::cross_entropy_forward;
    t.cross_entropy_backward = cuda::cross_entropy_backward;
    t.attention_forward = cuda::attention_forward;
    t.attention_backward = cuda::attention_backward;
    t.adamw = cuda::adamw;
    t.embedding_backward = cuda::embedding_backward;
    t.multi_tensor_norm = cuda::multi_tensor_norm;
    t.multi_tensor_scale = cuda::multi_tensor_scale;
    return t;
  }();
  return table;
}

}  // namespace lathe::kernels
