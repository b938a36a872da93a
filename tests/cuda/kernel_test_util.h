// Helpers shared by the tests that hold the cuda kernels against the cpu kernels through the
// KernelTable contract (test_transformer_kernels, test_fused_kernels, test_adamw,
// test_multi_tensor; test_flash_attention can take bytes_of / check_schedule_invariant / cuda_k
// from here too). They were written once per file before; keeping them here means every file
// poisons outputs, picks tolerances and checks schedule invariance the same way.
//
// Everything lives in lathe::kernel_test, so a file takes the names it wants (`using namespace
// lathe::kernel_test;` or single using-declarations) without clashing with its own helpers.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

#include "core/tensor_internal.h"
#include "kernels/kernel_table.h"
#include "support/test_util.h"

#ifdef LATHE_CUDA_SIM_BUILD
#include "kernels/sim/sim_runtime.h"
#endif

namespace lathe::kernel_test {

inline const Device kCuda = Device::cuda(0);
inline const Device kCpu = Device::cpu();
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline constexpr DType kFloatTypes[] = {DType::F32, DType::F64, DType::F16, DType::BF16};

inline const kernels::KernelTable& cpu_k() {
  return kernels::cpu_kernel_table();
}
inline const kernels::KernelTable& cuda_k() {
  return kernels::kernel_table(DeviceType::CUDA);
}
// The kernel table of `device`'s type.
inline const kernels::KernelTable& table(Device device) {
  return kernels::kernel_table(device.type);
}
inline std::vector<Device> both_devices() {
  return {kCpu, kCuda};
}

inline kernels::View view(const Tensor& t) {
  return detail::make_view(t);
}
// Data pointers of optional (possibly undefined) tensors: nullptr when undefined.
inline const void* ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}
inline void* mut_ptr(const Tensor& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}

inline bool is_half(DType t) {
  return t == DType::F16 || t == DType::BF16;
}
// The dtype of the cpu reference and of saved statistics: f32 for the 16-bit types.
inline DType wide(DType t) {
  return is_half(t) ? DType::F32 : t;
}

// A tensor of NaN: an output a kernel fails to write then fails the comparison.
inline Tensor nan_tensor(const Shape& shape, DType dtype, Device device) {
  return full(shape, kNaN, TensorOptions(dtype).device(device));
}

// Values in [lo, hi) exactly representable in `dtype`, on the cpu.
inline Tensor values(const Shape& shape, uint64_t seed, DType dtype, double lo = -1,
                     double hi = 1) {
  return testing::random_tensor(shape, seed, DType::F64, kCpu, lo, hi).to(dtype);
}

// Tolerances of a cuda result of `dtype` against the cpu reference rounded to `dtype`. f32/f64:
// libm vs the cpu's polynomial exp, f32 vs f64 sums; `scale` is the size of the terms that may
// cancel. 16-bit outputs: the two f32 results agree to f32 accuracy, so after rounding they differ
// by at most one unit in the last place (2^-7 of the value for bf16, 2^-10 for f16).
struct Tol {
  double atol, rtol;
};
inline Tol tol_of(DType t, double scale = 1.0) {
  switch (t) {
    case DType::F64:
      return {1e-12 * scale, 1e-11};
    case DType::F16:
      return {2e-6 * scale, 2e-3};
    case DType::BF16:
      return {2e-6 * scale, 1e-2};
    default:
      return {2e-6 * scale, 2e-5};
  }
}

// actual (any device, `dtype`) against expected (cpu, wide(dtype)) rounded to `dtype`.
inline void check_kernel(const Tensor& actual, const Tensor& expected, DType dtype,
                         double scale = 1.0) {
  REQUIRE(actual.dtype() == dtype);
  const Tol tol = tol_of(dtype, scale);
  testing::check_close(actual.to(kCpu), expected.to(dtype), tol.atol, tol.rtol);
}

// The bytes of t's elements (copied to the cpu, contiguous).
inline std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.to(kCpu).contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + size_t(c.numel()) * element_size(c.dtype()));
}

