#include "lathe/core/op_table.h"

#include <sstream>

#include "kernels/device_api.h"
#include "kernels/kernel_table.h"

namespace lathe {

namespace {
std::vector<std::string> split_words(const char* text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}
}  // namespace

const std::vector<OpInfo>& op_table() {
  static const std::vector<OpInfo> table = [] {
    std::vector<OpInfo> ops;
#define X(name, schema, kernels, backward, note) \
  ops.push_back(OpInfo{#name, schema, split_words(kernels), BackwardKind::backward, note, {}, ""});
#include "core/op_table.def"
#undef X
#define X(...)
#define FALLBACK(op_name, kernels, how)           \
  for (OpInfo & op : ops) {                       \
    if (std::string(op.name) == #op_name) {       \
      op.fallback_kernels = split_words(kernels); \
      op.fallback = how;                          \
    }                                             \
  }
#include "core/op_table.def"
#undef FALLBACK
#undef X
    // Every kernel family named by an op must exist in kernels/kernel_table.def.
    auto families = kernels::kernel_family_names();
    for (const OpInfo& op : ops) {
      std::vector<std::string> all = op.kernels;
      all.insert(all.end(), op.fallback_kernels.begin(), op.fallback_kernels.end());
      for (const std::string& k : all) {
        bool found = false;
        for (auto f : families) found = found || f == k;
        LATHE_CHECK(found, "op table: op '", op.name, "' names unknown kernel family '", k, "'");
      }
    }
    return ops;
  }();
  return table;
}

namespace {
bool all_kernels(const std::vector<std::string>& families, DeviceType type) {
  for (const std::string& k : families) {
    if (!kernels::has_kernel(type, k)) return false;
  }
  return true;
}
}  // namespace

bool op_supported_on(const OpInfo& op, DeviceType type) {
  return kernels::device_api(type) != nullptr && all_kernels(op.kernels, type);
}

bool op_composed_on(const OpInfo& op, DeviceType type) {
  return kernels::device_api(type) != nullptr && !all_kernels(op.kernels, type) &&
         !op.fallback_kernels.empty() && all_kernels(op.fallback_kernels, type);
}

namespace {
std::string status(const OpInfo& op, DeviceType type) {
  if (op_supported_on(op, type)) return "yes";
  if (op_composed_on(op, type)) return "composed (" + op.fallback + ")";
  return "no";
}
}  // namespace

std::string ops_markdown() {
  std::ostringstream out;
  out << "# Ops\n\n"
      << "Generated from `core/op_table.def` by `lathe-ops-doc` (a test checks this file is up\n"
      << "to date). cpu / cuda: whether every kernel the op uses exists for that device in this\n"
      << "build (this file is generated from the default build, where cuda is the CPU simulator "
         "of\n"
      << "the same kernels); `composed (...)` = the fused kernel is missing there and the op "
         "composes\n"
      << "itself from primitives. backward: `kernel` = dedicated backward kernel, `composite` = "
         "gradient built\n"
      << "from other ops, `—` = not differentiable.\n\n"
      << "| op | schema | kernels | cpu | cuda | backward | note |\n"
      << "|---|---|---|---|---|---|---|\n";
  for (const OpInfo& op : op_table()) {
    std::string kernels;
    for (const auto& k : op.kernels) kernels += (kernels.empty() ? "" : ", ") + ("`" + k + "`");
    const char* backward = op.backward == BackwardKind::Kernel      ? "kernel"
                           : op.backward == BackwardKind::Composite ? "composite"
                                                                    : "—";
    std::string schema = op.schema;
    for (size_t pos = 0; (pos = schema.find('|', pos)) != std::string::npos; pos += 2) {
      schema.replace(pos, 1, "\\|");
    }
    out << "| `" << op.name << "` | `" << schema << "` | " << (kernels.empty() ? "—" : kernels)
        << " | " << status(op, DeviceType::CPU) << " | " << status(op, DeviceType::CUDA) << " | "
        << backward << " | " << op.note << " |\n";
  }
  return out.str();
}

}  // namespace lathe
