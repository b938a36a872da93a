// The fused transformer ops on the cpu (add_layer_norm, bias_gelu) against the compositions they
// replace, through the public ops (so the op overhead is included, as a model sees it), f32, at
// BERT-ish shapes: rows x hidden for add + layer norm, rows x 4 * hidden for bias + GELU.
// Reported in GB/s of the fused op's minimum traffic (inputs read once, outputs written once), so
// the two entries of a pair compare directly. Forward only under NoGradGuard ("Infer"), and forward
// + backward ("Train", bytes of both directions).
#include <benchmark/benchmark.h>

#include "bench/bench_util.h"
#include "lathe/lathe.h"

namespace {

using lathe::Tensor;

Tensor randn2(int64_t rows, int64_t cols) {
  return lathe::randn({rows, cols});
}

void set_rate(benchmark::State& state, double bytes) {
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: rows, cols, fused (1) or composed (0).
void BM_CpuAddLayerNormInfer(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const bool fused = state.range(2) != 0;
  Tensor x = randn2(rows, cols), r = randn2(rows, cols);
  Tensor w = lathe::ones({cols}), b = lathe::zeros({cols});
  lathe::NoGradGuard no_grad;
  for (auto _ : state) {
    benchmark::DoNotOptimize(fused ? lathe::add_layer_norm(x, r, w, b)
                                   : lathe::layer_norm(x + r, w, b));
  }
  set_rate(state, 3.0 * double(rows * cols) * 4);
}

void BM_CpuAddLayerNormTrain(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const bool fused = state.range(2) != 0;
  Tensor x = randn2(rows, cols).requires_grad_(true), r = randn2(rows, cols).requires_grad_(true);
  Tensor w = lathe::ones({cols}).requires_grad_(true),
         b = lathe::zeros({cols}).requires_grad_(true);
  Tensor gy = randn2(rows, cols);
  for (auto _ : state) {
    Tensor y = fused ? lathe::add_layer_norm(x, r, w, b) : lathe::layer_norm(x + r, w, b);
    y.backward(gy);
  }
  // forward: x, r read, s and y written; backward: s and dy read, dx written.
  set_rate(state, 7.0 * double(rows * cols) * 4);
}

void BM_CpuBiasGeluInfer(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const bool fused = state.range(2) != 0;
  Tensor x = randn2(rows, cols), b = lathe::randn({cols});
  lathe::NoGradGuard no_grad;
  for (auto _ : state) {
    benchmark::DoNotOptimize(fused ? lathe::bias_gelu(x, b) : lathe::gelu(x + b));
  }
  set_rate(state, 2.0 * double(rows * cols) * 4);
}

void BM_CpuBiasGeluTrain(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const bool fused = state.range(2) != 0;
  Tensor x = randn2(rows, cols).requires_grad_(true), b = lathe::randn({cols}).requires_grad_(true);
  Tensor gy = randn2(rows, cols);
  for (auto _ : state) {
    Tensor y = fused ? lathe::bias_gelu(x, b) : lathe::gelu(x + b);
    y.backward(gy);
  }
  // forward: x read, y written; backward: x and dy read, dx written.
  set_rate(state, 5.0 * double(rows * cols) * 4);
}

void ln_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "fused"});
  for (int64_t cols : {384, 768}) {
    for (int64_t fused : {0, 1}) b->Args({2048, cols, fused});
  }
}

void ffn_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "fused"});
  for (int64_t cols : {1536, 3072}) {
    for (int64_t fused : {0, 1}) b->Args({2048, cols, fused});
  }
}

}  // namespace

BENCHMARK(BM_CpuAddLayerNormInfer)->Apply(ln_shapes)->Apply(lathe_bench::robust)->UseRealTime();
BENCHMARK(BM_CpuAddLayerNormTrain)->Apply(ln_shapes)->Apply(lathe_bench::robust)->UseRealTime();
BENCHMARK(BM_CpuBiasGeluInfer)->Apply(ffn_shapes)->Apply(lathe_bench::robust)->UseRealTime();
BENCHMARK(BM_CpuBiasGeluTrain)->Apply(ffn_shapes)->Apply(lathe_bench::robust)->UseRealTime();
