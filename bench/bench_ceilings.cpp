// The ceilings every lathe-bench entry is reported against, measured once per process at first
// use (so a filtered run measures only what it needs): the cpu's copy bandwidth (an OpenMP copy
// of 256 MiB, bytes read + written), the cpu's SGEMM rate (the better of OpenBLAS's cblas_sgemm
// and Eigen at 2048^3), and on a GPU the device-to-device copy bandwidth (cudaMemcpyAsync of
// 1 GiB). Each is the best of a few repetitions after a warm-up: a ceiling, not a typical value.
#include <cblas.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/bench_util.h"

#ifdef LATHE_CUDA_BUILD
#include <cuda_runtime.h>
#endif

namespace lathe_bench {

namespace {

template <class Fn>
double best_seconds(int repetitions, Fn&& fn) {
  fn();  // warm-up: page faults, thread pools
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

double cpu_copy_ceiling_gbps() {
  static const double gbps = [] {
    const int64_t n = (int64_t(256) << 20) / int64_t(sizeof(float));
    std::vector<float> src(size_t(n), 1.0f), dst(size_t(n), 0.0f);
    const float* s = src.data();
    float* d = dst.data();
    const double t = best_seconds(5, [&] {
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) d[i] = s[i];
    });
    const double v = 2.0 * double(n) * sizeof(float) / t / 1e9;
    std::fprintf(stderr, "lathe-bench: cpu copy ceiling %.1f GB/s\n", v);
    return v;
  }();
  return gbps;
}

double cpu_sgemm_ceiling_gflops() {
  static const double gflops = [] {
    const int n = 2048;
    std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
    const double blas = best_seconds(3, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(),
                  n, 0.0f, c.data(), n);
    });
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const Mat> ea(a.data(), n, n), eb(b.data(), n, n);
    Eigen::Map<Mat> ec(c.data(), n, n);
    const double eigen = best_seconds(3, [&] { ec.noalias() = ea * eb; });
    const double v = 2.0 * double(n) * n * n / std::min(blas, eigen) / 1e9;
    std::fprintf(stderr, "lathe-bench: cpu SGEMM ceiling %.1f GFLOP/s (%s, 2048^3)\n", v,
                 blas <= eigen ? "OpenBLAS" : "Eigen");
    return v;
  }();
  return gflops;
}

#ifdef LATHE_CUDA_BUILD
double cuda_copy_ceiling_gbps() {
  static const double gbps = [] {
    const size_t bytes = size_t(1) << 30;
    void *src = nullptr, *dst = nullptr;
    if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) {
      std::fprintf(stderr, "lathe-bench: cudaMalloc of the copy ceiling's buffers failed\n");
      return 0.0;
    }
    cudaMemset(src, 1, bytes);
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    float best_ms = 1e30f;
    for (int r = 0; r < 6; ++r) {  // the first is the warm-up
      cudaEventRecord(start);
      cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice);
      cudaEventRecord(stop);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      if (r > 0) best_ms = std::min(best_ms, ms);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaFree(src);
    cudaFree(dst);
    const double v = 2.0 * double(bytes) / (double(best_ms) * 1e-3) / 1e9;
    std::fprintf(stderr, "lathe-bench: cuda copy ceiling %.0f GB/s (cudaMemcpy, 1 GiB)\n", v);
    return v;
  }();
  return gbps;
}
#endif

}  // namespace lathe_bench
