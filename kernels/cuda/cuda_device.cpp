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

#include <cstdio>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_report.h"
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
    rt::device_allocator(index).deallocate(ptr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe: %s\n", e.what());
  }
}

// Copies up to this size go through upload_async's pinned staging blocks: a batch of token ids
// (32 x 512 i64 is 128 KiB) then reaches the device without a host wait. Larger copies (weights,
// datasets) wait rather than hold that much pinned memory.
constexpr size_t kStagedCopyBytes = size_t(1) << 20;

void cuda_copy_from_host(void* dst, const void* src, size_t nbytes, int index) {
  // On the legacy default stream a copy is ordered after the kernels of the *current* device: make
  // the memory's device current (also for the staging block's event, which belongs to it).
  const rt::DeviceGuard on_device(index);
  if (nbytes <= kStagedCopyBytes) {
    rt::upload_async(dst, src, nbytes, rt::current_stream(index));
    return;
  }
  rt::memcpy_sync(dst, src, nbytes, rt::CopyKind::HostToDevice, rt::current_stream(index));
  cuda::raise_device_report();
}

void cuda_copy_to_host(void* dst, const void* src, size_t nbytes, int index) {
  const rt::DeviceGuard on_device(index);
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

}  // namespace

const DeviceApi& cuda_device_api() {
  static const DeviceApi api{cuda_allocate,     cuda_deallocate,  cuda_copy_from_host,
                             cuda_copy_to_host, cuda_synchronize, cuda_count,
                             cuda_memory_stats, cuda_empty_cache, cuda_reset_peak,
                             cuda_set_current,  cuda_current};
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
