// The cuda runtime layer (kernels/cuda/runtime.h): devices, raw memory, copies, streams, events and
// the error macro. In the simulated build these run against "cuda:0 (simulated)".
#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
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

TEST_CASE("cuda runtime: tensors move between cpu and cuda", "[cuda][runtime]") {
  Tensor x = testing::random_tensor({7, 37}, 3, DType::F32);
  Tensor y = x.to(Device::cuda(0));
  CHECK(y.device() == Device::cuda(0));
  Tensor back = y.to(Device::cpu());
  CHECK(back.to_vector<double>() == x.to_vector<double>());
  CHECK(y.t().contiguous().to(Device::cpu()).to_vector<double>() ==
        x.t().contiguous().to_vector<double>());
}
