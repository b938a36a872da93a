// Where a tensor's storage lives. Code above kernels/ only ever compares and prints devices; it
// never assumes a host pointer, so the cuda device (real or simulated) slots in underneath.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace lathe {

enum class DeviceType : uint8_t { CPU = 0, CUDA = 1 };
inline constexpr int kNumDeviceTypes = 2;

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static constexpr Device cpu() { return Device{DeviceType::CPU, 0}; }
  static constexpr Device cuda(int index = 0) { return Device{DeviceType::CUDA, index}; }
  // Parses "cpu", "cuda", "cuda:1"; throws lathe::Error otherwise.
  static Device parse(const std::string& text);

  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  std::string str() const;
  friend bool operator==(const Device&, const Device&) = default;
};

inline std::ostream& operator<<(std::ostream& os, const Device& d) {
  return os << d.str();
}

// True when this build of lathe has a cuda device (real GPU or simulator) and one is present.
bool cuda_available();
int cuda_device_count();

// Waits until the work queued on `device` has finished (nothing to wait for on the cpu), then
// raises, as a lathe::Error, any error a kernel found in its data meanwhile (on cuda, an index or a
// class target out of range is reported this way, at the host's next wait: docs/cuda.md). Copies
// to and from the host wait too; a training loop needs neither until it reads a value.
void synchronize(Device device);

}  // namespace lathe
