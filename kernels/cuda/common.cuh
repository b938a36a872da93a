// Shared by the cuda kernel families (kernels/cuda/*.cu): element types, conversions, strided
// indexing and launch sizing. Everything here compiles under nvcc and, through kernels/sim/sim.h,
// under g++ for the simulator.
//
// - Element types: lathe::Half / lathe::BFloat16 (host storage types) map to __half /
//   __nv_bfloat16 on the device. Conversions go through float and round to nearest even like
//   lathe's host types, and NaNs are encoded exactly as half.h encodes them (cuda_fp16's
//   conversions return a canonical 0x7fff NaN instead), so casts give identical bits on both
//   devices for every input.
// - Strided operands: an OffsetCalc<N> (sizes and per-operand strides of the coalesced iteration
//   shape, by value in the kernel parameters) maps a row-major flat index to N element offsets.
//   Dims of size 1 are dropped and dims every operand walks as one run are merged, so most
//   strided views cost one or two div/mod per element.
// - Launch sizing: grid-stride loops over at most a few blocks per SM, so a launch on the
//   simulator (~10 us per block) stays cheap and a GPU is still filled.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/allocator.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/runtime.h"
#include "kernels/kernel_api.h"
#include "lathe/core/dtype.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#define LATHE_DEVICE_INLINE __device__ __forceinline__
#define LATHE_HD_INLINE __host__ __device__ __forceinline__

namespace lathe::kernels::cuda {

namespace rt = ::lathe::cuda;

// ---- element types ----

template <class T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<Half> {
  using type = __half;
};
template <>
struct DeviceTypeOf<BFloat16> {
  using type = __nv_bfloat16;
};
// The device storage type of a host element type (Half -> __half, others unchanged).
template <class T>
using device_t = typename DeviceTypeOf<T>::type;

template <class T>
inline constexpr bool is_half_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// The type arithmetic on T is done in: float for the 16-bit floats, T otherwise.
template <class T>
using compute_t = std::conditional_t<is_half_v<T>, float, T>;

LATHE_DEVICE_INLINE float half_to_float(__half h) {
  const uint16_t bits = __half_raw(h).x;
  if ((bits & 0x7c00u) == 0x7c00u && (bits & 0x3ffu) != 0) {  // NaN: keep sign and payload
    return __uint_as_float((uint32_t(bits & 0x8000u) << 16) | 0x7f800000u |
                           (uint32_t(bits & 0x3ffu) << 13));
  }
  return __half2float(h);
}
LATHE_DEVICE_INLINE __half float_to_half(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    __half_raw raw;
    raw.x = uint16_t(((u >> 16) & 0x8000u) | 0x7e00u);
    return __half(raw);
  }
  return __float2half_rn(f);
}
LATHE_DEVICE_INLINE float bf16_to_float(__nv_bfloat16 b) {
  return __uint_as_float(uint32_t(__nv_bfloat16_raw(b).x) << 16);
}
LATHE_DEVICE_INLINE __nv_bfloat16 float_to_bf16(float f) {
  const uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    __nv_bfloat16_raw raw;
    raw.x = uint16_t((u >> 16) | 0x40u);
    return __nv_bfloat16(raw);
  }
  return __float2bfloat16_rn(f);
}

