// CUDA graphs (lathe/core/cuda_graph.h) on every cuda device: the simulated ones in CI, cuda:0 on
// a GPU (scripts/gpu-check.sh runs the core suite there). A capture runs nothing, so an output
// read after replay() holds the replay's values or garbage: each test compares them bit for bit
// with the same computation run eagerly.
#include <string>
#include <vector>

#include "lathe/core/autocast.h"
#include "lathe/core/cuda_graph.h"
#include "lathe/core/memory.h"
#include "lathe/core/random.h"
#include "lathe/core/stream.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

Tensor ids_on(const std::vector<int64_t>& values, Device device) {
  return from_vector(values, {2, 6}, TensorOptions(DType::I64).device(device));
}

const std::vector<std::vector<int64_t>> kRequests = {
    {5, 9, 14, 3, 2, 8, 30, 7, 1, 4, 11, 6},
    {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
    {49, 0, 17, 17, 23, 42, 8, 8, 8, 31, 2, 44},
};

}  // namespace

TEST_CASE("graphs: the cpu has none", "[graphs]") {
  check_error([] { (void)CudaGraph::capture(Device::cpu(), [] {}); },
              {"CudaGraph::capture", "cpu", "no graphs"});
}

TEST_CASE("graphs: a captured forward replays each request as the eager forward computes it",
          "[graphs][nn]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  const bool bf16 = GENERATE(false, true);
  INFO(device.str() << (bf16 ? " bf16 autocast" : " f32"));
  manual_seed(5);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  NoGradGuard no_grad;
  auto eager = [&](const Tensor& ids) {
    std::optional<AutocastGuard> amp;
    if (bf16) amp.emplace(DType::BF16, device.type);
    return model.forward(ids, ones_like(ids)).to_vector<float>();
  };

  Tensor ids = ids_on(kRequests[0], device);  // the graph's input
  Tensor logits;                              // its output
  CudaGraph graph = CudaGraph::capture(device, [&] {
    std::optional<AutocastGuard> amp;
    if (bf16) amp.emplace(DType::BF16, device.type);
    logits = model.forward(ids, ones_like(ids));
  });
  CHECK(graph.device() == device);
  for (const std::vector<int64_t>& request : kRequests) {
    const Tensor host = from_vector(request, {2, 6}, TensorOptions(DType::I64));
    ids.copy_(host);
    graph.replay();
    CHECK(logits.to_vector<float>() == eager(ids_on(request, device)));
  }

  SECTION("replayed on a created stream and read there") {
    const Stream stream = Stream::create(device, StreamOptions{.blocking = false});
    stream.wait(Stream::default_stream(device));  // after the last copy into `ids`
    StreamGuard guard(stream);
    graph.replay();
    CHECK(logits.to_vector<float>() == eager(ids_on(kRequests.back(), device)));
  }
  SECTION("moved") {
    CudaGraph moved = std::move(graph);
    ids.copy_(from_vector(kRequests[1], {2, 6}, TensorOptions(DType::I64)));
    moved.replay();
    CHECK(logits.to_vector<float>() == eager(ids_on(kRequests[1], device)));
    check_error([&] { graph.replay(); }, {"CudaGraph::replay", "moved from"});
  }
}

TEST_CASE("graphs: under one autocast guard, each graph casts the weights itself", "[graphs]") {
  // The cast cache would otherwise hand the second capture the first graph's casts, which hold
  // values only once that graph has replayed (and belong to its memory).
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  manual_seed(6);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  NoGradGuard no_grad;
  AutocastGuard amp(DType::BF16, device.type);
  const std::vector<float> want =
      model.forward(ids_on(kRequests[2], device), ones_like(ids_on(kRequests[2], device)))
          .to_vector<float>();
  Tensor ids = ids_on(kRequests[2], device), mask = ones_like(ids);
  Tensor first_logits, second_logits;
  CudaGraph first = CudaGraph::capture(device, [&] { first_logits = model.forward(ids, mask); });
  CudaGraph second = CudaGraph::capture(device, [&] { second_logits = model.forward(ids, mask); });
  second.replay();  // only the second
  CHECK(second_logits.to_vector<float>() == want);
  first.replay();
  CHECK(first_logits.to_vector<float>() == want);
}

