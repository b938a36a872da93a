// Philox draws and dropout on cuda, producing the cpu's tensors for the same (seed, offset).
// Element i of a draw uses counter block offset + i / 4 and lane i % 4 (include/lathe/core/
// random.h), so each thread computes one Philox block and writes its four elements. Uniforms are
// exact bit functions of the Philox output, hence identical on every device. Normals use the cpu
// kernel's Box-Muller in f64 (log, sqrt, cos, sin): the simulated build shares the cpu's libm and
// gives identical bits; a GPU's f64 libm may differ in the last bit of an f64 normal (f32 normals
// are rounded from the same f64 value and almost always agree).
//
// Dropout keeps element i (row-major over the logical shape) iff
// to_uniform(block(offset + i / 4, seed)[i % 4]) >= float(p), scales kept elements by 1 / (1 - p)
// in the element type and writes exact zeros elsewhere: the rule of kernels/cpu/dropout.cpp.
// Contiguous aligned tensors go by 16-byte packs (dropout_vector_kernel), the rest and the tail
// element by element.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/math.cuh"
#include "lathe/core/random.h"

namespace lathe::kernels::cuda {

namespace {

template <class T>
__global__ void random_kernel_impl(T* out, int64_t n, RandomDist dist, PhiloxState state) {
  const uint64_t seed = state.key(), offset = state.first_block();
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_thread(); b < blocks; b += grid_threads()) {
    const std::array<uint32_t, 4> r = philox::block(offset + uint64_t(b), seed);
    T values[4];
    if (dist == RandomDist::Uniform) {
      for (int j = 0; j < 4; ++j) {
        if constexpr (std::is_same_v<T, double>) {
          values[j] = philox::to_uniform_double(r[j]);
        } else {
          values[j] = convert<T>(philox::to_uniform(r[j]));
        }
      }
    } else {
      for (int j = 0; j < 4; j += 2) {
        // u1 in (0, 1] so log(u1) is finite.
        double u1 = (double(r[j]) + 1.0) * (1.0 / 4294967296.0);
        double u2 = double(r[j + 1]) * (1.0 / 4294967296.0);
        double radius = dmath::sqrt(-2.0 * dmath::log(u1));
        double angle = 6.283185307179586 * u2;
        values[j] = convert<T>(radius * dmath::cos(angle));
        values[j + 1] = convert<T>(radius * dmath::sin(angle));
      }
    }
    const int64_t count = n - b * 4 < 4 ? n - b * 4 : 4;
    for (int64_t j = 0; j < count; ++j) out[b * 4 + j] = values[j];
  }
}

void random_kernel(RandomDist dist, const View& out, const PhiloxState& state) {
  LATHE_CHECK(out.is_contiguous(), "random: output must be contiguous");
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_device_float(out.dtype, "random", [&]<class T>() {
    rt::launch(random_kernel_impl<T>, dim3(grid_for((n + 3) / 4)), dim3(kThreads), 0, stream(),
               "random", static_cast<T*>(out.data), n, dist, state);
  });
}

// x * scale where Philox word r keeps its element, else an exact zero (the cpu kernel's rule:
// scaled in the compute type, rounded once).
template <class T>
LATHE_DEVICE_INLINE T dropped(T x, uint32_t r, float p, compute_t<T> scale) {
  using C = compute_t<T>;
  return philox::to_uniform(r) >= p ? convert<T>(C(convert<C>(x) * scale)) : convert<T>(C(0));
}

// Contiguous, 16-byte aligned input and output: one 16-byte pack of V elements per thread (V = 4
// for f32, 8 for f16/bf16: one or two whole Philox blocks, since a pack starts at a multiple of 4),
// so each thread issues one vector load and one vector store instead of an access per element.
template <class T, int V>
__global__ void dropout_vector_kernel(const T* in, T* out, int64_t packs, float p,
                                      compute_t<T> scale, PhiloxState state) {
  static_assert(V % 4 == 0, "whole Philox blocks per pack");
  const uint64_t seed = state.key(), offset = state.first_block();
  for (int64_t k = global_thread(); k < packs; k += grid_threads()) {
    const Pack<T, V> x = load_pack<T, V>(in, k);
    Pack<T, V> y;
#pragma unroll
    for (int q = 0; q < V / 4; ++q) {
      const std::array<uint32_t, 4> r = philox::block(offset + uint64_t(k * (V / 4) + q), seed);
#pragma unroll
      for (int j = 0; j < 4; ++j) y.v[4 * q + j] = dropped(x.v[4 * q + j], r[j], p, scale);
    }
    store_pack(out, k, y);
  }
}

// One thread per Philox block, blocks first_block.. : elements 4b .. 4b + 3 in logical order.
template <class T>
__global__ void dropout_kernel_impl(const T* in, T* out, int64_t n, int64_t first_block,
                                    OffsetCalc<2> calc, bool contiguous, float p,
                                    compute_t<T> scale, PhiloxState state) {
  const uint64_t seed = state.key(), offset = state.first_block();
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = first_block + global_thread(); b < blocks; b += grid_threads()) {
    const std::array<uint32_t, 4> r = philox::block(offset + uint64_t(b), seed);
    const int64_t count = n - b * 4 < 4 ? n - b * 4 : 4;
    for (int64_t j = 0; j < count; ++j) {
      const int64_t i = b * 4 + j;
      int64_t off[2] = {i, i};
      if (!contiguous) calc.get(i, off);
      out[off[0]] = dropped(in[off[1]], r[j], p, scale);
    }
  }
}

