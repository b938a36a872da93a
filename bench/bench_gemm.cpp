// SGEMM through lathe (the gemm kernel on preallocated buffers, and the matmul op with its output
// allocation), next to OpenBLAS's cblas_sgemm with its own thread pool and Eigen, all in one run.
// Square sizes for the >= 0.9x OpenBLAS target and the GEMM shapes of a BERT-base layer at 4096
// tokens. The "then OpenMP" pair shows why lathe does not let OpenBLAS thread on its own (see
// kernels/cpu/gemm.cpp). Every entry reports FLOP/s (2mnk per product) in wall-clock time.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <string>

#include <Eigen/Core>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/gemm_bf16.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

struct Problem {
  int64_t m, n, k;
  std::vector<float> a, b, c;
  explicit Problem(const benchmark::State& state)
      : m(state.range(0)), n(state.range(1)), k(state.range(2)) {
    a = lathe::rand({m, k}).to_vector<float>();
    b = lathe::rand({k, n}).to_vector<float>();
    c.assign(size_t(m * n), 0.0f);
  }
  void report(benchmark::State& state) const {
    state.counters["FLOPS"] = benchmark::Counter(2.0 * double(m) * double(n) * double(k),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
    state.counters["of_sgemm"] = lathe_bench::fraction_of(
        2.0 * double(m) * double(n) * double(k), lathe_bench::cpu_sgemm_ceiling_gflops() * 1e9);
  }
};

void lathe_gemm(const Problem& p, float* c) {
  lathe::kernels::GemmArgs args;
  args.dtype = lathe::DType::F32;
  args.m = p.m;
  args.n = p.n;
  args.k = p.k;
  args.a = p.a.data();
  args.lda = p.k;
  args.b = p.b.data();
  args.ldb = p.n;
  args.c = c;
  args.ldc = p.n;
  lathe::kernels::kernel_table(lathe::DeviceType::CPU).gemm(args);
}

void openblas_sgemm(const Problem& p, float* c) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blasint(p.m), blasint(p.n), blasint(p.k),
              1.0f, p.a.data(), blasint(p.k), p.b.data(), blasint(p.n), 0.0f, c, blasint(p.n));
}

void BM_Sgemm_Lathe(benchmark::State& state) {
  Problem p(state);
  for (auto _ : state) {
    lathe_gemm(p, p.c.data());
    benchmark::DoNotOptimize(p.c.data());
  }
  p.report(state);
}

void BM_Sgemm_LatheMatmul(benchmark::State& state) {
  Problem p(state);
  lathe::Tensor a = lathe::from_vector(p.a, {p.m, p.k});
  lathe::Tensor b = lathe::from_vector(p.b, {p.k, p.n});
  for (auto _ : state) {
    lathe::Tensor c = lathe::matmul(a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  p.report(state);
}

void BM_Sgemm_OpenBLAS(benchmark::State& state) {
  Problem p(state);
  // OpenBLAS's own pthread pool with as many threads as lathe uses (lathe's kernel pins it to 1).
  openblas_set_num_threads(lathe::get_num_threads());
  for (auto _ : state) {
    openblas_sgemm(p, p.c.data());
    benchmark::DoNotOptimize(p.c.data());
  }
  p.report(state);
}

void BM_Sgemm_Eigen(benchmark::State& state) {
  Problem p(state);
  using Map = Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  using ConstMap =
      Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  ConstMap a(p.a.data(), p.m, p.k), b(p.b.data(), p.k, p.n);
  Map c(p.c.data(), p.m, p.n);
  Eigen::setNbThreads(lathe::get_num_threads());
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(p.c.data());
  }
  p.report(state);
}

// A GEMM followed by a small OpenMP elementwise pass (a bias-free ReLU), as in an MLP layer.
void relu_in_place(std::vector<float>& c) {
  const int64_t n = int64_t(c.size());
  float* data = c.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) data[i] = data[i] > 0.0f ? data[i] : 0.0f;
}

void BM_GemmThenOpenMP_Lathe(benchmark::State& state) {
  Problem p(state);
  for (auto _ : state) {
    lathe_gemm(p, p.c.data());
    relu_in_place(p.c);
    benchmark::DoNotOptimize(p.c.data());
  }
  p.report(state);
}

void BM_GemmThenOpenMP_OpenBLAS(benchmark::State& state) {
  Problem p(state);
  openblas_set_num_threads(lathe::get_num_threads());
  for (auto _ : state) {
    openblas_sgemm(p, p.c.data());
    relu_in_place(p.c);
    benchmark::DoNotOptimize(p.c.data());
  }
  p.report(state);
}

