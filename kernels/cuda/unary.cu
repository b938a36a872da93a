// Elementwise unary kernels and their backward on cuda, with the cpu kernels' formulas. Each op is
// a small functor templated into one elementwise launch (common.cuh), so the per-element body is
// branch-free; f16/bf16 are computed in f32 and rounded once on store. Integer tensors support the
// ops that stay integral (neg, abs, relu, clamp), as on the cpu.
//
// Contiguous operands that start on 16-byte boundaries (every freshly allocated tensor) take a
// vectorized kernel (vector_map.cuh): each thread loads and stores whole 16-byte packs (4 f32, 8
// bf16/f16) and the last numel % pack elements are done one by one. The functor is the same, so
// both paths give the same bits. GELU (erf and tanh forms, forward and backward) is the
// transformer's user of this.
#include <cmath>
#include <limits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gelu.cuh"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/vector_map.cuh"

namespace lathe::kernels::cuda {

namespace {

// ---- forward functors: C operator()(C x) with C the compute type ----

struct NegF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return C(-x);
  }
};
struct ExpF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return dmath::exp(x);
  }
};
struct LogF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return dmath::log(x);
  }
};
struct SqrtF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return dmath::sqrt(x);
  }
};
struct RsqrtF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return C(1) / dmath::sqrt(x);
  }
};
struct AbsF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    if constexpr (std::is_floating_point_v<C>) {
      return dmath::fabs(x);
    } else {
      return C(x < 0 ? -x : x);
    }
  }
};
struct TanhF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return dmath::tanh(x);
  }
};
template <class C>
LATHE_DEVICE_INLINE C sigmoid_of(C x) {
  return C(1) / (C(1) + dmath::exp(-x));
}
struct SigmoidF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return sigmoid_of(x);
  }
};
struct ReluF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x) const {
    return x > C(0) ? x : C(0);
  }
};
// GELU (both forms): gelu.cuh, shared with bias_gelu.cu.
template <class T>
using GeluF = gelu_ops::Forward<false, T>;
using GeluTanhF = gelu_ops::TanhF;
// Bounds in the compute type; for integers they were clamped into range on the host.
template <class C>
struct ClampF {
  C lo, hi;
  LATHE_DEVICE_INLINE C operator()(C x) const {
    if constexpr (std::is_floating_point_v<C>) {
      return x != x ? x : (x < lo ? lo : (x > hi ? hi : x));
    } else {
      return x < lo ? lo : (x > hi ? hi : x);
    }
  }
};
template <class C>
struct PowScalarF {
  C exponent;
  LATHE_DEVICE_INLINE C operator()(C x) const { return dmath::pow(x, exponent); }
};

template <class T, class Op>
struct UnaryMap {
  const T* in;
  T* out;
  Op op;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[2]) const {
    using C = compute_t<T>;
    out[off[0]] = convert<T>(op(convert<C>(in[off[1]])));
  }
};

template <class T, class Op>
void map1(const View& in, const View& out, Op op) {
  if (try_map1_vec<T>("unary", in, out, op)) return;
  launch_elementwise<2>(
      "unary", {&out, &in},
      UnaryMap<T, Op>{static_cast<const T*>(in.data), static_cast<T*>(out.data), op});
}

template <class T>
void unary_float(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  using C = compute_t<T>;
  switch (op) {
    case UnaryOp::Neg:
      return map1<T>(in, out, NegF{});
    case UnaryOp::Exp:
      return map1<T>(in, out, ExpF{});
    case UnaryOp::Log:
      return map1<T>(in, out, LogF{});
    case UnaryOp::Sqrt:
      return map1<T>(in, out, SqrtF{});
    case UnaryOp::Rsqrt:
      return map1<T>(in, out, RsqrtF{});
    case UnaryOp::Abs:
      return map1<T>(in, out, AbsF{});
    case UnaryOp::Tanh:
      return map1<T>(in, out, TanhF{});
    case UnaryOp::Sigmoid:
      return map1<T>(in, out, SigmoidF{});
    case UnaryOp::Relu:
      return map1<T>(in, out, ReluF{});
    case UnaryOp::Gelu:
      return map1<T>(in, out, GeluF<T>{});
    case UnaryOp::GeluTanh:
      return map1<T>(in, out, GeluTanhF{});
    case UnaryOp::Clamp:
      return map1<T>(in, out, ClampF<C>{C(alpha), C(beta)});
    case UnaryOp::PowScalar:
      return map1<T>(in, out, PowScalarF<C>{C(alpha)});
  }
}

template <class T>
void unary_integral(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  switch (op) {
    case UnaryOp::Neg:
      return map1<T>(in, out, NegF{});
    case UnaryOp::Abs:
      return map1<T>(in, out, AbsF{});
    case UnaryOp::Relu:
      return map1<T>(in, out, ReluF{});
    case UnaryOp::Clamp: {
      // The bounds arrive as doubles (±inf when absent); clamp them into T's range first.
      double lo = std::max(alpha, double(std::numeric_limits<T>::lowest()));
      double hi = std::min(beta, double(std::numeric_limits<T>::max()));
      return map1<T>(in, out, ClampF<T>{T(std::ceil(lo)), T(std::floor(hi))});
    }
    default:
      LATHE_FAIL("unary: this op needs a floating tensor, got ", in.dtype);
  }
}

