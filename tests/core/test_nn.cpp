// nn::Module and the layers: the module tree and its Hugging Face names, state dicts, freezing,
// device/dtype moves that keep handles valid, and each layer against a float64 loop or the
// functional op it wraps.
#include <cmath>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

class TwoLayer : public nn::Module {
 public:
  TwoLayer() : Module("TwoLayer") {
    first = register_module("first", std::make_shared<nn::Linear>(3, 4));
    second = register_module("second", std::make_shared<nn::Linear>(4, 2, false));
    scale = register_buffer("scale", full({2}, 2.0));
    counter = register_buffer("counter", zeros({1}, DType::I64), /*persistent=*/false);
  }
  Tensor forward(const Tensor& x) const { return second->forward(relu(first->forward(x))) * scale; }
  std::shared_ptr<nn::Linear> first, second;
  Tensor scale, counter;
};

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> out;
  for (const auto& [n, t] : named) out.push_back(n);
  return out;
}

}  // namespace

TEST_CASE("nn: the module tree names parameters and buffers by dotted paths", "[nn]") {
  TwoLayer m;
  CHECK(names_of(m.named_parameters()) ==
        std::vector<std::string>{"first.weight", "first.bias", "second.weight"});
  CHECK(names_of(m.named_buffers()) == std::vector<std::string>{"scale", "counter"});
  const auto sd = m.state_dict();  // persistent buffers only
  CHECK(sd.size() == 4);
  CHECK(sd.count("scale") == 1);
  CHECK(sd.count("counter") == 0);
  CHECK(m.num_parameters() == 3 * 4 + 4 + 4 * 2);
  CHECK(m.tensor("first.weight").is_same(m.first->weight));
  CHECK(&m.submodule("second") == m.second.get());
  check_error([&] { m.submodule("third"); }, {"no submodule 'third'"});
  check_error([&] { m.tensor("first.gamma"); }, {"first.gamma"});
  for (const auto& [name, p] : m.named_parameters()) {
    CHECK(p.requires_grad());
    CHECK(p.is_leaf());
  }
  const std::string summary = m.summary();
  CHECK(summary.find("first") != std::string::npos);
  CHECK(summary.find("total parameters: 24") != std::string::npos);
}

TEST_CASE("nn: BERT parameter names are Hugging Face's", "[nn]") {
  nn::BertForSequenceClassification model(tiny_bert_config());
  const auto names = names_of(model.named_parameters());
  const std::vector<std::string> expected_some = {
      "bert.embeddings.word_embeddings.weight",
      "bert.embeddings.position_embeddings.weight",
      "bert.embeddings.token_type_embeddings.weight",
      "bert.embeddings.LayerNorm.weight",
      "bert.encoder.layer.0.attention.self.query.weight",
      "bert.encoder.layer.0.attention.self.key.bias",
      "bert.encoder.layer.0.attention.output.dense.weight",
      "bert.encoder.layer.0.attention.output.LayerNorm.bias",
      "bert.encoder.layer.1.intermediate.dense.weight",
      "bert.encoder.layer.1.output.dense.weight",
      "bert.encoder.layer.1.output.LayerNorm.weight",
      "bert.pooler.dense.weight",
      "classifier.weight",
      "classifier.bias"};
  for (const auto& n : expected_some) {
    INFO(n);
    CHECK(std::find(names.begin(), names.end(), n) != names.end());
  }
  // 5 embedding tensors, 16 per layer, 2 pooler, 2 classifier.
  CHECK(names.size() == 5 + 16 * 2 + 2 + 2);
  // Mean pooling builds no pooler.
  nn::BertForSequenceClassification mean_model(tiny_bert_config(), nn::Pooling::Mean);
  for (const auto& n : names_of(mean_model.named_parameters())) {
    CHECK(n.find("pooler") == std::string::npos);
  }
}

