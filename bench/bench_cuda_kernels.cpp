// The cuda transformer kernels (docs/kernels.md) at BERT-ish shapes, in GB/s of the minimum memory
// traffic each needs (every input read once, every output written once), next to the copy kernel
// as the ceiling of the same run. Registered only in the real build (LATHE_CUDA): the simulated
// build runs kernels on the CPU, where timings mean nothing.
//
// Each timed iteration launches the kernel kLaunches times back to back and then synchronizes
// (run() in bench_cuda_util.h); the reported time is per iteration (kLaunches launches), the GB/s
// per launch. bytes of small shapes stay in the 50-60 MB L2 across launches, as they would between
// the layers of a real model.
//
// Also here: GEMM through lathe's matmul op against cuBLAS called directly (cublasGemmEx) on the
// same buffers, and attention through the op (the composed path until the fused kernel lands).
#ifdef LATHE_CUDA_BUILD

#include <benchmark/benchmark.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/bench_cross_entropy.h"
#include "bench/bench_cuda_util.h"
#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/cuda/layer_norm_variant.h"
#include "kernels/cuda/row_shapes.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

using lathe::DType;
using lathe::Tensor;
using namespace lathe_bench::gpu;

// Args: rows, cols, dtype (0 = f32, 1 = bf16).
void rows_cols(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t rows : {4096, 32768}) {
      for (int64_t cols : {384, 768, 1536, 4096}) b->Args({rows, cols, dtype});
    }
  }
}

void BM_CudaCopy(benchmark::State& state) {
  const int64_t n = state.range(0) * state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor x = randn_on({n}, t), y = lathe::empty({n}, on_cuda(t));
  run(state, 2.0 * double(n * int64_t(lathe::element_size(t))),
      [&] { cuda_k().copy(lathe::detail::make_view(x), lathe::detail::make_view(y)); });
}

void BM_CudaSoftmaxForward(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor x = randn_on({rows, cols}, t), y = lathe::empty({rows, cols}, on_cuda(t));
  const double es = double(lathe::element_size(t));
  run(state, 2.0 * double(rows * cols) * es, [&] {
    cuda_k().softmax_forward(lathe::detail::make_view(x), lathe::detail::make_view(y), false);
  });
}

void BM_CudaSoftmaxBackward(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor y = randn_on({rows, cols}, t), gy = randn_on({rows, cols}, t);
  Tensor gx = lathe::empty({rows, cols}, on_cuda(t));
  const double es = double(lathe::element_size(t));
  run(state, 3.0 * double(rows * cols) * es, [&] {
    cuda_k().softmax_backward(lathe::detail::make_view(y), lathe::detail::make_view(gy),
                              lathe::detail::make_view(gx), false);
  });
}

void BM_CudaLayerNormForward(benchmark::State& state) {
  const RowArgs s(state);
  Tensor x = randn_on({s.rows, s.cols}, s.t), y = lathe::empty({s.rows, s.cols}, on_cuda(s.t));
  Tensor w = randn_on({s.cols}, s.t), b = randn_on({s.cols}, s.t);
  Tensor mean = lathe::empty({s.rows}, on_cuda(DType::F32)),
         rstd = lathe::empty({s.rows}, on_cuda(DType::F32));
  const lathe::kernels::LayerNormForwardArgs a = layer_norm_forward_args(s, x, w, b, y, mean, rstd);
  run(state, s.bytes(2.0), [&] { cuda_k().layer_norm_forward(a); });
}

// dx, dweight and dbias: x and dy read, dx written (the minimum; the parameter pass reads x and dy
// a second time, which shows up as a rate below the copy's).
void BM_CudaLayerNormBackward(benchmark::State& state) {
  const RowArgs s(state);
  Tensor x = randn_on({s.rows, s.cols}, s.t), gy = randn_on({s.rows, s.cols}, s.t);
  Tensor w = randn_on({s.cols}, s.t);
  Tensor mean = lathe::zeros({s.rows}, on_cuda(DType::F32)),
         rstd = lathe::ones({s.rows}, on_cuda(DType::F32));
  Tensor gx = lathe::empty({s.rows, s.cols}, on_cuda(s.t));
  Tensor gw = lathe::empty({s.cols}, on_cuda(s.t)), gb = lathe::empty({s.cols}, on_cuda(s.t));
  const lathe::kernels::LayerNormBackwardArgs a =
      layer_norm_backward_args(s, x, w, mean, rstd, gy, gx, gw, gb);
  run(state, s.bytes(3.0), [&] { cuda_k().layer_norm_backward(a); });
}

