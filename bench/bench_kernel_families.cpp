// The kernel families that bench_memory.cpp (cpu layer norm / softmax) and bench_cuda_kernels.cpp
// (the cuda row kernels) leave out on one device or the other: GELU, cross-entropy, the embedding
// lookup and its gradient on the cpu, and fused AdamW and the gradient norm of clipping on both
// devices. Each body is written once
// over a Target (device, kernel table, how to wait for the device, the copy ceiling of the same
// process) and registered per device: `BM_Cpu*` everywhere, `BM_Cuda*` in a real CUDA build, where
// kernels run asynchronously and every timed iteration ends with a synchronization. Rates are GB/s
// of each kernel's minimum traffic (every input read once, every output written once) and
// `of_copy`, the fraction of the device's copy ceiling.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "bench/bench_cross_entropy.h"
#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

using lathe::DType;
using lathe::Tensor;

struct Target {
  lathe::Device device;
  double (*copy_ceiling_gbps)();
  const lathe::kernels::KernelTable& table() const {
    return lathe::kernels::kernel_table(device.type);
  }
  void sync() const {
    if (device.is_cuda()) lathe::kernels::device_api(device.type)->synchronize(0);
  }
  lathe::TensorOptions f32() const { return lathe::TensorOptions(DType::F32).device(device); }
};

const Target kCpu{lathe::Device::cpu(), &lathe_bench::cpu_copy_ceiling_gbps};
#ifdef LATHE_CUDA_BUILD
const Target kCuda{lathe::Device::cuda(0), &lathe_bench::cuda_copy_ceiling_gbps};
#endif

// Times body() once per iteration (plus a synchronization on the GPU) after one warm-up call,
// and reports `bytes` per call as GB/s and as a fraction of the target's copy ceiling.
template <class Body>
void run(benchmark::State& state, const Target& target, double bytes, Body&& body) {
  body();
  target.sync();
  for (auto _ : state) {
    body();
    target.sync();
  }
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_copy"] = lathe_bench::fraction_of(bytes, target.copy_ceiling_gbps() * 1e9);
}

Tensor randn_on(const Target& target, const lathe::Shape& shape) {
  return lathe::randn(shape, target.f32());
}

Tensor indices_on(const Target& target, int64_t n, int64_t vocab) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    idx[size_t(i)] = int64_t((uint64_t(i) * 0x9E3779B97F4A7C15ull >> 33) % uint64_t(vocab));
  }
  return lathe::from_vector(idx, {n}, lathe::TensorOptions().device(target.device));
}

// Args: elements, backward (0/1). f32 GELU, erf form: x read and y written; backward reads x and
// dy and writes dx.
void gelu_entry(benchmark::State& state, const Target& target) {
  const int64_t n = state.range(0);
  const bool backward = state.range(1) == 1;
  Tensor x = randn_on(target, {n}), gy = randn_on(target, {n});
  Tensor y = lathe::empty({n}, target.f32());
  const auto vx = lathe::detail::make_view(x), vgy = lathe::detail::make_view(gy),
             vy = lathe::detail::make_view(y);
  const auto& k = target.table();
  const double bytes = double(n) * 4.0 * (backward ? 3.0 : 2.0);
  run(state, target, bytes, [&] {
    if (backward) {
      k.unary_backward(lathe::kernels::UnaryOp::Gelu, vx, vgy, vy, 0.0, 0.0);
    } else {
      k.unary(lathe::kernels::UnaryOp::Gelu, vx, vy, 0.0, 0.0);
    }
  });
}

// Args: elements. Dropout with p = 0.1 (its Philox draws, kernels/cpu/philox_batch.h, are most of
// the work): x read, y written, f32. BERT-base's hidden states at B·T = 4096.
void dropout_entry(benchmark::State& state, const Target& target) {
  const int64_t n = state.range(0);
  Tensor x = randn_on(target, {n});
  Tensor y = lathe::empty({n}, target.f32());
  const auto vx = lathe::detail::make_view(x), vy = lathe::detail::make_view(y);
  const auto& k = target.table();
  run(state, target, double(n) * 8.0, [&] { k.dropout(vx, vy, 0.1, {1234, 0}); });
}

