// Activation checkpointing: a checkpointed block gives the gradients of the same block without
// checkpointing, bit for bit (the re-run replays the dropout draws and the autocast state), to its
// inputs and to the parameters it uses; finite differences agree in f64; a BERT encoder with
// gradient_checkpointing keeps less memory between forward and backward and peaks lower; the
// generator after the step is where it would be without the re-run; misuse is reported.
#include <memory>

#include "lathe/core/autocast.h"
#include "lathe/core/checkpoint.h"
#include "lathe/core/memory.h"
#include "lathe/core/random.h"
#include "lathe/nn/attention.h"
#include "lathe/nn/bert.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

// A block with parameters, a random draw and two outputs (one of them reused by the caller).
struct Block {
  Tensor w1, b1, w2;
  double p = 0.25;

  Block(Device device, DType dtype, uint64_t seed) {
    w1 = random_tensor({12, 8}, seed, dtype, device, -0.5, 0.5).requires_grad_(true);
    b1 = random_tensor({12}, seed + 1, dtype, device, -0.1, 0.1).requires_grad_(true);
    w2 = random_tensor({8, 12}, seed + 2, dtype, device, -0.5, 0.5).requires_grad_(true);
  }
  std::vector<Tensor> operator()(const std::vector<Tensor>& in) const {
    Tensor h = gelu(linear(in[0], w1, b1));
    h = dropout(h, p);
    Tensor y = linear(h, w2) + in[0];
    return {y, tanh(h).sum({-1})};
  }
  std::vector<Tensor> params() const { return {w1, b1, w2}; }
};

// One training-like step: seed, run the block (checkpointed or not) on x, a loss that uses both
// outputs and a draw after the block; returns the loss and leaves gradients in x and the block.
Tensor step(const Block& block, const Tensor& x, bool use_checkpoint) {
  manual_seed(2024);
  std::vector<Tensor> out = use_checkpoint ? checkpoint(block, {x}) : block({x});
  Tensor after = dropout(out[0], 0.5);  // the generator must be where it would be without re-runs
  Tensor loss = (after * after).sum() + out[1].sum();
  loss.backward();
  return loss;
}

void check_same(const Tensor& a, const Tensor& b, const char* what) {
  INFO(what);
  REQUIRE(a.defined());
  REQUIRE(b.defined());
  CHECK(a.shape() == b.shape());
  CHECK(a.to(DType::F64).to_vector<double>() == b.to(DType::F64).to_vector<double>());
}

// Every parameter gradient of two copies of a block, bit for bit.
void check_same_grads(const Block& plain, const Block& ckpt) {
  for (size_t i = 0; i < plain.params().size(); ++i) {
    INFO("parameter " << i);
    check_same(plain.params()[i].grad(), ckpt.params()[i].grad(), "parameter");
  }
}

}  // namespace

TEST_CASE("checkpoint: gradients are the plain backward's, bit for bit", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  INFO("device " << device);
  Block plain(device, DType::F32, 11), ckpt(device, DType::F32, 11);
  Tensor x1 = random_tensor({5, 8}, 3, DType::F32, device).requires_grad_(true);
  Tensor x2 = random_tensor({5, 8}, 3, DType::F32, device).requires_grad_(true);

  Tensor l1 = step(plain, x1, false);
  const PhiloxState after_plain = philox_current();
  Tensor l2 = step(ckpt, x2, true);
  // The re-run in backward replays the block's draws, then puts the generator back.
  CHECK(philox_current().offset == after_plain.offset);
  CHECK(l1.item<double>() == l2.item<double>());
  check_same(x1.grad(), x2.grad(), "x");
  check_same_grads(plain, ckpt);
}

TEST_CASE("checkpoint: f64 gradients match finite differences", "[checkpoint]") {
  Block block(Device::cpu(), DType::F64, 5);
  block.p = 0.0;  // finite differences need a deterministic function
  Tensor x = random_tensor({3, 8}, 9, DType::F64);
  gradcheck(
      [&](const std::vector<Tensor>& in) {
        std::vector<Tensor> out = checkpoint(
            [&](const std::vector<Tensor>& v) {
              Block b = block;
              b.w1 = v[1];
              b.w2 = v[2];
              return b({v[0]});
            },
            in);
        return out[0] * out[1].unsqueeze(-1);
      },
      {x, block.w1.detach(), block.w2.detach()});
}

