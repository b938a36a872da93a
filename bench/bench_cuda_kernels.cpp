// The cuda transformer kernels (docs/kernels.md) at BERT-ish shapes, in GB/s of the minimum memory
// traffic each needs (every input read once, every output written once), next to the copy kernel
// as the ceiling of the same run. Registered only in the real build (LATHE_CUDA): the simulated
// build runs kernels on the CPU, where timings mean nothing.
//
// Each iteration launches the kernel on the current stream and synchronizes, so the time includes
// one launch and one synchronization (a few microseconds); the shapes keep kernels well above that.
#ifdef LATHE_CUDA_BUILD

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

using lathe::DType;
using lathe::Tensor;

const lathe::Device kCuda = lathe::Device::cuda(0);

const lathe::kernels::KernelTable& cuda_k() {
  return lathe::kernels::kernel_table(lathe::DeviceType::CUDA);
}

void sync() {
  lathe::kernels::device_api(lathe::DeviceType::CUDA)->synchronize(0);
}

DType dtype_of(int64_t code) {
  return code == 0 ? DType::F32 : DType::BF16;
}
// Statistics (mean, rstd, lse) are f32 for f32 and bf16 data.
lathe::TensorOptions on_cuda(DType t) {
  return lathe::TensorOptions(t).device(kCuda);
}

Tensor randn_on(const lathe::Shape& shape, DType t) {
  return lathe::randn(shape, on_cuda(DType::F32)).to(t);
}

// Times body() + a synchronization per iteration and reports `bytes` per iteration as GB/s.
template <class Body>
void run(benchmark::State& state, double bytes, Body&& body) {
  body();  // warm-up: allocator, first-launch costs
  sync();
  for (auto _ : state) {
    body();
    sync();
  }
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Args: rows, cols, dtype (0 = f32, 1 = bf16).
void rows_cols(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t rows : {8192, 32768}) {
      for (int64_t cols : {384, 768, 1024, 4096}) b->Args({rows, cols, dtype});
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
  const int64_t rows = state.range(0), cols = state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor x = randn_on({rows, cols}, t), y = lathe::empty({rows, cols}, on_cuda(t));
  Tensor w = randn_on({cols}, t), b = randn_on({cols}, t);
  Tensor mean = lathe::empty({rows}, on_cuda(DType::F32)),
         rstd = lathe::empty({rows}, on_cuda(DType::F32));
  lathe::kernels::LayerNormForwardArgs a;
  a.dtype = t;
  a.rows = rows;
  a.cols = cols;
  a.x = x.data_ptr();
  a.weight = w.data_ptr();
  a.bias = b.data_ptr();
  a.y = y.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  const double es = double(lathe::element_size(t));
  run(state, 2.0 * double(rows * cols) * es, [&] { cuda_k().layer_norm_forward(a); });
}

// dx, dweight and dbias: x and dy read, dx written (the minimum; the parameter pass reads x and dy
// a second time, which shows up as a rate below the copy's).
void BM_CudaLayerNormBackward(benchmark::State& state) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor x = randn_on({rows, cols}, t), gy = randn_on({rows, cols}, t);
  Tensor w = randn_on({cols}, t);
  Tensor mean = lathe::zeros({rows}, on_cuda(DType::F32)),
         rstd = lathe::ones({rows}, on_cuda(DType::F32));
  Tensor gx = lathe::empty({rows, cols}, on_cuda(t));
  Tensor gw = lathe::empty({cols}, on_cuda(t)), gb = lathe::empty({cols}, on_cuda(t));
  lathe::kernels::LayerNormBackwardArgs a;
  a.dtype = t;
  a.rows = rows;
  a.cols = cols;
  a.x = x.data_ptr();
  a.weight = w.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  a.grad_y = gy.data_ptr();
  a.grad_x = gx.data_ptr();
  a.grad_weight = gw.data_ptr();
  a.grad_bias = gb.data_ptr();
  const double es = double(lathe::element_size(t));
  run(state, 3.0 * double(rows * cols) * es, [&] { cuda_k().layer_norm_backward(a); });
}

// Args: rows, classes, dtype. Forward reads the logits; backward reads them and writes dlogits.
void BM_CudaCrossEntropy(benchmark::State& state, bool backward) {
  const int64_t rows = state.range(0), classes = state.range(1);
  const DType t = dtype_of(state.range(2));
  Tensor x = randn_on({rows, classes}, t);
  std::vector<int64_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = (r * 7919) % classes;
  Tensor tg = lathe::from_vector(targets, {rows}, lathe::TensorOptions().device(kCuda));
  Tensor loss = lathe::empty({rows}, on_cuda(t)), lse = lathe::empty({rows}, on_cuda(DType::F32));
  Tensor gl = lathe::ones({rows}, on_cuda(t)), grad = lathe::empty({rows, classes}, on_cuda(t));
  lathe::kernels::CrossEntropyForwardArgs f;
  f.dtype = t;
  f.rows = rows;
  f.classes = classes;
  f.logits = x.data_ptr();
  f.targets = static_cast<const int64_t*>(tg.data_ptr());
  f.loss = loss.data_ptr();
  f.lse = lse.data_ptr();
  f.label_smoothing = 0.1;
  cuda_k().cross_entropy_forward(f);
  lathe::kernels::CrossEntropyBackwardArgs b;
  b.dtype = t;
  b.rows = rows;
  b.classes = classes;
  b.logits = x.data_ptr();
  b.targets = f.targets;
  b.lse = lse.data_ptr();
  b.grad_loss = gl.data_ptr();
  b.grad_logits = grad.data_ptr();
  b.label_smoothing = 0.1;
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

void gelu_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dtype : {0, 1}) {
    for (int64_t n : {int64_t(8192) * 1536, int64_t(32768) * 3072}) b->Args({n, dtype});
  }
}

}  // namespace

#define LATHE_CUDA_BENCH(fn, shapes) \
  BENCHMARK(fn)                      \
      ->Apply(shapes)                \
      ->Apply(lathe_bench::robust)   \
      ->UseRealTime()                \
      ->Unit(benchmark::kMicrosecond)

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

#endif  // LATHE_CUDA_BUILD
