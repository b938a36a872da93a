// Every cuda kernel family against the cpu backend, through the KernelTable contract (Views over
// device memory). Exact operations (copies, casts, fill, comparisons, IEEE add/sub/mul/div,
// max/min, where, index ops, Philox draws, dropout) must be bit-identical to the cpu; float math
// through libm and reductions are compared with tolerances. The simulated build additionally runs
// the same math as the cpu (same libm), and several kernels are checked to give identical bits
// under every simulator schedule.
#include <catch2/catch.hpp>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>

#include "core/tensor_internal.h"
#include "kernels/cuda/device_report.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/runtime.h"
#include "kernels/kernel_table.h"
#include "kernels/poly_math.h"
#include "support/test_util.h"

#ifdef LATHE_CUDA_SIM_BUILD
#include "kernels/sim/sim_runtime.h"
#endif

using namespace lathe;
using kernels::View;
using testing::check_close;
using testing::random_tensor;

namespace {

const Device kCuda = Device::cuda(0);
const DType kAllDTypes[] = {DType::F32, DType::F64, DType::F16, DType::BF16,
                            DType::I32, DType::I64, DType::Bool};

const kernels::KernelTable& cpu_k() {
  return kernels::cpu_kernel_table();
}
const kernels::KernelTable& cuda_k() {
  return kernels::kernel_table(DeviceType::CUDA);
}

View view(const Tensor& t) {
  return detail::make_view(t);
}
View bview(const Tensor& t, const Shape& shape) {
  return detail::make_broadcast_view(t, shape);
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.to(Device::cpu()).contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + size_t(c.numel()) * element_size(c.dtype()));
}

// Asserts identical bytes, reporting the first differing element.
void check_bits(const Tensor& cuda_result, const Tensor& cpu_result) {
  REQUIRE(cuda_result.shape() == cpu_result.shape());
  REQUIRE(cuda_result.dtype() == cpu_result.dtype());
  const std::vector<uint8_t> a = bytes_of(cuda_result), b = bytes_of(cpu_result);
  if (a == b) {
    SUCCEED();
    return;
  }
  const size_t es = element_size(cpu_result.dtype());
  for (size_t i = 0; i < a.size(); i += es) {
    if (std::memcmp(&a[i], &b[i], es) != 0) {
      const std::vector<double> x = cuda_result.to_vector<double>(),
                                y = cpu_result.to_vector<double>();
      FAIL("bits differ at flat index "
           << i / es << " (" << shape_str(testing::unravel(int64_t(i / es), cpu_result.shape()))
           << "): cuda " << x[i / es] << ", cpu " << y[i / es]);
    }
  }
}

// Integer-valued data in [lo, hi) of any dtype (exactly representable everywhere).
Tensor int_values(const Shape& shape, uint64_t seed, DType dtype, int lo, int hi) {
  std::vector<double> v = testing::random_values(shape_numel(shape), seed, lo, hi);
  for (double& x : v) x = std::floor(x);
  return from_vector(v, shape, TensorOptions(dtype));
}

// A cpu tensor of raw bit patterns.
template <class Bits>
Tensor from_bits(const std::vector<Bits>& bits, DType dtype) {
  Tensor t = Tensor::empty({int64_t(bits.size())}, TensorOptions(dtype));
  std::memcpy(t.data_ptr(), bits.data(), bits.size() * sizeof(Bits));
  return t;
}

std::vector<float> special_floats() {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> v = {
      0.0f,           -0.0f,          1.0f,           -1.0f,        inf,
      -inf,           65504.0f,       65520.0f,       65519.99f,    6.1035156e-05f,
      5.9604645e-08f, 2.9802322e-08f, 2.9802326e-08f, 1e-45f,       -3.4028235e38f,
      3.3895314e38f,  1.00048828125f, 1.0009765625f,  0.333333343f, 1.1754944e-38f};
  uint32_t nan_bits[] = {0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fbfffffu};
  for (uint32_t b : nan_bits) {
    float f;
    std::memcpy(&f, &b, 4);
    v.push_back(f);
  }
  // A sweep of bit patterns across every exponent.
  for (uint32_t b = 0; b < 0xffffffffu - 0x00fedcbau; b += 0x00fedcbau) {
    float f;
    std::memcpy(&f, &b, 4);
    v.push_back(f);
  }
  return v;
}

// Runs fn under every simulator schedule and asserts it returns identical bytes each time.
void check_schedule_invariant(const std::function<Tensor()>& fn) {
#ifdef LATHE_CUDA_SIM_BUILD
  using sim::Schedule;
  const sim::Schedule old = sim::current_schedule();
  const uint64_t old_seed = sim::current_seed();
  std::vector<uint8_t> first;
  const std::pair<Schedule, uint64_t> runs[] = {
      {Schedule::Forward, 0}, {Schedule::Reverse, 0},    {Schedule::Random, 1},
      {Schedule::Random, 2},  {Schedule::WarpRandom, 1}, {Schedule::WarpRandom, 7}};
  for (auto [schedule, seed] : runs) {
    sim::set_schedule(schedule, seed);
    std::vector<uint8_t> b;
    try {
      b = bytes_of(fn());
    } catch (...) {
      sim::set_schedule(old, old_seed);
      throw;
    }
    INFO("schedule " << sim::schedule_name(schedule) << " seed " << seed);
    if (first.empty()) first = b;
    CHECK(b == first);
  }
  sim::set_schedule(old, old_seed);
#else
  (void)fn;
#endif
}

