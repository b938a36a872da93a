// Elementwise ops. Binary ops broadcast (numpy rules) and promote mixed dtypes (float beats int,
// wider beats narrower, f16 with bf16 gives f32, as in PyTorch); their gradients are reduced back
// to each input's shape and dtype with sum_to, so a bf16 input gets a bf16 gradient even when the
// result was f32. f16/bf16 compute in f32 and round once (widened on the cpu, whose kernels only
// store them). Unary ops run one kernel forward and one fused backward kernel (grad * f'(x)).
#include <cmath>
#include <limits>

#include "core/tensor_internal.h"

namespace lathe {

namespace {

using kernels::BinaryOp;
using kernels::UnaryOp;

int dtype_rank(DType t) {
  switch (t) {
    case DType::Bool:
      return 0;
    case DType::I32:
      return 1;
    case DType::I64:
      return 2;
    case DType::BF16:
      return 3;
    case DType::F16:
      return 4;
    case DType::F32:
      return 5;
    case DType::F64:
      return 6;
  }
  return 0;
}

DType promote(DType a, DType b) {
  if (a == b) return a;
  if ((a == DType::F16 && b == DType::BF16) || (a == DType::BF16 && b == DType::F16)) {
    return DType::F32;
  }
  return dtype_rank(a) >= dtype_rank(b) ? a : b;
}

// What backward needs to know about an input it does not save: its shape and dtype.
struct InputMeta {
  Shape shape;
  DType dtype;
  explicit InputMeta(const Tensor& t) : shape(t.shape()), dtype(t.dtype()) {}
};

// The gradient `g` of a broadcast result, brought back to an input's shape and dtype.
Tensor reduce_grad(const Tensor& g, const InputMeta& input) {
  Tensor r = sum_to(g, input.shape);
  return r.dtype() == input.dtype ? r : r.to(input.dtype);
}

bool is_comparison(BinaryOp op) {
  return op == BinaryOp::Eq || op == BinaryOp::Ne || op == BinaryOp::Lt || op == BinaryOp::Le ||
         op == BinaryOp::Gt || op == BinaryOp::Ge;
}

// Forward of a binary op: validation, promotion, broadcasting, the kernel. No autograd.
Tensor binary_forward(BinaryOp op, const char* name, const Tensor& a_in, const Tensor& b_in) {
  detail::check_defined(a_in, name, "a");
  detail::check_defined(b_in, name, "b");
  detail::check_same_device(a_in, b_in, name);
  DType common = promote(a_in.dtype(), b_in.dtype());
  if (common == DType::Bool && !(op == BinaryOp::Eq || op == BinaryOp::Ne)) common = DType::I64;
  // `/` is true division, as in PyTorch and numpy: integers divide into f32.
  if (op == BinaryOp::Div && !is_floating(common)) common = DType::F32;
  // The forward is not recorded here (the op records its own node), so neither are the casts.
  NoGradGuard no_grad;
  Tensor a = a_in.dtype() == common ? a_in : a_in.to(common);
  Tensor b = b_in.dtype() == common ? b_in : b_in.to(common);
  if (detail::half_via_f32(a)) {
    Tensor out = binary_forward(op, name, a.to(DType::F32), b.to(DType::F32));
    return is_comparison(op) ? out : out.to(common);
  }
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(
      shape, TensorOptions(is_comparison(op) ? DType::Bool : common).device(a.device()));
  if (out.numel() > 0) {
    LATHE_KERNEL(out.device(), binary, name)
    (op, detail::make_broadcast_view(a, shape), detail::make_broadcast_view(b, shape),
     detail::make_view(out));
  }
  return out;
}

// A scalar operand as a 0-dim tensor of a dtype that keeps `value` exact where possible.
Tensor scalar_like(const Tensor& t, double value) {
  DType dtype = t.dtype();
  if (!is_floating(dtype) && value != std::floor(value)) dtype = DType::F32;
  if (dtype == DType::Bool) dtype = DType::I64;
  return scalar_tensor(value, TensorOptions(dtype).device(t.device()));
}

Tensor unary_forward(UnaryOp op, const char* name, const Tensor& x, double alpha = 0,
                     double beta = 0, bool floating_only = true) {
  detail::check_defined(x, name, "x");
  if (floating_only) detail::check_floating(x, name);
  LATHE_CHECK(x.dtype() != DType::Bool, name, ": not defined for bool tensors");
  if (detail::half_via_f32(x)) {
    NoGradGuard no_grad;
    return unary_forward(op, name, x.to(DType::F32), alpha, beta, floating_only).to(x.dtype());
  }
  Tensor out = Tensor::empty(x.shape(), TensorOptions(x.dtype()).device(x.device()));
  if (out.numel() > 0) {
    LATHE_KERNEL(x.device(), unary, name)
    (op, detail::make_view(x), detail::make_view(out), alpha, beta);
  }
  return out;
}

// Unary op with its fused backward kernel.
Tensor unary_op(UnaryOp op, const char* name, const Tensor& x, double alpha = 0, double beta = 0,
                bool floating_only = true) {
  Tensor out = unary_forward(op, name, x, alpha, beta, floating_only);
  if (autograd::any_requires_grad({&x})) {
    autograd::record(name, {x}, {out},
                     [op, name, alpha, beta,
                      saved = autograd::SavedTensor(x, name)](const std::vector<Tensor>& g) {
                       const Tensor& saved_x = saved.get();
                       // f16/bf16 on the cpu: the f32 kernel on widened values, rounded once.
                       const bool widen = detail::half_via_f32(saved_x);
                       const Tensor xs = widen ? saved_x.to(DType::F32) : saved_x;
                       Tensor gx =
                           Tensor::empty(xs.shape(), TensorOptions(xs.dtype()).device(xs.device()));
                       if (gx.numel() > 0) {
                         Tensor gy = g[0].dtype() == xs.dtype() ? g[0] : g[0].to(xs.dtype());
                         LATHE_KERNEL(xs.device(), unary_backward, name)
                         (op, detail::make_view(xs), detail::make_broadcast_view(gy, xs.shape()),
                          detail::make_view(gx), alpha, beta);
                       }
                       return std::vector<Tensor>{widen ? gx.to(saved_x.dtype()) : gx};
                     });
  }
  return out;
}

}  // namespace

// ---- binary ops with gradients ----

Tensor add(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Add, "add", a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    autograd::record(
        "add", {a, b}, {out},
        [a_meta = InputMeta(a), b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
          return std::vector<Tensor>{reduce_grad(g[0], a_meta), reduce_grad(g[0], b_meta)};
        });
  }
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Sub, "sub", a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    autograd::record(
        "sub", {a, b}, {out},
        [a_meta = InputMeta(a), b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
          return std::vector<Tensor>{reduce_grad(g[0], a_meta), reduce_grad(-g[0], b_meta)};
        });
  }
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Mul, "mul", a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    bool need_a = a.requires_grad(), need_b = b.requires_grad();
    autograd::record("mul", {a, b}, {out},
                     [need_a, need_b, sa = autograd::SavedTensor(need_b ? a : Tensor(), "mul"),
                      sb = autograd::SavedTensor(need_a ? b : Tensor(), "mul"),
                      a_meta = InputMeta(a), b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
                       Tensor ga = need_a ? reduce_grad(g[0] * sb.get(), a_meta) : Tensor();
                       Tensor gb = need_b ? reduce_grad(g[0] * sa.get(), b_meta) : Tensor();
                       return std::vector<Tensor>{ga, gb};
                     });
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Div, "div", a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    bool need_b = b.requires_grad();
    autograd::record("div", {a, b}, {out},
                     [need_b, sa = autograd::SavedTensor(need_b ? a : Tensor(), "div"),
                      sb = autograd::SavedTensor(b, "div"), a_meta = InputMeta(a),
                      b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
                       const Tensor& bv = sb.get();
                       Tensor ga = reduce_grad(g[0] / bv, a_meta);
                       Tensor gb =
                           need_b ? reduce_grad(-g[0] * sa.get() / (bv * bv), b_meta) : Tensor();
                       return std::vector<Tensor>{ga, gb};
                     });
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(BinaryOp::Pow, "pow", a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    bool need_b = b.requires_grad();
    autograd::record(
        "pow", {a, b}, {out},
        [need_b, sa = autograd::SavedTensor(a, "pow"), sb = autograd::SavedTensor(b, "pow"),
         so = autograd::SavedTensor(need_b ? out.detach() : Tensor(), "pow"), a_meta = InputMeta(a),
         b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
          const Tensor& av = sa.get();
          const Tensor& bv = sb.get();
          Tensor ga = reduce_grad(g[0] * bv * pow(av, bv - 1.0), a_meta);
          Tensor gb = need_b ? reduce_grad(g[0] * so.get() * log(av), b_meta) : Tensor();
          return std::vector<Tensor>{ga, gb};
        });
  }
  return out;
}

