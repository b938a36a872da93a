// What the command-line tools share: the one-line failure (tool name, reason, exit 2) and
// argument parsing of positive integers. Header-only, so each tool stays one source file.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <string>

namespace lathe::tools {

// Set by each tool's main before parsing.
inline const char*& tool_name() {
  static const char* name = "lathe";
  return name;
}

[[noreturn]] inline void fail(const std::string& reason) {
  std::cerr << tool_name() << ": " << reason << "\n";
  std::exit(2);
}

inline int64_t positive_int(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  int64_t n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || n < 1) fail(flag + " needs a positive integer, got '" + v + "'");
  return n;
}

}  // namespace lathe::tools
