// Elementwise ops against float64 loops, gradients against finite differences.
#include <cmath>
#include <limits>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Naive broadcast reference: out[i] = f(a[bcast i], b[bcast i]).
template <class F>
std::vector<double> broadcast_ref(const Tensor& a, const Tensor& b, const Shape& out, F f) {
  auto av = a.to_vector<double>(), bv = b.to_vector<double>();
  std::vector<double> r(size_t(shape_numel(out)));
  for (int64_t flat = 0; flat < shape_numel(out); ++flat) {
    auto idx = unravel(flat, out);
    auto pick = [&](const Shape& s) {
      std::vector<int64_t> sub(s.size());
      for (size_t i = 0; i < s.size(); ++i) {
        int64_t o = idx[idx.size() - s.size() + i];
        sub[i] = s[i] == 1 ? 0 : o;
      }
      return ravel(sub, s);
    };
    r[size_t(flat)] = f(av[size_t(pick(a.shape()))], bv[size_t(pick(b.shape()))]);
  }
  return r;
}

}  // namespace

TEST_CASE("elementwise: binary ops broadcast like numpy", "[elementwise]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  double tol = dtype == DType::F32 ? 1e-6 : 1e-14;
  Tensor a = random_tensor({3, 1, 5}, 1, dtype, device, 0.5, 2.0);
  Tensor b = random_tensor({4, 1}, 2, dtype, device, 0.5, 2.0);
  Shape out{3, 4, 5};
  check_close(a + b, broadcast_ref(a, b, out, [](double x, double y) { return x + y; }), out, tol,
              tol);
  check_close(a - b, broadcast_ref(a, b, out, [](double x, double y) { return x - y; }), out, tol,
              tol);
  check_close(a * b, broadcast_ref(a, b, out, [](double x, double y) { return x * y; }), out, tol,
              tol);
  check_close(a / b, broadcast_ref(a, b, out, [](double x, double y) { return x / y; }), out, tol,
              tol);
  check_close(pow(a, b),
              broadcast_ref(a, b, out, [](double x, double y) { return std::pow(x, y); }), out, tol,
              tol);
  check_close(maximum(a, b),
              broadcast_ref(a, b, out, [](double x, double y) { return std::max(x, y); }), out);
  check_close(minimum(a, b),
              broadcast_ref(a, b, out, [](double x, double y) { return std::min(x, y); }), out);
  check_close(lt(a, b), broadcast_ref(a, b, out, [](double x, double y) { return double(x < y); }),
              out);
  check_close(ge(a, b), broadcast_ref(a, b, out, [](double x, double y) { return double(x >= y); }),
              out);
  CHECK(eq(a, a).dtype() == DType::Bool);
}

TEST_CASE("elementwise: scalars, non-contiguous operands and dtype promotion", "[elementwise]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor a = random_tensor({37, 3}, 3, DType::F64, device);
  Tensor at = non_contiguous(a);
  REQUIRE_FALSE(at.is_contiguous());
  auto av = a.to_vector<double>();
  std::vector<double> expect(av.size());
  for (size_t i = 0; i < av.size(); ++i) expect[i] = 2.0 * av[i] - 1.5;
  check_close(2.0 * at - 1.5, expect, {37, 3});
  for (size_t i = 0; i < av.size(); ++i) expect[i] = 1.0 / av[i];
  check_close(1.0 / at, expect, {37, 3}, 1e-12, 1e-12);

  Tensor i = arange(6, TensorOptions().device(device)).reshape({2, 3});
  Tensor f = full({3}, 0.5, TensorOptions(DType::F32).device(device));
  Tensor mixed = i * f;
  CHECK(mixed.dtype() == DType::F32);
  check_close(mixed, {0, 0.5, 1, 1.5, 2, 2.5}, {2, 3});
  CHECK((i + 1.0).dtype() == DType::I64);
  CHECK((i * 0.5).dtype() == DType::F32);
  check_close(i / 2.0, {0, 0.5, 1, 1.5, 2, 2.5}, {2, 3});
  CHECK((i / 2.0).dtype() == DType::F32);
  Tensor d = from_vector<double>({1, 2}, {2}, TensorOptions().device(device));
  CHECK((d + f.slice(0, 0, 2)).dtype() == DType::F64);
}

