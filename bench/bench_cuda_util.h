// Helpers shared by the cuda kernel benchmarks (bench_cuda_kernels.cpp, bench_cuda_fused.cpp):
// buffers on the cuda device, the dtype argument, and run(), the one timing loop, so every entry
// times the same way. Real builds only (LATHE_CUDA): the simulated build runs kernels on the CPU,
// where timings mean nothing.
//
// Each timed iteration launches the body kLaunches times back to back on the current stream and
// then synchronizes once, so one synchronization (a few microseconds) is spread over many launches
// and small shapes measure the kernel rather than the round trip; the reported time is per
// iteration (kLaunches launches), rates (GB/s, TFLOP/s) are per launch.
#pragma once

#ifdef LATHE_CUDA_BUILD

#include <benchmark/benchmark.h>

#include <cstdint>

#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace lathe_bench::gpu {

inline const lathe::Device kCuda = lathe::Device::cuda(0);

inline const lathe::kernels::KernelTable& cuda_k() {
  return lathe::kernels::kernel_table(lathe::DeviceType::CUDA);
}

// Waits until the work queued on the cuda device is done.
inline void sync_device() {
  lathe::kernels::device_api(lathe::DeviceType::CUDA)->synchronize(0);
}

// The dtype argument of the benchmarks: 0 = f32, 1 = bf16.
inline lathe::DType dtype_of(int64_t code) {
  return code == 0 ? lathe::DType::F32 : lathe::DType::BF16;
}

inline lathe::TensorOptions on_cuda(lathe::DType t) {
  return lathe::TensorOptions(t).device(kCuda);
}

// Normal values on the cuda device, drawn in f32 and rounded to t.
inline lathe::Tensor randn_on(const lathe::Shape& shape, lathe::DType t) {
  return lathe::randn(shape, on_cuda(lathe::DType::F32)).to(t);
}

// The shape and dtype arguments of a row benchmark (rows, cols, dtype) and the bytes of whole
// [rows, cols] tensors.
struct RowArgs {
  int64_t rows, cols;
  lathe::DType t;
  explicit RowArgs(const benchmark::State& state)
      : rows(state.range(0)), cols(state.range(1)), t(dtype_of(state.range(2))) {}
  // The traffic of `tensors` [rows, cols] tensors of dtype t.
  double bytes(double tensors) const {
    return tensors * double(rows * cols) * double(lathe::element_size(t));
  }
};

// layer_norm_forward on [rows, cols] x and y, [cols] weight and bias, [rows] statistics.
inline lathe::kernels::LayerNormForwardArgs layer_norm_forward_args(
    const RowArgs& s, const lathe::Tensor& x, const lathe::Tensor& w, const lathe::Tensor& b,
    const lathe::Tensor& y, const lathe::Tensor& mean, const lathe::Tensor& rstd) {
  return {.dtype = s.t,
          .rows = s.rows,
          .cols = s.cols,
          .x = x.data_ptr(),
          .weight = w.data_ptr(),
          .bias = b.data_ptr(),
          .y = y.data_ptr(),
          .mean = mean.data_ptr(),
          .rstd = rstd.data_ptr()};
}

// layer_norm_backward: dx, dweight and dbias of [rows, cols] x given its statistics and dy.
inline lathe::kernels::LayerNormBackwardArgs layer_norm_backward_args(
    const RowArgs& s, const lathe::Tensor& x, const lathe::Tensor& w, const lathe::Tensor& mean,
    const lathe::Tensor& rstd, const lathe::Tensor& gy, const lathe::Tensor& gx,
    const lathe::Tensor& gw, const lathe::Tensor& gb) {
  return {.dtype = s.t,
          .rows = s.rows,
          .cols = s.cols,
          .x = x.data_ptr(),
          .weight = w.data_ptr(),
          .mean = mean.data_ptr(),
          .rstd = rstd.data_ptr(),
          .grad_y = gy.data_ptr(),
          .grad_x = gx.data_ptr(),
          .grad_weight = gw.data_ptr(),
          .grad_bias = gb.data_ptr()};
}

inline constexpr int kLaunches = 20;

// Times kLaunches x body() + one synchronization per iteration, after one warm-up call (allocator,
// first-launch costs). `bytes` is one launch's traffic, reported as GB/s when positive.
template <class Body>
void run(benchmark::State& state, double bytes, Body&& body) {
  body();
  sync_device();
  for (auto _ : state) {
    for (int i = 0; i < kLaunches; ++i) body();
    sync_device();
  }
  if (bytes > 0) {
    state.counters["GB/s"] =
        benchmark::Counter(bytes * kLaunches / 1e9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["of_copy"] =
        lathe_bench::fraction_of(bytes * kLaunches, lathe_bench::cuda_copy_ceiling_gbps() * 1e9);
  }
}

// Reports `flops` per launch as TFLOP/s and as a fraction of cuBLAS's GEMM rate (`of_cublas`,
// bf16 unless `f32`), measured at start-up (call after run()).
inline void tflops_counter(benchmark::State& state, double flops, bool f32 = false) {
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * kLaunches / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_cublas"] = lathe_bench::fraction_of(
      flops * kLaunches, lathe_bench::cuda_gemm_ceiling_tflops(f32) * 1e12);
}

}  // namespace lathe_bench::gpu

// Registers fn over the argument lists of `shapes`, min/max statistics, in wall time (the kernels
// run asynchronously), in microseconds.
#define LATHE_CUDA_BENCH(fn, shapes) \
  BENCHMARK(fn)                      \
      ->Apply(shapes)                \
      ->Apply(lathe_bench::robust)   \
      ->UseRealTime()                \
      ->Unit(benchmark::kMicrosecond)

#endif  // LATHE_CUDA_BUILD