double float_rtol(DType t) {
  switch (t) {
    case DType::F64:
      return 1e-13;
    case DType::F16:
      return 1e-3;
    case DType::BF16:
      return 8e-3;
    default:
      return 2e-6;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------ copy, fill

TEST_CASE("cuda kernels: copy converts every dtype pair like the cpu, strided", "[cuda][kernels]") {
  for (DType from : kAllDTypes) {
    for (DType to : kAllDTypes) {
      INFO("copy " << from << " -> " << to);
      Tensor src = int_values({37, 7}, 11, from, -100, 100);
      if (is_floating(from)) src = (random_tensor({37, 7}, 12) * 80.0).to(from);
      Tensor src_cuda = src.to(kCuda);
      Tensor dst = Tensor::empty({7, 37}, TensorOptions(to));
      Tensor dst_cuda = Tensor::empty({7, 37}, TensorOptions(to).device(kCuda));
      cpu_k().copy(view(src.t()), view(dst));
      cuda_k().copy(view(src_cuda.t()), view(dst_cuda));
      check_bits(dst_cuda, dst);
      // Into a strided destination (every other column of a wider tensor).
      Tensor wide = zeros({7, 74}, TensorOptions(to));
      Tensor wide_cuda = zeros({7, 74}, TensorOptions(to).device(kCuda));
      cpu_k().copy(view(src.t()), view(wide.slice(1, 0, 74, 2)));
      cuda_k().copy(view(src_cuda.t()), view(wide_cuda.slice(1, 0, 74, 2)));
      check_bits(wide_cuda, wide);
      // Contiguous to contiguous: the vector kernel of casts (whole 16-byte packs, then a tail of
      // 259 % pack elements), and the same one element off a 16-byte boundary (the generic one).
      Tensor flat = zeros({259}, TensorOptions(to));
      Tensor flat_cuda = zeros({259}, TensorOptions(to).device(kCuda));
      cpu_k().copy(view(src.reshape({259})), view(flat));
      cuda_k().copy(view(src_cuda.reshape({259})), view(flat_cuda));
      check_bits(flat_cuda, flat);
      cpu_k().copy(view(src.reshape({259}).narrow(0, 1, 258)), view(flat.narrow(0, 1, 258)));
      cuda_k().copy(view(src_cuda.reshape({259}).narrow(0, 1, 258)),
                    view(flat_cuda.narrow(0, 1, 258)));
      check_bits(flat_cuda, flat);
    }
  }
}

TEST_CASE("cuda kernels: f16/bf16 casts match the cpu bit for bit, NaN payloads included",
          "[cuda][kernels]") {
  const std::vector<float> specials = special_floats();
  Tensor f = from_bits(specials, DType::F32);
  for (DType half : {DType::F16, DType::BF16}) {
    INFO("f32 -> " << half);
    Tensor out = Tensor::empty(f.shape(), TensorOptions(half));
    Tensor out_cuda = Tensor::empty(f.shape(), TensorOptions(half).device(kCuda));
    cpu_k().copy(view(f), view(out));
    cuda_k().copy(view(f.to(kCuda)), view(out_cuda));
    check_bits(out_cuda, out);
    // Every 16-bit pattern back to f32 and f64.
    std::vector<uint16_t> all(65536);
    for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
    Tensor h = from_bits(all, half);
    for (DType wide : {DType::F32, DType::F64}) {
      Tensor w = Tensor::empty(h.shape(), TensorOptions(wide));
      Tensor w_cuda = Tensor::empty(h.shape(), TensorOptions(wide).device(kCuda));
      cpu_k().copy(view(h), view(w));
      cuda_k().copy(view(h.to(kCuda)), view(w_cuda));
      check_bits(w_cuda, w);
    }
  }
}

TEST_CASE("cuda kernels: fill writes the cpu's bits, strided, and nothing else",
          "[cuda][kernels]") {
  for (DType t : kAllDTypes) {
    for (double value : {2.75, -1.0, 0.1, std::nan("")}) {
      INFO("fill " << t << " with " << value);
      if (std::isnan(value) && !is_floating(t)) continue;
      Tensor base = zeros({9, 5}, TensorOptions(t));
      Tensor base_cuda = zeros({9, 5}, TensorOptions(t).device(kCuda));
      cpu_k().fill(view(base.select(1, 2)), value);
      cuda_k().fill(view(base_cuda.select(1, 2)), value);
      check_bits(base_cuda, base);
      cpu_k().fill(view(base), value);
      cuda_k().fill(view(base_cuda), value);
      check_bits(base_cuda, base);
    }
  }
}

// ----------------------------------------------------------------------------------------- unary

TEST_CASE("cuda kernels: unary and unary_backward match the cpu", "[cuda][kernels]") {
  using kernels::UnaryOp;
  const UnaryOp ops[] = {UnaryOp::Neg,      UnaryOp::Exp,  UnaryOp::Log,      UnaryOp::Sqrt,
                         UnaryOp::Rsqrt,    UnaryOp::Abs,  UnaryOp::Tanh,     UnaryOp::Sigmoid,
                         UnaryOp::Relu,     UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::Clamp,
                         UnaryOp::PowScalar};
  for (DType t : {DType::F32, DType::F64}) {
    for (UnaryOp op : ops) {
      INFO("unary op " << int(op) << " on " << t);
      const bool positive = op == UnaryOp::Log || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt ||
                            op == UnaryOp::PowScalar;
      Tensor x = random_tensor({37, 7}, 5, t, Device::cpu(), positive ? 0.1 : -3.0, 3.0);
      Tensor g = random_tensor({7, 37}, 6, t);
      const double alpha = op == UnaryOp::Clamp ? -0.3 : 2.5, beta = 0.4;
      Tensor y = Tensor::empty({7, 37}, TensorOptions(t));
      Tensor y_cuda = Tensor::empty({7, 37}, TensorOptions(t).device(kCuda));
      cpu_k().unary(op, view(x.t()), view(y), alpha, beta);
      cuda_k().unary(op, view(x.to(kCuda).t()), view(y_cuda), alpha, beta);
      // A GPU's f32 GELU takes Φ from erff (kernels/cuda/gelu.cuh): in the lower tail 1 + erf
      // cancels, leaving an absolute error of |x| / 2 times a few ulp of 1.
#ifdef LATHE_CUDA_BUILD
      const double forward_atol = t == DType::F32 && op == UnaryOp::Gelu ? 4e-7 : 0.0;
#else
      const double forward_atol = 0.0;
#endif
      check_close(y_cuda.to(Device::cpu()), y, forward_atol, float_rtol(t));
      Tensor gx = Tensor::empty({7, 37}, TensorOptions(t));
      Tensor gx_cuda = Tensor::empty({7, 37}, TensorOptions(t).device(kCuda));
      cpu_k().unary_backward(op, view(x.t()), view(g), view(gx), alpha, beta);
      cuda_k().unary_backward(op, view(x.to(kCuda).t()), view(g.to(kCuda)), view(gx_cuda), alpha,
                              beta);
      // Backward formulas cancel where the derivative crosses zero (GELU near x = -0.75, tanh's
      // 1 - y^2 for large |x|): there a GPU, which contracts a*b + c into FMAs where the cpu
      // does not, differs from the cpu by a few ulps of the terms (|g| <= 1), not of the result.
#ifdef LATHE_CUDA_BUILD
      const double backward_atol = t == DType::F32 ? 1e-7 : 1e-15;
#else
      const double backward_atol = 1e-30;  // the simulator runs the cpu's arithmetic
#endif
      check_close(gx_cuda.to(Device::cpu()), gx, backward_atol, float_rtol(t));
    }
  }
  // Integer ops are exact.
  for (DType t : {DType::I32, DType::I64}) {
    for (UnaryOp op : {UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Relu, UnaryOp::Clamp}) {
      INFO("unary op " << int(op) << " on " << t);
      Tensor x = int_values({37, 7}, 9, t, -50, 50);
      Tensor y = Tensor::empty({37, 7}, TensorOptions(t));
      Tensor y_cuda = Tensor::empty({37, 7}, TensorOptions(t).device(kCuda));
      cpu_k().unary(op, view(x), view(y), -7.5, 1e300);
      cuda_k().unary(op, view(x.to(kCuda)), view(y_cuda), -7.5, 1e300);
      check_bits(y_cuda, y);
    }
  }
  testing::check_error(
      [] {
        Tensor x = int_values({3}, 1, DType::I32, 0, 5).to(kCuda);
        cuda_k().unary(kernels::UnaryOp::Exp, view(x), view(x), 0, 0);
      },
      {"unary", "floating"});
}

TEST_CASE("cuda kernels: f16/bf16 unary ops compute in f32 and round once", "[cuda][kernels]") {
  using kernels::UnaryOp;
  for (DType half : {DType::F16, DType::BF16}) {
    for (UnaryOp op : {UnaryOp::Exp, UnaryOp::Tanh, UnaryOp::Gelu, UnaryOp::Neg, UnaryOp::Relu}) {
      INFO("unary op " << int(op) << " on " << half);
      Tensor x = random_tensor({101}, 3, DType::F32).to(half);
      Tensor ref = Tensor::empty({101}, TensorOptions(DType::F32));
      cpu_k().unary(op, view(x.to(DType::F32)), view(ref), 0, 0);
      Tensor y_cuda = Tensor::empty({101}, TensorOptions(half).device(kCuda));
      cuda_k().unary(op, view(x.to(kCuda)), view(y_cuda), 0, 0);
#ifdef LATHE_CUDA_SIM_BUILD
      if (op == UnaryOp::Gelu) {
        // f16/bf16 GELU takes the short approximation (kernels/poly_math.h, relative error under
        // 1e-5, checked below), in the simulator too: the cpu's f32 value rounded may differ from
        // it by the one ulp of the storage type where the two straddle a rounding boundary.
        const double ulp = half == DType::F16 ? 0x1p-10 : 0x1p-7;
        check_close(y_cuda.to(Device::cpu()), ref.to(half), 0x1p-24, ulp);
      } else {
        check_bits(y_cuda, ref.to(half));
      }
#else
      check_close(y_cuda.to(Device::cpu()), ref.to(half), 1e-3, float_rtol(half));
#endif
    }
  }
}

// x·Φ(x) in f64, the reference of the approximation below.
double gelu_reference(double x) {
  return x * 0.5 * std::erfc(-x / std::sqrt(2.0));
}

// The error of kernels::gelu_erf_for_half (the f16/bf16 GELU forward, kernels/poly_math.h) over
// f32 inputs: relative wherever |GELU| >= FLT_MIN, absolute below. Its documented bound is 1e-5
// (7.6e-6 measured); a polynomial cut by one term measures 0.23, so the check can fail.
struct GeluApproxError {
  double max_rel = 0, at_rel = 0, max_abs = 0, at_abs = 0;
  void add(float x) {
    const double ref = gelu_reference(x);
    const double err = std::fabs(double(kernels::gelu_erf_for_half(x)) - ref);
    if (std::fabs(ref) >= double(FLT_MIN)) {
      if (err / std::fabs(ref) > max_rel) max_rel = err / std::fabs(ref), at_rel = x;
    } else if (err > max_abs) {
      max_abs = err, at_abs = x;
    }
  }
};

float float_from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

TEST_CASE("cuda kernels: the f16/bf16 GELU approximation is within 1e-5 of x * Phi(x)",
          "[cuda][kernels][gelu]") {
  GeluApproxError e;
  // Every 61st f32 of either sign up to |x| = 20 (from the subnormals up; GELU underflows below
  // about -14 and is x above 6), including the lower tail where 1 + erf(x / sqrt 2) cancels and
  // only a relative error says anything: GELU(-13) is 8e-38.
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t bits = 0; bits <= 0x41a00000u; bits += 61) e.add(float_from_bits(bits | sign));
  }
  // Every finite f16 and bf16 value (the unary kernel's inputs; bias_gelu's x + b is any f32).
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float bf16 = float_from_bits(h << 16);  // a bf16 is the top half of an f32
    if (std::isfinite(bf16)) e.add(bf16);
    const int exponent = int(h >> 10) & 0x1f, mantissa = int(h & 0x3ff);
    if (exponent == 0x1f) continue;  // f16 inf and NaN
    const float f16 = exponent == 0 ? std::ldexp(float(mantissa), -24)
                                    : std::ldexp(float(mantissa | 0x400), exponent - 25);
    e.add(h & 0x8000 ? -f16 : f16);
  }
  INFO("max relative error " << e.max_rel << " at x = " << e.at_rel << ", max absolute error "
                             << e.max_abs << " at x = " << e.at_abs << " (below FLT_MIN)");
  CHECK(e.max_rel <= 1e-5);
  CHECK(e.max_abs <= double(FLT_MIN));
  // Special values are the cpu's x * Phi(x): NaN in, NaN out; Phi(-inf) = 0 gives -inf * 0.
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(std::isnan(kernels::gelu_erf_for_half(std::nanf(""))));
  CHECK(std::isnan(kernels::gelu_erf_for_half(-inf)));
  CHECK(std::isnan(kernels::normal_cdf_f32(-inf) * -inf));
  CHECK(kernels::gelu_erf_for_half(inf) == inf);
  CHECK(kernels::gelu_erf_for_half(FLT_MAX) == FLT_MAX);
  CHECK(kernels::gelu_erf_for_half(20.0f) == 20.0f);
  for (float x : {-0.0f, -20.0f, -1e30f, -FLT_MAX}) {
    INFO("x = " << x);
    CHECK(kernels::gelu_erf_for_half(x) == 0.0f);
    CHECK(std::signbit(kernels::gelu_erf_for_half(x)));
  }
}

