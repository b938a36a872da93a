// The fused attention kernels of the cuda device, called through the KernelTable: the tensor-core
// flash kernels (kernels/cuda/attention.cu) in bf16 and the SIMT ones (attention_simt.cu) in f32,
// in TFLOP/s with FlashAttention's convention: forward 4·B·H·T²·d (QKᵀ and
// PV), backward 2.5x the forward (its five GEMMs; lathe's deterministic backward runs seven,
// recomputing S and dP for dQ, the atomic-dQ one five, accumulating dQ with atomics), both halved
// for causal. Shapes follow the
// FlashAttention papers: B·T = 16k tokens, H·d = 2048 (H = 32 for d = 64, 16 for d = 128), so every
// T fills the GPU and each tensor is 64 MiB. Registered only in the real build (LATHE_CUDA).
//
// The f32 entries report of_cublas against cuBLAS's full-f32 GEMM (no tensor cores either).
// Each timed iteration launches kLaunches calls back to back and synchronizes once.
//   lathe-bench --benchmark_filter='BM_Cuda(Flash|Simt)Attention'
#ifdef LATHE_CUDA_BUILD

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "bench/bench_util.h"
#include "core/tensor_internal.h"
#include "kernels/cuda/attention_variant.h"
#include "kernels/device_api.h"
#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace {

using lathe::DType;
using lathe::Tensor;

const lathe::Device kCuda = lathe::Device::cuda(0);
constexpr int kLaunches = 5;
constexpr int64_t kTokens = 16384;
constexpr int64_t kHidden = 2048;

void sync() {
  lathe::kernels::device_api(lathe::DeviceType::CUDA)->synchronize(0);
}

const lathe::kernels::KernelTable& cuda_k() {
  return lathe::kernels::kernel_table(lathe::DeviceType::CUDA);
}

struct Problem {
  int64_t batch, heads, seq, dim;
  bool causal;
  Tensor q, k, v, out, lse, grad_out, grad_q, grad_k, grad_v;
  lathe::kernels::AttentionForwardArgs args;

  DType dtype;

  Problem(int64_t seq_, int64_t dim_, bool causal_, DType dtype_ = DType::BF16)
      : batch(kTokens / seq_),
        heads(kHidden / dim_),
        seq(seq_),
        dim(dim_),
        causal(causal_),
        dtype(dtype_) {
    const lathe::TensorOptions opts = lathe::TensorOptions(dtype).device(kCuda);
    const lathe::Shape shape = {batch, heads, seq, dim};
    auto randn = [&] {
      return lathe::randn(shape, lathe::TensorOptions(DType::F32).device(kCuda)).to(dtype);
    };
    q = randn();
    k = randn();
    v = randn();
    grad_out = randn();
    out = lathe::empty(shape, opts);
    grad_q = lathe::empty(shape, opts);
    grad_k = lathe::empty(shape, opts);
    grad_v = lathe::empty(shape, opts);
    lse = lathe::empty({batch * heads, seq}, lathe::TensorOptions(DType::F32).device(kCuda));
    args.dtype = dtype;
    args.batch = batch * heads;
    args.q_len = args.kv_len = seq;
    args.head_dim = args.value_dim = dim;
    args.q = lathe::detail::make_view(q);
    args.k = lathe::detail::make_view(k);
    args.v = lathe::detail::make_view(v);
    args.causal = causal;
    args.scale = 1.0 / std::sqrt(double(dim));
    args.out = lathe::detail::make_view(out);
    args.lse = lse.data_ptr();
  }

  void forward() const { cuda_k().attention_forward(args); }
  void backward(bool deterministic = true) const {
    lathe::kernels::AttentionBackwardArgs b;
    b.deterministic = deterministic;
    b.forward = args;
    b.grad_out = lathe::detail::make_view(grad_out);
    b.grad_q = lathe::detail::make_view(grad_q);
    b.grad_k = lathe::detail::make_view(grad_k);
    b.grad_v = lathe::detail::make_view(grad_v);
    cuda_k().attention_backward(b);
  }
  double forward_flops() const {
    const double f = 4.0 * double(batch * heads) * double(seq) * double(seq) * double(dim);
    return causal ? f / 2 : f;
  }
};

