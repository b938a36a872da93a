// The cuda runtime layer (kernels/cuda/runtime.h): devices, raw memory, copies, streams, events and
// the error macro. In the simulated build these run against "cuda:0 (simulated)".
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "support/test_util.h"

using namespace lathe;
using testing::check_error;

TEST_CASE("cuda runtime: one device with sane properties", "[cuda][runtime]") {
  REQUIRE(cuda::device_count() >= 1);
  REQUIRE(cuda_available());
  const cuda::DeviceProperties& p = cuda::device_properties(0);
  CHECK(p.multiprocessor_count > 0);
  CHECK(p.max_threads_per_block == 1024);
  CHECK(p.warp_size == 32);
  CHECK(p.total_memory > 0);
  CHECK(p.max_shared_memory_per_block >= 48 * 1024);
  const std::string text = cuda::describe_device(0);
  CHECK(text.rfind("cuda:0 (", 0) == 0);
#ifdef LATHE_CUDA_SIM_BUILD
  CHECK(p.simulated);
  CHECK(text == "cuda:0 (simulated)");
#endif
  check_error([] { (void)cuda::device_properties(cuda::device_count()); },
              {"device_properties", "does not exist"});
  check_error([] { cuda::set_device(-1); }, {"set_device", "cuda:-1"});
}

TEST_CASE("cuda runtime: LATHE_CUDA_CHECK names file, line, expression and error",
          "[cuda][runtime]") {
  try {
    LATHE_CUDA_CHECK(cudaErrorMemoryAllocation);
    FAIL("no exception");
  } catch (const Error& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("test_runtime.cpp:") != std::string::npos);
    CHECK(what.find("cudaErrorMemoryAllocation") != std::string::npos);
    CHECK(what.find("out of memory") != std::string::npos);
  }
  CHECK_NOTHROW([] { LATHE_CUDA_CHECK(cudaSuccess); }());
  CHECK(cuda::error_string(cudaErrorInvalidValue).find("invalid argument") != std::string::npos);
}

TEST_CASE("cuda runtime: raw memory, copies and memset round-trip", "[cuda][runtime]") {
  const size_t n = 1000;
  std::vector<int32_t> host(n);
  std::iota(host.begin(), host.end(), -300);
  void* a = cuda::raw_malloc(n * 4, 0);
  void* b = cuda::raw_malloc(n * 4, 0);
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  CHECK(reinterpret_cast<uintptr_t>(a) % 256 == 0);
  cudaStream_t s = cuda::stream_create(0);
  cuda::memcpy_async(a, host.data(), n * 4, cuda::CopyKind::HostToDevice, s);
  cuda::memcpy_async(b, a, n * 4, cuda::CopyKind::DeviceToDevice, s);
  cuda::memset_async(b, 0, 40, s);  // the first 10 elements
  std::vector<int32_t> back(n, 7);
  cuda::memcpy_sync(back.data(), b, n * 4, cuda::CopyKind::DeviceToHost, s);
  for (size_t i = 0; i < n; ++i) {
    INFO("element " << i);
    REQUIRE(back[i] == (i < 10 ? 0 : host[i]));
  }
  cuda::stream_destroy(s);
  cuda::raw_free(a, 0);
  cuda::raw_free(b, 0);
  size_t free_bytes = 0, total_bytes = 0;
  cuda::memory_info(0, &free_bytes, &total_bytes);
  CHECK(total_bytes > 0);
  CHECK(free_bytes <= total_bytes);
}

TEST_CASE("cuda runtime: streams, current stream and events", "[cuda][runtime]") {
  cudaStream_t s1 = cuda::stream_create(0), s2 = cuda::stream_create(0);
  CHECK(s1 != s2);
  CHECK(cuda::current_stream(0) == nullptr);
  {
    cuda::StreamGuard guard(s1, 0);
    CHECK(cuda::current_stream(0) == s1);
    {
      cuda::StreamGuard inner(s2);
      CHECK(cuda::current_stream() == s2);
    }
    CHECK(cuda::current_stream(0) == s1);
  }
  CHECK(cuda::current_stream(0) == nullptr);

  cudaEvent_t start = cuda::event_create(0, true), stop = cuda::event_create(0, true);
  cuda::event_record(start, s1);
  std::vector<float> host(1 << 16, 1.5f);
  void* d = cuda::raw_malloc(host.size() * 4, 0);
  cuda::memcpy_async(d, host.data(), host.size() * 4, cuda::CopyKind::HostToDevice, s1);
  cuda::event_record(stop, s1);
  cuda::stream_wait_event(s2, stop);
  cuda::event_synchronize(stop);
  CHECK(cuda::event_query(stop));
  CHECK(cuda::event_elapsed_ms(start, stop) >= 0.0f);
  cuda::stream_synchronize(s2);
  cuda::device_synchronize(0);
  cuda::raw_free(d, 0);
  cuda::event_destroy(start);
  cuda::event_destroy(stop);
  cuda::stream_destroy(s1);
  cuda::stream_destroy(s2);
}

