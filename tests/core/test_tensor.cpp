#include "kernels/cpu/philox_batch.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

TEST_CASE("tensor: factories give the requested shape, dtype and values", "[tensor]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor z = zeros({2, 3}, TensorOptions(DType::F64).device(device));
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::F64);
  CHECK(z.device() == device);
  check_close(z, std::vector<double>(6, 0.0), {2, 3});
  check_close(full({4}, 2.5, TensorOptions().device(device)), {2.5, 2.5, 2.5, 2.5}, {4});
  check_close(arange(5, TensorOptions().device(device)), {0, 1, 2, 3, 4}, {5});
  CHECK(arange(5).dtype() == DType::I64);
  check_close(arange(1.0, 2.0, 0.25, DType::F32), {1.0, 1.25, 1.5, 1.75}, {4});
}

TEST_CASE("tensor: from_vector keeps the element type unless told otherwise", "[tensor]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor ids = from_vector<int64_t>({3, 1, 2}, {3}, TensorOptions().device(device));
  CHECK(ids.dtype() == DType::I64);
  CHECK(ids.to_vector<int64_t>() == std::vector<int64_t>{3, 1, 2});
  Tensor f = from_vector<int64_t>({3, 1}, {2}, TensorOptions(DType::F64).device(device));
  CHECK(f.dtype() == DType::F64);
  check_close(f, {3, 1}, {2});
  Tensor b = from_vector<bool>({true, false, true}, {3});
  CHECK(b.to_vector<int>() == std::vector<int>{1, 0, 1});
  CHECK(scalar_tensor(2.5).item<double>() == 2.5);
  CHECK(ones({2, 2}, TensorOptions(DType::I32)).sum().item<int64_t>() == 4);
  CHECK(full_like(ids, 7).to_vector<int64_t>() == std::vector<int64_t>{7, 7, 7});
  Tensor e = empty({0, 3});
  CHECK(e.numel() == 0);
  CHECK(e.to_vector<float>().empty());
  check_error(
      [] {
        (void)from_vector<float>({1, 2, 3}, {2, 2});
      },
      {"from_vector", "3 values", "[2, 2]"});
  check_error([] { (void)zeros({2, -1}); }, {"negative", "[2, -1]"});
  check_error([] { (void)arange(0.0, 1.0, 0.0); }, {"arange", "step=0"});
}

