// lathe-example-mlp: a two-layer MLP learns a synthetic 3-class spiral, end to end on lathe's
// autograd. It is written the way a user would write it against the public API only: parameters
// are leaf tensors with requires_grad, the forward pass is linear -> relu -> linear ->
// cross_entropy, backward() fills .grad(), and a hand-written Adam updates the parameters in place
// under NoGradGuard. The data generator is seeded and uses a fixed-algorithm engine (mt19937_64 +
// Box-Muller), so a given --seed prints the same numbers on every machine.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <lathe/lathe.h>

namespace {

constexpr int64_t kClasses = 3;
constexpr int64_t kFeatures = 2;

struct Flags {
  int64_t epochs = 40;
  int64_t hidden = 64;
  int64_t batch = 32;
  int64_t points = 300;  // per class
  uint64_t seed = 0;
  double lr = 0.01;
  std::optional<double> require_accuracy;  // exit 1 when test accuracy ends below this
  std::string device = "cpu";
};

const char* kUsage =
    "usage: lathe-example-mlp [flags]\n"
    "  --epochs N            training epochs (default 40)\n"
    "  --hidden N            hidden units (default 64)\n"
    "  --batch N             minibatch size (default 32)\n"
    "  --points N            points per class, 2/3 train and 1/3 test (default 300)\n"
    "  --seed N              seed of the data and the initial weights (default 0)\n"
    "  --lr X                Adam learning rate (default 0.01)\n"
    "  --device D            cpu or cuda[:i] (default cpu)\n"
    "  --require-accuracy X  exit with status 1 if the final test accuracy is below X (0..1)\n"
    "  --help                show this text\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "lathe-example-mlp: " << message << "\n" << kUsage;
  std::exit(2);
}

template <class T>
T parse_number(std::string_view flag, std::string_view text, T lo, T hi) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size()) {
    usage_error("invalid value '" + std::string(text) + "' for " + std::string(flag));
  }
  if (!(value >= lo && value <= hi)) {
    std::ostringstream message;
    message << flag << " must be in [" << lo << ", " << hi << "], got " << text;
    usage_error(message.str());
  }
  return value;
}

Flags parse_flags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (!arg.starts_with("--")) usage_error("unexpected argument '" + std::string(arg) + "'");
    std::string_view name = arg, value;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    auto take_value = [&]() {
      if (has_value) return value;
      if (i + 1 >= argc) usage_error("missing value for " + std::string(name));
      return std::string_view(argv[++i]);
    };
    if (name == "--epochs") {
      f.epochs = parse_number<int64_t>(name, take_value(), 1, 100000);
    } else if (name == "--hidden") {
      f.hidden = parse_number<int64_t>(name, take_value(), 1, 65536);
    } else if (name == "--batch") {
      f.batch = parse_number<int64_t>(name, take_value(), 1, 1 << 20);
    } else if (name == "--points") {
      f.points = parse_number<int64_t>(name, take_value(), 3, 1 << 20);
    } else if (name == "--seed") {
      f.seed = parse_number<uint64_t>(name, take_value(), 0, std::numeric_limits<uint64_t>::max());
    } else if (name == "--lr") {
      f.lr = parse_number<double>(name, take_value(), 1e-9, 10.0);
    } else if (name == "--require-accuracy") {
      f.require_accuracy = parse_number<double>(name, take_value(), 0.0, 1.0);
    } else if (name == "--device") {
      f.device = std::string(take_value());
      try {
        const lathe::Device d = lathe::Device::parse(f.device);
        if (d.is_cuda() && d.index >= lathe::cuda_device_count()) {
          usage_error("--device " + f.device + ": this build of lathe has " +
                      std::to_string(lathe::cuda_device_count()) + " cuda device(s)");
        }
      } catch (const lathe::Error& e) {
        usage_error(std::string("--device: ") + e.what());
      }
    } else {
      usage_error("unknown flag '" + std::string(name) + "'");
    }
  }
  return f;
}

