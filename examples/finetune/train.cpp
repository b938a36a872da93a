#include "train.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "data.h"
#include "lathe/lathe.h"
#include "report.h"
#include "step_graphs.h"

namespace lathe::finetune {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---- the run's mutable state: exactly what a checkpoint must hold ----
struct TrainState {
  int64_t global_step = 0;
  int64_t epoch = 0;           // epoch of the next batch
  int64_t batch_in_epoch = 0;  // index of the next batch in plan(epoch)
  PhiloxState rng;
  double best_metric = -1;  // dev macro-F1 of the best checkpoint
  int64_t best_step = -1;
  int64_t evals_without_improvement = 0;
  double loss_sum = 0;  // train loss since the last evaluation
  int64_t loss_count = 0;
  double elapsed = 0;  // seconds of training before this process
  int64_t examples_seen = 0;
  double log_loss = 0;  // train loss since the last "train" record of metrics.jsonl
  int64_t log_count = 0;
  int64_t last_checkpoint_step = -1;
};

const char* kStateFile = "training_state.safetensors";
const char* kLoraFile = "trainable.safetensors";

std::map<std::string, std::string> state_metadata(const TrainState& s, const Options& o) {
  json j;
  j["global_step"] = s.global_step;
  j["epoch"] = s.epoch;
  j["batch_in_epoch"] = s.batch_in_epoch;
  j["rng_seed"] = std::to_string(s.rng.seed);  // 64-bit values as strings (JSON doubles)
  j["rng_offset"] = std::to_string(s.rng.offset);
  j["best_metric"] = s.best_metric;
  j["best_step"] = s.best_step;
  j["evals_without_improvement"] = s.evals_without_improvement;
  j["loss_sum"] = s.loss_sum;
  j["loss_count"] = s.loss_count;
  j["elapsed"] = s.elapsed;
  j["examples_seen"] = s.examples_seen;
  j["log_loss"] = s.log_loss;
  j["log_count"] = s.log_count;
  return {{"finetune/state", j.dump()}, {"finetune/options", o.fingerprint()}};
}

TrainState parse_state(const std::string& text, const std::string& source) {
  try {
    const json j = json::parse(text);
    TrainState s;
    s.global_step = j.at("global_step").get<int64_t>();
    s.epoch = j.at("epoch").get<int64_t>();
    s.batch_in_epoch = j.at("batch_in_epoch").get<int64_t>();
    s.rng.seed = std::stoull(j.at("rng_seed").get<std::string>());
    s.rng.offset = std::stoull(j.at("rng_offset").get<std::string>());
    s.best_metric = j.at("best_metric").get<double>();
    s.best_step = j.at("best_step").get<int64_t>();
    s.evals_without_improvement = j.at("evals_without_improvement").get<int64_t>();
    s.loss_sum = j.at("loss_sum").get<double>();
    s.loss_count = j.at("loss_count").get<int64_t>();
    s.elapsed = j.at("elapsed").get<double>();
    s.examples_seen = j.at("examples_seen").get<int64_t>();
    s.log_loss = j.at("log_loss").get<double>();
    s.log_count = j.at("log_count").get<int64_t>();
    s.last_checkpoint_step = s.global_step;
    return s;
  } catch (const std::exception& e) {
    LATHE_FAIL(source, ": malformed finetune/state metadata: ", e.what());
  }
}

// Names the settings that differ between a checkpoint and this invocation.
void check_same_options(const std::string& saved, const Options& o, const std::string& source) {
  const json a = json::parse(saved), b = json::parse(o.fingerprint());
  std::string diff;
  for (auto it = b.begin(); it != b.end(); ++it) {
    if (!a.contains(it.key()) || a.at(it.key()) != it.value()) {
      diff += "\n  --" + it.key() + ": checkpoint " +
              (a.contains(it.key()) ? a.at(it.key()).dump() : "(default)") + ", now " +
              it.value().dump();
    }
  }
  // Settings left out of the fingerprint at their default (gradient_accumulation_steps).
  for (auto it = a.begin(); it != a.end(); ++it) {
    if (!b.contains(it.key())) {
      diff += "\n  --" + it.key() + ": checkpoint " + it.value().dump() + ", now (default)";
    }
  }
  LATHE_CHECK(diff.empty(), source,
              ": --resume needs the settings of the interrupted run; these differ:", diff,
              "\n(start a new run with another --out, or drop --resume)");
}

// Test hooks: die as `kill -9` would at a chosen step, or in the middle of a checkpoint write.
int64_t env_step(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoll(v, nullptr, 10) : -1;
}

struct EvalResult {
  Metrics metrics;
  std::vector<int64_t> predicted;  // in input order
};

// `graphed` (--cuda-graphs): the model's forward as a GraphedFunction, one graph per batch shape,
// kept across evaluations (the weights change in place, at the same addresses).
EvalResult evaluate(const nn::BertForSequenceClassification& model, const data::Batcher& batcher,
                    int64_t num_labels, Device device, bool bf16,
                    GraphedFunction* graphed = nullptr) {
  NoGradGuard no_grad;
  std::optional<AutocastGuard> autocast;
  if (bf16) autocast.emplace(DType::BF16, device.type);
  const bool was_training = model.is_training();
  const_cast<nn::BertForSequenceClassification&>(model).eval();
  std::vector<int64_t> predicted(static_cast<size_t>(batcher.size()), 0), truth(predicted.size());
  double loss_sum = 0;
  for (const auto& indices : batcher.plan(0)) {
    const data::Batch b = batcher.collate(indices);
    // A graph's logits are overwritten by its next replay, which stream order puts after the
    // reads below.
    const Tensor logits = graphed
                              ? (*graphed)({b.input_ids, b.attention_mask, b.token_type_ids})[0]
                              : model.forward(b.input_ids.to(device), b.attention_mask.to(device),
                                              b.token_type_ids.to(device));
    CrossEntropyOptions ce;
    ce.reduction = Reduction::Sum;
    loss_sum += cross_entropy(logits, b.labels.to(device), ce).item<double>();
    const auto pred = logits.argmax(1).to_vector<int64_t>();
    const auto lab = b.labels.to_vector<int64_t>();
    for (size_t i = 0; i < indices.size(); ++i) {
      predicted[size_t(indices[i])] = pred[i];
      truth[size_t(indices[i])] = lab[i];
    }
  }
  if (was_training) const_cast<nn::BertForSequenceClassification&>(model).train();
  EvalResult r;
  r.metrics = compute_metrics(predicted, truth, num_labels);
  r.metrics.loss = loss_sum / double(batcher.size());
  r.predicted = std::move(predicted);
  return r;
}

// Removes temporary directories a killed checkpoint write left behind.
void remove_stale_temporaries(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 1 && name[0] == '.' &&
        (name.find(".tmp-") != std::string::npos || name.find(".old-") != std::string::npos)) {
      fs::remove_all(e.path(), ec);
    }
  }
}

