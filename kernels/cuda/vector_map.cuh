// Elementwise maps over contiguous, 16-byte aligned operands of one dtype, in 16-byte packs:
// out = op(in) (unary.cu) and out = op(a, b) (unary.cu's backward, binary.cu's arithmetic). The
// generic elementwise kernel (common.cuh) moves one element per thread at a time; these load
// kVectorUnroll packs per thread before the first store (in and out may be the same buffer, so the
// compiler cannot move a later pack's load above an earlier pack's store by itself), which keeps
// enough bytes in flight to cover DRAM latency. The `numel % pack` tail runs element by element.
// Values are widened to compute_t<T> and rounded once, as in the generic kernel, so both give the
// same bits.
#pragma once

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

inline constexpr int kVectorUnroll = 4;

template <class T, class Op>
__global__ void map1_vec_kernel(const T* in, T* out, int64_t n, Op op) {
  using C = compute_t<T>;
  constexpr int V = rows::kPack<T>;
  const int64_t packs = n / V;
  const int64_t step = grid_threads();
  for (int64_t p0 = global_thread(); p0 < packs; p0 += kVectorUnroll * step) {
    C v[kVectorUnroll][V] = {};
#pragma unroll
    for (int u = 0; u < kVectorUnroll; ++u) {
      if (p0 + u * step < packs) rows::load<V>(in + (p0 + u * step) * V, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kVectorUnroll; ++u) {
      if (p0 + u * step >= packs) break;
      for (int k = 0; k < V; ++k) v[u][k] = op(v[u][k]);
      rows::store<V>(out + (p0 + u * step) * V, v[u]);
    }
  }
  for (int64_t i = packs * V + global_thread(); i < n; i += step) {
    out[i] = convert<T>(op(convert<C>(in[i])));
  }
}

template <class T, class Op>
__global__ void map2_vec_kernel(const T* a, const T* b, T* out, int64_t n, Op op) {
  using C = compute_t<T>;
  constexpr int V = rows::kPack<T>;
  const int64_t packs = n / V;
  const int64_t step = grid_threads();
  for (int64_t p0 = global_thread(); p0 < packs; p0 += kVectorUnroll * step) {
    C va[kVectorUnroll][V] = {}, vb[kVectorUnroll][V] = {};
#pragma unroll
    for (int u = 0; u < kVectorUnroll; ++u) {
      if (p0 + u * step < packs) {
        rows::load<V>(a + (p0 + u * step) * V, va[u]);
        rows::load<V>(b + (p0 + u * step) * V, vb[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kVectorUnroll; ++u) {
      if (p0 + u * step >= packs) break;
      for (int k = 0; k < V; ++k) va[u][k] = op(va[u][k], vb[u][k]);
      rows::store<V>(out + (p0 + u * step) * V, va[u]);
    }
  }
  for (int64_t i = packs * V + global_thread(); i < n; i += step) {
    out[i] = convert<T>(op(convert<C>(a[i]), convert<C>(b[i])));
  }
}

// Grid of a vector map over n elements: every SM full, never more threads than packs.
template <class T>
unsigned vector_map_grid(int64_t n) {
  const int64_t packs = n / rows::kPack<T>;
  return grid_for(packs > 0 ? packs : n, kThreads, 8);
}

// out = op(in) on the vector kernel when out and in are contiguous and 16-byte aligned; returns
// false (nothing launched) otherwise.
template <class T, class Op>
bool try_map1_vec(const char* name, const View& in, const View& out, Op op) {
  const int64_t n = out.numel();
  if (n == 0 || !all_contiguous<2>(out, {&out, &in}) || !aligned16(in.data) ||
      !aligned16(out.data)) {
    return false;
  }
  rt::launch(map1_vec_kernel<T, Op>, dim3(vector_map_grid<T>(n)), dim3(kThreads), 0, stream(), name,
             static_cast<const T*>(in.data), static_cast<T*>(out.data), n, op);
  return true;
}

// out = op(a, b), likewise.
template <class T, class Op>
bool try_map2_vec(const char* name, const View& a, const View& b, const View& out, Op op) {
  const int64_t n = out.numel();
  if (n == 0 || !all_contiguous<3>(out, {&out, &a, &b}) || !aligned16(a.data) ||
      !aligned16(b.data) || !aligned16(out.data)) {
    return false;
  }
  rt::launch(map2_vec_kernel<T, Op>, dim3(vector_map_grid<T>(n)), dim3(kThreads), 0, stream(), name,
             static_cast<const T*>(a.data), static_cast<const T*>(b.data),
             static_cast<T*>(out.data), n, op);
  return true;
}

}  // namespace lathe::kernels::cuda