TEST_CASE("elementwise: unary ops match libm in float64", "[elementwise]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({7, 127}, 5, DType::F64, device, -3.0, 3.0);
  Tensor pos = random_tensor({7, 127}, 6, DType::F64, device, 0.1, 4.0);
  auto xv = x.to_vector<double>(), pv = pos.to_vector<double>();
  auto map = [](const std::vector<double>& v, auto f) {
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) r[i] = f(v[i]);
    return r;
  };
  Shape s{7, 127};
  const double t = 1e-13;
  check_close(neg(x), map(xv, [](double v) { return -v; }), s);
  check_close(exp(x), map(xv, [](double v) { return std::exp(v); }), s, t, t);
  check_close(log(pos), map(pv, [](double v) { return std::log(v); }), s, t, t);
  check_close(sqrt(pos), map(pv, [](double v) { return std::sqrt(v); }), s, t, t);
  check_close(rsqrt(pos), map(pv, [](double v) { return 1 / std::sqrt(v); }), s, t, t);
  check_close(abs(x), map(xv, [](double v) { return std::fabs(v); }), s);
  check_close(tanh(x), map(xv, [](double v) { return std::tanh(v); }), s, t, t);
  check_close(sigmoid(x), map(xv, [](double v) { return 1 / (1 + std::exp(-v)); }), s, t, t);
  check_close(relu(x), map(xv, [](double v) { return v > 0 ? v : 0.0; }), s);
  check_close(gelu(x),
              map(xv, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }), s, t,
              t);
  check_close(gelu(x, GeluApproximation::Tanh),
              map(xv,
                  [](double v) {
                    return 0.5 * v *
                           (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
                  }),
              s, t, t);
  check_close(clamp(x, -0.5, 1.0),
              map(xv, [](double v) { return std::min(1.0, std::max(-0.5, v)); }), s);
  check_close(clamp(x, std::nullopt, 0.25), map(xv, [](double v) { return std::min(0.25, v); }), s);
  check_close(pow(pos, 1.7), map(pv, [](double v) { return std::pow(v, 1.7); }), s, t, t);
}

TEST_CASE("elementwise: float32 kernels stay close to float64", "[elementwise]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({1000}, 9, DType::F32, device, -4.0, 4.0);
  auto xv = x.to_vector<double>();
  std::vector<double> e(xv.size()), g(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) {
    e[i] = std::exp(xv[i]);
    g[i] = 0.5 * xv[i] * (1 + std::erf(xv[i] / std::sqrt(2.0)));
  }
  check_close(exp(x), e, {1000}, 1e-6, 2e-6);
  // The vectorized f32 exp keeps libm's edge cases (results below FLT_MIN may flush to 0).
  const double inf = std::numeric_limits<double>::infinity();
  Tensor edges = from_vector<float>({100.f, 88.f, -100.f, -INFINITY, INFINITY, NAN}, {6},
                                    TensorOptions().device(device));
  check_close(exp(edges), {inf, std::exp(88.0), std::exp(-100.0), 0.0, inf, NAN}, {6}, 1.2e-38,
              2e-6);
  check_close(gelu(x), g, {1000}, 1e-6, 2e-6);
}

TEST_CASE("elementwise: float32 GELU and its gradient keep relative accuracy into the tails",
          "[elementwise]") {
  // The cpu kernel evaluates Φ(x) with its own polynomials (no libm erf): they must hold across
  // the whole range, at the branch point |x| = sqrt(2), and in the tails (absolute 1e-7 where
  // GELU is tiny, as 0.5·x·(1 + erf) gives on any device).
  auto device = GENERATE(from_range(test_devices()));
  std::vector<float> xs;
  for (int i = -2000; i <= 2000; ++i) xs.push_back(float(i) * 0.006f);  // [-12, 12]
  for (float v : {1.41421f, 1.41422f, -1.41421f, -1.41422f, 0.0f, -0.0f, 1e-20f, -1e-20f}) {
    xs.push_back(v);
  }
  const auto n = static_cast<int64_t>(xs.size());
  Tensor x = from_vector<float>(xs, {n}, TensorOptions().device(device));
  std::vector<double> g, dg;
  for (float f : xs) {
    const double v = f, cdf = 0.5 * std::erfc(-v / std::sqrt(2.0));
    const double pdf = std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI);
    g.push_back(v * cdf);
    dg.push_back(cdf + v * pdf);
  }
  // A real GPU's kernel takes Φ as (1 + erff) / 2 (kernels/cuda/gelu.cuh, PyTorch's formula):
  // in the lower tail that cancels, to an absolute error of |x| / 2 times a few ulp of 1.
#ifdef LATHE_CUDA_BUILD
  const double tail_atol = device.is_cuda() ? 4e-7 : 1e-7;
#else
  const double tail_atol = 1e-7;