TEST_CASE("cuda kernels: the f16/bf16 GELU derivative approximation is within 1e-5",
          "[cuda][kernels][gelu]") {
  // kernels::gelu_erf_grad_for_half = Phi(x) + x phi(x) (the f16/bf16 GELU backward) against erfc
  // and exp in f64 over the forward's inputs. The two terms have opposite signs below 0 and the
  // derivative crosses zero near x = -0.75, so the error is measured against |Phi| + |x phi| (the
  // size of what is summed), relative where that is at least 2^-100 (below, near x = -13, phi is
  // an f32 subnormal and the terms lose bits; no f16/bf16 gradient is that small).
  double max_rel = 0, at = 0, max_abs = 0;
  auto add = [&](float x) {
    const double xd = x, cdf = 0.5 * std::erfc(-xd / std::sqrt(2.0));
    const double xpdf = xd * std::exp(-0.5 * xd * xd) / std::sqrt(2.0 * M_PI);
    const double err = std::fabs(double(kernels::gelu_erf_grad_for_half(x)) - (cdf + xpdf));
    const double scale = std::fabs(cdf) + std::fabs(xpdf);
    if (scale >= std::ldexp(1.0, -100)) {
      if (err / scale > max_rel) max_rel = err / scale, at = x;
    } else {
      max_abs = std::max(max_abs, err);
    }
  };
  for (uint32_t sign : {0u, 0x80000000u}) {
    for (uint32_t bits = 0; bits <= 0x41a00000u; bits += 61) add(float_from_bits(bits | sign));
  }
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float bf16 = float_from_bits(h << 16);
    if (std::isfinite(bf16)) add(bf16);
  }
  INFO("max relative error " << max_rel << " at x = " << at << ", max absolute error " << max_abs
                             << " (below 2^-100)");
  CHECK(max_rel <= 1e-5);
  CHECK(max_abs <= std::ldexp(1.0, -105));
  // The derivative's landmarks: 0.5 at 0, 1 far right, 0 far left; NaN stays NaN.
  CHECK(kernels::gelu_erf_grad_for_half(0.0f) == Approx(0.5).epsilon(1e-5));
  CHECK(kernels::gelu_erf_grad_for_half(20.0f) == 1.0f);
  CHECK(kernels::gelu_erf_grad_for_half(-20.0f) == 0.0f);
  CHECK(std::isnan(kernels::gelu_erf_grad_for_half(std::nanf(""))));
}

// ---------------------------------------------------------------------------------------- binary

