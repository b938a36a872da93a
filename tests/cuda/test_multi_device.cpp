// Several cuda devices in one process: tensors on cuda:1 while cuda:0 is the current device. A cuda
// kernel launches on the thread's current device, so every op must make its tensors' device current
// first (kernels::kernel_table(Device)), and the memory functions must work on the device they are
// given. The simulated build has two devices (LATHE_SIM_DEVICE_COUNT) and refuses a kernel given
// another device's memory, a launch on another device's stream and a copy queued on another
// device's stream; on a machine with one GPU these cases are skipped.
#include <catch2/catch.hpp>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "support/test_util.h"

using namespace lathe;
using testing::check_error;
using testing::random_tensor;

namespace {

bool two_devices() {
  if (cuda::device_count() >= 2) return true;
  WARN("one cuda device: the multi-device cases need two");
  return false;
}

// Bits of a tensor on any device, for exact comparisons between devices.
std::vector<double> values(const Tensor& t) {
  return t.to_vector<double>();
}

}  // namespace

TEST_CASE("cuda devices: ops on cuda:1 run there while cuda:0 is current", "[cuda][multi_device]") {
  if (!two_devices()) return;
  // The same forward and backward on each device, with cuda:0 made current before each step: the
  // results must be identical, and the memory of the cuda:1 run must be cuda:1's alone.
  auto run = [](Device device) {
    cuda::set_device(0);
    Tensor x = random_tensor({7, 37}, 1, DType::F32, device).requires_grad_(true);
    Tensor w = random_tensor({37, 37}, 2, DType::F32, device).requires_grad_(true);
    Tensor q = random_tensor({2, 2, 17, 32}, 3, DType::BF16, device).requires_grad_(true);
    const Tensor targets = from_vector<int64_t>({0, 5, 36, 2, 9, 11, 3}, {7},
                                                TensorOptions(DType::I64).device(device));
    cuda::set_device(0);
    const Tensor h = layer_norm(matmul(x, w) * 2.0 + 1.0, Tensor(), Tensor(), 1e-5);
    const Tensor loss = cross_entropy(softmax(h, -1) + h, targets);
    const Tensor attention = scaled_dot_product_attention(q, q, q, Tensor(), true);
    cuda::set_device(0);
    (loss + attention.to(DType::F32).sum()).backward();
    std::vector<std::vector<double>> out = {values(loss), values(attention), values(x.grad()),
                                            values(w.grad()), values(q.grad())};
    return out;
  };
  const size_t before = memory_stats(Device::cuda(0)).allocated_bytes;
  const std::vector<std::vector<double>> on_0 = run(Device::cuda(0));
  const std::vector<std::vector<double>> on_1 = run(Device::cuda(1));
  CHECK(on_1 == on_0);
  // What the cuda:1 run held was cuda:1's: cuda:0 is back where it started.
  CHECK(memory_stats(Device::cuda(0)).allocated_bytes == before);
  CHECK(memory_stats(Device::cuda(1)).peak_allocated_bytes > 0);
  // The selection stays after an op, like cudaSetDevice.
  cuda::set_device(0);
  (void)(random_tensor({3}, 4, DType::F32, Device::cuda(1)) + 1.0);
  CHECK(cuda::current_device() == 1);
  cuda::set_device(0);
}

