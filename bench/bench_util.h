// Shared by the benchmark files. The dev machine is shared with compiling jobs, so besides the
// median every entry reports the best repetition ("min" time, "max" counter rate): the closest
// estimate of the uncontended number when --benchmark_repetitions is used.
#pragma once

#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

namespace lathe_bench {

inline void robust(benchmark::internal::Benchmark* b) {
  b->ComputeStatistics(
      "min", [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); });
  b->ComputeStatistics(
      "max", [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); });
}

}  // namespace lathe_bench
