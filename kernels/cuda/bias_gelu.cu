// Bias add fused into GELU on cuda (kernel families bias_gelu_forward / bias_gelu_backward) over
// contiguous [rows, cols], the first half of a transformer's feed-forward block, for f32, f64, f16
// and bf16 (computed in f32, or f64 for f64; each output rounded once):
//   forward   y = gelu(x + bias[j])
//   backward  dx = dy * gelu'(x + bias[j]);  dbias[j] = sum over rows of dx (unrounded)
// The GELU formulas are unary.cu's (the cpu kernels' polynomial Φ and exp in f32), so in f32 and
// f64 bias_gelu(x, b) equals gelu(x + b) up to FMA contraction.
//
// Forward: 16-byte packs when cols is a multiple of the pack and every operand starts on a 16-byte
// boundary (a pack then never straddles two rows and its bias is one aligned pack too), single
// elements otherwise; each thread owns one column unit, keeps its bias in registers and walks rows
// (no division per element). Traffic: x read, y written.
//
// Backward: dx and dbias in one pass over x and dy. Blocks of 32 x 8 threads; block
// (blockIdx.x, blockIdx.y) owns 32 column packs (16 bytes each, or single columns when packs do not
// fit) of row chunk blockIdx.y; thread (tx, ty) walks rows ty, ty + 8, ... of the chunk, writes dx
// and keeps an f32 sum per column; the 8 thread rows combine in a fixed order through shared
// memory into the chunk's partial row, and a second kernel adds the partial rows in chunk order
// (layer_norm.cu's deterministic column reduction, without re-reading anything). Neighbouring
// threads read neighbouring packs, so each warp reads 512 contiguous bytes of a row. Traffic: x
// and dy read once, dx written once, plus chunks x cols f32 partials.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/rows.cuh"

namespace lathe::kernels::cuda {

namespace {

using rows::acc_t;

// The GELU functors of unary.cu (gelu.cuh), in the compute type C.
template <bool kTanh, class T>
using Gelu = gelu_ops::Forward<kTanh, T>;
template <bool kTanh, class T>
using GeluGrad = gelu_ops::Backward<kTanh, T>;

// acc + v with v rounded first: never contracted into an FMA with the product that made v, so dbias
// sums exactly the values written to dx, whether or not dx is written (the compiler could
// otherwise contract the two instantiations of the loop differently).
template <class C>
LATHE_DEVICE_INLINE C add_rounded(C acc, C v) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<C, float>) {
    return __fadd_rn(acc, v);
  } else {
    return __dadd_rn(acc, v);
  }
#else
  volatile C rounded = v;
  return acc + rounded;
#endif
}

// ---- forward ----

// Thread (x, y) of block (bx, by) owns column unit u = bx * blockDim.x + x (a pack of W columns)
// and walks rows by * blockDim.y + y, + gridDim.y * blockDim.y, ...: its bias pack is loaded once
// and no index is divided.
template <class T, int W, class Op>
__global__ void bias_gelu_forward_kernel(const T* x, const T* bias, T* y, int64_t n_rows,
                                         int64_t cols, Op op) {
  using C = acc_t<T>;
  const int64_t col = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * W;
  if (col >= cols) return;
  C b[W];
  rows::load<W>(bias + col, b);
  const int64_t step = int64_t(gridDim.y) * blockDim.y;
  // kUnroll rows' loads first, then their outputs: y may alias x, so the compiler would not
  // hoist a later row's load above an earlier row's store; this keeps several loads in flight.
  constexpr int kUnroll = 4;
  for (int64_t r0 = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; r0 < n_rows;
       r0 += kUnroll * step) {
    C v[kUnroll][W] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (r0 + u * step < n_rows) rows::load<W>(x + (r0 + u * step) * cols + col, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (r0 + u * step >= n_rows) break;
#pragma unroll
      for (int k = 0; k < W; ++k) v[u][k] = op(v[u][k] + b[k]);
      rows::store<W>(y + (r0 + u * step) * cols + col, v[u]);
    }
  }
}

