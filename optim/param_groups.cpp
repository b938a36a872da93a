// Parameter-group helpers. Hugging Face's Trainer decides "no weight decay" by module type
// (LayerNorm) and the substring "bias"; lathe only has names, so the rule is by name components,
// covering the LayerNorm spellings of BERT ("LayerNorm"), other HF models ("layer_norm", "norm",
// "ln_f") and every bias.
#include "lathe/optim/param_groups.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include "lathe/core/error.h"

namespace lathe::optim {

namespace {

std::vector<std::string_view> components(std::string_view name) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t dot = name.find('.', start);
    out.push_back(name.substr(start, dot == std::string_view::npos ? name.npos : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string r(s);
  std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return std::tolower(c); });
  return r;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Adds (name, tensor) to the group called `group_name` in `groups`, creating it with lr and
// weight_decay when new.
void add_to(std::vector<ParamGroup>& groups, const std::string& group_name, double lr,
            double weight_decay, const std::string& param_name, const Tensor& t) {
  auto it = std::find_if(groups.begin(), groups.end(),
                         [&](const ParamGroup& g) { return g.name == group_name; });
  if (it == groups.end()) {
    ParamGroup g;
    g.name = group_name;
    g.lr = lr;
    g.weight_decay = weight_decay;
    groups.push_back(std::move(g));
    it = groups.end() - 1;
  }
  it->param_names.push_back(param_name);
  it->params.push_back(t);
}

}  // namespace

bool is_no_decay_parameter(std::string_view name) {
  const std::vector<std::string_view> parts = components(name);
  if (parts.back() == "bias") return true;
  for (std::string_view part : parts) {
    const std::string l = lower(part);
    if (part == "LayerNorm" || l.find("layer_norm") != std::string::npos ||
        l.find("layernorm") != std::string::npos || starts_with(l, "norm") || l == "ln" ||
        starts_with(l, "ln_")) {
      return true;
    }
  }
  return false;
}

std::vector<ParamGroup> no_decay_param_groups(const NamedParameters& named, double lr,
                                              double weight_decay) {
  std::vector<ParamGroup> groups;
  // Fixed order ("decay" first) whatever the first parameter is.
  for (const auto& [name, t] : named) {
    if (!is_no_decay_parameter(name)) add_to(groups, "decay", lr, weight_decay, name, t);
  }
  for (const auto& [name, t] : named) {
    if (is_no_decay_parameter(name)) add_to(groups, "no_decay", lr, 0.0, name, t);
  }
  return groups;
}

int64_t lr_decay_depth(std::string_view name, int64_t num_layers) {
  const std::vector<std::string_view> parts = components(name);
  for (size_t i = 0; i + 2 < parts.size(); ++i) {
    if (parts[i] != "encoder" || parts[i + 1] != "layer") continue;
    const std::string_view idx = parts[i + 2];
    const bool digits =
        !idx.empty() && idx.size() <= 9 &&
        std::all_of(idx.begin(), idx.end(), [](char c) { return c >= '0' && c <= '9'; });
    LATHE_CHECK(digits, "lr_decay_depth: parameter '", name, "' has 'encoder.layer.' followed by '",
                idx, "', not a layer index");
    const int64_t layer = std::stoll(std::string(idx));
    LATHE_CHECK(layer < num_layers, "lr_decay_depth: parameter '", name, "' is in encoder layer ",
                layer, ", but num_layers is ", num_layers);
    return layer + 1;
  }
  for (std::string_view part : parts) {
    if (part == "embeddings") return 0;
  }
  return num_layers + 1;
}

std::vector<ParamGroup> layerwise_lr_decay_groups(const NamedParameters& named, double lr,
                                                  double weight_decay, double decay,
                                                  int64_t num_layers) {
  LATHE_CHECK(std::isfinite(decay) && decay > 0, "layerwise_lr_decay_groups: decay must be ",
              "positive and finite, got ", decay);
  LATHE_CHECK(num_layers >= 0, "layerwise_lr_decay_groups: num_layers must be >= 0, got ",
              num_layers);
  std::vector<int64_t> depth(named.size());
  for (size_t i = 0; i < named.size(); ++i) depth[i] = lr_decay_depth(named[i].first, num_layers);
  std::vector<ParamGroup> groups;
  for (int64_t d = 0; d <= num_layers + 1; ++d) {
    const std::string prefix = d == 0                ? "embeddings"
                               : d == num_layers + 1 ? "head"
                                                     : "layer." + std::to_string(d - 1);
    const double group_lr = lr * std::pow(decay, double(num_layers + 1 - d));
    for (int no_decay = 0; no_decay < 2; ++no_decay) {
      for (size_t i = 0; i < named.size(); ++i) {
        if (depth[i] != d || is_no_decay_parameter(named[i].first) != bool(no_decay)) continue;
        add_to(groups, prefix + (no_decay ? ".no_decay" : ".decay"), group_lr,
               no_decay ? 0.0 : weight_decay, named[i].first, named[i].second);
      }
    }
  }
  return groups;
}

}  // namespace lathe::optim