// Runs fn under the forward, reverse, random and warp-random simulator schedules and checks that
// each run gives the same byte strings as the first; the previous schedule is restored, also when
// fn throws. Outside the simulated build there is nothing to vary: fn does not run.
inline void check_schedule_invariant_bytes(
    const std::function<std::vector<std::vector<uint8_t>>()>& fn) {
#ifdef LATHE_CUDA_SIM_BUILD
  using sim::Schedule;
  const Schedule old = sim::current_schedule();
  const uint64_t old_seed = sim::current_seed();
  std::vector<std::vector<uint8_t>> first;
  const std::pair<Schedule, uint64_t> runs[] = {{Schedule::Forward, 0},
                                                {Schedule::Reverse, 0},
                                                {Schedule::Random, 3},
                                                {Schedule::WarpRandom, 1},
                                                {Schedule::WarpRandom, 7}};
  for (auto [schedule, seed] : runs) {
    INFO("schedule " << sim::schedule_name(schedule) << " seed " << seed);
    sim::set_schedule(schedule, seed);
    std::vector<std::vector<uint8_t>> now;
    try {
      now = fn();
    } catch (...) {
      sim::set_schedule(old, old_seed);
      throw;
    }
    sim::set_schedule(old, old_seed);
    if (first.empty()) first = now;
    REQUIRE(now.size() == first.size());
    for (size_t i = 0; i < now.size(); ++i) {
      INFO("output " << i);
      CHECK(now[i] == first[i]);
    }
  }
#else
  (void)fn;
#endif
}

// The same for tensor outputs: fn's tensors are bit-identical under every schedule.
inline void check_schedule_invariant(const std::function<std::vector<Tensor>()>& fn) {
  check_schedule_invariant_bytes([&] {
    std::vector<std::vector<uint8_t>> bytes;
    for (const Tensor& t : fn()) bytes.push_back(bytes_of(t));
    return bytes;
  });
}

// The sizes every row kernel is tried at: all row counts up to 384 columns (warp per row), fewer
// rows at the block-per-row widths (each simulated block costs ~0.1 ms per barrier).
inline std::vector<std::pair<int64_t, int64_t>> row_sizes() {
  std::vector<std::pair<int64_t, int64_t>> s;
  for (int64_t cols : {1, 3, 127, 384}) {
    for (int64_t rows : {1, 7, 37}) s.push_back({rows, cols});
  }
  // 768: 6 f32 packs per lane (and 3 bf16), the cached kernels' other new width.
  for (int64_t cols : {768, 1000, 1536}) {
    for (int64_t rows : {1, 7}) s.push_back({rows, cols});
  }
  return s;
}

// Central difference of sum(f(x) * weights) along random directions against the autograd
// gradient's projection, in f64 on `device`. Cheap for wide rows (2 evaluations per direction),
// and it checks the whole gradient rather than a few entries.
inline void check_directional(Device device,
                              const std::function<Tensor(const std::vector<Tensor>&)>& f,
                              std::vector<Tensor> inputs, uint64_t seed) {
  for (Tensor& t : inputs) t = t.detach().to(device).requires_grad_(true);
  const Tensor out = f(inputs);
  const Tensor weights = values(out.shape(), seed, DType::F64).to(device);
  (out * weights).sum().backward();
  for (int dir = 0; dir < 3; ++dir) {
    std::vector<Tensor> plus, minus;
    double projected = 0;
    const double h = 1e-6;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor v =
          values(inputs[i].shape(), seed * 31 + uint64_t(dir * 7 + i), DType::F64).to(device);
      plus.push_back(inputs[i].detach() + v * h);
      minus.push_back(inputs[i].detach() - v * h);
      projected += (inputs[i].grad() * v).sum().item<double>();
    }
    NoGradGuard no_grad;
    const double numeric =
        ((f(plus) * weights).sum().item<double>() - (f(minus) * weights).sum().item<double>()) /
        (2 * h);
    INFO("direction " << dir);
    CHECK(numeric == Approx(projected).epsilon(1e-6).margin(1e-6));
  }
}

}  // namespace lathe::kernel_test