TEST_CASE("graphs: memory the capture freed stays the graph's until it is destroyed",
          "[graphs][memory]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  std::vector<float> values(1024);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(i) * 0.5f;
  Tensor x = from_vector(values, {1024}, f32);  // 4 KiB: one block of its own size class
  Tensor y;
  synchronize(device);
  empty_cache(device);
  const size_t reserved_before = memory_stats(device).reserved_bytes;
  {
    CudaGraph graph = CudaGraph::capture(device, [&] {
      y = x * 2.0;
      x = Tensor();  // the graph still reads the block at every replay
    });
    // A same-sized request on the default stream would take x's block if it went back there; it
    // must not, or this fill would be what the replay reads.
    Tensor other = full({1024}, 7.0, f32);
    empty_cache(device);  // must leave the graph's pool alone
    graph.replay();
    const std::vector<float> got = y.to_vector<float>();
    REQUIRE(got.size() == values.size());
    size_t wrong = 0;
    for (size_t i = 0; i < values.size(); ++i) wrong += got[i] != values[i] * 2.0f;
    CHECK(wrong == 0);
    CHECK(other.to_vector<float>() == std::vector<float>(1024, 7.0f));
  }
  // Destroyed: x's old block went back to the device with the pool, y's when it is dropped.
  y = Tensor();
  synchronize(device);
  empty_cache(device);
  CHECK(memory_stats(device).reserved_bytes == reserved_before - 4096);
}

TEST_CASE("graphs: a capture refuses what would not replay, and the device stays usable",
          "[graphs]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Tensor a = full({4, 4}, 1.5, f32);
  auto refused = [&](const std::function<void()>& body, std::vector<std::string> fragments) {
    check_error([&] { (void)CudaGraph::capture(device, body); }, fragments);
    // Nothing half-captured is left: eager work and a new capture run as before.
    CHECK((a * 2.0).to_vector<float>() == std::vector<float>(16, 3.0f));
    Tensor out;
    CudaGraph graph = CudaGraph::capture(device, [&] { out = a + 1.0; });
    graph.replay();
    CHECK(out.to_vector<float>() == std::vector<float>(16, 2.5f));
  };
  SECTION("a copy to the host") {
    refused([&] { (void)(a * 2.0).to_vector<float>(); },
            {"a copy to the host", "inside CudaGraph::capture"});
  }
  SECTION("a copy from host memory") {
    refused(
        [&] {
          (void)from_vector(std::vector<float>{1, 2}, {2}, f32);
        },
        {"a copy from host memory", "inside CudaGraph::capture"});
  }
  SECTION("a random draw that names no device") {
    // Draws of tensor ops name theirs (tests/core/test_graph_training.cpp).
    refused([&] { (void)philox_reserve(4); },
            {"random draw", "names no device", "CudaGraph::capture", "repeat"});
  }
  SECTION("a wait for the capture's stream") {
    refused([&] { current_stream(device).synchronize(); }, {"cudaErrorStreamCaptureUnsupported"});
  }
  SECTION("an exception of the body") {
    refused([&] { throw Error("from the body"); }, {"from the body"});
  }
}