TEST_CASE("checkpoint: parameters get gradients when the inputs need none", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  Block plain(device, DType::F32, 21), ckpt(device, DType::F32, 21);
  const Tensor x = random_tensor({4, 8}, 7, DType::F32, device);  // no grad
  step(plain, x, false);
  std::vector<Tensor> out = checkpoint(ckpt, {x});
  CHECK(out[0].requires_grad());
  CHECK(out[0].grad_fn()->name() == "checkpoint");
  manual_seed(2024);
  step(ckpt, x, true);
  check_same_grads(plain, ckpt);
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("checkpoint: a block that needs no gradient records nothing", "[checkpoint]") {
  const Tensor x = random_tensor({4, 8}, 7, DType::F32);
  std::vector<Tensor> out =
      checkpoint([](const std::vector<Tensor>& in) { return std::vector{in[0] * 2.0}; }, {x});
  CHECK_FALSE(out[0].requires_grad());
  Tensor y = random_tensor({4, 8}, 8, DType::F32).requires_grad_(true);
  {
    NoGradGuard no_grad;
    CHECK_FALSE(checkpoint([](const Tensor& t) { return t * 3.0; }, y).requires_grad());
  }
}

TEST_CASE("checkpoint: autocast is replayed in backward", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  INFO("device " << device);
  Block plain(device, DType::F32, 31), ckpt(device, DType::F32, 31);
  Tensor x1 = random_tensor({6, 8}, 4, DType::F32, device).requires_grad_(true);
  Tensor x2 = random_tensor({6, 8}, 4, DType::F32, device).requires_grad_(true);
  {
    AutocastGuard bf16(DType::BF16, device.type);
    step(plain, x1, false);
    step(ckpt, x2, true);
  }
  // Without the replay the re-run would compute in f32 and hand back f32-accurate gradients that
  // differ from the bf16 forward's.
  check_same(x1.grad(), x2.grad(), "x");
  check_same_grads(plain, ckpt);
}

TEST_CASE("checkpoint: nested checkpoints", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  Block inner_plain(device, DType::F32, 41), inner_ckpt(device, DType::F32, 41);
  auto outer = [](const Block& inner, bool nested) {
    return [&inner, nested](const std::vector<Tensor>& in) {
      std::vector<Tensor> a = nested ? checkpoint(inner, in) : inner(in);
      std::vector<Tensor> b = nested ? checkpoint(inner, {a[0]}) : inner({a[0]});
      return std::vector<Tensor>{b[0], a[1] + b[1]};
    };
  };
  Tensor x1 = random_tensor({3, 8}, 5, DType::F32, device).requires_grad_(true);
  Tensor x2 = random_tensor({3, 8}, 5, DType::F32, device).requires_grad_(true);
  manual_seed(9);
  std::vector<Tensor> o1 = outer(inner_plain, false)({x1});
  (o1[0].sum() + o1[1].sum()).backward();
  manual_seed(9);
  std::vector<Tensor> o2 = checkpoint(outer(inner_ckpt, true), {x2});
  (o2[0].sum() + o2[1].sum()).backward();
  check_same(x1.grad(), x2.grad(), "x");
  check_same_grads(inner_plain, inner_ckpt);
}

TEST_CASE("checkpoint: outputs that are inputs or views of them", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor x = random_tensor({4, 6}, 3, DType::F32, device).requires_grad_(true);
  Tensor w = random_tensor({4, 6}, 4, DType::F32, device);
  std::vector<Tensor> out = checkpoint(
      [](const std::vector<Tensor>& in) {
        return std::vector<Tensor>{in[0], in[0].transpose(0, 1), in[0] * in[0]};
      },
      {x});
  CHECK(x.is_leaf());  // the returned alias carries the node, not x itself
  (out[0] * w + out[1].transpose(0, 1) * 3.0 + out[2]).sum().backward();
  // d/dx (x * w + 3 x + x^2) = w + 3 + 2 x
  const std::vector<double> xv = x.to_vector<double>(), wv = w.to_vector<double>();
  std::vector<double> expected(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) expected[i] = wv[i] + 3.0 + 2.0 * xv[i];
  check_close(x.grad(), expected, {4, 6}, 1e-6, 1e-6);
}

TEST_CASE("checkpoint: misuse is reported", "[checkpoint]") {
  Tensor x = random_tensor({4, 8}, 7, DType::F32).requires_grad_(true);
  SECTION("an input modified in place before backward") {
    Tensor h = x * 1.0;
    Tensor y = checkpoint([](const Tensor& t) { return t * t; }, h);
    {
      NoGradGuard no_grad;  // an in-place write that autograd itself would refuse otherwise
      h.add_(full_like(h, 1.0));
    }
    check_error([&] { y.sum().backward(); }, {"checkpoint", "modified by an in-place operation"});
  }
  SECTION("a block whose re-run returns another shape") {
    auto calls = std::make_shared<int>(0);
    Tensor y = checkpoint(
        [calls](const Tensor& t) { return ++*calls == 1 ? t * 2.0 : (t * 2.0).sum({0}); }, x);
    check_error([&] { y.sum().backward(); },
                {"checkpoint: output 0", "f32 [4, 8]", "re-run in backward", "f32 [8]"});
  }
  SECTION("a block whose re-run draws random numbers of another size") {
    auto calls = std::make_shared<int>(0);
    Tensor y = checkpoint(
        [calls](const Tensor& t) {
          return ++*calls == 1 ? dropout(t, 0.5) : dropout(t.slice(0, 0, 2), 0.5) * 1.0;
        },
        x);
    check_error([&] { y.sum().backward(); },
                {"checkpoint: draw 1 of the re-run asked for 16", "first run drew 32"});
  }
  SECTION("a block whose re-run draws more or fewer times") {
    auto calls = std::make_shared<int>(0);
    Tensor y = checkpoint(
        [calls](const Tensor& t) { return ++*calls == 1 ? t * 2.0 : dropout(t * 2.0, 0.5); }, x);
    check_error([&] { y.sum().backward(); },
                {"checkpoint: the re-run drew random numbers 1 times", "first run drew 0"});
    Tensor z = checkpoint(
        [calls](const Tensor& t) { return ++*calls == 3 ? dropout(t * 2.0, 0.5) : t * 2.0; }, x);
    check_error([&] { z.sum().backward(); },
                {"checkpoint: the re-run drew random numbers 0 times", "first run drew 1"});
  }
}

TEST_CASE("checkpoint: BERT encoder keeps less memory, same gradients", "[checkpoint]") {
  auto device = GENERATE(from_range(test_devices()));
  INFO("device " << device);
  nn::BertConfig c = tiny_bert_config();
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.intermediate_size = 256;
  c.num_hidden_layers = 4;
  c.hidden_dropout_prob = 0.1;
  c.attention_probs_dropout_prob = 0.1;
  const int64_t B = 4, T = 64;
  nn::BertEncoder plain(c), ckpt(c);
  ckpt.load_state_dict(plain.state_dict());
  plain.to(device);
  ckpt.to(device);
  ckpt.gradient_checkpointing = true;
  const Tensor x0 = random_tensor({B, T, c.hidden_size}, 17, DType::F32, device);
  std::vector<int64_t> keep(size_t(B * T), 1);
  for (int64_t t = T - 9; t < T; ++t) keep[size_t(T + t)] = 0;  // sequence 1 padded
  const Tensor mask = nn::key_padding_mask(from_vector<int64_t>(keep, {B, T})).to(device);

  struct Run {
    size_t held_after_forward = 0, peak = 0;
    Tensor x_grad;
  };
  auto run = [&](const nn::BertEncoder& encoder) {
    Run r;
    Tensor x = x0.clone().requires_grad_(true);
    manual_seed(77);
    synchronize(device);
    reset_peak_memory_stats(device);
    const size_t before = memory_stats(device).allocated_bytes;
    Tensor h = encoder.forward(x, mask);
    Tensor loss = (h * h).mean();
    r.held_after_forward = memory_stats(device).allocated_bytes - before;
    loss.backward();
    r.peak = memory_stats(device).peak_allocated_bytes - before;
    r.x_grad = x.grad();
    return r;
  };
  const Run a = run(plain);
  const Run b = run(ckpt);
  check_same(a.x_grad, b.x_grad, "input gradient");
  auto pa = plain.named_parameters(), pb = ckpt.named_parameters();
  REQUIRE(pa.size() == pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    check_same(pa[i].second.grad(), pb[i].second.grad(), pa[i].first.c_str());

  // Between forward and backward the checkpointed encoder holds each layer's input (4 x 64 KiB)
  // plus the output and the loss; the plain one every layer's saved activations.
  const size_t hidden_bytes = size_t(B * T * c.hidden_size) * sizeof(float);
  INFO("held after forward: plain " << a.held_after_forward << ", checkpointed "
                                    << b.held_after_forward << "; peak: plain " << a.peak
                                    << ", checkpointed " << b.peak);
  CHECK(b.held_after_forward <= size_t(c.num_hidden_layers + 3) * hidden_bytes);
  CHECK(a.held_after_forward >= 4 * b.held_after_forward);
  CHECK(double(b.peak) <= 0.6 * double(a.peak));
  // Only while training: in eval mode the layers run as they are.
  CHECK(ckpt.forward(x0.clone().requires_grad_(true), mask).grad_fn()->name() == "checkpoint");
  ckpt.eval();
  CHECK(ckpt.forward(x0.clone().requires_grad_(true), mask).grad_fn()->name() != "checkpoint");
}
