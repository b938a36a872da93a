// lathe::optim against independent references:
//  - PyTorch: SGD (momentum, dampening, Nesterov, weight decay), Adam (L2), AdamW with
//    transformers' linear-warmup and cosine schedules and clip_grad_norm_, replayed from
//    tests/golden/optim/optim_golden.safetensors (tests/golden/make_optim_goldens.py), in f64
//    (to 1e-12) and f32 (to 1e-6), on every device, fused and composed;
//  - float64 loops written here: each optimizer over several steps on odd sizes, non-contiguous
//    parameters and several groups; the fused AdamW kernel on many tensors, f32 and bf16 with
//    master weights;
//  - hand-computed values for the schedules, LambdaLR's semantics, the parameter-group rules;
//  - exact resume: a run interrupted by save_state / load_state into fresh objects ends
//    bit-identical to the uninterrupted run; load mismatches are reported by name.
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <numbers>

#include "lathe/io/safetensors.h"
#include "lathe/optim/optim.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::testing;
using optim::FusedMode;
using optim::NamedParameters;

namespace {

// ---- golden file ----

const io::SafetensorsFile& golden() {
  static const io::SafetensorsFile file = io::SafetensorsFile::open(
      std::string(LATHE_SOURCE_DIR) + "/tests/golden/optim/optim_golden.safetensors");
  return file;
}
std::vector<double> golden_values(const std::string& name) {
  return golden().tensor(name).to_vector<double>();
}

const std::vector<std::pair<std::string, Shape>> kGoldenParams = {
    {"layer.weight", {3, 4}}, {"layer.bias", {4}}, {"other.weight", {2, 3}}, {"norm.weight", {5}}};
constexpr int kGoldenSteps = 5;

struct GroupSpec {
  std::string name;
  std::vector<std::string> params;
  double lr, weight_decay;
};

// The CONFIGS of make_optim_goldens.py.
struct GoldenConfig {
  std::string name, optimizer;
  double momentum = 0, dampening = 0;
  bool nesterov = false;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::vector<GroupSpec> groups;
  std::string schedule;  // "", "linear", "cosine"
  int64_t warmup = 0, total = 0;
  double clip = 0;  // 0: no clipping
};

std::vector<GoldenConfig> golden_configs() {
  const std::vector<std::string> all = {"layer.weight", "layer.bias", "other.weight",
                                        "norm.weight"};
  std::vector<GoldenConfig> c(5);
  c[0].name = "sgd_nesterov";
  c[0].optimizer = "SGD";
  c[0].momentum = 0.9;
  c[0].nesterov = true;
  c[0].groups = {{"all", all, 0.1, 0.01}};
  c[1].name = "sgd_dampening";
  c[1].optimizer = "SGD";
  c[1].momentum = 0.8;
  c[1].dampening = 0.3;
  c[1].groups = {{"decay", {"layer.weight", "other.weight"}, 0.05, 0.02},
                 {"no_decay", {"layer.bias", "norm.weight"}, 0.05, 0.0}};
  c[2].name = "adam_l2";
  c[2].optimizer = "Adam";
  c[2].groups = {{"all", all, 1e-2, 0.1}};
  c[3].name = "adamw_linear";
  c[3].optimizer = "AdamW";
  c[3].groups = {{"decay", {"layer.weight", "other.weight"}, 1e-2, 0.05},
                 {"no_decay", {"layer.bias", "norm.weight"}, 1e-2, 0.0}};
  c[3].schedule = "linear";
  c[3].warmup = 2;
  c[3].total = 6;
  c[4].name = "adamw_cosine_clip";
  c[4].optimizer = "AdamW";
  c[4].beta1 = 0.8;
  c[4].beta2 = 0.99;
  c[4].eps = 1e-6;
  c[4].groups = {{"all", all, 2e-2, 0.1}};
  c[4].schedule = "cosine";
  c[4].warmup = 1;
  c[4].total = 5;
  c[4].clip = 1.0;
  return c;
}

std::unique_ptr<optim::Optimizer> make_optimizer(const GoldenConfig& c,
                                                 std::vector<optim::ParamGroup> groups,
                                                 FusedMode fused) {
  if (c.optimizer == "SGD") {
    optim::SGDOptions o;
    o.momentum = c.momentum;
    o.dampening = c.dampening;
    o.nesterov = c.nesterov;
    return std::make_unique<optim::SGD>(std::move(groups), o);
  }
  optim::AdamOptions o;
  o.beta1 = c.beta1;
  o.beta2 = c.beta2;
  o.eps = c.eps;
  o.fused = fused;
  if (c.optimizer == "Adam") return std::make_unique<optim::Adam>(std::move(groups), o);
  return std::make_unique<optim::AdamW>(std::move(groups), o);
}

std::string dtype_tag(DType t) {
  return t == DType::F32 ? "float32" : "float64";
}

// An f64 cpu tensor as a fresh leaf of `dtype` on `device`.
Tensor leaf(const Tensor& values, DType dtype, Device device) {
  return values.to(dtype).to(device).clone().requires_grad_(true);
}

// Bytes of a tensor (for bit-exact comparisons).
std::vector<uint8_t> bytes_of(const Tensor& t) {
  Tensor c = t.detach().to(Device::cpu()).contiguous();
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  return std::vector<uint8_t>(p, p + size_t(c.numel()) * element_size(c.dtype()));
}

// ---- float64 references ----

struct RefParam {
  std::vector<double> p, m, v, buf;
  int64_t step = 0;
  bool has_buf = false;
};

void ref_adam(RefParam& r, const std::vector<double>& g_in, double lr, double beta1, double beta2,
              double eps, double wd, bool decoupled) {
  ++r.step;
  if (r.m.empty()) r.m.assign(r.p.size(), 0.0), r.v.assign(r.p.size(), 0.0);
  const double bc1 = 1 - std::pow(beta1, double(r.step)), bc2 = 1 - std::pow(beta2, double(r.step));
  for (size_t i = 0; i < r.p.size(); ++i) {
    double g = g_in[i];
    if (decoupled) {
      r.p[i] *= 1 - lr * wd;
    } else {
      g += wd * r.p[i];
    }
    r.m[i] = beta1 * r.m[i] + (1 - beta1) * g;
    r.v[i] = beta2 * r.v[i] + (1 - beta2) * g * g;
    r.p[i] -= lr / bc1 * r.m[i] / (std::sqrt(r.v[i]) / std::sqrt(bc2) + eps);
  }
}

void ref_sgd(RefParam& r, const std::vector<double>& g_in, double lr, double momentum,
             double dampening, double wd, bool nesterov) {
  ++r.step;
  for (size_t i = 0; i < r.p.size(); ++i) {
    double g = g_in[i] + wd * r.p[i];
    if (momentum != 0) {
      if (!r.has_buf) {
        r.buf.resize(r.p.size());
      }
      r.buf[i] = r.has_buf ? momentum * r.buf[i] + (1 - dampening) * g : g;
      g = nesterov ? g + momentum * r.buf[i] : r.buf[i];
    }
    r.p[i] -= lr * g;
  }
  r.has_buf = momentum != 0;
}

// A fresh temporary directory, removed with its contents at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lathe-optim-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// PyTorch goldens
// ---------------------------------------------------------------------------------------------

TEST_CASE("optim: SGD, Adam and AdamW replay PyTorch's trajectories", "[optim][golden]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F64, DType::F32);
  auto fused = GENERATE(FusedMode::Auto, FusedMode::Never);
  const std::vector<double> has_grad = golden_values("has_grad");
  for (const GoldenConfig& c : golden_configs()) {
    if (c.optimizer == "SGD" && fused == FusedMode::Never) continue;  // SGD has one path
    INFO(c.name << " " << dtype << " on " << device.str()
                << (fused == FusedMode::Never ? " composed" : ""));
    std::map<std::string, Tensor> params;
    for (const auto& [name, shape] : kGoldenParams) {
      params[name] = leaf(golden().tensor("init/" + name), dtype, device);
    }
    std::vector<optim::ParamGroup> groups;
    for (const GroupSpec& g : c.groups) {
      optim::ParamGroup pg;
      pg.name = g.name;
      pg.lr = g.lr;
      pg.weight_decay = g.weight_decay;
      for (const std::string& p : g.params) {
        pg.param_names.push_back(p);
        pg.params.push_back(params[p]);
      }
      groups.push_back(pg);
    }
    auto opt = make_optimizer(c, groups, fused);
    std::unique_ptr<optim::LRScheduler> sched;
    if (c.schedule == "linear") {
      sched = std::make_unique<optim::LRScheduler>(
          *opt, optim::linear_schedule_with_warmup(c.warmup, c.total));
    } else if (c.schedule == "cosine") {
      sched = std::make_unique<optim::LRScheduler>(
          *opt, optim::cosine_schedule_with_warmup(c.warmup, c.total));
    }
    const std::vector<double> lrs = golden_values(c.name + "/lr");
    const double rtol = dtype == DType::F64 ? 1e-12 : 1e-6;
    const double atol = dtype == DType::F64 ? 1e-14 : 1e-7;
    for (int s = 0; s < kGoldenSteps; ++s) {
      INFO("step " << s);
      for (size_t k = 0; k < kGoldenParams.size(); ++k) {
        const std::string& name = kGoldenParams[k].first;
        Tensor& p = params[name];
        if (has_grad[size_t(s) * kGoldenParams.size() + k] != 0) {
          // A copy: clip_grad_norm_ scales it in place, and the golden tensors alias the file.
          p.set_grad(golden().tensor("grads/" + name).select(0, s).to(dtype).to(device).clone());
        } else {
          p.zero_grad();
        }
      }
      if (c.clip > 0) {
        const double total = optim::clip_grad_norm_(*opt, c.clip).item<double>();
        const double expected =
            golden_values(c.name + "/" + dtype_tag(dtype) + "/total_norm")[size_t(s)];
        CHECK(std::abs(total - expected) <= rtol * expected);
      }
      for (size_t g = 0; g < c.groups.size(); ++g) {
        CHECK(std::abs(opt->param_groups()[g].lr - lrs[size_t(s) * c.groups.size() + g]) <= 1e-15);
      }
      opt->step();
      if (sched) sched->step();
      for (const auto& [name, shape] : kGoldenParams) {
        INFO("parameter " << name);
        Tensor expected =
            golden().tensor(c.name + "/" + dtype_tag(dtype) + "/" + name).select(0, s + 1);
        check_close(params[name], expected.to_vector<double>(), shape, atol, rtol);
      }
    }
    // "other.weight" had no gradient at step 2: skipped, so it took one step fewer.
    CHECK(opt->state().at("other.weight").step == kGoldenSteps - 1);
    CHECK(opt->state().at("layer.weight").step == kGoldenSteps);
  }
}

TEST_CASE("optim: clip_grad_norm_ matches PyTorch for 2, inf, 1 and 3 norms", "[optim][golden]") {
  auto device = GENERATE(from_range(test_devices()));
  struct Case {
    const char* name;
    double norm_type, max_norm;
  };
  const double inf = std::numeric_limits<double>::infinity();
  for (const Case& c : {Case{"l2_clipped", 2.0, 0.5}, Case{"l2_unclipped", 2.0, 100.0},
                        Case{"inf", inf, 0.5}, Case{"l1", 1.0, 0.5}, Case{"p3", 3.0, 0.5}}) {
    INFO(c.name);
    std::vector<Tensor> params;
    for (const auto& [name, shape] : kGoldenParams) {
      Tensor p = zeros(shape, TensorOptions(DType::F32).device(device)).requires_grad_(true);
      p.set_grad((golden().tensor("grads/" + name).select(0, 0) * 3.0).to(DType::F32).to(device));
      params.push_back(p);
    }
    // A parameter without a gradient is skipped.
    params.push_back(zeros({3}, TensorOptions(DType::F32).device(device)).requires_grad_(true));
    const Tensor norm = optim::clip_grad_norm_(params, c.max_norm, c.norm_type);
    CHECK(norm.dim() == 0);
    CHECK(norm.dtype() == DType::F64);
    CHECK(norm.device() == device);
    const double total = norm.item<double>();
    const double expected = golden_values(std::string("clip/") + c.name + "/total_norm")[0];
    CHECK(std::abs(total - expected) <= 1e-6 * expected);
    for (size_t k = 0; k < kGoldenParams.size(); ++k) {
      const auto& [name, shape] = kGoldenParams[k];
      INFO("gradient of " << name);
      check_close(params[k].grad(), golden_values(std::string("clip/") + c.name + "/" + name),
                  shape, 1e-7, 1e-6);
    }
    CHECK_FALSE(params.back().grad().defined());
  }
}

TEST_CASE("optim: clip_grad_norm_ on non-contiguous gradients against a float64 loop",
          "[optim][clip]") {
  // Strided gradients take the composed path (tensor ops instead of the multi-tensor kernels);
  // its norm, its coefficient and its "coef >= 1 changes nothing" rule are those of the fused
  // path: x * f32(coef) for f32, x * coef for f64.
  auto device = GENERATE(from_range(test_devices()));
  const double inf = std::numeric_limits<double>::infinity();
  auto norm_type = GENERATE_COPY(2.0, 3.0, inf);
  auto max_norm = GENERATE(0.25, 1e3);
  INFO(device << " norm_type " << norm_type << " max_norm " << max_norm);
  std::vector<Tensor> params;
  std::vector<std::vector<double>> before;
  std::vector<DType> dtypes;
  double acc = 0.0;
  for (int k = 0; k < 3; ++k) {
    const DType dtype = k == 1 ? DType::F64 : DType::F32;
    Tensor p = zeros({5, 3 + k}, TensorOptions(dtype).device(device)).requires_grad_(true);
    Tensor g = non_contiguous(random_tensor({5, 3 + k}, 40 + uint64_t(k), dtype, device));
    REQUIRE_FALSE(g.is_contiguous());
    p.set_grad(g);
    before.push_back(g.to_vector<double>());
    dtypes.push_back(dtype);
    for (double v : before.back()) {
      acc = std::isinf(norm_type) ? std::max(acc, std::fabs(v))
                                  : acc + std::pow(std::fabs(v), norm_type);
    }
    params.push_back(p);
  }
  const double expected_total = std::isinf(norm_type) ? acc : std::pow(acc, 1.0 / norm_type);
  const Tensor total = optim::clip_grad_norm_(params, max_norm, norm_type);
  CHECK(total.dim() == 0);
  CHECK(total.dtype() == DType::F64);
  CHECK(total.device() == device);
  // f32 gradients are reduced in f32 on this path (as PyTorch's per-tensor norms are).
  CHECK(std::fabs(total.item<double>() - expected_total) <= 1e-6 * expected_total);
  const double coef = max_norm / (total.item<double>() + 1e-6);
  REQUIRE((coef < 1.0) == (max_norm < 1.0));  // both branches are covered
  for (size_t k = 0; k < params.size(); ++k) {
    INFO("gradient " << k);
    std::vector<double> expected = before[k];
    if (coef < 1.0) {
      for (double& v : expected) {
        v = dtypes[k] == DType::F64 ? v * coef : double(float(v) * float(coef));
      }
    }
    check_close(params[k].grad(), expected, params[k].shape(), 0.0,
                dtypes[k] == DType::F64 ? 1e-15 : 1e-7);
  }
}

TEST_CASE("optim: clip_grad_norm_ without gradients returns a cpu f64 zero", "[optim][clip]") {
  auto device = GENERATE(from_range(test_devices()));
  std::vector<Tensor> params = {zeros({3}, TensorOptions(DType::F32).device(device))};
  for (const Tensor& t :
       {optim::clip_grad_norm_(params, 1.0), optim::clip_grad_norm_(std::vector<Tensor>{}, 1.0)}) {
    CHECK(t.dim() == 0);
    CHECK(t.dtype() == DType::F64);
    CHECK(t.device() == Device::cpu());
    CHECK(t.item<double>() == 0.0);
  }
}

TEST_CASE("optim: schedules match transformers' lambdas", "[optim][golden]") {
  struct Case {
    const char* name;
    optim::Schedule schedule;
  };
  const std::vector<Case> cases = {
      {"linear_w3_t10", optim::linear_schedule_with_warmup(3, 10)},
      {"linear_w0_t4", optim::linear_schedule_with_warmup(0, 4)},
      {"cosine_w3_t10", optim::cosine_schedule_with_warmup(3, 10)},
      {"cosine_w2_t9_c1", optim::cosine_schedule_with_warmup(2, 9, 1.0)},
      {"constant_w3", optim::constant_schedule_with_warmup(3)},
  };
  for (const Case& c : cases) {
    INFO(c.name << " = " << c.schedule.description);
    const std::vector<double> expected = golden_values(std::string("schedule/") + c.name);
    for (size_t s = 0; s < expected.size(); ++s) {
      INFO("step " << s);
      CHECK(std::abs(c.schedule.factor(int64_t(s)) - expected[s]) <= 1e-15);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// float64 loops
// ---------------------------------------------------------------------------------------------

TEST_CASE("optim: SGD and Adam/AdamW match float64 loops on odd and strided parameters",
          "[optim]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F64, DType::F32);
  const std::vector<Shape> shapes = {{1}, {3}, {127}, {7, 9}, {1000}};
  const double tol = dtype == DType::F64 ? 1e-12 : 2e-5;
  for (const char* kind : {"sgd", "sgd_nesterov", "adam", "adamw"}) {
    INFO(kind << " " << dtype << " on " << device.str());
    NamedParameters named;
    std::vector<RefParam> ref(shapes.size());
    for (size_t k = 0; k < shapes.size(); ++k) {
      Tensor values = random_tensor(shapes[k], 100 + k, DType::F64, Device::cpu(), -1, 1)
                          .to(dtype)
                          .to(DType::F64);
      // The [7, 9] parameter is a transposed (non-contiguous) leaf: the composed path.
      Tensor p = shapes[k].size() == 2 ? non_contiguous(values.to(dtype).to(device))
                                       : values.to(dtype).to(device).clone();
      p.requires_grad_(true);
      std::string name = "p";
      name += std::to_string(k);
      name += k == 1 ? ".bias" : ".weight";
      named.push_back({name, p});
      ref[k].p = values.to_vector<double>();
    }
    REQUIRE_FALSE(named[3].second.is_contiguous());
    std::vector<optim::ParamGroup> groups = optim::no_decay_param_groups(named, 0.05, 0.1);
    REQUIRE(groups.size() == 2);
    std::unique_ptr<optim::Optimizer> opt;
    optim::SGDOptions so;
    optim::AdamOptions ao;
    ao.beta1 = 0.85;
    ao.beta2 = 0.98;
    ao.eps = 1e-7;
    const std::string k = kind;
    if (k == "sgd") {
      so.momentum = 0.7;
      so.dampening = 0.2;
      opt = std::make_unique<optim::SGD>(groups, so);
    } else if (k == "sgd_nesterov") {
      so.momentum = 0.9;
      so.nesterov = true;
      opt = std::make_unique<optim::SGD>(groups, so);
    } else if (k == "adam") {
      opt = std::make_unique<optim::Adam>(groups, ao);
    } else {
      opt = std::make_unique<optim::AdamW>(groups, ao);
    }
    for (int s = 0; s < 4; ++s) {
      for (size_t i = 0; i < shapes.size(); ++i) {
        Tensor& p = named[i].second;
        // Parameter 2 has no gradient in step 1.
        if (i == 2 && s == 1) {
          p.zero_grad();
          continue;
        }
        Tensor g =
            random_tensor(shapes[i], 1000 * s + i, DType::F64, Device::cpu(), -2, 2).to(dtype);
        p.set_grad(g.to(device));
        const double wd = i == 1 ? 0.0 : 0.1;  // p1 is a bias: the no_decay group
        if (k == "sgd" || k == "sgd_nesterov") {
          ref_sgd(ref[i], g.to_vector<double>(), 0.05, so.momentum, so.dampening, wd, so.nesterov);
        } else {
          ref_adam(ref[i], g.to_vector<double>(), 0.05, ao.beta1, ao.beta2, ao.eps, wd,
                   k == "adamw");
        }
      }
      opt->step();
      for (size_t i = 0; i < shapes.size(); ++i) {
        INFO("step " << s << " parameter " << named[i].first);
        check_close(named[i].second, ref[i].p, shapes[i], tol, tol);
      }
    }
  }
}

TEST_CASE("optim: fused AdamW kernel matches the composed path and a float64 loop",
          "[optim][fused]") {
  auto device = GENERATE(from_range(test_devices()));
  auto decoupled = GENERATE(true, false);
  // Odd sizes and more tensors than one cuda launch table holds (36).
  std::vector<int64_t> sizes = {1, 3, 127, 1000, 4099};
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + (i * 37) % 300);
  std::vector<Tensor> fused_p, composed_p, grads_f32;
  NamedParameters fused_named, composed_named;
  std::vector<RefParam> ref(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    Tensor values = random_tensor({sizes[k]}, 7 + k, DType::F32, device, -1, 1);
    fused_named.push_back({"t" + std::to_string(k), values.clone().requires_grad_(true)});
    composed_named.push_back({"t" + std::to_string(k), values.clone().requires_grad_(true)});
    ref[k].p = values.to_vector<double>();
  }
  optim::AdamOptions o;
  o.lr = 3e-2;
  o.weight_decay = 0.2;
  o.beta1 = 0.9;
  o.beta2 = 0.95;
  o.eps = 1e-6;
  o.fused = FusedMode::Always;
  std::unique_ptr<optim::Optimizer> fused, composed;
  if (decoupled) {
    fused = std::make_unique<optim::AdamW>(fused_named, o);
    o.fused = FusedMode::Never;
    composed = std::make_unique<optim::AdamW>(composed_named, o);
  } else {
    fused = std::make_unique<optim::Adam>(fused_named, o);
    o.fused = FusedMode::Never;
    composed = std::make_unique<optim::Adam>(composed_named, o);
  }
  std::vector<void*> pointers;
  for (const auto& [name, p] : fused_named) pointers.push_back(p.data_ptr());
  for (int s = 0; s < 3; ++s) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      Tensor g = random_tensor({sizes[k]}, 500 + 100 * s + k, DType::F32, device, -1, 1);
      fused_named[k].second.set_grad(g);
      composed_named[k].second.set_grad(g.clone());
      ref_adam(ref[k], g.to_vector<double>(), o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
               decoupled);
    }
    const uint64_t version = fused_named[0].second.storage()->version();
    fused->step();
    composed->step();
    CHECK(fused_named[0].second.storage()->version() > version);
    for (size_t k = 0; k < sizes.size(); ++k) {
      INFO("step " << s << " tensor " << k << " of " << sizes[k] << " elements");
      // In place: the parameter keeps its storage.
      CHECK(fused_named[k].second.data_ptr() == pointers[k]);
      check_close(fused_named[k].second, ref[k].p, {sizes[k]}, 1e-6, 1e-5);
      check_close(fused_named[k].second, composed_named[k].second, 1e-7, 2e-6);
      const optim::ParamState& st = fused->state().at(fused_named[k].first);
      check_close(st.tensors.at("exp_avg"), ref[k].m, {sizes[k]}, 1e-7, 1e-5);
      check_close(st.tensors.at("exp_avg_sq"), ref[k].v, {sizes[k]}, 1e-9, 1e-5);
    }
  }
}

TEST_CASE("optim: bf16 parameters train through f32 master weights", "[optim][fused]") {
  auto device = GENERATE(from_range(test_devices()));
  auto mode = GENERATE(FusedMode::Always, FusedMode::Never);
  const std::vector<int64_t> sizes = {1, 5, 300};
  NamedParameters named;
  std::vector<RefParam> ref(sizes.size());
  for (size_t k = 0; k < sizes.size(); ++k) {
    Tensor values = random_tensor({sizes[k]}, 40 + k, DType::BF16, device, -1, 1);
    named.push_back({"w" + std::to_string(k), values.clone().requires_grad_(true)});
    ref[k].p = values.to_vector<double>();
  }
  optim::AdamOptions o;
  o.lr = 1e-2;
  o.fused = mode;
  optim::AdamW opt(named, o);
  for (int s = 0; s < 3; ++s) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      Tensor g = random_tensor({sizes[k]}, 90 + 10 * s + k, DType::BF16, device, -1, 1);
      named[k].second.set_grad(g);
      ref_adam(ref[k], g.to_vector<double>(), o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, true);
    }
    opt.step();
    for (size_t k = 0; k < sizes.size(); ++k) {
      INFO("step " << s << " tensor " << k << (mode == FusedMode::Never ? " composed" : " fused"));
      const Tensor master = opt.state().at(named[k].first).tensors.at("master");
      REQUIRE(master.dtype() == DType::F32);
      // The master carries the f32 trajectory (updates far below bf16's resolution included).
      check_close(master, ref[k].p, {sizes[k]}, 1e-6, 1e-5);
      // The parameter is the master rounded to bf16.
      CHECK(bytes_of(named[k].second) == bytes_of(master.to(DType::BF16)));
    }
  }
}

