// Force-included (g++ -include kernels/sim/sim.h) when the simulated build compiles a .cu file as
// C++. It maps CUDA's language extensions onto the simulator so the very same kernel source runs on
// the CPU: qualifiers disappear, __shared__ becomes `static` (blocks run one at a time on one OS
// thread, and launches one at a time in the process, so a function-local static is exactly
// per-block shared memory), the built-in variables
// are thread_locals rewritten on every fiber switch, and the synchronizing built-ins are fiber
// rendezvous (sim_runtime.h). The CUDA headers for vector types and f16/bf16 work on the host as
// is.
#pragma once

#ifndef __CUDACC__

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>

// Standard headers first: some use attribute names (__noinline__) that the macros below redefine.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/sim/sim_runtime.h"

#define LATHE_CUDA_SIM_BUILD 1

// The CUDA headers define these for host compilers; the simulator needs them empty.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __host__
#define __host__
#undef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#undef __noinline__
#define __noinline__ __attribute__((noinline))
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __shared__
#define __shared__ static
#undef __constant__
#define __constant__ static
// Kernel parameters are copied into every thread's call here; the qualifier has nothing to do.
#undef __grid_constant__
#define __grid_constant__
#ifndef __restrict__
#define __restrict__ __restrict
#endif

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

// ---- barriers (the call site is recorded so mismatched barriers are reported) ----
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  lathe::sim::barrier(0, 0, nullptr, file, line);
}
inline int __syncthreads_count(int predicate, const char* file = __builtin_FILE(),
                               int line = __builtin_LINE()) {
  int r = 0;
  lathe::sim::barrier(1, predicate != 0, &r, file, line);
  return r;
}
inline int __syncthreads_and(int predicate, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  int r = 0;
  lathe::sim::barrier(2, predicate != 0, &r, file, line);
  return r;
}
inline int __syncthreads_or(int predicate, const char* file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
  int r = 0;
  lathe::sim::barrier(3, predicate != 0, &r, file, line);
  return r;
}
// Memory fences order nothing extra here: fibers interleave only at synchronization points.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- warp collectives ----
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  lathe::sim::warp_collective(lathe::sim::WarpOp::Sync, mask, nullptr, 0, 0, 32, nullptr, file,
                              line);
}

namespace lathe::sim::detail {
template <class T>
T shuffle(WarpOp op, unsigned mask, T value, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16, "shuffle of a large type");
  T out;
  warp_collective(op, mask, &value, sizeof(T), arg, width, &out, file, line);
  return out;
}
}  // namespace lathe::sim::detail

template <class T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return lathe::sim::detail::shuffle(lathe::sim::WarpOp::ShflIdx, mask, value, src_lane, width,
                                     file, line);
}
template <class T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return lathe::sim::detail::shuffle(lathe::sim::WarpOp::ShflUp, mask, value, int(delta), width,
                                     file, line);
}
template <class T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return lathe::sim::detail::shuffle(lathe::sim::WarpOp::ShflDown, mask, value, int(delta), width,
                                     file, line);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return lathe::sim::detail::shuffle(lathe::sim::WarpOp::ShflXor, mask, value, lane_mask, width,
                                     file, line);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  unsigned out = 0;
  lathe::sim::warp_collective(lathe::sim::WarpOp::Ballot, mask, nullptr, 0, predicate != 0, 32,
                              &out, file, line);
  return out;
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  int out = 0;
  lathe::sim::warp_collective(lathe::sim::WarpOp::Any, mask, nullptr, 0, predicate != 0, 32, &out,
                              file, line);
  return out;
}
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  int out = 0;
  lathe::sim::warp_collective(lathe::sim::WarpOp::All, mask, nullptr, 0, predicate != 0, 32, &out,
                              file, line);
  return out;
}
// Approximation: the lanes of the warp that have not exited.
inline unsigned __activemask() {
  return lathe::sim::active_mask();
}

// ---- atomics: fibers interleave only at synchronization points, so these could be plain
// read-modify-writes; they go through std::atomic_ref so that ThreadSanitizer sees atomic
// accesses (and reports a racing plain access to the same address). ----
template <class T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
template <class T>
inline T atomicSub(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_sub(value, std::memory_order_relaxed);
}
namespace lathe::sim::detail {
template <class T, class Pick>
T atomic_update(T* address, T value, Pick pick) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, pick(old, value), std::memory_order_relaxed)) {
  }
  return old;
}
}  // namespace lathe::sim::detail
template <class T>
inline T atomicMax(T* address, T value) {
  return lathe::sim::detail::atomic_update(address, value, [](T a, T b) { return a > b ? a : b; });
}
template <class T>
inline T atomicMin(T* address, T value) {
  return lathe::sim::detail::atomic_update(address, value, [](T a, T b) { return a < b ? a : b; });
}
template <class T>
inline T atomicExch(T* address, T value) {
  return std::atomic_ref<T>(*address).exchange(value, std::memory_order_relaxed);
}
template <class T>
inline T atomicCAS(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;
}
inline unsigned atomicInc(unsigned* address, unsigned limit) {
  return lathe::sim::detail::atomic_update(
      address, limit, [](unsigned old, unsigned lim) { return old >= lim ? 0u : old + 1; });
}

// ---- device math and bit intrinsics with host definitions ----
inline float __expf(float x) {
  return std::exp(x);
}
inline float __logf(float x) {
  return std::log(x);
}
inline float __sinf(float x) {
  return std::sin(x);
}
inline float __cosf(float x) {
  return std::cos(x);
}
inline float __tanhf(float x) {
  return std::tanh(x);
}
inline float __fdividef(float a, float b) {
  return a / b;
}
inline float __frcp_rn(float x) {
  return 1.0f / x;
}
inline float __fsqrt_rn(float x) {
  return std::sqrt(x);
}
inline float rsqrtf(float x) {
  return 1.0f / std::sqrt(x);
}
inline double rsqrt(double x) {
  return 1.0 / std::sqrt(x);
}
inline float __saturatef(float x) {
  return x < 0.f ? 0.f : (x > 1.f ? 1.f : x);
}
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  std::memcpy(&v, &f, 4);
  return v;
}
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __popc(unsigned v) {
  return __builtin_popcount(v);
}
inline int __popcll(unsigned long long v) {
  return __builtin_popcountll(v);
}
inline int __clz(unsigned v) {
  return v ? __builtin_clz(v) : 32;
}
inline int __ffs(unsigned v) {
  return __builtin_ffs(int(v));
}
inline unsigned __brev(unsigned v) {
  v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
  v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
  v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
  v = ((v >> 8) & 0x00FF00FFu) | ((v & 0x00FF00FFu) << 8);
  return (v >> 16) | (v << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) {
  return unsigned((unsigned long long)a * b >> 32);
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline long long clock64() {
  return 0;
}
inline void __nanosleep(unsigned) {}

// Dynamic shared memory: extern __shared__ cannot be a static, so kernels declare it through
// LATHE_DYNAMIC_SHARED, which reads the simulator's per-launch buffer here.
#define LATHE_DYNAMIC_SHARED(type, name) \
  type* name = reinterpret_cast<type*>(::lathe::sim::dynamic_shared_memory())

#else  // compiled by nvcc

#define LATHE_DYNAMIC_SHARED(type, name)                      \
  extern __shared__ __align__(16) unsigned char name##_raw[]; \
  type* name = reinterpret_cast<type*>(name##_raw)

#endif
