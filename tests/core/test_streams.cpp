// Streams and events (lathe/core/stream.h) on every device. On the simulated cuda device a created
// stream's work runs only when the ordering rules require it (docs/cuda.md, "Streams"), so a
// result read without the wait the API promises is stale there and these tests fail; on a GPU the
// same bodies check the real queues (scripts/gpu-check.sh runs the core suite on cuda:0). On the
// cpu every stream is the default stream and every wait returns at once: the bodies check that
// device-generic code written with streams runs unchanged.
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lathe/core/memory.h"
#include "lathe/core/random.h"
#include "lathe/core/stream.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// Enough work that a GPU is still busy with it when the host queues the next operation: a chain of
// 16 products of 256 x 256 matrices, each scaled back near 1 so that values stay O(1).
Tensor slow_product(const Tensor& a) {
  Tensor x = a;
  for (int i = 0; i < 16; ++i) x = matmul(x, a) * (1.0 / 256.0);
  return x;
}

// Uniform values in [0, 2) as f32 on `device` (uploaded on the default stream).
Tensor uniform(const Shape& shape, uint64_t seed, Device device) {
  const std::vector<double> values = random_values(shape_numel(shape), seed, 0.0, 2.0);
  return from_vector(std::vector<float>(values.begin(), values.end()), shape,
                     TensorOptions(DType::F32).device(device));
}

std::vector<float> logits_of(const nn::BertForSequenceClassification& model, const Tensor& ids) {
  NoGradGuard no_grad;
  return model.forward(ids, ones_like(ids)).to_vector<float>();
}

}  // namespace

TEST_CASE("streams: a guard sets the calling thread's stream of one device, then restores it",
          "[streams]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const Stream default_stream = Stream::default_stream(device);
  CHECK(default_stream.is_default());
  CHECK(default_stream.blocking());
  CHECK(current_stream(device) == default_stream);
  const Stream a = Stream::create(device);
  const Stream b = Stream::create(device, StreamOptions{.blocking = false});
  CHECK(a.device() == device);
  if (device.is_cpu()) {
    // The cpu runs work as it is issued: its one stream is the default stream.
    CHECK(a == default_stream);
    CHECK(b == default_stream);
  } else {
    CHECK(!a.is_default());
    CHECK(a != b);
    CHECK(a.blocking());
    CHECK(!b.blocking());
    CHECK(b.str().find("non-blocking") != std::string::npos);
  }
  {
    StreamGuard outer(a);
    CHECK(current_stream(device) == a);
    CHECK(current_stream(device).blocking() == a.blocking());
    {
      StreamGuard inner(b);
      CHECK(current_stream(device) == b);
      CHECK(current_stream(device).blocking() == b.blocking());
      // Another thread, and one that starts now, is on the default stream.
      Stream seen = a;
      std::thread other([&] { seen = current_stream(device); });
      other.join();
      CHECK(seen == default_stream);
      if (device.is_cuda() && cuda_device_count() > 1) {
        // Another device's current stream is its own.
        CHECK(current_stream(Device::cuda(1)).is_default());
      }
    }
    CHECK(current_stream(device) == a);
  }
  CHECK(current_stream(device) == default_stream);
  // Streams are handed out from a pool of 32 per device and kind, in turn.
  if (device.is_cuda()) {
    std::vector<Stream> streams;
    for (int i = 0; i < 40; ++i) streams.push_back(Stream::create(device));
    int distinct = 0;
    for (size_t i = 0; i < streams.size(); ++i) {
      bool seen_before = false;
      for (size_t j = 0; j < i; ++j) seen_before |= streams[j] == streams[i];
      distinct += !seen_before;
    }
    CHECK(distinct == 32);
  }
}

TEST_CASE("streams: a model runs on a created stream as on the default stream", "[streams][nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(3);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);  // weights uploaded on the default stream
  model.eval();
  const Tensor ids = from_vector(std::vector<int64_t>{5, 9, 14, 3, 2, 8, 30, 7, 1, 4, 11, 6},
                                 {2, 6}, TensorOptions(DType::I64).device(device));
  const std::vector<float> want = logits_of(model, ids);

  SECTION("a blocking stream: the default stream's copy to the host waits for it") {
    // The weights were uploaded on the default stream without a host wait, and the logits are
    // read back there: a blocking stream is ordered with both.
    Tensor logits;
    {
      StreamGuard guard(Stream::create(device));
      NoGradGuard no_grad;
      logits = model.forward(ids, ones_like(ids));
    }
    CHECK(logits.to_vector<float>() == want);
  }
  SECTION("a non-blocking stream, synchronized") {
    const Stream stream = Stream::create(device, StreamOptions{.blocking = false});
    // Its own copy of the inputs, made on the stream after it waited for the default stream
    // (which uploaded them).
    stream.wait(Stream::default_stream(device));
    Tensor logits;
    {
      StreamGuard guard(stream);
      NoGradGuard no_grad;
      logits = model.forward(ids, ones_like(ids));
    }
    stream.synchronize();
    CHECK(stream.query());
    CHECK(logits.to_vector<float>() == want);
  }
  SECTION("reading on the stream itself waits for the stream") {
    const Stream stream = Stream::create(device, StreamOptions{.blocking = false});
    stream.wait(Stream::default_stream(device));
    StreamGuard guard(stream);
    CHECK(logits_of(model, ids) == want);
  }
}

