// softmax / log_softmax: forward against float64 naive loops (any dim, odd sizes, f32 and f64,
// extreme values), gradients against finite differences (last dim, other dims, non-contiguous,
// 0-dim), the f32 backward against the f64 one, error messages, and the f32 exponential of
// non-positive arguments the cpu kernels share (kernels/poly_math.h).
#include <bit>
#include <cmath>
#include <limits>

#include "kernels/poly_math.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Naive softmax along `dim` of a row-major tensor of `shape`, in f64, one line at a time.
std::vector<double> softmax_ref(const std::vector<double>& x, const Shape& shape, int64_t dim,
                                bool log) {
  std::vector<double> out(x.size());
  const int64_t n = shape[size_t(dim)];
  for (size_t flat = 0; flat < x.size(); ++flat) {
    std::vector<int64_t> idx = unravel(int64_t(flat), shape);
    if (idx[size_t(dim)] != 0) continue;  // each line is handled from its first element
    std::vector<size_t> line;
    for (int64_t j = 0; j < n; ++j) {
      idx[size_t(dim)] = j;
      line.push_back(size_t(ravel(idx, shape)));
    }
    double m = -INFINITY;
    for (size_t k : line) m = std::max(m, x[k]);
    double s = 0;
    for (size_t k : line) s += std::exp(x[k] - m);
    for (size_t k : line) out[k] = log ? x[k] - m - std::log(s) : std::exp(x[k] - m) / s;
  }
  return out;
}

double atol_of(DType t) {
  return t == DType::F32 ? 2e-6 : 1e-13;
}
double rtol_of(DType t) {
  return t == DType::F32 ? 2e-5 : 1e-11;
}

}  // namespace

TEST_CASE("softmax: last dim matches a float64 loop at odd sizes", "[softmax]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto log = GENERATE(false, true);
  for (int64_t rows : {1, 7, 37}) {
    for (int64_t cols : {1, 3, 127, 1000}) {
      INFO("rows " << rows << " cols " << cols << " dtype " << dtype << " log " << log);
      Shape shape{rows, cols};
      std::vector<double> v = random_values(rows * cols, uint64_t(rows * 1000 + cols), -8, 8);
      // Round through the test dtype so the reference sees exactly the kernel's input.
      Tensor x = from_vector(v, shape, TensorOptions(dtype).device(device));
      std::vector<double> xv = x.to_vector<double>();
      Tensor y = log ? log_softmax(x, -1) : softmax(x, 1);
      CHECK(y.dtype() == dtype);
      check_close(y, softmax_ref(xv, shape, 1, log), shape, atol_of(dtype), rtol_of(dtype));
    }
  }
}

TEST_CASE("softmax: any dim of a 3-d tensor, result contiguous in the input's layout",
          "[softmax]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  Shape shape{5, 7, 3};
  Tensor x = random_tensor(shape, 11, dtype, device, -3, 3);
  std::vector<double> xv = x.to_vector<double>();
  for (int64_t dim : {0, 1, 2, -3, -2}) {
    INFO("dim " << dim);
    int64_t d = dim < 0 ? dim + 3 : dim;
    Tensor s = softmax(x, dim);
    CHECK(s.is_contiguous());
    check_close(s, softmax_ref(xv, shape, d, false), shape, atol_of(dtype), rtol_of(dtype));
    check_close(log_softmax(x, dim), softmax_ref(xv, shape, d, true), shape, atol_of(dtype),
                rtol_of(dtype));
  }
  // A non-contiguous input gives the same values.
  Tensor xn = non_contiguous(x);
  REQUIRE_FALSE(xn.is_contiguous());
  check_close(softmax(xn, 1), softmax_ref(xv, shape, 1, false), shape, atol_of(dtype),
              rtol_of(dtype));
}

TEST_CASE("softmax: extreme values stay finite and -inf entries give exact zeros", "[softmax]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> v{1000.0, 999.0, -inf, -1000.0, 0.0, 1e-3, -50.0, 3.0};
  Tensor x = from_vector(v, {2, 4}, TensorOptions(dtype).device(device));
  Tensor y = softmax(x, -1);
  std::vector<double> out = y.to_vector<double>();
  for (double o : out) CHECK(std::isfinite(o));
  CHECK(out[2] == 0.0);
  check_close(y, softmax_ref(x.to_vector<double>(), {2, 4}, 1, false), {2, 4}, atol_of(dtype),
              rtol_of(dtype));
  Tensor ly = log_softmax(x, -1);
  std::vector<double> lout = ly.to_vector<double>();
  CHECK(std::isinf(lout[2]));
  CHECK(lout[0] == Approx(-std::log(1 + std::exp(-1.0))).epsilon(1e-6));
}

TEST_CASE("softmax: 0-dim and empty tensors", "[softmax]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor s = scalar_tensor(3.5, TensorOptions(DType::F64).device(device));
  CHECK(softmax(s, 0).item<double>() == 1.0);
  CHECK(log_softmax(s, -1).item<double>() == 0.0);
  CHECK(softmax(s, 0).dim() == 0);
  Tensor e = zeros({0, 4}, TensorOptions(DType::F32).device(device));
  CHECK(softmax(e, 1).shape() == Shape{0, 4});
}