// Blocks of kThreads: x over the row's column units (a multiple of 32, at most kThreads), y over
// rows; enough blocks to fill every SM a few times, rows beyond that grid-strided.
void forward_launch_shape(int64_t n_rows, int64_t units, dim3& grid, dim3& threads) {
  int64_t tx = (units + 31) / 32 * 32;
  if (tx > kThreads) tx = kThreads;
  const int64_t ty = kThreads / tx;
  const int64_t gx = (units + tx - 1) / tx;
  const int64_t sms = rt::device_properties(rt::current_device()).multiprocessor_count;
  int64_t gy = (n_rows + ty - 1) / ty;
  int64_t cap = sms * 8 / gx;
  if (cap < 1) cap = 1;
  if (gy > cap) gy = cap;
  if (gy > 65535) gy = 65535;
  grid = dim3(unsigned(gx), unsigned(gy));
  threads = dim3(unsigned(tx), unsigned(ty));
}

template <class T, bool kTanh>
void forward_typed(const BiasGeluArgs& a) {
  constexpr int V = rows::kPack<T>;
  const T* x = static_cast<const T*>(a.x);
  const T* b = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  const bool vec = a.cols % V == 0 && aligned16(x) && aligned16(b) && aligned16(y);
  dim3 grid, threads;
  if (vec) {
    forward_launch_shape(a.rows, a.cols / V, grid, threads);
    rt::launch(bias_gelu_forward_kernel<T, V, Gelu<kTanh, T>>, grid, threads, 0, stream(),
               "bias_gelu_forward", x, b, y, a.rows, a.cols, Gelu<kTanh, T>{});
  } else {
    forward_launch_shape(a.rows, a.cols, grid, threads);
    rt::launch(bias_gelu_forward_kernel<T, 1, Gelu<kTanh, T>>, grid, threads, 0, stream(),
               "bias_gelu_forward", x, b, y, a.rows, a.cols, Gelu<kTanh, T>{});
  }
}

// ---- backward ----

constexpr int kThreadRows = 8;         // blockDim.y
constexpr int64_t kRowsPerChunk = 32;  // target rows per chunk
constexpr int64_t kMaxChunks = 256;

// A function of the row count only, so the summation order never depends on the device.
int64_t chunks_for(int64_t n_rows) {
  const int64_t c = (n_rows + kRowsPerChunk - 1) / kRowsPerChunk;
  return c < 1 ? 1 : (c > kMaxChunks ? kMaxChunks : c);
}

template <class T, int W, class Op>
__global__ void bias_gelu_backward_kernel(const T* x, const T* bias, const T* gy, T* gx,
                                          int64_t n_rows, int64_t cols, int64_t chunks,
                                          acc_t<T>* partial, Op op) {
  using C = acc_t<T>;
  __shared__ C shared[kThreadRows][32 * W];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  const int64_t col = (int64_t(blockIdx.x) * 32 + tx) * W;
  const int64_t chunk = blockIdx.y;
  const int64_t begin = n_rows * chunk / chunks, end = n_rows * (chunk + 1) / chunks;
  C acc[W];
  for (int k = 0; k < W; ++k) acc[k] = C(0);
  if (col < cols) {
    C b[W];
    rows::load<W>(bias + col, b);
    for (int64_t r = begin + ty; r < end; r += kThreadRows) {
      C v[W], d[W];
      rows::load<W>(x + r * cols + col, v);
      rows::load<W>(gy + r * cols + col, d);
      for (int k = 0; k < W; ++k) {
        d[k] = op(v[k] + b[k], d[k]);
        acc[k] = add_rounded(acc[k], d[k]);
      }
      if (gx) rows::store<W>(gx + r * cols + col, d);
    }
  }
  if (partial == nullptr) return;  // uniform across the block: no barrier is skipped by some
  for (int k = 0; k < W; ++k) shared[ty][tx * W + k] = acc[k];
  __syncthreads();
  if (ty == 0 && col < cols) {
    for (int yy = 1; yy < kThreadRows; ++yy) {
      for (int k = 0; k < W; ++k) acc[k] += shared[yy][tx * W + k];
    }
    for (int k = 0; k < W; ++k) partial[chunk * cols + col + k] = acc[k];
  }
}