TEST_CASE("nn: load_state_dict names every missing, unexpected and mismatched key", "[nn]") {
  TwoLayer a, b;
  auto sd = a.state_dict();
  // A clean load copies values (not aliases) by default.
  b.load_state_dict(sd);
  CHECK(b.first->weight.to_vector<double>() == a.first->weight.to_vector<double>());
  CHECK(b.first->weight.data_ptr() != a.first->weight.data_ptr());

  auto broken = sd;
  broken.erase("first.bias");
  broken["extra.weight"] = zeros({1});
  check_error([&] { b.load_state_dict(broken); },
              {"missing key: first.bias", "unexpected key: extra.weight"});
  nn::LoadOptions lenient;
  lenient.strict = false;
  const nn::LoadReport r = b.load_state_dict(broken, lenient);
  CHECK(r.missing_keys == std::vector<std::string>{"first.bias"});
  CHECK(r.unexpected_keys == std::vector<std::string>{"extra.weight"});

  auto wrong = sd;
  wrong["second.weight"] = zeros({3, 4});
  check_error([&] { b.load_state_dict(wrong, lenient); },
              {"shape mismatch: second.weight: expected [2, 4], got [3, 4]"});

  // assign: the module takes over the tensors (no copy), and the handles see it.
  TwoLayer c;
  const Tensor handle = c.first->weight;
  nn::LoadOptions assign;
  assign.assign = true;
  c.load_state_dict(sd, assign);
  CHECK(handle.data_ptr() == sd.at("first.weight").data_ptr());
  CHECK(handle.requires_grad());
}

TEST_CASE("nn: freeze and unfreeze by name prefix; frozen parameters get no gradient", "[nn]") {
  TwoLayer m;
  CHECK(m.freeze("first.") == 2);
  CHECK(m.num_parameters(true) == 8);
  const Tensor x = random_tensor({5, 3}, 1, DType::F32);
  m.forward(x).sum().backward();
  CHECK(!m.first->weight.grad().defined());
  CHECK(m.second->weight.grad().defined());
  CHECK(m.unfreeze() == 2);
  m.zero_grad();
  CHECK(!m.second->weight.grad().defined());
  m.forward(x).sum().backward();
  CHECK(m.first->weight.grad().defined());
}

TEST_CASE("nn: to(dtype) and to(device) rewrite parameters in place", "[nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  TwoLayer m;
  const Tensor handle = m.first->weight;
  const auto before = handle.to_vector<double>();
  m.to(DType::F64);
  CHECK(handle.dtype() == DType::F64);
  CHECK(m.counter.dtype() == DType::I64);  // integer buffers keep their dtype
  CHECK(handle.to_vector<double>() == before);
  m.to(device);
  CHECK(handle.device() == device);
  CHECK(m.scale.device() == device);
  CHECK(handle.requires_grad());
  CHECK(handle.to_vector<double>() == before);
  const Tensor x = random_tensor({4, 3}, 2, DType::F64, device);
  m.forward(x).sum().backward();
  CHECK(handle.grad().defined());
  CHECK(handle.grad().device() == device);
  check_error([&] { m.to(DType::I32); }, {"floating"});
}

TEST_CASE("nn: Linear, Embedding and LayerNorm match float64 loops", "[nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  // Linear: y = x W^T + b.
  nn::Linear lin(3, 2);
  lin.to(DType::F64);
  lin.to(device);
  const Tensor x = random_tensor({4, 3}, 3, DType::F64, device);
  const auto w = lin.weight.to_vector<double>(), b = lin.bias.to_vector<double>(),
             xv = x.to_vector<double>();
  for (double v : w) CHECK(std::abs(v) <= 1.0 / std::sqrt(3.0));  // PyTorch's default bound
  std::vector<double> expected;
  for (int i = 0; i < 4; ++i) {
    for (int o = 0; o < 2; ++o) {
      double acc = b[size_t(o)];
      for (int k = 0; k < 3; ++k) acc += xv[size_t(i * 3 + k)] * w[size_t(o * 3 + k)];
      expected.push_back(acc);
    }
  }
  check_close(lin.forward(x), expected, {4, 2}, 1e-12);
  check_error(
      [&] {
        lin.forward(random_tensor({4, 5}, 1, DType::F64, device));
      },
      {"Linear(3 -> 2)", "[4, 5]"});

  // Embedding with a padding row: zero at init, no gradient.
  nn::Embedding emb(6, 3, 2);
  emb.to(device);
  for (double v : emb.weight.select(0, 2).to_vector<double>()) CHECK(v == 0.0);
  const Tensor ids = from_vector<int64_t>({2, 5, 2, 0}, {4}, TensorOptions().device(device));
  const Tensor e = emb.forward(ids);
  CHECK(e.shape() == Shape{4, 3});
  CHECK(e.select(0, 1).to_vector<double>() == emb.weight.select(0, 5).to_vector<double>());
  e.sum().backward();
  const auto g = emb.weight.grad().to_vector<double>();
  CHECK(g[2 * 3] == 0.0);  // padding row
  CHECK(g[5 * 3] == 1.0);
  CHECK(g[0] == 1.0);

  // LayerNorm: (x - mean) / sqrt(var + eps) * w + b.
  nn::LayerNorm ln(5, 1e-6);
  ln.to(DType::F64);
  ln.to(device);
  {
    NoGradGuard ng;
    ln.weight.copy_(random_tensor({5}, 4, DType::F64, device));
    ln.bias.copy_(random_tensor({5}, 5, DType::F64, device));
  }
  const Tensor y = random_tensor({3, 5}, 6, DType::F64, device);
  const auto yv = y.to_vector<double>(), lw = ln.weight.to_vector<double>(),
             lb = ln.bias.to_vector<double>();
  std::vector<double> ref;
  for (int r = 0; r < 3; ++r) {
    double mean = 0, var = 0;
    for (int c = 0; c < 5; ++c) mean += yv[size_t(r * 5 + c)] / 5;
    for (int c = 0; c < 5; ++c) var += std::pow(yv[size_t(r * 5 + c)] - mean, 2) / 5;
    for (int c = 0; c < 5; ++c) {
      ref.push_back((yv[size_t(r * 5 + c)] - mean) / std::sqrt(var + 1e-6) * lw[size_t(c)] +
                    lb[size_t(c)]);
    }
  }
  check_close(ln.forward(y), ref, {3, 5}, 1e-12);
}

