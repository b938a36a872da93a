// BertConfig <-> config.json: the committed config.json of all-MiniLM-L6-v2 (copied verbatim from
// the checkpoint), transformers' defaults for omitted keys, type and range errors that name the
// file and key, and a save -> load round trip that keeps keys lathe does not model.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "lathe/nn/bert_config.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using lathe::nn::BertConfig;
using lathe::testing::check_error;

namespace {

fs::path minilm_config() {
  return fs::path(__FILE__).parent_path().parent_path() / "golden" / "config" /
         "all-MiniLM-L6-v2.config.json";
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lathe-cfg-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("bert config: all-MiniLM-L6-v2's config.json", "[bert-config][cpu-only]") {
  const BertConfig c = BertConfig::load(minilm_config().string());
  CHECK(c.vocab_size == 30522);
  CHECK(c.hidden_size == 384);
  CHECK(c.num_hidden_layers == 6);
  CHECK(c.num_attention_heads == 12);
  CHECK(c.head_dim() == 32);
  CHECK(c.intermediate_size == 1536);
  CHECK(c.hidden_act == "gelu");
  CHECK(c.hidden_dropout_prob == 0.1);
  CHECK(c.attention_probs_dropout_prob == 0.1);
  CHECK(c.max_position_embeddings == 512);
  CHECK(c.type_vocab_size == 2);
  CHECK(c.initializer_range == 0.02);
  CHECK(c.layer_norm_eps == 1e-12);
  CHECK(c.pad_token_id == 0);
  CHECK(c.position_embedding_type == "absolute");
  CHECK(c.model_type == "bert");
  CHECK(c.architectures == std::vector<std::string>{"BertModel"});
  // Absent from the file: transformers' defaults.
  CHECK(!c.classifier_dropout.has_value());
  CHECK(c.classifier_dropout_or_hidden() == 0.1);
  CHECK(c.num_labels() == 2);
  CHECK(c.id2label.at(1) == "LABEL_1");
  CHECK(c.label2id.at("LABEL_0") == 0);
  // Keys lathe does not model are kept as JSON text.
  CHECK(c.extra.at("_name_or_path") == "\"nreimers/MiniLM-L6-H384-uncased\"");
  CHECK(c.extra.at("transformers_version") == "\"4.8.2\"");
  CHECK(c.extra.at("use_cache") == "true");
  CHECK(c.extra.at("gradient_checkpointing") == "false");
  CHECK(c.extra.size() == 4);
}

TEST_CASE("bert config: defaults and labels", "[bert-config][cpu-only]") {
  const BertConfig d = BertConfig::from_json("{}");
  CHECK(d.hidden_size == 768);
  CHECK(d.num_hidden_layers == 12);
  CHECK(d.intermediate_size == 3072);
  CHECK(d.vocab_size == 30522);
  CHECK(d.num_labels() == 2);

  const BertConfig n = BertConfig::from_json(R"({"num_labels": 3})");
  CHECK(n.num_labels() == 3);
  CHECK(n.id2label.at(2) == "LABEL_2");
  CHECK(n.label2id.at("LABEL_2") == 2);

  const BertConfig l = BertConfig::from_json(
      R"({"id2label": {"1": "positive", "0": "negative"}, "classifier_dropout": 0.25,
          "pad_token_id": null})");
  CHECK(l.num_labels() == 2);
  CHECK(l.id2label.at(0) == "negative");
  CHECK(l.label2id.at("positive") == 1);  // derived from id2label
  CHECK(l.classifier_dropout == 0.25);
  CHECK(l.classifier_dropout_or_hidden() == 0.25);
  CHECK(!l.pad_token_id.has_value());

  BertConfig s;
  s.set_labels({"neg", "pos", "neutral"});
  CHECK(s.num_labels() == 3);
  CHECK(s.label2id.at("neutral") == 2);
  check_error([&] { s.set_labels({"a", "a"}); }, {"label \"a\" given twice"});
}

TEST_CASE("bert config: invalid files name the file and the key", "[bert-config][cpu-only]") {
  const std::string src = "cfg.json";
  struct Case {
    const char* text;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {"{\"hidden_size\": 384", {"not valid JSON"}},
      {"[1, 2]", {"config is not a JSON object but array"}},
      {R"({"hidden_size": "384"})", {"key \"hidden_size\"", "expected an integer, got \"384\""}},
      {R"({"hidden_size": 384.5})", {"key \"hidden_size\"", "expected an integer"}},
      {R"({"hidden_size": 18446744073709551615})", {"key \"hidden_size\"", "expected an integer"}},
      {R"({"hidden_size": -384})", {"key \"hidden_size\" must be positive, got -384"}},
      {R"({"num_hidden_layers": 0})", {"key \"num_hidden_layers\" must be positive"}},
      {R"({"hidden_size": 384, "num_attention_heads": 5})",
       {"key \"hidden_size\" (384) is not a multiple of \"num_attention_heads\" (5)"}},
      {R"({"hidden_dropout_prob": 1.5})", {"key \"hidden_dropout_prob\" must be in [0, 1)"}},
      {R"({"attention_probs_dropout_prob": "0.1"})",
       {"key \"attention_probs_dropout_prob\"", "expected a number"}},
      {R"({"classifier_dropout": -0.1})", {"key \"classifier_dropout\" must be in [0, 1)"}},
      {R"({"layer_norm_eps": 0})", {"key \"layer_norm_eps\" must be positive"}},
      {R"({"hidden_act": 3})", {"key \"hidden_act\"", "expected a string"}},
      {R"({"pad_token_id": 30522})", {"key \"pad_token_id\" (30522) is outside the vocabulary"}},
      {R"({"architectures": "BertModel"})", {"key \"architectures\"", "list of strings"}},
      {R"({"num_labels": 0})", {"key \"num_labels\" must be positive"}},
      {R"({"num_labels": 1000000000000})",
       {"key \"num_labels\" (1000000000000) exceeds the limit"}},
      {R"({"num_labels": 3, "id2label": {"0": "a", "1": "b"}})",
       {"key \"num_labels\" (3) disagrees with \"id2label\" (2 labels)"}},
      {R"({"id2label": {"zero": "a"}})", {"key \"id2label\"", "\"zero\" is not a non-negative"}},
      {R"({"id2label": {"0": "a", "00": "b"}})", {"key \"id2label\"", "malformed or repeated"}},
      {R"({"id2label": {"0": "a", "2": "b"}})", {"must number the labels 0..1, but has id 2"}},
      {R"({"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 1, "b": 0}})",
       {"key \"label2id\" maps \"a\" to 1"}},
      {R"({"hidden_size": 384, "hidden_size": 768})",
       {"the key \"hidden_size\" appears more than once"}},
  };
  for (const auto& c : cases) {
    INFO(c.text);
    auto fragments = c.fragments;
    fragments.push_back(src);
    check_error([&] { BertConfig::from_json(c.text, src); }, fragments);
  }
  check_error([&] { BertConfig::load("/nonexistent/dir/config.json"); },
              {"/nonexistent/dir/config.json", "cannot open"});
}

