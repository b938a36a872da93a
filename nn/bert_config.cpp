// config.json <-> BertConfig. Every value is type-checked on the way in, with the file and key in
// the error, because a config.json that says "hidden_size": "384" should fail here and not as a
// shape mismatch deep inside the model.
#include "lathe/nn/bert_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "lathe/core/error.h"

namespace lathe::nn {

namespace {

using json = nlohmann::json;

// Far above any classification head lathe trains (a 100k x 384 head is 150 MB of gradients).
constexpr int64_t kMaxLabels = 100'000;

std::string excerpt(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

// Parses JSON, refusing duplicate keys (nlohmann would silently keep the last one).
json parse_strict(const std::string& text, const std::string& source) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int, json::parse_event_t event, json& parsed) {
    using E = json::parse_event_t;
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty() && duplicate.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) duplicate = key;
    }
    return true;
  };
  json root;
  try {
    root = json::parse(text, callback);
  } catch (const json::exception& e) {
    LATHE_FAIL(source, ": not valid JSON: ", e.what());
  }
  LATHE_CHECK(duplicate.empty(), source, ": the key \"", duplicate, "\" appears more than once");
  return root;
}

int64_t get_int(const json& v, const std::string& key, const std::string& source) {
  LATHE_CHECK(
      v.is_number_integer() && (!v.is_number_unsigned() ||
                                v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max())),
      source, ": key \"", key, "\": expected an integer, got ", excerpt(v));
  return v.get<int64_t>();
}

double get_double(const json& v, const std::string& key, const std::string& source) {
  LATHE_CHECK(v.is_number(), source, ": key \"", key, "\": expected a number, got ", excerpt(v));
  return v.get<double>();
}

std::string get_string(const json& v, const std::string& key, const std::string& source) {
  LATHE_CHECK(v.is_string(), source, ": key \"", key, "\": expected a string, got ", excerpt(v));
  return v.get<std::string>();
}

void write_atomic(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string temp_name = ".";
  temp_name.append(target.filename().string()).append(".tmp-XXXXXX");
  std::string temp = (dir / temp_name).string();
  const int fd = ::mkstemp(temp.data());
  LATHE_CHECK(fd >= 0, path, ": cannot create a temporary file in ", dir.string(), ": ",
              std::strerror(errno));
  ::fchmod(fd, 0644);
  const char* p = text.data();
  size_t left = text.size();
  bool ok = true;
  while (left > 0 && ok) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    ok = w > 0;
    if (ok) {
      p += w;
      left -= static_cast<size_t>(w);
    }
  }
  const int saved = errno;
  ok = ok && ::fsync(fd) == 0;
  ok = (::close(fd) == 0) && ok;
  if (ok && ::rename(temp.c_str(), path.c_str()) == 0) return;
  const std::string reason = std::strerror(ok ? errno : saved);
  ::unlink(temp.c_str());
  LATHE_FAIL(path, ": cannot write: ", reason);
}

}  // namespace

void BertConfig::set_num_labels(int64_t n) {
  LATHE_CHECK(n > 0, "BertConfig: num_labels must be positive, got ", n);
  LATHE_CHECK(n <= kMaxLabels, "BertConfig: num_labels ", n, " exceeds the limit of ", kMaxLabels);
  id2label.clear();
  label2id.clear();
  for (int64_t i = 0; i < n; ++i) {
    const std::string name = "LABEL_" + std::to_string(i);
    id2label[i] = name;
    label2id[name] = i;
  }
}

void BertConfig::set_labels(const std::vector<std::string>& names) {
  LATHE_CHECK(!names.empty(), "BertConfig: set_labels needs at least one label");
  id2label.clear();
  label2id.clear();
  for (size_t i = 0; i < names.size(); ++i) {
    LATHE_CHECK(label2id.count(names[i]) == 0, "BertConfig: label \"", names[i], "\" given twice");
    id2label[int64_t(i)] = names[i];
    label2id[names[i]] = int64_t(i);
  }
}

void BertConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* key) {
    LATHE_CHECK(v > 0, source, ": key \"", key, "\" must be positive, got ", v);
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(intermediate_size, "intermediate_size");
  positive(max_position_embeddings, "max_position_embeddings");
  positive(type_vocab_size, "type_vocab_size");
  LATHE_CHECK(hidden_size % num_attention_heads == 0, source, ": key \"hidden_size\" (",
              hidden_size, ") is not a multiple of \"num_attention_heads\" (", num_attention_heads,
              ")");
  auto probability = [&](double v, const char* key) {
    LATHE_CHECK(v >= 0.0 && v < 1.0, source, ": key \"", key, "\" must be in [0, 1), got ", v);
  };
  probability(hidden_dropout_prob, "hidden_dropout_prob");
  probability(attention_probs_dropout_prob, "attention_probs_dropout_prob");
  if (classifier_dropout) probability(*classifier_dropout, "classifier_dropout");
  LATHE_CHECK(layer_norm_eps > 0.0 && std::isfinite(layer_norm_eps), source,
              ": key \"layer_norm_eps\" must be positive, got ", layer_norm_eps);
  LATHE_CHECK(initializer_range >= 0.0 && std::isfinite(initializer_range), source,
              ": key \"initializer_range\" must be non-negative, got ", initializer_range);
  LATHE_CHECK(!hidden_act.empty(), source, ": key \"hidden_act\" is empty");
  if (pad_token_id)
    LATHE_CHECK(*pad_token_id >= 0 && *pad_token_id < vocab_size, source,
                ": key \"pad_token_id\" (", *pad_token_id, ") is outside the vocabulary [0, ",
                vocab_size, ")");
  LATHE_CHECK(!id2label.empty(), source, ": key \"id2label\" is empty");
  int64_t expected = 0;
  for (const auto& [id, name] : id2label) {
    LATHE_CHECK(id == expected, source, ": key \"id2label\" must number the labels 0..",
                id2label.size() - 1, ", but has id ", id);
    ++expected;
  }
  LATHE_CHECK(label2id.size() == id2label.size(), source, ": keys \"label2id\" (", label2id.size(),
              " labels) and \"id2label\" (", id2label.size(), " labels) disagree");
  for (const auto& [name, id] : label2id) {
    auto it = id2label.find(id);
    LATHE_CHECK(it != id2label.end() && it->second == name, source, ": key \"label2id\" maps \"",
                name, "\" to ", id, ", which \"id2label\" does not map back");
  }
}