TEST_CASE("softmax: gradients match finite differences", "[softmax][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto log = GENERATE(false, true);
  auto op = [log](const Tensor& x, int64_t dim) {
    return log ? log_softmax(x, dim) : softmax(x, dim);
  };
  INFO("log " << log);
  SECTION("last dim, odd widths") {
    for (int64_t cols : {1, 3, 17}) {
      gradcheck([&](const std::vector<Tensor>& in) { return op(in[0].to(device), -1); },
                {random_tensor({3, cols}, uint64_t(cols), DType::F64, Device::cpu(), -2, 2)});
    }
  }
  SECTION("non-last dims of a 3-d tensor") {
    for (int64_t dim : {0, 1}) {
      gradcheck([&](const std::vector<Tensor>& in) { return op(in[0].to(device), dim); },
                {random_tensor({4, 3, 5}, 7, DType::F64, Device::cpu(), -2, 2)});
    }
  }
  SECTION("non-contiguous input") {
    gradcheck(
        [&](const std::vector<Tensor>& in) { return op(non_contiguous(in[0].to(device)), 1); },
        {random_tensor({5, 6}, 9, DType::F64, Device::cpu(), -2, 2)});
    gradcheck([&](const std::vector<Tensor>& in) { return op(in[0].to(device).t(), 1); },
              {random_tensor({6, 4}, 10, DType::F64, Device::cpu(), -2, 2)});
  }
  SECTION("0-dim input") {
    gradcheck([&](const std::vector<Tensor>& in) { return op(in[0].to(device), 0); },
              {scalar_tensor(0.7, DType::F64)});
  }
}

TEST_CASE("softmax: f32 backward agrees with f64 backward", "[softmax][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto log = GENERATE(false, true);
  Shape shape{7, 127};
  Tensor x64 = random_tensor(shape, 21, DType::F64, device, -5, 5);
  Tensor x32 = x64.to(DType::F32);
  x64 = x32.to(DType::F64);
  Tensor w = random_tensor(shape, 22, DType::F64, device);
  std::vector<Tensor> grads;
  for (Tensor x : {x64, x32}) {
    x = x.detach();
    x.requires_grad_(true);
    Tensor y = log ? log_softmax(x, 1) : softmax(x, 1);
    (y * w.to(x.dtype())).sum().backward();
    grads.push_back(x.grad());
  }
  check_close(grads[1], grads[0], 1e-5, 1e-4);
}

TEST_CASE("softmax: errors name the op, the dim and the tensor", "[softmax][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = zeros({2, 3}, TensorOptions(DType::F32).device(device));
  check_error([&] { softmax(x, 2); }, {"softmax", "dim 2", "[2, 3]"});
  check_error([&] { log_softmax(x, -3); }, {"log_softmax", "dim -3"});
  Tensor i = zeros({2, 3}, TensorOptions(DType::I64).device(device));
  check_error([&] { softmax(i, 1); }, {"softmax", "i64"});
  check_error([&] { softmax(Tensor(), 0); }, {"softmax", "undefined"});
}

// exp_nonpositive_f32 drops exp_f32's overflow handling; over x <= 0 it must give the same bits
// (so softmax, cross-entropy and attention results did not move), and both stay within 2 ulp-ish
// of exp in f64 down to the f32 underflow, 0 below it, NaN for NaN.
TEST_CASE("softmax: the non-positive f32 exp equals exp_f32 bit for bit and f64 exp closely",
          "[softmax]") {
  std::vector<float> xs = {0.0f,    -0.0f,    -1e-30f,
                           -1e-7f,  -0.5f,    -1.0f,
                           -10.0f,  -87.0f,   -87.3365447505531f,
                           -87.34f, -88.0f,   -103.0f,
                           -1e4f,   -3.4e38f, -std::numeric_limits<float>::infinity()};
  // Every 997th float bit pattern from -0 down through -inf: a dense sweep of all exponents.
  for (uint32_t bits = 0x80000000u; bits <= 0xff800000u; bits += 997u) {
    xs.push_back(std::bit_cast<float>(bits));
  }
  int64_t mismatches = 0, nonzero_underflows = 0;
  double worst = 0;
  for (float x : xs) {
    const float fast = kernels::exp_nonpositive_f32(x), full = kernels::exp_f32(x);
    if (std::bit_cast<uint32_t>(fast) != std::bit_cast<uint32_t>(full)) ++mismatches;
    const double ref = std::exp(double(x));
    if (ref >= double(std::numeric_limits<float>::min())) {
      worst = std::max(worst, std::abs(double(fast) - ref) / ref);
    } else if (x < -87.3365447505531f && fast != 0.0f) {
      ++nonzero_underflows;  // below ln(FLT_MIN): exact zero (a masked logit's -inf included)
    }
  }
  CHECK(mismatches == 0);
  CHECK(nonzero_underflows == 0);
  CHECK(worst < 3e-7);
  CHECK(std::isnan(kernels::exp_nonpositive_f32(std::numeric_limits<float>::quiet_NaN())));
}
