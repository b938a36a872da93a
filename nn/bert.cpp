#include "lathe/nn/bert.h"

#include "lathe/core/autograd.h"
#include "lathe/core/checkpoint.h"
#include "lathe/core/functional.h"
#include "lathe/nn/init.h"

namespace lathe::nn {

TransformerLayerOptions bert_layer_options(const BertConfig& c) {
  TransformerLayerOptions o;
  o.hidden_size = c.hidden_size;
  o.num_heads = c.num_attention_heads;
  o.intermediate_size = c.intermediate_size;
  o.activation = c.hidden_act;
  o.hidden_dropout = c.hidden_dropout_prob;
  o.attention_dropout = c.attention_probs_dropout_prob;
  o.layer_norm_eps = c.layer_norm_eps;
  return o;
}

// ---- embeddings ----

BertEmbeddings::BertEmbeddings(const BertConfig& c) : Module("BertEmbeddings") {
  word_embeddings = register_module(
      "word_embeddings", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, c.pad_token_id));
  position_embeddings = register_module(
      "position_embeddings", std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size));
  token_type_embeddings = register_module(
      "token_type_embeddings", std::make_shared<Embedding>(c.type_vocab_size, c.hidden_size));
  layer_norm =
      register_module("LayerNorm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
  dropout = register_module("dropout", std::make_shared<Dropout>(c.hidden_dropout_prob));
}

Tensor BertEmbeddings::forward(const Tensor& input_ids, const Tensor& token_type_ids) const {
  LATHE_CHECK(input_ids.dim() == 2, "BertEmbeddings: input_ids must be [batch, seq], got ",
              shape_str(input_ids.shape()));
  const int64_t seq = input_ids.size(1);
  LATHE_CHECK(seq <= position_embeddings->num_embeddings(), "BertEmbeddings: sequence length ", seq,
              " exceeds max_position_embeddings ", position_embeddings->num_embeddings());
  Tensor sum = word_embeddings->forward(input_ids);
  // Positions 0 .. T-1 pick the table's first T rows: a view of them, whose gradient is the
  // summed rows, not a lookup (the position ids would be a host -> device copy per call, and the
  // lookup's backward a sort). [T, H] broadcasts over the batch.
  sum = sum + position_embeddings->weight.slice(0, 0, seq, 1);
  if (token_type_ids.defined()) {
    LATHE_CHECK(token_type_ids.shape() == input_ids.shape(), "BertEmbeddings: token_type_ids ",
                shape_str(token_type_ids.shape()), " differs from input_ids ",
                shape_str(input_ids.shape()));
    sum = sum + token_type_embeddings->forward(token_type_ids);
  } else {
    sum = sum + token_type_embeddings->weight.select(0, 0);  // every token is of type 0
  }
  return dropout->forward(layer_norm->forward(sum));
}

// ---- encoder, pooler, model ----

BertEncoder::BertEncoder(const BertConfig& c, bool pre_layer_norm) : Module("BertEncoder") {
  TransformerLayerOptions o = bert_layer_options(c);
  o.pre_layer_norm = pre_layer_norm;
  auto list = register_module("layer", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(list->push_back(std::make_shared<TransformerEncoderLayer>(o)));
  }
}

Tensor BertEncoder::forward(const Tensor& hidden, const Tensor& mask) const {
  Tensor h = hidden;
  const bool recompute = gradient_checkpointing && is_training() && grad_mode_enabled();
  for (const auto& layer : layers) {
    if (!recompute) {
      h = layer->forward(h, mask);
      continue;
    }
    // The closure outlives this call (backward runs it again): it holds the layer, not `this`.
    std::shared_ptr<const TransformerEncoderLayer> block = layer;
    h = checkpoint(
        [block](const std::vector<Tensor>& in) {
          return std::vector<Tensor>{block->forward(in[0], in[1])};
        },
        {h, mask})[0];
  }
  return h;
}

BertPooler::BertPooler(const BertConfig& c) : Module("BertPooler") {
  dense = register_module("dense", std::make_shared<Linear>(c.hidden_size, c.hidden_size));
}

Tensor BertPooler::forward(const Tensor& hidden) const {
  return tanh(dense->forward(hidden.select(1, 0)));
}

