// The ceilings every lathe-bench entry is reported against, measured once per process at first
// use (so a filtered run measures only what it needs): the cpu's copy bandwidth (an OpenMP copy
// of 256 MiB, bytes read + written), the cpu's SGEMM rate (the better of OpenBLAS's cblas_sgemm
// and Eigen at 2048^3), and on a GPU the device-to-device copy bandwidth (cudaMemcpyAsync of
// 1 GiB) and cuBLAS's GEMM rate at 4096^3 (bf16 with f32 accumulation, and full f32). Each is the
// best of a few repetitions after a warm-up: a ceiling, not a typical value.
#include <cblas.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/bench_util.h"

#ifdef LATHE_CUDA_BUILD
#include <cublas_v2.h>
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

#ifdef LATHE_CUDA_BUILD
// The best of 5 device-timed (CUDA events) runs of fn on the default stream, after a warm-up.
template <class Fn>
double best_event_ms(Fn&& fn) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  float best = 1e30f;
  for (int r = 0; r < 6; ++r) {  // the first is the warm-up
    cudaEventRecord(start);
    fn();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (r > 0) best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return double(best);
}
#endif

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
    const double best_ms =
        best_event_ms([&] { cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice); });
    cudaFree(src);
    cudaFree(dst);
    const double v = 2.0 * double(bytes) / (best_ms * 1e-3) / 1e9;
    std::fprintf(stderr, "lathe-bench: cuda copy ceiling %.0f GB/s (cudaMemcpy, 1 GiB)\n", v);
    return v;
  }();
  return gbps;
}

double cuda_gemm_ceiling_tflops(bool f32) {
  auto measure = [](bool full) {
    const int n = 4096;
    const size_t elem = full ? 4 : 2;
    void *a = nullptr, *b = nullptr, *c = nullptr;
    cublasHandle_t handle = nullptr;
    if (cudaMalloc(&a, elem * n * n) != cudaSuccess ||
        cudaMalloc(&b, elem * n * n) != cudaSuccess ||
        cudaMalloc(&c, elem * n * n) != cudaSuccess ||
        cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "lathe-bench: no cuBLAS ceiling (allocation or handle failed)\n");
      return 0.0;
    }
    // Nonzero data: a product of zeros runs measurably faster on some GPUs.
    cudaMemset(a, 0x3c, elem * n * n);
    cudaMemset(b, 0x3c, elem * n * n);
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t type = full ? CUDA_R_32F : CUDA_R_16BF;
    const double best_ms = best_event_ms([&] {
      cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, b, type, n, a, type, n, &beta,
                   c, type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    });
    cublasDestroy(handle);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    const double v = 2.0 * double(n) * n * n / (best_ms * 1e-3) / 1e12;
    std::fprintf(stderr, "lathe-bench: cuBLAS %s GEMM ceiling %.0f TFLOP/s (4096^3)\n",
                 full ? "f32" : "bf16", v);
    return v;
  };
  static const double bf16_tflops = measure(false);
  if (!f32) return bf16_tflops;
  static const double f32_tflops = measure(true);
  return f32_tflops;
}
#endif

}  // namespace lathe_bench
