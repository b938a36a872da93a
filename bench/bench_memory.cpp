// Memory-bound entries: a plain OpenMP copy loop over 64 MiB buffers is the bandwidth ceiling, and
// layer_norm / softmax forward at BERT-ish shapes are measured against it in bytes read + written
// per second (x read once, y written once; the weight, bias and per-row statistics are noise).
// The ops are timed as a user calls them (output allocation included) and, to separate the
// allocator's page faults from the kernel, also as bare kernels writing into a preallocated output.
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

void report_bytes(benchmark::State& state, double bytes_per_iteration) {
  state.counters["bytes"] =
      benchmark::Counter(bytes_per_iteration, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1000);
  state.counters["of_copy"] =
      lathe_bench::fraction_of(bytes_per_iteration, lathe_bench::cpu_copy_ceiling_gbps() * 1e9);
}

void BM_CopyLoop(benchmark::State& state) {
  const int64_t n = state.range(0) * (int64_t(1) << 20) / int64_t(sizeof(float));
  std::vector<float> src(size_t(n), 1.0f), dst(size_t(n), 0.0f);
  const float* s = src.data();
  float* d = dst.data();
  for (auto _ : state) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    benchmark::DoNotOptimize(d);
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2.0 * double(n) * sizeof(float));
}

void BM_Memcpy1Thread(benchmark::State& state) {
  const size_t bytes = size_t(state.range(0)) << 20;
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  report_bytes(state, 2.0 * double(bytes));
}

lathe::kernels::View view_2d(const lathe::Tensor& t) {
  lathe::kernels::View v;
  v.data = t.data_ptr();
  v.dtype = t.dtype();
  v.ndim = 2;
  v.size[0] = t.shape()[0];
  v.size[1] = t.shape()[1];
  v.stride[0] = t.shape()[1];
  v.stride[1] = 1;
  return v;
}

// Runs `body` in the timing loop, turning a missing kernel into a skipped entry.
template <class Body>
void run_or_skip(benchmark::State& state, Body&& body) {
  try {
    body();
  } catch (const lathe::Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  for (auto _ : state) body();
  const double elems = double(state.range(0)) * double(state.range(1));
  report_bytes(state, 2.0 * elems * sizeof(float));
}

void BM_LayerNormForward(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  lathe::Tensor x = lathe::randn({rows, cols});
  lathe::Tensor w = lathe::rand({cols}), b = lathe::rand({cols});
  run_or_skip(state, [&] {
    lathe::Tensor y = lathe::layer_norm(x, w, b);
    benchmark::DoNotOptimize(y.data_ptr());
  });
}

void BM_SoftmaxForward(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  lathe::Tensor x = lathe::randn({rows, cols});
  run_or_skip(state, [&] {
    lathe::Tensor y = lathe::softmax(x, -1);
    benchmark::DoNotOptimize(y.data_ptr());
  });
}

void BM_LayerNormForwardKernel(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  lathe::Tensor x = lathe::randn({rows, cols}), y = lathe::zeros({rows, cols});
  lathe::Tensor w = lathe::rand({cols}), b = lathe::rand({cols});
  lathe::Tensor mean = lathe::zeros({rows}), rstd = lathe::zeros({rows});
  lathe::kernels::LayerNormForwardArgs args;
  args.rows = rows;
  args.cols = cols;
  args.x = x.data_ptr();
  args.weight = w.data_ptr();
  args.bias = b.data_ptr();
  args.y = y.data_ptr();
  args.mean = mean.data_ptr();
  args.rstd = rstd.data_ptr();
  run_or_skip(state, [&] {
    auto fn = lathe::kernels::kernel_table(lathe::DeviceType::CPU).layer_norm_forward;
    if (!fn) throw lathe::Error("layer_norm_forward: no cpu kernel in this build");
    fn(args);
    benchmark::DoNotOptimize(args.y);
  });
}

void BM_SoftmaxForwardKernel(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  lathe::Tensor x = lathe::randn({rows, cols}), y = lathe::zeros({rows, cols});
  run_or_skip(state, [&] {
    auto fn = lathe::kernels::kernel_table(lathe::DeviceType::CPU).softmax_forward;
    if (!fn) throw lathe::Error("softmax_forward: no cpu kernel in this build");
    fn(view_2d(x), view_2d(y), false);
    benchmark::DoNotOptimize(y.data_ptr());
  });
}

void bert_rows(benchmark::internal::Benchmark* b) {
  for (int64_t rows : {4096, 8192}) {
    for (int64_t cols : {384, 768, 1024}) b->Args({rows, cols});
  }
}

}  // namespace

BENCHMARK(BM_CopyLoop)
    ->Arg(64)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Memcpy1Thread)
    ->Arg(64)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LayerNormForward)
    ->Apply(bert_rows)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LayerNormForwardKernel)
    ->Apply(bert_rows)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SoftmaxForward)
    ->Apply(bert_rows)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SoftmaxForwardKernel)
    ->Apply(bert_rows)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