#ifdef LATHE_CUDA_SIM_BUILD
TEST_CASE("cuda runtime: the simulator runs a created stream's work only when something needs it",
          "[cuda][runtime][streams]") {
  // docs/cuda.md, "Streams". What a GPU may do (run a queued copy before the host looks), the
  // simulator never does, so that a missing wait always shows.
  const char* mode = std::getenv("LATHE_SIM_STREAMS");
  if (mode != nullptr && std::string(mode) == "eager") return;
  using cuda::CopyKind;
  constexpr size_t kBytes = 16 * 4;
  const std::vector<int32_t> ones(16, 1), twos(16, 2);
  std::vector<int32_t> back(16, 7);
  void* d = cuda::raw_malloc(kBytes, 0);
  cudaStream_t free_running = cuda::stream_create(0, false),
               blocking = cuda::stream_create(0, true);
  auto read_on_legacy = [&] {
    cuda::memcpy_sync(back.data(), d, kBytes, CopyKind::DeviceToHost, nullptr);
    return back[0];
  };

  cuda::memset_async(d, 0, kBytes, nullptr);  // the legacy stream: at once
  cuda::memcpy_async(d, ones.data(), kBytes, CopyKind::HostToDevice, free_running);  // queued
  CHECK(!cuda::stream_query(free_running));
  cudaEvent_t copied = cuda::event_create(0);
  cuda::event_record(copied, free_running);
  CHECK(!cuda::event_query(copied));
  // The legacy stream does not wait for a non-blocking stream.
  CHECK(read_on_legacy() == 0);
  cuda::event_synchronize(copied);
  CHECK(cuda::event_query(copied));
  CHECK(cuda::stream_query(free_running));
  CHECK(read_on_legacy() == 1);

  // It waits for a blocking one.
  cuda::memcpy_async(d, twos.data(), kBytes, CopyKind::HostToDevice, blocking);
  CHECK(!cuda::stream_query(blocking));
  CHECK(read_on_legacy() == 2);
  CHECK(cuda::stream_query(blocking));

  // A stream waiting for an event runs the event's stream up to it first, when it runs itself.
  cuda::memcpy_async(d, ones.data(), kBytes, CopyKind::HostToDevice, free_running);
  cuda::event_record(copied, free_running);
  cuda::memcpy_async(d, twos.data(), kBytes, CopyKind::HostToDevice, free_running);  // after it
  cudaStream_t consumer = cuda::stream_create(0, false);
  std::vector<int32_t> seen(16, 7);
  cuda::stream_wait_event(consumer, copied);
  cuda::memcpy_async(seen.data(), d, kBytes, CopyKind::DeviceToHost, consumer);
  CHECK(seen[0] == 7);  // nothing ran yet
  cuda::stream_synchronize(consumer);
  CHECK(seen[0] == 1);  // the first copy ran, the one recorded after the event did not
  CHECK(!cuda::stream_query(free_running));
  // Destroying a stream runs what it holds.
  cuda::stream_destroy(free_running);
  CHECK(read_on_legacy() == 2);
  // device_synchronize runs every stream of the device.
  cuda::memcpy_async(d, ones.data(), kBytes, CopyKind::HostToDevice, consumer);
  cuda::device_synchronize(0);
  CHECK(cuda::stream_query(consumer));
  CHECK(read_on_legacy() == 1);

  cuda::event_destroy(copied);
  cuda::stream_destroy(consumer);
  cuda::stream_destroy(blocking);
  cuda::raw_free(d, 0);
}
#endif

TEST_CASE("cuda runtime: tensors move between cpu and cuda", "[cuda][runtime]") {
  Tensor x = testing::random_tensor({7, 37}, 3, DType::F32);
  Tensor y = x.to(Device::cuda(0));
  CHECK(y.device() == Device::cuda(0));
  Tensor back = y.to(Device::cpu());
  CHECK(back.to_vector<double>() == x.to_vector<double>());
  CHECK(y.t().contiguous().to(Device::cpu()).to_vector<double>() ==
        x.t().contiguous().to_vector<double>());
}