void unary_kernel(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  LATHE_CHECK(in.dtype == out.dtype, "unary: input ", in.dtype, " and output ", out.dtype,
              " dtypes differ");
  dispatch_device_arith(in.dtype, "unary", [&]<class T>() {
    if constexpr (std::is_integral_v<T>) {
      unary_integral<T>(op, in, out, alpha, beta);
    } else {
      unary_float<T>(op, in, out, alpha, beta);
    }
  });
}

// ---- backward functors: C operator()(C x, C grad_out) ----

struct NegB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C, C d) const {
    return -d;
  }
};
struct ExpB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return d * dmath::exp(v);
  }
};
struct LogB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return d / v;
  }
};
struct SqrtB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return d * C(0.5) / dmath::sqrt(v);
  }
};
struct RsqrtB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return d * C(-0.5) / (v * dmath::sqrt(v));
  }
};
struct AbsB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return v > 0 ? d : (v < 0 ? -d : C(0));
  }
};
struct TanhB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    C t = dmath::tanh(v);
    return d * (C(1) - t * t);
  }
};
struct SigmoidB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    C s = sigmoid_of(v);
    return d * s * (C(1) - s);
  }
};
struct ReluB {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return v > 0 ? d : C(0);
  }
};
using GeluTanhB = gelu_ops::TanhB;
template <class C>
struct ClampB {
  C lo, hi;
  LATHE_DEVICE_INLINE C operator()(C v, C d) const { return (v >= lo && v <= hi) ? d : C(0); }
};
template <class C>
struct PowScalarB {
  C a;
  LATHE_DEVICE_INLINE C operator()(C v, C d) const {
    return a == C(0) ? C(0) : d * a * dmath::pow(v, a - C(1));
  }
};

template <class T, class Op>
struct UnaryBackwardMap {
  const T* x;
  const T* grad_out;
  T* grad_in;
  Op op;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    using C = compute_t<T>;
    grad_in[off[0]] = convert<T>(op(convert<C>(x[off[1]]), convert<C>(grad_out[off[2]])));
  }
};

template <class T, class Op>
void map2(const View& x, const View& g, const View& out, Op op) {
  if (try_map2_vec<T>("unary_backward", x, g, out, op)) return;
  launch_elementwise<3>(
      "unary_backward", {&out, &x, &g},
      UnaryBackwardMap<T, Op>{static_cast<const T*>(x.data), static_cast<const T*>(g.data),
                              static_cast<T*>(out.data), op});
}

template <class T>
void unary_backward_float(UnaryOp op, const View& x, const View& g, const View& out, double alpha,
                          double beta) {
  using C = compute_t<T>;
  switch (op) {
    case UnaryOp::Neg:
      return map2<T>(x, g, out, NegB{});
    case UnaryOp::Exp:
      return map2<T>(x, g, out, ExpB{});
    case UnaryOp::Log:
      return map2<T>(x, g, out, LogB{});
    case UnaryOp::Sqrt:
      return map2<T>(x, g, out, SqrtB{});
    case UnaryOp::Rsqrt:
      return map2<T>(x, g, out, RsqrtB{});
    case UnaryOp::Abs:
      return map2<T>(x, g, out, AbsB{});
    case UnaryOp::Tanh:
      return map2<T>(x, g, out, TanhB{});
    case UnaryOp::Sigmoid:
      return map2<T>(x, g, out, SigmoidB{});
    case UnaryOp::Relu:
      return map2<T>(x, g, out, ReluB{});
    case UnaryOp::Gelu:
      return map2<T>(x, g, out, gelu_ops::ErfB<sizeof(T) == 2>{});
    case UnaryOp::GeluTanh:
      return map2<T>(x, g, out, GeluTanhB{});
    case UnaryOp::Clamp:
      return map2<T>(x, g, out, ClampB<C>{C(alpha), C(beta)});
    case UnaryOp::PowScalar:
      return map2<T>(x, g, out, PowScalarB<C>{C(alpha)});
  }
}

void unary_backward_kernel(UnaryOp op, const View& x, const View& grad_out, const View& grad_in,
                           double alpha, double beta) {
  LATHE_CHECK(x.dtype == grad_out.dtype && x.dtype == grad_in.dtype,
              "unary_backward: dtypes of x (", x.dtype, "), grad_out (", grad_out.dtype,
              ") and grad_in (", grad_in.dtype, ") differ");
  dispatch_device_float(x.dtype, "unary_backward", [&]<class T>() {
    unary_backward_float<T>(op, x, grad_out, grad_in, alpha, beta);
  });
}

}  // namespace

extern const UnaryFn unary = unary_kernel;
extern const UnaryBackwardFn unary_backward = unary_backward_kernel;

}  // namespace lathe::kernels::cuda