// Column j of dbias: the chunks' partial sums added in chunk order.
template <class T>
__global__ void bias_gelu_bias_final_kernel(const acc_t<T>* partial, int64_t cols, int64_t chunks,
                                            T* gb) {
  using C = acc_t<T>;
  for (int64_t j = global_thread(); j < cols; j += grid_threads()) {
    C s = C(0);
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * cols + j];
    gb[j] = convert<T>(s);
  }
}

template <class T, bool kTanh>
void backward_typed(const BiasGeluBackwardArgs& a) {
  using C = acc_t<T>;
  if (a.rows == 0) {
    if (a.grad_bias) rt::memset_async(a.grad_bias, 0, size_t(a.cols) * sizeof(T), stream());
    return;
  }
  if (!a.grad_x && !a.grad_bias) return;
  const int64_t chunks = chunks_for(a.rows);
  const bool need_bias = a.grad_bias != nullptr;
  DeviceScratch partial(need_bias ? size_t(chunks * a.cols) * sizeof(C) : 16);
  C* pb = need_bias ? partial.as<C>() : nullptr;
  const T* x = static_cast<const T*>(a.x);
  const T* b = static_cast<const T*>(a.bias);
  const T* gy = static_cast<const T*>(a.grad_y);
  T* gx = static_cast<T*>(a.grad_x);
  constexpr int V = rows::kPack<T>;
  const bool vec = a.cols % V == 0 && aligned16(x) && aligned16(b) && aligned16(gy) &&
                   (gx == nullptr || aligned16(gx));
  const dim3 threads(32, kThreadRows);
  using Op = GeluGrad<kTanh, T>;
  if (vec) {
    const dim3 grid(unsigned((a.cols / V + 31) / 32), unsigned(chunks));
    rt::launch(bias_gelu_backward_kernel<T, V, Op>, grid, threads, 0, stream(),
               "bias_gelu_backward", x, b, gy, gx, a.rows, a.cols, chunks, pb, Op{});
  } else {
    const dim3 grid(unsigned((a.cols + 31) / 32), unsigned(chunks));
    rt::launch(bias_gelu_backward_kernel<T, 1, Op>, grid, threads, 0, stream(),
               "bias_gelu_backward", x, b, gy, gx, a.rows, a.cols, chunks, pb, Op{});
  }
  if (need_bias) {
    rt::launch(bias_gelu_bias_final_kernel<T>, dim3(grid_for(a.cols)), dim3(kThreads), 0, stream(),
               "bias_gelu_bias_final", static_cast<const C*>(pb), a.cols, chunks,
               static_cast<T*>(a.grad_bias));
  }
}

void bias_gelu_forward_impl(const BiasGeluArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.cols > 0, "bias_gelu: invalid sizes rows=", a.rows,
              " cols=", a.cols);
  if (a.rows == 0) return;
  dispatch_device_float(a.dtype, "bias_gelu", [&]<class T>() {
    if (a.tanh) {
      forward_typed<T, true>(a);
    } else {
      forward_typed<T, false>(a);
    }
  });
}

void bias_gelu_backward_impl(const BiasGeluBackwardArgs& a) {
  LATHE_CHECK(a.rows >= 0 && a.cols > 0, "bias_gelu backward: invalid sizes rows=", a.rows,
              " cols=", a.cols);
  dispatch_device_float(a.dtype, "bias_gelu backward", [&]<class T>() {
    if (a.tanh) {
      backward_typed<T, true>(a);
    } else {
      backward_typed<T, false>(a);
    }
  });
}

}  // namespace

extern const BiasGeluForwardFn bias_gelu_forward = bias_gelu_forward_impl;
extern const BiasGeluBackwardFn bias_gelu_backward = bias_gelu_backward_impl;

}  // namespace lathe::kernels::cuda
