// from_pretrained / save_pretrained for the BERT family. Loading maps checkpoint names onto the
// model's (prefix, gamma/beta), decides per key whether it is used, ignored or freshly initialized,
// and only then touches the weights, so a checkpoint that cannot work fails before any copy with
// every problem named.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>

#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"
#include "lathe/data/tokenizer.h"
#include "lathe/io/safetensors.h"
#include "lathe/nn/bert.h"
#include "lathe/nn/lora.h"

namespace lathe::nn {

namespace fs = std::filesystem;

std::string PretrainedReport::str() const {
  std::ostringstream os;
  if (!initialized.empty()) {
    os << "newly initialized (not in the checkpoint):";
    for (const auto& n : initialized) os << " " << n;
    os << "\n";
  }
  if (!ignored.empty()) {
    os << "ignored checkpoint keys:";
    for (const auto& n : ignored) os << " " << n;
    os << "\n";
  }
  if (!renamed.empty()) os << "renamed " << renamed.size() << " checkpoint keys\n";
  return os.str();
}

namespace {

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}
bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

BertConfig load_config(const std::string& dir, const PretrainedOptions& options, Pooling* pooling) {
  LATHE_CHECK(fs::is_directory(dir), dir, ": not a model directory (expected config.json and ",
              "model.safetensors inside)");
  BertConfig config = BertConfig::load(dir);
  if (!options.labels.empty()) config.set_labels(options.labels);
  if (options.hidden_dropout) config.hidden_dropout_prob = *options.hidden_dropout;
  if (options.attention_dropout) config.attention_probs_dropout_prob = *options.attention_dropout;
  if (options.classifier_dropout) config.classifier_dropout = *options.classifier_dropout;
  config.validate((fs::path(dir) / "config.json").string());
  if (pooling) {
    *pooling = Pooling::Cls;
    auto it = config.extra.find("lathe_pooling");
    if (it != config.extra.end()) {
      LATHE_CHECK(it->second == "\"cls\"" || it->second == "\"mean\"", dir,
                  "/config.json: lathe_pooling must be \"cls\" or \"mean\", got ", it->second);
      *pooling = it->second == "\"mean\"" ? Pooling::Mean : Pooling::Cls;
    }
    if (options.pooling) *pooling = *options.pooling;
  }
  return config;
}

io::SafetensorsFile open_weights(const std::string& dir) {
  const fs::path file = fs::path(dir) / "model.safetensors";
  if (!fs::exists(file)) {
    const bool has_bin = fs::exists(fs::path(dir) / "pytorch_model.bin");
    LATHE_FAIL(file.string(), ": not found",
               has_bin ? " (the directory has pytorch_model.bin; lathe reads safetensors only — "
                         "convert it with transformers' save_pretrained(safe_serialization=True))"
                       : "");
  }
  return io::SafetensorsFile::open(file.string());
}

// Loads `file` into `model`. `map_key` turns a checkpoint key into the model's name ("" = not a
// model key); `optional_prefixes` name the parameters that may be missing (fresh init).
void load_into(Module& model, const io::SafetensorsFile& file, const PretrainedOptions& options,
               const std::function<std::string(const std::string&)>& map_key,
               const std::vector<std::string>& optional_prefixes, PretrainedReport& report) {
  const StateDict own = model.state_dict();
  StateDict dict;
  std::set<std::string> reinit_prefixes;
  std::vector<std::string> errors;
  for (const std::string& key : file.names()) {
    std::string name = key;
    if (ends_with(name, "LayerNorm.gamma")) name = name.substr(0, name.size() - 5) + "weight";
    if (ends_with(name, "LayerNorm.beta")) name = name.substr(0, name.size() - 4) + "bias";
    name = map_key(name);
    if (name.empty() || !own.count(name)) {
      report.ignored.push_back(key);
      continue;
    }
    if (name != key) report.renamed.push_back(key + " -> " + name);
    const auto& info = file.info(key);
    const Tensor& target = own.at(name);
    if (info.shape != target.shape()) {
      // A head for another label set is replaced, as transformers' ignore_mismatched_sizes.
      const bool optional = std::any_of(optional_prefixes.begin(), optional_prefixes.end(),
                                        [&](const std::string& p) { return starts_with(name, p); });
      if (optional && starts_with(name, "classifier.")) {
        reinit_prefixes.insert("classifier.");
        report.ignored.push_back(key + " (shape " + shape_str(info.shape) + ", model has " +
                                 shape_str(target.shape()) + ")");
        continue;
      }
      errors.push_back(key + ": checkpoint shape " + shape_str(info.shape) + ", model expects " +
                       shape_str(target.shape()));
      continue;
    }
    LATHE_CHECK(!dict.count(name), file.path(), ": two checkpoint keys map to '", name, "'");
    dict.emplace(name, Tensor());
  }
  for (const auto& [name, t] : own) {
    if (dict.count(name)) continue;
    const bool optional = std::any_of(optional_prefixes.begin(), optional_prefixes.end(),
                                      [&](const std::string& p) { return starts_with(name, p); });
    if (optional) {
      report.initialized.push_back(name);
    } else {
      errors.push_back(name + ": missing from the checkpoint");
    }
  }
  if (!errors.empty()) {
    std::ostringstream os;
    for (const auto& e : errors) os << "\n  " << e;
    LATHE_FAIL(file.path(), ": checkpoint does not fit ", model.type_name(), ":", os.str());
  }
  // A classifier partly kept and partly replaced would be meaningless: replace it all.
  if (reinit_prefixes.count("classifier.")) {
    for (auto it = dict.begin(); it != dict.end();) {
      if (starts_with(it->first, "classifier.")) {
        report.initialized.push_back(it->first);
        it = dict.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Now read the tensors (zero-copy on the cpu where the dtype matches).
  std::map<std::string, std::string> model_to_key;
  for (const std::string& key : file.names()) {
    std::string name = key;
    if (ends_with(name, "LayerNorm.gamma")) name = name.substr(0, name.size() - 5) + "weight";
    if (ends_with(name, "LayerNorm.beta")) name = name.substr(0, name.size() - 4) + "bias";
    name = map_key(name);
    if (dict.count(name)) model_to_key[name] = key;
  }
  for (auto& [name, t] : dict) t = file.tensor(model_to_key.at(name), options.device);
  model.to(options.device);
  LoadOptions lo;
  lo.strict = false;
  lo.assign = true;
  model.load_state_dict(dict, lo);
  std::sort(report.initialized.begin(), report.initialized.end());
  if (options.verbose && (!report.initialized.empty() || !report.ignored.empty())) {
    std::cerr << "lathe: loaded " << file.path() << "\n" << report.str();
  }
}

}  // namespace

std::shared_ptr<BertForSequenceClassification> load_bert_for_sequence_classification(
    const std::string& dir, const PretrainedOptions& options, PretrainedReport* report_out) {
  Pooling pooling = Pooling::Cls;
  const BertConfig config = load_config(dir, options, &pooling);
  const io::SafetensorsFile file = open_weights(dir);
  auto model = std::make_shared<BertForSequenceClassification>(config, pooling);
  PretrainedReport report;
  auto map_key = [](const std::string& k) -> std::string {
    if (ends_with(k, "position_ids")) return "";
    if (starts_with(k, "bert.") || starts_with(k, "classifier.")) return k;
    // A bare BertModel checkpoint (sentence-transformers, BertModel.save_pretrained).
    if (starts_with(k, "embeddings.") || starts_with(k, "encoder.") || starts_with(k, "pooler.")) {
      return "bert." + k;
    }
    return "";
  };
  load_into(*model, file, options, map_key, {"bert.pooler.", "classifier."}, report);
  if (report_out) *report_out = std::move(report);
  return model;
}

std::shared_ptr<BertModel> load_bert_model(const std::string& dir, const PretrainedOptions& options,
                                           PretrainedReport* report_out) {
  const BertConfig config = load_config(dir, options, nullptr);
  const io::SafetensorsFile file = open_weights(dir);
  auto model = std::make_shared<BertModel>(config, true);
  PretrainedReport report;
  auto map_key = [](const std::string& k) -> std::string {
    if (ends_with(k, "position_ids")) return "";
    if (starts_with(k, "bert.")) return k.substr(5);
    return k;
  };
  load_into(*model, file, options, map_key, {"pooler."}, report);
  if (report_out) *report_out = std::move(report);
  return model;
}

// ---- saving ----

namespace {

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

void write_text_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  LATHE_CHECK(out.good(), path.string(), ": cannot create: ", std::strerror(errno));
  out << text;
  out.flush();
  LATHE_CHECK(out.good(), path.string(), ": write failed: ", std::strerror(errno));
  out.close();
  fsync_path(path, false);
}

void write_tokenizer_files(const data::Tokenizer& tokenizer, const fs::path& dir) {
  std::string vocab;
  for (int64_t i = 0; i < tokenizer.vocab_size(); ++i) {
    vocab += tokenizer.id_to_token(i);
    vocab += '\n';
  }
  write_text_file(dir / "vocab.txt", vocab);
  const auto& o = tokenizer.options();
  auto quote = [](const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out + "\"";
  };
  std::ostringstream cfg;
  cfg << "{\n"
      << "  \"tokenizer_class\": \"BertTokenizer\",\n"
      << "  \"do_lower_case\": " << (o.lowercase ? "true" : "false") << ",\n"
      << "  \"strip_accents\": "
      << (o.strip_accents ? (*o.strip_accents ? "true" : "false") : "null") << ",\n"
      << "  \"tokenize_chinese_chars\": " << (o.handle_chinese_chars ? "true" : "false") << ",\n"
      << "  \"unk_token\": " << quote(o.unk_token) << ",\n"
      << "  \"sep_token\": " << quote(o.sep_token) << ",\n"
      << "  \"pad_token\": " << quote(o.pad_token) << ",\n"
      << "  \"cls_token\": " << quote(o.cls_token) << ",\n"
      << "  \"mask_token\": " << quote(o.mask_token) << "\n"
      << "}\n";
  write_text_file(dir / "tokenizer_config.json", cfg.str());
}

void save_model_dir(const StateDict& state, BertConfig config, const std::string& dir,
                    const data::Tokenizer* tokenizer) {
  write_directory_atomically(dir, [&](const std::string& tmp) {
    std::map<std::string, Tensor> tensors(state.begin(), state.end());
    // transformers refuses safetensors files without format "pt".
    io::save_safetensors((fs::path(tmp) / "model.safetensors").string(), tensors,
                         {{"format", "pt"}});
    config.save((fs::path(tmp) / "config.json").string());
    if (tokenizer) write_tokenizer_files(*tokenizer, tmp);
  });
}

}  // namespace

namespace {
BertConfig export_config(const BertForSequenceClassification& model) {
  BertConfig config = model.config();
  config.architectures = {"BertForSequenceClassification"};
  if (model.pooling() == Pooling::Mean) {
    config.extra["lathe_pooling"] = "\"mean\"";
  } else {
    config.extra.erase("lathe_pooling");
  }
  return config;
}
}  // namespace

void save_pretrained(const BertForSequenceClassification& model, const std::string& dir,
                     const data::Tokenizer* tokenizer) {
  save_model_dir(merged_state_dict(model), export_config(model), dir, tokenizer);
}

void write_pretrained_files(const BertForSequenceClassification& model, const std::string& dir,
                            const data::Tokenizer* tokenizer) {
  const StateDict state = merged_state_dict(model);
  io::save_safetensors((fs::path(dir) / "model.safetensors").string(),
                       std::map<std::string, Tensor>(state.begin(), state.end()),
                       {{"format", "pt"}});
  export_config(model).save((fs::path(dir) / "config.json").string());
  if (tokenizer) write_tokenizer_files(*tokenizer, dir);
}

void save_pretrained(const BertModel& model, const std::string& dir,
                     const data::Tokenizer* tokenizer) {
  BertConfig config = model.config();
  config.architectures = {"BertModel"};
  save_model_dir(merged_state_dict(model), config, dir, tokenizer);
}

void write_directory_atomically(const std::string& dir_in,
                                const std::function<void(const std::string&)>& write) {
  LATHE_CHECK(!dir_in.empty(), "write_directory_atomically: empty path");
  fs::path dir = fs::path(dir_in);
  if (!dir.has_filename()) dir = dir.parent_path();  // "out/" -> "out"
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  LATHE_CHECK(!ec, parent.string(), ": cannot create directory: ", ec.message());
  LATHE_CHECK(!fs::exists(dir) || fs::is_directory(dir), dir.string(),
              ": exists and is not a directory");
  std::random_device rd;
  const std::string suffix = std::to_string(::getpid()) + "-" + std::to_string(rd());
  const fs::path tmp = parent / ("." + dir.filename().string() + ".tmp-" + suffix);
  fs::create_directory(tmp, ec);
  LATHE_CHECK(!ec, tmp.string(), ": cannot create directory: ", ec.message());
  try {
    write(tmp.string());
    fsync_path(tmp, true);
    if (!fs::exists(dir)) {
      LATHE_CHECK(::rename(tmp.c_str(), dir.c_str()) == 0, dir.string(), ": cannot rename ",
                  tmp.string(), " into place: ", std::strerror(errno));
    } else {
      // Swap old and new in one step where the kernel can (Linux renameat2), so DIR is never
      // absent; elsewhere move the old one aside first.
#ifdef RENAME_EXCHANGE
      if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
        fs::remove_all(tmp, ec);
      } else
#endif
      {
        const fs::path old = parent / ("." + dir.filename().string() + ".old-" + suffix);
        LATHE_CHECK(::rename(dir.c_str(), old.c_str()) == 0, dir.string(),
                    ": cannot move the previous directory aside: ", std::strerror(errno));
        LATHE_CHECK(::rename(tmp.c_str(), dir.c_str()) == 0, dir.string(), ": cannot rename ",
                    tmp.string(), " into place: ", std::strerror(errno));
        fs::remove_all(old, ec);
      }
    }
    fsync_path(parent, true);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace lathe::nn
