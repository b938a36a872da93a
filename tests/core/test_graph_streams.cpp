// Several streams in one CUDA graph (lathe/core/cuda_graph.h): inside a capture, a created stream
// that waits for an event recorded on the capture stream joins the capture (a fork), and the
// capture stream waits for it again before the body ends (a join). On every cuda device: the
// simulated ones in CI, which keep a capture's nodes in submission order and check the joins; the
// GPU's in scripts/gpu-check.sh's core suite, where the forked branches may run concurrently.
#include <string>
#include <vector>

#include "lathe/core/cuda_graph.h"
#include "lathe/core/random.h"
#include "lathe/core/stream.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

std::vector<float> ramp(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = scale * float((i * 37) % 101 - 50) / 50.0f;
  return v;
}

// The branches of the graph below, run eagerly on one stream: the reference.
Tensor branches(const Tensor& x, const Tensor& w) {
  const Tensor a = x * 2.0;
  const Tensor b = tanh(matmul(a, w));
  const Tensor c = sigmoid(a * 3.0);
  return matmul(b, w.t()) + c;
}

}  // namespace

TEST_CASE("graphs: streams forked into a capture and joined back replay their work in order",
          "[graphs][streams]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices(true)));
  const bool blocking = GENERATE(false, true);
  INFO(device.str() << (blocking ? ", blocking side stream" : ", non-blocking side stream"));
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  Tensor x = from_vector(ramp(48 * 40, 1.0f), {48, 40}, f32);
  const Tensor w = from_vector(ramp(40 * 24, 0.25f), {40, 24}, f32);
  const Stream side = Stream::create(device, {.blocking = blocking});

  Tensor out;
  bool fork_captured = false;
  CudaGraph graph = CudaGraph::capture(device, [&] {
    const Tensor a = x * 2.0;
    // Fork: the side stream waits for the capture stream's work so far, and joins the capture.
    Event fork(device);
    fork.record();
    fork_captured = fork.captured();
    side.wait(fork);
    Tensor b;
    {
      StreamGuard on_side(side);
      b = tanh(matmul(a, w));  // a GEMM (its workspace) and a kernel on the side stream
    }
    const Tensor c = sigmoid(a * 3.0);  // meanwhile on the capture stream
    current_stream(device).wait(side);  // join
    out = matmul(b, w.t()) + c;
  });
  CHECK(fork_captured);

  for (float scale : {1.0f, -0.5f, 3.0f}) {
    INFO("inputs scaled by " << scale);
    const Tensor input = from_vector(ramp(48 * 40, scale), {48, 40}, f32);
    x.copy_(input);
    graph.replay();
    const std::vector<float> expected = branches(input, w).to_vector<float>();
    CHECK(out.to_vector<float>() == expected);
  }
  // The side stream left the capture: its work runs eagerly again, on its own pool and workspace.
  {
    StreamGuard on_side(side);
    const Tensor eager = branches(x, w);
    side.synchronize();
    CHECK(eager.to_vector<float>() == branches(x, w).to_vector<float>());
  }
}

TEST_CASE("graphs: dropout on a forked stream draws fresh masks at each replay",
          "[graphs][streams]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices(true)));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Tensor ones = full({5, 77}, 1.0, f32);
  const Stream side = Stream::create(device, {.blocking = false});
  // Eager: the same draws in the same order on one stream.
  manual_seed(21);
  std::vector<std::vector<float>> eager;
  for (int k = 0; k < 2; ++k) {
    const Tensor first = dropout(ones, 0.4, true);
    const Tensor second = dropout(ones, 0.4, true);
    eager.push_back((first * 2.0 + second).to_vector<float>());
  }
  manual_seed(21);
  Tensor out;
  CudaGraph graph = CudaGraph::capture(device, [&] {
    const Tensor first = dropout(ones, 0.4, true);
    side.wait(current_stream(device));
    Tensor second;
    {
      StreamGuard on_side(side);
      second = dropout(ones, 0.4, true);
    }
    current_stream(device).wait(side);
    out = first * 2.0 + second;
  });
  for (int k = 0; k < 2; ++k) {
    INFO("replay " << k);
    graph.replay();
    CHECK(out.to_vector<float>() == eager[size_t(k)]);
  }
}

