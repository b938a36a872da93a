// Training steps inside CUDA graphs, on every cuda device (both simulated ones in CI, every device
// of a GPU machine). What a step must change from one replay to the next (each dropout's Philox
// state, AdamW's step count and scheduled lr) is read from device memory that every replay refills
// on the host, from the same generator and the same optimizer state the eager step uses. So a
// replayed step is compared bit for bit with the same step run eagerly: same masks, same losses,
// same weights.
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "lathe/core/autocast.h"
#include "lathe/core/checkpoint.h"
#include "lathe/core/cuda_graph.h"
#include "lathe/core/random.h"
#include "lathe/nn/bert.h"
#include "lathe/optim/fused_adamw.h"
#include "lathe/optim/optimizer.h"
#include "lathe/optim/scheduler.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

struct Batch {
  std::vector<int64_t> ids, mask, labels;
};

// Four batches of two sequences of 6 tokens, the second padded differently in each.
const std::vector<Batch> kBatches = {
    {{5, 9, 14, 3, 2, 8, 30, 7, 1, 4, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {0, 1}},
    {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1}},
    {{49, 0, 17, 17, 23, 42, 8, 8, 8, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0}, {1, 0}},
    {{6, 6, 12, 40, 2, 19, 33, 21, 4, 4, 9, 0}, {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0}, {0, 0}},
};

// A BERT classifier with dropout everywhere (hidden, attention probabilities, the head), AdamW
// with weight decay, gradient clipping and a warmup schedule: every per-step value a graph could
// bake in.
struct Trainer {
  nn::BertForSequenceClassification model;
  std::unique_ptr<optim::AdamW> optimizer;
  std::unique_ptr<optim::LRScheduler> scheduler;
  bool bf16;
  Device device;

  static nn::BertConfig config() {
    nn::BertConfig c = tiny_bert_config();
    c.hidden_dropout_prob = 0.1;
    c.attention_probs_dropout_prob = 0.2;
    return c;
  }

  Trainer(Device d, bool use_bf16, bool checkpointing)
      : model((manual_seed(5), config())), bf16(use_bf16), device(d) {
    model.bert->encoder->gradient_checkpointing = checkpointing;
    model.to(device);
    model.train();
    optim::AdamOptions o = optim::adamw_defaults();
    o.lr = 1e-2;
    optimizer = std::make_unique<optim::AdamW>(model.named_parameters(), o);
    scheduler =
        std::make_unique<optim::LRScheduler>(*optimizer, optim::linear_schedule_with_warmup(2, 6));
  }

  // zero_grad, forward, backward, clipping, the update: the loop body a capture records.
  Tensor step(const Tensor& ids, const Tensor& mask, const Tensor& labels) {
    optimizer->zero_grad();
    Tensor loss;
    {
      std::optional<AutocastGuard> amp;
      if (bf16) amp.emplace(DType::BF16, device.type);
      loss = cross_entropy(model.forward(ids, mask).to(DType::F32), labels);
    }
    loss.backward();
    (void)optim::clip_grad_norm_(*optimizer, 0.5);
    optimizer->step();
    return loss;
  }
};

// A 3x4 f32 weight on `device` that requires grad, and the named list optimizers take.
struct OneWeight {
  Tensor w;
  optim::NamedParameters named;
  explicit OneWeight(Device device)
      : w(full({3, 4}, 0.5, TensorOptions(DType::F32).device(device)).requires_grad_(true)),
        named{{"w", w}} {}
};

Tensor on(const std::vector<int64_t>& values, const Shape& shape, Device device) {
  return from_vector(values, shape, TensorOptions(DType::I64).device(device));
}

std::vector<std::vector<float>> weights_of(const nn::Module& m) {
  std::vector<std::vector<float>> out;
  for (const auto& [name, p] : m.named_parameters()) out.push_back(p.to_vector<float>());
  return out;
}

}  // namespace