template <class Body>
void run(benchmark::State& state, double flops, Body&& body, bool f32 = false) {
  body();  // warm-up
  sync();
  for (auto _ : state) {
    for (int i = 0; i < kLaunches; ++i) body();
    sync();
  }
  state.counters["TFLOP/s"] =
      benchmark::Counter(flops * kLaunches / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["of_cublas"] = lathe_bench::fraction_of(
      flops * kLaunches, lathe_bench::cuda_gemm_ceiling_tflops(f32) * 1e12);
}

// Args: T, head dim, causal.
void BM_CudaFlashAttentionForward(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  run(state, p.forward_flops(), [&] { p.forward(); });
}

void BM_CudaFlashAttentionBackward(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  p.forward();
  run(state, 2.5 * p.forward_flops(), [&] { p.backward(); });
}

// The backward with FlashAttention-2's atomic dQ accumulation (AttentionBackwardArgs::
// deterministic = false), same shapes and FLOP convention.
void BM_CudaFlashAttentionBackwardAtomic(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  p.forward();
  run(state, 2.5 * p.forward_flops(), [&] { p.backward(false); });
}

// Attention dropout (p = 0.1, BERT's), whose Philox mask every kernel draws again from (seed,
// offset): the forward and the deterministic backward with and without it, side by side, at BERT's
// T = 128 and at T = 2048, d = 64. Same FLOP convention (the draws are not counted). Args: T,
// head dim, backward, dropout.
void BM_CudaFlashAttentionDropout(benchmark::State& state) {
  Problem p(state.range(0), state.range(1), false);
  if (state.range(3) != 0) {
    p.args.dropout_p = 0.1;
    p.args.philox = {1234, 0};
  }
  if (state.range(2) == 0) {
    run(state, p.forward_flops(), [&] { p.forward(); });
  } else {
    p.forward();
    run(state, 2.5 * p.forward_flops(), [&] { p.backward(); });
  }
}

// The kernel variants of kernels/cuda/attention_variant.h against the default (variant 0), side by
// side in one run, where the variants exist (bf16, d = 64). Args: T, head dim, causal, variant.
class VariantScope {
 public:
  explicit VariantScope(lathe::kernels::cuda::FlashAttentionVariant v) {
    lathe::kernels::cuda::set_flash_attention_variant(v);
  }
  ~VariantScope() { lathe::kernels::cuda::set_flash_attention_variant({}); }
  VariantScope(const VariantScope&) = delete;
  VariantScope& operator=(const VariantScope&) = delete;
};

// The sm_90a kernels (forward variants 2-4, backward variants 2 and 4) are not confirmed on
// hardware yet: scripts/gpu-check.sh sets LATHE_BENCH_SKIP_SM90=1 for its main run and times them
// in processes of their own, so that a kernel that hangs or traps costs only its own entries.
bool skip_sm90(benchmark::State& state, int variant) {
  const char* skip = std::getenv("LATHE_BENCH_SKIP_SM90");
  if (variant < 2 || skip == nullptr || std::string_view(skip) != "1") return false;
  state.SkipWithError("LATHE_BENCH_SKIP_SM90=1: sm_90a variants are timed separately");
  return true;
}

void BM_CudaFlashAttentionForwardVariant(benchmark::State& state) {
  if (skip_sm90(state, int(state.range(3)))) return;
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  const VariantScope variant({int(state.range(3)), 0});
  try {
    p.forward();  // variants 2 to 4 refuse GPUs other than sm_90
  } catch (const lathe::Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  run(state, p.forward_flops(), [&] { p.forward(); });
}

void BM_CudaFlashAttentionBackwardVariant(benchmark::State& state) {
  if (skip_sm90(state, int(state.range(3)))) return;
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  p.forward();
  const VariantScope variant({0, int(state.range(3))});
  try {
    p.backward();  // variants 2 and 4 refuse GPUs other than sm_90
  } catch (const lathe::Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  run(state, 2.5 * p.forward_flops(), [&] { p.backward(); });
}

void BM_CudaFlashAttentionBackwardAtomicVariant(benchmark::State& state) {
  if (skip_sm90(state, int(state.range(3)))) return;
  const Problem p(state.range(0), state.range(1), state.range(2) != 0);
  p.forward();
  const VariantScope variant({0, int(state.range(3))});
  try {
    p.backward(false);  // variants 2 and 4 refuse GPUs other than sm_90
  } catch (const lathe::Error& e) {
    state.SkipWithError(e.what());
    return;
  }
  run(state, 2.5 * p.forward_flops(), [&] { p.backward(false); });
}

// T = 2048 only (an A/B, not a sweep), causal and not. The atomic-dQ backward's: variants 0 and 1
// at d = 64, and the sm_90a ones (2: FlashAttention-3's 5 GEMMs on wgmma, 4: the same on the TMA
// pipeline) at d = 64 and 128, with the default beside them at d = 128.
void atomic_variant_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t c : {int64_t(0), int64_t(1)}) {
    for (int64_t variant : {0, 1, 2, 4}) b->Args({2048, 64, c, variant});
    for (int64_t variant : {0, 2, 4}) b->Args({2048, 128, c, variant});
  }
}

// The deterministic backward's: variant 1 (non-causal only: its dK/dV kernel is the atomic one's
// minus the dQ tile) and variants 2 and 4 (the sm_90a wgmma kernels; 4 with the dK/dV kernel on
// the TMA pipeline) at d = 64 and 128, causal too, with the default beside them at d = 128.
void backward_variant_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t c : {int64_t(0), int64_t(1)}) {
    for (int64_t variant : {0, 1, 2, 4}) {
      if (c == 0 || variant != 1) b->Args({2048, 64, c, variant});
    }
    for (int64_t variant : {0, 2, 4}) b->Args({2048, 128, c, variant});
  }
}

