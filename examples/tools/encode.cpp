// lathe-encode: sentence embeddings from a BERT checkpoint. Lines on stdin -> one line of
// space-separated floats per input line, in input order, computed in batches. With the defaults
// (mean pooling) and --normalize it reproduces sentence-transformers' encode() for checkpoints such
// as all-MiniLM-L6-v2. Bad arguments or an unreadable model give a one-line reason on stderr and a
// non-zero exit.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "lathe/lathe.h"
#include "tool_util.h"

namespace {

constexpr const char* kUsage =
    "usage: lathe-encode --model DIR [--pooling mean|cls] [--normalize] [--batch-size N]\n"
    "                    [--max-length N] [--device cpu|cuda[:N]] [--precision fp32|bf16|tf32]\n"
    "  --model DIR       a Hugging Face BERT folder (config.json, model.safetensors, vocab)\n"
    "  --pooling P       mean (default: mean of the token states, as sentence-transformers) or\n"
    "                    cls (the pooler output: tanh(dense(state of [CLS])))\n"
    "  --normalize       scale each embedding to unit L2 norm\n"
    "  --batch-size N    sentences per forward pass (default 32)\n"
    "  --max-length N    truncate to N tokens incl. [CLS]/[SEP] (default: the model folder's\n"
    "                    sentence_bert_config.json max_seq_length, else 512, capped by the\n"
    "                    model's max_position_embeddings)\n"
    "  --device D        cpu (default) or cuda\n"
    "  --precision P     fp32 (default); bf16: linears and attention in bf16 under autocast\n"
    "                    (fast on GPUs and on cpus with AVX512-BF16 or AMX); tf32: f32 GEMMs\n"
    "                    on tensor cores in TF32 (cuda only)\n";

using lathe::tools::fail;
using lathe::tools::positive_int;

// sentence-transformers keeps the truncation length in sentence_bert_config.json.
int64_t sentence_transformers_max_length(const std::string& dir) {
  std::ifstream in(std::filesystem::path(dir) / "sentence_bert_config.json");
  if (!in) return 0;
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto key = text.find("\"max_seq_length\"");
  if (key == std::string::npos) return 0;
  const auto colon = text.find(':', key);
  if (colon == std::string::npos) return 0;
  return std::strtoll(text.c_str() + colon + 1, nullptr, 10);
}

}  // namespace

int main(int argc, char** argv) {
  lathe::tools::tool_name() = "lathe-encode";
  std::string model_dir, pooling_name = "mean", device_name = "cpu", precision = "fp32";
  bool normalize = false;
  int64_t batch_size = 32, max_length = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--model") {
      model_dir = value();
    } else if (arg == "--pooling") {
      pooling_name = value();
    } else if (arg == "--normalize") {
      normalize = true;
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
    } else {
      fail("unknown argument '" + arg + "' (see --help)");
    }
  }
  if (model_dir.empty()) fail("--model DIR is required (see --help)");

  try {
    const lathe::nn::Pooling pooling = lathe::nn::parse_pooling(pooling_name);
    const lathe::Device device = lathe::Device::parse(device_name);
    lathe::nn::PretrainedOptions options;
    options.device = device;
    options.verbose = false;
    const auto model = lathe::nn::load_bert_model(model_dir, options);
    model->eval();
    if (pooling == lathe::nn::Pooling::Cls && !model->pooler) {
      fail(model_dir + ": --pooling cls needs a pooler, and this checkpoint has none");
    }
    const lathe::data::Tokenizer tokenizer = lathe::data::Tokenizer::from_directory(model_dir);
    if (max_length == 0) max_length = sentence_transformers_max_length(model_dir);
    if (max_length <= 0) max_length = 512;
    max_length = std::min(max_length, model->config().max_position_embeddings);

    lathe::data::EncodeOptions enc;
    enc.max_length = max_length;
    enc.padding = lathe::data::Padding::Longest;
    lathe::NoGradGuard no_grad;
    const lathe::tools::PrecisionScope precision_scope(precision, device);
    std::ios::sync_with_stdio(false);
    std::vector<std::string> batch;
    std::string line, out;
    auto flush = [&] {
      if (batch.empty()) return;
      const auto encodings = tokenizer.encode_batch(batch, enc);
      const auto n = static_cast<int64_t>(encodings.size());
      const auto b = lathe::tools::batch_tensors(encodings, device);
      const auto result = model->forward(b.input_ids, b.attention_mask, b.token_type_ids);
      const lathe::Tensor& mask_t = b.attention_mask;
      lathe::Tensor emb = pooling == lathe::nn::Pooling::Mean
                              ? lathe::nn::mean_pool(result.last_hidden_state, mask_t)
                              : result.pooler_output;
      if (normalize) emb = lathe::nn::l2_normalize(emb);
      const auto values = emb.to_vector<float>();
      const int64_t dim = emb.size(1);
      char buf[32];
      for (int64_t r = 0; r < n; ++r) {
        out.clear();
        for (int64_t c = 0; c < dim; ++c) {
          std::snprintf(buf, sizeof buf, c ? " %.9g" : "%.9g", double(values[size_t(r * dim + c)]));
          out += buf;
        }
        out += '\n';
        std::cout << out;
      }
      batch.clear();
    };
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      batch.push_back(line);
      if (int64_t(batch.size()) == batch_size) flush();
    }
    flush();
    std::cout.flush();
    if (!std::cout) fail("cannot write to stdout");
  } catch (const lathe::Error& e) {
    fail(e.what());
  }
  return 0;
}