TEST_CASE("graphs: threads capture and replay their own graphs at once, on every cuda device",
          "[graphs][threads]") {
  if (cuda_test_devices().empty()) return;
  const int devices = cuda_device_count();
  constexpr int kThreads = 4;
  std::vector<std::unique_ptr<nn::BertForSequenceClassification>> models;
  std::vector<std::vector<float>> want;
  for (int t = 0; t < kThreads; ++t) {
    const Device device = Device::cuda(t % devices);
    manual_seed(uint64_t(10 + t));
    models.push_back(std::make_unique<nn::BertForSequenceClassification>(tiny_bert_config()));
    models.back()->to(device);
    models.back()->eval();
    NoGradGuard no_grad;
    const Tensor ids = ids_on(kRequests[size_t(t) % kRequests.size()], device);
    want.push_back(models.back()->forward(ids, ones_like(ids)).to_vector<float>());
  }
  std::vector<int> mismatches(kThreads, 0);
  on_threads(kThreads, [&](int t, const std::function<void()>& start) {
    const Device device = Device::cuda(t % devices);
    const Tensor ids = ids_on(kRequests[size_t(t) % kRequests.size()], device);
    NoGradGuard no_grad;
    start();
    Tensor logits;
    CudaGraph graph = CudaGraph::capture(
        device, [&] { logits = models[size_t(t)]->forward(ids, ones_like(ids)); });
    for (int i = 0; i < 3; ++i) {
      graph.replay();
      mismatches[size_t(t)] += logits.to_vector<float>() != want[size_t(t)];
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t << " on cuda:" << t % devices);
    CHECK(mismatches[size_t(t)] == 0);
  }
}

TEST_CASE("graphs: graphs of several shapes share one memory pool", "[graphs][memory]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  manual_seed(7);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  NoGradGuard no_grad;
  const std::vector<int64_t>& tokens = kRequests[0];
  auto eager = [&](const Tensor& ids) {
    return model.forward(ids, ones_like(ids)).to_vector<float>();
  };
  // One graph per padded length, as a server buckets its requests.
  Tensor ids_a = ids_on(tokens, device);
  Tensor ids_b = from_vector(tokens, {3, 4}, TensorOptions(DType::I64).device(device));
  const std::vector<float> want_a = eager(ids_a), want_b = eager(ids_b);
  Tensor logits_a, logits_b, logits_c;
  synchronize(device);
  empty_cache(device);
  const size_t reserved_start = memory_stats(device).reserved_bytes;
  std::optional<CudaGraph> a =
      CudaGraph::capture(device, [&] { logits_a = model.forward(ids_a, ones_like(ids_a)); });
  const size_t reserved_a = memory_stats(device).reserved_bytes;
  std::optional<CudaGraph> b = CudaGraph::capture(
      device, [&] { logits_b = model.forward(ids_b, ones_like(ids_b)); },
      CaptureOptions{.share_memory_with = &*a});
  const size_t reserved_b = memory_stats(device).reserved_bytes;
  {
    // The same capture with a pool of its own takes memory for all its temporaries.
    CudaGraph c =
        CudaGraph::capture(device, [&] { logits_c = model.forward(ids_b, ones_like(ids_b)); });
    CHECK(memory_stats(device).reserved_bytes - reserved_b > reserved_b - reserved_a);
    c.replay();
    CHECK(logits_c.to_vector<float>() == want_b);
  }
  CHECK(reserved_a > reserved_start);
  // Replayed one after another, each graph recomputes the temporaries the other overwrote.
  for (int round = 0; round < 2; ++round) {
    a->replay();
    CHECK(logits_a.to_vector<float>() == want_a);
    b->replay();
    CHECK(logits_b.to_vector<float>() == want_b);
  }
  // The pool lives while one of its graphs does.
  logits_c = Tensor();
  empty_cache(device);
  const size_t reserved_both = memory_stats(device).reserved_bytes;
  a.reset();
  empty_cache(device);
  CHECK(memory_stats(device).reserved_bytes == reserved_both);
  b->replay();
  CHECK(logits_b.to_vector<float>() == want_b);
  b.reset();
  logits_a = Tensor();
  logits_b = Tensor();
  empty_cache(device);
  CHECK(memory_stats(device).reserved_bytes == reserved_start);

  check_error(
      [&] {
        CudaGraph moved_from = CudaGraph::capture(device, [] {});
        CudaGraph keep = std::move(moved_from);
        (void)CudaGraph::capture(
            device, [] {}, CaptureOptions{.share_memory_with = &moved_from});
      },
      {"share_memory_with", "moved from"});
  if (cuda_device_count() > 1) {
    check_error(
        [] {
          const CudaGraph other = CudaGraph::capture(Device::cuda(1), [] {});
          (void)CudaGraph::capture(
              Device::cuda(0), [] {}, CaptureOptions{.share_memory_with = &other});
        },
        {"share_memory_with", "graph of cuda:1, not of cuda:0"});
  }
}

TEST_CASE("graphs: GraphedFunction captures one graph per input signature and replays it",
          "[graphs]") {
  check_error(
      [] { GraphedFunction f(Device::cpu(), [](const std::vector<Tensor>& in) { return in; }); },
      {"GraphedFunction", "cpu", "no graphs"});
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  manual_seed(8);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  int calls = 0;  // how often the function itself runs: once per capture
  GraphedFunction classify(device, [&](const std::vector<Tensor>& in) {
    ++calls;
    CHECK(!grad_mode_enabled());
    return std::vector<Tensor>{model.forward(in[0], in[1])};
  });
  auto eager = [&](const Tensor& ids) {
    NoGradGuard no_grad;
    return model.forward(ids, ones_like(ids)).to_vector<float>();
  };
  const TensorOptions i64 = TensorOptions(DType::I64);
  // Inputs from the host or from the device; two shapes, each seen twice.
  for (int round = 0; round < 2; ++round) {
    for (const std::vector<int64_t>& request : kRequests) {
      const Tensor host = from_vector(request, {2, 6}, i64);
      CHECK(classify({host, ones_like(host)})[0].to_vector<float>() == eager(host.to(device)));
      const Tensor short_ids = from_vector(request, {3, 4}, i64).to(device);
      CHECK(classify({short_ids, ones_like(short_ids)})[0].to_vector<float>() == eager(short_ids));
    }
  }
  CHECK(classify.graphs() == 2);
  CHECK(calls == 2);
  // A new dtype is a new signature.
  const Tensor ids32 = from_vector(kRequests[0], {2, 6}, i64).to(DType::I32).to(device);
  CHECK(classify({ids32.to(DType::I64), ones_like(ids32)})[0].to_vector<float>() ==
        eager(ids32.to(DType::I64)));
  CHECK(classify.graphs() == 3);
  check_error([&] { (void)classify({Tensor(), Tensor()}); }, {"GraphedFunction", "input 0"});
}