// Args: rows, classes, backward. f32 logits, label smoothing 0.1; forward reads the logits,
// backward reads them and writes dlogits.
void cross_entropy_entry(benchmark::State& state, const Target& target) {
  const int64_t rows = state.range(0), classes = state.range(1);
  const bool backward = state.range(2) == 1;
  const lathe_bench::CrossEntropyOperands o =
      lathe_bench::cross_entropy_operands(rows, classes, DType::F32, target.device);
  const lathe::kernels::CrossEntropyForwardArgs& f = o.forward;
  const lathe::kernels::CrossEntropyBackwardArgs& b = o.backward;
  const auto& k = target.table();
  const double bytes = double(rows * classes) * 4.0 * (backward ? 2.0 : 1.0);
  run(state, target, bytes, [&] {
    if (backward) {
      k.cross_entropy_backward(b);
    } else {
      k.cross_entropy_forward(f);
    }
  });
}

// Args: tokens, dim, vocab, backward. Forward is the lookup (index_select of rows: n rows read
// and written); backward the deterministic gradient (grad_out read, the [vocab, dim] gradient
// written).
void embedding_entry(benchmark::State& state, const Target& target) {
  const int64_t n = state.range(0), dim = state.range(1), vocab = state.range(2);
  const bool backward = state.range(3) == 1;
  Tensor ind = indices_on(target, n, vocab);
  Tensor w = randn_on(target, {vocab, dim}), out = lathe::empty({n, dim}, target.f32());
  Tensor g = randn_on(target, {n, dim}), gw = lathe::empty({vocab, dim}, target.f32());
  lathe::kernels::EmbeddingBackwardArgs a;
  a.indices = static_cast<const int64_t*>(ind.data_ptr());
  a.n = n;
  a.grad_out = lathe::detail::make_view(g);
  a.grad_weight = gw.data_ptr();
  a.num_embeddings = vocab;
  const auto vw = lathe::detail::make_view(w), vi = lathe::detail::make_view(ind),
             vo = lathe::detail::make_view(out);
  const auto& k = target.table();
  const double bytes = backward ? double(n * dim + vocab * dim) * 4.0 : double(2 * n * dim) * 4.0;
  run(state, target, bytes, [&] {
    if (backward) {
      k.embedding_backward(a);
    } else {
      k.index_select(vw, 0, vi, vo);
    }
  });
}

// The parameter sizes of a BERT-shaped encoder (hidden h, FFN 4h, `layers` layers, WordPiece
// vocabulary, 512 positions) as one fused AdamW step sees them: one entry per tensor.
std::vector<int64_t> bert_param_sizes(int64_t h, int64_t layers) {
  std::vector<int64_t> sizes = {30522 * h, 512 * h, 2 * h, h, h};
  for (int64_t l = 0; l < layers; ++l) {
    for (int q = 0; q < 4; ++q) {  // q, k, v, attention output: weight and bias
      sizes.push_back(h * h);
      sizes.push_back(h);
    }
    sizes.insert(sizes.end(), {h, h, 4 * h * h, 4 * h, 4 * h * h, h, h, h});
  }
  return sizes;
}

// Args: base (0 = MiniLM, 6 layers of 384; 1 = BERT-base, 12 of 768). f32 parameters: per element
// param, exp_avg and exp_avg_sq read and written, grad read (28 bytes).
void adamw_entry(benchmark::State& state, const Target& target) {
  const bool base = state.range(0) == 1;
  const std::vector<int64_t> sizes = bert_param_sizes(base ? 768 : 384, base ? 12 : 6);
  std::vector<Tensor> keep;
  std::vector<lathe::kernels::AdamWTensor> tensors;
  int64_t total = 0;
  for (int64_t n : sizes) {
    Tensor p = randn_on(target, {n}), g = randn_on(target, {n});
    Tensor m = lathe::zeros({n}, target.f32()), v = lathe::zeros({n}, target.f32());
    lathe::kernels::AdamWTensor t;
    t.param = p.data_ptr();
    t.grad = g.data_ptr();
    t.exp_avg = static_cast<float*>(m.data_ptr());
    t.exp_avg_sq = static_cast<float*>(v.data_ptr());
    t.numel = n;
    tensors.push_back(t);
    keep.insert(keep.end(), {p, g, m, v});
    total += n;
  }
  lathe::kernels::AdamWArgs a;
  a.tensors = tensors.data();
  a.count = int64_t(tensors.size());
  a.lr = 1e-4;
  a.weight_decay = 0.01;
  a.bias_correction1 = 0.1;
  a.bias_correction2 = 0.001;
  const auto& k = target.table();
  run(state, target, double(total) * 28.0, [&] { k.adamw(a); });
  state.counters["params"] = double(total);
}

