// A training step on the cuda device must not make the host wait for the device: each wait drains
// the stream, and the device then idles while the host queues the next kernels one by one. The
// runtime counts every wait (cuda::host_waits); these tests hold the fine-tuning loop's step
// (the batch's upload, embeddings, attention with a padding mask, cross-entropy, backward, gradient
// clipping, AdamW, the schedule) to none, in f32 and under bf16 autocast. Reading the loss is the
// one wait a loop chooses to make.
//
// Errors that kernels find in their data (an index or a target out of range) therefore reach the
// host at its next wait instead of at the call (kernels/cuda/device_report.h); the tests below
// check that they do, with the op, the value and the limit in the message, and that the device
// works normally afterwards.
#include <catch2/catch.hpp>

#include "cuda/kernel_test_util.h"
#include "kernels/cuda/device_report.h"
#include "kernels/cuda/runtime.h"

using namespace lathe;
using kernel_test::kCuda;
using testing::check_error;

namespace {

nn::BertConfig small_bert() {
  nn::BertConfig c = testing::tiny_bert_config();
  c.vocab_size = 120;
  c.hidden_size = 64;
  c.num_attention_heads = 2;  // head_dim 32: the flash kernels
  c.intermediate_size = 96;
  c.max_position_embeddings = 32;
  c.hidden_dropout_prob = 0.1;
  c.attention_probs_dropout_prob = 0.1;
  c.set_num_labels(3);
  return c;
}

struct Batch {
  Tensor ids, mask, types, labels;
};

// Two sequences of 20 tokens, the second padded after 13, built on the host and uploaded.
Batch make_batch() {
  std::vector<int64_t> ids(40), mask(40), types(40, 0);
  for (int i = 0; i < 40; ++i) {
    const bool pad = i >= 20 + 13;
    ids[size_t(i)] = pad ? 0 : 1 + (i * 37) % 119;
    mask[size_t(i)] = pad ? 0 : 1;
    if (i % 20 >= 10 && !pad) types[size_t(i)] = 1;
  }
  Batch b;
  b.ids = from_vector(ids, {2, 20}).to(kCuda);
  b.mask = from_vector(mask, {2, 20}).to(kCuda);
  b.types = from_vector(types, {2, 20}).to(kCuda);
  b.labels = from_vector(std::vector<int64_t>{2, 0}, {2}).to(kCuda);
  return b;
}

void check_step_without_waits(bool bf16_autocast) {
  manual_seed(7);
  nn::BertForSequenceClassification model(small_bert());
  model.to(kCuda);
  optim::AdamW opt(optim::no_decay_param_groups(model.named_parameters(), 1e-3, 0.01));
  optim::LRScheduler sched(opt, optim::linear_schedule_with_warmup(2, 10));
  auto step = [&] {
    const Batch b = make_batch();
    opt.zero_grad();
    Tensor loss;
    {
      std::optional<AutocastGuard> autocast;
      if (bf16_autocast) autocast.emplace(DType::BF16);
      loss = cross_entropy(model.forward(b.ids, b.mask, b.types), b.labels);
    }
    loss.backward();
    optim::clip_grad_norm_(opt, 1.0);
    opt.step();
    sched.step();
    return loss;
  };
  step();  // first step: the optimizer's state is created
  const uint64_t before = cuda::host_waits();
  const Tensor loss = step();
  CHECK(cuda::host_waits() - before == 0);
  const double value = loss.item<double>();
  CHECK(cuda::host_waits() - before == 1);
  CHECK(std::isfinite(value));
}

}  // namespace

TEST_CASE("host waits: a training step on cuda makes none", "[host-waits]") {
  SECTION("f32") {
    check_step_without_waits(false);
  }
  SECTION("bf16 autocast") {
    check_step_without_waits(true);
  }
}

TEST_CASE("host waits: bad data a kernel finds is raised at the next wait, once", "[host-waits]") {
  const Tensor w = ones({10, 4}, TensorOptions(DType::F32).device(kCuda));
  const Tensor bad_ids = from_vector(std::vector<int64_t>{1, 10, 2}, {3}).to(kCuda);
  const Tensor logits = zeros({3, 4}, TensorOptions(DType::F32).device(kCuda));
  const Tensor bad_targets = from_vector(std::vector<int64_t>{0, -100, 5}, {3}).to(kCuda);

  SECTION("an embedding index") {
    const uint64_t before = cuda::host_waits();
    const Tensor out = embedding(bad_ids, w);
    CHECK(cuda::host_waits() == before);
    check_error([&] { synchronize(kCuda); },
                {"embedding: index 10 (at position 1) is out of range for 10 embeddings",
                 "LATHE_CUDA_SYNC_CHECKS"});
    // The bad position reads as zeros, the others as the table's rows.
    CHECK(out.to(Device::cpu()).sum().item<double>() == 8.0);
  }
  SECTION("a class target (ignore_index is not one)") {
    const uint64_t before = cuda::host_waits();
    const Tensor loss = cross_entropy(logits, bad_targets);
    CHECK(cuda::host_waits() == before);
    check_error(
        [&] { (void)loss.item<double>(); },
        {"cross_entropy: target 5 (at row 2) is out of range for 4 classes", "ignore_index -100"});
  }
  SECTION("with LATHE_CUDA_SYNC_CHECKS, at the call") {
    kernels::cuda::set_sync_checks(true);
    check_error([&] { (void)embedding(bad_ids, w); }, {"embedding: index 10"});
    check_error([&] { (void)cross_entropy(logits, bad_targets); }, {"cross_entropy: target 5"});
    kernels::cuda::set_sync_checks(false);
  }
  // Raised once: the device works normally afterwards.
  synchronize(kCuda);
  const Tensor ok = embedding(from_vector(std::vector<int64_t>{3}, {1}).to(kCuda), w);
  CHECK(ok.to(Device::cpu()).sum().item<double>() == 4.0);
}