TEST_CASE("graphs: a replayed training step is the eager step, masks, lr and step count included",
          "[graphs][optim]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices(true)));
  const bool bf16 = GENERATE(false, true);
  const bool checkpointing = GENERATE(false, true);
  INFO(device.str() << (bf16 ? " bf16 autocast" : " f32")
                    << (checkpointing ? ", gradient checkpointing" : ""));

  // Eager: four steps.
  Trainer eager(device, bf16, checkpointing);
  manual_seed(11);
  std::vector<float> eager_losses;
  for (const Batch& b : kBatches) {
    Tensor loss = eager.step(on(b.ids, {2, 6}, device), on(b.mask, {2, 6}, device),
                             on(b.labels, {2}, device));
    eager_losses.push_back(loss.item<float>());
    eager.scheduler->step();
  }
  const uint64_t eager_offset = philox_current().offset;

  // Graphed: the first step eagerly (it creates the optimizer's state and warms up), then the
  // same step captured once and replayed for the other three batches.
  Trainer graphed(device, bf16, checkpointing);
  manual_seed(11);
  Tensor ids = on(kBatches[0].ids, {2, 6}, device), mask = on(kBatches[0].mask, {2, 6}, device),
         labels = on(kBatches[0].labels, {2}, device);
  CHECK(graphed.step(ids, mask, labels).item<float>() == eager_losses[0]);
  graphed.scheduler->step();
  const PhiloxState before = philox_current();
  Tensor loss;
  CudaGraph graph = CudaGraph::capture(device, [&] { loss = graphed.step(ids, mask, labels); });
  // The capture ran nothing and drew nothing.
  CHECK(philox_current().offset == before.offset);
  for (const auto& [name, st] : graphed.optimizer->state()) CHECK(st.step == 1);
  for (size_t k = 1; k < kBatches.size(); ++k) {
    INFO("replay for batch " << k);
    ids.copy_(on(kBatches[k].ids, {2, 6}, device));
    mask.copy_(on(kBatches[k].mask, {2, 6}, device));
    labels.copy_(on(kBatches[k].labels, {2}, device));
    graph.replay();
    graphed.scheduler->step();
    CHECK(loss.item<float>() == eager_losses[k]);
  }
  CHECK(weights_of(graphed.model) == weights_of(eager.model));
  // The replays drew what the eager steps drew, from the same generator.
  CHECK(philox_current().offset == eager_offset);
  // The optimizer's state: step counts advanced by the replays, the moments bit for bit.
  const auto& eager_state = eager.optimizer->state();
  for (const auto& [name, st] : graphed.optimizer->state()) {
    INFO(name);
    CHECK(st.step == 4);
    CHECK(st.tensors.at("exp_avg").to_vector<float>() ==
          eager_state.at(name).tensors.at("exp_avg").to_vector<float>());
    CHECK(st.tensors.at("exp_avg_sq").to_vector<float>() ==
          eager_state.at(name).tensors.at("exp_avg_sq").to_vector<float>());
  }
  CHECK(graphed.optimizer->param_groups()[0].lr == eager.optimizer->param_groups()[0].lr);
}

TEST_CASE("graphs: each replay draws fresh random numbers, those of the eager sequence",
          "[graphs]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices(true)));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Tensor x = full({7, 33}, 2.0, f32);
  // rand, randn and dropout (odd sizes: partial Philox blocks), in one order.
  auto draw = [&] {
    return std::vector<Tensor>{rand({1001}, f32), randn({37, 5}, f32), dropout(x, 0.3, true)};
  };
  manual_seed(3);
  std::vector<std::vector<Tensor>> eager;
  for (int k = 0; k < 3; ++k) eager.push_back(draw());

  manual_seed(3);
  std::vector<Tensor> drawn;
  CudaGraph graph = CudaGraph::capture(device, [&] { drawn = draw(); });
  for (int k = 0; k < 3; ++k) {
    INFO("replay " << k);
    graph.replay();
    for (size_t i = 0; i < drawn.size(); ++i) {
      CHECK(drawn[i].to_vector<float>() == eager[size_t(k)][i].to_vector<float>());
    }
  }
  // An eager draw after the replays continues the sequence.
  manual_seed(3);
  for (int k = 0; k < 3; ++k) (void)draw();
  const std::vector<float> next = rand({5}, f32).to_vector<float>();
  manual_seed(3);
  for (int k = 0; k < 3; ++k) graph.replay();
  CHECK(rand({5}, f32).to_vector<float>() == next);
}