// Args: rows, classes, dtype. Forward reads the logits; backward reads them and writes dlogits.
void BM_CudaCrossEntropy(benchmark::State& state, bool backward) {
  const int64_t rows = state.range(0), classes = state.range(1);
  const DType t = dtype_of(state.range(2));
  const lathe_bench::CrossEntropyOperands o =
      lathe_bench::cross_entropy_operands(rows, classes, t, kCuda);
  const lathe::kernels::CrossEntropyForwardArgs& f = o.forward;
  const lathe::kernels::CrossEntropyBackwardArgs& b = o.backward;
  const double es = double(lathe::element_size(t));
  if (backward) {
    run(state, 2.0 * double(rows * classes) * es, [&] { cuda_k().cross_entropy_backward(b); });
  } else {
    run(state, double(rows * classes) * es, [&] { cuda_k().cross_entropy_forward(f); });
  }
}
void BM_CudaCrossEntropyForward(benchmark::State& state) {
  BM_CudaCrossEntropy(state, false);
}
void BM_CudaCrossEntropyBackward(benchmark::State& state) {
  BM_CudaCrossEntropy(state, true);
}

// A classifier head (2 classes), a BERT vocabulary (30522) at MLM batch sizes.
void ce_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (auto [rows, classes] :
         {std::pair<int64_t, int64_t>{32, 30522}, {4096, 30522}, {65536, 2}, {8192, 1000}}) {
      b->Args({rows, classes, dtype});
    }
  }
}

// Args: positions, dim, vocabulary, dtype. grad_out read once, the [V, dim] gradient written once.
void BM_CudaEmbeddingBackward(benchmark::State& state) {
  const int64_t n = state.range(0), dim = state.range(1), vocab = state.range(2);
  const DType t = dtype_of(state.range(3));
  std::vector<int64_t> idx(static_cast<size_t>(n));
  // Zipf-like: a few frequent tokens, a long tail, and padding (0) in a quarter of the positions.
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = uint64_t(i) * 0x9E3779B97F4A7C15ull;
    idx[size_t(i)] = i % 4 == 3 ? 0 : int64_t((h >> 33) % uint64_t(1 + (i % 97) * (vocab / 97)));
  }
  Tensor ind = lathe::from_vector(idx, {n}, lathe::TensorOptions().device(kCuda));
  Tensor g = randn_on({n, dim}, t), gw = lathe::empty({vocab, dim}, on_cuda(t));
  lathe::kernels::EmbeddingBackwardArgs a;
  a.indices = static_cast<const int64_t*>(ind.data_ptr());
  a.n = n;
  a.grad_out = lathe::detail::make_view(g);
  a.grad_weight = gw.data_ptr();
  a.num_embeddings = vocab;
  a.padding_idx = 0;
  const double es = double(lathe::element_size(t));
  run(state, double(n * dim + vocab * dim) * es, [&] { cuda_k().embedding_backward(a); });
}

void embedding_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t n : {4096, 16384, 65536}) b->Args({n, 384, 30522, dtype});
    b->Args({16384, 768, 30522, dtype});
  }
}

// Args: elements, dtype.
void BM_CudaGelu(benchmark::State& state, bool backward) {
  const int64_t n = state.range(0);
  const DType t = dtype_of(state.range(1));
  Tensor x = randn_on({n}, t), g = randn_on({n}, t), y = lathe::empty({n}, on_cuda(t));
  const auto vx = lathe::detail::make_view(x), vg = lathe::detail::make_view(g),
             vy = lathe::detail::make_view(y);
  const double es = double(lathe::element_size(t));
  if (backward) {
    run(state, 3.0 * double(n) * es,
        [&] { cuda_k().unary_backward(lathe::kernels::UnaryOp::Gelu, vx, vg, vy, 0, 0); });
  } else {
    run(state, 2.0 * double(n) * es,
        [&] { cuda_k().unary(lathe::kernels::UnaryOp::Gelu, vx, vy, 0, 0); });
  }
}
void BM_CudaGeluForward(benchmark::State& state) {
  BM_CudaGelu(state, false);
}
void BM_CudaGeluBackward(benchmark::State& state) {
  BM_CudaGelu(state, true);
}

