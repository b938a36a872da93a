// Norms and in-place scaling of many tensors in one or two launches (gradient clipping over a
// BERT's ~200 parameters was 600 launches: a square, a sum and a cast per tensor). The host lays
// the tensors out as a list of chunks (at most `chunk` elements each) in one device buffer; the
// norm takes one block per chunk writing an f64 partial (a fixed shuffle tree), then one block
// per tensor merging its chunks' partials (a fixed tree again), so results are deterministic and
// identical under every simulator schedule. The cpu kernels (kernels/cpu/multi_tensor.cpp) sum a
// chunk in element order instead, so the two agree to f64 rounding.
// Nothing here makes the host wait (a training step must not): the chunk tables travel through
// upload_async's pinned staging, the norms stay in device memory, and the scaling coefficient is
// read from device memory by the kernel itself.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/upload.h"

namespace lathe::kernels::cuda {

namespace {

constexpr int64_t kDefaultChunk = 65536;

enum class NormKind : int { Sum, SumSquares, Max, Power };

struct DeviceChunk {
  void* data;
  int64_t begin, size;
  int32_t dtype;  // 0 f32, 1 f64, 2 f16, 3 bf16
  int32_t tensor;
};

LATHE_DEVICE_INLINE double merge(double a, double b, NormKind kind) {
  if (kind != NormKind::Max) return a + b;
  if (a != a || b != b) return a != a ? a : b;  // NaN wins
  return a > b ? a : b;
}

LATHE_DEVICE_INLINE double element_term(double a, NormKind kind, double p) {
  switch (kind) {
    case NormKind::SumSquares:
      return a * a;
    case NormKind::Power:
      return pow(a, p);
    default:
      return a;  // Sum and Max use |x| itself
  }
}

template <class T>
LATHE_DEVICE_INLINE double thread_partial(const DeviceChunk& c, NormKind kind, double p) {
  const T* x = static_cast<const T*>(c.data) + c.begin;
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < c.size; i += blockDim.x) {
    const double a = fabs(convert<double>(x[i]));
    acc = merge(acc, element_term(a, kind, p), kind);
  }
  return acc;
}

// A fixed-order combination over the block (a multiple of 32 threads); valid in thread 0.
LATHE_DEVICE_INLINE double block_merge(double v, NormKind kind, double* scratch) {
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int warps = int(blockDim.x) / 32;
  for (int offset = 16; offset > 0; offset /= 2) {
    v = merge(v, __shfl_down_sync(0xffffffffu, v, offset), kind);
  }
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      v = merge(v, __shfl_down_sync(0xffffffffu, v, offset), kind);
    }
  }
  __syncthreads();
  return v;
}

__global__ void norm_partials(const DeviceChunk* chunks, int64_t n, int kind_code, double p,
                              double* partial) {
  __shared__ double scratch[32];
  const auto kind = NormKind(kind_code);
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const DeviceChunk c = chunks[i];
    double acc;
    switch (c.dtype) {
      case 0:
        acc = thread_partial<float>(c, kind, p);
        break;
      case 1:
        acc = thread_partial<double>(c, kind, p);
        break;
      case 2:
        acc = thread_partial<__half>(c, kind, p);
        break;
      default:
        acc = thread_partial<__nv_bfloat16>(c, kind, p);
        break;
    }
    acc = block_merge(acc, kind, scratch);
    if (threadIdx.x == 0) partial[i] = acc;
  }
}

// Block per tensor: its chunks are partial[first[k] .. first[k] + count[k]).
__global__ void norm_merge(const double* partial, const int64_t* first, const int64_t* count,
                           int64_t tensors, int kind_code, double* norms) {
  __shared__ double scratch[32];
  const auto kind = NormKind(kind_code);
  for (int64_t k = blockIdx.x; k < tensors; k += gridDim.x) {
    double acc = 0.0;
    for (int64_t j = threadIdx.x; j < count[k]; j += blockDim.x) {
      acc = merge(acc, partial[first[k] + j], kind);
    }
    acc = block_merge(acc, kind, scratch);
    if (threadIdx.x == 0) norms[k] = acc;
  }
}

// One thread: the norms combined in tensor order, the order the cpu kernel and the host loop this
// replaced use, so the total has the same bits on both devices. A few hundred loads.
__global__ void norm_total(const double* norms, int64_t tensors, int kind_code, double* total) {
  const auto kind = NormKind(kind_code);
  double acc = 0.0;
  for (int64_t k = 0; k < tensors; ++k) acc = merge(acc, norms[k], kind);
  *total = acc;
}

template <class T>
LATHE_DEVICE_INLINE void scale_chunk(const DeviceChunk& c, double scale) {
  T* x = static_cast<T*>(c.data) + c.begin;
  if constexpr (std::is_same_v<T, double>) {
    for (int64_t i = threadIdx.x; i < c.size; i += blockDim.x) x[i] = x[i] * scale;
  } else {
    const float s = float(scale);
    for (int64_t i = threadIdx.x; i < c.size; i += blockDim.x) {
      x[i] = convert<T>(convert<float>(x[i]) * s);
    }
  }
}

__global__ void scale_chunks(const DeviceChunk* chunks, int64_t n, const double* coef) {
  const double scale = *coef;
  if (scale >= 1.0) return;  // clipping leaves the tensors as they are; NaN goes on and poisons
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const DeviceChunk c = chunks[i];
    switch (c.dtype) {
      case 0:
        scale_chunk<float>(c, scale);
        break;
      case 1:
        scale_chunk<double>(c, scale);
        break;
      case 2:
        scale_chunk<__half>(c, scale);
        break;
      default:
        scale_chunk<__nv_bfloat16>(c, scale);
        break;
    }
  }
}