// The forward's: variants 0 and 1 at d = 64 as above, and variants 2, 3 and 4 (the sm_90a wgmma
// kernels: 3 with intra-warpgroup pipelining, 4 with FlashAttention-3's TMA producer and
// ping-pong too) at d = 64 and 128, with the default beside them at d = 128 too.
void forward_variant_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t c : {int64_t(0), int64_t(1)}) {
    for (int64_t variant : {0, 1, 2, 3, 4}) b->Args({2048, 64, c, variant});
    for (int64_t variant : {0, 2, 3, 4}) b->Args({2048, 128, c, variant});
  }
  // The moonshot's shape (FlashAttention-3 at d = 64, T >= 2k) at its long end too.
  for (int64_t variant : {0, 4}) b->Args({8192, 64, 0, variant});
}

// f32 on the SIMT kernels; BERT's own size (T 128, d 64) first.
void BM_CudaSimtAttentionForward(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2) != 0, DType::F32);
  run(
      state, p.forward_flops(), [&] { p.forward(); }, true);
}

void BM_CudaSimtAttentionBackward(benchmark::State& state) {
  const Problem p(state.range(0), state.range(1), state.range(2) != 0, DType::F32);
  p.forward();
  run(
      state, 2.5 * p.forward_flops(), [&] { p.backward(); }, true);
}

void simt_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dim : {64, 128}) {
    for (int64_t seq : {128, 512, 2048}) b->Args({seq, dim, 0});
  }
  b->Args({2048, 64, 1});
}

void flash_shapes(benchmark::internal::Benchmark* b) {
  for (int64_t dim : {64, 128}) {
    for (int64_t seq : {512, 1024, 2048, 4096, 8192}) b->Args({seq, dim, 0});
  }
  b->Args({2048, 128, 1});
  b->Args({2048, 64, 1});
}

}  // namespace

BENCHMARK(BM_CudaFlashAttentionForward)
    ->ArgNames({"T", "d", "causal"})
    ->Apply(flash_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionBackward)
    ->ArgNames({"T", "d", "causal"})
    ->Apply(flash_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionBackwardAtomic)
    ->ArgNames({"T", "d", "causal"})
    ->Apply(flash_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionDropout)
    ->ArgNames({"T", "d", "backward", "dropout"})
    ->ArgsProduct({{128, 2048}, {64}, {0, 1}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionForwardVariant)
    ->ArgNames({"T", "d", "causal", "variant"})
    ->Apply(forward_variant_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionBackwardVariant)
    ->ArgNames({"T", "d", "causal", "variant"})
    ->Apply(backward_variant_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaFlashAttentionBackwardAtomicVariant)
    ->ArgNames({"T", "d", "causal", "variant"})
    ->Apply(atomic_variant_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaSimtAttentionForward)
    ->ArgNames({"T", "d", "causal"})
    ->Apply(simt_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CudaSimtAttentionBackward)
    ->ArgNames({"T", "d", "causal"})
    ->Apply(simt_shapes)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

#endif  // LATHE_CUDA_BUILD
