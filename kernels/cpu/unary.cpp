// Elementwise unary kernels and their backward (grad_in = grad_out * f'(x)). Each op is a small
// functor applied by one row loop, contiguous rows written as plain loops the compiler vectorizes.
// Backward kernels recompute f'(x) from x rather than saving intermediate tensors.
#include <cmath>
#include <limits>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/strided_loop.h"
#include "kernels/cpu/vec_math.h"

namespace lathe::kernels::cpu {

namespace {

template <class T, class F>
void map1(const View& in, const View& out, F f) {
  for_each_row<2>({&out, &in}, [f](std::array<char*, 2> p, std::array<int64_t, 2> s, int64_t n) {
    if (s[0] == sizeof(T) && s[1] == sizeof(T)) {
      T* o = reinterpret_cast<T*>(p[0]);
      const T* x = reinterpret_cast<const T*>(p[1]);
      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) at<T>(p[0], s[0], i) = f(at<T>(p[1], s[1], i));
    }
  });
}

template <class T, class F>
void map2(const View& x_view, const View& g_view, const View& out, F f) {
  for_each_row<3>({&out, &x_view, &g_view},
                  [f](std::array<char*, 3> p, std::array<int64_t, 3> s, int64_t n) {
                    if (s[0] == sizeof(T) && s[1] == sizeof(T) && s[2] == sizeof(T)) {
                      T* o = reinterpret_cast<T*>(p[0]);
                      const T* x = reinterpret_cast<const T*>(p[1]);
                      const T* g = reinterpret_cast<const T*>(p[2]);
                      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], g[i]);
                    } else {
                      for (int64_t i = 0; i < n; ++i) {
                        at<T>(p[0], s[0], i) = f(at<T>(p[1], s[1], i), at<T>(p[2], s[2], i));
                      }
                    }
                  });
}

template <class T>
T sigmoid_of(T x) {
  return T(1) / (T(1) + exp_fast<T>(-x));
}

template <class T>
void unary_float(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  const T a = T(alpha), b = T(beta);
  switch (op) {
    case UnaryOp::Neg:
      return map1<T>(in, out, [](T x) { return -x; });
    case UnaryOp::Exp:
      return map1<T>(in, out, [](T x) { return std::exp(x); });
    case UnaryOp::Log:
      return map1<T>(in, out, [](T x) { return std::log(x); });
    case UnaryOp::Sqrt:
      return map1<T>(in, out, [](T x) { return std::sqrt(x); });
    case UnaryOp::Rsqrt:
      return map1<T>(in, out, [](T x) { return T(1) / std::sqrt(x); });
    case UnaryOp::Abs:
      return map1<T>(in, out, [](T x) { return std::abs(x); });
    case UnaryOp::Tanh:
      return map1<T>(in, out, [](T x) { return std::tanh(x); });
    case UnaryOp::Sigmoid:
      return map1<T>(in, out, [](T x) { return sigmoid_of(x); });
    case UnaryOp::Relu:
      return map1<T>(in, out, [](T x) { return x > T(0) ? x : T(0); });
    case UnaryOp::Gelu:
      return map1<T>(in, out, [](T x) { return gelu_erf(x); });
    case UnaryOp::GeluTanh:
      return map1<T>(in, out, [](T x) { return gelu_tanh(x); });
    case UnaryOp::Clamp:
      return map1<T>(in, out, [a, b](T x) { return x != x ? x : (x < a ? a : (x > b ? b : x)); });
    case UnaryOp::PowScalar:
      return map1<T>(in, out, [a](T x) { return std::pow(x, a); });
  }
}

template <class T>
void unary_integral(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  switch (op) {
    case UnaryOp::Neg:
      return map1<T>(in, out, [](T x) { return T(-x); });
    case UnaryOp::Abs:
      return map1<T>(in, out, [](T x) { return T(x < 0 ? -x : x); });
    case UnaryOp::Relu:
      return map1<T>(in, out, [](T x) { return T(x > 0 ? x : 0); });
    case UnaryOp::Clamp: {
      // The bounds arrive as doubles (±inf when absent); clamp them into T's range first.
      double lo = std::max(alpha, double(std::numeric_limits<T>::lowest()));
      double hi = std::min(beta, double(std::numeric_limits<T>::max()));
      T a = T(std::ceil(lo)), b = T(std::floor(hi));
      return map1<T>(in, out, [a, b](T x) { return x < a ? a : (x > b ? b : x); });
    }
    default:
      LATHE_FAIL("unary: this op needs a floating tensor, got ", dtype_v<T>);
  }
}

void unary_kernel(UnaryOp op, const View& in, const View& out, double alpha, double beta) {
  dispatch_numeric(in.dtype, "unary", [&]<class T>() {
    if constexpr (std::is_floating_point_v<T>) {
      unary_float<T>(op, in, out, alpha, beta);
    } else {
      unary_integral<T>(op, in, out, alpha, beta);
    }
  });
}

template <class T>
void unary_backward_float(UnaryOp op, const View& x, const View& g, const View& out, double alpha,
                          double beta) {
  const T a = T(alpha), b = T(beta);
  switch (op) {
    case UnaryOp::Neg:
      return map2<T>(x, g, out, [](T, T d) { return -d; });
    case UnaryOp::Exp:
      return map2<T>(x, g, out, [](T v, T d) { return d * std::exp(v); });
    case UnaryOp::Log:
      return map2<T>(x, g, out, [](T v, T d) { return d / v; });
    case UnaryOp::Sqrt:
      return map2<T>(x, g, out, [](T v, T d) { return d * T(0.5) / std::sqrt(v); });
    case UnaryOp::Rsqrt:
      return map2<T>(x, g, out, [](T v, T d) { return d * T(-0.5) / (v * std::sqrt(v)); });
    case UnaryOp::Abs:
      return map2<T>(x, g, out, [](T v, T d) { return v > 0 ? d : (v < 0 ? -d : T(0)); });
    case UnaryOp::Tanh:
      return map2<T>(x, g, out, [](T v, T d) {
        T t = std::tanh(v);
        return d * (T(1) - t * t);
      });
    case UnaryOp::Sigmoid:
      return map2<T>(x, g, out, [](T v, T d) {
        T s = sigmoid_of(v);
        return d * s * (T(1) - s);
      });
    case UnaryOp::Relu:
      return map2<T>(x, g, out, [](T v, T d) { return v > 0 ? d : T(0); });
    case UnaryOp::Gelu:
      return map2<T>(x, g, out, [](T v, T d) { return gelu_erf_grad(v, d); });
    case UnaryOp::GeluTanh:
      return map2<T>(x, g, out, [](T v, T d) { return gelu_tanh_grad(v, d); });
    case UnaryOp::Clamp:
      return map2<T>(x, g, out, [a, b](T v, T d) { return (v >= a && v <= b) ? d : T(0); });
    case UnaryOp::PowScalar:
      return map2<T>(x, g, out,
                     [a](T v, T d) { return a == T(0) ? T(0) : d * a * std::pow(v, a - T(1)); });
  }
}

void unary_backward_kernel(UnaryOp op, const View& x, const View& grad_out, const View& grad_in,
                           double alpha, double beta) {
  dispatch_float(x.dtype, "unary_backward", [&]<class T>() {
    unary_backward_float<T>(op, x, grad_out, grad_in, alpha, beta);
  });
}

}  // namespace

extern const UnaryFn unary = unary_kernel;
extern const UnaryBackwardFn unary_backward = unary_backward_kernel;

}  // namespace lathe::kernels::cpu