TEST_CASE("nn: dropout acts only in train mode, and train/eval reach every submodule", "[nn]") {
  nn::BertConfig c = tiny_bert_config();
  c.hidden_dropout_prob = 0.5;
  nn::BertForSequenceClassification model(c);
  CHECK(model.is_training());
  const Tensor ids = from_vector<int64_t>({1, 5, 7, 9, 2, 3, 4, 0}, {2, 4});
  const Tensor mask = from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 0}, {2, 4});
  manual_seed(1);
  const auto a = model.forward(ids, mask).to_vector<double>();
  manual_seed(2);
  const auto b = model.forward(ids, mask).to_vector<double>();
  CHECK(a != b);  // different dropout masks
  model.eval();
  for (const auto& [name, m] : model.named_modules()) CHECK(!m->is_training());
  NoGradGuard ng;
  manual_seed(1);
  const auto c1 = model.forward(ids, mask).to_vector<double>();
  manual_seed(2);
  const auto c2 = model.forward(ids, mask).to_vector<double>();
  CHECK(c1 == c2);
}

TEST_CASE("nn: padding does not change the states of real tokens", "[nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  nn::BertModel model(tiny_bert_config());
  model.to(DType::F64);
  model.to(device);
  model.eval();
  NoGradGuard ng;
  const TensorOptions i64 = TensorOptions(DType::I64).device(device);
  const Tensor short_ids = from_vector<int64_t>({3, 8, 9}, {1, 3}, i64);
  const Tensor padded_ids = from_vector<int64_t>({3, 8, 9, 0, 0}, {1, 5}, i64);
  const Tensor padded_mask = from_vector<int64_t>({1, 1, 1, 0, 0}, {1, 5}, i64);
  const Tensor a = model.forward(short_ids).last_hidden_state;
  const Tensor b = model.forward(padded_ids, padded_mask).last_hidden_state.narrow(1, 0, 3);
  check_close(b, a, 1e-12, 1e-10);
  // Mean pooling ignores the padding too.
  check_close(nn::mean_pool(model.forward(padded_ids, padded_mask).last_hidden_state, padded_mask),
              nn::mean_pool(a, Tensor()), 1e-12, 1e-10);
}

