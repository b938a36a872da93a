// layer_norm: forward against a float64 loop (odd sizes, optional weight/bias, multi-dim normalized
// shapes), gradients against finite differences, the fused op against its composite twin
// layer_norm_slow (values and gradients, f32 and f64), reproducible parameter gradients, errors.
#include <cmath>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Naive layer norm of `rows` rows of `cols` values in f64; w/b empty means absent.
std::vector<double> layer_norm_ref(const std::vector<double>& x, int64_t rows, int64_t cols,
                                   const std::vector<double>& w, const std::vector<double>& b,
                                   double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t j = 0; j < cols; ++j) mean += x[size_t(r * cols + j)];
    mean /= double(cols);
    for (int64_t j = 0; j < cols; ++j) {
      double d = x[size_t(r * cols + j)] - mean;
      var += d * d;
    }
    var /= double(cols);
    for (int64_t j = 0; j < cols; ++j) {
      double y = (x[size_t(r * cols + j)] - mean) / std::sqrt(var + eps);
      if (!w.empty()) y *= w[size_t(j)];
      if (!b.empty()) y += b[size_t(j)];
      out[size_t(r * cols + j)] = y;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("layer_norm: matches a float64 loop at odd sizes", "[layer_norm]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto affine = GENERATE(0, 1, 2, 3);  // bit 0: weight, bit 1: bias
  // Centering values near 100 in f32 costs ~ulp(100) / std ~ 1e-5; the naive E[x^2] - E[x]^2
  // formula would be off by ~1e-3 and fail.
  const double atol = dtype == DType::F32 ? 1e-4 : 1e-10;
  const double rtol = dtype == DType::F32 ? 1e-4 : 1e-10;
  const TensorOptions opts = TensorOptions(dtype).device(device);
  for (int64_t rows : {1, 7, 37}) {
    for (int64_t cols : {1, 3, 127, 1000}) {
      INFO("rows " << rows << " cols " << cols << " dtype " << dtype << " affine " << affine);
      // An offset mean checks the two-pass variance is not the naive E[x^2] - E[x]^2.
      Tensor x = from_vector(random_values(rows * cols, uint64_t(rows + cols), 99, 101),
                             {rows, cols}, opts);
      Tensor w = (affine & 1) ? random_tensor({cols}, 3, dtype, device, 0.5, 1.5) : Tensor();
      Tensor b = (affine & 2) ? random_tensor({cols}, 4, dtype, device) : Tensor();
      Tensor y = layer_norm(x, w, b, 1e-5);
      CHECK(y.dtype() == dtype);
      auto ref = layer_norm_ref(x.to_vector<double>(), rows, cols,
                                w.defined() ? w.to_vector<double>() : std::vector<double>{},
                                b.defined() ? b.to_vector<double>() : std::vector<double>{}, 1e-5);
      check_close(y, ref, {rows, cols}, atol, rtol);
    }
  }
}

TEST_CASE("layer_norm: normalizes over the trailing weight.dim() dims", "[layer_norm]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({3, 4, 5}, 1, DType::F64, device);
  Tensor w = random_tensor({4, 5}, 2, DType::F64, device);
  Tensor b = random_tensor({4, 5}, 3, DType::F64, device);
  check_close(layer_norm(x, w, b, 1e-3),
              layer_norm_ref(x.to_vector<double>(), 3, 20, w.to_vector<double>(),
                             b.to_vector<double>(), 1e-3),
              {3, 4, 5});
  // Without parameters only the last dim is normalized.
  check_close(layer_norm(x, Tensor(), Tensor(), 1e-3),
              layer_norm_ref(x.to_vector<double>(), 12, 5, {}, {}, 1e-3), {3, 4, 5});
  // A non-contiguous input gives the same values as its contiguous copy.
  Tensor xt = random_tensor({5, 6}, 5, DType::F64, device).t();
  check_close(layer_norm(xt, Tensor(), Tensor(), 1e-5),
              layer_norm_ref(xt.to_vector<double>(), 6, 5, {}, {}, 1e-5), {6, 5});
}

TEST_CASE("layer_norm: gradients match finite differences", "[layer_norm][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto to_dev = [device](const Tensor& t) { return t.to(device); };
  SECTION("weight and bias") {
    for (int64_t cols : {1, 3, 8}) {
      gradcheck(
          [&](const std::vector<Tensor>& in) {
            return layer_norm(to_dev(in[0]), to_dev(in[1]), to_dev(in[2]), 1e-5);
          },
          {random_tensor({5, cols}, 1, DType::F64, Device::cpu(), -2, 2), random_tensor({cols}, 2),
           random_tensor({cols}, 3)},
          1e-6, 1e-5, 1e-4);
    }
  }
  SECTION("no parameters, non-contiguous input") {
    gradcheck(
        [&](const std::vector<Tensor>& in) {
          return layer_norm(non_contiguous(to_dev(in[0])), Tensor(), Tensor(), 1e-5);
        },
        {random_tensor({6, 7}, 4, DType::F64, Device::cpu(), -2, 2)}, 1e-6, 1e-5, 1e-4);
  }
  SECTION("weight only, 2-d normalized shape, broadcast input") {
    gradcheck(
        [&](const std::vector<Tensor>& in) {
          return layer_norm(to_dev(in[0]).expand({2, 3, 4}), to_dev(in[1]), Tensor(), 1e-5);
        },
        {random_tensor({3, 4}, 5, DType::F64, Device::cpu(), -2, 2), random_tensor({3, 4}, 6)},
        1e-6, 1e-5, 1e-4);
  }
  SECTION("bias only") {
    gradcheck(
        [&](const std::vector<Tensor>& in) {
          return layer_norm(to_dev(in[0]), Tensor(), to_dev(in[1]), 1e-5);
        },
        {random_tensor({4, 5}, 7, DType::F64, Device::cpu(), -2, 2), random_tensor({5}, 8)}, 1e-6,
        1e-5, 1e-4);
  }
}

TEST_CASE("layer_norm: fused agrees with layer_norm_slow in values and gradients",
          "[layer_norm][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const double tol = dtype == DType::F32 ? 1e-4 : 1e-10;
  for (Shape shape : {Shape{37, 127}, Shape{2, 3, 64}, Shape{1, 1000}}) {
    INFO("shape " << shape_str(shape) << " dtype " << dtype);
    const int64_t cols = shape.back();
    Tensor x0 = random_tensor(shape, 1, dtype, device, -3, 3);
    Tensor w0 = random_tensor({cols}, 2, dtype, device, 0.5, 1.5);
    Tensor b0 = random_tensor({cols}, 3, dtype, device);
    Tensor gy = random_tensor(shape, 4, dtype, device);
    std::vector<std::vector<Tensor>> results;
    for (bool slow : {false, true}) {
      Tensor x = x0.clone().requires_grad_(true);
      Tensor w = w0.clone().requires_grad_(true);
      Tensor b = b0.clone().requires_grad_(true);
      Tensor y = slow ? layer_norm_slow(x, w, b, 1e-5) : layer_norm(x, w, b, 1e-5);
      (y * gy).sum().backward();
      results.push_back({y.detach(), x.grad(), w.grad(), b.grad()});
    }
    for (size_t i = 0; i < 4; ++i) {
      INFO("tensor " << i << " (y, dx, dw, db)");
      check_close(results[0][i], results[1][i], tol, tol);
    }
  }
}

TEST_CASE("layer_norm: parameter gradients are reproducible bit for bit", "[layer_norm][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  // Enough rows that the column sums are split into several blocks.
  Tensor x0 = random_tensor({1000, 33}, 1, DType::F32, device);
  Tensor w0 = random_tensor({33}, 2, DType::F32, device);
  Tensor b0 = random_tensor({33}, 3, DType::F32, device);
  Tensor gy = random_tensor({1000, 33}, 4, DType::F32, device);
  std::vector<std::vector<float>> first;
  for (int run = 0; run < 3; ++run) {
    Tensor w = w0.clone().requires_grad_(true);
    Tensor b = b0.clone().requires_grad_(true);
    (layer_norm(x0, w, b) * gy).sum().backward();
    std::vector<std::vector<float>> now{w.grad().to_vector<float>(), b.grad().to_vector<float>()};
    if (run == 0) {
      first = now;
    } else {
      CHECK(now == first);
    }
  }
  // And they are right: dbias is the column sum of gy.
  std::vector<double> g = gy.to_vector<double>();
  std::vector<double> col(33, 0.0);
  for (size_t i = 0; i < g.size(); ++i) col[i % 33] += g[i];
  for (size_t j = 0; j < 33; ++j) CHECK(first[1][j] == Approx(col[j]).epsilon(1e-5).margin(1e-5));
}

TEST_CASE("layer_norm: errors name the op and the shapes", "[layer_norm][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  Tensor x = zeros({2, 3}, f32);
  check_error([&] { layer_norm(x, zeros({4}, f32), Tensor()); },
              {"layer_norm", "[4]", "[3]", "[2, 3]"});
  check_error([&] { layer_norm(x, zeros({3}, f32), zeros({2}, f32)); },
              {"layer_norm", "weight", "bias"});
  check_error(
      [&] {
        layer_norm(x, zeros({2, 2, 3}, f32), Tensor());
      },
      {"layer_norm", "fewer dims"});
  check_error(
      [&] { layer_norm(x, zeros({3}, TensorOptions(DType::F64).device(device)), Tensor()); },
      {"layer_norm", "dtype", "f64"});
  check_error(
      [&] {
        layer_norm(zeros({2, 3}, TensorOptions(DType::I64).device(device)), Tensor(), Tensor());
      },
      {"layer_norm", "i64"});
  check_error([&] { layer_norm_slow(x, zeros({4}, f32), Tensor()); }, {"layer_norm_slow", "[4]"});
  check_error([&] { layer_norm(x, Tensor(), Tensor(), -1.0); }, {"layer_norm", "eps"});
}
