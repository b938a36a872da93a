// The multi_tensor_norm / multi_tensor_scale kernels behind clip_grad_norm_: the cuda kernels (in
// the simulator, or on a GPU) and the cpu kernels against a float64 loop over the same values,
// mixed dtypes and sizes (empty, one element, several chunks), p = 1, 2, 3 and infinity, NaN,
// errors, identical bits under every simulator schedule, and clip_grad_norm_ on both devices,
// which on cuda must not make the host wait. Also upload_async, which carries the kernels' chunk
// tables to the device without a wait.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>

#include "cuda/kernel_test_util.h"
#include "kernels/cuda/runtime.h"
#include "kernels/cuda/upload.h"
#include "lathe/core/memory.h"

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

struct Norms {
  std::vector<double> per_tensor;
  double total = 0.0;
};

// The kernel of `device` with its outputs in that device's memory (poisoned first), read back.
Norms run_norm(Device device, const List& l, double p, int64_t chunk) {
  const auto views = l.views();
  const TensorOptions f64 = TensorOptions(DType::F64).device(device);
  const Tensor norms = full({int64_t(views.size())}, -1.0, f64);
  const Tensor total = full({}, -1.0, f64);
  kernels::MultiTensorNormArgs a;
  a.tensors = views.data();
  a.count = int64_t(views.size());
  a.norm_type = p;
  a.norms = static_cast<double*>(norms.data_ptr());
  a.total = static_cast<double*>(total.data_ptr());
  a.chunk = chunk;
  table(device).multi_tensor_norm(a);
  return {norms.to_vector<double>(), total.item<double>()};
}

// The norms combined as the kernels' `total` documents: in tensor order from 0, NaN winning.
double combine_in_order(const std::vector<double>& norms, double p) {
  double acc = 0.0;
  for (double n : norms) {
    acc = std::isnan(acc) || std::isnan(n) ? std::nan("")
          : std::isinf(p)                  ? std::max(acc, n)
                                           : acc + n;
  }
  return acc;
}

// Runs the scale kernel of `device` on `l` with the coefficient in that device's memory.
void run_scale(Device device, const List& l, double coef) {
  const Tensor c = scalar_tensor(coef, TensorOptions(DType::F64).device(device));
  const auto views = l.views();
  table(device).multi_tensor_scale(views.data(), int64_t(views.size()),
                                   static_cast<const double*>(c.data_ptr()));
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor host = t.to(Device::cpu()).contiguous();
  std::vector<uint8_t> bytes(size_t(host.numel()) * element_size(host.dtype()));
  if (!bytes.empty()) std::memcpy(bytes.data(), host.data_ptr(), bytes.size());
  return bytes;
}

}  // namespace

TEST_CASE("multi_tensor_norm: every dtype and size against a float64 loop",
          "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  auto p = GENERATE(1.0, 2.0, 3.0, std::numeric_limits<double>::infinity());
  auto chunk = GENERATE(int64_t(0), int64_t(7));  // 7: thousands of chunks, odd tails
  INFO(device << " p " << p << " chunk " << chunk);
  const List l = make_list(device);
  const Norms norms = run_norm(device, l, p, chunk);
  std::vector<double> refs;
  for (size_t k = 0; k < l.tensors.size(); ++k) {
    INFO("tensor " << k << " of " << l.tensors[k].numel() << " " << l.tensors[k].dtype());
    refs.push_back(reference_norm(l.tensors[k], p));
    CHECK(std::fabs(norms.per_tensor[k] - refs.back()) <= 1e-12 * std::fabs(refs.back()));
  }
  const double ref_total = combine_in_order(refs, p);
  CHECK(std::fabs(norms.total - ref_total) <= 1e-12 * ref_total);
  // The total is the kernel's own norms combined in tensor order, to the bit.
  CHECK(norms.total == combine_in_order(norms.per_tensor, p));
}

TEST_CASE("multi_tensor_norm: no tensors give a zero total; total is optional",
          "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  INFO(device);
  const Norms none = run_norm(device, List{}, 2.0, 0);
  CHECK(none.per_tensor.empty());
  CHECK(none.total == 0.0);
  CHECK_FALSE(std::signbit(none.total));
  const List l = make_list(device);
  const auto views = l.views();
  const Tensor norms = zeros({int64_t(views.size())}, TensorOptions(DType::F64).device(device));
  kernels::MultiTensorNormArgs a;
  a.tensors = views.data();
  a.count = int64_t(views.size());
  a.norms = static_cast<double*>(norms.data_ptr());
  table(device).multi_tensor_norm(a);
  CHECK(std::fabs(norms.to_vector<double>()[4] - reference_norm(l.tensors[4], 2.0)) <=
        1e-12 * reference_norm(l.tensors[4], 2.0));
}

