#include "support/test_util.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <thread>

namespace lathe::testing {

std::vector<Device> test_devices() {
  // ctest runs the suite once per device (LATHE_TEST_DEVICE=cpu or cuda, tests/CMakeLists.txt);
  // a direct run without the variable covers every device of the build.
  const char* only_env = std::getenv("LATHE_TEST_DEVICE");
  const std::string only = only_env ? only_env : "";
  LATHE_CHECK(only.empty() || only == "cpu" || only == "cuda",
              "LATHE_TEST_DEVICE must be cpu or cuda, got '", only, "'");
  std::vector<Device> devices;
  if (only.empty() || only == "cpu") devices.push_back(Device::cpu());
  if (only.empty() || only == "cuda") {
    LATHE_CHECK(only.empty() || cuda_available(),
                "LATHE_TEST_DEVICE=cuda, but this build or machine has no cuda device");
    if (cuda_available()) devices.push_back(Device::cuda(0));
  }
  return devices;
}

std::vector<Device> cuda_test_devices(bool every) {
  std::vector<Device> out;
  for (const Device& d : test_devices()) {
    if (!d.is_cuda()) continue;
    if (!every) {
      out.push_back(d);
      continue;
    }
    for (int i = 0; i < cuda_device_count(); ++i) out.push_back(Device::cuda(i));
  }
  return out;
}

std::vector<double> random_values(int64_t n, uint64_t seed, double lo, double hi) {
  std::vector<double> out(static_cast<size_t>(n));
  uint64_t state = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (auto& v : out) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    double u = double(state >> 11) * (1.0 / 9007199254740992.0);
    v = lo + (hi - lo) * u;
  }
  return out;
}

Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype, Device device, double lo,
                     double hi) {
  return from_vector(random_values(shape_numel(shape), seed, lo, hi), shape,
                     TensorOptions(dtype).device(device));
}

Tensor non_contiguous(const Tensor& t) {
  if (t.dim() < 2) {
    // Take every other element of a doubled tensor.
    Tensor doubled = stack({t, t}, -1);
    return doubled.select(-1, 0);
  }
  return t.transpose(0, t.dim() - 1).contiguous().transpose(0, t.dim() - 1);
}

std::vector<int64_t> unravel(int64_t flat, const Shape& shape) {
  std::vector<int64_t> index(shape.size());
  for (size_t i = shape.size(); i-- > 0;) {
    index[i] = flat % shape[i];
    flat /= shape[i];
  }
  return index;
}

int64_t ravel(const std::vector<int64_t>& index, const Shape& shape) {
  int64_t flat = 0;
  for (size_t i = 0; i < shape.size(); ++i) flat = flat * shape[i] + index[i];
  return flat;
}

void check_close(const Tensor& actual, const std::vector<double>& expected, const Shape& shape,
                 double atol, double rtol) {
  INFO("actual shape " << shape_str(actual.shape()) << ", expected " << shape_str(shape));
  REQUIRE(actual.shape() == shape);
  std::vector<double> a = actual.to_vector<double>();
  REQUIRE(a.size() == expected.size());
  for (size_t i = 0; i < a.size(); ++i) {
    double e = expected[i];
    bool ok = std::isnan(e) ? std::isnan(a[i])
                            : (a[i] == e || std::abs(a[i] - e) <= atol + rtol * std::abs(e));
    if (!ok) {
      FAIL_CHECK("mismatch at flat index "
                 << i << " (index " << shape_str(unravel(int64_t(i), shape)) << "): actual " << a[i]
                 << ", expected " << e << ", diff " << std::abs(a[i] - e));
      return;
    }
  }
}

void check_close(const Tensor& actual, const Tensor& expected, double atol, double rtol) {
  check_close(actual, expected.to_vector<double>(), expected.shape(), atol, rtol);
}

void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
               const std::vector<Tensor>& inputs_in, double eps, double atol, double rtol) {
  std::vector<Tensor> inputs;
  for (const Tensor& t : inputs_in) {
    REQUIRE(t.dtype() == DType::F64);
    Tensor leaf = t.detach().to(Device::cpu()).clone();
    leaf.requires_grad_(true);
    inputs.push_back(leaf);
  }
  Tensor y = f(inputs);
  REQUIRE(y.dtype() == DType::F64);
  Tensor w = random_tensor(y.shape(), 4242, DType::F64, y.device());
  (y * w).sum().backward();

  auto loss_value = [&]() {
    NoGradGuard no_grad;
    return (f(inputs) * w).sum().item<double>();
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    Tensor grad = inputs[i].grad();
    std::vector<double> analytic = grad.defined()
                                       ? grad.to_vector<double>()
                                       : std::vector<double>(size_t(inputs[i].numel()), 0.0);
    double* x = static_cast<double*>(inputs[i].data_ptr());
    for (int64_t j = 0; j < inputs[i].numel(); ++j) {
      double saved = x[j];
      x[j] = saved + eps;
      double plus = loss_value();
      x[j] = saved - eps;
      double minus = loss_value();
      x[j] = saved;
      double numeric = (plus - minus) / (2 * eps);
      double a = analytic[size_t(j)];
      if (std::abs(a - numeric) > atol + rtol * std::abs(numeric)) {
        FAIL_CHECK("gradient mismatch for input " << i << " (shape " << shape_str(inputs[i].shape())
                                                  << ") at flat index " << j << ": autograd " << a
                                                  << ", finite difference " << numeric);
        return;
      }
    }
  }
}

void check_error(const std::function<void()>& fn, const std::vector<std::string>& fragments) {
  try {
    fn();
  } catch (const Error& e) {
    std::string what = e.what();
    for (const auto& f : fragments) {
      INFO("message: " << what);
      CHECK(what.find(f) != std::string::npos);
    }
    return;
  } catch (const std::exception& e) {
    FAIL("expected lathe::Error, got another exception: " << e.what());
  }
  FAIL("expected lathe::Error, nothing was thrown");
}

void on_threads(int threads,
                const std::function<void(int t, const std::function<void()>& start)>& fn) {
  std::atomic<int> ready = 0;
  const std::function<void()> start = [&] {
    ready.fetch_add(1);
    while (ready.load() < threads) std::this_thread::yield();
  };
  std::vector<std::string> errors(static_cast<size_t>(threads));
  std::vector<std::thread> running;
  for (int t = 0; t < threads; ++t) {
    running.emplace_back([&, t] {
      bool started = false;
      try {
        fn(t, [&] {
          started = true;
          start();
        });
      } catch (const std::exception& e) {
        errors[size_t(t)] = e.what();
      }
      if (!started) start();  // a thread that failed in its setup must not hold the others
    });
  }
  for (std::thread& thread : running) thread.join();
  for (int t = 0; t < threads; ++t) {
    INFO("thread " << t);
    CHECK(errors[size_t(t)].empty());
  }
}

nn::BertConfig tiny_bert_config() {
  nn::BertConfig c;
  c.vocab_size = 50;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 24;
  c.max_position_embeddings = 20;
  c.hidden_dropout_prob = 0.0;
  c.attention_probs_dropout_prob = 0.0;
  return c;
}

}  // namespace lathe::testing
