// The fused transformer kernels (docs/kernels.md: add_layer_norm, bias_gelu) against the unfused
// kernel sequences they replace, and the FFN's first half (matmul + bias + GELU) three ways. Real
// builds only (LATHE_CUDA): simulated timings mean nothing.
//
//  - BM_CudaAddLayerNorm{Forward,Backward}, BM_CudaBiasGelu{Forward,Backward}: GB/s of the fused
//    kernel's minimum traffic (every input read once, every output written once; bias/weight
//    vectors not counted). BM_CudaAddThenLayerNormForward and BM_CudaBiasThenGelu{Forward,Backward}
//    run the unfused sequence (binary add + layer norm; binary add + gelu, and gelu backward + a
//    column sum for dbias) and report the *same* byte count, so their GB/s is directly the speed
//    ratio against the fused entry.
//    Args: rows, cols, dtype (0 = f32, 1 = bf16); AddLayerNormForward has a 4th: 1 = training
//    (the sum is also written for backward, counted), 0 = inference.
//  - BM_CudaFfnIn_{Unfused,FusedKernel,LtEpilogue}: x[B*T, H] @ W[4H, H]^T, + bias, GELU in bf16
//    (f32 accumulation) at BERT shapes, in TFLOP/s of the GEMM (2 * M * H * 4H): cuBLASLt GEMM then
//    the binary add and the unary GELU; the GEMM then bias_gelu; one cuBLASLt call with the
//    GELU_BIAS epilogue. All three use GELU's tanh form, the only one cuBLASLt's epilogue has
//    (BERT's "gelu" is the erf form: the epilogue fits gelu_new models only).
//
// As in bench_cuda_kernels.cpp, each iteration launches kLaunches times and synchronizes once
// (run() in bench_cuda_util.h).
#ifdef LATHE_CUDA_BUILD

#include <benchmark/benchmark.h>

#include <cstdint>

#include "bench/bench_cuda_util.h"
#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/runtime.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

using lathe::DType;
using lathe::Tensor;
using lathe::detail::make_view;
using namespace lathe_bench::gpu;

// Args: rows, cols, dtype.
void rows_cols(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bf16"});
  for (int64_t dtype : {0, 1}) {
    for (int64_t rows : {4096, 32768}) {
      for (int64_t cols : {384, 768, 1024}) b->Args({rows, cols, dtype});
    }
  }
}

// The FFN widths 4H of BERT shapes: H = 384 (MiniLM), 768 (BERT-base).
void ffn_widths(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bf16"});
  for (int64_t dtype : {0, 1}) {
    for (int64_t cols : {1536, 3072}) b->Args({4096, cols, dtype});
  }
}

// ---- add + layer norm
// ----------------------------------------------------------------------------

struct AddLayerNormBuffers {
  RowArgs s;
  Tensor x, r, w, b, y, sum, mean, rstd;
  explicit AddLayerNormBuffers(const benchmark::State& state)
      : s(state),
        x(randn_on({s.rows, s.cols}, s.t)),
        r(randn_on({s.rows, s.cols}, s.t)),
        w(randn_on({s.cols}, s.t)),
        b(randn_on({s.cols}, s.t)),
        y(lathe::empty({s.rows, s.cols}, on_cuda(s.t))),
        sum(lathe::empty({s.rows, s.cols}, on_cuda(s.t))),
        mean(lathe::empty({s.rows}, on_cuda(DType::F32))),
        rstd(lathe::empty({s.rows}, on_cuda(DType::F32))) {}

  // The fused forward on x and r; the sum is written too when `with_sum` (training).
  lathe::kernels::AddLayerNormForwardArgs fused_args(bool with_sum) const {
    return {.dtype = s.t,
            .rows = s.rows,
            .cols = s.cols,
            .x = x.data_ptr(),
            .residual = r.data_ptr(),
            .weight = w.data_ptr(),
            .bias = b.data_ptr(),
            .y = y.data_ptr(),
            .sum = with_sum ? sum.data_ptr() : nullptr,
            .mean = mean.data_ptr(),
            .rstd = rstd.data_ptr()};
  }
};

void BM_CudaAddLayerNormForward(benchmark::State& state) {
  const AddLayerNormBuffers m(state);
  const bool train = state.range(3) != 0;
  const lathe::kernels::AddLayerNormForwardArgs a = m.fused_args(train);
  run(state, m.s.bytes(train ? 4.0 : 3.0), [&] { cuda_k().add_layer_norm_forward(a); });
}

// The unfused forward: s = x + r (binary kernel), then layer norm of s. Bytes: the fused training
// minimum (x, r read, s, y written), so GB/s compares directly with the fused entry's train=1 rows.
void BM_CudaAddThenLayerNormForward(benchmark::State& state) {
  const AddLayerNormBuffers m(state);
  const lathe::kernels::LayerNormForwardArgs a =
      layer_norm_forward_args(m.s, m.sum, m.w, m.b, m.y, m.mean, m.rstd);
  run(state, m.s.bytes(4.0), [&] {
    cuda_k().binary(lathe::kernels::BinaryOp::Add, make_view(m.x), make_view(m.r),
                    make_view(m.sum));
    cuda_k().layer_norm_forward(a);
  });
}