TEST_CASE("cuda kernels: binary ops with broadcasting match the cpu", "[cuda][kernels]") {
  using kernels::BinaryOp;
  const BinaryOp ops[] = {BinaryOp::Add, BinaryOp::Sub,     BinaryOp::Mul,     BinaryOp::Div,
                          BinaryOp::Pow, BinaryOp::Maximum, BinaryOp::Minimum, BinaryOp::Eq,
                          BinaryOp::Ne,  BinaryOp::Lt,      BinaryOp::Le,      BinaryOp::Gt,
                          BinaryOp::Ge};
  const Shape shape{7, 37};
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64}) {
    for (BinaryOp op : ops) {
      INFO("binary op " << int(op) << " on " << t);
      const bool cmp = op >= BinaryOp::Eq;
      Tensor a, b;
      if (is_floating(t)) {
        a = random_tensor({37, 7}, 21, t, Device::cpu(), op == BinaryOp::Pow ? 0.1 : -2.0, 2.0);
        b = int_values({1, 37}, 22, t, -2, 3) * 0.5;  // halves: ties with a for comparisons
      } else {
        a = int_values({37, 7}, 21, t, -9, 9);
        b = int_values({1, 37}, 22, t, op == BinaryOp::Pow ? -1 : -3, 4);
      }
      Tensor at = a.t(), a_cuda = a.to(kCuda).t(), b_cuda = b.to(kCuda);
      const DType out_t = cmp ? DType::Bool : t;
      Tensor out = Tensor::empty(shape, TensorOptions(out_t));
      Tensor out_cuda = Tensor::empty(shape, TensorOptions(out_t).device(kCuda));
      cpu_k().binary(op, view(at), bview(b, shape), view(out));
      cuda_k().binary(op, view(a_cuda), bview(b_cuda, shape), view(out_cuda));
      if (op == BinaryOp::Pow && is_floating(t)) {
        check_close(out_cuda.to(Device::cpu()), out, 0.0, float_rtol(t));
      } else {
        check_bits(out_cuda, out);
      }
      // Scalar on the left.
      Tensor s = b.select(1, 3).reshape({1, 1});
      cpu_k().binary(op, bview(s, shape), view(at), view(out));
      cuda_k().binary(op, bview(s.to(kCuda), shape), view(a_cuda), view(out_cuda));
      check_close(out_cuda.to(Device::cpu()), out, 0.0, float_rtol(t));
      // Three contiguous operands: the vector kernel of arithmetic ops (whole 16-byte packs, then
      // a tail of 259 % pack elements), and one element off a 16-byte boundary (the generic one).
      Tensor fa = a.reshape({259});
      Tensor fb = is_floating(t) ? int_values({259}, 23, t, -2, 3) * 0.5
                                 : int_values({259}, 23, t, op == BinaryOp::Pow ? -1 : -3, 4);
      Tensor fo = Tensor::empty({259}, TensorOptions(out_t));
      Tensor fo_cuda = zeros({259}, TensorOptions(out_t).device(kCuda));
      Tensor fa_cuda = fa.to(kCuda), fb_cuda = fb.to(kCuda);
      for (int64_t first : {0, 1}) {
        INFO("contiguous from element " << first);
        const int64_t n = 259 - first;
        cpu_k().binary(op, view(fa.narrow(0, first, n)), view(fb.narrow(0, first, n)),
                       view(fo.narrow(0, first, n)));
        cuda_k().binary(op, view(fa_cuda.narrow(0, first, n)), view(fb_cuda.narrow(0, first, n)),
                        view(fo_cuda.narrow(0, first, n)));
        if (op == BinaryOp::Pow && is_floating(t)) {
          check_close(fo_cuda.narrow(0, first, n).to(Device::cpu()), fo.narrow(0, first, n), 0.0,
                      float_rtol(t));
        } else {
          check_bits(fo_cuda.narrow(0, first, n), fo.narrow(0, first, n));
        }
      }
    }
  }
  // bool equality
  Tensor p = int_values({50}, 3, DType::Bool, 0, 2), q = int_values({50}, 4, DType::Bool, 0, 2);
  Tensor e = Tensor::empty({50}, TensorOptions(DType::Bool));
  Tensor e_cuda = Tensor::empty({50}, TensorOptions(DType::Bool).device(kCuda));
  cpu_k().binary(kernels::BinaryOp::Ne, view(p), view(q), view(e));
  cuda_k().binary(kernels::BinaryOp::Ne, view(p.to(kCuda)), view(q.to(kCuda)), view(e_cuda));
  check_bits(e_cuda, e);
}

TEST_CASE("cuda kernels: f16/bf16 binary ops equal the f32 result rounded once",
          "[cuda][kernels]") {
  using kernels::BinaryOp;
  for (DType half : {DType::F16, DType::BF16}) {
    for (BinaryOp op : {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div,
                        BinaryOp::Maximum, BinaryOp::Lt}) {
      INFO("binary op " << int(op) << " on " << half);
      Tensor a = random_tensor({5, 33}, 1, DType::F32).to(half);
      Tensor b = random_tensor({5, 33}, 2, DType::F32).to(half);
      const DType out_t = op == BinaryOp::Lt ? DType::Bool : DType::F32;
      Tensor ref = Tensor::empty({5, 33}, TensorOptions(out_t));
      cpu_k().binary(op, view(a.to(DType::F32)), view(b.to(DType::F32)), view(ref));
      const DType cuda_t = op == BinaryOp::Lt ? DType::Bool : half;
      Tensor out = Tensor::empty({5, 33}, TensorOptions(cuda_t).device(kCuda));
      cuda_k().binary(op, view(a.to(kCuda)), view(b.to(kCuda)), view(out));
      check_bits(out, ref.to(cuda_t));
    }
  }
}

TEST_CASE("cuda kernels: where matches the cpu for every dtype", "[cuda][kernels]") {
  const Shape shape{7, 37};
  Tensor cond = int_values({7, 1}, 5, DType::Bool, 0, 2);
  for (DType t : kAllDTypes) {
    INFO("where on " << t);
    Tensor a = int_values({7, 37}, 6, t, -5, 5);
    Tensor b = int_values({1, 1}, 7, t, 1, 9);
    Tensor out = Tensor::empty(shape, TensorOptions(t));
    Tensor out_cuda = Tensor::empty(shape, TensorOptions(t).device(kCuda));
    cpu_k().where(bview(cond, shape), view(a), bview(b, shape), view(out));
    cuda_k().where(bview(cond.to(kCuda), shape), view(a.to(kCuda)), bview(b.to(kCuda), shape),
                   view(out_cuda));
    check_bits(out_cuda, out);
  }
}

// ------------------------------------------------------------------------------------ reductions

namespace {

// Reduces `in` over `dims` (keepdim layout) on both devices and compares.
void compare_reduce(kernels::ReduceOp op, const Tensor& in, const std::vector<int64_t>& dims,
                    bool exact) {
  Shape out_shape = in.shape();
  for (int64_t d : dims) out_shape[size_t(d)] = 1;
  Tensor out = Tensor::empty(out_shape, TensorOptions(in.dtype()));
  Tensor out_cuda = Tensor::empty(out_shape, TensorOptions(in.dtype()).device(kCuda));
  cpu_k().reduce(op, view(in), view(out));
  Tensor in_cuda = in.to(kCuda);
  if (!in.is_contiguous()) in_cuda = testing::non_contiguous(in_cuda);
  cuda_k().reduce(op, view(in_cuda), view(out_cuda));
  if (exact) {
    check_bits(out_cuda, out);
  } else {
    check_close(out_cuda.to(Device::cpu()), out, 1e-12, float_rtol(in.dtype()));
  }
}

}  // namespace

