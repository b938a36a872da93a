// End to end: one training step (forward, cross-entropy, backward, clip, fused AdamW) and one
// inference pass of BERT-shaped sequence classifiers, in examples/s and tokens/s. Shapes:
// MiniLM (6 layers, hidden 384, 12 heads, FFN 1536) and BERT-base (12, 768, 12, 3072), batch 32,
// T = 64 and 128, random weights (speed does not depend on them), vocabulary 30,522.
// bench/compare_torch.py runs the same shapes in PyTorch for the ratio table of
// docs/benchmarks.md.
#include <benchmark/benchmark.h>

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/cpu/gemm_bf16.h"
#include "lathe/lathe.h"

namespace {

using namespace lathe;

nn::BertConfig shape_config(int64_t layers, int64_t hidden, int64_t heads, int64_t ffn) {
  nn::BertConfig c;
  c.vocab_size = 30522;
  c.num_hidden_layers = layers;
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.intermediate_size = ffn;
  c.set_num_labels(2);
  return c;
}

struct Setup {
  std::shared_ptr<nn::BertForSequenceClassification> model;
  Tensor ids, mask, labels;
};

Setup make_setup(const benchmark::State& state) {
  const bool base = state.range(0) == 1;
  const int64_t batch = 32, seq = state.range(1);
  manual_seed(0);
  Setup s;
  s.model = std::make_shared<nn::BertForSequenceClassification>(
      base ? shape_config(12, 768, 12, 3072) : shape_config(6, 384, 12, 1536), nn::Pooling::Cls);
  s.ids = (rand({batch, seq}) * 30000.0 + 100.0).to(DType::I64);
  s.mask = ones({batch, seq}, DType::I64);
  s.labels = (rand({batch}) * 2.0).to(DType::I64);
  return s;
}

void set_counters(benchmark::State& state, int64_t seq) {
  const double examples = 32.0 * double(state.iterations());
  state.counters["examples/s"] = benchmark::Counter(examples, benchmark::Counter::kIsRate);
  state.counters["tokens/s"] =
      benchmark::Counter(examples * double(seq), benchmark::Counter::kIsRate);
}

// A setup's model in train mode and AdamW over its parameters. step(): forward (under autocast to
// `autocast` on the batch's device type, when given), cross-entropy, backward, clipping, AdamW;
// returns the loss, whose read waits for the device.
struct Trainer {
  explicit Trainer(Setup setup) : s(std::move(setup)) {
    s.model->train();
    opt = std::make_unique<optim::AdamW>(
        optim::no_decay_param_groups(s.model->named_parameters(), 5e-5, 0.01));
  }
  float step(std::optional<DType> autocast = std::nullopt) {
    Tensor loss;
    {
      std::optional<AutocastGuard> guard;
      if (autocast) guard.emplace(*autocast, s.ids.device().type);
      loss = cross_entropy(s.model->forward(s.ids, s.mask), s.labels);
    }
    loss.backward();
    optim::clip_grad_norm_(*opt, 1.0);
    opt->step();
    opt->zero_grad();
    return loss.item<float>();
  }
  Setup s;
  std::unique_ptr<optim::AdamW> opt;
};

void BM_TrainStep(benchmark::State& state) {
  Trainer t(make_setup(state));
  for (auto _ : state) benchmark::DoNotOptimize(t.step());
  set_counters(state, state.range(1));
}

void BM_Inference(benchmark::State& state) {
  Setup s = make_setup(state);
  s.model->eval();
  NoGradGuard no_grad;
  for (auto _ : state) {
    Tensor logits = s.model->forward(s.ids, s.mask);
    benchmark::DoNotOptimize(logits.to_vector<float>());
  }
  set_counters(state, state.range(1));
}

// Attention forward at MiniLM's shape (B 32, 12 heads, head dim 32): the fused op against its
// composite reference (scores materialized), T from the range.
void BM_Attention(benchmark::State& state) {
  const bool fused = state.range(0) == 1;
  const int64_t seq = state.range(1);
  manual_seed(0);
  const Tensor q = randn({32, 12, seq, 32}), k = randn({32, 12, seq, 32}),
               v = randn({32, 12, seq, 32});
  NoGradGuard no_grad;
  for (auto _ : state) {
    Tensor out =
        fused ? scaled_dot_product_attention(q, k, v) : scaled_dot_product_attention_slow(q, k, v);
    benchmark::DoNotOptimize(out.data_ptr());
  }
  const double flops = 4.0 * 32 * 12 * double(seq) * double(seq) * 32;
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * double(state.iterations()), benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
  state.counters["of_sgemm"] =
      lathe_bench::fraction_of(flops, lathe_bench::cpu_sgemm_ceiling_gflops() * 1e9);
}
BENCHMARK(BM_Attention)
    ->ArgNames({"fused", "T"})
    ->ArgsProduct({{0, 1}, {64, 128, 256, 512}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Attention forward and backward as a BERT layer runs it (MiniLM's shape, B 32, 12 heads, head
// dim 32, T 128, a key-padding mask, dropout 0.1): on [B, H, T, d] head views of [B, T, H * d]
// projections (heads:1, which the op reads and writes in place, the gradients flowing back through
// the views), or on leaves that are contiguous [B, H, T, d] tensors (heads:0), the layout the op
// copied the views to before the cpu kernel took strided rows: the floor heads:1 can reach. bf16:1
// runs it on bf16 tensors (autocast's dtype for attention).
void BM_AttentionTrain(benchmark::State& state) {
  const bool heads = state.range(0) == 1;
  const DType dtype = state.range(1) == 1 ? DType::BF16 : DType::F32;
  const int64_t B = 32, H = 12, T = 128, d = 32;
  manual_seed(0);
  std::vector<Tensor> leaves;
  for (int i = 0; i < 3; ++i) {
    Tensor x = randn({B, T, H * d}).to(dtype);
    leaves.push_back(heads ? x : x.view({B, T, H, d}).transpose(1, 2).contiguous());
    leaves.back().requires_grad_(true);
  }
  const Tensor mask = ones({B, 1, 1, T}, DType::Bool);
  const Tensor grad = randn({B, T, H * d}).to(dtype).view({B, T, H, d}).transpose(1, 2);
  for (auto _ : state) {
    std::vector<Tensor> in;
    for (const Tensor& x : leaves) in.push_back(heads ? x.view({B, T, H, d}).transpose(1, 2) : x);
    Tensor out = scaled_dot_product_attention(in[0], in[1], in[2], mask, false, 0.1);
    out.backward(grad);
    benchmark::DoNotOptimize(leaves[0].grad().data_ptr());
    for (Tensor& x : leaves) x.zero_grad();
  }
}
BENCHMARK(BM_AttentionTrain)
    ->ArgNames({"heads", "bf16"})
    ->ArgsProduct({{0, 1}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: {0 = MiniLM shape | 1 = BERT-base shape, T}.
void model_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"base", "T"})
      ->ArgsProduct({{0, 1}, {64, 128}})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
}
BENCHMARK(BM_TrainStep)->Apply(model_shapes)->MinTime(5.0);

// The BM_TrainStep step under bf16 autocast on the cpu: matmuls and linear layers in bf16 on each
// bf16 GEMM path (kernels/cpu/gemm_bf16.h: path 0 widens to f32 for SGEMM, the cpu's only bf16 path
// before; 1 AVX512-BF16 dot products; 2 AMX tiles; a path the processor lacks is skipped),
// everything else as autocast's policy says. Args: {base, T, path}.
void BM_TrainStepBf16(benchmark::State& state) {
  const auto path = kernels::cpu::Bf16Gemm(state.range(2));
  if (!kernels::cpu::bf16_gemm_supported(path)) {
    state.SkipWithError(
        (std::string("no ") + kernels::cpu::bf16_gemm_name(path) + " on this processor").c_str());
    return;
  }
  const kernels::cpu::Bf16Gemm previous = kernels::cpu::bf16_gemm_path();
  kernels::cpu::set_bf16_gemm_path(path);
  Trainer t(make_setup(state));
  t.step(DType::BF16);  // warm: AdamW's moments, the packs' scratch, the allocator's cache
  for (auto _ : state) benchmark::DoNotOptimize(t.step(DType::BF16));
  kernels::cpu::set_bf16_gemm_path(previous);
  set_counters(state, state.range(1));
}
BENCHMARK(BM_TrainStepBf16)
    ->ArgNames({"base", "T", "path"})
    ->ArgsProduct({{0, 1}, {32, 128}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(5.0);

// The step with and without gradient checkpointing (BertEncoder::gradient_checkpointing): the
// time it costs (one more forward of each layer) beside the memory it saves. peak_MiB: the
// allocator's peak over one step, weights, gradients and AdamW's moments included.
// Args: {base, T, checkpointing}.
void BM_TrainStepCheckpointing(benchmark::State& state) {
  Trainer t(make_setup(state));
  t.s.model->bert->encoder->gradient_checkpointing = state.range(2) == 1;
  t.step();  // AdamW's moments exist from here on, as in a long run
  reset_peak_memory_stats(Device::cpu());
  for (auto _ : state) benchmark::DoNotOptimize(t.step());
  state.counters["peak_MiB"] =
      double(memory_stats(Device::cpu()).peak_allocated_bytes) / double(1 << 20);
  set_counters(state, state.range(1));
}
BENCHMARK(BM_TrainStepCheckpointing)
    ->ArgNames({"base", "T", "checkpointing"})
    ->ArgsProduct({{0, 1}, {128}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(5.0);
BENCHMARK(BM_Inference)->Apply(model_shapes)->MinTime(3.0);

// A server's choice on the cpu: one model shared by `requests` host threads, each classifying its
// own batches (8 x 64 tokens, MiniLM) under NoGradGuard, with `per_thread` OpenMP threads each
// (lathe::set_num_threads is process-wide; 0: the cores divided among the threads). One request
// thread with every core parallelizes each GEMM; several split the cores between whole requests,
// which wins when single requests are too small to use every core. per_thread = cores with several
// request threads oversubscribes (each thread runs a full team): what worker threads got before
// session 18, when the setting did not reach them. Args: {requests, per_thread}.
void BM_InferenceConcurrent(benchmark::State& state) {
  const int requests = int(state.range(0));
  const int cores = std::max(1, int(std::thread::hardware_concurrency()));
  const int per_thread = state.range(1) > 0 ? int(state.range(1)) : std::max(1, cores / requests);
  manual_seed(0);
  nn::BertForSequenceClassification model(shape_config(6, 384, 12, 1536), nn::Pooling::Cls);
  model.eval();
  const Tensor ids = (rand({8, 64}) * 30000.0 + 100.0).to(DType::I64);
  const Tensor mask = ones({8, 64}, DType::I64);
  const int previous = get_num_threads();
  set_num_threads(per_thread);
  constexpr int kBatchesPerThread = 4;
  auto serve = [&] {
    NoGradGuard no_grad;
    for (int i = 0; i < kBatchesPerThread; ++i) {
      benchmark::DoNotOptimize(model.forward(ids, mask).to_vector<float>());
    }
  };
  serve();  // warm the allocator's cache
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int t = 0; t < requests; ++t) threads.emplace_back(serve);
    for (std::thread& t : threads) t.join();
  }
  set_num_threads(previous);
  const double examples = 8.0 * kBatchesPerThread * requests * double(state.iterations());
  state.counters["examples/s"] = benchmark::Counter(examples, benchmark::Counter::kIsRate);
  state.counters["omp_threads"] = per_thread;
}
BENCHMARK(BM_InferenceConcurrent)
    ->ArgNames({"requests", "per_thread"})
    ->Args({1, 0})
    ->Args({2, 0})
    ->Args({4, 0})
    ->Args({2, int64_t(std::max(1u, std::thread::hardware_concurrency()))})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// Inference under bf16 autocast on the cpu (the default bf16 GEMM path: AMX, AVX512-BF16 or
// widened f32). cache 0: one AutocastGuard per forward, so every linear's weight and bias is cast
// again each time; cache 1: one guard held over all forwards (what lathe-classify and
// lathe-encode do), so autocast's cast cache converts each weight once: a fixed cost per forward
// that shows at short sequences. Args: {base, T, cache}.
void BM_InferenceBf16(benchmark::State& state) {
  Setup s = make_setup(state);
  s.model->eval();
  NoGradGuard no_grad;
  std::optional<AutocastGuard> region;
  if (state.range(2) == 1) region.emplace(DType::BF16, DeviceType::CPU);
  auto run = [&] {
    AutocastGuard amp(DType::BF16, DeviceType::CPU);
    return s.model->forward(s.ids, s.mask).to(DType::F32).to_vector<float>();
  };
  run();
  for (auto _ : state) benchmark::DoNotOptimize(run());
  set_counters(state, state.range(1));
}
BENCHMARK(BM_InferenceBf16)
    ->ArgNames({"base", "T", "cache"})
    ->ArgsProduct({{0, 1}, {16, 128}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

#ifdef LATHE_CUDA_BUILD
// The same step on the GPU (real CUDA build only): f32, or bf16 autocast with f32 master weights
// (PyTorch's torch.autocast recipe). bench/compare_torch_gpu.py times PyTorch eager and
// torch.compile on the same shapes. Args: {base, T, bf16}.
Setup make_cuda_setup(const benchmark::State& state) {
  Setup s = make_setup(state);
  const Device cuda = Device::cuda(0);
  s.model->to(cuda);
  s.ids = s.ids.to(cuda);
  s.mask = s.mask.to(cuda);
  s.labels = s.labels.to(cuda);
  return s;
}

void BM_CudaTrainStep(benchmark::State& state) {
  Trainer t(make_cuda_setup(state));
  const std::optional<DType> autocast =
      state.range(2) == 1 ? std::optional<DType>(DType::BF16) : std::nullopt;
  t.step(autocast);  // warm-up: allocator pools, cuBLASLt heuristics
  for (auto _ : state) benchmark::DoNotOptimize(t.step(autocast));
  set_counters(state, state.range(1));
}

// bf16 1: an AutocastGuard per forward (every weight cast again, two cast launches per linear);
// bf16 2: one guard held over all forwards, so autocast's cast cache casts each weight once.
void BM_CudaInference(benchmark::State& state) {
  Setup s = make_cuda_setup(state);
  s.model->eval();
  NoGradGuard no_grad;
  const bool bf16 = state.range(2) >= 1;
  std::optional<AutocastGuard> region;
  if (state.range(2) == 2) region.emplace(DType::BF16, DeviceType::CUDA);
  auto run = [&] {
    std::optional<AutocastGuard> autocast;
    if (bf16) autocast.emplace(DType::BF16, DeviceType::CUDA);
    return s.model->forward(s.ids, s.mask).to(DType::F32).to_vector<float>();
  };
  run();
  for (auto _ : state) benchmark::DoNotOptimize(run());
  set_counters(state, state.range(1));
}

// The MiniLM-shaped classifier (random weights, seed 0) on cuda:0 in eval mode, as a server holds
// it.
std::unique_ptr<nn::BertForSequenceClassification> cuda_minilm_for_serving() {
  manual_seed(0);
  auto model = std::make_unique<nn::BertForSequenceClassification>(shape_config(6, 384, 12, 1536),
                                                                   nn::Pooling::Cls);
  model->to(Device::cuda(0));
  model->eval();
  return model;
}

// A server on the GPU: one MiniLM model shared by `requests` host threads, each classifying its
// own small batches (8 x 64 tokens, bf16 autocast) and reading the logits back. streams 0: every
// thread on the default stream, so the GPU runs one request's kernels at a time; streams 1: each
// thread on a stream of its own (lathe/core/stream.h), so small requests' kernels can overlap.
// Args: {requests, streams}.
void BM_CudaInferenceStreams(benchmark::State& state) {
  const int requests = int(state.range(0));
  const bool own_streams = state.range(1) == 1;
  const Device cuda = Device::cuda(0);
  const std::unique_ptr<nn::BertForSequenceClassification> model = cuda_minilm_for_serving();
  const Tensor ids = (rand({8, 64}) * 30000.0 + 100.0).to(DType::I64).to(cuda);
  const Tensor mask = ones({8, 64}, DType::I64).to(cuda);
  std::vector<Stream> streams;
  for (int t = 0; t < requests; ++t) {
    streams.push_back(own_streams ? Stream::create(cuda) : Stream::default_stream(cuda));
  }
  constexpr int kBatchesPerThread = 8;
  auto serve = [&](int t) {
    StreamGuard guard(streams[size_t(t)]);
    NoGradGuard no_grad;
    AutocastGuard autocast(DType::BF16, DeviceType::CUDA);
    for (int i = 0; i < kBatchesPerThread; ++i) {
      benchmark::DoNotOptimize(model->forward(ids, mask).to(DType::F32).to_vector<float>());
    }
  };
  for (int t = 0; t < requests; ++t) serve(t);  // each stream's allocator pool and workspace
  for (auto _ : state) {
    std::vector<std::thread> threads;
    for (int t = 0; t < requests; ++t) threads.emplace_back(serve, t);
    for (std::thread& thread : threads) thread.join();
  }
  const double examples = 8.0 * kBatchesPerThread * requests * double(state.iterations());
  state.counters["examples/s"] = benchmark::Counter(examples, benchmark::Counter::kIsRate);
}

// One request at a time, as a latency-bound server answers them: copy the request's token ids into
// the device, run the MiniLM classifier (bf16 autocast, T 64) and read the logits back. graph 0:
// the eager forward (one autocast guard held, so weights are cast once); graph 1: the same forward
// captured once into a CudaGraph (lathe/core/cuda_graph.h) and replayed, one launch instead of a
// few hundred. Args: {batch, graph}.
void BM_CudaInferenceGraph(benchmark::State& state) {
  const int64_t batch = state.range(0);
  const bool use_graph = state.range(1) == 1;
  const Device cuda = Device::cuda(0);
  const std::unique_ptr<nn::BertForSequenceClassification> model = cuda_minilm_for_serving();
  const Tensor host_ids = (rand({batch, 64}) * 30000.0 + 100.0).to(DType::I64);
  Tensor ids = zeros({batch, 64}, TensorOptions(DType::I64).device(cuda));
  const Tensor mask = ones({batch, 64}, TensorOptions(DType::I64).device(cuda));
  NoGradGuard no_grad;
  AutocastGuard autocast(DType::BF16, DeviceType::CUDA);
  Tensor logits;
  std::optional<CudaGraph> graph;
  if (use_graph) {
    graph.emplace(CudaGraph::capture(cuda, [&] { logits = model->forward(ids, mask); }));
  }
  auto answer = [&] {
    ids.copy_(host_ids);
    if (graph) {
      graph->replay();
    } else {
      logits = model->forward(ids, mask);
    }
    return logits.to(DType::F32).to_vector<float>();
  };
  answer();
  for (auto _ : state) benchmark::DoNotOptimize(answer());
  state.counters["requests/s"] =
      benchmark::Counter(double(state.iterations()), benchmark::Counter::kIsRate);
}

// A training step of the MiniLM-shaped classifier (bf16 autocast, T 64, dropout on as in
// fine-tuning), the loss read back each step. graph 0: eager, every kernel launched by the host;
// graph 1: forward, backward, clipping and AdamW captured once into a CudaGraph and replayed (each
// replay refills the dropout draws' Philox states and AdamW's step scalars from the host, see
// lathe/core/cuda_graph.h). Small batches are host-bound, which a graph removes. Args: {batch,
// graph}.
void BM_CudaTrainStepGraph(benchmark::State& state) {
  const int64_t batch = state.range(0);
  const bool use_graph = state.range(1) == 1;
  const Device cuda = Device::cuda(0);
  manual_seed(0);
  Setup s;
  s.model = std::make_shared<nn::BertForSequenceClassification>(shape_config(6, 384, 12, 1536),
                                                                nn::Pooling::Cls);
  s.model->to(cuda);
  s.ids = (rand({batch, 64}) * 30000.0 + 100.0).to(DType::I64).to(cuda);
  s.mask = ones({batch, 64}, TensorOptions(DType::I64).device(cuda));
  s.labels = (rand({batch}) * 2.0).to(DType::I64).to(cuda);
  Trainer t(std::move(s));
  Tensor loss;
  auto body = [&] {
    t.opt->zero_grad();
    {
      AutocastGuard autocast(DType::BF16, DeviceType::CUDA);
      loss = cross_entropy(t.s.model->forward(t.s.ids, t.s.mask), t.s.labels);
    }
    loss.backward();
    optim::clip_grad_norm_(*t.opt, 1.0);
    t.opt->step();
  };
  body();  // warm-up: the optimizer's state, allocator pools, cuBLASLt heuristics
  std::optional<CudaGraph> graph;
  if (use_graph) graph.emplace(CudaGraph::capture(cuda, body));
  auto step = [&] {
    if (graph) {
      graph->replay();
    } else {
      body();
    }
    return loss.item<float>();
  };
  step();
  for (auto _ : state) benchmark::DoNotOptimize(step());
  const double examples = double(batch) * double(state.iterations());
  state.counters["examples/s"] = benchmark::Counter(examples, benchmark::Counter::kIsRate);
}

// The f32 step with the GEMMs in TF32 (set_float32_matmul_precision("high")), beside
// BM_CudaTrainStep's f32 and bf16 steps. Args: {base, T}.
void BM_CudaTrainStepTf32(benchmark::State& state) {
  Trainer t(make_cuda_setup(state));
  const MatmulPrecision saved = float32_matmul_precision();
  set_float32_matmul_precision(MatmulPrecision::High);
  t.step();
  for (auto _ : state) benchmark::DoNotOptimize(t.step());
  set_float32_matmul_precision(saved);
  set_counters(state, state.range(1));
}
BENCHMARK(BM_CudaTrainStepTf32)
    ->ArgNames({"base", "T"})
    ->ArgsProduct({{0, 1}, {128}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);

// BM_TrainStepCheckpointing on the GPU, bf16 autocast. Args: {base, T, checkpointing}.
void BM_CudaTrainStepCheckpointing(benchmark::State& state) {
  Trainer t(make_cuda_setup(state));
  t.s.model->bert->encoder->gradient_checkpointing = state.range(2) == 1;
  t.step(DType::BF16);
  reset_peak_memory_stats(Device::cuda(0));
  for (auto _ : state) benchmark::DoNotOptimize(t.step(DType::BF16));
  state.counters["peak_MiB"] =
      double(memory_stats(Device::cuda(0)).peak_allocated_bytes) / double(1 << 20);
  set_counters(state, state.range(1));
}

BENCHMARK(BM_CudaTrainStepCheckpointing)
    ->ArgNames({"base", "T", "checkpointing"})
    ->ArgsProduct({{1}, {128, 512}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_CudaTrainStep)
    ->ArgNames({"base", "T", "bf16"})
    ->ArgsProduct({{0, 1}, {128}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);
BENCHMARK(BM_CudaInferenceStreams)
    ->ArgNames({"requests", "streams"})
    ->ArgsProduct({{1, 2, 4}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_CudaTrainStepGraph)
    ->ArgNames({"batch", "graph"})
    ->ArgsProduct({{8, 32}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_CudaInferenceGraph)
    ->ArgNames({"batch", "graph"})
    ->ArgsProduct({{1, 8, 32}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(0.5);
BENCHMARK(BM_CudaInference)
    ->ArgNames({"base", "T", "bf16"})
    ->ArgsProduct({{0, 1}, {128}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);
#endif  // LATHE_CUDA_BUILD

}  // namespace
