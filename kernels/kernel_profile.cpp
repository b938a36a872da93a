#include "kernels/kernel_profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "kernels/env_flag.h"

namespace lathe::kernels {

namespace {

using Clock = std::chrono::steady_clock;

struct Counter {
  uint64_t calls = 0;
  double seconds = 0;
};

struct Profile {
  std::mutex mutex;
  std::map<std::string, Counter> counters;
  Clock::time_point first{};
  bool started = false;

  void add(const std::string& key, Clock::time_point start, Clock::time_point end) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!started) {
      first = start;
      started = true;
    }
    Counter& c = counters[key];
    ++c.calls;
    c.seconds += std::chrono::duration<double>(end - start).count();
  }

  std::map<std::string, uint64_t> calls() {
    std::lock_guard<std::mutex> lock(mutex);
    std::map<std::string, uint64_t> out;
    for (const auto& [key, c] : counters) out[key] = c.calls;
    return out;
  }

  void report() {
    std::lock_guard<std::mutex> lock(mutex);
    if (!started) return;
    const double wall = std::chrono::duration<double>(Clock::now() - first).count();
    std::vector<std::pair<std::string, Counter>> rows(counters.begin(), counters.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    double busy = 0;
    for (const auto& r : rows) busy += r.second.seconds;
    std::fprintf(stderr, "\nLATHE_PROFILE: %.3f s of wall time since the first kernel\n", wall);
    std::fprintf(stderr, "%-40s %10s %12s %10s %7s\n", "kernel (device family op)", "calls",
                 "total ms", "mean us", "share");
    for (const auto& [key, c] : rows) {
      std::fprintf(stderr, "%-40s %10llu %12.2f %10.1f %6.1f%%\n", key.c_str(),
                   static_cast<unsigned long long>(c.calls), c.seconds * 1e3,
                   c.seconds * 1e6 / double(c.calls), 100.0 * c.seconds / wall);
    }
    std::fprintf(stderr, "%-40s %10s %12.2f %10s %6.1f%%\n", "host + idle (no kernel running)", "",
                 (wall - busy) * 1e3, "", 100.0 * (wall - busy) / wall);
  }
};

bool env_enabled() {
  static const bool enabled = env_flag("LATHE_PROFILE", false);
  return enabled;
}

std::atomic<int> live_counters{0};

Profile& profile() {
  static Profile* p = [] {
    auto* prof = new Profile;
    // KernelCallCounter's counts are read by the program; only LATHE_PROFILE prints.
    if (env_enabled()) std::atexit([] { profile().report(); });
    return prof;
  }();
  return *p;
}

const char* device_name(DeviceType t) {
  return t == DeviceType::CPU ? "cpu" : "cuda";
}

// "<device> <family>[ <op code>]": the op enum of unary/binary/reduce calls keeps "binary Mul"
// and "binary Add" apart. (snprintf: GCC 12 warns falsely on std::string concatenation here.)
template <class First>
std::string counter_key(DeviceType type, const char* family, const First& first) {
  char key[96];
  if constexpr (std::is_enum_v<First>) {
    std::snprintf(key, sizeof key, "%s %s %d", device_name(type), family, int(first));
  } else {
    std::snprintf(key, sizeof key, "%s %s", device_name(type), family);
  }
  return key;
}
std::string counter_key(DeviceType type, const char* what) {
  char key[96];
  std::snprintf(key, sizeof key, "%s %s", device_name(type), what);
  return key;
}

// One wrapper type per (device, slot): holds the original function and the counter key.
template <int Device, int Slot, class Fn>
struct Wrap;
template <int Device, int Slot, class R, class... A>
struct Wrap<Device, Slot, R (*)(A...)> {
  static inline R (*original)(A...) = nullptr;
  static inline const char* family = "";
  static R call(A... args) {
    const auto type = static_cast<DeviceType>(Device);
    const DeviceApi* api = device_api(type);
    const int index = api->current ? api->current() : 0;  // where the kernel runs
    api->synchronize(index);
    std::string key;
    if constexpr (sizeof...(A) > 0) {
      key = counter_key(type, family, std::get<0>(std::forward_as_tuple(args...)));
    } else {
      key = counter_key(type, family);
    }
    const auto start = Clock::now();
    if constexpr (std::is_void_v<R>) {
      original(args...);
      api->synchronize(index);
      profile().add(key, start, Clock::now());
    } else {
      R r = original(args...);
      api->synchronize(index);
      profile().add(key, start, Clock::now());
      return r;
    }
  }
};

enum Slot : int {
#define X(name, Fn) kSlot_##name,
#include "kernels/kernel_table.def"
#undef X
};

template <int Device>
KernelTable wrap_table(const KernelTable& base) {
  KernelTable t = base;
#define X(name, Fn)                           \
  if (base.name) {                            \
    using W = Wrap<Device, kSlot_##name, Fn>; \
    W::original = base.name;                  \
    W::family = #name;                        \
    t.name = &W::call;                        \
  }
#include "kernels/kernel_table.def"
#undef X
  return t;
}

// Copies between host and device, timed the same way (the device API's own calls synchronize).
template <int Device>
struct ApiWrap {
  static inline DeviceApi base{};
  static void timed_copy(const char* what, void (*fn)(void*, const void*, size_t, int), void* dst,
                         const void* src, size_t n, int index) {
    base.synchronize(index);
    const auto start = Clock::now();
    fn(dst, src, n, index);
    base.synchronize(index);
    profile().add(counter_key(static_cast<DeviceType>(Device), what), start, Clock::now());
  }
  static void from_host(void* dst, const void* src, size_t n, int index) {
    timed_copy("copy_from_host", base.copy_from_host, dst, src, n, index);
  }
  static void to_host(void* dst, const void* src, size_t n, int index) {
    timed_copy("copy_to_host", base.copy_to_host, dst, src, n, index);
  }
  static void* allocate(size_t n, int index) {
    const auto start = Clock::now();
    void* p = base.allocate(n, index);
    profile().add(counter_key(static_cast<DeviceType>(Device), "allocate"), start, Clock::now());
    return p;
  }
};

template <int Device>
DeviceApi wrap_api(const DeviceApi& base) {
  ApiWrap<Device>::base = base;
  DeviceApi api = base;
  api.copy_from_host = &ApiWrap<Device>::from_host;
  api.copy_to_host = &ApiWrap<Device>::to_host;
  api.allocate = &ApiWrap<Device>::allocate;
  return api;
}

}  // namespace