// The backward of add_layer_norm is layer_norm_backward on the saved sum: dx (= dresidual),
// dweight, dbias. Minimum traffic: s and dy read, dx written.
void BM_CudaAddLayerNormBackward(benchmark::State& state) {
  const AddLayerNormBuffers m(state);
  const RowArgs& s = m.s;
  cuda_k().add_layer_norm_forward(m.fused_args(true));
  Tensor gy = randn_on({s.rows, s.cols}, s.t), gx = lathe::empty({s.rows, s.cols}, on_cuda(s.t));
  Tensor gw = lathe::empty({s.cols}, on_cuda(s.t)), gb = lathe::empty({s.cols}, on_cuda(s.t));
  const lathe::kernels::LayerNormBackwardArgs a =
      layer_norm_backward_args(s, m.sum, m.w, m.mean, m.rstd, gy, gx, gw, gb);
  run(state, s.bytes(3.0), [&] { cuda_k().layer_norm_backward(a); });
}

// ---- bias + GELU
// ---------------------------------------------------------------------------------

// The fields the bias_gelu forward and backward arguments share: [rows, cols] x and [cols] bias of
// dtype t, erf form unless `tanh`.
template <class Args>
Args bias_gelu_args(DType t, int64_t rows, int64_t cols, const Tensor& x, const Tensor& bias,
                    bool tanh = false) {
  Args a;
  a.dtype = t;
  a.rows = rows;
  a.cols = cols;
  a.x = x.data_ptr();
  a.bias = bias.data_ptr();
  a.tanh = tanh;
  return a;
}

struct BiasGeluBuffers {
  RowArgs s;
  Tensor x, b, y, gy, gx, gb;
  explicit BiasGeluBuffers(const benchmark::State& state)
      : s(state),
        x(randn_on({s.rows, s.cols}, s.t)),
        b(randn_on({s.cols}, s.t)),
        y(lathe::empty({s.rows, s.cols}, on_cuda(s.t))),
        gy(randn_on({s.rows, s.cols}, s.t)),
        gx(lathe::empty({s.rows, s.cols}, on_cuda(s.t))),
        gb(lathe::empty({s.cols}, on_cuda(s.t))) {}
};

void BM_CudaBiasGeluForward(benchmark::State& state) {
  const BiasGeluBuffers m(state);
  auto a = bias_gelu_args<lathe::kernels::BiasGeluArgs>(m.s.t, m.s.rows, m.s.cols, m.x, m.b);
  a.y = m.y.data_ptr();
  run(state, m.s.bytes(2.0), [&] { cuda_k().bias_gelu_forward(a); });
}

// Unfused: v = x + b (broadcast binary kernel), then the GELU unary kernel. Fused bytes.
void BM_CudaBiasThenGeluForward(benchmark::State& state) {
  const BiasGeluBuffers m(state);
  Tensor v = lathe::empty({m.s.rows, m.s.cols}, on_cuda(m.s.t));
  run(state, m.s.bytes(2.0), [&] {
    cuda_k().binary(lathe::kernels::BinaryOp::Add, make_view(m.x),
                    lathe::detail::make_broadcast_view(m.b, {m.s.rows, m.s.cols}), make_view(v));
    cuda_k().unary(lathe::kernels::UnaryOp::Gelu, make_view(v), make_view(m.y), 0, 0);
  });
}

// dx and dbias in one pass: x and dy read, dx written.
void BM_CudaBiasGeluBackward(benchmark::State& state) {
  const BiasGeluBuffers m(state);
  auto a =
      bias_gelu_args<lathe::kernels::BiasGeluBackwardArgs>(m.s.t, m.s.rows, m.s.cols, m.x, m.b);
  a.grad_y = m.gy.data_ptr();
  a.grad_x = m.gx.data_ptr();
  a.grad_bias = m.gb.data_ptr();
  run(state, m.s.bytes(3.0), [&] { cuda_k().bias_gelu_backward(a); });
}

// Unfused (what autograd of gelu(x + b) runs): GELU backward on the saved x + b, then dbias as a
// column sum of dx (reduce kernel). Fused bytes.
void BM_CudaBiasThenGeluBackward(benchmark::State& state) {
  const BiasGeluBuffers m(state);
  Tensor gb = lathe::empty({1, m.s.cols}, on_cuda(m.s.t));
  run(state, m.s.bytes(3.0), [&] {
    cuda_k().unary_backward(lathe::kernels::UnaryOp::Gelu, make_view(m.x), make_view(m.gy),
                            make_view(m.gx), 0, 0);
    cuda_k().reduce(lathe::kernels::ReduceOp::Sum, make_view(m.gx), make_view(gb));
  });
}

// ---- the FFN's first half: matmul + bias + GELU
// ---------------------------------------------------

// Args: rows (B*T), hidden H; the output is [rows, 4H], bf16 throughout.
void ffn_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"BT", "H"});
  for (int64_t h : {384, 768}) b->Args({4096, h});
}

