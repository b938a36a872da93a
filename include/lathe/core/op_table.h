// Introspection of the op table (core/op_table.def): every op with its schema, the kernels it
// dispatches to and how its gradient is computed. docs/ops.md is generated from this.
#pragma once

#include <string>
#include <vector>

#include "lathe/core/device.h"

namespace lathe {

enum class BackwardKind { Kernel, Composite, None };

struct OpInfo {
  const char* name;
  const char* schema;
  // Kernel families from kernels/kernel_table.def this op dispatches to ("" = composite op).
  std::vector<std::string> kernels;
  BackwardKind backward;
  const char* note;
  // Where the fused kernels are missing on a device, the op composes itself from these families.
  std::vector<std::string> fallback_kernels;
  std::string fallback;  // how, for docs/ops.md
};

const std::vector<OpInfo>& op_table();
// Whether every kernel the op needs is present for `type` in this build.
bool op_supported_on(const OpInfo& op, DeviceType type);
// Whether the op runs on `type` through its composed fallback (see FALLBACK in op_table.def).
bool op_composed_on(const OpInfo& op, DeviceType type);
// The Markdown table written to docs/ops.md.
std::string ops_markdown();

}  // namespace lathe
