#include "lathe/core/determinism.h"

#include "kernels/env_flag.h"

#include <atomic>

namespace lathe {

namespace {

bool from_env() {
  return kernels::env_flag("LATHE_DETERMINISTIC", true);
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