TEST_CASE("streams: a reader on one stream waits for a writer on another", "[streams]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const Tensor a = uniform({256, 256}, 7, device);
  const Tensor want = slow_product(a) * 2.0 + 1.0;
  const Stream writer = Stream::create(device, StreamOptions{.blocking = false});
  const Stream reader = Stream::create(device, StreamOptions{.blocking = false});
  writer.wait(Stream::default_stream(device));  // `a` was uploaded on the default stream
  reader.wait(Stream::default_stream(device));
  Tensor product, result;

  SECTION("through Stream::wait") {
    {
      StreamGuard guard(writer);
      product = slow_product(a);
    }
    reader.wait(writer);
    {
      StreamGuard guard(reader);
      result = product * 2.0 + 1.0;
    }
  }
  SECTION("through an event") {
    Event done(device);
    CHECK(!done.recorded());
    CHECK(done.query());  // never recorded: complete, as in CUDA
    {
      StreamGuard guard(writer);
      product = slow_product(a);
      done.record();
    }
    CHECK(done.recorded());
    reader.wait(done);
    {
      StreamGuard guard(reader);
      result = product * 2.0 + 1.0;
    }
    // Re-recording the event later does not change what the reader waited for.
    done.record(writer);
  }
  reader.synchronize();
  StreamGuard guard(reader);
  CHECK(result.to_vector<float>() == want.to_vector<float>());
}

TEST_CASE("streams: events mark a stream's work, and time it", "[streams]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const Tensor a = uniform({256, 256}, 3, device);
  const Stream stream = Stream::create(device, StreamOptions{.blocking = false});
  stream.wait(Stream::default_stream(device));
  Event start(device, EventOptions{.timing = true}), stop(device, EventOptions{.timing = true});
  Tensor product;
  {
    StreamGuard guard(stream);
    start.record();
    product = slow_product(a);
    stop.record();
  }
  stop.synchronize();
  CHECK(stop.query());
  CHECK(start.query());
  const float ms = start.elapsed_ms(stop);
  CHECK(ms >= 0.0f);
  CHECK(ms < 60000.0f);
  {
    StreamGuard guard(stream);
    check_close(product, slow_product(a), 1e-5, 1e-5);
  }

  // Misuse is named.
  Event plain(device);
  plain.record(stream);
  check_error([&] { (void)plain.elapsed_ms(stop); }, {"elapsed_ms", "timing"});
  Event never(device, EventOptions{.timing = true});
  check_error([&] { (void)start.elapsed_ms(never); }, {"elapsed_ms", "recorded"});
  if (device.is_cuda() && cuda_device_count() > 1) {
    Event on_0(Device::cuda(0));
    check_error([&] { on_0.record(Stream::create(Device::cuda(1))); },
                {"Event::record", "cuda:0", "cuda:1"});
    // A stream may wait for another device's event.
    const Stream on_1 = Stream::create(Device::cuda(1));
    on_0.record(stream);
    on_1.wait(on_0);
    on_1.synchronize();
  }
  check_error([&] { (void)Stream::create(Device::cuda(7)); }, {"Stream::create", "cuda:7"});
}

TEST_CASE("streams: record_stream keeps memory from reuse while another stream reads it",
          "[streams]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  // 257 x 256: a size class of its own in this test (slow_product's temporaries are 256 x 256), so
  // that the allocation below gets the dropped block whenever the allocator lets it.
  const Tensor big = uniform({257, 256}, 5, device);
  const Tensor a = big.slice(0, 0, 256);
  const std::vector<float> want = slow_product(a).to_vector<float>();
  const Stream reader = Stream::create(device, StreamOptions{.blocking = false});
  // A temporary made on the default stream, handed to the reader's slow work, then dropped on the
  // default stream while the reader may still be at it. The next allocation of its size on the
  // default stream overwrites whatever it gets.
  Tensor result;
  SECTION("record_stream") {
    Tensor temporary = big.clone();
    reader.wait(Stream::default_stream(device));
    {
      StreamGuard guard(reader);
      result = slow_product(temporary.slice(0, 0, 256));
    }
    record_stream(temporary, reader);
  }
  SECTION("dropped while the reader's stream is current") {
    // Then the reader's stream is recorded without being asked.
    Tensor temporary = big.clone();
    reader.wait(Stream::default_stream(device));
    StreamGuard guard(reader);
    result = slow_product(temporary.slice(0, 0, 256));
    temporary = Tensor();
  }
  Tensor overwrite = full({257, 256}, -1.0, f32);
  reader.synchronize();
  CHECK(overwrite.to_vector<float>()[0] == -1.0f);
  StreamGuard guard(reader);
  CHECK(result.to_vector<float>() == want);

  // The stream must be of the tensor's device.
  if (device.is_cuda() && cuda_device_count() > 1) {
    check_error([&] { record_stream(a, Stream::create(Device::cuda(1))); },
                {"record_stream", "cuda:0", "cuda:1"});
  }
}

