#include "lathe/core/determinism.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

namespace lathe {

namespace {

bool from_env() {
  const char* env = std::getenv("LATHE_DETERMINISTIC");
  if (env == nullptr) return true;
  const std::string_view v(env);
  return !(v == "0" || v == "false" || v == "off");
}

// Initialised on first use, so a setting made before main (or from another static initialiser)
// is not overwritten by the environment afterwards.
std::atomic<bool>& flag() {
  static std::atomic<bool> enabled{from_env()};
  return enabled;
}

}  // namespace

void set_deterministic_algorithms(bool enabled) {
  flag().store(enabled, std::memory_order_relaxed);
}

bool deterministic_algorithms() {
  return flag().load(std::memory_order_relaxed);
}

}  // namespace lathe
