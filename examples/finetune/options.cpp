#include "options.h"

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "lathe/core/error.h"

namespace lathe::finetune {

namespace fs = std::filesystem;

namespace {
// CLI11's NonNegativeNumber / PositiveNumber report their upper bound, DBL_MAX, in %f: a
// 309-digit number in the message. These say what is wrong in a few words.
CLI::Validator sign_check(bool zero_allowed) {
  const std::string rule = zero_allowed ? ">= 0" : "> 0";
  return CLI::Validator(
      [zero_allowed, rule](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value) || std::isnan(value)) {
          return "expected a number, got '" + text + "'";
        }
        const bool ok = zero_allowed ? value >= 0 : value > 0;
        return ok ? std::string() : "must be " + rule + ", got " + text;
      },
      zero_allowed ? "NONNEGATIVE" : "POSITIVE", zero_allowed ? "non-negative" : "positive");
}
const CLI::Validator kNonNegative = sign_check(true);
const CLI::Validator kPositive = sign_check(false);

fs::path cache_dir() {
  if (const char* c = std::getenv("LATHE_CACHE"); c && *c) return c;
  const char* home = std::getenv("HOME");
  return fs::path(home ? home : ".") / ".cache" / "lathe";
}
}  // namespace

void add_options(CLI::App& app, Options& o) {
  app.description(
      "Fine-tunes a pretrained BERT encoder with a new classification head on labelled text, "
      "evaluates it on dev during training and on test at the end, and writes Hugging Face "
      "loadable checkpoints (best and last), metrics.jsonl, summary.json and a plot.");
  app.get_formatter()->column_width(34);
  // A repeated flag takes its last value, so scripts can append overrides to a base command.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  auto* g = "Model and data";
  app.add_option("--model", o.model,
                 "Hugging Face BERT directory (config.json, model.safetensors, vocab.txt) "
                 "[default: the fetched all-MiniLM-L6-v2]")
      ->group(g);
  app.add_flag("--random-init", o.random_init,
               "build the model from --model's config.json with random weights (tests, "
               "training from scratch)")
      ->group(g);
  app.add_option("--data", o.data,
                 "one labelled file (.tsv/.csv/.jsonl), split into train/dev/test here "
                 "(stratified, seeded)")
      ->group(g);
  app.add_option("--train", o.train, "training file [default: the fetched movie-review split]")
      ->group(g);
  app.add_option("--dev", o.dev, "development file (evaluation during training)")->group(g);
  app.add_option("--test", o.test, "test file (evaluated once, at the end, with the best model)")
      ->group(g);
  app.add_option("--text-field", o.text_field, "column or key holding the text")
      ->capture_default_str()
      ->group(g);
  app.add_option("--label-field", o.label_field, "column or key holding the label")
      ->capture_default_str()
      ->group(g);
  app.add_option("--subset", o.subset,
                 "train on a seeded stratified subset of N examples (0 = all)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--max-len", o.max_len,
                 "tokens per example incl. [CLS]/[SEP]; longer ones are "
                 "truncated (the summary reports how many)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(3), int64_t(1 << 20)))
      ->group(g);
  app.add_option("--pad-to-multiple-of", o.pad_to_multiple_of,
                 "pad each batch's length up to a multiple of N tokens (at most --max-len), so "
                 "batches take few shapes (0 = to the batch's longest example; 16 with "
                 "--cuda-graphs)")
      ->check(kNonNegative)
      ->group(g);
  g = "Training";
  app.add_option("--batch-size", o.batch_size, "examples per batch (per step without accumulation)")
      ->capture_default_str()
      ->check(kPositive)
      ->group(g);
  app.add_option("--gradient-accumulation-steps", o.gradient_accumulation_steps,
                 "batches per optimizer step, their gradients summed (each batch's loss weighted "
                 "by its share of the step's examples): the step of a batch N times larger in the "
                 "memory of one; steps, warmup and --eval-every count optimizer steps")
      ->capture_default_str()
      ->check(kPositive)
      ->group(g);
  app.add_option("--epochs", o.epochs, "passes over the training set")
      ->capture_default_str()
      ->check(kPositive)
      ->group(g);
  app.add_option("--max-steps", o.max_steps, "stop after N optimizer steps (0 = epochs decide)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--lr", o.lr, "peak learning rate (AdamW)")->capture_default_str()->group(g);
  app.add_option("--weight-decay", o.weight_decay,
                 "decoupled weight decay; biases and LayerNorm weights get none")
      ->capture_default_str()
      ->group(g);
  app.add_option("--warmup-ratio", o.warmup_ratio,
                 "fraction of the steps with a linear warmup from 0")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0))
      ->group(g);
  app.add_option("--schedule", o.schedule, "learning-rate decay after warmup")
      ->capture_default_str()
      ->check(CLI::IsMember({"linear", "cosine", "constant"}))
      ->group(g);
  app.add_option("--max-grad-norm", o.max_grad_norm, "clip the global gradient norm (0 = off)")
      ->capture_default_str()
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--layerwise-lr-decay", o.layerwise_lr_decay,
                 "lr of encoder layer i is lr * d^(L - i), embeddings lr * d^(L + 1); 1 = off")
      ->capture_default_str()
      ->group(g);
  app.add_option("--freeze-layers", o.freeze_layers,
                 "freeze the embeddings and the first N encoder layers (keeps more pretrained "
                 "knowledge, trains faster)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--lora-rank", o.lora_rank,
                 "train rank-R LoRA adapters on the attention and FFN projections (plus the "
                 "head) instead of all weights; merged into the weights on save (0 = off)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--lora-alpha", o.lora_alpha, "LoRA scale numerator (scale = alpha / rank)")
      ->capture_default_str()
      ->group(g);
  app.add_option("--lora-dropout", o.lora_dropout, "dropout on the LoRA input")
      ->capture_default_str()
      ->group(g);
  app.add_option("--dropout", o.dropout,
                 "hidden, attention and head dropout (default: the checkpoint's config)")
      ->group(g);
  app.add_option("--pooling", o.pooling,
                 "sentence features for the head: mean of the token states (what sentence "
                 "encoders like MiniLM are trained for) or cls (BERT's pooler)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cls", "mean"}))
      ->group(g);
  app.add_option("--seed", o.seed, "seed of the head init, data order, split and dropout")
      ->capture_default_str()
      ->group(g);
  g = "Execution";
  app.add_option("--device", o.device, "cpu or cuda[:N]")->capture_default_str()->group(g);
  app.add_option("--precision", o.precision,
                 "fp32; tf32: fp32 with the GEMMs on tensor cores in TF32 (cuda only; inputs "
                 "rounded to 10 mantissa bits); or bf16 autocast: matmuls and attention in bf16, "
                 "softmax, LayerNorm and the loss in f32, f32 master weights (fast on GPUs and on "
                 "cpus with AVX512-BF16 or AMX; other cpus emulate bf16 through f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "tf32", "bf16"}))
      ->group(g);
  app.add_option("--threads", o.threads, "cpu threads (0 = all cores)")
      ->check(kNonNegative)
      ->group(g);
  app.add_flag("--gradient-checkpointing", o.gradient_checkpointing,
               "keep only each encoder layer's input for backward and re-run the layer there: "
               "activation memory of one layer instead of all, for ~1/3 more compute per step; "
               "same results")
      ->group(g);
  app.add_flag("--cuda-graphs", o.cuda_graphs,
               "after the first step, replay each training step from CUDA graphs (one per "
               "kind of batch, captured at its first use, and the optimizer step's): a few "
               "launches instead of thousands, for small batches whose step is host-bound; same "
               "results as without it with the same padding (cuda devices)")
      ->group(g);
  app.add_option("--eval-every", o.eval_every,
                 "evaluate on dev and checkpoint every N steps (0 = at each epoch end)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--patience", o.patience,
                 "early stopping: stop after N evaluations without a better dev macro-F1 "
                 "(0 = never)")
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--train-eval-size", o.train_eval_size,
                 "training examples re-evaluated at each evaluation for the train-dev gap")
      ->capture_default_str()
      ->check(kNonNegative)
      ->group(g);
  app.add_option("--out", o.out,
                 "output directory: checkpoints/{best,last}, metrics.jsonl, summary.json, plot")
      ->capture_default_str()
      ->group(g);
  app.add_flag("--resume", o.resume,
               "continue the run in --out from its last checkpoint (after a crash or kill); "
               "the result is identical to an uninterrupted run")
      ->group(g);
  app.add_flag("--quiet", o.quiet, "no progress bar")->group(g);
}