// bf16 GEMM through the cpu gemm kernel on each path (kernels/cpu/gemm_bf16.h): path 0 widens to
// f32 for SGEMM (what every bf16 product did before), 1 AVX512-BF16 dot products, 2 AMX tiles;
// a path the processor lacks is skipped. Beside BM_Sgemm_Lathe's f32 rate at the same sizes. A
// linear layer's three products for x[m, k], w[n, k]: layout 0 the forward x @ w^T, 1 the input
// gradient dy[m, n] @ w (here [m, k] @ [k, n] with B untransposed), 2 the weight gradient dy^T @ x
// (A transposed).
void BM_GemmBf16_Lathe(benchmark::State& state) {
  using lathe::kernels::cpu::Bf16Gemm;
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const auto path = Bf16Gemm(state.range(3));
  const int64_t layout = state.range(4);
  if (!lathe::kernels::cpu::bf16_gemm_supported(path)) {
    state.SkipWithError(
        (std::string("no ") + lathe::kernels::cpu::bf16_gemm_name(path) + " on this processor")
            .c_str());
    return;
  }
  const Bf16Gemm previous = lathe::kernels::cpu::bf16_gemm_path();
  lathe::kernels::cpu::set_bf16_gemm_path(path);
  const bool ta = layout == 2, tb = layout == 0;
  const lathe::Tensor a = lathe::rand({ta ? k : m, ta ? m : k}).to(lathe::DType::BF16);
  const lathe::Tensor b = lathe::rand({tb ? n : k, tb ? k : n}).to(lathe::DType::BF16);
  lathe::Tensor c = lathe::empty({m, n}, lathe::DType::BF16);
  lathe::kernels::GemmArgs args;
  args.dtype = lathe::DType::BF16;
  args.trans_a = ta;
  args.trans_b = tb;
  args.m = m;
  args.n = n;
  args.k = k;
  args.a = a.data_ptr();
  args.lda = a.shape()[1];
  args.b = b.data_ptr();
  args.ldb = b.shape()[1];
  args.c = c.data_ptr();
  args.ldc = n;
  for (auto _ : state) {
    lathe::kernels::kernel_table(lathe::DeviceType::CPU).gemm(args);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  lathe::kernels::cpu::set_bf16_gemm_path(previous);
  state.counters["FLOPS"] = benchmark::Counter(2.0 * double(m) * double(n) * double(k),
                                               benchmark::Counter::kIsIterationInvariantRate,
                                               benchmark::Counter::kIs1000);
}

void square_sizes(benchmark::internal::Benchmark* b) {
  for (int64_t s : {512, 1024, 2048}) b->Args({s, s, s});
}
void bert_sizes(benchmark::internal::Benchmark* b) {
  // QKV/attention-output projection, MLP up, MLP down (m = tokens, n = out, k = in).
  b->Args({4096, 384, 384})->Args({4096, 1536, 384})->Args({4096, 384, 1536});
}

}  // namespace

BENCHMARK(BM_Sgemm_Lathe)
    ->Apply(square_sizes)
    ->Apply(bert_sizes)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GemmBf16_Lathe)
    ->ArgNames({"m", "n", "k", "path", "layout"})
    // MiniLM's FFN at 4096 tokens: forward, input gradient, weight gradient (m = 1536 features,
    // k = 4096 tokens); BERT-base's up-projection; a square.
    ->ArgsProduct({{4096}, {1536}, {384}, {0, 1, 2}, {0}})
    ->ArgsProduct({{4096}, {384}, {1536}, {0, 1, 2}, {1}})
    ->ArgsProduct({{1536}, {384}, {4096}, {0, 1, 2}, {2}})
    ->ArgsProduct({{4096}, {3072}, {768}, {0, 1, 2}, {0}})
    ->ArgsProduct({{1024}, {1024}, {1024}, {0, 1, 2}, {0}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sgemm_LatheMatmul)
    ->Apply(square_sizes)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sgemm_OpenBLAS)
    ->Apply(square_sizes)
    ->Apply(bert_sizes)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sgemm_Eigen)
    ->Apply(square_sizes)
    ->Apply(bert_sizes)
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_GemmThenOpenMP_Lathe)
    ->Args({512, 384, 384})
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmThenOpenMP_OpenBLAS)
    ->Args({512, 384, 384})
    ->Apply(lathe_bench::robust)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