TEST_CASE("bert config: save then load round-trips, unknown keys included",
          "[bert-config][cpu-only]") {
  TempDir dir;
  BertConfig c = BertConfig::load(minilm_config().string());
  c.set_labels({"negative", "positive"});
  c.classifier_dropout = 0.2;
  c.save(dir.path.string());  // a directory: writes config.json inside
  const fs::path file = dir.path / "config.json";
  REQUIRE(fs::exists(file));
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
  const BertConfig r = BertConfig::load(dir.path.string());
  CHECK(r.hidden_size == c.hidden_size);
  CHECK(r.num_hidden_layers == c.num_hidden_layers);
  CHECK(r.intermediate_size == c.intermediate_size);
  CHECK(r.layer_norm_eps == c.layer_norm_eps);
  CHECK(r.initializer_range == c.initializer_range);
  CHECK(r.classifier_dropout == 0.2);
  CHECK(r.id2label == c.id2label);
  CHECK(r.label2id == c.label2id);
  CHECK(r.architectures == c.architectures);
  CHECK(r.extra == c.extra);
  CHECK(r.to_json() == c.to_json());
  // transformers' layout: sorted keys, ids as strings, a trailing newline.
  const std::string text = c.to_json();
  CHECK(text.find("\"id2label\": {\n    \"0\": \"negative\",") != std::string::npos);
  CHECK(text.find("\"_name_or_path\"") < text.find("\"architectures\""));
  CHECK(text.back() == '\n');
  check_error([&] { c.save((dir.path / "missing" / "config.json").string()); },
              {"cannot create a temporary file"});
}

TEST_CASE("bert config: the fetched checkpoint's config.json matches the committed copy",
          "[bert-config][cpu-only]") {
  const char* cache = std::getenv("LATHE_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path root =
      cache && *cache ? fs::path(cache) : fs::path(home ? home : "/root") / ".cache" / "lathe";
  const fs::path dir = root / "models" / "all-MiniLM-L6-v2";
  if (!fs::exists(dir / "config.json")) {
    WARN("skipped: " << (dir / "config.json").string()
                     << " is absent (run scripts/fetch-assets.sh)");
    return;
  }
  CHECK(BertConfig::load(dir.string()).to_json() ==
        BertConfig::load(minilm_config().string()).to_json());
}
