// Elementwise binary kernels over broadcast views. Rows come from for_each_row (strided_loop.h);
// the two common layouts get their own loops so the compiler vectorizes them: all operands
// contiguous, and a contiguous tensor combined with a broadcast scalar (x * 0.5, x + bias row).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/strided_loop.h"

namespace lathe::kernels::cpu {

namespace {

template <class T, class Out, class F>
void run_rows(const View& a, const View& b, const View& out, F f) {
  for_each_row<3>({&out, &a, &b}, [f](std::array<char*, 3> p, std::array<int64_t, 3> s, int64_t n) {
    Out* o = reinterpret_cast<Out*>(p[0]);
    const T* x = reinterpret_cast<const T*>(p[1]);
    const T* y = reinterpret_cast<const T*>(p[2]);
    constexpr int64_t ts = sizeof(T), os = sizeof(Out);
    if (s[0] == os && s[1] == ts && s[2] == ts) {
      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], y[i]);
    } else if (s[0] == os && s[1] == ts && s[2] == 0) {
      const T yv = *y;
      for (int64_t i = 0; i < n; ++i) o[i] = f(x[i], yv);
    } else if (s[0] == os && s[1] == 0 && s[2] == ts) {
      const T xv = *x;
      for (int64_t i = 0; i < n; ++i) o[i] = f(xv, y[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        at<Out>(p[0], s[0], i) = f(at<T>(p[1], s[1], i), at<T>(p[2], s[2], i));
      }
    }
  });
}

template <class T>
T power(T x, T y) {
  if constexpr (std::is_integral_v<T>) {
    if (y < 0) return x == 1 ? 1 : (x == -1 ? (y % 2 ? -1 : 1) : 0);
    T r = 1;
    for (T e = y, base = x; e > 0; e >>= 1, base *= base) {
      if (e & 1) r *= base;
    }
    return r;
  } else {
    return std::pow(x, y);
  }
}

template <class T>
void binary_typed(BinaryOp op, const View& a, const View& b, const View& out) {
  switch (op) {
    case BinaryOp::Add:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return T(x + y); });
    case BinaryOp::Sub:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return T(x - y); });
    case BinaryOp::Mul:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return T(x * y); });
    case BinaryOp::Div:
      if constexpr (std::is_integral_v<T>) {
        // Integer division by zero is undefined behaviour in C++; define it as 0 instead.
        return run_rows<T, T>(a, b, out, [](T x, T y) { return y == 0 ? T(0) : T(x / y); });
      } else {
        return run_rows<T, T>(a, b, out, [](T x, T y) { return x / y; });
      }
    case BinaryOp::Pow:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return power(x, y); });
    case BinaryOp::Maximum:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return (x != x || x > y) ? x : y; });
    case BinaryOp::Minimum:
      return run_rows<T, T>(a, b, out, [](T x, T y) { return (x != x || x < y) ? x : y; });
    case BinaryOp::Eq:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x == y; });
    case BinaryOp::Ne:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x != y; });
    case BinaryOp::Lt:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x < y; });
    case BinaryOp::Le:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x <= y; });
    case BinaryOp::Gt:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x > y; });
    case BinaryOp::Ge:
      return run_rows<T, bool>(a, b, out, [](T x, T y) { return x >= y; });
  }
}

void binary_kernel(BinaryOp op, const View& a, const View& b, const View& out) {
  if (a.dtype == DType::Bool && (op == BinaryOp::Eq || op == BinaryOp::Ne)) {
    return op == BinaryOp::Eq
               ? run_rows<bool, bool>(a, b, out, [](bool x, bool y) { return x == y; })
               : run_rows<bool, bool>(a, b, out, [](bool x, bool y) { return x != y; });
  }
  dispatch_numeric(a.dtype, "binary", [&]<class T>() { binary_typed<T>(op, a, b, out); });
}

}  // namespace

extern const BinaryFn binary = binary_kernel;

}  // namespace lathe::kernels::cpu
