// The rule of lathe's on/off environment variables (LATHE_DETERMINISTIC, LATHE_CPU_AMX,
// LATHE_PROFILE, LATHE_CUDA_SYNC_CHECKS): unset or empty gives the default; 0, false or off turn
// the setting off; anything else turns it on.
#pragma once

#include <cstdlib>
#include <string_view>

namespace lathe::kernels {

inline bool env_flag(const char* name, bool default_value) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return default_value;
  const std::string_view v(env);
  return !(v == "0" || v == "false" || v == "off");
}

}  // namespace lathe::kernels
