// Shared by the benchmark files. Every rate is also reported as a fraction of a ceiling measured
// in the same process (`of_copy`, `of_sgemm`, `of_cublas`), so ratios need no second run. The dev
// machine is shared with compiling jobs, so besides the median every entry reports the best
// repetition
// ("min" time, "max" counter rate): the closest estimate of the uncontended number when
// --benchmark_repetitions is used.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

namespace lathe_bench {

// Ceilings measured once per process at first use (bench/bench_ceilings.cpp), in GB/s (bytes
// read + written) and GFLOP/s. Entries report their rate as a fraction of one of them.
double cpu_copy_ceiling_gbps();
double cpu_sgemm_ceiling_gflops();
#ifdef LATHE_CUDA_BUILD
double cuda_copy_ceiling_gbps();
double cuda_gemm_ceiling_tflops(bool f32);  // cuBLAS at 4096^3: bf16 inputs, or full f32
#endif

// A counter whose reported value is (`per_iteration` per second) / `ceiling_per_second`: the
// fraction of the ceiling the entry reached (Google Benchmark divides by the elapsed time).
inline benchmark::Counter fraction_of(double per_iteration, double ceiling_per_second) {
  return benchmark::Counter(ceiling_per_second > 0 ? per_iteration / ceiling_per_second : 0.0,
                            benchmark::Counter::kIsIterationInvariantRate);
}

inline void robust(benchmark::internal::Benchmark* b) {
  b->ComputeStatistics(
      "min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
  b->ComputeStatistics(
      "max", [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); });
}

}  // namespace lathe_bench
