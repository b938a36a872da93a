// The Optimizer base: group validation, zero_grad, and the state dict. State is keyed by parameter
// name rather than position (PyTorch keys it by index), so loading can say which parameter is
// missing, extra or reshaped. The metadata is JSON written by nlohmann::json, whose doubles
// round-trip exactly, so a resumed run continues with bit-identical hyperparameters.
#include "lathe/optim/optimizer.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/tensor_internal.h"

namespace lathe::optim {

using json = nlohmann::json;

namespace {

constexpr const char* kStatePrefix = "optimizer/state/";
constexpr size_t kMaxReported = 20;

std::string dtype_str(DType t) {
  return std::string(dtype_name(t));
}

// Throws one error listing every problem (up to kMaxReported), so a user fixing a checkpoint
// mismatch sees all of it at once.
void report(const std::vector<std::string>& problems, const std::string& what) {
  if (problems.empty()) return;
  std::ostringstream os;
  os << what << ": " << problems.size() << " mismatch" << (problems.size() == 1 ? "" : "es");
  for (size_t i = 0; i < problems.size() && i < kMaxReported; ++i) os << "\n  " << problems[i];
  if (problems.size() > kMaxReported)
    os << "\n  ... and " << problems.size() - kMaxReported << " more";
  throw Error(os.str());
}

json parse_metadata(const StateDict& sd, const std::string& key, const std::string& source) {
  auto it = sd.metadata.find(key);
  LATHE_CHECK(it != sd.metadata.end(), "load_state_dict: ", source, " has no '", key,
              "' metadata (not an optimizer state written by lathe)");
  try {
    return json::parse(it->second);
  } catch (const json::exception& e) {
    LATHE_FAIL("load_state_dict: metadata '", key, "' of ", source,
               " is not valid JSON: ", e.what());
  }
}

}  // namespace

ParamGroup make_param_group(const NamedParameters& named, double lr, double weight_decay,
                            std::string name) {
  ParamGroup g;
  g.name = std::move(name);
  g.lr = lr;
  g.weight_decay = weight_decay;
  for (const auto& [param_name, t] : named) {
    g.param_names.push_back(param_name);
    g.params.push_back(t);
  }
  return g;
}

Optimizer::Optimizer(std::vector<ParamGroup> groups, const char* kind)
    : groups_(std::move(groups)) {
  std::set<std::string> group_names, param_names;
  std::set<const TensorImpl*> tensors;
  for (const ParamGroup& g : groups_) {
    LATHE_CHECK(!g.name.empty(), kind, ": every parameter group needs a name");
    LATHE_CHECK(group_names.insert(g.name).second, kind, ": two parameter groups are named '",
                g.name, "'");
    LATHE_CHECK(g.params.size() == g.param_names.size(), kind, ": group '", g.name, "' has ",
                g.params.size(), " params but ", g.param_names.size(), " param_names");
    for (size_t i = 0; i < g.params.size(); ++i) {
      const std::string& name = g.param_names[i];
      const Tensor& p = g.params[i];
      LATHE_CHECK(!name.empty(), kind, ": group '", g.name, "' has a parameter without a name");
      LATHE_CHECK(param_names.insert(name).second, kind, ": parameter '", name,
                  "' appears twice (names must be unique across groups)");
      LATHE_CHECK(p.defined(), kind, ": parameter '", name, "' is an undefined tensor");
      LATHE_CHECK(tensors.insert(p.impl_ptr().get()).second, kind, ": parameter '", name,
                  "' is the same tensor as another parameter");
      LATHE_CHECK(is_floating(p.dtype()), kind, ": parameter '", name, "' must be floating, got ",
                  detail::describe(p));
      LATHE_CHECK(p.is_leaf(), kind, ": parameter '", name,
                  "' is not a leaf tensor (it was computed from others); optimize the leaf");
    }
  }
  check_groups(kind);
}

Optimizer::~Optimizer() = default;

void Optimizer::check_groups(const char* who) const {
  for (const ParamGroup& g : groups_) {
    LATHE_CHECK(std::isfinite(g.lr) && g.lr >= 0, who, ": group '", g.name, "' has an invalid lr ",
                g.lr, " (must be finite and >= 0)");
    LATHE_CHECK(std::isfinite(g.weight_decay) && g.weight_decay >= 0, who, ": group '", g.name,
                "' has an invalid weight_decay ", g.weight_decay, " (must be finite and >= 0)");
  }
}

void Optimizer::zero_grad() {
  for (ParamGroup& g : groups_) {
    for (Tensor& p : g.params) p.zero_grad();
  }
}

ParamGroup& Optimizer::param_group(const std::string& group_name) {
  std::string names;
  for (ParamGroup& g : groups_) {
    if (g.name == group_name) return g;
    names += (names.empty() ? "'" : ", '") + g.name + "'";
  }
  LATHE_FAIL(name(), ": no parameter group '", group_name, "' (groups: ", names, ")");
}

StateDict Optimizer::state_dict() const {
  StateDict sd;
  json groups = json::array();
  for (const ParamGroup& g : groups_) {
    json params = json::array();
    for (size_t i = 0; i < g.params.size(); ++i) {
      const std::string& pname = g.param_names[i];
      auto it = state_.find(pname);
      params.push_back({{"name", pname},
                        {"shape", g.params[i].shape()},
                        {"dtype", dtype_str(g.params[i].dtype())},
                        {"step", it == state_.end() ? 0 : it->second.step}});
      if (it == state_.end()) continue;
      for (const auto& [key, t] : it->second.tensors) {
        sd.tensors[kStatePrefix + pname + "/" + key] = t;
      }
    }
    groups.push_back({{"name", g.name},
                      {"lr", g.lr},
                      {"weight_decay", g.weight_decay},
                      {"params", std::move(params)}});
  }
  json hyper = json::object();
  for (const auto& [k, v] : hyperparameters()) hyper[k] = v;
  sd.metadata["optimizer/kind"] = name();
  sd.metadata["optimizer/param_groups"] = groups.dump();
  sd.metadata["optimizer/hyperparameters"] = hyper.dump();
  return sd;
}

void Optimizer::load_state_dict(const StateDict& sd, const std::string& source) {
  const std::string what = std::string(name()) + " load_state_dict from " + source;
  auto kind = sd.metadata.find("optimizer/kind");
  LATHE_CHECK(kind != sd.metadata.end(), what,
              ": no 'optimizer/kind' metadata (not an optimizer state written by lathe)");
  LATHE_CHECK(kind->second == name(), what, ": it holds the state of a ", kind->second,
              " optimizer, not ", name());
  const json groups = parse_metadata(sd, "optimizer/param_groups", source);
  const json hyper = parse_metadata(sd, "optimizer/hyperparameters", source);

  std::vector<std::string> problems;
  LATHE_CHECK(groups.is_array(), what, ": 'optimizer/param_groups' is not a JSON array");
  if (groups.size() != groups_.size()) {
    problems.push_back("it has " + std::to_string(groups.size()) + " parameter groups, this " +
                       "optimizer " + std::to_string(groups_.size()));
  }
  // Parameter -> (shape, dtype, step) from the file, and which group it was in.
  struct Saved {
    Shape shape;
    std::string dtype;
    int64_t step = 0;
    std::string group;
  };
  std::map<std::string, Saved> saved;
  std::vector<std::pair<double, double>> group_hyper;  // lr, weight_decay per group
  try {
    for (size_t gi = 0; gi < groups.size() && gi < groups_.size(); ++gi) {
      const json& g = groups[gi];
      const std::string gname = g.at("name").get<std::string>();
      if (gname != groups_[gi].name) {
        problems.push_back("group " + std::to_string(gi) + " is '" + gname + "' there, '" +
                           groups_[gi].name + "' here");
      }
      group_hyper.emplace_back(g.at("lr").get<double>(), g.at("weight_decay").get<double>());
      for (const json& p : g.at("params")) {
        Saved s{p.at("shape").get<Shape>(), p.at("dtype").get<std::string>(),
                p.at("step").get<int64_t>(), gname};
        saved[p.at("name").get<std::string>()] = s;
      }
    }
  } catch (const json::exception& e) {
    LATHE_FAIL(what, ": malformed 'optimizer/param_groups' metadata: ", e.what());
  }

  // Parameters: present on both sides, in the same group, same shape and dtype.
  std::map<std::string, const Tensor*> here;
  for (const ParamGroup& g : groups_) {
    for (size_t i = 0; i < g.params.size(); ++i) {
      const std::string& pname = g.param_names[i];
      const Tensor& p = g.params[i];
      here[pname] = &p;
      auto it = saved.find(pname);
      if (it == saved.end()) {
        problems.push_back("parameter '" + pname + "' (group '" + g.name + "') is missing there");
        continue;
      }
      if (it->second.group != g.name) {
        problems.push_back("parameter '" + pname + "' is in group '" + it->second.group +
                           "' there, '" + g.name + "' here");
      }
      if (it->second.shape != p.shape()) {
        problems.push_back("parameter '" + pname + "' has shape " + shape_str(it->second.shape) +
                           " there, " + shape_str(p.shape()) + " here");
      }
      if (it->second.dtype != dtype_str(p.dtype())) {
        problems.push_back("parameter '" + pname + "' is " + it->second.dtype + " there, " +
                           dtype_str(p.dtype()) + " here");
      }
    }
  }
  for (const auto& [pname, s] : saved) {
    if (!here.count(pname)) {
      problems.push_back("parameter '" + pname + "' (group '" + s.group + "') is there but not " +
                         "in this optimizer");
    }
  }

  // State tensors: "optimizer/state/<param>/<key>" with a known param and key, the param's shape
  // and the dtype this optimizer keeps for that key.
  std::map<std::string, ParamState> loaded;
  for (const auto& [tname, t] : sd.tensors) {
    if (tname.rfind(kStatePrefix, 0) != 0) continue;
    const std::string rest = tname.substr(std::string(kStatePrefix).size());
    const size_t slash = rest.rfind('/');
    const std::string pname = slash == std::string::npos ? rest : rest.substr(0, slash);
    const std::string key = slash == std::string::npos ? "" : rest.substr(slash + 1);
    auto p = here.find(pname);
    if (p == here.end()) {
      if (!saved.count(pname)) {
        problems.push_back("state tensor '" + tname +
                           "' belongs to no parameter of this optimizer");
      }
      continue;
    }
    const std::map<std::string, DType> keys = state_keys(p->second->dtype());
    auto k = keys.find(key);
    if (k == keys.end()) {
      problems.push_back("state tensor '" + tname + "': " + name() + " keeps no '" + key +
                         "' state for a " + dtype_str(p->second->dtype()) + " parameter");
      continue;
    }
    if (t.shape() != p->second->shape() || t.dtype() != k->second) {
      problems.push_back("state tensor '" + tname + "' is " + detail::describe(t) + ", expected " +
                         dtype_str(k->second) + " " + shape_str(p->second->shape()) +
                         " like parameter '" + pname + "'");
      continue;
    }
    loaded[pname].tensors[key] = t;
  }
  for (const auto& [pname, s] : saved) {
    if (s.step > 0 && here.count(pname)) loaded[pname].step = s.step;
  }
  // A parameter that has stepped needs all of its state, or the resumed update would silently
  // restart from zeros.
  for (const auto& [pname, s] : saved) {
    auto p = here.find(pname);
    if (s.step == 0 || p == here.end()) continue;
    auto l = loaded.find(pname);
    if (l == loaded.end() || l->second.tensors.empty()) {
      if (keeps_state()) {
        problems.push_back("parameter '" + pname + "' has taken " + std::to_string(s.step) +
                           " steps there but has no state tensors");
      }
      continue;
    }
    for (const auto& [key, dtype] : state_keys(p->second->dtype())) {
      if (!l->second.tensors.count(key)) {
        problems.push_back("parameter '" + pname + "' has no '" + key + "' state there");
      }
    }
  }
  std::map<std::string, double> hyper_values;
  try {
    for (const auto& [k, v] : hyper.items()) hyper_values[k] = v.get<double>();
  } catch (const json::exception& e) {
    LATHE_FAIL(what, ": malformed 'optimizer/hyperparameters' metadata: ", e.what());
  }
  for (const auto& [k, v] : hyperparameters()) {
    if (!hyper_values.count(k)) problems.push_back("hyperparameter '" + k + "' is missing there");
  }
  report(problems, what);

  // Everything matched: copy the state onto the parameters' devices (own storage, not the file's
  // mapping) and take over the hyperparameters.
  for (auto& [pname, st] : loaded) {
    const Device device = here[pname]->device();
    for (auto& [key, t] : st.tensors) {
      Tensor moved = t.device() == device ? t.clone() : t.to(device);
      t = moved.is_contiguous() ? moved : moved.contiguous();
    }
  }
  set_hyperparameters(hyper_values);
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    groups_[gi].lr = group_hyper[gi].first;
    groups_[gi].weight_decay = group_hyper[gi].second;
  }
  state_ = std::move(loaded);
}

}  // namespace lathe::optim
