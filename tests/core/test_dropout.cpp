// dropout: the mask follows the documented Philox rule (checked element by element against a loop
// over philox::block), is reproducible for a seed, keeps about 1 - p of the elements, scales them
// by 1 / (1 - p), is the identity in eval mode, and its gradient is exactly mask * scale with the
// forward's mask (regenerated, never stored). Strided inputs and gradients get the same mask.
#include <cmath>

#include "lathe/core/random.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// keep[i] for a draw of n elements from `state`, by the rule in kernels/cpu/dropout.cpp.
std::vector<bool> mask_ref(PhiloxState state, int64_t n, double p) {
  std::vector<bool> keep(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    auto r = philox::block(state.offset + uint64_t(i / 4), state.seed);
    keep[size_t(i)] = philox::to_uniform(r[size_t(i % 4)]) >= float(p);
  }
  return keep;
}

}  // namespace

TEST_CASE("dropout: mask follows the Philox rule and kept values are scaled", "[dropout]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto p = GENERATE(0.1, 0.5, 0.9);
  for (int64_t n : {1, 7, 37, 1001}) {
    INFO("n " << n << " p " << p << " dtype " << dtype);
    Tensor x = random_tensor({n}, uint64_t(n), dtype, device, 0.5, 1.5);
    manual_seed(1234);
    // Advance the stream first so the offset is not trivially 0.
    rand({5});
    PhiloxState state = philox_current();
    Tensor y = dropout(x, p);
    CHECK(philox_current().offset == state.offset + uint64_t((n + 3) / 4));
    std::vector<bool> keep = mask_ref(state, n, p);
    std::vector<double> xv = x.to_vector<double>();
    std::vector<double> expected(xv.size());
    for (size_t i = 0; i < size_t(n); ++i) expected[i] = keep[i] ? xv[i] / (1 - p) : 0.0;
    double tol = dtype == DType::F32 ? 1e-6 : 1e-14;
    check_close(y, expected, {n}, tol, tol);
  }
}

TEST_CASE("dropout: reproducible for a seed, different across calls", "[dropout]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = ones({64, 33}, TensorOptions(DType::F32).device(device));
  manual_seed(7);
  Tensor a = dropout(x, 0.3);
  Tensor b = dropout(x, 0.3);
  manual_seed(7);
  Tensor a2 = dropout(x, 0.3);
  CHECK(a.to_vector<float>() == a2.to_vector<float>());
  CHECK(a.to_vector<float>() != b.to_vector<float>());
  manual_seed(8);
  CHECK(dropout(x, 0.3).to_vector<float>() != a.to_vector<float>());
}

TEST_CASE("dropout: keep fraction is close to 1 - p", "[dropout]") {
  auto device = GENERATE(from_range(test_devices()));
  auto p = GENERATE(0.1, 0.5, 0.9);
  const int64_t n = 200000;
  manual_seed(42);
  Tensor y = dropout(ones({n}, TensorOptions(DType::F32).device(device)), p);
  std::vector<float> v = y.to_vector<float>();
  int64_t kept = 0, wrong_scale = 0;
  const float scale = float(1.0 / (1.0 - p));
  for (float e : v) {
    if (e != 0.0f) {
      ++kept;
      wrong_scale += std::abs(e - scale) > 1e-6f * scale;
    }
  }
  CHECK(wrong_scale == 0);
  const double frac = double(kept) / double(n);
  // 5 standard deviations of a binomial proportion.
  const double sigma = std::sqrt(p * (1 - p) / double(n));
  CHECK(std::abs(frac - (1 - p)) < 5 * sigma);
}

TEST_CASE("dropout: identity in eval mode and for p = 0, zeros for p = 1", "[dropout]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({7, 5}, 1, DType::F64, device);
  PhiloxState before = philox_current();
  check_close(dropout(x, 0.5, /*training=*/false), x);
  check_close(dropout(x, 0.0), x);
  CHECK(philox_current().offset == before.offset);  // no draw was reserved
  check_close(dropout(x, 1.0), std::vector<double>(35, 0.0), {7, 5});

  Tensor leaf = x.clone().requires_grad_(true);
  dropout(leaf, 1.0).sum().backward();
  check_close(leaf.grad(), std::vector<double>(35, 0.0), {7, 5});
}