TEST_CASE("multi_tensor_norm: NaN propagates, errors name the tensor", "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  List l = make_list(device);
  {
    NoGradGuard no_grad;
    l.tensors[4].select(0, 65540).fill_(std::nan(""));  // in the second chunk
  }
  for (double p : {2.0, std::numeric_limits<double>::infinity()}) {
    const Norms norms = run_norm(device, l, p, 0);
    CHECK(std::isnan(norms.per_tensor[4]));
    CHECK(!std::isnan(norms.per_tensor[0]));
    CHECK(std::isnan(norms.total));
  }
  List bad;
  bad.tensors = {zeros({3}, TensorOptions(DType::F32).device(device)),
                 zeros({3}, TensorOptions(DType::I64).device(device))};
  testing::check_error([&] { run_norm(device, bad, 2.0, 0); },
                       {"multi_tensor_norm", "tensor 1", "i64"});
  testing::check_error([&] { run_norm(device, l, -1.0, 0); },
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
  run_scale(Device::cpu(), on_cpu, coef);
  run_scale(kCuda, on_cuda, coef);
  for (size_t k = 0; k < expected.size(); ++k) {
    INFO("tensor " << k << " " << expected[k].dtype());
    CHECK(on_cpu.tensors[k].to_vector<double>() == expected[k].to_vector<double>());
    CHECK(on_cuda.tensors[k].to(Device::cpu()).to_vector<double>() ==
          expected[k].to_vector<double>());
  }
}

TEST_CASE("multi_tensor_scale: a coefficient >= 1 changes nothing, NaN poisons",
          "[cuda][multi-tensor]") {
  auto device = GENERATE(Device::cpu(), kCuda);
  INFO(device);
  for (double coef : {1.0, 1.0000001, 7.5, std::numeric_limits<double>::infinity()}) {
    INFO("coef " << coef);
    List l = make_list(device);
    std::vector<std::vector<uint8_t>> before;
    for (const Tensor& t : l.tensors) before.push_back(bytes_of(t));
    run_scale(device, l, coef);
    for (size_t k = 0; k < l.tensors.size(); ++k) CHECK(bytes_of(l.tensors[k]) == before[k]);
  }
  // Just below 1 scales: the boundary is exactly where clipping's min(coef, 1) starts to bite.
  List l = make_list(device);
  const double below = std::nextafter(1.0, 0.0);
  const std::vector<double> f64_before = l.tensors[2].to_vector<double>();
  run_scale(device, l, below);
  CHECK(l.tensors[2].to_vector<double>()[0] == f64_before[0] * below);
  run_scale(device, l, std::nan(""));
  for (const Tensor& t : l.tensors) {
    for (double v : t.to_vector<double>()) CHECK(std::isnan(v));
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
  const double total = optim::clip_grad_norm_(params, 1.0).item<double>();
  CHECK(std::fabs(total - std::sqrt(sq)) <= 1e-12 * std::sqrt(sq));
  // Clipped to norm 1 (up to the 1e-6 of PyTorch's formula and f32 rounding).
  double after = 0.0;
  for (const Tensor& p : params) {
    for (double v : p.grad().to_vector<double>()) after += v * v;
  }
  CHECK(std::fabs(std::sqrt(after) - 1.0) < 1e-5);
}

TEST_CASE("clip_grad_norm_: no host wait on cuda, the returned norm is a float64 loop's",
          "[cuda][multi-tensor][optim][host-waits]") {
  // max_norm 0.05 clips (the 2-norm is ~15, the max-abs norm ~0.1), 1e3 leaves the gradients
  // alone; either way the norms, the total, the coefficient and the decision stay on the device.
  auto max_norm = GENERATE(0.05, 1e3);
  auto norm_type = GENERATE(2.0, std::numeric_limits<double>::infinity());
  INFO("max_norm " << max_norm << " norm_type " << norm_type);
  std::vector<Tensor> params;
  std::vector<std::vector<double>> before;
  double acc = 0.0;
  const DType dtypes[] = {DType::F32, DType::BF16, DType::F64, DType::F32};
  for (int k = 0; k < 4; ++k) {
    const int64_t n = k == 3 ? 70000 : 100 + 37 * k;  // the last one spans two chunks
    Tensor p = zeros({n}, TensorOptions(dtypes[k]).device(kCuda));
    p.set_grad(random_tensor({n}, 60 + uint64_t(k), DType::F64, Device::cpu(), -0.1, 0.1)
                   .to(dtypes[k])
                   .to(kCuda));
    before.push_back(p.grad().to_vector<double>());
    for (double v : before.back()) {
      acc = std::isinf(norm_type) ? std::max(acc, std::fabs(v)) : acc + v * v;
    }
    params.push_back(p);
  }
  const double expected = std::isinf(norm_type) ? acc : std::sqrt(acc);
  REQUIRE((max_norm / (expected + 1e-6) < 1.0) == (max_norm < 1.0));

  const uint64_t waits = cuda::host_waits();
  const Tensor total = optim::clip_grad_norm_(params, max_norm, norm_type);
  CHECK(cuda::host_waits() == waits);

  CHECK(total.device() == kCuda);
  CHECK(total.dtype() == DType::F64);
  CHECK(total.dim() == 0);
  CHECK(std::fabs(total.item<double>() - expected) <= 1e-12 * expected);
  // The coefficient of the norm the device computed (the loop's may differ in the last bit).
  const double coef = max_norm / (total.item<double>() + 1e-6);
  for (size_t k = 0; k < params.size(); ++k) {
    INFO("gradient " << k << " " << dtypes[k]);
    const std::vector<double> after = params[k].grad().to_vector<double>();
    if (coef >= 1.0) {
      CHECK(after == before[k]);
      continue;
    }
    // x * f32(coef) rounded once to the gradient's dtype (f64: x * coef).
    const Tensor f32_coef = scalar_tensor(coef, TensorOptions(DType::F32));
    const Tensor ref = dtypes[k] == DType::F64
                           ? from_vector(before[k]) * coef
                           : (from_vector(before[k]).to(DType::F32) * f32_coef).to(dtypes[k]);
    CHECK(after == ref.to_vector<double>());
  }
}

TEST_CASE("upload_async: the bytes arrive without a wait, the source may change at once",
          "[cuda][upload]") {
  const cudaStream_t stream = cuda::current_stream();
  // 4096 fills a smallest staging block exactly; 100003 needs a larger one.
  for (size_t bytes : {size_t(1), size_t(13), size_t(4096), size_t(4097), size_t(100003)}) {
    INFO(bytes << " bytes");
    // Room for the bytes at an odd offset, with zeros around them that must stay zeros.
    const int64_t words = int64_t(bytes / 8 + 2);
    const Tensor dst = zeros({words}, TensorOptions(DType::I64).device(kCuda));
    std::vector<uint8_t> src(bytes);
    for (size_t i = 0; i < bytes; ++i) src[i] = uint8_t(i * 131 + bytes);
    const std::vector<uint8_t> sent = src;
    const uint64_t waits = cuda::host_waits();
    cuda::upload_async(static_cast<char*>(dst.data_ptr()) + 3, src.data(), bytes, stream);
    CHECK(cuda::host_waits() == waits);
    std::fill(src.begin(), src.end(), uint8_t(0xab));  // the staging copy was taken already
    const std::vector<uint8_t> got = bytes_of(dst);
    CHECK(std::vector<uint8_t>(got.begin() + 3, got.begin() + 3 + long(bytes)) == sent);
    CHECK(std::all_of(got.begin(), got.begin() + 3, [](uint8_t b) { return b == 0; }));
    CHECK(std::all_of(got.begin() + 3 + long(bytes), got.end(), [](uint8_t b) { return b == 0; }));
  }
  cuda::upload_async(nullptr, nullptr, 0, stream);  // nothing to do, and no error
  testing::check_error([&] { cuda::upload_async(nullptr, "x", 1, stream); },
                       {"upload_async", "null pointer"});
}

TEST_CASE("upload_async: many uploads in a row reuse the staging pool", "[cuda][upload]") {
  const cudaStream_t stream = cuda::current_stream();
  constexpr int kUploads = 300;
  constexpr int64_t kWords = 100;  // 800 bytes each
  const Tensor dst = zeros({kUploads, kWords}, TensorOptions(DType::I64).device(kCuda));
  std::vector<int64_t> src(kWords);
  auto fill_for = [&](int i) {
    for (int64_t j = 0; j < kWords; ++j) src[size_t(j)] = int64_t(i) * 1000 + j;
  };
  // Every block is free once the stream has drained (the test may wait; the library does not).
  cuda::upload_async(dst.data_ptr(), src.data(), sizeof(int64_t) * kWords, stream);
  cuda::stream_synchronize(stream);
  const size_t blocks = cuda::upload_staging_blocks();
  CHECK(blocks >= 1);
  for (int i = 0; i < kUploads; ++i) {
    fill_for(i);
    cuda::upload_async(static_cast<int64_t*>(dst.data_ptr()) + i * kWords, src.data(),
                       sizeof(int64_t) * kWords, stream);
    cuda::stream_synchronize(stream);
  }
  // Each upload found the previous one's block free again.
  CHECK(cuda::upload_staging_blocks() == blocks);
  // Back to back without waits: each upload's bytes are its own, and the host never waited. The
  // pool grows only by the uploads still in flight (none in the simulator, whose copies are done
  // on return).
  const uint64_t waits = cuda::host_waits();
  for (int i = 0; i < kUploads; ++i) {
    fill_for(kUploads - i);
    cuda::upload_async(static_cast<int64_t*>(dst.data_ptr()) + i * kWords, src.data(),
                       sizeof(int64_t) * kWords, stream);
  }
  CHECK(cuda::host_waits() == waits);
  CHECK(cuda::upload_staging_blocks() <= blocks + kUploads);
#ifdef LATHE_CUDA_SIM_BUILD
  CHECK(cuda::upload_staging_blocks() == blocks);
#endif
  const std::vector<int64_t> got = dst.to_vector<int64_t>();
  bool all_match = true;
  for (int i = 0; i < kUploads; ++i) {
    for (int64_t j = 0; j < kWords; ++j) {
      all_match &= got[size_t(i * kWords + j)] == int64_t(kUploads - i) * 1000 + j;
    }
  }
  CHECK(all_match);
  // A table larger than every block grows the pool by one block.
  cuda::stream_synchronize(stream);
  const size_t grown = cuda::upload_staging_blocks();
  const std::vector<uint8_t> big(size_t(8) << 20, uint8_t(7));
  const Tensor big_dst = zeros({int64_t(big.size() / 8)}, TensorOptions(DType::I64).device(kCuda));
  cuda::upload_async(big_dst.data_ptr(), big.data(), big.size(), stream);
  CHECK(cuda::upload_staging_blocks() == grown + 1);
  CHECK(bytes_of(big_dst) == big);
}

TEST_CASE("upload_async: empty_cache gives back a device's idle staging blocks", "[cuda][upload]") {
  // One table larger than the 1 MiB copies cuda tensors stage leaves a 2 MiB pinned block behind.
  const std::vector<uint8_t> big(size_t(2) << 20, uint8_t(9));
  const Tensor dst = zeros({int64_t(big.size() / 8)}, TensorOptions(DType::I64).device(kCuda));
  cuda::upload_async(dst.data_ptr(), big.data(), big.size(), cuda::current_stream());
  CHECK(cuda::upload_staging_blocks(0) >= 1);
  cuda::stream_synchronize(cuda::current_stream());
  empty_cache(kCuda);
  CHECK(cuda::upload_staging_blocks(0) == 0);
  CHECK(bytes_of(dst) == big);
  // The pool grows again on demand.
  const std::vector<int64_t> ids = {3, 1, 4, 1, 5};
  const Tensor small = from_vector(ids, {5}, TensorOptions(DType::I64).device(kCuda));
  CHECK(cuda::upload_staging_blocks(0) == 1);
  CHECK(small.to_vector<int64_t>() == ids);
  CHECK(cuda::upload_release_idle(0) == size_t(4) << 10);  // the smallest block, now idle
  // Another device's blocks are its own.
  if (cuda::device_count() < 2) return;
  const Tensor on_one = from_vector(ids, {5}, TensorOptions(DType::I64).device(Device::cuda(1)));
  CHECK(cuda::upload_staging_blocks(1) == 1);
  cuda::device_synchronize(1);
  empty_cache(kCuda);
  CHECK(cuda::upload_staging_blocks(1) == 1);
  empty_cache(Device::cuda(1));
  CHECK(cuda::upload_staging_blocks(1) == 0);
  CHECK(on_one.to_vector<int64_t>() == ids);
}

#ifdef LATHE_CUDA_SIM_BUILD
TEST_CASE("multi_tensor_norm: identical bits under every simulator schedule",
          "[cuda][multi-tensor][sim]") {
  const List l = make_list(kCuda);
  check_schedule_invariant_bytes([&] {
    const Norms norms = run_norm(kCuda, l, 2.0, 100);
    std::vector<double> values = norms.per_tensor;
    values.push_back(norms.total);
    std::vector<uint8_t> bytes(values.size() * sizeof(double));
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return std::vector<std::vector<uint8_t>>{bytes};
  });
}
#endif