#endif
  check_close(gelu(x), g, {n}, tail_atol, 2e-6);
  Tensor xg = x.detach().requires_grad_();
  gelu(xg).backward(ones_like(xg));
  check_close(xg.grad(), dg, {n}, tail_atol, 2e-6);
  // Non-finite inputs.
  Tensor edges =
      from_vector<float>({-INFINITY, INFINITY, NAN}, {3}, TensorOptions().device(device));
  const auto ge = gelu(edges).to_vector<double>();
  CHECK(std::isnan(ge[0]));  // -inf * 0, as PyTorch
  CHECK(ge[1] == std::numeric_limits<double>::infinity());
  CHECK(std::isnan(ge[2]));
}

TEST_CASE("elementwise: binary gradients, with broadcasting and views", "[elementwise][grad]") {
  Tensor a = random_tensor({3, 4}, 11, DType::F64, Device::cpu(), 0.5, 2.0);
  Tensor b = random_tensor({4}, 12, DType::F64, Device::cpu(), 0.5, 2.0);
  Tensor c = random_tensor({3, 1}, 13, DType::F64, Device::cpu(), 0.5, 2.0);
  gradcheck([](auto& in) { return in[0] + in[1]; }, {a, b});
  gradcheck([](auto& in) { return in[0] - in[1] * in[2]; }, {a, b, c});
  gradcheck([](auto& in) { return in[0] / in[1]; }, {a, c});
  gradcheck([](auto& in) { return pow(in[0], in[1]); }, {a, b});
  gradcheck([](auto& in) { return maximum(in[0], in[1]); }, {a, c});
  gradcheck([](auto& in) { return minimum(in[0].t(), in[1]); }, {a, c.reshape({3})});
  gradcheck([](auto& in) { return 3.0 - in[0] * 2.0 + 1.0 / in[0]; }, {a});
  // Non-contiguous and sliced inputs.
  gradcheck([](auto& in) { return in[0].t() * in[1].slice(0, 1, 5); },
            {a, random_tensor({5, 3}, 14)});
  // The same tensor used twice accumulates both contributions.
  gradcheck([](auto& in) { return in[0] * in[0] + in[0]; }, {a});
}

TEST_CASE("elementwise: maximum splits the gradient on ties", "[elementwise][grad]") {
  Tensor a = from_vector<double>({1, 2, 3}, {3}).requires_grad_();
  Tensor b = from_vector<double>({1, 5, 0}, {3}).requires_grad_();
  maximum(a, b).sum().backward();
  check_close(a.grad(), {0.5, 0, 1}, {3});
  check_close(b.grad(), {0.5, 1, 0}, {3});
}

TEST_CASE("elementwise: unary gradients against finite differences", "[elementwise][grad]") {
  Tensor x = random_tensor({4, 5}, 21, DType::F64, Device::cpu(), -2.0, 2.0);
  Tensor pos = random_tensor({4, 5}, 22, DType::F64, Device::cpu(), 0.2, 3.0);
  gradcheck([](auto& in) { return neg(in[0]); }, {x});
  gradcheck([](auto& in) { return exp(in[0]); }, {x});
  gradcheck([](auto& in) { return log(in[0]); }, {pos});
  gradcheck([](auto& in) { return sqrt(in[0]); }, {pos});
  gradcheck([](auto& in) { return rsqrt(in[0]); }, {pos});
  gradcheck([](auto& in) { return abs(in[0]); }, {x});
  gradcheck([](auto& in) { return tanh(in[0]); }, {x});
  gradcheck([](auto& in) { return sigmoid(in[0]); }, {x});
  gradcheck([](auto& in) { return relu(in[0]); }, {x});
  gradcheck([](auto& in) { return gelu(in[0]); }, {x});
  gradcheck([](auto& in) { return gelu(in[0], GeluApproximation::Tanh); }, {x});
  gradcheck([](auto& in) { return clamp(in[0], -0.7, 0.9); }, {x});
  gradcheck([](auto& in) { return pow(in[0], 2.5); }, {pos});
  gradcheck([](auto& in) { return exp(in[0].t().slice(0, 1, 5, 2)); }, {x});
}

TEST_CASE("elementwise: errors name the op, shapes and dtypes", "[elementwise][errors]") {
  Tensor a = zeros({2, 3});
  Tensor b = zeros({4});
  check_error([&] { (void)add(a, b); }, {"add", "[2, 3]", "[4]", "broadcast"});
  check_error([&] { (void)exp(arange(3)); }, {"exp", "i64"});
  check_error([&] { (void)mul(a, Tensor()); }, {"mul", "undefined"});
  check_error([&] { (void)clamp(a, 2.0, 1.0); }, {"clamp", "min"});
  check_error([&] { (void)neg(zeros({2}, DType::Bool)); }, {"neg", "bool"});
}