// clip_grad_norm_'s measuring half: the 2-norm of every f32 gradient of the same shapes, per
// tensor and in total, in f64 (4 bytes read per element).
void grad_norm_entry(benchmark::State& state, const Target& target) {
  const bool base = state.range(0) == 1;
  const std::vector<int64_t> sizes = bert_param_sizes(base ? 768 : 384, base ? 12 : 6);
  std::vector<Tensor> keep;
  std::vector<lathe::kernels::MultiTensor> tensors;
  int64_t total = 0;
  for (int64_t n : sizes) {
    Tensor g = randn_on(target, {n});
    tensors.push_back({g.data_ptr(), n, DType::F32});
    keep.push_back(g);
    total += n;
  }
  Tensor norms = lathe::zeros({int64_t(sizes.size()) + 1},
                              lathe::TensorOptions(DType::F64).device(target.device));
  lathe::kernels::MultiTensorNormArgs a;
  a.tensors = tensors.data();
  a.count = int64_t(tensors.size());
  a.norm_type = 2.0;
  a.norms = static_cast<double*>(norms.data_ptr());
  a.total = a.norms + a.count;
  const auto& k = target.table();
  run(state, target, double(total) * 4.0, [&] { k.multi_tensor_norm(a); });
  state.counters["params"] = double(total);
}

void gelu_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "backward"})->ArgsProduct({{1 << 20, 12582912}, {0, 1}});
}
void cross_entropy_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "classes", "backward"});
  for (int64_t bwd : {0, 1}) {
    b->Args({512, 30522, bwd});
    b->Args({4096, 1000, bwd});
    b->Args({32, 2, bwd});
  }
}
void embedding_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "dim", "vocab", "backward"})
      ->ArgsProduct({{4096}, {384, 768}, {30522}, {0, 1}});
}
void dropout_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n"})->Arg(int64_t(4096) * 768);
}
void adamw_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"base"})->Arg(0)->Arg(1);
}

void BM_CpuGelu(benchmark::State& s) {
  gelu_entry(s, kCpu);
}
void BM_CpuDropout(benchmark::State& s) {
  dropout_entry(s, kCpu);
}
void BM_CpuCrossEntropy(benchmark::State& s) {
  cross_entropy_entry(s, kCpu);
}
void BM_CpuEmbedding(benchmark::State& s) {
  embedding_entry(s, kCpu);
}
void BM_CpuAdamW(benchmark::State& s) {
  adamw_entry(s, kCpu);
}
void BM_CpuGradNorm(benchmark::State& s) {
  grad_norm_entry(s, kCpu);
}
#ifdef LATHE_CUDA_BUILD
void BM_CudaAdamW(benchmark::State& s) {
  adamw_entry(s, kCuda);
}
void BM_CudaGradNorm(benchmark::State& s) {
  grad_norm_entry(s, kCuda);
}
void BM_CudaEmbedding(benchmark::State& s) {
  embedding_entry(s, kCuda);
}
#endif

}  // namespace

#define LATHE_FAMILY_BENCH(fn, shapes) \
  BENCHMARK(fn)                        \
      ->Apply(shapes)                  \
      ->Apply(lathe_bench::robust)     \
      ->UseRealTime()                  \
      ->Unit(benchmark::kMillisecond)

LATHE_FAMILY_BENCH(BM_CpuGelu, gelu_shapes);
LATHE_FAMILY_BENCH(BM_CpuDropout, dropout_shapes);
LATHE_FAMILY_BENCH(BM_CpuCrossEntropy, cross_entropy_shapes);
LATHE_FAMILY_BENCH(BM_CpuEmbedding, embedding_shapes);
LATHE_FAMILY_BENCH(BM_CpuAdamW, adamw_shapes);
LATHE_FAMILY_BENCH(BM_CpuGradNorm, adamw_shapes);
#ifdef LATHE_CUDA_BUILD
LATHE_FAMILY_BENCH(BM_CudaAdamW, adamw_shapes);
LATHE_FAMILY_BENCH(BM_CudaGradNorm, adamw_shapes);
LATHE_FAMILY_BENCH(BM_CudaEmbedding, embedding_shapes);
#endif