namespace {
// maximum/minimum: the gradient goes to the selected input, split equally on ties.
Tensor extremum(BinaryOp op, const char* name, const Tensor& a, const Tensor& b) {
  Tensor out = binary_forward(op, name, a, b);
  if (autograd::any_requires_grad({&a, &b})) {
    autograd::record(
        name, {a, b}, {out},
        [op, name, sa = autograd::SavedTensor(a, name), sb = autograd::SavedTensor(b, name),
         a_meta = InputMeta(a), b_meta = InputMeta(b)](const std::vector<Tensor>& g) {
          const Tensor& av = sa.get();
          const Tensor& bv = sb.get();
          Tensor wins = op == BinaryOp::Maximum ? gt(av, bv) : lt(av, bv);
          DType t = g[0].dtype();
          Tensor weight_a = wins.to(t) + eq(av, bv).to(t) * 0.5;
          Tensor ga = reduce_grad(g[0] * weight_a, a_meta);
          Tensor gb = reduce_grad(g[0] * (1.0 - weight_a), b_meta);
          return std::vector<Tensor>{ga, gb};
        });
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) {
  return extremum(BinaryOp::Maximum, "maximum", a, b);
}
Tensor minimum(const Tensor& a, const Tensor& b) {
  return extremum(BinaryOp::Minimum, "minimum", a, b);
}

Tensor eq(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Eq, "eq", a, b);
}
Tensor ne(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Ne, "ne", a, b);
}
Tensor lt(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Lt, "lt", a, b);
}
Tensor le(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Le, "le", a, b);
}
Tensor gt(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Gt, "gt", a, b);
}
Tensor ge(const Tensor& a, const Tensor& b) {
  return binary_forward(BinaryOp::Ge, "ge", a, b);
}