TEST_CASE("cuda kernels: sum / max / min over any dims match the cpu", "[cuda][kernels]") {
  using kernels::ReduceOp;
  const std::vector<std::vector<int64_t>> dim_sets = {{0}, {1}, {2}, {0, 2}, {1, 2}, {0, 1, 2}};
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64}) {
    Tensor x =
        is_floating(t) ? random_tensor({7, 37, 5}, 8, t) : int_values({7, 37, 5}, 8, t, -99, 99);
    for (bool strided : {false, true}) {
      Tensor in = strided ? testing::non_contiguous(x) : x;
      for (const auto& dims : dim_sets) {
        for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
          INFO("reduce " << int(op) << " of " << t << (strided ? " strided" : "") << " over "
                         << shape_str(dims));
          compare_reduce(op, in, dims, op != ReduceOp::Sum || !is_floating(t));
        }
      }
    }
  }
  // Long rows (block per output), long columns with many outputs (thread per output with a split
  // range), and few outputs over a long non-contiguous range.
  for (DType t : {DType::F32, DType::F64}) {
    INFO("large reductions of " << t);
    compare_reduce(ReduceOp::Sum, random_tensor({37, 1000}, 1, t), {1}, false);
    compare_reduce(ReduceOp::Sum, random_tensor({100, 1100}, 2, t), {0}, false);
    compare_reduce(ReduceOp::Max, random_tensor({100, 1100}, 2, t), {0}, true);
    compare_reduce(ReduceOp::Sum, random_tensor({1000, 37}, 3, t), {0}, false);
    compare_reduce(ReduceOp::Min, random_tensor({1000, 37}, 3, t), {0}, true);
    compare_reduce(ReduceOp::Sum, random_tensor({4099}, 4, t), {0}, false);
    // Split reductions (few outputs over long ranges: partials per chunk, then a merge): a whole
    // vector, three long rows, a bias-gradient-like column sum, strided, and max/min whose
    // extremum sits in a late chunk.
    compare_reduce(ReduceOp::Sum, random_tensor({40000}, 5, t), {0}, false);
    compare_reduce(ReduceOp::Sum, random_tensor({3, 50001}, 6, t), {1}, false);
    compare_reduce(ReduceOp::Sum, random_tensor({2048, 96}, 7, t), {0}, false);
    compare_reduce(ReduceOp::Sum, testing::non_contiguous(random_tensor({2047, 40}, 8, t)), {0},
                   false);
    compare_reduce(ReduceOp::Sum, random_tensor({300, 20, 9}, 9, t), {0, 2}, false);
    Tensor late = random_tensor({2, 40000}, 10, t);
    {
      NoGradGuard no_grad;
      late.select(0, 1).select(0, 39000).fill_(5.0);
      late.select(0, 0).select(0, 35000).fill_(-5.0);
    }
    compare_reduce(ReduceOp::Max, late, {1}, true);
    compare_reduce(ReduceOp::Min, late, {1}, true);
  }
  // Split arg-reductions keep the first index on ties across chunk boundaries.
  for (DType t : {DType::F32, DType::I64}) {
    Tensor x = int_values({2, 40000}, 11, t, 0, 3);
    for (auto op : {ReduceOp::Max, ReduceOp::Min}) {
      Tensor out = Tensor::empty({2, 1}, TensorOptions(DType::I64));
      Tensor out_cuda = Tensor::empty({2, 1}, TensorOptions(DType::I64).device(kCuda));
      cpu_k().arg_reduce(op, view(x), 1, view(out));
      cuda_k().arg_reduce(op, view(x.to(kCuda)), 1, view(out_cuda));
      check_bits(out_cuda, out);
    }
  }
}

TEST_CASE("cuda kernels: reductions propagate NaN and handle empty ranges", "[cuda][kernels]") {
  using kernels::ReduceOp;
  Tensor x = random_tensor({9, 70}, 4, DType::F32);
  {
    NoGradGuard no_grad;
    x.select(0, 3).select(0, 17).fill_(std::nan(""));
    x.select(0, 5).select(0, 69).fill_(std::nan(""));
  }
  for (ReduceOp op : {ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum}) {
    compare_reduce(op, x, {1}, op != ReduceOp::Sum);
    compare_reduce(op, x, {0}, op != ReduceOp::Sum);
  }
  // Sum over an empty dim gives zeros.
  Tensor empty = Tensor::empty({4, 0}, TensorOptions(DType::F32).device(kCuda));
  Tensor out = full({4, 1}, 5.0, TensorOptions(DType::F32).device(kCuda));
  cuda_k().reduce(ReduceOp::Sum, view(empty), view(out));
  CHECK(out.to_vector<double>() == std::vector<double>(4, 0.0));
}

TEST_CASE("cuda kernels: f16 sums accumulate in f64 and round once", "[cuda][kernels]") {
  Tensor x = random_tensor({13, 300}, 5, DType::F32).to(DType::F16);
  Tensor out = Tensor::empty({13, 1}, TensorOptions(DType::F16).device(kCuda));
  cuda_k().reduce(kernels::ReduceOp::Sum, view(x.to(kCuda)), view(out));
  std::vector<double> v = x.to_vector<double>(), expected(13, 0.0);
  for (size_t i = 0; i < v.size(); ++i) expected[i / 300] += v[i];
  Tensor ref = from_vector(expected, {13, 1}, TensorOptions(DType::F64)).to(DType::F16);
  check_bits(out, ref);
}

TEST_CASE("cuda kernels: argmax / argmin match the cpu (first index on ties, NaN first)",
          "[cuda][kernels]") {
  using kernels::ReduceOp;
  for (DType t : {DType::F32, DType::F64, DType::I32, DType::I64}) {
    Tensor x = int_values({7, 300, 5}, 3, t, 0, 4);  // many ties
    if (t == DType::F32) {
      NoGradGuard no_grad;
      x.select(0, 2).select(0, 100).fill_(std::nan(""));
      x.select(0, 2).select(0, 50).select(0, 1).fill_(std::nan(""));
    }
    for (bool strided : {false, true}) {
      Tensor in = strided ? testing::non_contiguous(x) : x;
      Tensor in_cuda = strided ? testing::non_contiguous(x.to(kCuda)) : x.to(kCuda);
      for (int dim = 0; dim < 3; ++dim) {
        for (ReduceOp op : {ReduceOp::Max, ReduceOp::Min}) {
          INFO("arg reduce " << int(op) << " of " << t << " along " << dim
                             << (strided ? " strided" : ""));
          Shape out_shape = x.shape();
          out_shape[size_t(dim)] = 1;
          Tensor out = Tensor::empty(out_shape, TensorOptions(DType::I64));
          Tensor out_cuda = Tensor::empty(out_shape, TensorOptions(DType::I64).device(kCuda));
          cpu_k().arg_reduce(op, view(in), dim, view(out));
          cuda_k().arg_reduce(op, view(in_cuda), dim, view(out_cuda));
          check_bits(out_cuda, out);
        }
      }
    }
  }
}

// ------------------------------------------------------------------------------------ index ops

TEST_CASE("cuda kernels: index_select and gather match the cpu", "[cuda][kernels]") {
  Tensor x = random_tensor({7, 37, 5}, 1, DType::F64);
  for (DType t : {DType::F32, DType::I64, DType::BF16}) {
    Tensor in = testing::non_contiguous(x.to(t));
    Tensor in_cuda = testing::non_contiguous(x.to(t).to(kCuda));
    for (int dim = 0; dim < 3; ++dim) {
      INFO("index_select / gather of " << t << " along " << dim);
      Tensor index = int_values({11}, uint64_t(dim) + 3, DType::I64, 0, int(x.size(dim)));
      Shape out_shape = x.shape();
      out_shape[size_t(dim)] = 11;
      Tensor out = Tensor::empty(out_shape, TensorOptions(t));
      Tensor out_cuda = Tensor::empty(out_shape, TensorOptions(t).device(kCuda));
      cpu_k().index_select(view(in), dim, view(index), view(out));
      cuda_k().index_select(view(in_cuda), dim, view(index.to(kCuda)), view(out_cuda));
      check_bits(out_cuda, out);

      Shape g_shape{5, 20, 3};
      g_shape[size_t(dim)] = 9;
      Tensor gidx = int_values(g_shape, uint64_t(dim) + 7, DType::I64, 0, int(x.size(dim)));
      Tensor g = Tensor::empty(g_shape, TensorOptions(t));
      Tensor g_cuda = Tensor::empty(g_shape, TensorOptions(t).device(kCuda));
      cpu_k().gather(view(in), dim, view(gidx), view(g));
      cuda_k().gather(view(in_cuda), dim, view(gidx.to(kCuda)), view(g_cuda));
      check_bits(g_cuda, g);
    }
  }
}