BertModel::BertModel(const BertConfig& config, bool add_pooling_layer)
    : Module("BertModel"), config_(config) {
  config_.validate();
  embeddings = register_module("embeddings", std::make_shared<BertEmbeddings>(config_));
  encoder = register_module("encoder", std::make_shared<BertEncoder>(config_));
  if (add_pooling_layer) pooler = register_module("pooler", std::make_shared<BertPooler>(config_));
  init_bert_weights(*this, config_.initializer_range);
}

BertOutput BertModel::forward(const Tensor& input_ids, const Tensor& attention_mask,
                              const Tensor& token_type_ids) const {
  Tensor mask;
  if (attention_mask.defined()) {
    LATHE_CHECK(attention_mask.shape() == input_ids.shape(), "BertModel: attention_mask ",
                shape_str(attention_mask.shape()), " differs from input_ids ",
                shape_str(input_ids.shape()));
    mask = key_padding_mask(attention_mask);
  }
  BertOutput out;
  out.last_hidden_state = encoder->forward(embeddings->forward(input_ids, token_type_ids), mask);
  if (pooler) out.pooler_output = pooler->forward(out.last_hidden_state);
  return out;
}

// ---- pooling ----

Tensor mean_pool(const Tensor& hidden, const Tensor& attention_mask) {
  LATHE_CHECK(hidden.dim() == 3, "mean_pool: hidden must be [batch, seq, hidden], got ",
              shape_str(hidden.shape()));
  if (!attention_mask.defined()) return mean(hidden, {1});
  LATHE_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
                  attention_mask.size(1) == hidden.size(1),
              "mean_pool: attention_mask ", shape_str(attention_mask.shape()),
              " does not match hidden ", shape_str(hidden.shape()));
  const Tensor m = attention_mask.to(hidden.dtype()).unsqueeze(2);  // [B, T, 1]
  // sentence-transformers clamps the token count at 1e-9 so an all-padding row gives zeros.
  return sum(hidden * m, {1}) / clamp(sum(m, {1}), 1e-9, std::nullopt);
}

Tensor l2_normalize(const Tensor& x) {
  const Tensor norm = sqrt(sum(x * x, {x.dim() - 1}, true));
  return x / clamp(norm, 1e-12, std::nullopt);
}

Pooling parse_pooling(const std::string& name) {
  if (name == "cls") return Pooling::Cls;
  if (name == "mean") return Pooling::Mean;
  LATHE_FAIL("unknown pooling '", name, "' (expected cls or mean)");
}

const char* pooling_name(Pooling p) {
  return p == Pooling::Cls ? "cls" : "mean";
}

// ---- classification ----

BertForSequenceClassification::BertForSequenceClassification(const BertConfig& config,
                                                             Pooling pooling)
    : Module("BertForSequenceClassification"), config_(config), pooling_(pooling) {
  bert = register_module("bert", std::make_shared<BertModel>(config, pooling == Pooling::Cls));
  dropout =
      register_module("dropout", std::make_shared<Dropout>(config.classifier_dropout_or_hidden()));
  classifier = register_module("classifier",
                               std::make_shared<Linear>(config.hidden_size, config.num_labels()));
  init_bert_weights(*classifier, config.initializer_range);
}

Tensor BertForSequenceClassification::features(const Tensor& input_ids,
                                               const Tensor& attention_mask,
                                               const Tensor& token_type_ids) const {
  BertOutput out = bert->forward(input_ids, attention_mask, token_type_ids);
  if (pooling_ == Pooling::Cls) return out.pooler_output;
  return mean_pool(out.last_hidden_state, attention_mask);
}

Tensor BertForSequenceClassification::forward(const Tensor& input_ids, const Tensor& attention_mask,
                                              const Tensor& token_type_ids) const {
  return classifier->forward(dropout->forward(features(input_ids, attention_mask, token_type_ids)));
}

// ---- init ----

void init_bert_weights(Module& module, double initializer_range) {
  for (auto& [name, m] : module.named_modules()) {
    if (auto* linear = dynamic_cast<Linear*>(m)) {
      init::normal_(linear->weight, 0.0, initializer_range);
      if (linear->bias.defined()) init::zeros_(linear->bias);
    } else if (auto* emb = dynamic_cast<Embedding*>(m)) {
      init::normal_(emb->weight, 0.0, initializer_range);
      if (emb->padding_idx()) {
        NoGradGuard no_grad;
        emb->weight.select(0, *emb->padding_idx()).zero_();
      }
    } else if (auto* ln = dynamic_cast<LayerNorm*>(m)) {
      init::ones_(ln->weight);
      init::zeros_(ln->bias);
    }
  }
}

}  // namespace lathe::nn
