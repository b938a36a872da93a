// safetensors (Hugging Face's tensor file format): an 8-byte little-endian header length N, N bytes
// of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the
// data section. The reader validates the whole header before any tensor is touched, so a hostile or
// truncated file is a lathe::Error naming the file and the problem, never an out-of-bounds read.
// Files are memory-mapped and tensors alias the mapping where dtype and alignment allow.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lathe/core/device.h"
#include "lathe/core/shape.h"
#include "lathe/core/tensor.h"

namespace lathe::io {

// The on-disk element types safetensors defines that lathe reads. I8 and U8 have no lathe dtype;
// they load widened to I32 (lossless).
enum class StDType : uint8_t { F64, F32, F16, BF16, I64, I32, I8, U8, BOOL };

std::string_view st_dtype_name(StDType t);  // "F32", "BF16", ...
size_t st_element_size(StDType t);
// The lathe dtype a tensor of this on-disk type loads as.
DType st_to_lathe(StDType t);
StDType lathe_to_st(DType t);

struct SafetensorsTensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  Shape shape;
  uint64_t begin = 0;  // byte range, relative to the start of the data section
  uint64_t end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// A parsed and fully validated header.
struct SafetensorsHeader {
  uint64_t header_size = 0;                    // N
  uint64_t data_offset = 0;                    // 8 + N: where the data section starts in the file
  uint64_t data_size = 0;                      // bytes in the data section
  std::vector<SafetensorsTensorInfo> tensors;  // sorted by name
  std::map<std::string, std::string> metadata;
};

// Validates `size` bytes holding a whole safetensors file (header and data section) and returns
// its header. `source` names the file in errors. Checks: at least 8 bytes; header length within
// the file (and at most 100 MB, as the reference implementation); header is a JSON object without
// duplicate keys; known dtypes; shapes of non-negative integers; each byte range equals numel x
// element size; ranges tile the data section exactly (sorted by offset, no overlap, no hole, the
// last ends at the end of the file, as the reference implementation requires); metadata values
// are strings.
SafetensorsHeader parse_safetensors(const void* data, size_t size, std::string_view source);

// An open safetensors file. Copies share the mapping; tensors loaded zero-copy keep it alive
// after the SafetensorsFile is gone.
class SafetensorsFile {
 public:
  // Memory-maps `path` and validates it. As with any memory-mapped reader, the file must not be
  // truncated in place while tensors alias it (save_safetensors never does: it renames).
  static SafetensorsFile open(const std::string& path);
  // Validates an in-memory file (tests, fuzzing); `source` names it in errors.
  static SafetensorsFile from_bytes(std::string bytes, std::string source = "<memory>");

  const std::string& path() const;
  const SafetensorsHeader& header() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const SafetensorsTensorInfo& info(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const;

  // The tensor `name` on `device`. On the cpu it aliases the file when the on-disk dtype is a
  // lathe dtype and the data is aligned to the element size; otherwise it is a copy. Zero-copy
  // tensors are writable: the mapping is private (copy-on-write), so in-place updates such as an
  // optimizer step never reach the file.
  Tensor tensor(const std::string& name, Device device = Device::cpu()) const;
  std::map<std::string, Tensor> tensors(Device device = Device::cpu()) const;

  // The bytes of the whole file (the mapping, or the in-memory buffer).
  const uint8_t* bytes() const;
  size_t size() const;

 private:
  struct State;
  explicit SafetensorsFile(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

// Every tensor of a file, on `device`.
std::map<std::string, Tensor> load_safetensors(const std::string& path,
                                               Device device = Device::cpu());

// Writes `tensors` (any device, any layout) and `metadata` as a safetensors file, atomically: a
// temporary file in the same directory is written, fsynced and renamed over `path`, so a reader
// sees the old file or the new one, never a torn one; on failure nothing is left behind. Tensors
// are laid out by decreasing element size, then name, so every tensor is aligned to its element
// size; the header is padded with spaces to a multiple of 8 bytes as the reference implementation
// does.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace lathe::io
