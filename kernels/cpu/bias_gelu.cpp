// Bias add fused into GELU (kernel families bias_gelu_forward / bias_gelu_backward) over
// contiguous [rows, cols], the first half of a transformer's feed-forward block:
//   forward   y = gelu(x + bias[j])
//   backward  dx = dy * gelu'(x + bias[j]);  dbias[j] = sum over rows of dx
// x + bias is recomputed in backward instead of saved. The GELU formulas are those of the unary
// kernels (kernels/cpu/gelu.h, shared with unary.cpp: the polynomial Φ and exp in f32, erf/exp in
// f64, tanh form), so bias_gelu(x, b) has the bits of gelu(x + b). dbias is reduced like layer
// norm's parameter gradients: a number of row blocks that depends on the row count only, an f64
// partial row per block, blocks combined in order — the same bits on any number of threads.
//
// f32, f64 and bf16 (computed in f32); the op widens f16 on the cpu.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"
#include "lathe/core/half.h"

namespace lathe::kernels::cpu {

namespace {

constexpr int64_t kMaxBlocks = 64;
constexpr int64_t kMinRowsPerBlock = 8;

// T is the storage type; bf16 is computed in f32 (Compute<T>), loaded and rounded once per
// element here instead of widened and narrowed by the op around an f32 kernel — the same
// arithmetic, so the same bits, without the three copies of FFN-wide tensors.
template <class T>
using Compute = std::conditional_t<std::is_same_v<T, BFloat16>, float, T>;

template <class T, bool kTanh>
void forward_rows(const BiasGeluArgs& a) {
  using C = Compute<T>;
  const int64_t rows = a.rows, cols = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* b = static_cast<const T*>(a.bias);
  T* y = static_cast<T*>(a.y);
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const C v = C(xr[j]) + C(b[j]);
      yr[j] = T(kTanh ? gelu_tanh(v) : gelu_erf(v));
    }
  }
}

template <class T, bool kTanh>
void backward_rows(const BiasGeluBackwardArgs& a) {
  using C = Compute<T>;
  constexpr bool kWidened = !std::is_same_v<C, T>;
  const int64_t rows = a.rows, cols = a.cols;
  const T* x = static_cast<const T*>(a.x);
  const T* b = static_cast<const T*>(a.bias);
  const T* gy = static_cast<const T*>(a.grad_y);
  T* gx = static_cast<T*>(a.grad_x);
  T* gb = static_cast<T*>(a.grad_bias);
  const bool parallel = rows > 1 && rows * cols >= kParallelGrain;
  // The block count is a function of `rows` only (reproducible sums); without dbias every row is
  // its own block.
  const int64_t blocks = gb ? std::clamp<int64_t>(rows / kMinRowsPerBlock, 1, kMaxBlocks) : rows;
  std::vector<double> partial(gb ? size_t(blocks * cols) : 0, 0.0);
#pragma omp parallel if (parallel && blocks > 1)
  {
    std::vector<C> row(static_cast<size_t>(cols));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t begin = rows * blk / blocks, end = rows * (blk + 1) / blocks;
      double* pb = gb ? partial.data() + blk * cols : nullptr;
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = x + r * cols;
        const T* gyr = gy + r * cols;
        // dx in the compute type; dbias sums it before the rounding to T, as the f32 kernel's
        // sums did when the op widened bf16.
        C* d = gx && !kWidened ? reinterpret_cast<C*>(gx + r * cols) : row.data();
        for (int64_t j = 0; j < cols; ++j) {
          const C v = C(xr[j]) + C(b[j]);
          d[j] = kTanh ? gelu_tanh_grad(v, C(gyr[j])) : gelu_erf_grad(v, C(gyr[j]));
        }
        if (pb) {
          for (int64_t j = 0; j < cols; ++j) pb[j] += double(d[j]);
        }
        if (gx && kWidened) {
          for (int64_t j = 0; j < cols; ++j) gx[r * cols + j] = T(d[j]);
        }
      }
    }
  }
  if (gb) {
    const bool parallel_cols = cols * blocks >= kParallelGrain;
#pragma omp parallel for schedule(static) if (parallel_cols)
    for (int64_t j = 0; j < cols; ++j) {
      double s = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) s += partial[size_t(blk * cols + j)];
      gb[j] = T(C(s));
    }
  }
}

void bias_gelu_forward_kernel(const BiasGeluArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.cols > 0, "bias_gelu: invalid sizes rows=", args.rows,
              " cols=", args.cols);
  auto run = [&]<class T>() {
    if (args.tanh) {
      forward_rows<T, true>(args);
    } else {
      forward_rows<T, false>(args);
    }
  };
  if (args.dtype == DType::BF16) {
    run.operator()<BFloat16>();
    return;
  }
  dispatch_float(args.dtype, "bias_gelu", run);
}

void bias_gelu_backward_kernel(const BiasGeluBackwardArgs& args) {
  LATHE_CHECK(args.rows >= 0 && args.cols > 0, "bias_gelu backward: invalid sizes rows=", args.rows,
              " cols=", args.cols);
  auto run = [&]<class T>() {
    if (args.tanh) {
      backward_rows<T, true>(args);
    } else {
      backward_rows<T, false>(args);
    }
  };
  if (args.dtype == DType::BF16) {
    run.operator()<BFloat16>();
    return;
  }
  dispatch_float(args.dtype, "bias_gelu backward", run);
}

}  // namespace

extern const BiasGeluForwardFn bias_gelu_forward = bias_gelu_forward_kernel;
extern const BiasGeluBackwardFn bias_gelu_backward = bias_gelu_backward_kernel;

}  // namespace lathe::kernels::cpu
