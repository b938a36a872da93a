// lathe-classify: labels texts with a fine-tuned BERT sequence classifier (what lathe-finetune or
// transformers' save_pretrained writes: config.json with id2label, model.safetensors, vocab).
// Texts come from the arguments, or one per line from stdin; each gives one output line,
// LABEL<TAB>PROBABILITY<TAB>TEXT, or with --json an object with every label's probability. Bad
// arguments or an unreadable model give a one-line reason on stderr and exit status 2.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lathe/lathe.h"
#include "tool_util.h"

namespace {

constexpr const char* kUsage =
    "usage: lathe-classify --model DIR [--json] [--batch-size N] [--max-length N]\n"
    "                      [--device cpu|cuda[:N]] [--precision fp32|bf16|tf32]\n"
    "                      [--cuda-graphs] [TEXT...]\n"
    "  --model DIR       a fine-tuned classifier folder (config.json with id2label,\n"
    "                    model.safetensors, tokenizer.json or vocab.txt)\n"
    "  --json            one JSON object per text: text, label, probability, probabilities\n"
    "  --batch-size N    texts per forward pass (default 32)\n"
    "  --max-length N    truncate to N tokens incl. [CLS]/[SEP] (default 128, capped by the\n"
    "                    model's max_position_embeddings)\n"
    "  --device D        cpu (default) or cuda\n"
    "  --precision P     fp32 (default); bf16: linears and attention in bf16 under autocast\n"
    "                    (fast on GPUs and on cpus with AVX512-BF16 or AMX); tf32: f32 GEMMs\n"
    "                    on tensor cores in TF32 (cuda only)\n"
    "  --cuda-graphs     cuda only: capture the forward pass once per batch shape and replay it\n"
    "                    (one launch instead of hundreds: faster for small batches); the\n"
    "                    graphs share one memory pool\n"
    "  TEXT...           texts to classify; without any, one text per line of stdin.\n"
    "                    Use -- before texts that start with '-'.\n"
    "Output: LABEL<TAB>PROBABILITY<TAB>TEXT per text (tabs and newlines in TEXT shown as "
    "spaces).\n";

using lathe::tools::fail;
using lathe::tools::positive_int;

// JSON string literal of s; bytes that are not well-formed UTF-8 become U+FFFD (what the
// tokenizer made of them too), since JSON must be valid UTF-8 and input text is whatever bytes
// the user had.
void append_json_string(std::string& out, const std::string& s) {
  out += nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The shortest decimal that reads back as the value in the model's precision (float32 models give
// "0.97123", not the float's 17-digit double expansion).
void append_probability(std::string& out, double p, bool single_precision) {
  char buf[32];
  const auto r = single_precision ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(p))
                                  : std::to_chars(buf, buf + sizeof buf, p);
  out.append(buf, r.ptr);
}

}  // namespace

