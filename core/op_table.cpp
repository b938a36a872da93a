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
  ops.push_back(OpInfo{#name, schema, split_words(kernels), BackwardKind::backward, note});
#include "core/op_table.def"
#undef X
    // Every kernel family named by an op must exist in kernels/kernel_table.def.
    auto families = kernels::kernel_family_names();
    for (const OpInfo& op : ops) {
      for (const std::string& k : op.kernels) {
        bool found = false;
        for (auto f : families) found = found || f == k;
        LATHE_CHECK(found, "op table: op '", op.name, "' names unknown kernel family '", k, "'");
      }
    }
    return ops;
  }();
  return table;
}

bool op_supported_on(const OpInfo& op, DeviceType type) {
  if (kernels::device_api(type) == nullptr) return false;
  for (const std::string& k : op.kernels) {
    if (!kernels::has_kernel(type, k)) return false;
  }
  return true;
}

std::string ops_markdown() {
  std::ostringstream out;
  out << "# Ops\n\n"
      << "Generated from `core/op_table.def` by `lathe-ops-doc` (a test checks this file is up\n"
      << "to date). cpu / cuda: whether every kernel the op uses exists for that device in this\n"
      << "build. backward: `kernel` = dedicated backward kernel, `composite` = gradient built\n"
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
        << " | " << (op_supported_on(op, DeviceType::CPU) ? "yes" : "no") << " | "
        << (op_supported_on(op, DeviceType::CUDA) ? "yes" : "no") << " | " << backward << " | "
        << op.note << " |\n";
  }
  return out.str();
}

}  // namespace lathe