int32_t dtype_code(DType t, int64_t k, const char* op) {
  switch (t) {
    case DType::F32:
      return 0;
    case DType::F64:
      return 1;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 3;
    default:
      LATHE_CHECK(false, op, ": tensor ", k, " is ", t,
                  "; only f32, f64, f16 and bf16 are supported");
      return -1;
  }
}

// The chunk list on the host, and per tensor its first chunk and chunk count.
std::vector<DeviceChunk> make_chunks(const MultiTensor* tensors, int64_t count, int64_t chunk,
                                     const char* op, std::vector<int64_t>* first = nullptr,
                                     std::vector<int64_t>* counts = nullptr) {
  LATHE_CHECK(count >= 0 && (count == 0 || tensors), op, ": ", count, " tensors but no list");
  std::vector<DeviceChunk> chunks;
  for (int64_t k = 0; k < count; ++k) {
    const MultiTensor& t = tensors[k];
    LATHE_CHECK(t.numel >= 0 && (t.numel == 0 || t.data), op, ": tensor ", k,
                " has no data or a negative size (", t.numel, ")");
    const int32_t code = dtype_code(t.dtype, k, op);
    if (first) first->push_back(int64_t(chunks.size()));
    for (int64_t b = 0; b < t.numel; b += chunk) {
      chunks.push_back({t.data, b, std::min(chunk, t.numel - b), code, int32_t(k)});
    }
    if (counts) counts->push_back(int64_t(chunks.size()) - first->back());
  }
  return chunks;
}

unsigned grid_of(int64_t blocks) {
  return unsigned(blocks < 65535 ? (blocks < 1 ? 1 : blocks) : 65535);
}

// Appends the bytes of `values` to a host table that one upload_async sends to the device.
template <class T>
void append(std::vector<char>& table, const std::vector<T>& values) {
  const size_t at = table.size();
  table.resize(at + values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(table.data() + at, values.data(), values.size() * sizeof(T));
}

void multi_tensor_norm_kernel(const MultiTensorNormArgs& a) {
  LATHE_CHECK(a.norm_type > 0 && !std::isnan(a.norm_type),
              "multi_tensor_norm: norm_type must be positive, got ", a.norm_type);
  LATHE_CHECK(a.chunk >= 0, "multi_tensor_norm: chunk must be >= 0, got ", a.chunk);
  LATHE_CHECK(a.count == 0 || a.norms, "multi_tensor_norm: no output array");
  std::vector<int64_t> first, counts;
  const std::vector<DeviceChunk> chunks =
      make_chunks(a.tensors, a.count, a.chunk > 0 ? a.chunk : kDefaultChunk, "multi_tensor_norm",
                  &first, &counts);
  const cudaStream_t s = stream();
  if (a.count == 0) {
    if (a.total) rt::memset_async(a.total, 0, sizeof(double), s);  // all-zero bits are +0.0
    return;
  }
  const NormKind kind = std::isinf(a.norm_type) ? NormKind::Max
                        : a.norm_type == 2.0    ? NormKind::SumSquares
                        : a.norm_type == 1.0    ? NormKind::Sum
                                                : NormKind::Power;
  const int64_t n = int64_t(chunks.size());
  // Device scratch: chunks | first | counts (one upload) | partial[n].
  std::vector<char> table;
  append(table, chunks);
  append(table, first);
  append(table, counts);
  DeviceScratch scratch(table.size() + size_t(n) * sizeof(double));
  char* base = scratch.as<char>();
  rt::upload_async(base, table.data(), table.size(), s);
  const auto* d_chunks = reinterpret_cast<const DeviceChunk*>(base);
  const auto* d_first = reinterpret_cast<const int64_t*>(base + size_t(n) * sizeof(DeviceChunk));
  const int64_t* d_counts = d_first + a.count;
  auto* d_partial = reinterpret_cast<double*>(base + table.size());
  if (n > 0) {
    rt::launch(norm_partials, dim3(grid_of(n)), dim3(kThreads), 0, s, "multi_tensor_norm", d_chunks,
               n, int(kind), a.norm_type, d_partial);
  }
  rt::launch(norm_merge, dim3(grid_of(a.count)), dim3(kThreads), 0, s, "multi_tensor_norm",
             static_cast<const double*>(d_partial), d_first, d_counts, a.count, int(kind), a.norms);
  if (a.total) {
    rt::launch(norm_total, dim3(1), dim3(1), 0, s, "multi_tensor_norm",
               static_cast<const double*>(a.norms), a.count, int(kind), a.total);
  }
}

void multi_tensor_scale_kernel(const MultiTensor* tensors, int64_t count, const double* coef) {
  LATHE_CHECK(coef, "multi_tensor_scale: no coefficient");
  const std::vector<DeviceChunk> chunks =
      make_chunks(tensors, count, kDefaultChunk, "multi_tensor_scale");
  const int64_t n = int64_t(chunks.size());
  if (n == 0) return;
  DeviceScratch scratch(size_t(n) * sizeof(DeviceChunk));
  const cudaStream_t s = stream();
  rt::upload_async(scratch.as<DeviceChunk>(), chunks.data(), size_t(n) * sizeof(DeviceChunk), s);
  rt::launch(scale_chunks, dim3(grid_of(n)), dim3(kThreads), 0, s, "multi_tensor_scale",
             static_cast<const DeviceChunk*>(scratch.as<DeviceChunk>()), n, coef);
}

}  // namespace

extern const MultiTensorNormFn multi_tensor_norm = multi_tensor_norm_kernel;
extern const MultiTensorScaleFn multi_tensor_scale = multi_tensor_scale_kernel;

}  // namespace lathe::kernels::cuda