Tensor operator+(const Tensor& a, const Tensor& b) {
  return add(a, b);
}
Tensor operator-(const Tensor& a, const Tensor& b) {
  return sub(a, b);
}
Tensor operator*(const Tensor& a, const Tensor& b) {
  return mul(a, b);
}
Tensor operator/(const Tensor& a, const Tensor& b) {
  return div(a, b);
}
Tensor operator+(const Tensor& a, double b) {
  return add(a, scalar_like(a, b));
}
Tensor operator-(const Tensor& a, double b) {
  return sub(a, scalar_like(a, b));
}
Tensor operator*(const Tensor& a, double b) {
  return mul(a, scalar_like(a, b));
}
Tensor operator/(const Tensor& a, double b) {
  return div(a, scalar_like(a, b));
}
Tensor operator+(double a, const Tensor& b) {
  return add(scalar_like(b, a), b);
}
Tensor operator-(double a, const Tensor& b) {
  return sub(scalar_like(b, a), b);
}
Tensor operator*(double a, const Tensor& b) {
  return mul(scalar_like(b, a), b);
}
Tensor operator/(double a, const Tensor& b) {
  return div(scalar_like(b, a), b);
}
Tensor operator-(const Tensor& a) {
  return neg(a);
}

// ---- unary ops ----

Tensor neg(const Tensor& x) {
  return unary_op(UnaryOp::Neg, "neg", x, 0, 0, false);
}
Tensor exp(const Tensor& x) {
  return unary_op(UnaryOp::Exp, "exp", x);
}
Tensor log(const Tensor& x) {
  return unary_op(UnaryOp::Log, "log", x);
}
Tensor sqrt(const Tensor& x) {
  return unary_op(UnaryOp::Sqrt, "sqrt", x);
}
Tensor rsqrt(const Tensor& x) {
  return unary_op(UnaryOp::Rsqrt, "rsqrt", x);
}
Tensor abs(const Tensor& x) {
  return unary_op(UnaryOp::Abs, "abs", x, 0, 0, false);
}
Tensor tanh(const Tensor& x) {
  return unary_op(UnaryOp::Tanh, "tanh", x);
}
Tensor sigmoid(const Tensor& x) {
  return unary_op(UnaryOp::Sigmoid, "sigmoid", x);
}
Tensor relu(const Tensor& x) {
  return unary_op(UnaryOp::Relu, "relu", x, 0, 0, false);
}

Tensor gelu(const Tensor& x, GeluApproximation approximate) {
  return approximate == GeluApproximation::Tanh ? unary_op(UnaryOp::GeluTanh, "gelu", x)
                                                : unary_op(UnaryOp::Gelu, "gelu", x);
}

Tensor clamp(const Tensor& x, std::optional<double> min, std::optional<double> max) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  double lo = min.value_or(-inf), hi = max.value_or(inf);
  LATHE_CHECK(!(lo > hi), "clamp: min ", lo, " is greater than max ", hi);
  return unary_op(UnaryOp::Clamp, "clamp", x, lo, hi, false);
}

Tensor pow(const Tensor& a, double exponent) {
  return unary_op(UnaryOp::PowScalar, "pow", a, exponent, 0);
}

}  // namespace lathe