TEST_CASE("optim: fused_adamw_ validates its tensor lists", "[optim][fused][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  Tensor p = zeros({4}, f32), g = zeros({4}, f32), m = zeros({4}, f32), v = zeros({4}, f32);
  optim::FusedAdamWStep s;
  check_error([&] { optim::fused_adamw_({p}, {g}, {m}, {}, {}, s); },
              {"fused_adamw_", "exp_avg_sqs"});
  check_error([&] { optim::fused_adamw_({p}, {g}, {zeros({5}, f32)}, {v}, {}, s); },
              {"exp_avgs[0]", "[5]", "[4]"});
  check_error(
      [&] {
        optim::fused_adamw_({zeros({4}, TensorOptions(DType::F64).device(device))},
                            {zeros({4}, TensorOptions(DType::F64).device(device))}, {m}, {v}, {},
                            s);
      },
      {"params[0]", "f64"});
  check_error(
      [&] {
        optim::fused_adamw_({p}, {zeros({4, 1}, f32)}, {m}, {v}, {}, s);
      },
      {"params[0]", "shape"});
  check_error(
      [&] {
        optim::fused_adamw_({non_contiguous(zeros({3, 4}, f32))}, {zeros({3, 4}, f32)},
                            {zeros({3, 4}, f32)}, {zeros({3, 4}, f32)}, {}, s);
      },
      {"not contiguous"});
  const TensorOptions bf16 = TensorOptions(DType::BF16).device(device);
  check_error([&] { optim::fused_adamw_({zeros({4}, bf16)}, {zeros({4}, bf16)}, {m}, {v}, {}, s); },
              {"master"});
  s.step = 0;
  check_error([&] { optim::fused_adamw_({p}, {g}, {m}, {v}, {}, s); }, {"step must be >= 1"});
}

