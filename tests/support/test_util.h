// Test support shared by every suite. Test bodies take the device from test_devices() (Catch2
// GENERATE), so the same body runs on the cpu today and on the cuda device (simulated in CI, real
// on a GPU) once it exists. References are float64 naive loops written in the tests themselves, and
// gradients are checked against central finite differences in float64.
#pragma once

#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <vector>

#include "lathe/lathe.h"

namespace lathe::testing {

// cpu, plus cuda:0 when this build has a cuda device.
std::vector<Device> test_devices();
// The cuda devices of test_devices(); with `every`, every cuda device of the machine instead (the
// simulated build has two), for code where the device index matters. Empty without cuda.
std::vector<Device> cuda_test_devices(bool every = false);

// Deterministic pseudo-random values in [lo, hi) from a small LCG (independent of lathe's RNG).
std::vector<double> random_values(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0);
// A tensor of those values.
Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::F64,
                     Device device = Device::cpu(), double lo = -1.0, double hi = 1.0);
// The same values laid out non-contiguously: a transposed copy transposed back (a view with
// permuted strides, same shape and values).
Tensor non_contiguous(const Tensor& t);

// Row-major multi-index helpers for naive reference loops.
std::vector<int64_t> unravel(int64_t flat, const Shape& shape);
int64_t ravel(const std::vector<int64_t>& index, const Shape& shape);

// Asserts |actual - expected| <= atol + rtol * |expected| elementwise (NaNs must match), and
// shape equality; reports the first failing index.
void check_close(const Tensor& actual, const std::vector<double>& expected, const Shape& shape,
                 double atol = 1e-12, double rtol = 1e-10);
void check_close(const Tensor& actual, const Tensor& expected, double atol = 1e-12,
                 double rtol = 1e-10);

// Checks the autograd gradients of sum(f(inputs) * w) (w fixed, random) against central finite
// differences. Inputs must be f64 cpu leaves; they are set to require grad. f may build views,
// non-contiguous layouts or broadcasts from them.
void gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& f,
               const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-6,
               double rtol = 1e-5);

// A BERT small enough for naive references and finite differences: vocabulary 50, width 16, 2
// layers of 4 heads, intermediate 24, 20 positions, no dropout. Tests change what they need.
nn::BertConfig tiny_bert_config();

// Runs fn(t, start) on `threads` threads at once and joins them, then checks that none threw. Each
// thread calls start() when its own setup is done (a stream of its own, a guard that must stay
// alive through its work); start() returns once every thread has called it, so the work of all
// threads overlaps. Results are checked by the caller afterwards: Catch2's assertion macros are
// not thread-safe.
void on_threads(int threads,
                const std::function<void(int t, const std::function<void()>& start)>& fn);

// Runs fn and asserts it throws lathe::Error whose message contains every fragment.
void check_error(const std::function<void()>& fn, const std::vector<std::string>& fragments);

}  // namespace lathe::testing