void dropout_kernel(const View& in, const View& out, double p, const PhiloxState& state) {
  LATHE_CHECK(in.dtype == out.dtype && in.ndim == out.ndim, "dropout: input ", in.dtype,
              " and output ", out.dtype, " must have the same dtype and rank");
  for (int d = 0; d < in.ndim; ++d) {
    LATHE_CHECK(in.size[d] == out.size[d], "dropout: input and output shapes differ at dim ", d);
  }
  LATHE_CHECK(p >= 0.0 && p <= 1.0, "dropout: probability must be in [0, 1], got ", p);
  const int64_t n = out.numel();
  if (n == 0) return;
  dispatch_device_float(in.dtype, "dropout", [&]<class T>() {
    using C = compute_t<T>;
    // p == 1 drops everything: scale 0 instead of 1/0. f16/bf16 scale in f32 and round once.
    const C scale = p >= 1.0 ? C(0) : C(1.0 / (1.0 - p));
    const bool contiguous = all_contiguous<2>(out, {&out, &in});
    const T* src = static_cast<const T*>(in.data);
    T* dst = static_cast<T*>(out.data);
    constexpr int V = int(16 / sizeof(T));
    int64_t first_block = 0;
    if constexpr (V % 4 == 0) {
      if (contiguous && aligned16(src) && aligned16(dst) && n >= V) {
        const int64_t packs = n / V;
        rt::launch(dropout_vector_kernel<T, V>, dim3(grid_for(packs)), dim3(kThreads), 0, stream(),
                   "dropout", src, dst, packs, float(p), scale, state);
        first_block = packs * (V / 4);
      }
    }
    // Everything (strided, misaligned, f64), or the tail past the last whole pack.
    const int64_t left = (n + 3) / 4 - first_block;
    if (left > 0) {
      rt::launch(dropout_kernel_impl<T>, dim3(grid_for(left)), dim3(kThreads), 0, stream(),
                 "dropout", src, dst, n, first_block, make_offset_calc<2>({&out, &in}), contiguous,
                 float(p), scale, state);
    }
  });
}

}  // namespace

extern const RandomFn random = random_kernel;
extern const DropoutFn dropout = dropout_kernel;

}  // namespace lathe::kernels::cuda