struct History {
  std::vector<CurvePoint> train_loss, dev_loss, dev_accuracy, dev_f1;
};

// Rebuilds the plot series from metrics.jsonl (after it was truncated to the checkpoint).
History read_history(const std::string& path) {
  History h;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || !j.contains("kind")) continue;
    const double step = j["step"].get<double>();
    auto num = [&](const char* k) {
      return j.contains(k) && j[k].is_number() ? j[k].get<double>() : NAN;
    };
    if (j["kind"] == "train") {
      h.train_loss.push_back({step, num("loss")});
    } else if (j["kind"] == "eval") {
      h.dev_loss.push_back({step, num("dev_loss")});
      h.dev_accuracy.push_back({step, num("dev_accuracy")});
      h.dev_f1.push_back({step, num("dev_macro_f1")});
    }
  }
  return h;
}

json metrics_json(const Metrics& m, const data::LabelMap& labels) {
  json j;
  j["examples"] = m.count;
  j["loss"] = m.loss;
  j["accuracy"] = m.accuracy;
  j["macro_f1"] = m.macro_f1;
  json per = json::object();
  for (int64_t i = 0; i < labels.size(); ++i) {
    per[labels.name(i)] = {{"precision", m.precision[size_t(i)]},
                           {"recall", m.recall[size_t(i)]},
                           {"f1", m.f1[size_t(i)]}};
  }
  j["per_label"] = per;
  j["confusion"] = m.confusion;
  return j;
}

void write_json_atomically(const fs::path& path, const json& j) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    LATHE_CHECK(out.good(), tmp.string(), ": cannot create");
    out << j.dump(2) << "\n";
    LATHE_CHECK(out.good(), tmp.string(), ": write failed");
  }
  fs::rename(tmp, path);
}

}  // namespace