// ---- data: the classic 3-armed spiral (cs231n), which no linear model can separate ----
struct Dataset {
  std::vector<float> x;    // [n, 2] row-major
  std::vector<int64_t> y;  // [n]
  int64_t size() const { return int64_t(y.size()); }
};

// Uniform, normal and shuffle draws built on mt19937_64, whose output sequence the standard fixes
// (std::normal_distribution's and std::shuffle's algorithms are implementation-defined).
struct Rng {
  std::mt19937_64 engine;
  explicit Rng(uint64_t seed) : engine(seed) {}
  double uniform() { return double(engine() >> 11) * 0x1.0p-53; }
  double normal() {
    double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }
  // Fisher-Yates; the modulo bias of a 64-bit draw is far below anything visible here.
  void shuffle(std::vector<int64_t>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(engine() % i)]);
  }
};

void make_spiral(int64_t points_per_class, Rng& rng, Dataset& train, Dataset& test) {
  for (int64_t c = 0; c < kClasses; ++c) {
    std::vector<int64_t> order(static_cast<size_t>(points_per_class));
    std::iota(order.begin(), order.end(), 0);
    rng.shuffle(order);
    for (int64_t k = 0; k < points_per_class; ++k) {
      int64_t i = order[size_t(k)];
      double r = double(i) / double(points_per_class - 1);
      double theta = 4.0 * double(c) + 4.0 * r + 0.2 * rng.normal();
      // Every third point of each class goes to the test set: a stratified 2/3 : 1/3 split.
      Dataset& d = k % 3 == 2 ? test : train;
      d.x.push_back(float(r * std::sin(theta)));
      d.x.push_back(float(r * std::cos(theta)));
      d.y.push_back(c);
    }
  }
}

// ---- model ----
struct Mlp {
  lathe::Tensor w1, b1, w2, b2;

  // PyTorch's nn.Linear initialization: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
  static lathe::Tensor uniform_param(const lathe::Shape& shape, int64_t fan_in,
                                     lathe::Device device) {
    double bound = 1.0 / std::sqrt(double(fan_in));
    lathe::Tensor t = lathe::rand(shape, lathe::TensorOptions().device(device)) * (2.0 * bound);
    t = t - bound;
    return t.requires_grad_();
  }

  Mlp(int64_t hidden, lathe::Device device)
      : w1(uniform_param({hidden, kFeatures}, kFeatures, device)),
        b1(uniform_param({hidden}, kFeatures, device)),
        w2(uniform_param({kClasses, hidden}, hidden, device)),
        b2(uniform_param({kClasses}, hidden, device)) {}

  lathe::Tensor forward(const lathe::Tensor& x) const {
    return lathe::linear(lathe::relu(lathe::linear(x, w1, b1)), w2, b2);
  }
  std::vector<lathe::Tensor> parameters() const { return {w1, b1, w2, b2}; }
};

// Adam (Kingma & Ba) written with lathe's in-place ops. It runs under NoGradGuard: the update is
// not part of the model's graph, and in-place ops on tensors that require grad are refused
// while grad mode is on.
class Adam {
 public:
  Adam(std::vector<lathe::Tensor> params, double lr) : params_(std::move(params)), lr_(lr) {
    for (const lathe::Tensor& p : params_) {
      m_.push_back(lathe::zeros_like(p));
      v_.push_back(lathe::zeros_like(p));
    }
  }

  void zero_grad() {
    for (lathe::Tensor& p : params_) p.zero_grad();
  }

  void step() {
    lathe::NoGradGuard no_grad;
    ++t_;
    const double correction1 = 1.0 - std::pow(kBeta1, double(t_));
    const double correction2 = 1.0 - std::pow(kBeta2, double(t_));
    for (size_t i = 0; i < params_.size(); ++i) {
      lathe::Tensor g = params_[i].grad();
      if (!g.defined()) continue;
      m_[i].mul_(kBeta1).add_(g, 1.0 - kBeta1);
      v_[i].mul_(kBeta2).add_(g * g, 1.0 - kBeta2);
      lathe::Tensor update = (m_[i] / correction1) / (lathe::sqrt(v_[i] / correction2) + kEps);
      params_[i].add_(update, -lr_);
    }
  }