TEST_CASE("nn: pre-LN layers and gradients of a transformer layer against finite differences",
          "[nn]") {
  nn::TransformerLayerOptions o;
  o.hidden_size = 8;
  o.num_heads = 2;
  o.intermediate_size = 12;
  o.hidden_dropout = 0;
  o.attention_dropout = 0;
  o.layer_norm_eps = 1e-5;
  for (bool pre : {false, true}) {
    INFO("pre_layer_norm " << pre);
    o.pre_layer_norm = pre;
    nn::TransformerEncoderLayer layer(o);
    layer.to(DType::F64);
    const Tensor mask = nn::key_padding_mask(from_vector<int64_t>({1, 1, 0}, {1, 3}));
    gradcheck([&](const std::vector<Tensor>& in) { return layer.forward(in[0], mask); },
              {random_tensor({2, 3, 8}, 7)}, 1e-6, 1e-6, 1e-5);
    // Pre-LN: the residual path carries the input through unnormalized.
    const Tensor x = random_tensor({1, 3, 8}, 9) * 5.0;
    const Tensor y = layer.forward(x);
    const double spread = y.var().item<double>();
    if (pre) {
      CHECK(spread > 2.0);
    } else {
      CHECK(spread < 2.0);
    }
  }
}

TEST_CASE("nn: bad inputs and configs are named errors", "[nn]") {
  nn::BertModel model(tiny_bert_config());
  check_error(
      [&] {
        model.forward(zeros({2, 30}, DType::I64));
      },
      {"sequence length 30", "max_position_embeddings 20"});
  check_error(
      [&] {
        model.forward(zeros({2, 4}, DType::I64), ones({2, 5}, DType::I64));
      },
      {"attention_mask [2, 5]", "input_ids [2, 4]"});
  nn::BertConfig bad = tiny_bert_config();
  bad.hidden_act = "swiglu";
  check_error([&] { nn::BertModel m(bad); }, {"unknown activation 'swiglu'"});
  check_error([&] { nn::parse_pooling("max"); }, {"unknown pooling 'max'"});
}

TEST_CASE("nn: LoRA starts at the pretrained function and merges into plain weights", "[nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  nn::BertForSequenceClassification model(tiny_bert_config());
  model.to(DType::F64);
  model.to(device);
  model.eval();
  const TensorOptions i64 = TensorOptions(DType::I64).device(device);
  const Tensor ids = from_vector<int64_t>({1, 5, 7, 9, 2, 3, 4, 0}, {2, 4}, i64);
  const Tensor mask = from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 0}, {2, 4}, i64);
  const Tensor before = model.forward(ids, mask).detach();

  const int64_t adapted = nn::enable_lora(model, 2, 4.0);
  CHECK(adapted == 2 * 6);  // q, k, v, attention output, intermediate, output per layer
  check_close(model.forward(ids, mask), before, 1e-12, 0);  // B = 0: unchanged
  int64_t trainable = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    const bool expect =
        name.find("lora_") != std::string::npos || name.rfind("classifier.", 0) == 0;
    INFO(name);
    CHECK(p.requires_grad() == expect);
    if (p.requires_grad()) trainable += p.numel();
  }
  // 12 adapters of rank 2: (in + out) * 2 each; the classifier 16 * 2 + 2.
  CHECK(trainable == 2 * (4 * (16 + 16) + (16 + 24) + (24 + 16)) * 2 + 34);
  auto* query =
      dynamic_cast<nn::Linear*>(&model.submodule("bert.encoder.layer.0.attention.self.query"));
  REQUIRE(query != nullptr);
  CHECK(query->lora_scale() == 2.0);

  // Train-like change of B; the merged export must compute the same function.
  {
    NoGradGuard ng;
    for (const auto& [name, p] : model.named_parameters()) {
      if (name.find("lora_B") != std::string::npos) {
        Tensor(p).copy_(random_tensor(p.shape(), 11, DType::F64, device, -0.5, 0.5));
      }
    }
  }
  const Tensor adapted_logits = model.forward(ids, mask).detach();
  CHECK(max(abs(adapted_logits - before)).item<double>() > 1e-6);  // the adapter does something
  const nn::StateDict merged = nn::merged_state_dict(model);
  for (const auto& [name, t] : merged) CHECK(name.find("lora_") == std::string::npos);
  nn::BertForSequenceClassification plain(tiny_bert_config());
  plain.to(DType::F64);
  plain.to(device);
  plain.eval();
  plain.load_state_dict(merged);
  check_close(plain.forward(ids, mask), adapted_logits, 1e-12, 1e-10);

  // Gradients reach A and B only (B = random now, so A gets a nonzero gradient too).
  model.train();
  model.forward(ids, mask).sum().backward();
  CHECK(query->lora_A.grad().defined());
  CHECK(query->lora_B.grad().defined());
  CHECK(!query->weight.grad().defined());
  check_error([&] { query->enable_lora(2, 4.0); }, {"already has an adapter"});
}