TEST_CASE("cuda kernels: index_add and scatter_add are deterministic and equal the cpu's bits",
          "[cuda][kernels]") {
  for (DType t : {DType::F32, DType::F64, DType::I64}) {
    Tensor base =
        t == DType::I64 ? int_values({7, 37, 5}, 2, t, -9, 9) : random_tensor({7, 37, 5}, 2, t);
    for (int dim = 0; dim < 3; ++dim) {
      INFO("index_add / scatter_add of " << t << " along " << dim);
      Shape src_shape = base.shape();
      src_shape[size_t(dim)] = 23;
      Tensor src =
          t == DType::I64 ? int_values(src_shape, 3, t, -9, 9) : random_tensor(src_shape, 3, t);
      Tensor index = int_values({23}, uint64_t(dim) + 5, DType::I64, 0, int(base.size(dim)));
      Tensor out = base.clone(), out_cuda = base.to(kCuda);
      cpu_k().index_add(view(out), dim, view(index), view(src));
      cuda_k().index_add(view(out_cuda), dim, view(index.to(kCuda)),
                         view(testing::non_contiguous(src.to(kCuda))));
      check_bits(out_cuda, out);

      Shape i_shape{6, 30, 4};
      i_shape[size_t(dim)] = 9;
      Tensor sidx = int_values(i_shape, uint64_t(dim) + 9, DType::I64, 0, int(base.size(dim)));
      Tensor ssrc =
          t == DType::I64 ? int_values(i_shape, 4, t, -9, 9) : random_tensor(i_shape, 4, t);
      Tensor s_out = base.clone(), s_out_cuda = base.to(kCuda);
      cpu_k().scatter_add(view(s_out), dim, view(sidx), view(ssrc));
      cuda_k().scatter_add(view(s_out_cuda), dim, view(sidx.to(kCuda)), view(ssrc.to(kCuda)));
      check_bits(s_out_cuda, s_out);
    }
  }
}

TEST_CASE("cuda kernels: out-of-range indices are raised at the next wait with the cpu's error",
          "[cuda][kernels]") {
  // kernels/cuda/device_report.h: the kernel skips the bad index and files it; the host raises it
  // once it has waited for the device.
  const auto wait = [] { lathe::synchronize(kCuda); };
  Tensor x = random_tensor({4, 37}, 1, DType::F32).to(kCuda);
  Tensor index =
      from_vector(std::vector<double>{1, 2, 99, 0}, {4}, TensorOptions(DType::I64)).to(kCuda);
  Tensor out = Tensor::empty({4, 4}, TensorOptions(DType::F32).device(kCuda));
  testing::check_error(
      [&] {
        cuda_k().index_select(view(x), 1, view(index), view(out));
        wait();
      },
      {"index_select", "index 99", "out of range", "dim 1", "size 37"});
  // The other columns were copied, the bad one is zero.
  const std::vector<double> xh = x.to_vector<double>(), oh = out.to_vector<double>();
  for (size_t r = 0; r < 4; ++r) {
    CHECK(oh[r * 4 + 0] == xh[r * 37 + 1]);
    CHECK(oh[r * 4 + 1] == xh[r * 37 + 2]);
    CHECK(oh[r * 4 + 2] == 0.0);
    CHECK(oh[r * 4 + 3] == xh[r * 37 + 0]);
  }
  Tensor neg = from_vector(std::vector<double>{-1}, {1}, TensorOptions(DType::I64)).to(kCuda);
  Tensor src = ones({4, 1}, TensorOptions(DType::F32).device(kCuda));
  Tensor before = x.to(Device::cpu());
  testing::check_error(
      [&] {
        cuda_k().index_add(view(x), 1, view(neg), view(src));
        wait();
      },
      {"index_add", "index -1", "dim 1", "size 37"});
  check_bits(x, before);  // the bad index added nothing
  Tensor gidx =
      from_vector(std::vector<double>{0, 37, 2, 3}, {4, 1}, TensorOptions(DType::I64)).to(kCuda);
  Tensor gout = Tensor::empty({4, 1}, TensorOptions(DType::F32).device(kCuda));
  testing::check_error(
      [&] {
        cuda_k().gather(view(x), 1, view(gidx), view(gout));
        wait();
      },
      {"gather", "index 37", "dim 1", "size 37"});
  testing::check_error(
      [&] {
        cuda_k().scatter_add(view(x), 1, view(gidx), view(ones({4, 1}).to(kCuda)));
        wait();
      },
      {"scatter_add", "index 37", "dim 1", "size 37"});
  // Raised once: the next wait is clean.
  wait();
  SECTION("LATHE_CUDA_SYNC_CHECKS: raised at the call") {
    kernels::cuda::set_sync_checks(true);
    testing::check_error([&] { cuda_k().index_select(view(x), 1, view(index), view(out)); },
                         {"index_select", "index 99"});
    kernels::cuda::set_sync_checks(false);
  }
}

// ---------------------------------------------------------------------------- random, dropout

// {seed, offset} in cuda memory: how a draw inside a graph capture gets its state. The launch's
// own seed and offset are set to other values, which the kernels must ignore.
struct DeviceState {
  Tensor memory;
  PhiloxState state;
  DeviceState(uint64_t seed, uint64_t offset)
      : memory(from_vector(std::vector<int64_t>{int64_t(seed), int64_t(offset)}).to(kCuda)) {
    state = {seed + 1, offset + 1, static_cast<const uint64_t*>(memory.data_ptr())};
  }
};

TEST_CASE("cuda kernels: Philox draws equal the cpu's for the same seed and offset",
          "[cuda][kernels]") {
  for (DType t : {DType::F32, DType::F64}) {
    for (auto dist : {kernels::RandomDist::Uniform, kernels::RandomDist::Normal}) {
      INFO("random " << int(dist) << " of " << t);
      Tensor out = Tensor::empty({1001}, TensorOptions(t));
      Tensor out_cuda = Tensor::empty({1001}, TensorOptions(t).device(kCuda));
      cpu_k().random(dist, view(out), {1234, 77});
      cuda_k().random(dist, view(out_cuda), {1234, 77});
      Tensor from_device = Tensor::empty({1001}, TensorOptions(t).device(kCuda));
      cuda_k().random(dist, view(from_device), DeviceState(1234, 77).state);
      check_bits(from_device, out_cuda);
#ifdef LATHE_CUDA_SIM_BUILD
      check_bits(out_cuda, out);
#else
      if (dist == kernels::RandomDist::Uniform) {
        check_bits(out_cuda, out);
      } else {
        check_close(out_cuda.to(Device::cpu()), out, 1e-12, 1e-12);
      }
#endif
    }
  }
  // Through the public API: same seed, same tensor on both devices.
  manual_seed(42);
  Tensor a = rand({3, 333}, TensorOptions(DType::F32));
  manual_seed(42);
  Tensor b = rand({3, 333}, TensorOptions(DType::F32).device(kCuda));
  check_bits(b, a);
}

