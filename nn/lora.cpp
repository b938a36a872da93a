#include "lathe/nn/lora.h"

#include "lathe/core/autograd.h"
#include "lathe/nn/linear.h"

namespace lathe::nn {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool is_lora_target(const std::string& name) {
  if (name.find("encoder.layer.") == std::string::npos) return false;
  for (const char* t : {"attention.self.query", "attention.self.key", "attention.self.value",
                        "attention.output.dense", "intermediate.dense", "output.dense"}) {
    if (ends_with(name, t)) return true;
  }
  return false;
}
}  // namespace

int64_t enable_lora(Module& root, int64_t rank, double alpha, double dropout,
                    const std::vector<std::string>& trainable_prefixes) {
  root.freeze();
  int64_t n = 0;
  for (auto& [name, m] : root.named_modules()) {
    auto* linear = dynamic_cast<Linear*>(m);
    if (linear && is_lora_target(name)) {
      linear->enable_lora(rank, alpha, dropout);
      ++n;
    }
  }
  LATHE_CHECK(n > 0, root.type_name(), ": enable_lora found no encoder projections to adapt");
  for (const auto& prefix : trainable_prefixes) root.unfreeze(prefix);
  return n;
}

StateDict merged_state_dict(const Module& root) {
  StateDict out = root.state_dict();
  for (auto& [name, m] : root.named_modules()) {
    auto* linear = dynamic_cast<Linear*>(m);
    if (!linear || !linear->has_lora()) continue;
    const std::string prefix = name.empty() ? "" : name + ".";
    out[prefix + "weight"] = linear->merged_weight();
    out.erase(prefix + "lora_A");
    out.erase(prefix + "lora_B");
  }
  return out;
}

}  // namespace lathe::nn