TEST_CASE("graphs: memory a forked stream freed in the capture stays the graph's",
          "[graphs][streams][memory]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const std::vector<float> values = ramp(1024, 2.0f);
  const Tensor x = from_vector(values, {1024}, f32);
  const Stream side = Stream::create(device, {.blocking = false});
  Tensor y;
  CudaGraph graph = CudaGraph::capture(device, [&] {
    side.wait(current_stream(device));
    {
      StreamGuard on_side(side);
      Tensor t = x * 2.0;  // 4 KiB on the side stream, freed below with the side stream current
      y = t + 1.0;
    }
    current_stream(device).wait(side);
  });
  // A same-sized request on the side stream would take t's block if it had gone back to the side
  // stream's own pool; the replay would then overwrite it.
  Tensor other;
  {
    StreamGuard on_side(side);
    other = full({1024}, 7.0, f32);
    side.synchronize();
  }
  graph.replay();
  std::vector<float> expected(values.size());
  for (size_t i = 0; i < values.size(); ++i) expected[i] = values[i] * 2.0f + 1.0f;
  CHECK(y.to_vector<float>() == expected);
  CHECK(other.to_vector<float>() == std::vector<float>(1024, 7.0f));
}

TEST_CASE("graphs: forks a capture cannot hold are refused, and the device stays usable",
          "[graphs][streams]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Tensor a = full({4, 4}, 1.5, f32);
  const Stream side = Stream::create(device, {.blocking = false});
  auto refused = [&](const std::function<void()>& body, std::vector<std::string> fragments) {
    check_error([&] { (void)CudaGraph::capture(device, body); }, fragments);
    // Nothing is left capturing: eager work on the side stream, and a new capture with a fork.
    {
      StreamGuard on_side(side);
      const Tensor doubled = a * 2.0;
      side.synchronize();
      CHECK(doubled.to_vector<float>() == std::vector<float>(16, 3.0f));
    }
    Tensor out;
    CudaGraph graph = CudaGraph::capture(device, [&] {
      side.wait(current_stream(device));
      {
        StreamGuard on_side(side);
        out = a + 1.0;
      }
      current_stream(device).wait(side);
    });
    graph.replay();
    CHECK(out.to_vector<float>() == std::vector<float>(16, 2.5f));
  };
  SECTION("a forked stream not joined back") {
    refused(
        [&] {
          side.wait(current_stream(device));
          StreamGuard on_side(side);
          (void)(a * 2.0);
        },
        {"cudaErrorStreamCaptureUnjoined"});
  }
  SECTION("the default stream waiting for a point of the capture") {
    refused([&] { Stream::default_stream(device).wait(current_stream(device)); },
            {"default stream", "cannot join a graph capture", "Stream::create"});
  }
  SECTION("the host waiting for an event recorded in the capture") {
    refused(
        [&] {
          Event e(device);
          e.record();
          e.synchronize();
        },
        {"Event::synchronize", "recorded inside a graph capture"});
    refused(
        [&] {
          Event e(device);
          e.record();
          (void)e.query();
        },
        {"Event::query", "recorded inside a graph capture"});
  }
  SECTION("a forked stream's host wait") {
    refused(
        [&] {
          side.wait(current_stream(device));
          side.synchronize();
        },
        {"cudaErrorStreamCaptureUnsupported"});
  }
  SECTION("default-stream work while a blocking stream is forked into the capture") {
    // The default stream waits for blocking streams, so it would wait for the capture.
    const Stream blocking_side = Stream::create(device);
    refused(
        [&] {
          blocking_side.wait(current_stream(device));
          StreamGuard on_default(Stream::default_stream(device));
          (void)(a * 2.0);
        },
        {"cudaErrorStreamCaptureImplicit"});
  }
  SECTION("a wait for a point of a capture that has ended") {
    Event inside(device);
    CudaGraph graph = CudaGraph::capture(device, [&] { inside.record(); });
    check_error([&] { side.wait(inside); }, {"capture that has ended"});
    CHECK(inside.captured());
  }
}
