// cross_entropy: forward against a float64 loop (odd sizes, ignore_index, label smoothing, every
// reduction), gradients against finite differences, the fused op against cross_entropy_slow
// (values and gradients, f32 and f64), the all-ignored mean, 1-d logits, errors.
#include <cmath>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Per-row losses in f64 (PyTorch's definition), 0 for ignored rows.
std::vector<double> ce_rows_ref(const std::vector<double>& x, const std::vector<int64_t>& t,
                                int64_t classes, int64_t ignore_index, double eps) {
  std::vector<double> out(t.size(), 0.0);
  for (size_t r = 0; r < t.size(); ++r) {
    if (t[r] == ignore_index) continue;
    const double* row = x.data() + r * size_t(classes);
    double m = -INFINITY;
    for (int64_t c = 0; c < classes; ++c) m = std::max(m, row[c]);
    double s = 0;
    for (int64_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
    const double lse = m + std::log(s);
    double smooth = 0;  // mean over classes of -log p
    for (int64_t c = 0; c < classes; ++c) smooth += (lse - row[c]) / double(classes);
    out[r] = (1 - eps) * (lse - row[t[r]]) + eps * smooth;
  }
  return out;
}

Tensor targets_of(const std::vector<int64_t>& t, Device device) {
  return from_vector(t, {int64_t(t.size())}, TensorOptions(DType::I64).device(device));
}

std::vector<int64_t> random_targets(int64_t n, int64_t classes, uint64_t seed,
                                    int64_t ignore_every = 0, int64_t ignore_index = -100) {
  std::vector<double> u = random_values(n, seed, 0, double(classes));
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    t[size_t(i)] = std::min<int64_t>(classes - 1, int64_t(u[size_t(i)]));
    if (ignore_every > 0 && i % ignore_every == 1) t[size_t(i)] = ignore_index;
  }
  return t;
}

}  // namespace

TEST_CASE("cross_entropy: per-row losses match a float64 loop at odd sizes", "[cross_entropy]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const double tol = dtype == DType::F32 ? 2e-5 : 1e-11;
  for (int64_t rows : {1, 7, 37}) {
    for (int64_t classes : {1, 3, 127, 1000}) {
      INFO("rows " << rows << " classes " << classes << " dtype " << dtype);
      Tensor x = random_tensor({rows, classes}, uint64_t(rows * 7 + classes), dtype, device, -6, 6);
      std::vector<int64_t> t = random_targets(rows, classes, uint64_t(rows + classes));
      CrossEntropyOptions o;
      o.reduction = Reduction::None;
      Tensor loss = cross_entropy(x, targets_of(t, device), o);
      CHECK(loss.dtype() == dtype);
      check_close(loss, ce_rows_ref(x.to_vector<double>(), t, classes, -100, 0.0), {rows}, tol,
                  tol);
    }
  }
}

TEST_CASE("cross_entropy: ignore_index, label smoothing and reductions", "[cross_entropy]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto eps = GENERATE(0.0, 0.1, 1.0);
  auto ignore_index = GENERATE(int64_t(-100), int64_t(2));
  const double tol = dtype == DType::F32 ? 2e-5 : 1e-11;
  const int64_t rows = 37, classes = 11;
  INFO("dtype " << dtype << " eps " << eps << " ignore_index " << ignore_index);
  Tensor x = random_tensor({rows, classes}, 5, dtype, device, -4, 4);
  std::vector<int64_t> t = random_targets(rows, classes, 6, 3, ignore_index);
  std::vector<double> ref = ce_rows_ref(x.to_vector<double>(), t, classes, ignore_index, eps);
  double total = 0;
  int64_t counted = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    total += ref[i];
    counted += t[i] != ignore_index;
  }
  REQUIRE(counted < rows);  // the case really ignores rows
  CrossEntropyOptions o;
  o.ignore_index = ignore_index;
  o.label_smoothing = eps;
  o.reduction = Reduction::None;
  check_close(cross_entropy(x, targets_of(t, device), o), ref, {rows}, tol, tol);
  o.reduction = Reduction::Sum;
  check_close(cross_entropy(x, targets_of(t, device), o), {total}, {}, tol, tol);
  o.reduction = Reduction::Mean;
  check_close(cross_entropy(x, targets_of(t, device), o), {total / double(counted)}, {}, tol, tol);
  check_close(cross_entropy_slow(x, targets_of(t, device), o), {total / double(counted)}, {}, tol,
              tol);
}

TEST_CASE("cross_entropy: 1-d logits with a 0-dim target", "[cross_entropy]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({5}, 1, DType::F64, device, -2, 2);
  Tensor t = full({}, 3.0, TensorOptions(DType::I64).device(device));
  double ref = ce_rows_ref(x.to_vector<double>(), {3}, 5, -100, 0.0)[0];
  for (Reduction r : {Reduction::Mean, Reduction::Sum, Reduction::None}) {
    CrossEntropyOptions o;
    o.reduction = r;
    check_close(cross_entropy(x, t, o), {ref}, {});
    check_close(cross_entropy_slow(x, t, o), {ref}, {});
  }
  gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0].to(device), t); },
            {x.to(Device::cpu())});
}