TEST_CASE("random: Philox4x32-10 matches the published known-answer vectors", "[random]") {
  // Random123's kat_vectors for philox4x32_10.
  auto zero = philox::block4({0, 0, 0, 0}, 0, 0);
  CHECK(zero == std::array<uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  auto ones_ = philox::block4({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffu,
                              0xffffffffu);
  CHECK(ones_ == std::array<uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  auto pi = philox::block4({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, 0xa4093822u,
                           0x299f31d0u);
  CHECK(pi == std::array<uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("random: the cpu's batched Philox gives philox::block's uniforms", "[random]") {
  // kernels/cpu/philox_batch.h (the dropout and attention kernels' draws): eight blocks at a time
  // in AVX2 lanes where the build has AVX2, the array loop for the rest. Any start and length,
  // seeds with both words set, counters whose low word wraps inside a batch of eight.
  const uint64_t seeds[] = {0, 1234, 0x9E3779B97F4A7C15ull};
  const uint64_t offsets[] = {0, 7, 0xFFFFFFFCull, 0x1FFFFFFF9ull};
  for (uint64_t seed : seeds) {
    for (uint64_t offset : offsets) {
      for (uint64_t first : {uint64_t(0), uint64_t(1), uint64_t(3), uint64_t(37)}) {
        for (int64_t count : {1, 3, 4, 31, 32, 33, 127, 128, 300, 1025}) {
          INFO("seed " << seed << " offset " << offset << " first " << first << " count " << count);
          std::vector<float> u(size_t(count), -1.0f);
          kernels::cpu::philox_uniforms(seed, offset, first, count, u.data());
          int64_t mismatches = 0;
          for (int64_t i = 0; i < count; ++i) {
            const uint64_t e = first + uint64_t(i);
            const float want = philox::to_uniform(philox::block(offset + e / 4, seed)[e % 4]);
            mismatches += u[size_t(i)] != want;
          }
          REQUIRE(mismatches == 0);
        }
      }
    }
  }
}

TEST_CASE("random: rand/randn are reproducible and have the right moments", "[random]") {
  auto device = GENERATE(from_range(test_devices()));
  manual_seed(1234);
  Tensor u = rand({100000}, TensorOptions().device(device));
  Tensor n = randn({100001}, TensorOptions(DType::F64).device(device));
  manual_seed(1234);
  Tensor u2 = rand({100000}, TensorOptions().device(device));
  CHECK(u.to_vector<float>() == u2.to_vector<float>());
  // Element i comes from counter block i / 4, lane i % 4, after the seed's offset 0.
  auto b = philox::block(1, 1234);
  CHECK(u.to_vector<float>()[5] == philox::to_uniform(b[1]));

  auto uv = u.to_vector<double>();
  double mn = 1, mx = 0, mean_u = 0;
  for (double v : uv) {
    mn = std::min(mn, v);
    mx = std::max(mx, v);
    mean_u += v / double(uv.size());
  }
  CHECK(mn >= 0.0);
  CHECK(mx < 1.0);
  CHECK(std::abs(mean_u - 0.5) < 0.005);
  auto nv = n.to_vector<double>();
  double m = 0, s2 = 0;
  for (double v : nv) m += v / double(nv.size());
  for (double v : nv) s2 += (v - m) * (v - m) / double(nv.size());
  CHECK(std::abs(m) < 0.01);
  CHECK(std::abs(s2 - 1.0) < 0.02);
  // Different draws differ; 16-bit draws round the f32 stream.
  CHECK(rand({8}).to_vector<float>() != rand({8}).to_vector<float>());
  manual_seed(7);
  Tensor r32 = rand({16});
  manual_seed(7);
  Tensor r16 = rand({16}, DType::BF16);
  check_close(r16, r32.to(DType::BF16).to_vector<double>(), {16});
  check_error([] { (void)rand({2}, DType::I64); }, {"rand", "floating"});
}

TEST_CASE("tensor: printing is readable", "[tensor]") {
  Tensor t = from_vector<float>({1, 2.5f, -3, 4}, {2, 2});
  std::string s = t.str();
  CHECK(s.find("tensor([[ 1., 2.5],") != std::string::npos);
  CHECK(s.find("shape=[2, 2]") != std::string::npos);
  CHECK(s.find("dtype=f32") != std::string::npos);
  Tensor big = arange(5000).reshape({50, 100});
  std::string b = big.str();
  CHECK(b.find("...") != std::string::npos);
  CHECK(b.size() < 2000);
  Tensor g = ones({2}).requires_grad_();
  CHECK((g * 2.0).str().find("grad_fn=mul") != std::string::npos);
  CHECK(Tensor().str() == "Tensor(undefined)");
}

TEST_CASE("tensor: devices parse and unknown devices fail clearly", "[tensor]") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda:1") == Device::cuda(1));
  CHECK(Device::cuda(2).str() == "cuda:2");
  check_error([] { (void)Device::parse("tpu"); }, {"unknown device", "tpu"});
  check_error([] { (void)Device::parse("cuda:x"); }, {"bad device index"});
  if (!cuda_available()) {
    check_error([] { (void)zeros({2}, Device::cuda(0)); }, {"cuda:0"});
  }
}

TEST_CASE("tensor: the op table is consistent with the kernels of this build", "[tensor][ops]") {
  const auto& ops = op_table();
  REQUIRE(ops.size() > 50);
  for (const OpInfo& op : ops) {
    INFO("op " << op.name);
    // Every op of the foundation runs on the cpu, and on cuda directly or composed.
    CHECK(op_supported_on(op, DeviceType::CPU));
    if (cuda_available()) {
      CHECK((op_supported_on(op, DeviceType::CUDA) || op_composed_on(op, DeviceType::CUDA)));
    }
  }
  std::string md = ops_markdown();
  CHECK(md.find("| `layer_norm` |") != std::string::npos);
}

TEST_CASE("tensor: thread count can be set", "[tensor]") {
  int before = get_num_threads();
  set_num_threads(1);
  CHECK(get_num_threads() == 1);
  Tensor x = random_tensor({300, 300}, 77);
  double one_thread = x.sum().item<double>();
  set_num_threads(std::max(before, 2));
  CHECK(x.sum().item<double>() == Approx(one_thread).epsilon(1e-12));
  set_num_threads(before);
  check_error([] { set_num_threads(0); }, {"set_num_threads"});
}

TEST_CASE("tensor: to(dtype) and to(device) pass gradients back in the source's type",
          "[tensor][grad]") {
  Tensor x = from_vector<float>({1.5f, -2.0f, 0.25f}, {3}).requires_grad_();
  Tensor y = x.to(DType::F64);
  CHECK(y.dtype() == DType::F64);
  (y * from_vector<double>({2, 3, 4})).sum().backward();
  CHECK(x.grad().dtype() == DType::F32);
  check_close(x.grad(), {2, 3, 4}, {3});
  gradcheck([](auto& in) { return in[0].to(DType::F64) * in[0]; }, {random_tensor({4}, 3)});
  for (Device device : test_devices()) {
    Tensor a = random_tensor({2, 3}, 5).requires_grad_();
    Tensor moved = a.to(device);
    CHECK(moved.device() == device);
    (moved * moved).sum().backward();
    CHECK(a.grad().device() == Device::cpu());
    check_close(a.grad(), (a.detach() * 2.0).to_vector<double>(), {2, 3}, 1e-15, 0);
    gradcheck([device](auto& in) { return (in[0].to(device) * 3.0).to(Device::cpu()); },
              {random_tensor({2, 2}, 6)});
  }
}