TEST_CASE("graphs: a graph replayed in a checkpointed block replays its masks in the re-run",
          "[graphs][checkpoint]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices(true)));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const Tensor ones = full({9, 37}, 1.0, f32);
  Tensor mask;  // the graph's output: 0 or 2 per element
  CudaGraph graph = CudaGraph::capture(device, [&] {
    NoGradGuard no_grad;
    mask = dropout(ones, 0.5, true);
  });
  // The block's output is x * mask, so x's gradient is the mask of the forward's replay, unless the
  // backward's re-run replays with another mask.
  const CheckpointFn block = [&](const std::vector<Tensor>& in) {
    graph.replay();
    return std::vector<Tensor>{in[0] * mask};
  };
  manual_seed(11);
  Tensor x = full({9, 37}, 1.0, f32).requires_grad_(true);
  const Tensor y = checkpoint(block, {x})[0];
  const std::vector<float> forward_mask = y.to_vector<float>();
  const uint64_t offset_after_forward = philox_current().offset;
  y.sum().backward();
  CHECK(x.grad().to_vector<float>() == forward_mask);
  // The re-run drew nothing from the generator, and the mask was a real draw.
  CHECK(philox_current().offset == offset_after_forward);
  const auto zeros = std::count(forward_mask.begin(), forward_mask.end(), 0.0f);
  CHECK(zeros > 0);
  CHECK(zeros < int64_t(forward_mask.size()));
}

TEST_CASE("graphs: an optimizer step a replay could not redo is refused, naming the fix",
          "[graphs][optim]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  const OneWeight weight(device);
  const Tensor& w = weight.w;
  const optim::NamedParameters& named = weight.named;
  auto backward = [&] { (w * w).sum().backward(); };
  auto capture = [&](const std::function<void()>& body) { (void)CudaGraph::capture(device, body); };

  SECTION("AdamW before its first step") {
    optim::AdamW adamw(named);
    check_error([&] { capture([&] { backward(), adamw.step(); }); },
                {"AdamW step inside CudaGraph::capture", "'w'", "no optimizer state",
                 "take one step before capturing"});
    CHECK(adamw.state().empty());  // nothing was created
  }
  SECTION("the composed update") {
    optim::AdamOptions o;
    o.fused = optim::FusedMode::Never;
    optim::AdamW adamw(named, o);
    backward();
    adamw.step();
    check_error([&] { capture([&] { backward(), adamw.step(); }); },
                {"inside CudaGraph::capture takes the fused update only", "FusedMode::Never"});
    CHECK(adamw.state().at("w").step == 1);
  }
  SECTION("SGD") {
    optim::SGD sgd(named);
    check_error([&] { capture([&] { backward(), sgd.step(); }); },
                {"SGD step inside CudaGraph::capture", "'w'", "capture AdamW::step instead"});
  }
  SECTION("fused_adamw_ called directly") {
    Tensor g = full({3, 4}, 0.1, f32), m = zeros({3, 4}, f32), v = zeros({3, 4}, f32);
    check_error([&] { capture([&] { optim::fused_adamw_({w}, {g}, {m}, {v}, {}, {}); }); },
                {"fused_adamw_ inside CudaGraph::capture", "AdamW::step"});
  }
}

TEST_CASE("graphs: replaying a step whose optimizer is gone or whose state was replaced throws",
          "[graphs][optim]") {
  if (cuda_test_devices().empty()) return;
  const Device device = GENERATE(from_range(cuda_test_devices()));
  INFO(device.str());
  const OneWeight weight(device);
  const Tensor& w = weight.w;
  auto step = [&](optim::Optimizer& opt) {
    opt.zero_grad();
    (w * w).sum().backward();
    opt.step();
  };
  auto adamw = std::make_unique<optim::AdamW>(weight.named);
  step(*adamw);
  CudaGraph graph = CudaGraph::capture(device, [&] { step(*adamw); });
  graph.replay();
  CHECK(adamw->state().at("w").step == 2);

  SECTION("the optimizer was destroyed") {
    adamw.reset();
    const std::vector<float> weights = w.to_vector<float>();
    check_error([&] { graph.replay(); }, {"CudaGraph::replay", "AdamW", "has been destroyed"});
    CHECK(w.to_vector<float>() == weights);  // nothing was queued
  }
  SECTION("its state was loaded from a state dict") {
    adamw->load_state_dict(adamw->state_dict());
    check_error([&] { graph.replay(); },
                {"CudaGraph::replay", "state of parameter 'w' was replaced", "capture"});
  }
}