// Dropout (p = 0.1) of contiguous tensors, BERT-base's hidden states at B·T = 4096 and 32768:
// in and out, 16-byte packs with their Philox blocks (kernels/cuda/random.cu). Args: n, bf16.
void BM_CudaDropout(benchmark::State& state) {
  const int64_t n = state.range(0);
  const DType t = dtype_of(state.range(1));
  Tensor x = randn_on({n}, t), y = lathe::empty({n}, on_cuda(t));
  const auto vx = lathe::detail::make_view(x), vy = lathe::detail::make_view(y);
  run(state, 2.0 * double(n) * double(lathe::element_size(t)), [&] {
    cuda_k().dropout(vx, vy, 0.1, {1234, 0});
  });
}

void dropout_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t n : {int64_t(4096) * 768, int64_t(32768) * 768}) b->Args({n, dtype});
  }
}

void gelu_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t n : {int64_t(8192) * 1536, int64_t(32768) * 3072}) b->Args({n, dtype});
  }
}

// ---- GEMM: lathe's matmul op vs cuBLAS directly
// --------------------------------------------------

void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("cuBLAS ") + what + " failed: status " +
                             std::to_string(int(st)));
  }
}

// Args: m, n, k, dtype (0 = f32 in full f32, 1 = bf16 with f32 accumulation; both write their own
// dtype, as lathe's matmul does). C[m,n] = A[m,k] B[k,n], row-major.
void gemm_counters(benchmark::State& state, int64_t m, int64_t n, int64_t k) {
  tflops_counter(state, 2.0 * double(m) * double(n) * double(k), state.range(3) == 0);
}

// dtype code 2: f32 under set_float32_matmul_precision("high"), TF32 on tensor cores.
void BM_CudaGemm_Lathe(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const bool tf32 = state.range(3) == 2;
  const DType t = tf32 ? DType::F32 : dtype_of(state.range(3));
  Tensor a = randn_on({m, k}, t), b = randn_on({k, n}, t);
  const lathe::MatmulPrecision saved = lathe::float32_matmul_precision();
  lathe::set_float32_matmul_precision(tf32 ? lathe::MatmulPrecision::High
                                           : lathe::MatmulPrecision::Highest);
  run(state, 0.0, [&] { benchmark::DoNotOptimize(lathe::matmul(a, b)); });
  lathe::set_float32_matmul_precision(saved);
  gemm_counters(state, m, n, k);
}

void BM_CudaGemm_Cublas(benchmark::State& state) {
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const bool tf32 = state.range(3) == 2;
  const DType t = tf32 ? DType::F32 : dtype_of(state.range(3));
  Tensor a = randn_on({m, k}, t), b = randn_on({k, n}, t), c = lathe::empty({m, n}, on_cuda(t));
  sync_device();
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    check_cublas(cublasCreate(&h), "cublasCreate");
    return h;
  }();
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = t == DType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  // Row-major C = A B is column-major C^T = B^T A^T: swap the operands, no transposes.
  auto body = [&] {
    check_cublas(
        cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), &alpha, b.data_ptr(),
                     type, int(n), a.data_ptr(), type, int(k), &beta, c.data_ptr(), type, int(n),
                     tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
  };
  body();
  cudaDeviceSynchronize();
  for (auto _ : state) {
    for (int i = 0; i < kLaunches; ++i) body();
    cudaDeviceSynchronize();
  }
  gemm_counters(state, m, n, k);
}

// BERT's linear layers at B·T = 4096 (MiniLM 384/1536, BERT-base 768/3072) and square sizes;
// dtype 0 f32, 1 bf16, 2 f32 in TF32.
void gemm_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{{4096, 384, 384},
                                                              {4096, 1536, 384},
                                                              {4096, 384, 1536},
                                                              {4096, 768, 768},
                                                              {4096, 3072, 768},
                                                              {4096, 768, 3072},
                                                              {512, 512, 512},
                                                              {1024, 1024, 1024},
                                                              {2048, 2048, 2048},
                                                              {4096, 4096, 4096}}) {
      b->Args({m, n, k, dtype});
    }
  }
  // f32 in TF32 (code 2), at BERT-base's FFN shapes and the square 4096.
  for (auto [m, n, k] : std::vector<std::array<int64_t, 3>>{
           {4096, 3072, 768}, {4096, 768, 3072}, {4096, 4096, 4096}}) {
    b->Args({m, n, k, 2});
  }
}

// ---- attention through the op (B, H = 12, T, d), bf16
// ---------------------------------------------

