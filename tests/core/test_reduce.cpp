// Reductions against float64 loops over every dim combination, and their gradients.
#include <cmath>
#include <limits>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

enum class Kind { Sum, Max, Min };

// Reduces `v` (of `shape`) over `dims` (sorted) into the keepdim layout.
std::vector<double> reduce_ref(const std::vector<double>& v, const Shape& shape,
                               const std::vector<int64_t>& dims, Kind kind) {
  Shape keep = shape;
  for (int64_t d : dims) keep[size_t(d)] = 1;
  double init = kind == Kind::Sum   ? 0.0
                : kind == Kind::Max ? -std::numeric_limits<double>::infinity()
                                    : std::numeric_limits<double>::infinity();
  std::vector<double> out(size_t(shape_numel(keep)), init);
  for (int64_t flat = 0; flat < shape_numel(shape); ++flat) {
    auto idx = unravel(flat, shape);
    for (int64_t d : dims) idx[size_t(d)] = 0;
    double& o = out[size_t(ravel(idx, keep))];
    double x = v[size_t(flat)];
    o = kind == Kind::Sum ? o + x : kind == Kind::Max ? std::max(o, x) : std::min(o, x);
  }
  return out;
}

}  // namespace

TEST_CASE("reduce: sum/max/min over every subset of dims", "[reduce]") {
  auto device = GENERATE(from_range(test_devices()));
  Shape shape{3, 5, 7};
  Tensor x = random_tensor(shape, 31, DType::F64, device);
  auto xv = x.to_vector<double>();
  std::vector<std::vector<int64_t>> subsets = {{0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}, {0, 1, 2}};
  for (const auto& dims : subsets) {
    INFO("dims " << shape_str(dims));
    Shape keep = shape;
    for (int64_t d : dims) keep[size_t(d)] = 1;
    check_close(sum(x, dims, true), reduce_ref(xv, shape, dims, Kind::Sum), keep, 1e-13, 1e-13);
    check_close(max(x, dims, true), reduce_ref(xv, shape, dims, Kind::Max), keep);
    check_close(min(x, dims, true), reduce_ref(xv, shape, dims, Kind::Min), keep);
    // The same on a non-contiguous view of the same values.
    check_close(sum(non_contiguous(x), dims, true), reduce_ref(xv, shape, dims, Kind::Sum), keep,
                1e-13, 1e-13);
  }
  CHECK(sum(x).shape() == Shape{});
  CHECK(sum(x, {-1}).shape() == Shape{3, 5});
  CHECK(x.sum({0, 2}, true).shape() == Shape{1, 5, 1});
}

TEST_CASE("reduce: float32 sums of long rows stay accurate", "[reduce]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = full({2, 100000}, 0.1, TensorOptions(DType::F32).device(device));
  double one = double(0.1f);
  check_close(x.sum({1}), {one * 1e5, one * 1e5}, {2}, 1e-6, 1e-6);
  Tensor cols = full({100000, 3}, 0.1, TensorOptions(DType::F32).device(device));
  check_close(cols.sum({0}), {one * 1e5, one * 1e5, one * 1e5}, {3}, 1e-6, 1e-6);
}

TEST_CASE("reduce: mean, var, argmax, argmin, integer and bool sums", "[reduce]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({4, 6}, 32, DType::F64, device);
  auto xv = x.to_vector<double>();
  std::vector<double> mean_ref(4, 0), var_ref(4, 0), var0_ref(4, 0);
  std::vector<double> amax(4, 0), amin(4, 0);
  for (int r = 0; r < 4; ++r) {
    double m = 0;
    for (int c = 0; c < 6; ++c) m += xv[size_t(r * 6 + c)];
    m /= 6;
    double ss = 0;
    for (int c = 0; c < 6; ++c) ss += (xv[size_t(r * 6 + c)] - m) * (xv[size_t(r * 6 + c)] - m);
    mean_ref[size_t(r)] = m;
    var_ref[size_t(r)] = ss / 5;
    var0_ref[size_t(r)] = ss / 6;
    int best = 0, worst = 0;
    for (int c = 1; c < 6; ++c) {
      if (xv[size_t(r * 6 + c)] > xv[size_t(r * 6 + best)]) best = c;
      if (xv[size_t(r * 6 + c)] < xv[size_t(r * 6 + worst)]) worst = c;
    }
    amax[size_t(r)] = best;
    amin[size_t(r)] = worst;
  }
  check_close(mean(x, {1}), mean_ref, {4}, 1e-14, 1e-14);
  check_close(var(x, {1}), var_ref, {4}, 1e-14, 1e-13);
  check_close(var(x, {1}, false, 0), var0_ref, {4}, 1e-14, 1e-13);
  check_close(argmax(x, 1), amax, {4});
  check_close(argmin(x, -1, true), amin, {4, 1});
  CHECK(argmax(x, 1).dtype() == DType::I64);
  Tensor ints = arange(10, TensorOptions().device(device));
  CHECK(ints.sum().item<int64_t>() == 45);
  CHECK(ints.sum().dtype() == DType::I64);
  CHECK(
      gt(ints, scalar_tensor(6, TensorOptions(DType::I64).device(device))).sum().item<int64_t>() ==
      3);
}

TEST_CASE("reduce: gradients against finite differences", "[reduce][grad]") {
  Tensor x = random_tensor({3, 4, 5}, 33);
  gradcheck([](auto& in) { return sum(in[0]); }, {x});
  gradcheck([](auto& in) { return sum(in[0], {0, 2}); }, {x});
  gradcheck([](auto& in) { return sum(in[0], {1}, true) * in[0]; }, {x});
  gradcheck([](auto& in) { return mean(in[0], {-1}); }, {x});
  gradcheck([](auto& in) { return var(in[0], {1, 2}); }, {x});
  gradcheck([](auto& in) { return var(in[0].transpose(0, 2), {0}, true, 0); }, {x});
  gradcheck([](auto& in) { return max(in[0], {1}); }, {x});
  gradcheck([](auto& in) { return min(in[0]); }, {x});
  gradcheck([](auto& in) { return sum_to(in[0], {4, 1}); }, {x});
}

TEST_CASE("reduce: max shares the gradient between ties", "[reduce][grad]") {
  Tensor x = from_vector<double>({1, 3, 3, 2}, {4}).requires_grad_();
  x.max().backward();
  check_close(x.grad(), {0, 0.5, 0.5, 0}, {4});
}

TEST_CASE("reduce: errors", "[reduce][errors]") {
  Tensor x = zeros({2, 3});
  check_error([&] { (void)sum(x, {2}); }, {"sum", "dim 2", "out of range"});
  check_error([&] { (void)sum(x, {1, -1}); }, {"sum", "twice"});
  check_error([&] { (void)max(zeros({0, 3}), {0}); }, {"max", "size 0"});
  check_error([&] { (void)mean(arange(4)); }, {"mean", "floating"});
  check_error([&] { (void)argmax(zeros({0}), 0); }, {"argmax", "empty"});
  check_error([&] { (void)sum_to(x, {4}); }, {"sum_to", "[4]"});
}