// Converts like the cpu backend's convert<To>(From) (kernels/cpu/strided_loop.h): 16-bit floats
// through float, bool as v != 0, everything else a static_cast.
template <class To, class From>
LATHE_DEVICE_INLINE To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (std::is_same_v<From, __half>) {
    return convert<To>(half_to_float(v));
  } else if constexpr (std::is_same_v<From, __nv_bfloat16>) {
    return convert<To>(bf16_to_float(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return float_to_half(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return float_to_bf16(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != From(0);
  } else {
    return static_cast<To>(v);
  }
}

// Floats rounded to f16/bf16 in pairs. On sm_80 and later two floats become one
// cvt.rn.{f16x2,bf16x2}.f32 (round to nearest even, like __float2half_rn / __float2bfloat16_rn),
// whose 32-bit result is the pair as stored (element 2k in the low half): convert's per-element
// NaN check and select took about six instructions per element, a third of the bf16 layer norm's
// instruction count (Nsight Compute showed those kernels bound by instruction issue,
// docs/benchmarks.md). The hardware rounds a NaN to the canonical one, so round_pairs reports a
// pack holding a NaN and the callers redo it element by element with convert, which keeps
// payloads as on the cpu. The simulator (no __CUDA_ARCH__) always runs convert.
inline constexpr bool kPairRounding =
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    true;
#else
    false;
#endif

// words[k] = in[2k] and in[2k + 1] rounded to To (f16 or bf16); false if any of them is NaN.
// Only called where kPairRounding holds.
template <class To, int K>
LATHE_DEVICE_INLINE bool round_pairs(const float* in, uint32_t (&words)[K]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  bool nan = false;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    if constexpr (std::is_same_v<To, __nv_bfloat16>) {
      const __nv_bfloat162 r = __floats2bfloat162_rn(in[2 * k], in[2 * k + 1]);
      memcpy(&words[k], &r, 4);
    } else {
      const __half2 r = __floats2half2_rn(in[2 * k], in[2 * k + 1]);
      memcpy(&words[k], &r, 4);
    }
    nan |= (in[2 * k] != in[2 * k]) | (in[2 * k + 1] != in[2 * k + 1]);
  }
  return !nan;
#else
  (void)in;
  (void)words;
  return false;
#endif
}

// out[k] = convert<To>(in[k]) for a pack of W values, in pairs where round_pairs applies.
template <class To, class From, int W>
LATHE_DEVICE_INLINE void convert_pack(const From (&in)[W], To (&out)[W]) {
  if constexpr (kPairRounding && std::is_same_v<From, float> && W % 2 == 0 && is_half_v<To>) {
    uint32_t words[W / 2];
    if (round_pairs<To>(in, words)) {
      memcpy(static_cast<void*>(out), words, sizeof words);
      return;
    }
  }
#pragma unroll
  for (int k = 0; k < W; ++k) out[k] = convert<To>(in[k]);
}

// Host: the bits of `value` converted to T exactly as convert<T>(double) does on the device.
template <class T>
T host_convert(double value) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return T(static_cast<float>(value));
  } else if constexpr (std::is_same_v<T, bool>) {
    return value != 0.0;
  } else {
    return static_cast<T>(value);
  }
}

// ---- strided indexing ----

template <int N>
struct OffsetCalc {
  int ndim = 0;
  int64_t size[kMaxDims] = {};
  int64_t stride[N][kMaxDims] = {};  // in elements

  // Element offsets of row-major flat index `i` in each operand.
  LATHE_DEVICE_INLINE void get(int64_t i, int64_t (&off)[N]) const {
    for (int k = 0; k < N; ++k) off[k] = 0;
    for (int d = ndim - 1; d > 0; --d) {
      const int64_t q = i / size[d];
      const int64_t r = i - q * size[d];
      i = q;
      for (int k = 0; k < N; ++k) off[k] += r * stride[k][d];
    }
    if (ndim > 0) {
      for (int k = 0; k < N; ++k) off[k] += i * stride[k][0];
    }
  }
};

// The coalesced layout of N views over the iteration shape `shape` (views[k]->size is ignored;
// each view's strides must describe `shape`).
template <int N>
OffsetCalc<N> make_offset_calc(const View& shape, const std::array<const View*, N>& views) {
  OffsetCalc<N> c;
  for (int d = 0; d < shape.ndim; ++d) {
    if (shape.size[d] == 1) continue;
    c.size[c.ndim] = shape.size[d];
    for (int k = 0; k < N; ++k) c.stride[k][c.ndim] = views[size_t(k)]->stride[d];
    ++c.ndim;
  }
  if (c.ndim <= 1) return c;
  int write = 0;
  for (int d = 1; d < c.ndim; ++d) {
    bool mergeable = true;
    for (int k = 0; k < N; ++k) {
      mergeable = mergeable && c.stride[k][write] == c.stride[k][d] * c.size[d];
    }
    if (mergeable) {
      c.size[write] *= c.size[d];
      for (int k = 0; k < N; ++k) c.stride[k][write] = c.stride[k][d];
    } else {
      ++write;
      c.size[write] = c.size[d];
      for (int k = 0; k < N; ++k) c.stride[k][write] = c.stride[k][d];
    }
  }
  c.ndim = write + 1;
  return c;
}