BertConfig BertConfig::from_json(const std::string& text, const std::string& source) {
  const json root = parse_strict(text, source);
  LATHE_CHECK(root.is_object(), source, ": config is not a JSON object but ", root.type_name());
  BertConfig c;
  std::optional<int64_t> num_labels;
  bool have_id2label = false, have_label2id = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "vocab_size")
      c.vocab_size = get_int(v, key, source);
    else if (key == "hidden_size")
      c.hidden_size = get_int(v, key, source);
    else if (key == "num_hidden_layers")
      c.num_hidden_layers = get_int(v, key, source);
    else if (key == "num_attention_heads")
      c.num_attention_heads = get_int(v, key, source);
    else if (key == "intermediate_size")
      c.intermediate_size = get_int(v, key, source);
    else if (key == "hidden_act")
      c.hidden_act = get_string(v, key, source);
    else if (key == "hidden_dropout_prob")
      c.hidden_dropout_prob = get_double(v, key, source);
    else if (key == "attention_probs_dropout_prob")
      c.attention_probs_dropout_prob = get_double(v, key, source);
    else if (key == "max_position_embeddings")
      c.max_position_embeddings = get_int(v, key, source);
    else if (key == "type_vocab_size")
      c.type_vocab_size = get_int(v, key, source);
    else if (key == "initializer_range")
      c.initializer_range = get_double(v, key, source);
    else if (key == "layer_norm_eps")
      c.layer_norm_eps = get_double(v, key, source);
    else if (key == "pad_token_id")
      c.pad_token_id = v.is_null() ? std::nullopt : std::optional(get_int(v, key, source));
    else if (key == "position_embedding_type")
      c.position_embedding_type = get_string(v, key, source);
    else if (key == "classifier_dropout")
      c.classifier_dropout = v.is_null() ? std::nullopt : std::optional(get_double(v, key, source));
    else if (key == "model_type")
      c.model_type = get_string(v, key, source);
    else if (key == "architectures") {
      c.architectures.clear();
      if (!v.is_null()) {
        LATHE_CHECK(v.is_array(), source,
                    ": key \"architectures\": expected a list of strings, got ", excerpt(v));
        for (const auto& a : v) c.architectures.push_back(get_string(a, key, source));
      }
    } else if (key == "num_labels") {
      num_labels = get_int(v, key, source);
      LATHE_CHECK(*num_labels > 0, source, ": key \"num_labels\" must be positive, got ",
                  *num_labels);
      // The labels are materialized as LABEL_i strings: a hostile "num_labels": 1e12 must not
      // turn into an allocation loop.
      LATHE_CHECK(*num_labels <= kMaxLabels, source, ": key \"num_labels\" (", *num_labels,
                  ") exceeds the limit of ", kMaxLabels);
    } else if (key == "id2label") {
      LATHE_CHECK(v.is_object(), source, ": key \"id2label\": expected an object, got ",
                  excerpt(v));
      have_id2label = true;
      c.id2label.clear();
      for (auto l = v.begin(); l != v.end(); ++l) {
        // JSON keys are strings; transformers turns them back into ints.
        int64_t id = -1;
        size_t used = 0;
        try {
          id = std::stoll(l.key(), &used);
        } catch (const std::exception&) {
          used = 0;
        }
        LATHE_CHECK(used > 0 && used == l.key().size() && id >= 0, source, ": key \"id2label\": \"",
                    l.key(), "\" is not a non-negative integer id");
        LATHE_CHECK(l.key()[0] >= '0' && l.key()[0] <= '9' && c.id2label.count(id) == 0, source,
                    ": key \"id2label\": id \"", l.key(), "\" is malformed or repeated");
        c.id2label[id] = get_string(l.value(), "id2label." + l.key(), source);
      }
    } else if (key == "label2id") {
      LATHE_CHECK(v.is_object(), source, ": key \"label2id\": expected an object, got ",
                  excerpt(v));
      have_label2id = true;
      c.label2id.clear();
      for (auto l = v.begin(); l != v.end(); ++l)
        c.label2id[l.key()] = get_int(l.value(), "label2id." + l.key(), source);
    } else {
      c.extra[key] = v.dump();
    }
  }
  if (have_id2label) {
    LATHE_CHECK(!num_labels || *num_labels == int64_t(c.id2label.size()), source,
                ": key \"num_labels\" (", *num_labels, ") disagrees with \"id2label\" (",
                c.id2label.size(), " labels)");
    if (!have_label2id) {
      c.label2id.clear();
      for (const auto& [id, name] : c.id2label) c.label2id[name] = id;
    }
  } else if (num_labels) {
    c.set_num_labels(*num_labels);
  } else if (have_label2id) {
    // transformers keeps a label2id given alone next to the default id2label; lathe needs the two
    // to agree, so it rebuilds id2label from it.
    c.id2label.clear();
    for (const auto& [name, id] : c.label2id) c.id2label[id] = name;
  }
  c.validate(source);
  return c;
}

BertConfig BertConfig::load(const std::string& path) {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "config.json");
  std::ifstream in(file, std::ios::binary);
  LATHE_CHECK(in.good(), file, ": cannot open: ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  LATHE_CHECK(!in.bad(), file, ": read failed");
  return from_json(text.str(), file);
}

std::string BertConfig::to_json() const {
  json root = json::object();
  for (const auto& [key, text] : extra) root[key] = json::parse(text);
  root["vocab_size"] = vocab_size;
  root["hidden_size"] = hidden_size;
  root["num_hidden_layers"] = num_hidden_layers;
  root["num_attention_heads"] = num_attention_heads;
  root["intermediate_size"] = intermediate_size;
  root["hidden_act"] = hidden_act;
  root["hidden_dropout_prob"] = hidden_dropout_prob;
  root["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
  root["max_position_embeddings"] = max_position_embeddings;
  root["type_vocab_size"] = type_vocab_size;
  root["initializer_range"] = initializer_range;
  root["layer_norm_eps"] = layer_norm_eps;
  root["pad_token_id"] = pad_token_id ? json(*pad_token_id) : json(nullptr);
  root["position_embedding_type"] = position_embedding_type;
  root["classifier_dropout"] = classifier_dropout ? json(*classifier_dropout) : json(nullptr);
  root["model_type"] = model_type;
  root["architectures"] = architectures;
  json i2l = json::object();
  for (const auto& [id, name] : id2label) i2l[std::to_string(id)] = name;
  root["id2label"] = i2l;
  root["label2id"] = label2id;
  return root.dump(2) + "\n";
}

void BertConfig::save(const std::string& path) const {
  std::string file = path;
  if (std::filesystem::is_directory(path)) file = (std::filesystem::path(path) / "config.json");
  write_atomic(file, to_json());
}

}  // namespace lathe::nn