struct FfnBuffers {
  int64_t m, k, n;
  Tensor x, w, bias, y, v;
  FfnBuffers(int64_t rows, int64_t hidden)
      : m(rows),
        k(hidden),
        n(4 * hidden),
        x(randn_on({rows, hidden}, DType::BF16)),
        w(randn_on({4 * hidden, hidden}, DType::BF16)),
        bias(randn_on({4 * hidden}, DType::BF16)),
        y(lathe::empty({rows, 4 * hidden}, on_cuda(DType::BF16))),
        v(lathe::empty({rows, 4 * hidden}, on_cuda(DType::BF16))) {}

  // y (or `out`) = x @ w^T, optionally with an epilogue.
  lathe::cuda::GemmExArgs gemm(void* out, lathe::cuda::GemmEpilogue epi) const {
    lathe::cuda::GemmExArgs g;
    g.gemm.dtype = DType::BF16;
    g.gemm.trans_a = false;
    g.gemm.trans_b = true;
    g.gemm.m = m;
    g.gemm.n = n;
    g.gemm.k = k;
    g.gemm.a = x.data_ptr();
    g.gemm.lda = k;
    g.gemm.b = w.data_ptr();
    g.gemm.ldb = k;
    g.gemm.c = out;
    g.gemm.ldc = n;
    g.c_dtype = DType::BF16;
    g.epilogue = epi;
    g.bias = epi == lathe::cuda::GemmEpilogue::None ? nullptr : bias.data_ptr();
    return g;
  }
};

void ffn_counters(benchmark::State& state, const FfnBuffers& f) {
  tflops_counter(state, 2.0 * double(f.m) * double(f.n) * double(f.k));
}

void BM_CudaFfnIn_Unfused(benchmark::State& state) {
  FfnBuffers f(state.range(0), state.range(1));
  const lathe::cuda::GemmExArgs g = f.gemm(f.v.data_ptr(), lathe::cuda::GemmEpilogue::None);
  Tensor with_bias = lathe::empty({f.m, f.n}, on_cuda(DType::BF16));
  run(state, 0.0, [&] {
    lathe::cuda::gemm_ex(g, lathe::cuda::current_stream());
    cuda_k().binary(lathe::kernels::BinaryOp::Add, make_view(f.v),
                    lathe::detail::make_broadcast_view(f.bias, {f.m, f.n}), make_view(with_bias));
    cuda_k().unary(lathe::kernels::UnaryOp::GeluTanh, make_view(with_bias), make_view(f.y), 0, 0);
  });
  ffn_counters(state, f);
}

void BM_CudaFfnIn_FusedKernel(benchmark::State& state) {
  FfnBuffers f(state.range(0), state.range(1));
  const lathe::cuda::GemmExArgs g = f.gemm(f.v.data_ptr(), lathe::cuda::GemmEpilogue::None);
  auto a = bias_gelu_args<lathe::kernels::BiasGeluArgs>(DType::BF16, f.m, f.n, f.v, f.bias,
                                                        /*tanh=*/true);
  a.y = f.y.data_ptr();
  run(state, 0.0, [&] {
    lathe::cuda::gemm_ex(g, lathe::cuda::current_stream());
    cuda_k().bias_gelu_forward(a);
  });
  ffn_counters(state, f);
}

void BM_CudaFfnIn_LtEpilogue(benchmark::State& state) {
  FfnBuffers f(state.range(0), state.range(1));
  const lathe::cuda::GemmExArgs g = f.gemm(f.y.data_ptr(), lathe::cuda::GemmEpilogue::BiasGelu);
  run(state, 0.0, [&] { lathe::cuda::gemm_ex(g, lathe::cuda::current_stream()); });
  ffn_counters(state, f);
}

}  // namespace

void add_ln_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "bf16", "train"});
  for (int64_t dtype : {0, 1}) {
    for (int64_t rows : {4096, 32768}) {
      for (int64_t cols : {384, 768, 1024}) {
        for (int64_t train : {0, 1}) b->Args({rows, cols, dtype, train});
      }
    }
  }
}

LATHE_CUDA_BENCH(BM_CudaAddLayerNormForward, add_ln_shapes);
LATHE_CUDA_BENCH(BM_CudaAddThenLayerNormForward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaAddLayerNormBackward, rows_cols);
LATHE_CUDA_BENCH(BM_CudaBiasGeluForward, ffn_widths);
LATHE_CUDA_BENCH(BM_CudaBiasThenGeluForward, ffn_widths);
LATHE_CUDA_BENCH(BM_CudaBiasGeluBackward, ffn_widths);
LATHE_CUDA_BENCH(BM_CudaBiasThenGeluBackward, ffn_widths);
LATHE_CUDA_BENCH(BM_CudaFfnIn_Unfused, ffn_shapes);
LATHE_CUDA_BENCH(BM_CudaFfnIn_FusedKernel, ffn_shapes);
LATHE_CUDA_BENCH(BM_CudaFfnIn_LtEpilogue, ffn_shapes);

#endif  // LATHE_CUDA_BUILD
