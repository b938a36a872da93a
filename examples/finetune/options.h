// lathe-finetune's settings. Everything that changes the arithmetic of a run is part of its
// fingerprint: --resume refuses to continue a run with different settings, because the result
// would be neither the old run nor a new one.
#pragma once

#include <cstdint>
#include <string>

namespace CLI {
class App;
}

namespace lathe::finetune {

struct Options {
  // model and data
  std::string model;  // default: $LATHE_CACHE/models/all-MiniLM-L6-v2
  bool random_init = false;
  std::string data;  // one file, split train/dev/test here
  std::string train, dev, test;
  std::string text_field = "text";
  std::string label_field = "label";
  double dev_fraction = 0.1, test_fraction = 0.1;  // with --data
  int64_t subset = 0;                              // 0: all training examples
  int64_t max_len = 64;
  // > 0: batches padded to a multiple of this length (at most max_len), so they take few shapes.
  // 0: each batch padded to its longest example; --cuda-graphs makes it 16.
  int64_t pad_to_multiple_of = 0;
  // optimization
  int64_t batch_size = 32;
  int64_t gradient_accumulation_steps = 1;  // batches per optimizer step
  int64_t epochs = 3;
  int64_t max_steps = 0;  // 0: epochs decide
  double lr = 5e-5;
  double weight_decay = 0.01;
  double warmup_ratio = 0.1;
  std::string schedule = "linear";  // linear | cosine | constant
  double max_grad_norm = 1.0;
  double layerwise_lr_decay = 1.0;  // 1: off
  int64_t freeze_layers = 0;        // embeddings + the first N encoder layers frozen
  int64_t lora_rank = 0;            // 0: full fine-tuning
  double lora_alpha = 16.0;
  double lora_dropout = 0.0;
  double dropout = -1;  // < 0: the checkpoint's hidden/attention/classifier dropout
  std::string pooling = "mean";
  uint64_t seed = 42;
  // execution
  std::string device = "cpu";
  std::string precision = "fp32";
  int64_t threads = 0;
  bool gradient_checkpointing = false;  // not in the fingerprint: the results are the same
  // Training steps replayed from CUDA graphs (one per batch shape); not in the fingerprint: with
  // the same padding the results are the same.
  bool cuda_graphs = false;
  int64_t eval_every = 0;  // steps; 0: at the end of every epoch
  int64_t patience = 0;    // evaluations without dev improvement before stopping; 0: never
  int64_t train_eval_size = 512;
  std::string out = "runs/finetune";
  bool resume = false;
  bool quiet = false;

  // The settings that must match for --resume, as JSON.
  std::string fingerprint() const;
};

void add_options(CLI::App& app, Options& options);
// Fills defaults that depend on the environment and checks ranges; throws lathe::Error.
void finalize_options(Options& options);

}  // namespace lathe::finetune
