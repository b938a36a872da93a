// The BERT family, module for module as Hugging Face transformers builds it, so that state dicts
// have the same dotted names and a checkpoint loads by name in either direction:
//   BertModel                      embeddings.*, encoder.layer.<i>.*, pooler.dense.*
//   BertForSequenceClassification  bert.<BertModel names>, classifier.*
// from_pretrained reads a Hugging Face model directory (config.json + model.safetensors);
// save_pretrained writes one that transformers' BertForSequenceClassification.from_pretrained
// loads.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lathe/nn/bert_config.h"
#include "lathe/nn/embedding.h"
#include "lathe/nn/transformer.h"

namespace lathe::data {
class Tokenizer;
}

namespace lathe::nn {

// Options shared by the encoder layers of a config (hidden sizes, dropouts, activation).
TransformerLayerOptions bert_layer_options(const BertConfig& config);

// word + position + token type embeddings, LayerNorm, dropout.
class BertEmbeddings : public Module {
 public:
  explicit BertEmbeddings(const BertConfig& config);
  // input_ids [B, T] integer; token_type_ids [B, T] (undefined = zeros); positions 0..T-1.
  Tensor forward(const Tensor& input_ids, const Tensor& token_type_ids = Tensor()) const;

  std::shared_ptr<Embedding> word_embeddings, position_embeddings, token_type_embeddings;
  std::shared_ptr<LayerNorm> layer_norm;  // "LayerNorm"
  std::shared_ptr<Dropout> dropout;
};

class BertEncoder : public Module {
 public:
  explicit BertEncoder(const BertConfig& config, bool pre_layer_norm = false);
  Tensor forward(const Tensor& hidden, const Tensor& mask = Tensor()) const;
  std::vector<std::shared_ptr<TransformerEncoderLayer>> layers;  // "layer.<i>"
  // In training mode, keep only each layer's input for backward and re-run the layer there
  // (lathe/core/checkpoint.h): activation memory of one layer instead of all of them, for about
  // one more forward per step. Hugging Face's `gradient_checkpointing_enable()`.
  bool gradient_checkpointing = false;
};

// tanh(dense(hidden[:, 0])): BERT's [CLS] pooler.
class BertPooler : public Module {
 public:
  explicit BertPooler(const BertConfig& config);
  Tensor forward(const Tensor& hidden) const;
  std::shared_ptr<Linear> dense;
};

struct BertOutput {
  Tensor last_hidden_state;  // [B, T, hidden]
  Tensor pooler_output;      // [B, hidden]; undefined without a pooler
};

class BertModel : public Module {
 public:
  explicit BertModel(const BertConfig& config, bool add_pooling_layer = true);
  // attention_mask [B, T] (1 = token, 0 = padding; undefined = all tokens).
  BertOutput forward(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                     const Tensor& token_type_ids = Tensor()) const;

  const BertConfig& config() const { return config_; }
  std::shared_ptr<BertEmbeddings> embeddings;
  std::shared_ptr<BertEncoder> encoder;
  std::shared_ptr<BertPooler> pooler;  // null without a pooling layer

 private:
  BertConfig config_;
};

// Mean of the hidden states of the tokens (attention_mask 1), [B, T, H] -> [B, H]; what
// sentence-transformers checkpoints such as all-MiniLM-L6-v2 are trained for.
Tensor mean_pool(const Tensor& hidden, const Tensor& attention_mask);
// x / max(||x||_2, 1e-12) along the last dim (torch.nn.functional.normalize).
Tensor l2_normalize(const Tensor& x);

enum class Pooling { Cls, Mean };
Pooling parse_pooling(const std::string& name);  // "cls" | "mean"
const char* pooling_name(Pooling p);

// BERT + dropout + linear head. Pooling::Cls is Hugging Face's head (pooler output); Pooling::Mean
// classifies the mean of the token states instead (no pooler is built).
class BertForSequenceClassification : public Module {
 public:
  explicit BertForSequenceClassification(const BertConfig& config, Pooling pooling = Pooling::Cls);
  // -> logits [B, num_labels].
  Tensor forward(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                 const Tensor& token_type_ids = Tensor()) const;
  // The pooled features the classifier sees (before dropout).
  Tensor features(const Tensor& input_ids, const Tensor& attention_mask = Tensor(),
                  const Tensor& token_type_ids = Tensor()) const;

  const BertConfig& config() const { return config_; }
  Pooling pooling() const { return pooling_; }
  std::shared_ptr<BertModel> bert;
  std::shared_ptr<Dropout> dropout;
  std::shared_ptr<Linear> classifier;

 private:
  BertConfig config_;
  Pooling pooling_;
};

// Hugging Face's _init_weights for BERT: Linear and Embedding weights ~ N(0, initializer_range),
// biases 0, the padding row 0, LayerNorm weight 1 and bias 0. Applied to `module` and everything
// below it.
void init_bert_weights(Module& module, double initializer_range);

// ---- pretrained checkpoints ----

struct PretrainedOptions {
  Device device = Device::cpu();
  // Unset: what the checkpoint's config.json says (lathe writes "lathe_pooling"), else cls.
  std::optional<Pooling> pooling;
  // Replace the checkpoint's labels (a new task head); empty keeps config.json's id2label.
  std::vector<std::string> labels;
  // Override the dropout probabilities of the config (hidden, attention, classifier).
  std::optional<double> hidden_dropout, attention_dropout, classifier_dropout;
  // Print what was freshly initialized / ignored to stderr.
  bool verbose = true;
};

// What from_pretrained did beyond a one-to-one load.
struct PretrainedReport {
  std::vector<std::string> initialized;  // parameters not in the checkpoint (fresh init)
  std::vector<std::string> ignored;      // checkpoint keys the model does not use
  std::vector<std::string> renamed;      // "old -> new" (gamma/beta, missing `bert.` prefix)
  std::string str() const;
};

// Reads DIR/config.json and DIR/model.safetensors. Keys with or without a `bert.` prefix are
// accepted, LayerNorm gamma/beta are renamed, position_ids buffers ignored. Encoder weights must
// all be present; the pooler and the classifier may be missing (fresh init, reported), and a
// classifier whose label count differs from `options.labels` is re-initialized.
std::shared_ptr<BertForSequenceClassification> load_bert_for_sequence_classification(
    const std::string& dir, const PretrainedOptions& options = {},
    PretrainedReport* report = nullptr);
std::shared_ptr<BertModel> load_bert_model(const std::string& dir,
                                           const PretrainedOptions& options = {},
                                           PretrainedReport* report = nullptr);

// Writes DIR/{config.json, model.safetensors[, vocab.txt]} loadable by transformers as
// BertForSequenceClassification (keys `bert.*` and `classifier.*`, f32, config architectures and
// id2label set). The directory is written to a temporary sibling and renamed into place, so a
// crash leaves the previous DIR or the new one, never a mix.
void save_pretrained(const BertForSequenceClassification& model, const std::string& dir,
                     const data::Tokenizer* tokenizer = nullptr);
void save_pretrained(const BertModel& model, const std::string& dir,
                     const data::Tokenizer* tokenizer = nullptr);

// The files of save_pretrained written into an existing directory `dir` (not atomic by itself:
// for composing a checkpoint directory inside write_directory_atomically).
void write_pretrained_files(const BertForSequenceClassification& model, const std::string& dir,
                            const data::Tokenizer* tokenizer = nullptr);

// Atomically replaces directory `dir` with the files `write(tmp_dir)` produces.
void write_directory_atomically(const std::string& dir,
                                const std::function<void(const std::string& tmp_dir)>& write);

}  // namespace lathe::nn