void finalize_options(Options& o) {
  if (o.model.empty()) o.model = (cache_dir() / "models" / "all-MiniLM-L6-v2").string();
  if (o.data.empty() && o.train.empty()) {
    const fs::path d = cache_dir() / "data" / "movie-review-snippets";
    o.train = (d / "train.tsv").string();
    if (o.dev.empty()) o.dev = (d / "dev.tsv").string();
    if (o.test.empty()) o.test = (d / "test.tsv").string();
  }
  LATHE_CHECK(o.data.empty() || (o.train.empty() && o.dev.empty() && o.test.empty()),
              "--data splits one file; do not combine it with --train/--dev/--test");
  LATHE_CHECK(!o.train.empty() || !o.data.empty(), "give --data FILE or --train FILE");
  LATHE_CHECK(!o.data.empty() || !o.dev.empty(),
              "--train needs --dev too (evaluation during training)");
  LATHE_CHECK(o.lr > 0 && std::isfinite(o.lr), "--lr must be positive, got ", o.lr);
  LATHE_CHECK(o.weight_decay >= 0, "--weight-decay must be >= 0, got ", o.weight_decay);
  LATHE_CHECK(o.layerwise_lr_decay > 0 && o.layerwise_lr_decay <= 1,
              "--layerwise-lr-decay must be in (0, 1], got ", o.layerwise_lr_decay);
  LATHE_CHECK(o.lora_rank == 0 || (o.lora_alpha > 0 && o.lora_dropout >= 0 && o.lora_dropout < 1),
              "--lora-alpha must be > 0 and --lora-dropout in [0, 1)");
  LATHE_CHECK(o.lora_rank == 0 || o.freeze_layers == 0,
              "--lora-rank and --freeze-layers are alternatives; give one");
  LATHE_CHECK(o.dropout < 0 || o.dropout < 1, "--dropout must be in [0, 1), got ", o.dropout);
  if (o.cuda_graphs) {
    LATHE_CHECK(o.device.rfind("cuda", 0) == 0, "--cuda-graphs needs --device cuda[:N] (the ",
                o.device, " device runs its work as it is issued), got --device ", o.device);
    if (o.pad_to_multiple_of == 0) o.pad_to_multiple_of = 16;
  }
}