TEST_CASE("cuda devices: a training step on cuda:1 gives cuda:0's weights bit for bit",
          "[cuda][multi_device]") {
  if (!two_devices()) return;
  // Embedding, attention, layer norms, GELU, cross-entropy, clipping (multi-tensor norm and scale)
  // and the fused AdamW kernel, all on cuda:1 with cuda:0 current between the calls.
  auto step = [](Device device) {
    cuda::set_device(0);
    manual_seed(11);
    nn::BertConfig config = testing::tiny_bert_config();
    nn::BertForSequenceClassification model(config);
    model.to(device);
    model.train();
    optim::AdamOptions options;
    options.lr = 1e-2;
    options.weight_decay = 0.01;
    optim::AdamW optimizer(model.named_parameters(), options);
    const TensorOptions i64 = TensorOptions(DType::I64).device(device);
    const Tensor ids = from_vector<int64_t>({1, 5, 7, 9, 2, 3, 4, 0, 8, 6, 12, 30}, {3, 4}, i64);
    const Tensor mask = from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0}, {3, 4}, i64);
    const Tensor labels = from_vector<int64_t>({0, 1, 1}, {3}, i64);
    for (int i = 0; i < 2; ++i) {
      cuda::set_device(0);
      optimizer.zero_grad();
      const Tensor loss = cross_entropy(model.forward(ids, mask), labels);
      cuda::set_device(0);
      loss.backward();
      cuda::set_device(0);
      optim::clip_grad_norm_(optimizer, 0.5);
      cuda::set_device(0);
      optimizer.step();
    }
    std::vector<std::vector<double>> weights;
    for (const auto& [name, p] : model.named_parameters()) weights.push_back(values(p));
    return weights;
  };
  const std::vector<std::vector<double>> on_0 = step(Device::cuda(0));
  const std::vector<std::vector<double>> on_1 = step(Device::cuda(1));
  REQUIRE(on_1.size() == on_0.size());
  for (size_t i = 0; i < on_0.size(); ++i) {
    INFO("parameter " << i);
    CHECK(on_1[i] == on_0[i]);
  }
  cuda::set_device(0);
}

TEST_CASE("cuda devices: copies between devices, and mixed devices refused",
          "[cuda][multi_device]") {
  if (!two_devices()) return;
  cuda::set_device(0);
  const Tensor x = random_tensor({5, 33}, 5, DType::F32, Device::cuda(0));
  const Tensor y = x.to(Device::cuda(1));
  CHECK(y.device() == Device::cuda(1));
  CHECK(values(y) == values(x));
  CHECK(values(y.to(Device::cuda(0))) == values(x));
  CHECK(values(y.to(DType::BF16).to(Device::cpu())) == values(x.to(DType::BF16)));
  check_error([&] { (void)(x + y); }, {"different devices", "cuda:0", "cuda:1"});
  check_error([&] { (void)matmul(x, y.t()); }, {"cuda:0", "cuda:1"});
  cuda::set_device(0);
}

#ifdef LATHE_CUDA_SIM_BUILD
TEST_CASE("cuda devices: the simulator refuses what a GPU would get wrong",
          "[cuda][multi_device]") {
  if (!two_devices()) return;
  cuda::set_device(0);
  void* on_1 = cuda::raw_malloc(1024, 1);
  const char* inside = static_cast<const char*>(on_1) + 100;
  // A kernel on cuda:0 given cuda:1's memory, or a stream of cuda:1.
  check_error(
      [&] {
        cuda::check_simulated_launch("k", nullptr, {nullptr, inside});
      },
      {"launch of k on cuda:0", "argument 1", "memory of cuda:1"});
  cudaStream_t stream_1 = cuda::stream_create(1);
  check_error([&] { cuda::check_simulated_launch("k", stream_1, {}); },
              {"launch of k on cuda:0", "stream of cuda:1"});
  // A copy or memset of cuda:1's memory ordered on cuda:0's default stream.
  std::vector<char> host(1024, 1);
  check_error(
      [&] { cuda::memcpy_async(on_1, host.data(), 1024, cuda::CopyKind::HostToDevice, nullptr); },
      {"memory on cuda:1", "stream of cuda:0"});
  check_error([&] { cuda::memset_async(on_1, 0, 1024, nullptr); },
              {"memset", "memory on cuda:1", "stream of cuda:0"});
  check_error([&] { cuda::set_current_stream(stream_1, 0); }, {"stream of cuda:1", "cuda:0"});
  {
    // The same calls on cuda:1, or on its stream, are fine.
    cuda::DeviceGuard on_device(1);
    CHECK(cuda::current_device() == 1);
    cuda::check_simulated_launch("k", nullptr, {inside});
    cuda::memset_async(on_1, 0, 1024, nullptr);
  }
  CHECK(cuda::current_device() == 0);  // the guard put cuda:0 back
  cuda::memcpy_async(host.data(), on_1, 1024, cuda::CopyKind::DeviceToHost, stream_1);
  cuda::stream_synchronize(stream_1);  // an asynchronous copy: the host reads after the wait
  CHECK(host[7] == 0);
  check_error([&] { cuda::raw_free(on_1, 0); }, {"raw_free", "not an allocation of cuda:0"});
  cuda::stream_destroy(stream_1);
  cuda::raw_free(on_1, 1);
}
#endif