int run(const Options& o) {
  const auto wall_start = std::chrono::steady_clock::now();
  if (o.threads > 0) set_num_threads(static_cast<int>(o.threads));
  const Device device = Device::parse(o.device);
  const bool bf16 = o.precision == "bf16";
  // tf32: f32 weights and activations, the GEMMs on tensor cores in TF32 (the cpu has none: there
  // it is fp32).
  set_float32_matmul_precision(o.precision == "tf32" ? MatmulPrecision::High
                                                     : MatmulPrecision::Highest);
  if (o.precision == "tf32" && !device.is_cuda()) {
    std::fprintf(stderr, "lathe-finetune: --precision tf32 on the cpu computes in full f32\n");
  }
  const fs::path out = o.out;
  const fs::path ckpt_dir = out / "checkpoints";
  const fs::path last_dir = ckpt_dir / "last", best_dir = ckpt_dir / "best";
  fs::create_directories(ckpt_dir);
  remove_stale_temporaries(ckpt_dir);

  const bool resuming = o.resume && fs::exists(last_dir / kStateFile);
  if (o.resume && !resuming) {
    std::fprintf(stderr, "lathe-finetune: --resume: no checkpoint in %s yet, starting fresh\n",
                 last_dir.c_str());
  }
  if (!resuming) {
    // A fresh run must not mix with an older run's files.
    LATHE_CHECK(!fs::exists(last_dir) && !fs::exists(best_dir), out.string(),
                " already holds a run (checkpoints/). Use --resume to continue it or another "
                "--out");
  }
  TrainState st;
  std::optional<io::SafetensorsFile> state_file;
  if (resuming) {
    state_file = io::SafetensorsFile::open((last_dir / kStateFile).string());
    const auto& md = state_file->metadata();
    const std::string src = (last_dir / kStateFile).string();
    LATHE_CHECK(md.count("finetune/state") && md.count("finetune/options"), src,
                ": not a lathe-finetune training state (finetune/state metadata missing)");
    check_same_options(md.at("finetune/options"), o, src);
    st = parse_state(md.at("finetune/state"), src);
  }

  manual_seed(o.seed);
  // ---- 1. data ----
  const data::Tokenizer tokenizer = data::Tokenizer::from_directory(o.model);
  const PreparedData d = prepare_data(o, tokenizer);
  std::fprintf(stderr, "%s", d.summary.c_str());

  // ---- 2. model: pretrained encoder + new head ----
  nn::PretrainedOptions po;
  po.device = device;
  po.pooling = nn::parse_pooling(o.pooling);
  po.labels = d.labels.names();
  if (o.dropout >= 0) po.hidden_dropout = po.attention_dropout = po.classifier_dropout = o.dropout;
  po.verbose = !resuming;
  std::shared_ptr<nn::BertForSequenceClassification> model;
  const bool full_weights_in_checkpoint = resuming && o.lora_rank == 0;
  if (full_weights_in_checkpoint) {
    model = nn::load_bert_for_sequence_classification(last_dir.string(), po);
  } else if (o.random_init) {
    nn::BertConfig config = nn::BertConfig::load(o.model);
    config.set_labels(d.labels.names());
    if (o.dropout >= 0) {
      config.hidden_dropout_prob = config.attention_probs_dropout_prob = o.dropout;
      config.classifier_dropout = o.dropout;
    }
    model = std::make_shared<nn::BertForSequenceClassification>(config, *po.pooling);
    model->to(device);
  } else {
    model = nn::load_bert_for_sequence_classification(o.model, po);
  }
  const int64_t num_layers = model->config().num_hidden_layers;
  if (o.freeze_layers > 0) {
    LATHE_CHECK(o.freeze_layers <= num_layers, "--freeze-layers ", o.freeze_layers,
                " exceeds the model's ", num_layers, " layers");
    model->freeze("bert.embeddings.");
    for (int64_t i = 0; i < o.freeze_layers; ++i) {
      model->freeze("bert.encoder.layer." + std::to_string(i) + ".");
    }
  }
  if (o.lora_rank > 0) {
    std::vector<std::string> trainable = {"classifier."};
    if (model->pooling() == nn::Pooling::Cls) trainable.push_back("bert.pooler.");
    nn::enable_lora(*model, o.lora_rank, o.lora_alpha, o.lora_dropout, trainable);
    if (resuming) {
      // The frozen base comes from --model; the trained tensors from the checkpoint.
      const auto file = io::SafetensorsFile::open((last_dir / kLoraFile).string());
      nn::LoadOptions lo;
      lo.strict = false;
      const nn::LoadReport r = model->load_state_dict(file.tensors(device), lo);
      LATHE_CHECK(r.unexpected_keys.empty(), file.path(), ": unexpected tensors:\n", r.str());
    }
  }
  model->train();
  model->bert->encoder->gradient_checkpointing = o.gradient_checkpointing;
  std::fprintf(stderr, "model: %s, %d layers, hidden %d, %s pooling; %s of %s parameters trained\n",
               o.random_init ? "random init" : o.model.c_str(), int(num_layers),
               int(model->config().hidden_size), o.pooling.c_str(),
               std::to_string(model->num_parameters(true)).c_str(),
               std::to_string(model->num_parameters()).c_str());

  // ---- 3. optimizer and schedule ----
  nn::NamedTensors trainable;
  for (auto& [name, p] : model->named_parameters()) {
    if (p.requires_grad()) trainable.emplace_back(name, p);
  }
  std::vector<optim::ParamGroup> groups =
      o.layerwise_lr_decay < 1.0
          ? optim::layerwise_lr_decay_groups(trainable, o.lr, o.weight_decay, o.layerwise_lr_decay,
                                             num_layers)
          : optim::no_decay_param_groups(trainable, o.lr, o.weight_decay);
  optim::AdamOptions ao = optim::adamw_defaults();
  optim::AdamW optimizer(std::move(groups), ao);

  data::BatchOptions bo;
  bo.batch_size = o.batch_size;
  bo.seed = o.seed;
  bo.pad_id = tokenizer.pad_id();
  bo.pad_to_multiple_of = o.pad_to_multiple_of;
  bo.max_padded_length = o.max_len;
  const data::Batcher train_batcher(d.train, bo);
  data::BatchOptions eval_bo = bo;
  eval_bo.shuffle = false;
  eval_bo.batch_size = std::max<int64_t>(o.batch_size, 64);
  const data::Batcher dev_batcher(d.dev, eval_bo);
  // A fixed sample of the training set, evaluated like dev, for the train-dev gap.
  std::vector<data::EncodedExample> train_sample;
  for (int64_t i : data::permutation(static_cast<int64_t>(d.train.size()), o.seed + 1)) {
    if (static_cast<int64_t>(train_sample.size()) >= o.train_eval_size) break;
    train_sample.push_back(d.train[size_t(i)]);
  }
  const bool have_train_sample = !train_sample.empty();
  const data::Batcher train_eval_batcher(have_train_sample ? train_sample : d.dev, eval_bo);

  // An optimizer step takes --gradient-accumulation-steps consecutive batches of the epoch's plan
  // (the epoch's last step what is left).
  const int64_t accumulate = o.gradient_accumulation_steps;
  const int64_t batches_per_epoch = static_cast<int64_t>(train_batcher.plan(0).size());
  const int64_t steps_per_epoch = (batches_per_epoch + accumulate - 1) / accumulate;
  const int64_t total_steps = o.max_steps > 0 ? o.max_steps : o.epochs * steps_per_epoch;
  const int64_t num_epochs = (total_steps + steps_per_epoch - 1) / steps_per_epoch;
  const auto warmup = static_cast<int64_t>(std::ceil(o.warmup_ratio * double(total_steps)));
  optim::Schedule schedule =
      o.schedule == "cosine"   ? optim::cosine_schedule_with_warmup(warmup, total_steps)
      : o.schedule == "linear" ? optim::linear_schedule_with_warmup(warmup, total_steps)
                               : optim::constant_schedule_with_warmup(warmup);
  optim::LRScheduler scheduler(optimizer, schedule);

  if (resuming) {
    optim::StateDict sd;
    sd.tensors = state_file->tensors(device);
    sd.metadata = state_file->metadata();
    optimizer.load_state_dict(sd, state_file->path());
    scheduler.load_state_dict(sd, state_file->path());
    philox_set(st.rng);
    std::fprintf(stderr, "resuming at step %lld of %lld (epoch %lld, batch %lld)\n",
                 static_cast<long long>(st.global_step), static_cast<long long>(total_steps),
                 static_cast<long long>(st.epoch + 1), static_cast<long long>(st.batch_in_epoch));
  }
  std::fprintf(stderr,
               "training: %lld steps (%lld per epoch, %lld epoch(s)), batch %lld%s, lr %g with "
               "%lld warmup steps (%s), weight decay %g%s%s\n",
               static_cast<long long>(total_steps), static_cast<long long>(steps_per_epoch),
               static_cast<long long>(num_epochs), static_cast<long long>(o.batch_size),
               accumulate > 1 ? (" x " + std::to_string(accumulate) + " accumulated").c_str() : "",
               o.lr, static_cast<long long>(warmup), o.schedule.c_str(), o.weight_decay,
               o.layerwise_lr_decay < 1 ? ", layer-wise lr decay" : "",
               o.lora_rank > 0 ? ", LoRA" : "");

  // ---- outputs ----
  const std::string metrics_path = (out / "metrics.jsonl").string();
  JsonlWriter metrics(metrics_path, resuming ? st.global_step : -1);
  if (!resuming) {
    // A fresh run starts a fresh log.
    std::FILE* f = std::fopen(metrics_path.c_str(), "w");
    if (f) std::fclose(f);
  }
  History history = read_history(metrics_path);
  const std::string title = "lathe-finetune: " + fs::path(o.model).filename().string();

  auto save_checkpoint = [&](const fs::path& dir, const TrainState& s) {
    nn::write_directory_atomically(dir.string(), [&](const std::string& tmp) {
      nn::write_pretrained_files(*model, tmp, &tokenizer);
      optim::StateDict opt_sd = optimizer.state_dict();
      const optim::StateDict sched_sd = scheduler.state_dict();
      opt_sd.metadata.insert(sched_sd.metadata.begin(), sched_sd.metadata.end());
      for (auto& kv : state_metadata(s, o)) opt_sd.metadata.insert(kv);
      io::save_safetensors((fs::path(tmp) / kStateFile).string(), opt_sd.tensors, opt_sd.metadata);
      if (o.lora_rank > 0) {
        std::map<std::string, Tensor> trained;
        for (auto& [name, p] : model->named_parameters()) {
          if (p.requires_grad()) trained.emplace(name, p);
        }
        io::save_safetensors((fs::path(tmp) / kLoraFile).string(), trained);
      }
      if (s.global_step == env_step("LATHE_FINETUNE_KILL_IN_CHECKPOINT")) std::raise(SIGKILL);
    });
  };

  // ---- 4. train ----
  // --quiet: evaluations and the summary only, no per-step progress.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> devnull(
      o.quiet ? std::fopen("/dev/null", "w") : nullptr,
      [](std::FILE* f) { return f ? std::fclose(f) : 0; });
  Progress progress(devnull ? devnull.get() : stderr, total_steps, 50);
  auto say = [&](const std::string& line) {
    if (o.quiet) {
      std::fprintf(stderr, "%s\n", line.c_str());
    } else {
      progress.message(line);
    }
  };
  const int64_t kill_at = env_step("LATHE_FINETUNE_KILL_AT_STEP");
  const auto run_start = std::chrono::steady_clock::now();
  auto elapsed_now = [&] {
    return st.elapsed +
           std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count();
  };
  const int64_t log_every = std::max<int64_t>(1, std::min<int64_t>(10, total_steps / 50));
  std::string stop_reason = "completed";
  if (o.patience > 0 && st.evals_without_improvement >= o.patience) stop_reason = "early_stopping";
  int exit_code = 0;
  double last_grad_norm = 0;

  // One step's forward and backward of batch b on the device, its loss weighted by `weight`;
  // returns the weighted loss, detached.
  // A defined `weight_tensor` (a graph's input) multiplies instead of `weight`, with the same bits.
  auto forward_backward = [&](const Tensor& ids, const Tensor& mask, const Tensor& types,
                              const Tensor& labels, double weight, const Tensor& weight_tensor) {
    std::optional<AutocastGuard> autocast;
    if (bf16) autocast.emplace(DType::BF16, device.type);
    const Tensor logits = model->forward(ids, mask, types);
    Tensor loss = cross_entropy(logits, labels);
    autocast.reset();
    if (weight_tensor.defined()) {
      loss = loss * weight_tensor.to(loss.dtype());
    } else if (weight != 1.0) {
      loss = loss * weight;
    }
    loss.backward();  // frees this batch's graph before the next forward
    return loss.detach();
  };
  auto clip = [&] {
    // clip_grad_norm_ also measures: an infinite max_norm never scales.
    return optim::clip_grad_norm_(optimizer, o.max_grad_norm > 0 ? o.max_grad_norm : INFINITY);
  };

  // --cuda-graphs (step_graphs.h): after this process's first step, which runs eagerly, every step
  // replays graphs, and evaluations replay a graph per eval batch shape.
  std::optional<StepGraphs> step_graphs;
  std::optional<GraphedFunction> eval_graphs;
  if (o.cuda_graphs) {
    step_graphs.emplace(
        device, optimizer, accumulate > 1,
        [&](const Tensor& ids, const Tensor& mask, const Tensor& types, const Tensor& labels,
            const Tensor& weight) {
          return forward_backward(ids, mask, types, labels, 1.0, weight);
        },
        clip);
    eval_graphs.emplace(graphed_forward(device, *model));
  }
  GraphedFunction* eval_graphed = eval_graphs ? &*eval_graphs : nullptr;
  bool graphs_ready = false;  // the gradients and the optimizer's state exist

  while (st.global_step < total_steps && exit_code == 0 && stop_reason == "completed") {
    const auto plan = train_batcher.plan(st.epoch);
    for (; st.batch_in_epoch < static_cast<int64_t>(plan.size()); ++st.batch_in_epoch) {
      if (st.global_step >= total_steps) break;
      // The step's batches: plan[first .. last]. Each batch's mean loss is weighted by its share
      // of the step's examples, so the summed gradient is that of the mean over all of them (a
      // batch of batch-size x accumulation, up to padding and dropout draws).
      const int64_t first = st.batch_in_epoch;
      const int64_t last = std::min<int64_t>(first + accumulate, int64_t(plan.size())) - 1;
      int64_t step_examples = 0;
      for (int64_t i = first; i <= last; ++i) step_examples += int64_t(plan[size_t(i)].size());
      Tensor step_loss;  // on the device: read once, below
      Tensor grad_norm;
      for (int64_t i = first; i <= last; ++i) {
        const data::Batch b = train_batcher.collate(plan[size_t(i)]);
        const double weight =
            first != last ? double(b.indices.size()) / double(step_examples) : 1.0;
        Tensor loss;
        if (graphs_ready) {
          const StepGraphs::Outputs& g = step_graphs->micro_batch(b, i == first, i == last, weight);
          loss = g.loss;
          if (i == last) grad_norm = g.grad_norm;
        } else {
          loss = forward_backward(b.input_ids.to(device), b.attention_mask.to(device),
                                  b.token_type_ids.to(device), b.labels.to(device), weight, {});
        }
        step_loss = step_loss.defined() ? step_loss + loss : loss;
      }
      if (!graphs_ready) grad_norm = clip();
      st.batch_in_epoch = last;  // the loop's increment moves past the step's batches
      // The loss and the norm are read after backward and clipping are queued, in one wait per
      // step (a GPU then never idles while the host queues the backward); a non-finite one stops
      // the run before the optimizer step, so the weights stay those of the last good step.
      const double loss_value = step_loss.item<double>();
      const int64_t step = st.global_step + 1;
      if (!std::isfinite(loss_value)) {
        say("step " + std::to_string(step) + ": the loss is " + std::to_string(loss_value) +
            "; stopping");
        exit_code = 3;
        break;
      }
      last_grad_norm = grad_norm.item<double>();
      if (!std::isfinite(last_grad_norm)) {
        say("step " + std::to_string(step) + ": the gradient norm is " +
            std::to_string(last_grad_norm) + "; stopping");
        exit_code = 3;
        break;
      }
      const double lr_used = optimizer.param_groups().back().lr;
      if (graphs_ready) {
        step_graphs->optimizer_step();
      } else {
        optimizer.step();
      }
      scheduler.step();
      // With graphs the gradients stay (the step graphs zero them in place, at fixed addresses).
      if (o.cuda_graphs) {
        graphs_ready = true;
      } else {
        optimizer.zero_grad();
      }
      st.global_step = step;
      st.examples_seen += step_examples;
      st.loss_sum += loss_value;
      ++st.loss_count;
      st.log_loss += loss_value;
      ++st.log_count;
      const double secs = elapsed_now();
      progress.update(step, st.epoch + 1, num_epochs, st.loss_sum / double(st.loss_count),
                      double(st.examples_seen) / std::max(secs, 1e-9));
      if (step % log_every == 0) {
        metrics.write({{"step", double(step)},
                       {"epoch", double(step) / double(steps_per_epoch)},
                       {"loss", st.log_loss / double(st.log_count)},
                       {"lr", lr_used},
                       {"grad_norm", last_grad_norm}},
                      {{"kind", "train"}});
        history.train_loss.push_back({double(step), st.log_loss / double(st.log_count)});
        st.log_loss = 0;
        st.log_count = 0;
      }
      if (step == kill_at) std::raise(SIGKILL);

      const bool epoch_end = st.batch_in_epoch + 1 == static_cast<int64_t>(plan.size());
      const bool evaluate_now =
          (o.eval_every > 0 ? step % o.eval_every == 0 : epoch_end) || step == total_steps;
      if (!evaluate_now) continue;

      // ---- evaluation, best/last checkpoints, early stopping ----
      const EvalResult dev =
          evaluate(*model, dev_batcher, d.labels.size(), device, bf16, eval_graphed);
      const EvalResult tr =
          have_train_sample
              ? evaluate(*model, train_eval_batcher, d.labels.size(), device, bf16, eval_graphed)
              : dev;
      const double train_loss = st.loss_sum / double(std::max<int64_t>(1, st.loss_count));
      const double gap = have_train_sample ? tr.metrics.accuracy - dev.metrics.accuracy : NAN;
      char line[512];
      int used =
          std::snprintf(line, sizeof line,
                        "step %lld (epoch %.2f): train loss %.4f | dev loss %.4f, accuracy "
                        "%.4f, macro-F1 %.4f",
                        static_cast<long long>(step), double(step) / double(steps_per_epoch),
                        train_loss, dev.metrics.loss, dev.metrics.accuracy, dev.metrics.macro_f1);
      if (have_train_sample && used > 0 && used < int(sizeof line)) {
        std::snprintf(line + used, sizeof line - size_t(used),
                      " | train accuracy %.4f, train-dev gap %+.4f%s", tr.metrics.accuracy, gap,
                      gap > 0.1 ? "  (overfitting: consider fewer epochs, more dropout, "
                                  "--freeze-layers or LoRA)"
                                : "");
      }
      say(line);
      metrics.write({{"step", double(step)},
                     {"epoch", double(step) / double(steps_per_epoch)},
                     {"train_loss", train_loss},
                     {"dev_loss", dev.metrics.loss},
                     {"dev_accuracy", dev.metrics.accuracy},
                     {"dev_macro_f1", dev.metrics.macro_f1},
                     {"train_accuracy", have_train_sample ? tr.metrics.accuracy : NAN},
                     {"train_dev_gap", gap},
                     {"lr", optimizer.param_groups().back().lr},
                     {"elapsed_s", secs}},
                    {{"kind", "eval"}});
      history.dev_loss.push_back({double(step), dev.metrics.loss});
      history.dev_accuracy.push_back({double(step), dev.metrics.accuracy});
      history.dev_f1.push_back({double(step), dev.metrics.macro_f1});
      st.loss_sum = 0;
      st.loss_count = 0;
      const bool improved = dev.metrics.macro_f1 > st.best_metric;
      if (improved) {
        st.best_metric = dev.metrics.macro_f1;
        st.best_step = step;
        st.evals_without_improvement = 0;
      } else {
        ++st.evals_without_improvement;
      }
      // The state as of after this batch: resuming continues with the next one.
      TrainState snapshot = st;
      snapshot.batch_in_epoch = st.batch_in_epoch + 1;
      if (epoch_end) {
        snapshot.epoch = st.epoch + 1;
        snapshot.batch_in_epoch = 0;
      }
      snapshot.rng = philox_current();
      snapshot.elapsed = secs;
      // best before last: if a kill lands between the two, the resumed run replays this
      // evaluation and rewrites best identically.
      if (improved) save_checkpoint(best_dir, snapshot);
      save_checkpoint(last_dir, snapshot);
      st.last_checkpoint_step = step;
      write_training_plot_svg((out / "plot.svg").string(), title, history.train_loss,
                              history.dev_loss, history.dev_accuracy, history.dev_f1);
      if (o.patience > 0 && st.evals_without_improvement >= o.patience) {
        say("early stopping: dev macro-F1 has not improved for " + std::to_string(o.patience) +
            " evaluation(s); best was step " + std::to_string(st.best_step));
        stop_reason = "early_stopping";
        break;
      }
    }
    if (exit_code != 0 || stop_reason != "completed") break;
    if (st.batch_in_epoch >= static_cast<int64_t>(plan.size())) {
      ++st.epoch;
      st.batch_in_epoch = 0;
    }
  }
  progress.finish();
  if (exit_code == 3) {
    std::fprintf(stderr,
                 "lathe-finetune: stopped on a non-finite value; %s. Lower --lr or check the "
                 "data.\n",
                 st.last_checkpoint_step >= 0
                     ? ("the last good checkpoint is " + last_dir.string() + " (step " +
                        std::to_string(st.last_checkpoint_step) + ")")
                           .c_str()
                     : "no checkpoint was written");
    return 3;
  }
  if (st.global_step >= total_steps && o.max_steps > 0) stop_reason = "max_steps";
  const double train_seconds = elapsed_now();
  // This process's training peak (a resumed run reports its own part).
  const size_t peak_memory = memory_stats(device).peak_allocated_bytes;
  write_training_plot_png((out / "plot.png").string(), title, history.train_loss, history.dev_loss,
                          history.dev_accuracy, history.dev_f1);

  // ---- test with the best weights ----
  json summary;
  summary["model"] = o.random_init ? "random init" : o.model;
  summary["labels"] = d.labels.names();
  summary["steps"] = st.global_step;
  summary["epochs"] = double(st.global_step) / double(steps_per_epoch);
  summary["stopped"] = stop_reason;
  summary["train_seconds"] = train_seconds;
  summary["train_examples_per_second"] = double(st.examples_seen) / std::max(train_seconds, 1e-9);
  summary["threads"] = get_num_threads();
  summary["device"] = device.str();
  summary["gradient_checkpointing"] = o.gradient_checkpointing;
  // Graphs this process captured: one per batch shape, and the optimizer step's.
  summary["peak_memory_bytes"] = peak_memory;
  summary["options"] = json::parse(o.fingerprint());
  summary["best"] = {{"step", st.best_step}, {"dev_macro_f1", st.best_metric}};
  nn::PretrainedOptions best_po;
  best_po.device = device;
  best_po.verbose = false;
  const auto best = nn::load_bert_for_sequence_classification(best_dir.string(), best_po);
  std::optional<GraphedFunction> best_graphs;
  if (o.cuda_graphs) best_graphs.emplace(graphed_forward(device, *best));
  GraphedFunction* best_graphed = best_graphs ? &*best_graphs : nullptr;
  const EvalResult best_dev =
      evaluate(*best, dev_batcher, d.labels.size(), device, bf16, best_graphed);
  summary["dev"] = metrics_json(best_dev.metrics, d.labels);
  std::fprintf(stderr, "best checkpoint: step %lld, dev accuracy %.4f, macro-F1 %.4f (%s)\n",
               static_cast<long long>(st.best_step), best_dev.metrics.accuracy,
               best_dev.metrics.macro_f1, best_dir.c_str());
  if (!d.test.empty()) {
    const data::Batcher test_batcher(d.test, eval_bo);
    const EvalResult test =
        evaluate(*best, test_batcher, d.labels.size(), device, bf16, best_graphed);
    summary["test"] = metrics_json(test.metrics, d.labels);
    std::fprintf(stderr, "test: %lld examples, loss %.4f, accuracy %.4f, macro-F1 %.4f\n%s",
                 static_cast<long long>(test.metrics.count), test.metrics.loss,
                 test.metrics.accuracy, test.metrics.macro_f1,
                 format_confusion(test.metrics, d.labels.names()).c_str());
  }
  // Training steps' graphs, and the evaluations' of the trained and of the best model.
  const int64_t graphs_captured = (step_graphs ? step_graphs->captured() : 0) +
                                  int64_t(eval_graphs ? eval_graphs->graphs() : 0) +
                                  int64_t(best_graphs ? best_graphs->graphs() : 0);
  summary["cuda_graphs"] = graphs_captured;
  summary["wall_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start).count();
  write_json_atomically(out / "summary.json", summary);
  std::fprintf(
      stderr,
      "wrote %s/{summary.json,metrics.jsonl,plot.svg} in %s; peak %s memory "
      "%.1f MiB%s%s\n",
      out.c_str(), format_duration(train_seconds).c_str(), device.str().c_str(),
      double(peak_memory) / double(1 << 20),
      o.gradient_checkpointing ? " (gradient checkpointing)" : "",
      o.cuda_graphs ? (", " + std::to_string(graphs_captured) + " CUDA graphs").c_str() : "");
  return 0;
}

}  // namespace lathe::finetune
