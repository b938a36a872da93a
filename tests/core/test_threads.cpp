// Several host threads using lathe at once, as a server does: one model answering requests from a
// pool of threads, or independent models trained side by side. What a thread sets (grad mode,
// autocast and its cast cache, the current cuda stream) is its own, and what threads share (the
// allocators, the kernel tables, the cuBLASLt handles, the random generator, tensors read by
// several threads) must be safe to use concurrently. Each thread's results are compared bit for
// bit with the same work done by one thread, which a race (a scratch buffer or a cache shared by
// mistake) would break; scripts/sanitize.sh runs their cuda variants under TSan too (the cpu ones
// fork OpenMP teams, which TSan cannot follow through the uninstrumented libgomp).
#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "lathe/core/checkpoint.h"
#include "lathe/core/random.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;
namespace fs = std::filesystem;

namespace {

constexpr int kThreads = 4;

nn::BertConfig thread_config() {
  nn::BertConfig c = tiny_bert_config();
  c.initializer_range = 0.2;  // logits of O(1), so a wrong bit in any layer shows
  return c;
}

// Request `r`: a batch of 3 sequences of length 7 with padding, its ids drawn from r.
struct Request {
  Tensor ids, mask;
};
Request make_request(int r, Device device) {
  std::vector<int64_t> ids(21), mask(21);
  for (int i = 0; i < 21; ++i) {
    const int length = 7 - (i / 7 + r) % 3;  // 7, 6 or 5 real tokens
    mask[size_t(i)] = i % 7 < length ? 1 : 0;
    ids[size_t(i)] = mask[size_t(i)] ? 1 + (r * 13 + i * 7) % 49 : 0;
  }
  return {from_vector(ids, {3, 7}, TensorOptions(DType::I64).device(device)),
          from_vector(mask, {3, 7}, TensorOptions(DType::I64).device(device))};
}

// Logits of a request under no_grad, in f32 or under bf16 autocast.
std::vector<float> classify(const nn::BertForSequenceClassification& model, const Request& req,
                            bool bf16) {
  NoGradGuard no_grad;
  std::optional<AutocastGuard> autocast;
  if (bf16) autocast.emplace(DType::BF16, std::nullopt);
  return model.forward(req.ids, req.mask).to_vector<float>();
}

// Runs fn(t) on kThreads threads at once (testing::on_threads).
void on_threads(const std::function<void(int)>& fn) {
  testing::on_threads(kThreads, [&](int t, const std::function<void()>& start) {
    start();
    fn(t);
  });
}

// Every parameter's values, in order.
std::vector<float> parameter_values(const nn::Module& model) {
  std::vector<float> all;
  for (const auto& [name, p] : model.named_parameters()) {
    const std::vector<float> v = p.to_vector<float>();
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

}  // namespace

TEST_CASE("threads: one model serves requests from several threads at once", "[threads][nn]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(11);
  nn::BertForSequenceClassification model(thread_config());
  model.to(device);
  model.eval();
  constexpr int kRequests = 6;
  std::vector<Request> requests;
  std::vector<std::vector<float>> want_f32, want_bf16;
  for (int r = 0; r < kRequests; ++r) {
    requests.push_back(make_request(r, device));
    want_f32.push_back(classify(model, requests.back(), false));
    want_bf16.push_back(classify(model, requests.back(), true));
  }
  CHECK(want_f32[0] != want_f32[1]);
  CHECK(want_f32[0] != want_bf16[0]);
  // Threads 0 and 2 in f32, 1 and 3 under bf16 autocast, each over every request twice in its own
  // order; a thread's grad mode and autocast state must not leak into the others.
  std::vector<int> mismatches(kThreads, 0), calls(kThreads, 0);
  on_threads([&](int t) {
    const bool bf16 = t % 2 == 1;
    for (int i = 0; i < 2 * kRequests; ++i) {
      const int r = (i * (t + 1) + t) % kRequests;
      const std::vector<float> got = classify(model, requests[size_t(r)], bf16);
      mismatches[size_t(t)] += got != (bf16 ? want_bf16 : want_f32)[size_t(r)];
      ++calls[size_t(t)];
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(calls[size_t(t)] == 2 * kRequests);
    CHECK(mismatches[size_t(t)] == 0);
  }
  // The calling thread's own state is as it was.
  CHECK(grad_mode_enabled());
  CHECK(!autocast_enabled(device.type));
}

TEST_CASE("threads: models trained side by side match models trained alone", "[threads][optim]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  // Each thread trains its own model for three AdamW steps with clipping; threads share the
  // allocator, the kernels and the autograd engine, not tensors. Dropout is off in this config,
  // so a step does not draw from the global generator and the order threads run in cannot matter.
  std::vector<std::unique_ptr<nn::BertForSequenceClassification>> models;
  for (int t = 0; t < kThreads; ++t) {
    manual_seed(uint64_t(100 + t));
    models.push_back(std::make_unique<nn::BertForSequenceClassification>(thread_config()));
    models.back()->to(device);
    models.back()->train();
  }
  auto step_all = [&](nn::BertForSequenceClassification& model, int t) {
    optim::AdamOptions options;
    options.lr = 1e-3;
    options.weight_decay = 0.01;
    optim::AdamW opt(model.named_parameters(), options);
    for (int s = 0; s < 3; ++s) {
      const Request req = make_request(t + s, device);
      const Tensor labels = from_vector(std::vector<int64_t>{int64_t(t % 2), 1, 0}, {3},
                                        TensorOptions(DType::I64).device(device));
      opt.zero_grad();
      cross_entropy(model.forward(req.ids, req.mask), labels).backward();
      optim::clip_grad_norm_(opt, 0.5);
      opt.step();
    }
    return parameter_values(model);
  };
  // Alone: a copy of each model, trained one after the other.
  std::vector<std::vector<float>> want;
  for (int t = 0; t < kThreads; ++t) {
    nn::BertForSequenceClassification copy(thread_config());
    copy.load_state_dict(models[size_t(t)]->state_dict());
    copy.to(device);
    copy.train();
    want.push_back(step_all(copy, t));
  }
  std::vector<std::vector<float>> got(kThreads);
  on_threads([&](int t) { got[size_t(t)] = step_all(*models[size_t(t)], t); });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(got[size_t(t)] == want[size_t(t)]);
  }
}

TEST_CASE("threads: a checkpointed block re-runs with its own draws while another thread draws",
          "[threads][checkpoint]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  // A helper thread reserves 1000 random numbers whenever asked, and the block asks it between
  // its start and its dropout in the first run, after its dropout in the re-run: the block's
  // reservation is then not where the generator stood when the block started, and the re-run
  // happens while another thread uses the generator.
  std::mutex mutex;
  std::condition_variable changed;
  int requested = 0, served = 0;
  bool stop = false;
  std::vector<PhiloxState> helper_draws;
  std::thread helper([&] {
    std::unique_lock lock(mutex);
    for (;;) {
      changed.wait(lock, [&] { return stop || requested > served; });
      if (requested == served) return;
      helper_draws.push_back(philox_reserve(1000));
      ++served;
      changed.notify_all();
    }
  });
  auto helper_draws_once = [&] {
    std::unique_lock lock(mutex);
    ++requested;
    changed.notify_all();
    changed.wait(lock, [&] { return served == requested; });
  };
  constexpr double p = 0.5;
  manual_seed(3);
  const Tensor x =
      random_tensor({4, 64}, 7, DType::F32, device, 0.5, 1.5).requires_grad_(true);  // no zeros
  int runs = 0;
  const Tensor y = checkpoint(
      [&](const Tensor& in) {
        const bool first = ++runs == 1;
        if (first) helper_draws_once();
        Tensor out = dropout(in * 2.0, p);
        if (!first) helper_draws_once();
        return out;
      },
      x);
  y.sum().backward();
  helper_draws_once();
  {
    std::lock_guard lock(mutex);
    stop = true;
    changed.notify_all();
  }
  helper.join();
  CHECK(runs == 2);
  // d/dx of dropout(2x) is 2 / (1 - p) = 4 where the forward kept the element, 0 where it did
  // not: the re-run must have drawn the forward's mask.
  const std::vector<double> yv = y.to_vector<double>(), gv = x.grad().to_vector<double>();
  int wrong = 0, kept = 0;
  for (size_t i = 0; i < yv.size(); ++i) {
    kept += yv[i] != 0;
    wrong += gv[i] != (yv[i] != 0 ? 4.0 : 0.0);
  }
  CHECK(wrong == 0);
  CHECK(kept > 64);
  CHECK(kept < 192);
  // The helper's reservations never overlap: the re-run did not move the global generator.
  REQUIRE(helper_draws.size() == 3);
  for (size_t i = 1; i < helper_draws.size(); ++i) {
    CHECK(helper_draws[i].offset >= helper_draws[i - 1].offset + 250);
  }
}

TEST_CASE("threads: one tokenizer encodes from several threads at once",
          "[threads][tokenizer][cpu-only]") {
  const fs::path tests = fs::path(LATHE_SOURCE_DIR) / "tests";
  const data::Tokenizer tokenizer =
      data::Tokenizer::from_vocab_file((tests / "data" / "small_vocab.txt").string());
  std::vector<std::string> lines;
  {
    std::ifstream in(tests / "golden" / "tokenizer_corpus.txt");
    for (std::string line; std::getline(in, line);) lines.push_back(line);
  }
  REQUIRE(lines.size() > 1000);
  std::vector<std::vector<int64_t>> want;
  for (const std::string& line : lines) want.push_back(tokenizer.encode_ids(line));
  std::vector<int> mismatches(kThreads, 0);
  on_threads([&](int t) {
    // Each thread walks the corpus with its own stride, so threads encode different lines at once.
    const size_t n = lines.size(), stride = size_t(2 * t + 1);
    for (size_t i = 0, k = size_t(t); i < n; ++i, k = (k + stride) % n) {
      mismatches[size_t(t)] += tokenizer.encode_ids(lines[k]) != want[k];
    }
  });
  for (int t = 0; t < kThreads; ++t) {
    INFO("thread " << t);
    CHECK(mismatches[size_t(t)] == 0);
  }
}

TEST_CASE("threads: set_num_threads applies to every thread, started before or after",
          "[threads][cpu-only]") {
  // OpenMP's own setting is per thread; lathe's is process-wide. A count other than the default,
  // so that a thread left at OpenMP's default would show.
  const int before = get_num_threads();
  const int wanted = before + 1;
  std::atomic<bool> go = false;
  int early_seen = 0, early_after_op = 0, late_seen = 0;
  double early_sum = 0;
  std::thread early([&] {
    (void)get_num_threads();  // this thread's OpenMP state exists before the change
    while (!go.load()) std::this_thread::yield();
    early_seen = get_num_threads();
    early_sum = sum(random_tensor({1000}, 5, DType::F64)).item<double>();
    early_after_op = get_num_threads();
  });
  set_num_threads(wanted);
  go.store(true);
  early.join();
  std::thread([&] { late_seen = get_num_threads(); }).join();
  set_num_threads(before);
  CHECK(early_seen == wanted);
  CHECK(early_after_op == wanted);
  CHECK(late_seen == wanted);
  CHECK(early_sum == Approx(sum(random_tensor({1000}, 5, DType::F64)).item<double>()));
  CHECK(get_num_threads() == before);
  check_error([] { set_num_threads(0); }, {"set_num_threads", "positive", "0"});
}