template <int N>
OffsetCalc<N> make_offset_calc(const std::array<const View*, N>& views) {
  return make_offset_calc<N>(*views[0], views);
}

// Whether every view is a dense row-major layout of `shape` (flat index == element offset).
template <int N>
bool all_contiguous(const View& shape, const std::array<const View*, N>& views) {
  for (const View* v : views) {
    int64_t expected = 1;
    for (int d = shape.ndim - 1; d >= 0; --d) {
      if (shape.size[d] != 1 && v->stride[d] != expected) return false;
      expected *= shape.size[d];
    }
  }
  return true;
}

// Whether p sits on a 16-byte boundary (the vector kernels' packs).
inline bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// V elements of T (V * sizeof(T) a multiple of 16 bytes) as one vector access: the packs of the
// vector kernels that mix element types (copy.cu's casts, adamw.cu), where rows.cuh's load/store
// (one 16-byte pack converted to the compute type) do not fit.
template <class T, int V>
struct alignas(16) Pack {
  T v[V];
};

// An object of 16 * k bytes at p (16-byte aligned) read or written as k 16-byte accesses. On the
// GPU the bits go through uint4, and stores through an inline `st.global.v4.b32`, so nvcc emits
// 128-bit accesses whatever the object holds: a struct of __half / __nv_bfloat16
// assigned as itself may be copied member by member (seen in PTX: the bf16 pack stores of
// cross_entropy's backward became 8 st.global.u16 each, and the kernel ran at 18% of the copy
// bandwidth), and even a plain uint4 store came out as 4 st.global.u32 there. (__stwb, used
// before, gives 128-bit stores too, but ptxas marks them STG.E.128.STRONG.SM, memory-model strong
// stores, where the inline one is a plain STG.E.128: scripts/sass.sh.) Global memory only. The
// simulated build copies with memcpy (no aliasing questions on the host) after checking the
// alignment, which a GPU enforces with a fault: a kernel that sends a misaligned pointer down a
// vector path fails its simulator tests too.
template <class Obj>
LATHE_DEVICE_INLINE Obj load16(const void* p) {
  static_assert(sizeof(Obj) % 16 == 0, "whole 16-byte accesses");
  Obj obj;
#ifdef __CUDACC__
  uint4 bits[sizeof(Obj) / 16];
#pragma unroll
  for (size_t i = 0; i < sizeof(Obj) / 16; ++i) bits[i] = static_cast<const uint4*>(p)[i];
  memcpy(static_cast<void*>(&obj), bits, sizeof obj);
#else
  LATHE_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "cuda simulator: 16-byte load from ", p,
              ", which is not 16-byte aligned (a misaligned address error on a GPU)");
  std::memcpy(static_cast<void*>(&obj), p, sizeof obj);
#endif
  return obj;
}
template <class Obj>
LATHE_DEVICE_INLINE void store16(void* p, const Obj& obj) {
  static_assert(sizeof(Obj) % 16 == 0, "whole 16-byte accesses");
#ifdef __CUDACC__
  uint4 bits[sizeof(Obj) / 16];
  memcpy(bits, static_cast<const void*>(&obj), sizeof obj);
#pragma unroll
  for (size_t i = 0; i < sizeof(Obj) / 16; ++i) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(static_cast<uint4*>(p) + i),
                 "r"(bits[i].x), "r"(bits[i].y), "r"(bits[i].z), "r"(bits[i].w)
                 : "memory");
  }
#else
  LATHE_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "cuda simulator: 16-byte store to ", p,
              ", which is not 16-byte aligned (a misaligned address error on a GPU)");
  std::memcpy(p, static_cast<const void*>(&obj), sizeof obj);
#endif
}

// Pack k of buffer p (16-byte aligned).
template <class T, int V>
LATHE_DEVICE_INLINE Pack<T, V> load_pack(const T* p, int64_t k) {
  return load16<Pack<T, V>>(p + k * V);
}
template <class T, int V>
LATHE_DEVICE_INLINE void store_pack(T* p, int64_t k, const Pack<T, V>& pack) {
  store16(p + k * V, pack);
}