TEST_CASE("streams: each stream keeps its own cached blocks", "[streams]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  if (device.is_cpu()) return;  // the cpu has one stream
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Stream stream = Stream::create(device, StreamOptions{.blocking = false});
  stream.wait(Stream::default_stream(device));
  // An odd size that no other allocation of this test program has.
  const Shape shape{3, 5, 7, 11, 13};
  const void* freed = nullptr;
  {
    StreamGuard guard(stream);
    Tensor t = zeros(shape, f32);
    freed = t.data_ptr();
  }
  // Another stream's request does not get the block: the stream may still be using it.
  const uint64_t hits_before = memory_stats(device).cache_hits;
  {
    Tensor t = zeros(shape, f32);
    CHECK(t.data_ptr() != freed);
  }
  {
    StreamGuard guard(stream);
    Tensor t = zeros(shape, f32);
    CHECK(t.data_ptr() == freed);
  }
  CHECK(memory_stats(device).cache_hits == hits_before + 1);
  stream.synchronize();
}

TEST_CASE("streams: request threads each on their own stream match one thread",
          "[streams][threads]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(9);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  constexpr int kThreads = 4, kRequests = 4;
  std::vector<Tensor> requests;
  std::vector<std::vector<float>> want;
  for (int r = 0; r < kRequests; ++r) {
    std::vector<int64_t> ids(12);
    for (int i = 0; i < 12; ++i) ids[size_t(i)] = 1 + (r * 17 + i * 5) % 49;
    requests.push_back(from_vector(ids, {2, 6}, TensorOptions(DType::I64).device(device)));
    want.push_back(logits_of(model, requests.back()));
  }
  std::vector<int> mismatches(kThreads, 0);
  on_threads(kThreads, [&](int t, const std::function<void()>& start) {
    // Half on blocking streams, half on non-blocking ones that first wait for the default stream
    // (which uploaded the weights and the requests).
    const Stream stream = Stream::create(device, StreamOptions{.blocking = t % 2 == 0});
    stream.wait(Stream::default_stream(device));
    StreamGuard guard(stream);
    start();
    for (int i = 0; i < 2 * kRequests; ++i) {
      const int r = (i + t) % kRequests;
      mismatches[size_t(t)] += logits_of(model, requests[size_t(r)]) != want[size_t(r)];
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(mismatches[size_t(t)] == 0);
  }
}

TEST_CASE("streams: autocast's cast cache keeps one cast per stream", "[streams][autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(4);
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(device);
  model.eval();
  const Tensor ids = from_vector(std::vector<int64_t>{5, 9, 14, 3, 2, 8, 30, 7, 1, 4, 11, 6},
                                 {2, 6}, TensorOptions(DType::I64).device(device));
  std::vector<float> want;
  {
    AutocastGuard amp(DType::BF16, device.type);
    want = logits_of(model, ids);
  }
  // One guard over a forward on each of two streams that do not wait for each other: the second
  // stream must not read the first one's casts, which may not have run yet.
  const Stream first = Stream::create(device, StreamOptions{.blocking = false});
  const Stream second = Stream::create(device, StreamOptions{.blocking = false});
  first.wait(Stream::default_stream(device));
  second.wait(Stream::default_stream(device));
  AutocastGuard amp(DType::BF16, device.type);
  NoGradGuard no_grad;
  Tensor logits_first;
  size_t cached_after_first = 0;
  {
    StreamGuard guard(first);
    logits_first = model.forward(ids, ones_like(ids));  // queued, not read yet
    cached_after_first = autocast_cached_casts();
  }
  {
    StreamGuard guard(second);
    CHECK(model.forward(ids, ones_like(ids)).to_vector<float>() == want);
  }
  {
    StreamGuard guard(first);
    CHECK(logits_first.to_vector<float>() == want);
  }
  CHECK(cached_after_first > 0);
  // The cpu has one stream: its casts are shared.
  CHECK(autocast_cached_casts() == (device.is_cpu() ? 1 : 2) * cached_after_first);
}