// Args: batch, T, head dim. FLOPs: 4·B·H·T²·d (QKᵀ and PV).
void BM_CudaAttentionOp(benchmark::State& state) {
  const int64_t batch = state.range(0), seq = state.range(1), dim = state.range(2);
  Tensor q = randn_on({batch, 12, seq, dim}, DType::BF16),
         k = randn_on({batch, 12, seq, dim}, DType::BF16),
         v = randn_on({batch, 12, seq, dim}, DType::BF16);
  lathe::NoGradGuard no_grad;
  run(state, 0.0, [&] { benchmark::DoNotOptimize(lathe::scaled_dot_product_attention(q, k, v)); });
  tflops_counter(state, 4.0 * double(batch) * 12 * double(seq) * double(seq) * double(dim));
}

// The two lanes-per-row rules of kernels/cuda/row_shapes.h where they differ (bf16 rows of 384
// columns: 16 lanes x 3 packs, or 32 lanes x 2 with a third of the slots empty), timed in the same
// run so that the GPU decides which stays. Args: rows, cols, dtype (as rows_cols), rule (0
// balanced, 1 powers of two), op (0 layer norm forward, 1 layer norm backward, 2 softmax forward,
// 3 softmax backward).
void BM_CudaRowShapes(benchmark::State& state) {
  namespace cu = lathe::kernels::cuda;
  const cu::RowShapes saved = cu::row_shapes();
  cu::set_row_shapes(state.range(3) == 0 ? cu::RowShapes::Balanced : cu::RowShapes::PowerOfTwo);
  switch (state.range(4)) {
    case 0:
      BM_CudaLayerNormForward(state);
      break;
    case 1:
      BM_CudaLayerNormBackward(state);
      break;
    case 2:
      BM_CudaSoftmaxForward(state);
      break;
    default:
      BM_CudaSoftmaxBackward(state);
      break;
  }
  cu::set_row_shapes(saved);
}

void row_shape_cases(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bf16", "rule", "op"});
  for (int64_t op : {0, 1, 2, 3}) {
    for (int64_t rows : {4096, 32768}) {
      for (int64_t rule : {0, 1}) b->Args({rows, 384, 1, rule, op});
    }
  }
}

// The fused layer-norm backward with bf16 dy kept packed against widened (layer_norm_variant.h),
// at BERT's widths, so that the GPU decides which stays. Args: rows, cols, dtype (as rows_cols),
// dy (0 widened, 1 packed).
void BM_CudaLayerNormBackwardDy(benchmark::State& state) {
  namespace cu = lathe::kernels::cuda;
  const cu::LayerNormDy saved = cu::layer_norm_dy();
  cu::set_layer_norm_dy(state.range(3) == 0 ? cu::LayerNormDy::Widened : cu::LayerNormDy::Packed);
  BM_CudaLayerNormBackward(state);
  cu::set_layer_norm_dy(saved);
}

void layer_norm_dy_cases(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bf16", "dy"});
  for (int64_t rows : {4096, 32768}) {
    for (int64_t cols : {384, 768, 1024}) {
      for (int64_t dy : {0, 1}) b->Args({rows, cols, 1, dy});
    }
  }
}

}  // namespace

LATHE_CUDA_BENCH(BM_CudaRowShapes, row_shape_cases);
LATHE_CUDA_BENCH(BM_CudaLayerNormBackwardDy, layer_norm_dy_cases);
LATHE_CUDA_BENCH(BM_CudaCopy, rows_cols);
LATHE_CUDA_BENCH(BM_CudaSoftmaxForward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaSoftmaxBackward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaLayerNormForward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaLayerNormBackward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaCrossEntropyForward, ce_shapes);
LATHE_CUDA_BENCH(BM_CudaCrossEntropyBackward, ce_shapes);
LATHE_CUDA_BENCH(BM_CudaEmbeddingBackward, embedding_shapes);
LATHE_CUDA_BENCH(BM_CudaGeluForward, gelu_shapes);
LATHE_CUDA_BENCH(BM_CudaGeluBackward, gelu_shapes);
LATHE_CUDA_BENCH(BM_CudaDropout, dropout_shapes);
LATHE_CUDA_BENCH(BM_CudaGemm_Lathe, gemm_shapes);
LATHE_CUDA_BENCH(BM_CudaGemm_Cublas, gemm_shapes);
BENCHMARK(BM_CudaAttentionOp)
    ->ArgNames({"B", "T", "d"})
    ->Args({32, 128, 32})
    ->Args({32, 128, 64})
    ->Args({8, 512, 64})
    ->Args({2, 2048, 64})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

#endif  // LATHE_CUDA_BUILD