// ---- launch sizing ----

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items with `threads` threads per block: enough to
// fill the device a few times over, never more than the work needs.
inline unsigned grid_for(int64_t work, int threads = kThreads, int blocks_per_sm = 4) {
  const int64_t sms = rt::device_properties(rt::current_device()).multiprocessor_count;
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t cap = sms * blocks_per_sm;
  const int64_t blocks = needed < cap ? needed : cap;
  return unsigned(blocks < 1 ? 1 : blocks);
}

// The first and the step of a grid-stride loop.
LATHE_DEVICE_INLINE int64_t global_thread() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
LATHE_DEVICE_INLINE int64_t grid_threads() {
  return int64_t(gridDim.x) * blockDim.x;
}

// The stream kernels of this thread are issued to.
inline cudaStream_t stream() {
  return rt::current_stream();
}

// A temporary device buffer from the caching allocator, on the current stream.
class DeviceScratch {
 public:
  explicit DeviceScratch(size_t bytes)
      : device_(rt::current_device()),
        ptr_(rt::device_allocator(device_).allocate(bytes, stream())) {}
  ~DeviceScratch() { rt::device_allocator(device_).deallocate(ptr_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  int device_;
  void* ptr_;
};

// ---- host dispatch helpers ----

// dispatch_all with the device storage type: fn.template operator()<device_t<T>>().
template <class Fn>
decltype(auto) dispatch_device_all(DType t, const char* op, Fn&& fn) {
  return dispatch_all(t, op, [&]<class T>() { return fn.template operator()<device_t<T>>(); });
}

// f32, f64, f16, bf16, i32, i64: the dtypes arithmetic kernels accept on cuda.
template <class Fn>
decltype(auto) dispatch_device_arith(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    case DType::F16:
      return fn.template operator()<__half>();
    case DType::BF16:
      return fn.template operator()<__nv_bfloat16>();
    case DType::I32:
      return fn.template operator()<int32_t>();
    case DType::I64:
      return fn.template operator()<int64_t>();
    default:
      break;
  }
  LATHE_FAIL(op, ": dtype ", t, " is not supported on cuda here (expected f32, f64, f16, bf16, ",
             "i32 or i64)");
}

template <class Fn>
decltype(auto) dispatch_device_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32:
      return fn.template operator()<float>();
    case DType::F64:
      return fn.template operator()<double>();
    case DType::F16:
      return fn.template operator()<__half>();
    case DType::BF16:
      return fn.template operator()<__nv_bfloat16>();
    default:
      break;
  }
  LATHE_FAIL(op, ": dtype ", t, " is not supported on cuda here (expected f32, f64, f16 or bf16)");
}

// ---- generic elementwise kernels ----

// f(off) for every element, with off[k] the element offset in operand k.
template <int N, class F>
__global__ void elementwise_strided_kernel(int64_t n, OffsetCalc<N> calc, F f) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[N];
    calc.get(i, off);
    f(off);
  }
}

template <int N, class F>
__global__ void elementwise_contiguous_kernel(int64_t n, F f) {
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    int64_t off[N];
    for (int k = 0; k < N; ++k) off[k] = i;
    f(off);
  }
}

// Runs f over the iteration shape of views[0] (all views have that shape, broadcast strides
// allowed). f is a functor with a __device__ operator()(const int64_t (&off)[N]).
template <int N, class F>
void launch_elementwise(const char* name, const std::array<const View*, N>& views, const F& f) {
  const View& shape = *views[0];
  const int64_t n = shape.numel();
  if (n == 0) return;
  // Every SM full (8 blocks of 256 threads): the kernels move one element per thread at a time, so
  // resident threads are what keeps loads in flight.
  const unsigned grid = grid_for(n, kThreads, 8);
  if (all_contiguous<N>(shape, views)) {
    rt::launch(elementwise_contiguous_kernel<N, F>, dim3(grid), dim3(kThreads), 0, stream(), name,
               n, f);
  } else {
    rt::launch(elementwise_strided_kernel<N, F>, dim3(grid), dim3(kThreads), 0, stream(), name, n,
               make_offset_calc<N>(views), f);
  }
}

}  // namespace lathe::kernels::cuda