TEST_CASE("dropout: gradient is the forward's mask times the scale", "[dropout][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const double p = 0.4;
  Tensor x = random_tensor({37, 29}, 3, dtype, device, 0.5, 1.5).requires_grad_(true);
  Tensor y = dropout(x, p);
  // Other draws between forward and backward must not disturb the regenerated mask.
  rand({100});
  Tensor w = random_tensor({37, 29}, 4, dtype, device);
  (y * w).sum().backward();
  std::vector<double> yv = y.to_vector<double>(), wv = w.to_vector<double>(),
                      gv = x.grad().to_vector<double>();
  const double tol = dtype == DType::F32 ? 1e-6 : 1e-14;
  for (size_t i = 0; i < yv.size(); ++i) {
    const double expected = yv[i] != 0.0 ? wv[i] / (1 - p) : 0.0;
    REQUIRE(std::abs(gv[i] - expected) <= tol * (1 + std::abs(expected)));
  }
}

TEST_CASE("dropout: strided input and gradient see the same mask as contiguous ones",
          "[dropout][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({13, 9}, 5, DType::F64, device, 0.5, 1.5);
  Tensor xn = non_contiguous(x);
  REQUIRE_FALSE(xn.is_contiguous());
  manual_seed(99);
  Tensor a = dropout(x, 0.5);
  manual_seed(99);
  Tensor b = dropout(xn, 0.5);
  check_close(b, a);
  // A transposed (strided) view is masked in its own logical row-major order.
  Tensor xt = x.t();
  manual_seed(99);
  PhiloxState state = philox_current();
  Tensor c = dropout(xt, 0.5);
  std::vector<bool> keep = mask_ref(state, xt.numel(), 0.5);
  std::vector<double> xv = xt.to_vector<double>(), expected(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) expected[i] = keep[i] ? 2 * xv[i] : 0.0;
  check_close(c, expected, xt.shape());
  // An expanded (stride 0) gradient goes through the strided path of the same kernel.
  Tensor leaf = x.clone().requires_grad_(true);
  manual_seed(99);
  Tensor y = dropout(leaf, 0.5);
  y.backward(full({}, 3.0, TensorOptions(DType::F64).device(device)).expand({13, 9}));
  std::vector<double> yv = y.to_vector<double>(), gv = leaf.grad().to_vector<double>();
  for (size_t i = 0; i < yv.size(); ++i) CHECK(gv[i] == (yv[i] != 0.0 ? 6.0 : 0.0));
}

TEST_CASE("dropout: gradcheck with a fixed Philox state", "[dropout][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  const PhiloxState state{77, 3};
  // Every evaluation restarts from the same state, so finite differences see one fixed mask.
  gradcheck(
      [&](const std::vector<Tensor>& in) {
        philox_set(state);
        return dropout(non_contiguous(in[0].to(device)), 0.3);
      },
      {random_tensor({6, 5}, 6)});
}

TEST_CASE("dropout: errors name the op and the probability", "[dropout][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = zeros({2, 3}, TensorOptions(DType::F32).device(device));
  check_error([&] { dropout(x, -0.1); }, {"dropout", "-0.1", "[0, 1]"});
  check_error([&] { dropout(x, 1.5); }, {"dropout", "1.5"});
  check_error([&] { dropout(x, std::nan("")); }, {"dropout", "nan"});
  check_error([&] { dropout(zeros({2}, TensorOptions(DType::I64).device(device)), 0.5); },
              {"dropout", "i64"});
}

TEST_CASE("dropout: bf16 on the cpu has the bits of the op widened to f32", "[dropout][cpu-only]") {
  // The cpu kernel takes contiguous bf16 itself (the f32 multiply and select per batch, rounded
  // once) instead of the op widening and narrowing the tensor: same mask, same bits, gradient
  // included. Sizes with tails of a Philox block and of a batch, and one over the threading grain.
  for (int64_t n : {1, 7, 37, 1001, 70001}) {
    for (double p : {0.1, 0.5}) {
      INFO("n " << n << " p " << p);
      const Tensor x0 =
          random_tensor({n}, uint64_t(n), DType::F32, Device::cpu(), -2, 2).to(DType::BF16);
      const Tensor g = random_tensor({n}, uint64_t(n) + 1, DType::F32).to(DType::BF16);
      auto run = [&](bool widened) {
        Tensor x = x0.clone().requires_grad_(true);
        manual_seed(99);
        Tensor y = widened ? dropout(x.to(DType::F32), p).to(DType::BF16) : dropout(x, p);
        (y * g).sum().backward();
        return std::vector<Tensor>{y, x.grad()};
      };
      const std::vector<Tensor> native = run(false), widened = run(true);
      for (size_t i = 0; i < native.size(); ++i) {
        INFO("output " << i << " of y, dx");
        REQUIRE(native[i].dtype() == DType::BF16);
        CHECK(native[i].to(DType::F64).to_vector<double>() ==
              widened[i].to(DType::F64).to_vector<double>());
      }
    }
  }
}