std::string Options::fingerprint() const {
  nlohmann::json j;
  j["model"] = fs::absolute(model).lexically_normal().string();
  j["random_init"] = random_init;
  auto abs = [](const std::string& p) {
    return p.empty() ? p : fs::absolute(p).lexically_normal().string();
  };
  j["data"] = abs(data);
  j["train"] = abs(train);
  j["dev"] = abs(dev);
  j["test"] = abs(test);
  j["text_field"] = text_field;
  j["label_field"] = label_field;
  j["dev_fraction"] = dev_fraction;
  j["test_fraction"] = test_fraction;
  j["subset"] = subset;
  j["max_len"] = max_len;
  if (pad_to_multiple_of > 1) j["pad_to_multiple_of"] = pad_to_multiple_of;
  j["batch_size"] = batch_size;
  // Absent at its default, so that checkpoints written before the option existed still resume.
  if (gradient_accumulation_steps != 1)
    j["gradient_accumulation_steps"] = gradient_accumulation_steps;
  j["epochs"] = epochs;
  j["max_steps"] = max_steps;
  j["lr"] = lr;
  j["weight_decay"] = weight_decay;
  j["warmup_ratio"] = warmup_ratio;
  j["schedule"] = schedule;
  j["max_grad_norm"] = max_grad_norm;
  j["layerwise_lr_decay"] = layerwise_lr_decay;
  j["freeze_layers"] = freeze_layers;
  j["lora_rank"] = lora_rank;
  j["lora_alpha"] = lora_alpha;
  j["lora_dropout"] = lora_dropout;
  j["dropout"] = dropout;
  j["pooling"] = pooling;
  j["seed"] = seed;
  j["device"] = device;
  j["precision"] = precision;
  j["eval_every"] = eval_every;
  j["patience"] = patience;
  j["train_eval_size"] = train_eval_size;
  return j.dump();
}

}  // namespace lathe::finetune