bool profiling_enabled() {
  return env_enabled() || live_counters.load(std::memory_order_relaxed) > 0;
}

KernelCallCounter::KernelCallCounter() : start_(profile().calls()) {
  live_counters.fetch_add(1, std::memory_order_relaxed);
}

KernelCallCounter::~KernelCallCounter() {
  live_counters.fetch_sub(1, std::memory_order_relaxed);
}

uint64_t KernelCallCounter::calls(const std::string& key) const {
  const std::map<std::string, uint64_t> now = profile().calls();
  const auto it = now.find(key);
  if (it == now.end()) return 0;
  const auto before = start_.find(key);
  return it->second - (before == start_.end() ? 0 : before->second);
}

const KernelTable& profiled_kernel_table(DeviceType type, const KernelTable& base) {
  if (type == DeviceType::CPU) {
    static const KernelTable cpu = wrap_table<int(DeviceType::CPU)>(base);
    return cpu;
  }
  static const KernelTable cuda = wrap_table<int(DeviceType::CUDA)>(base);
  return cuda;
}

const DeviceApi& profiled_device_api(DeviceType type, const DeviceApi& base) {
  if (type == DeviceType::CPU) {
    static const DeviceApi cpu = wrap_api<int(DeviceType::CPU)>(base);
    return cpu;
  }
  static const DeviceApi cuda = wrap_api<int(DeviceType::CUDA)>(base);
  return cuda;
}

}  // namespace lathe::kernels