TEST_CASE("cuda kernels: dropout keeps the cpu's mask", "[cuda][kernels]") {
  for (DType t : {DType::F32, DType::F64}) {
    for (double p : {0.0, 0.3, 1.0}) {
      INFO("dropout " << p << " of " << t);
      Tensor x = random_tensor({37, 101}, 7, t);
      Tensor out = Tensor::empty({37, 101}, TensorOptions(t));
      Tensor out_cuda = Tensor::empty({37, 101}, TensorOptions(t).device(kCuda));
      cpu_k().dropout(view(x), view(out), p, {99, 5});
      cuda_k().dropout(view(x.to(kCuda)), view(out_cuda), p, {99, 5});
      check_bits(out_cuda, out);
      Tensor from_device = Tensor::empty({37, 101}, TensorOptions(t).device(kCuda));
      cuda_k().dropout(view(x.to(kCuda)), view(from_device), p, DeviceState(99, 5).state);
      check_bits(from_device, out);
      // Strided input and output.
      Tensor xs = testing::non_contiguous(x);
      Tensor wide = zeros({37, 202}, TensorOptions(t)), wide_cuda = wide.to(kCuda);
      cpu_k().dropout(view(xs), view(wide.slice(1, 1, 202, 2)), p, {99, 5});
      cuda_k().dropout(view(testing::non_contiguous(x.to(kCuda))),
                       view(wide_cuda.slice(1, 1, 202, 2)), p, {99, 5});
      check_bits(wide_cuda, wide);
      // A contiguous view one element off a 16-byte boundary: the element-wise path whole.
      Tensor flat = random_tensor({3738}, 8, t);
      Tensor shifted = flat.narrow(0, 1, 3737),
             out_shifted = Tensor::empty({3737}, TensorOptions(t));
      Tensor flat_cuda = flat.to(kCuda),
             out_shifted_cuda = zeros({3738}, TensorOptions(t).device(kCuda));
      cpu_k().dropout(view(shifted), view(out_shifted), p, {99, 6});
      cuda_k().dropout(view(flat_cuda.narrow(0, 1, 3737)),
                       view(out_shifted_cuda.narrow(0, 1, 3737)), p, {99, 6});
      check_bits(out_shifted_cuda.narrow(0, 1, 3737), out_shifted);
      cuda_k().dropout(view(flat_cuda.narrow(0, 1, 3737)),
                       view(out_shifted_cuda.narrow(0, 1, 3737)), p, DeviceState(99, 6).state);
      check_bits(out_shifted_cuda.narrow(0, 1, 3737), out_shifted);
    }
  }
  // f16 / bf16 (the 16-byte packs hold two Philox blocks): the cpu's f32 dropout of the widened
  // values, rounded once, is the reference (the cuda kernel scales in f32 and rounds once too).
  // Sizes with a tail past the last whole pack, and below one pack.
  for (DType t : {DType::F16, DType::BF16}) {
    for (int64_t n : {3737, 4096, 5}) {
      INFO("dropout of " << t << ", " << n << " elements");
      Tensor x = random_tensor({n}, 9, t);
      Tensor out = Tensor::empty({n}, TensorOptions(DType::F32));
      Tensor out_cuda = Tensor::empty({n}, TensorOptions(t).device(kCuda));
      cpu_k().dropout(view(x.to(DType::F32)), view(out), 0.3, {123, 17});
      cuda_k().dropout(view(x.to(kCuda)), view(out_cuda), 0.3, {123, 17});
      check_bits(out_cuda, out.to(t));
      cuda_k().dropout(view(x.to(kCuda)), view(out_cuda), 0.3, DeviceState(123, 17).state);
      check_bits(out_cuda, out.to(t));
    }
  }
}

// ------------------------------------------------------------------------------------------ gemm

namespace {

// C (f64 [batch, m, n]) = alpha * op(A) op(B) + beta * C0 + epilogue, from the stored operands.
std::vector<double> gemm_reference(const kernels::GemmArgs& g, const std::vector<double>& a,
                                   const std::vector<double>& b, const std::vector<double>& c0,
                                   const std::vector<double>* bias, bool gelu) {
  std::vector<double> out(size_t(g.batch * g.m * g.n));
  for (int64_t p = 0; p < g.batch; ++p) {
    for (int64_t i = 0; i < g.m; ++i) {
      for (int64_t j = 0; j < g.n; ++j) {
        double acc = 0;
        for (int64_t l = 0; l < g.k; ++l) {
          double av = g.trans_a ? a[size_t(p * g.batch_stride_a + l * g.lda + i)]
                                : a[size_t(p * g.batch_stride_a + i * g.lda + l)];
          double bv = g.trans_b ? b[size_t(p * g.batch_stride_b + j * g.ldb + l)]
                                : b[size_t(p * g.batch_stride_b + l * g.ldb + j)];
          acc += av * bv;
        }
        double v = g.alpha * acc;
        if (g.beta != 0) v += g.beta * c0[size_t(p * g.batch_stride_c + i * g.ldc + j)];
        if (bias) v += (*bias)[size_t(j)];
        if (gelu) v = 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
        out[size_t((p * g.m + i) * g.n + j)] = v;
      }
    }
  }
  return out;
}

struct GemmCase {
  bool ta, tb;
  int64_t m, n, k, batch;
  double alpha, beta;
};

// Operands as padded [batch, rows, ld] storage; returns the args (pointers unset).
kernels::GemmArgs layout_for(const GemmCase& c, DType dtype) {
  kernels::GemmArgs g;
  g.dtype = dtype;
  g.trans_a = c.ta;
  g.trans_b = c.tb;
  g.m = c.m;
  g.n = c.n;
  g.k = c.k;
  g.batch = c.batch;
  g.lda = (c.ta ? c.m : c.k) + 3;
  g.ldb = (c.tb ? c.k : c.n) + 1;
  g.ldc = c.n + 2;
  g.batch_stride_a = (c.ta ? c.k : c.m) * g.lda;
  g.batch_stride_b = c.batch > 1 ? (c.tb ? c.n : c.k) * g.ldb : 0;
  g.batch_stride_c = c.m * g.ldc;
  g.alpha = c.alpha;
  g.beta = c.beta;
  return g;
}

int64_t storage_a(const kernels::GemmArgs& g) {
  return g.batch * g.batch_stride_a;
}
int64_t storage_b(const kernels::GemmArgs& g) {
  return g.batch_stride_b ? g.batch * g.batch_stride_b : (g.trans_b ? g.n : g.k) * g.ldb;
}
int64_t storage_c(const kernels::GemmArgs& g) {
  return g.batch * g.batch_stride_c;
}

// C's logical [batch, m, n] values from its padded storage.
std::vector<double> unpad_c(const kernels::GemmArgs& g, const std::vector<double>& c) {
  std::vector<double> out;
  for (int64_t p = 0; p < g.batch; ++p)
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < g.n; ++j)
        out.push_back(c[size_t(p * g.batch_stride_c + i * g.ldc + j)]);
  return out;
}

}  // namespace