// ---------------------------------------------------------------------------------------------
// Schedules and the scheduler
// ---------------------------------------------------------------------------------------------

TEST_CASE("optim: schedule factors by hand", "[optim][schedule]") {
  auto linear = optim::linear_schedule_with_warmup(4, 12);
  CHECK(linear.factor(0) == 0.0);
  CHECK(linear.factor(1) == 0.25);
  CHECK(linear.factor(4) == 1.0);
  CHECK(linear.factor(8) == 0.5);
  CHECK(linear.factor(12) == 0.0);
  CHECK(linear.factor(20) == 0.0);  // clamped at 0 past the end
  auto cosine = optim::cosine_schedule_with_warmup(2, 10);
  CHECK(cosine.factor(1) == 0.5);
  CHECK(cosine.factor(2) == 1.0);
  CHECK(std::abs(cosine.factor(6) - 0.5) < 1e-15);  // halfway: cos(pi / 2)
  CHECK(std::abs(cosine.factor(4) - 0.5 * (1 + std::cos(std::numbers::pi * 0.25))) < 1e-15);
  CHECK(std::abs(cosine.factor(10)) < 1e-15);
  auto constant = optim::constant_schedule_with_warmup(5);
  CHECK(constant.factor(2) == 0.4);
  CHECK(constant.factor(5) == 1.0);
  CHECK(constant.factor(1000) == 1.0);
  CHECK(optim::constant_schedule().factor(77) == 1.0);
  check_error([] { optim::linear_schedule_with_warmup(-1, 10); }, {"num_warmup_steps", "-1"});
  check_error([] { optim::cosine_schedule_with_warmup(0, -3); }, {"num_training_steps", "-3"});
}

