// The multi_tensor_norm / multi_tensor_scale kernels behind clip_grad_norm_: the cuda kernels (in
// the simulator, or on a GPU) and the cpu kernels against a float64 loop over the same values,
// mixed dtypes and sizes (empty, one element, several chunks), p = 1, 2, 3 and infinity, NaN,
// errors, identical bits under every simulator schedule, and clip_grad_norm_ on both devices.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "cuda/kernel_test_util.h"

using namespace lathe;
using kernel_test::check_schedule_invariant_bytes;
using kernel_test::kCuda;
using kernel_test::table;
using testing::random_tensor;

namespace {

struct List {
  std::vector<Tensor> tensors;
  std::vector<kernels::MultiTensor> views() const {
    std::vector<kernels::MultiTensor> v;
    for (const Tensor& t : tensors) v.push_back({t.data_ptr(), t.numel(), t.dtype()});
    return v;
  }
};

// Sizes 0, 1, 127, 1000 and 70000 (two default chunks), in every float dtype.
List make_list(Device device) {
  const std::pair<int64_t, DType> spec[] = {
      {127, DType::F32},   {0, DType::F32},   {1, DType::F64},   {1000, DType::BF16},
      {70000, DType::F32}, {333, DType::F16}, {4097, DType::F64}};
  List l;
  uint64_t seed = 1;
  for (auto [n, t] : spec) {
    l.tensors.push_back(
        random_tensor({n}, seed++, DType::F64, Device::cpu(), -2.0, 2.0).to(t).to(device));
  }
  return l;
}

double reference_norm(const Tensor& t, double p) {
  double acc = 0.0;
  for (double v : t.to_vector<double>()) {
    const double a = std::fabs(v);
    if (std::isinf(p)) {
      acc = std::isnan(a) || std::isnan(acc) ? std::nan("") : std::max(acc, a);
    } else {
      acc += std::pow(a, p);
    }
  }
  return acc;
}

std::vector<double> run_norm(const kernels::KernelTable& k, const List& l, double p,
                             int64_t chunk) {
  const auto views = l.views();
  std::vector<double> norms(views.size(), -1.0);
  kernels::MultiTensorNormArgs a;
  a.tensors = views.data();
  a.count = int64_t(views.size());
  a.norm_type = p;
  a.norms = norms.data();
  a.chunk = chunk;
  k.multi_tensor_norm(a);
  return norms;
}

}  // namespace

TEST_CASE("multi_tensor_norm: every dtype and size against a float64 loop",
          "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  auto p = GENERATE(1.0, 2.0, 3.0, std::numeric_limits<double>::infinity());
  auto chunk = GENERATE(int64_t(0), int64_t(7));  // 7: thousands of chunks, odd tails
  INFO(device << " p " << p << " chunk " << chunk);
  const List l = make_list(device);
  const std::vector<double> norms = run_norm(table(device), l, p, chunk);
  for (size_t k = 0; k < l.tensors.size(); ++k) {
    INFO("tensor " << k << " of " << l.tensors[k].numel() << " " << l.tensors[k].dtype());
    const double ref = reference_norm(l.tensors[k], p);
    CHECK(std::fabs(norms[k] - ref) <= 1e-12 * std::fabs(ref));
  }
}

TEST_CASE("multi_tensor_norm: NaN propagates, errors name the tensor", "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  List l = make_list(device);
  {
    NoGradGuard no_grad;
    l.tensors[4].select(0, 65540).fill_(std::nan(""));  // in the second chunk
  }
  for (double p : {2.0, std::numeric_limits<double>::infinity()}) {
    const std::vector<double> norms = run_norm(table(device), l, p, 0);
    CHECK(std::isnan(norms[4]));
    CHECK(!std::isnan(norms[0]));
  }
  List bad;
  bad.tensors = {zeros({3}, TensorOptions(DType::F32).device(device)),
                 zeros({3}, TensorOptions(DType::I64).device(device))};
  testing::check_error([&] { run_norm(table(device), bad, 2.0, 0); },
                       {"multi_tensor_norm", "tensor 1", "i64"});
  testing::check_error([&] { run_norm(table(device), l, -1.0, 0); },
                       {"multi_tensor_norm", "norm_type must be positive"});
}

TEST_CASE("multi_tensor_scale: x * f32(coef) rounded once, the cpu's bits on cuda",
          "[cuda][multi-tensor]") {
  // As PyTorch's clipping (a foreach multiply by an f32 coefficient): 16-bit values are widened,
  // multiplied by the coefficient in f32 and rounded once; f64 multiplies in f64.
  const double coef = 0.3712345;
  List on_cpu = make_list(Device::cpu()), on_cuda = make_list(kCuda);
  std::vector<Tensor> expected;
  for (const Tensor& t : on_cpu.tensors) {
    Tensor c = (t.dtype() == DType::F64 ? t : t.to(DType::F32)).clone();  // to() may alias
    c.mul_(coef);
    expected.push_back(c.to(t.dtype()));
  }
  const auto cpu_views = on_cpu.views(), cuda_views = on_cuda.views();
  table(Device::cpu()).multi_tensor_scale(cpu_views.data(), int64_t(cpu_views.size()), coef);
  table(kCuda).multi_tensor_scale(cuda_views.data(), int64_t(cuda_views.size()), coef);
  for (size_t k = 0; k < expected.size(); ++k) {
    INFO("tensor " << k << " " << expected[k].dtype());
    CHECK(on_cpu.tensors[k].to_vector<double>() == expected[k].to_vector<double>());
    CHECK(on_cuda.tensors[k].to(Device::cpu()).to_vector<double>() ==
          expected[k].to_vector<double>());
  }
}

TEST_CASE("clip_grad_norm_: fused kernels on both devices agree with a float64 loop",
          "[cuda][multi-tensor][optim]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  INFO(device);
  std::vector<Tensor> params;
  double sq = 0.0;
  for (int k = 0; k < 5; ++k) {
    Tensor p = zeros({100 + 37 * k}, TensorOptions(DType::F32).device(device));
    Tensor g = random_tensor({100 + 37 * k}, 20 + uint64_t(k), DType::F32, device);
    p.set_grad(g);
    for (double v : g.to_vector<double>()) sq += v * v;
    params.push_back(p);
  }
  const double total = optim::clip_grad_norm_(params, 1.0);
  CHECK(std::fabs(total - std::sqrt(sq)) <= 1e-12 * std::sqrt(sq));
  // Clipped to norm 1 (up to the 1e-6 of PyTorch's formula and f32 rounding).
  double after = 0.0;
  for (const Tensor& p : params) {
    for (double v : p.grad().to_vector<double>()) after += v * v;
  }
  CHECK(std::fabs(std::sqrt(after) - 1.0) < 1e-5);
}

#ifdef LATHE_CUDA_SIM_BUILD
TEST_CASE("multi_tensor_norm: identical bits under every simulator schedule",
          "[cuda][multi-tensor][sim]") {
  const List l = make_list(kCuda);
  check_schedule_invariant_bytes([&] {
    const std::vector<double> norms = run_norm(table(kCuda), l, 2.0, 100);
    std::vector<uint8_t> bytes(norms.size() * sizeof(double));
    std::memcpy(bytes.data(), norms.data(), bytes.size());
    return std::vector<std::vector<uint8_t>>{bytes};
  });
}
#endif