int main(int argc, char** argv) {
  lathe::tools::tool_name() = "lathe-classify";
  std::string model_dir, device_name = "cpu", precision = "fp32";
  bool json = false, cuda_graphs = false;
  int64_t batch_size = 32, max_length = 128;
  std::vector<std::string> texts;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--") {
      texts.insert(texts.end(), argv + i + 1, argv + argc);
      break;
    } else if (arg == "--model") {
      model_dir = value();
    } else if (arg == "--json") {
      json = true;
    } else if (arg == "--cuda-graphs") {
      cuda_graphs = true;
    } else if (arg == "--batch-size") {
      batch_size = positive_int(arg, value());
    } else if (arg == "--max-length") {
      max_length = positive_int(arg, value());
    } else if (arg == "--device") {
      device_name = value();
    } else if (arg == "--precision") {
      precision = lathe::tools::precision_arg(arg, value());
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else if (arg.size() > 1 && arg[0] == '-') {
      fail("unknown argument '" + arg + "' (see --help; put -- before texts starting with '-')");
    } else {
      texts.push_back(arg);
    }
  }
  if (model_dir.empty()) fail("--model DIR is required (see --help)");

  try {
    const lathe::Device device = lathe::Device::parse(device_name);
    if (cuda_graphs && !device.is_cuda()) fail("--cuda-graphs needs --device cuda");
    lathe::nn::PretrainedOptions options;
    options.device = device;
    options.verbose = false;
    lathe::nn::PretrainedReport report;
    const auto model =
        lathe::nn::load_bert_for_sequence_classification(model_dir, options, &report);
    // from_pretrained fills a missing head with random weights, which is right for fine-tuning and
    // wrong here: the labels would be noise.
    if (!report.initialized.empty()) {
      std::string names;
      for (const auto& name : report.initialized) names += (names.empty() ? "" : ", ") + name;
      fail(model_dir + " is not a fine-tuned classifier: the checkpoint lacks " + names);
    }
    model->eval();
    const lathe::nn::BertConfig& config = model->config();
    std::vector<std::string> labels;
    for (int64_t id = 0; id < config.num_labels(); ++id) {
      const auto it = config.id2label.find(id);
      labels.push_back(it != config.id2label.end() ? it->second : "LABEL_" + std::to_string(id));
    }
    const lathe::data::Tokenizer tokenizer = lathe::data::Tokenizer::from_directory(model_dir);
    max_length = std::min(max_length, config.max_position_embeddings);

    lathe::data::EncodeOptions enc;
    enc.max_length = max_length;
    enc.padding = lathe::data::Padding::Longest;
    lathe::NoGradGuard no_grad;
    const lathe::tools::PrecisionScope precision_scope(precision, device);
    // With --cuda-graphs: one graph per batch shape, all in one memory pool (cuda_graph.h).
    std::optional<lathe::GraphedFunction> graphed;
    if (cuda_graphs) {
      graphed.emplace(device, [&](const std::vector<lathe::Tensor>& in) {
        return std::vector<lathe::Tensor>{model->forward(in[0], in[1], in[2])};
      });
    }
    auto forward = [&](const lathe::tools::BatchTensors& b) {
      if (!graphed) return model->forward(b.input_ids, b.attention_mask, b.token_type_ids);
      return (*graphed)({b.input_ids, b.attention_mask, b.token_type_ids})[0];
    };
    std::ios::sync_with_stdio(false);
    std::string out;
    auto classify = [&](const std::vector<std::string>& batch) {
      if (batch.empty()) return;
      const auto encodings = tokenizer.encode_batch(batch, enc);
      const auto b = lathe::tools::batch_tensors(encodings, device);
      const lathe::Tensor logits = forward(b);
      const lathe::Tensor probs = lathe::softmax(logits, 1);
      const bool single = probs.dtype() != lathe::DType::F64;
      const std::vector<double> p = probs.to_vector<double>();
      const auto num_labels = static_cast<std::size_t>(logits.size(1));
      for (std::size_t r = 0; r < batch.size(); ++r) {
        const double* row = p.data() + r * num_labels;
        const auto best = static_cast<std::size_t>(std::max_element(row, row + num_labels) - row);
        out.clear();
        if (json) {
          out += "{\"text\": ";
          append_json_string(out, batch[r]);
          out += ", \"label\": ";
          append_json_string(out, labels[best]);
          out += ", \"probability\": ";
          append_probability(out, row[best], single);
          out += ", \"probabilities\": {";
          for (std::size_t l = 0; l < num_labels; ++l) {
            if (l) out += ", ";
            append_json_string(out, labels[l]);
            out += ": ";
            append_probability(out, row[l], single);
          }
          out += "}}\n";
        } else {
          char prob[32];
          std::snprintf(prob, sizeof prob, "%.4f", row[best]);
          std::string text = batch[r];
          // A tab or newline in the text would break the three-column line format.
          std::replace_if(
              text.begin(), text.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; },
              ' ');
          out += labels[best] + '\t' + prob + '\t' + text + '\n';
        }
        std::cout << out;
      }
      // Piped into another program line by line, results should not wait for the buffer to fill.
      std::cout.flush();
    };

    if (!texts.empty()) {
      for (std::size_t i = 0; i < texts.size(); i += std::size_t(batch_size)) {
        const auto end =
            texts.begin() + std::ptrdiff_t(std::min(texts.size(), i + std::size_t(batch_size)));
        classify(std::vector<std::string>(texts.begin() + std::ptrdiff_t(i), end));
      }
    } else {
      std::vector<std::string> batch;
      std::string line;
      while (std::getline(std::cin, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        batch.push_back(line);
        if (int64_t(batch.size()) == batch_size) {
          classify(batch);
          batch.clear();
        }
      }
      classify(batch);
    }
    std::cout.flush();
    if (!std::cout) fail("cannot write to stdout");
  } catch (const lathe::Error& e) {
    fail(e.what());
  } catch (const std::exception& e) {
    fail(e.what());
  }
  return 0;
}