TEST_CASE("optim: LRScheduler follows LambdaLR (lr = base * factor(step), set at construction)",
          "[optim][schedule]") {
  Tensor a = zeros({2}).requires_grad_(true), b = zeros({2}).requires_grad_(true);
  std::vector<optim::ParamGroup> groups = {optim::make_param_group({{"a", a}}, 0.1, 0.0, "g1"),
                                           optim::make_param_group({{"b", b}}, 0.02, 0.0, "g2")};
  optim::SGD opt(groups);
  optim::LRScheduler sched(opt, optim::linear_schedule_with_warmup(2, 4));
  CHECK(sched.base_lrs() == std::vector<double>{0.1, 0.02});
  CHECK(sched.last_step() == 0);
  CHECK(opt.param_groups()[0].lr == 0.0);  // factor(0) = 0 during warmup
  sched.step();
  CHECK(sched.last_step() == 1);
  CHECK(opt.param_group("g1").lr == 0.1 * 0.5);
  CHECK(opt.param_group("g2").lr == 0.02 * 0.5);
  CHECK(sched.last_lrs() == std::vector<double>{0.1 * 0.5, 0.02 * 0.5});
  sched.step();
  sched.step();
  CHECK(opt.param_group("g1").lr == 0.1 * 0.5);  // (4 - 3) / (4 - 2)
  sched.step();
  CHECK(opt.param_group("g2").lr == 0.0);
  check_error([&] { opt.param_group("g3"); }, {"no parameter group 'g3'", "'g1', 'g2'"});
}

