// Writes what tests/golden/check_hf_load.py needs to prove that transformers loads lathe's
// save_pretrained output and computes the same logits: MODEL_DIR is loaded as a
// BertForSequenceClassification with a fresh two-label head, saved to OUT/model (with its
// tokenizer), and OUT/input.safetensors receives the inputs of INPUTS.safetensors with lathe's
// eval-mode logits for them.
#include <filesystem>
#include <iostream>

#include "lathe/lathe.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: lathe-save-for-hf MODEL_DIR INPUTS.safetensors OUT_DIR\n";
    return 2;
  }
  try {
    namespace fs = std::filesystem;
    lathe::manual_seed(7);
    lathe::nn::PretrainedOptions options;
    options.labels = {"negative", "positive"};
    options.verbose = false;
    auto model = lathe::nn::load_bert_for_sequence_classification(argv[1], options);
    model->eval();
    const auto tokenizer = lathe::data::Tokenizer::from_directory(argv[1]);
    const fs::path out = argv[3];
    fs::create_directories(out);
    lathe::nn::save_pretrained(*model, (out / "model").string(), &tokenizer);
    const auto inputs = lathe::io::SafetensorsFile::open(argv[2]);
    std::map<std::string, lathe::Tensor> record;
    for (const char* name : {"input_ids", "attention_mask", "token_type_ids"}) {
      record[name] = inputs.tensor(name);
    }
    lathe::NoGradGuard no_grad;
    record["logits"] =
        model->forward(record["input_ids"], record["attention_mask"], record["token_type_ids"]);
    lathe::io::save_safetensors((out / "input.safetensors").string(), record);
    return 0;
  } catch (const lathe::Error& e) {
    std::cerr << "lathe-save-for-hf: " << e.what() << "\n";
    return 1;
  }
}