TEST_CASE("cross_entropy: every row ignored gives NaN mean (as PyTorch) and zero gradient",
          "[cross_entropy]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({3, 4}, 1, DType::F64, device).requires_grad_(true);
  Tensor t = targets_of({-100, -100, -100}, device);
  Tensor loss = cross_entropy(x, t);
  CHECK(std::isnan(loss.item<double>()));
  loss.backward();
  check_close(x.grad(), std::vector<double>(12, 0.0), {3, 4});
  CrossEntropyOptions o;
  o.reduction = Reduction::Sum;
  CHECK(cross_entropy(x, t, o).item<double>() == 0.0);
}

TEST_CASE("cross_entropy: gradients match finite differences", "[cross_entropy][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto reduction = GENERATE(Reduction::Mean, Reduction::Sum, Reduction::None);
  auto eps = GENERATE(0.0, 0.2);
  INFO("reduction " << int(reduction) << " eps " << eps);
  CrossEntropyOptions o;
  o.reduction = reduction;
  o.label_smoothing = eps;
  o.ignore_index = 0;
  const int64_t rows = 7, classes = 5;
  Tensor t = targets_of(random_targets(rows, classes, 3, 3, 0), device);
  gradcheck([&](const std::vector<Tensor>& in) { return cross_entropy(in[0].to(device), t, o); },
            {random_tensor({rows, classes}, 2, DType::F64, Device::cpu(), -3, 3)});
  // Non-contiguous logits.
  gradcheck(
      [&](const std::vector<Tensor>& in) { return cross_entropy(in[0].to(device).t(), t, o); },
      {random_tensor({classes, rows}, 4, DType::F64, Device::cpu(), -3, 3)});
  // The composite twin is differentiable too.
  gradcheck(
      [&](const std::vector<Tensor>& in) { return cross_entropy_slow(in[0].to(device), t, o); },
      {random_tensor({rows, classes}, 2, DType::F64, Device::cpu(), -3, 3)});
}

TEST_CASE("cross_entropy: fused agrees with cross_entropy_slow in values and gradients",
          "[cross_entropy][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto eps = GENERATE(0.0, 0.1);
  auto reduction = GENERATE(Reduction::Mean, Reduction::Sum, Reduction::None);
  const double tol = dtype == DType::F32 ? 1e-5 : 1e-11;
  const int64_t rows = 37, classes = 127;
  INFO("dtype " << dtype << " eps " << eps << " reduction " << int(reduction));
  Tensor x0 = random_tensor({rows, classes}, 8, dtype, device, -5, 5);
  Tensor t = targets_of(random_targets(rows, classes, 9, 5), device);
  CrossEntropyOptions o;
  o.label_smoothing = eps;
  o.reduction = reduction;
  std::vector<Tensor> values, grads;
  for (bool slow : {false, true}) {
    Tensor x = x0.clone().requires_grad_(true);
    Tensor loss = slow ? cross_entropy_slow(x, t, o) : cross_entropy(x, t, o);
    Tensor w = random_tensor(loss.shape(), 10, dtype, device);
    (loss * w).sum().backward();
    values.push_back(loss.detach());
    grads.push_back(x.grad());
  }
  check_close(values[0], values[1], tol, tol);
  check_close(grads[0], grads[1], tol, tol);
}

TEST_CASE("cross_entropy: errors name the op, the bad target and the shapes",
          "[cross_entropy][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = zeros({3, 4}, TensorOptions(DType::F32).device(device));
  // On cuda the kernel checks the targets and the host raises a bad one at its next wait (here
  // the copy back); on the cpu the op checks first.
  check_error(
      [&] {
        cross_entropy(x, targets_of({0, 7, 1}, device)).to(Device::cpu());
      },
      {"cross_entropy", "target 7", "row 1", "4 classes", "ignore_index -100"});
  check_error(
      [&] {
        cross_entropy(x, targets_of({0, -1, 1}, device)).to(Device::cpu());
      },
      {"cross_entropy", "target -1"});
  check_error(
      [&] {
        cross_entropy_slow(x, targets_of({0, 4, 1}, device));
      },
      {"cross_entropy_slow", "target 4"});
  check_error(
      [&] {
        cross_entropy(x, from_vector(std::vector<int32_t>{0, 1, 2}, {3},
                                     TensorOptions(DType::I32).device(device)));
      },
      {"cross_entropy", "i64", "i32"});
  check_error(
      [&] {
        cross_entropy(x, targets_of({0, 1}, device));
      },
      {"cross_entropy", "[2]", "[3, 4]"});
  check_error(
      [&] {
        cross_entropy(zeros({3, 4}, TensorOptions(DType::I64).device(device)),
                      targets_of({0, 1, 2}, device));
      },
      {"cross_entropy", "logits", "i64"});
  check_error(
      [&] {
        cross_entropy(zeros({2, 3, 4}, TensorOptions(DType::F32).device(device)),
                      targets_of({0, 1}, device));
      },
      {"cross_entropy", "[2, 3, 4]"});
  CrossEntropyOptions o;
  o.label_smoothing = 1.5;
  check_error(
      [&] {
        cross_entropy(x, targets_of({0, 1, 2}, device), o);
      },
      {"cross_entropy", "label_smoothing"});
}