// ---------------------------------------------------------------------------------------------
// Parameter groups
// ---------------------------------------------------------------------------------------------

TEST_CASE("optim: no-decay rule by parameter name", "[optim][groups]") {
  for (const char* name :
       {"bert.embeddings.LayerNorm.weight", "encoder.layer.0.output.LayerNorm.bias",
        "classifier.bias", "bias", "model.norm.weight", "layers.3.norm1.weight",
        "decoder.final_layer_norm.weight", "h.0.ln_1.weight", "transformer.ln_f.bias",
        "vit.layernorm.weight"}) {
    INFO(name);
    CHECK(optim::is_no_decay_parameter(name));
  }
  for (const char* name :
       {"bert.embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
        "classifier.weight", "bias_proj.weight", "pooler.dense.weight", "lm_head.weight"}) {
    INFO(name);
    CHECK_FALSE(optim::is_no_decay_parameter(name));
  }
}

namespace {

// The parameter names of a 2-layer BERT classifier, as Hugging Face spells them.
NamedParameters bert_like(int layers) {
  std::vector<std::string> names = {
      "bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
      "bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"};
  for (int i = 0; i < layers; ++i) {
    const std::string l = "bert.encoder.layer." + std::to_string(i) + ".";
    for (const char* s : {"attention.self.query.weight", "attention.self.query.bias",
                          "attention.output.LayerNorm.weight", "output.dense.weight"}) {
      names.push_back(l + s);
    }
  }
  for (const char* s : {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                        "classifier.bias"}) {
    names.push_back(s);
  }
  NamedParameters named;
  for (const std::string& n : names) named.push_back({n, zeros({2}).requires_grad_(true)});
  return named;
}

}  // namespace

