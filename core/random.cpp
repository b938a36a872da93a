#include "lathe/core/random.h"

#include <mutex>

namespace lathe {

namespace {
std::mutex g_mutex;
PhiloxState g_state{0x5eed5eed5eedULL, 0};
}  // namespace

void manual_seed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = PhiloxState{seed, 0};
}

PhiloxState philox_reserve(int64_t numel) {
  std::lock_guard<std::mutex> lock(g_mutex);
  PhiloxState state = g_state;
  g_state.offset += uint64_t((numel + 3) / 4);
  return state;
}

PhiloxState philox_current() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_state;
}

void philox_set(PhiloxState state) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_state = state;
}

}  // namespace lathe
