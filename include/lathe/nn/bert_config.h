// BertConfig: the hyperparameters of a BERT encoder, read from and written to a Hugging Face
// config.json. Defaults are those of transformers' BertConfig / PretrainedConfig, so a config.json
// that omits a key means what it means to transformers. Keys lathe does not model are kept
// verbatim and written back, so load -> save round-trips a checkpoint's config.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lathe::nn {

struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;
  std::optional<int64_t> pad_token_id = 0;
  std::string position_embedding_type = "absolute";
  // Dropout of the classification head; null means "use hidden_dropout_prob".
  std::optional<double> classifier_dropout;
  std::string model_type = "bert";
  std::vector<std::string> architectures;
  // Classification labels. transformers' default is two labels, LABEL_0 and LABEL_1.
  std::map<int64_t, std::string> id2label = {{0, "LABEL_0"}, {1, "LABEL_1"}};
  std::map<std::string, int64_t> label2id = {{"LABEL_0", 0}, {"LABEL_1", 1}};
  // Keys this struct does not model: key -> the value's JSON text, written back unchanged.
  std::map<std::string, std::string> extra;

  int64_t num_labels() const { return static_cast<int64_t>(id2label.size()); }
  // Replaces the labels with LABEL_0..LABEL_{n-1}, as transformers does for num_labels=n.
  void set_num_labels(int64_t n);
  // Replaces the labels with `names` (id i = names[i]).
  void set_labels(const std::vector<std::string>& names);
  double classifier_dropout_or_hidden() const {
    return classifier_dropout.value_or(hidden_dropout_prob);
  }
  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  // Throws lathe::Error naming `source` and the offending key when a value is out of range:
  // sizes must be positive, hidden_size divisible by num_attention_heads, probabilities in [0, 1),
  // layer_norm_eps > 0, pad_token_id inside the vocabulary, labels consistent.
  void validate(const std::string& source = "<config>") const;

  // Parses config.json text; `source` names it in errors (wrong types, out-of-range values,
  // invalid JSON, duplicate keys).
  static BertConfig from_json(const std::string& text, const std::string& source = "<config>");
  // Reads `path`: a config.json file, or a model directory holding one.
  static BertConfig load(const std::string& path);
  // config.json text: sorted keys, two-space indent, trailing newline (as transformers writes).
  std::string to_json() const;
  // Writes to_json() to `path` (a file, or a directory to hold config.json) atomically.
  void save(const std::string& path) const;
};

}  // namespace lathe::nn