TEST_CASE("optim: no_decay_param_groups splits as Hugging Face's Trainer", "[optim][groups]") {
  NamedParameters named = bert_like(1);
  auto groups = optim::no_decay_param_groups(named, 2e-5, 0.01);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].name == "decay");
  CHECK(groups[0].weight_decay == 0.01);
  CHECK(groups[0].lr == 2e-5);
  CHECK(groups[0].param_names ==
        std::vector<std::string>{"bert.embeddings.word_embeddings.weight",
                                 "bert.embeddings.position_embeddings.weight",
                                 "bert.encoder.layer.0.attention.self.query.weight",
                                 "bert.encoder.layer.0.output.dense.weight",
                                 "bert.pooler.dense.weight", "classifier.weight"});
  CHECK(groups[1].name == "no_decay");
  CHECK(groups[1].weight_decay == 0.0);
  CHECK(groups[1].param_names ==
        std::vector<std::string>{"bert.embeddings.LayerNorm.weight",
                                 "bert.embeddings.LayerNorm.bias",
                                 "bert.encoder.layer.0.attention.self.query.bias",
                                 "bert.encoder.layer.0.attention.output.LayerNorm.weight",
                                 "bert.pooler.dense.bias", "classifier.bias"});
  CHECK(groups[0].params[0].is_same(named[0].second));
}

TEST_CASE("optim: layer-wise lr decay groups", "[optim][groups]") {
  NamedParameters named = bert_like(2);
  const double lr = 1e-3, decay = 0.5;
  auto groups = optim::layerwise_lr_decay_groups(named, lr, 0.01, decay, 2);
  std::vector<std::string> names;
  for (const auto& g : groups) names.push_back(g.name);
  CHECK(names == std::vector<std::string>{"embeddings.decay", "embeddings.no_decay",
                                          "layer.0.decay", "layer.0.no_decay", "layer.1.decay",
                                          "layer.1.no_decay", "head.decay", "head.no_decay"});
  // lr * decay^(num_layers + 1 - depth): embeddings 1/8, layer 0 1/4, layer 1 1/2, head 1.
  const std::map<std::string, double> expected_lr = {
      {"embeddings", 1.25e-4}, {"layer.0", 2.5e-4}, {"layer.1", 5e-4}, {"head", 1e-3}};
  size_t total = 0;
  for (const auto& g : groups) {
    INFO(g.name);
    const std::string prefix = g.name.substr(0, g.name.rfind('.'));
    CHECK(g.lr == expected_lr.at(prefix));
    const bool no_decay = g.name.ends_with("no_decay");
    CHECK(g.weight_decay == (no_decay ? 0.0 : 0.01));
    for (const std::string& p : g.param_names) {
      INFO(p);
      CHECK(optim::is_no_decay_parameter(p) == no_decay);
      if (prefix == "embeddings") CHECK(p.find(".embeddings.") != std::string::npos);
      if (prefix == "layer.1") CHECK(p.find(".layer.1.") != std::string::npos);
      if (prefix == "head") CHECK((p.starts_with("bert.pooler") || p.starts_with("classifier")));
    }
    total += g.params.size();
  }
  CHECK(total == named.size());
  // decay 0.9 over 6 layers: layer 2 gets lr * 0.9^4.
  auto six = optim::layerwise_lr_decay_groups(bert_like(6), 1.0, 0.0, 0.9, 6);
  for (const auto& g : six) {
    if (g.name == "layer.2.decay") CHECK(g.lr == std::pow(0.9, 4));
    if (g.name == "embeddings.decay") CHECK(g.lr == std::pow(0.9, 7));
  }
  check_error([&] { optim::layerwise_lr_decay_groups(named, lr, 0.01, decay, 1); },
              {"bert.encoder.layer.1.", "layer 1", "num_layers is 1"});
  check_error([&] { optim::layerwise_lr_decay_groups(named, lr, 0.01, 0.0, 2); },
              {"decay must be positive"});
  check_error([] { optim::lr_decay_depth("encoder.layer.x.weight", 3); }, {"'x'", "layer index"});
  CHECK(optim::lr_decay_depth("encoder.layer.2.output.weight", 3) == 3);
  CHECK(optim::lr_decay_depth("embeddings.word_embeddings.weight", 3) == 0);
  CHECK(optim::lr_decay_depth("pooler.dense.weight", 3) == 4);
}

// ---------------------------------------------------------------------------------------------
// State save / load
// ---------------------------------------------------------------------------------------------