 private:
  static constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
  std::vector<lathe::Tensor> params_, m_, v_;
  double lr_;
  int64_t t_ = 0;
};

lathe::Tensor features_of(const Dataset& d, lathe::Device device) {
  return lathe::from_vector(d.x, {d.size(), kFeatures}).to(device);
}
lathe::Tensor labels_of(const Dataset& d, lathe::Device device) {
  return lathe::from_vector(d.y, {d.size()}).to(device);
}

double accuracy(const Mlp& model, const Dataset& d, lathe::Device device) {
  lathe::NoGradGuard no_grad;
  lathe::Tensor predicted = lathe::argmax(model.forward(features_of(d, device)), 1);
  std::vector<int64_t> p = predicted.to_vector<int64_t>();
  int64_t correct = 0;
  for (size_t i = 0; i < p.size(); ++i) correct += p[i] == d.y[i];
  return double(correct) / double(d.size());
}

int run(const Flags& flags) {
  const lathe::Device device = lathe::Device::parse(flags.device);
  Rng rng(flags.seed);
  Dataset train, test;
  make_spiral(flags.points, rng, train, test);
  lathe::manual_seed(flags.seed);  // the initial weights
  Mlp model(flags.hidden, device);
  Adam optimizer(model.parameters(), flags.lr);

  std::printf("lathe-example-mlp: MLP %lld -> %lld (relu) -> %lld on a %lld-class spiral\n",
              (long long)kFeatures, (long long)flags.hidden, (long long)kClasses,
              (long long)kClasses);
  std::printf(
      "  %lld train / %lld test points, batch %lld, Adam lr %g, seed %llu, %s, %d threads\n",
      (long long)train.size(), (long long)test.size(), (long long)flags.batch, flags.lr,
      (unsigned long long)flags.seed, device.str().c_str(), lathe::get_num_threads());

  const auto start = std::chrono::steady_clock::now();
  const int64_t report_every = std::max<int64_t>(1, flags.epochs / 20);
  std::vector<int64_t> order(static_cast<size_t>(train.size()));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t epoch = 1; epoch <= flags.epochs; ++epoch) {
    rng.shuffle(order);
    double loss_sum = 0.0;
    for (int64_t begin = 0; begin < train.size(); begin += flags.batch) {
      const int64_t n = std::min(flags.batch, train.size() - begin);
      Dataset batch;
      for (int64_t k = begin; k < begin + n; ++k) {
        const int64_t i = order[size_t(k)];
        batch.x.push_back(train.x[size_t(2 * i)]);
        batch.x.push_back(train.x[size_t(2 * i + 1)]);
        batch.y.push_back(train.y[size_t(i)]);
      }
      lathe::Tensor loss =
          lathe::cross_entropy(model.forward(features_of(batch, device)), labels_of(batch, device));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>() * double(n);
    }
    if (epoch == 1 || epoch % report_every == 0 || epoch == flags.epochs) {
      std::printf("epoch %4lld  loss %.4f  train accuracy %5.1f%%\n", (long long)epoch,
                  loss_sum / double(train.size()), 100.0 * accuracy(model, train, device));
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const double train_acc = accuracy(model, train, device), test_acc = accuracy(model, test, device);
  std::printf("final: train accuracy %.1f%%, test accuracy %.1f%% (%.2f s)\n", 100.0 * train_acc,
              100.0 * test_acc, seconds);
  if (flags.require_accuracy && test_acc < *flags.require_accuracy) {
    std::fprintf(stderr, "lathe-example-mlp: test accuracy %.3f is below the required %.3f\n",
                 test_acc, *flags.require_accuracy);
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Flags flags = parse_flags(argc, argv);
  try {
    return run(flags);
  } catch (const lathe::Error& e) {
    std::cerr << "lathe-example-mlp: " << e.what() << "\n";
    return 1;
  }
}