TEST_CASE("cuda kernels: gemm matches the cpu (transposes, batches, alpha/beta, padding)",
          "[cuda][kernels][gemm]") {
  const GemmCase cases[] = {{false, false, 37, 29, 45, 1, 1.0, 0.0},
                            {true, false, 37, 29, 45, 3, 0.7, 0.5},
                            {false, true, 1, 65, 33, 2, 1.0, 1.0},
                            {true, true, 65, 33, 129, 1, -1.5, 0.25},
                            {false, false, 5, 7, 0, 2, 1.0, 0.5}};
  for (DType t : {DType::F32, DType::F64}) {
    for (const GemmCase& c : cases) {
      INFO("gemm " << t << " ta " << c.ta << " tb " << c.tb << " m " << c.m << " n " << c.n << " k "
                   << c.k << " batch " << c.batch);
      kernels::GemmArgs g = layout_for(c, t);
      Tensor a = random_tensor({storage_a(g)}, 1, t), b = random_tensor({storage_b(g)}, 2, t);
      Tensor c0 = random_tensor({storage_c(g)}, 3, t);
      Tensor a_cuda = a.to(kCuda), b_cuda = b.to(kCuda), c_cuda = c0.to(kCuda);
      kernels::GemmArgs cpu_args = g, cuda_args = g;
      Tensor c_cpu = c0.clone();
      cpu_args.a = a.data_ptr();
      cpu_args.b = b.data_ptr();
      cpu_args.c = c_cpu.data_ptr();
      cuda_args.a = a_cuda.data_ptr();
      cuda_args.b = b_cuda.data_ptr();
      cuda_args.c = c_cuda.data_ptr();
      cpu_k().gemm(cpu_args);
      cuda_k().gemm(cuda_args);
      const std::vector<double> ref = gemm_reference(
          g, a.to_vector<double>(), b.to_vector<double>(), c0.to_vector<double>(), nullptr, false);
      const double tol = t == DType::F64 ? 1e-12 : 1e-5;
      Shape shape{c.batch, c.m, c.n};
      check_close(from_vector(unpad_c(g, c_cuda.to_vector<double>()), shape), ref, shape, tol, tol);
      // The padding between rows is untouched.
      check_close(c_cuda.to(Device::cpu()), c_cpu, tol, tol);
    }
  }
}

TEST_CASE("cuda kernels: gemm_ex with f16/bf16 inputs, f32 accumulation and epilogues",
          "[cuda][kernels][gemm]") {
  const GemmCase c{false, true, 33, 40, 72, 2, 1.0, 0.0};
  for (DType in_t : {DType::F16, DType::BF16, DType::F32}) {
    for (DType c_t : {in_t, DType::F32}) {
      for (auto epi :
           {cuda::GemmEpilogue::None, cuda::GemmEpilogue::Bias, cuda::GemmEpilogue::BiasGelu}) {
        for (bool tf32 : {false, true}) {
          if (tf32 && in_t != DType::F32) continue;
          INFO("gemm_ex " << in_t << " -> " << c_t << " epilogue " << int(epi) << " tf32 " << tf32);
          kernels::GemmArgs g = layout_for(c, in_t);
          Tensor a = random_tensor({storage_a(g)}, 4, DType::F32).to(in_t);
          Tensor b = random_tensor({storage_b(g)}, 5, DType::F32).to(in_t);
          Tensor bias = random_tensor({c.n}, 6, DType::F32).to(c_t);
          Tensor out = zeros({storage_c(g)}, TensorOptions(c_t).device(kCuda));
          Tensor a_cuda = a.to(kCuda), b_cuda = b.to(kCuda), bias_cuda = bias.to(kCuda);
          cuda::GemmExArgs x;
          x.gemm = g;
          x.gemm.a = a_cuda.data_ptr();
          x.gemm.b = b_cuda.data_ptr();
          x.gemm.c = out.data_ptr();
          x.c_dtype = c_t;
          x.epilogue = epi;
          x.allow_tf32 = tf32;
          x.bias = bias_cuda.data_ptr();
          cuda::gemm_ex(x, cuda::current_stream());
          const std::vector<double> bias_v = bias.to_vector<double>();
          const std::vector<double> ref =
              gemm_reference(g, a.to_vector<double>(), b.to_vector<double>(), {},
                             epi == cuda::GemmEpilogue::None ? nullptr : &bias_v,
                             epi == cuda::GemmEpilogue::BiasGelu);
          // Inputs are exact in f32; the error comes from f32 accumulation, TF32 inputs and the
          // final rounding to C's dtype.
          const double tol = c_t == DType::F32 ? (tf32 ? 2e-2 : 1e-4) : float_rtol(c_t) * 4;
          Shape shape{c.batch, c.m, c.n};
          check_close(from_vector(unpad_c(g, out.to_vector<double>()), shape), ref, shape, tol,
                      tol);
        }
      }
    }
  }
  testing::check_error(
      [] {
        cuda::GemmExArgs x;
        x.gemm.dtype = DType::F16;
        x.c_dtype = DType::F64;
        x.gemm.m = x.gemm.n = x.gemm.k = 2;
        x.gemm.lda = x.gemm.ldb = x.gemm.ldc = 2;
        cuda::gemm_ex(x, nullptr);
      },
      {"gemm", "f16", "f64"});
  testing::check_error(
      [] {
        kernels::GemmArgs g;
        g.m = g.n = g.k = 4;
        g.lda = 2;
        g.ldb = g.ldc = 4;
        cuda_k().gemm(g);
      },
      {"gemm", "leading dimensions"});
}

// ------------------------------------------------------------------------------------- schedules

TEST_CASE("cuda kernels: results are bit-identical under every simulator schedule",
          "[cuda][kernels][schedule]") {
  Tensor rows = random_tensor({37, 1000}, 1, DType::F32).to(kCuda);
  Tensor cols = random_tensor({100, 1100}, 2, DType::F32).to(kCuda);
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({37, 1}, TensorOptions(DType::F32).device(kCuda));
    cuda_k().reduce(kernels::ReduceOp::Sum, view(rows), view(out));
    return out;
  });
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({1, 1100}, TensorOptions(DType::F32).device(kCuda));
    cuda_k().reduce(kernels::ReduceOp::Sum, view(cols), view(out));
    return out;
  });
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({37, 1}, TensorOptions(DType::I64).device(kCuda));
    cuda_k().arg_reduce(kernels::ReduceOp::Max, view(rows), 1, view(out));
    return out;
  });
  // Split reductions: row chunks and column chunks.
  Tensor vec = random_tensor({3, 40000}, 3, DType::F32).to(kCuda);
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({3, 1}, TensorOptions(DType::F32).device(kCuda));
    cuda_k().reduce(kernels::ReduceOp::Sum, view(vec), view(out));
    return out;
  });
  Tensor tall = random_tensor({2048, 96}, 4, DType::F32).to(kCuda);
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({1, 96}, TensorOptions(DType::F32).device(kCuda));
    cuda_k().reduce(kernels::ReduceOp::Sum, view(tall), view(out));
    return out;
  });
  check_schedule_invariant([&] {
    Tensor out = zeros({37, 1000}, TensorOptions(DType::F32).device(kCuda));
    Tensor index = int_values({100}, 3, DType::I64, 0, 37).to(kCuda);
    cuda_k().index_add(view(out), 0, view(index), view(cols.slice(1, 0, 1000)));
    return out;
  });
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({37, 1000}, TensorOptions(DType::F32).device(kCuda));
    cuda_k().dropout(view(rows), view(out), 0.25, {3, 4});
    return out;
  });
  check_schedule_invariant([&] {
    Tensor out = Tensor::empty({37, 1000}, TensorOptions(DType::F32).device(kCuda));
    Tensor row = cols.select(0, 5).slice(0, 0, 1000).reshape({1, 1000});
    cuda_k().binary(kernels::BinaryOp::Mul, view(rows), bview(row, {37, 1000}), view(out));
    return out;
  });
}