namespace {

// A small model's parameters (BERT-like names) with fixed values on `device`.
NamedParameters resume_params(Device device) {
  NamedParameters named = bert_like(2);
  for (size_t k = 0; k < named.size(); ++k) {
    const Shape shape = k % 3 == 0 ? Shape{5, 3} : Shape{7};
    named[k].second = random_tensor(shape, 300 + k, DType::F32, device).requires_grad_(true);
  }
  return named;
}

NamedParameters clone_params(const NamedParameters& named) {
  NamedParameters out;
  for (const auto& [n, t] : named) out.push_back({n, t.detach().clone().requires_grad_(true)});
  return out;
}

void set_grads(NamedParameters& named, int step) {
  for (size_t k = 0; k < named.size(); ++k) {
    Tensor& p = named[k].second;
    if ((k + size_t(step)) % 5 == 0) {  // some parameters miss a gradient now and then
      p.zero_grad();
      continue;
    }
    p.set_grad(random_tensor(p.shape(), 7000 + 100 * step + k, DType::F32, p.device(), -1, 1));
  }
}

std::unique_ptr<optim::Optimizer> resume_optimizer(const std::string& kind,
                                                   const NamedParameters& named) {
  auto groups = optim::layerwise_lr_decay_groups(named, 1e-2, 0.05, 0.8, 2);
  if (kind == "sgd") {
    optim::SGDOptions o;
    o.momentum = 0.9;
    o.nesterov = true;
    return std::make_unique<optim::SGD>(groups, o);
  }
  return std::make_unique<optim::AdamW>(groups);
}

}  // namespace

TEST_CASE("optim: save at step k, load into fresh objects, continue = the uninterrupted run",
          "[optim][state]") {
  auto device = GENERATE(from_range(test_devices()));
  auto kind = GENERATE(std::string("adamw"), std::string("sgd"));
  INFO(kind << " on " << device.str());
  const int total = 7, k = 3;
  TempDir dir;
  const std::string path = dir.file("state.safetensors");

  // The uninterrupted run, saving at step k.
  NamedParameters a = resume_params(device);
  auto opt_a = resume_optimizer(kind, a);
  optim::LRScheduler sched_a(*opt_a, optim::linear_schedule_with_warmup(2, total));
  NamedParameters saved_params;
  for (int s = 0; s < total; ++s) {
    if (s == k) {
      optim::save_state(path, *opt_a, &sched_a);
      saved_params = clone_params(a);
    }
    set_grads(a, s);
    optim::clip_grad_norm_(*opt_a, 1.0);
    opt_a->step();
    sched_a.step();
  }

  // Fresh parameters (the values at step k), optimizer and scheduler; load; continue.
  NamedParameters b = saved_params;
  auto opt_b = resume_optimizer(kind, b);
  optim::LRScheduler sched_b(*opt_b, optim::linear_schedule_with_warmup(2, total));
  optim::load_state(path, *opt_b, &sched_b);
  CHECK(sched_b.last_step() == k);
  for (size_t g = 0; g < opt_b->param_groups().size(); ++g) {
    CHECK(opt_b->param_groups()[g].lr == sched_b.base_lrs()[g] * sched_b.schedule().factor(k));
  }
  for (int s = k; s < total; ++s) {
    set_grads(b, s);
    optim::clip_grad_norm_(*opt_b, 1.0);
    opt_b->step();
    sched_b.step();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].first);
    CHECK(bytes_of(a[i].second) == bytes_of(b[i].second));
  }
  for (const auto& [name, st] : opt_a->state()) {
    INFO(name);
    CHECK(opt_b->state().at(name).step == st.step);
    for (const auto& [key, t] : st.tensors)
      CHECK(bytes_of(opt_b->state().at(name).tensors.at(key)) == bytes_of(t));
  }
  // A run that is not resumed from the file differs (the check above can fail).
  NamedParameters c = saved_params;
  auto opt_c = resume_optimizer(kind, c);
  for (int s = k; s < total; ++s) {
    set_grads(c, s);
    opt_c->step();
  }
  CHECK(bytes_of(c[0].second) != bytes_of(a[0].second));
}

TEST_CASE("optim: the state file records hyperparameters and per-parameter steps",
          "[optim][state]") {
  NamedParameters named = {{"w", zeros({3}).requires_grad_(true)},
                           {"b", zeros({2}).requires_grad_(true)}};
  optim::AdamOptions o;
  o.beta1 = 0.7;
  optim::AdamW opt(named, o);
  named[0].second.set_grad(ones({3}));
  opt.step();
  TempDir dir;
  optim::save_state(dir.file("s.safetensors"), opt);
  io::SafetensorsFile f = io::SafetensorsFile::open(dir.file("s.safetensors"));
  CHECK(f.names() ==
        std::vector<std::string>{"optimizer/state/w/exp_avg", "optimizer/state/w/exp_avg_sq"});
  CHECK(f.metadata().at("optimizer/kind") == "AdamW");
  CHECK(f.metadata().at("optimizer/hyperparameters").find("\"beta1\":0.7") != std::string::npos);
  const std::string groups = f.metadata().at("optimizer/param_groups");
  CHECK(groups.find("\"name\":\"w\",\"shape\":[3],\"step\":1") != std::string::npos);
  CHECK(groups.find("\"name\":\"b\",\"shape\":[2],\"step\":0") != std::string::npos);
  // (1 - 0.7) * 1 after one step.
  check_close(f.tensor("optimizer/state/w/exp_avg"), std::vector<double>(3, 0.3), {3}, 1e-7, 1e-6);
  // Loading restores the hyperparameters too.
  optim::AdamW other(named, optim::AdamOptions{});
  other.load_state_dict({f.tensors(), f.metadata()}, "s");
  CHECK(other.options().beta1 == 0.7);
}

