// Elementwise binary kernels (arithmetic, maximum/minimum, comparisons) and where() on cuda. The
// op layer passes operands already broadcast to the output's shape (stride 0), so each op is one
// elementwise launch; broadcast operands take the strided path, where coalescing usually leaves a
// single dim (one multiply per element). f16/bf16 compute in f32 and round once on store;
// comparisons write bool. Semantics match the cpu kernels: NaN wins maximum/minimum, integer
// division by zero gives 0, integer pow by repeated squaring. Arithmetic ops on three contiguous,
// 16-byte aligned operands (gradient accumulation, residual adds, scaling) take the vector kernel
// of vector_map.cuh.
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/math.cuh"
#include "kernels/cuda/vector_map.cuh"

namespace lathe::kernels::cuda {

namespace {

struct AddF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    return C(x + y);
  }
};
struct SubF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    return C(x - y);
  }
};
struct MulF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    return C(x * y);
  }
};
struct DivF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    if constexpr (std::is_integral_v<C>) {
      return y == 0 ? C(0) : C(x / y);
    } else {
      return x / y;
    }
  }
};
struct PowF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    if constexpr (std::is_integral_v<C>) {
      if (y < 0) return x == 1 ? 1 : (x == -1 ? (y % 2 ? -1 : 1) : 0);
      C r = 1;
      for (C e = y, base = x; e > 0; e >>= 1, base *= base) {
        if (e & 1) r *= base;
      }
      return r;
    } else {
      return dmath::pow(x, y);
    }
  }
};
struct MaximumF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    return (x != x || x > y) ? x : y;
  }
};
struct MinimumF {
  template <class C>
  LATHE_DEVICE_INLINE C operator()(C x, C y) const {
    return (x != x || x < y) ? x : y;
  }
};
struct EqF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x == y;
  }
};
struct NeF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x != y;
  }
};
struct LtF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x < y;
  }
};
struct LeF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x <= y;
  }
};
struct GtF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x > y;
  }
};
struct GeF {
  template <class C>
  LATHE_DEVICE_INLINE bool operator()(C x, C y) const {
    return x >= y;
  }
};

// out = op(a, b); Out is T for arithmetic ops and bool for comparisons.
template <class T, class Out, class Op>
struct BinaryMap {
  const T* a;
  const T* b;
  Out* out;
  Op op;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[3]) const {
    using C = compute_t<T>;
    out[off[0]] = convert<Out>(op(convert<C>(a[off[1]]), convert<C>(b[off[2]])));
  }
};

template <class T, class Out, class Op>
void run(const View& a, const View& b, const View& out, Op op) {
  if constexpr (std::is_same_v<T, Out> && !std::is_same_v<T, bool>) {
    if (try_map2_vec<T>("binary", a, b, out, op)) return;
  }
  launch_elementwise<3>(
      "binary", {&out, &a, &b},
      BinaryMap<T, Out, Op>{static_cast<const T*>(a.data), static_cast<const T*>(b.data),
                            static_cast<Out*>(out.data), op});
}

template <class T>
void binary_typed(BinaryOp op, const View& a, const View& b, const View& out) {
  switch (op) {
    case BinaryOp::Add:
      return run<T, T>(a, b, out, AddF{});
    case BinaryOp::Sub:
      return run<T, T>(a, b, out, SubF{});
    case BinaryOp::Mul:
      return run<T, T>(a, b, out, MulF{});
    case BinaryOp::Div:
      return run<T, T>(a, b, out, DivF{});
    case BinaryOp::Pow:
      return run<T, T>(a, b, out, PowF{});
    case BinaryOp::Maximum:
      return run<T, T>(a, b, out, MaximumF{});
    case BinaryOp::Minimum:
      return run<T, T>(a, b, out, MinimumF{});
    case BinaryOp::Eq:
      return run<T, bool>(a, b, out, EqF{});
    case BinaryOp::Ne:
      return run<T, bool>(a, b, out, NeF{});
    case BinaryOp::Lt:
      return run<T, bool>(a, b, out, LtF{});
    case BinaryOp::Le:
      return run<T, bool>(a, b, out, LeF{});
    case BinaryOp::Gt:
      return run<T, bool>(a, b, out, GtF{});
    case BinaryOp::Ge:
      return run<T, bool>(a, b, out, GeF{});
  }
}

bool is_comparison(BinaryOp op) {
  return op >= BinaryOp::Eq;
}

void binary_kernel(BinaryOp op, const View& a, const View& b, const View& out) {
  LATHE_CHECK(a.dtype == b.dtype, "binary: operand dtypes differ (", a.dtype, " and ", b.dtype,
              ")");
  LATHE_CHECK(out.dtype == (is_comparison(op) ? DType::Bool : a.dtype), "binary: output dtype ",
              out.dtype, " does not fit the op on ", a.dtype, " operands");
  if (a.dtype == DType::Bool && (op == BinaryOp::Eq || op == BinaryOp::Ne)) {
    return op == BinaryOp::Eq ? run<bool, bool>(a, b, out, EqF{})
                              : run<bool, bool>(a, b, out, NeF{});
  }
  dispatch_device_arith(a.dtype, "binary", [&]<class T>() { binary_typed<T>(op, a, b, out); });
}

// ---- where ----

template <class T>
struct WhereMap {
  const uint8_t* cond;  // bool's object representation is 0 or 1
  const T* a;
  const T* b;
  T* out;
  LATHE_DEVICE_INLINE void operator()(const int64_t (&off)[4]) const {
    out[off[0]] = cond[off[1]] ? a[off[2]] : b[off[3]];
  }
};

void where_kernel(const View& cond, const View& a, const View& b, const View& out) {
  LATHE_CHECK(cond.dtype == DType::Bool, "where: condition must be bool, got ", cond.dtype);
  LATHE_CHECK(a.dtype == out.dtype && b.dtype == out.dtype, "where: dtypes of a (", a.dtype,
              "), b (", b.dtype, ") and out (", out.dtype, ") must match");
  dispatch_device_all(out.dtype, "where", [&]<class T>() {
    launch_elementwise<4>(
        "where", {&out, &cond, &a, &b},
        WhereMap<T>{static_cast<const uint8_t*>(cond.data), static_cast<const T*>(a.data),
                    static_cast<const T*>(b.data), static_cast<T*>(out.data)});
  });
}

}  // namespace

extern const BinaryFn binary = binary_kernel;
extern const WhereFn where = where_kernel;

}  // namespace lathe::kernels::cuda