TEST_CASE("optim: loading a mismatched state names every mismatch and changes nothing",
          "[optim][state][errors]") {
  TempDir dir;
  const std::string path = dir.file("state.safetensors");
  NamedParameters saved = {{"enc.a.weight", zeros({2, 3}).requires_grad_(true)},
                           {"enc.b.weight", zeros({4}).requires_grad_(true)}};
  optim::AdamW opt(saved);
  for (auto& [n, p] : saved) p.set_grad(ones(p.shape()));
  opt.step();
  optim::save_state(path, opt);

  NamedParameters other = {{"enc.a.weight", zeros({3, 2}).requires_grad_(true)},
                           {"enc.c.weight", zeros({4}).requires_grad_(true)}};
  optim::AdamW target(other);
  check_error([&] { optim::load_state(path, target); },
              {path, "'enc.a.weight' has shape [2, 3] there, [3, 2] here",
               "'enc.c.weight' (group 'params') is missing there",
               "'enc.b.weight' (group 'params') is there but not in this optimizer"});
  CHECK(target.state().empty());

  optim::SGD sgd(clone_params(saved));
  check_error([&] { optim::load_state(path, sgd); }, {"state of a AdamW optimizer, not SGD"});

  // A scheduler asked for but not in the file: the optimizer is left as it was.
  optim::AdamW same(clone_params(saved));
  same.param_groups()[0].lr = 0.5;
  optim::LRScheduler sched(same, optim::constant_schedule());
  check_error([&] { optim::load_state(path, same, &sched); }, {"scheduler/step"});
  CHECK(same.state().empty());
  CHECK(same.param_groups()[0].lr == 0.5);

  // Two groups where the file has one.
  std::vector<optim::ParamGroup> two = {optim::make_param_group({saved[0]}, 1e-3, 0.0, "params"),
                                        optim::make_param_group({saved[1]}, 1e-3, 0.0, "second")};
  optim::AdamW split(two);
  check_error([&] { optim::load_state(path, split); },
              {"1 parameter groups, this optimizer 2",
               "'enc.b.weight' is in group 'params' there, 'second' here"});
  check_error([&] { optim::load_state(dir.file("missing.safetensors"), split); },
              {"missing.safetensors"});

  // A state with a moment missing, and one with no state for a parameter that has stepped.
  optim::StateDict partial = opt.state_dict();
  partial.tensors.erase("optimizer/state/enc.b.weight/exp_avg_sq");
  optim::AdamW fresh(clone_params(saved));
  check_error([&] { fresh.load_state_dict(partial, "partial"); },
              {"partial", "'enc.b.weight' has no 'exp_avg_sq' state there"});
  partial.tensors.erase("optimizer/state/enc.b.weight/exp_avg");
  check_error([&] { fresh.load_state_dict(partial, "partial"); },
              {"'enc.b.weight' has taken 1 steps there but has no state tensors"});
  CHECK(fresh.state().empty());
}

TEST_CASE("optim: SGD without momentum keeps only step counts, and they round-trip",
          "[optim][state]") {
  NamedParameters named = {{"w", zeros({3}).requires_grad_(true)}};
  optim::SGD opt(named);
  named[0].second.set_grad(ones({3}));
  opt.step();
  opt.step();
  const optim::StateDict sd = opt.state_dict();
  CHECK(sd.tensors.empty());
  optim::SGD other(clone_params(named));
  other.load_state_dict(sd, "sgd");
  CHECK(other.state().at("w").step == 2);
  CHECK(other.state().at("w").tensors.empty());
}

// ---------------------------------------------------------------------------------------------
// Semantics and errors
// ---------------------------------------------------------------------------------------------

TEST_CASE("optim: zero_grad drops gradients; parameters without one keep their values", "[optim]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor a = ones({3}, TensorOptions().device(device)).requires_grad_(true);
  Tensor b = ones({3}, TensorOptions().device(device)).requires_grad_(true);
  optim::AdamW opt(NamedParameters{{"a", a}, {"b", b}});
  a.set_grad(ones({3}, TensorOptions().device(device)));
  opt.step();
  CHECK(a.to_vector<double>()[0] < 1.0);
  CHECK(b.to_vector<double>() == std::vector<double>{1, 1, 1});
  CHECK(opt.state().count("b") == 0);
  opt.zero_grad();
  CHECK_FALSE(a.grad().defined());
  // A parameter used in a graph before the step: the step is an in-place write it sees.
  Tensor x = ones({3}, TensorOptions().device(device)).requires_grad_(true);
  Tensor y = (a * x).sum();
  a.set_grad(ones({3}, TensorOptions().device(device)));
  opt.step();
  check_error([&] { y.backward(); }, {"modified by an in-place operation"});
}

TEST_CASE("optim: invalid parameters and hyperparameters are reported by name", "[optim][errors]") {
  Tensor a = zeros({2}).requires_grad_(true);
  check_error(
      [&] {
        optim::SGD(NamedParameters{{"a", a}, {"a", zeros({1}).requires_grad_(true)}});
      },
      {"'a' appears twice"});
  check_error([&] { optim::SGD(NamedParameters{{"a", a}, {"b", a}}); }, {"'b' is the same tensor"});
  Tensor nonleaf = a * 2.0;
  check_error(
      [&] {
        optim::AdamW(NamedParameters{{"x.weight", nonleaf}});
      },
      {"AdamW", "'x.weight'", "not a leaf"});
  check_error(
      [&] {
        optim::AdamW(NamedParameters{{"ids", zeros({2}, TensorOptions(DType::I64))}});
      },
      {"'ids'", "floating", "i64"});
  optim::SGDOptions nesterov;
  nesterov.nesterov = true;
  check_error([&] { optim::SGD(NamedParameters{{"a", a}}, nesterov); }, {"Nesterov", "momentum"});
  check_error(
      [&] {
        optim::SGD(NamedParameters{{"h", zeros({2}, TensorOptions(DType::BF16))}});
      },
      {"SGD", "'h'", "bf16"});
  optim::AdamOptions betas;
  betas.beta2 = 1.0;
  check_error([&] { optim::Adam(NamedParameters{{"a", a}}, betas); }, {"Adam", "betas", "1"});
  optim::AdamW opt(NamedParameters{{"a", a}});
  opt.param_groups()[0].lr = -1.0;
  check_error([&] { opt.step(); }, {"AdamW step", "group 'params'", "lr -1"});
  opt.param_groups()[0].lr = 1e-3;
  // f64 parameters cannot take the fused kernel.
  Tensor d = zeros({2}, TensorOptions(DType::F64)).requires_grad_(true);
  optim::AdamOptions always;
  always.fused = FusedMode::Always;
  optim::AdamW fused_only(NamedParameters{{"d", d}}, always);
  d.set_grad(ones({2}, TensorOptions(DType::F64)));
  check_error([&] { fused_only.step(); }, {"FusedMode::Always", "'d'", "f64"});
  CHECK(fused_only.state().empty());  // nothing was touched
  check_error([&] { optim::clip_grad_norm_(std::vector<Tensor>{a}, 1.0, 0.0); },
              {"clip_grad_norm_", "norm_type"});
  std::vector<optim::ParamGroup> unnamed = {optim::make_param_group({{"a", a}}, 1e-3, 0.0, "")};
  check_error([&] { optim::SGD{unnamed}; }, {"needs a name"});
}
