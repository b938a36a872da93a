// libFuzzer target: the safetensors header parser on arbitrary bytes. Any exception other than
// lathe::Error, any sanitizer report, and any accepted header whose tensor ranges do not lie
// inside the buffer are findings.
#include <cstdint>
#include <cstdlib>

#include "lathe/core/error.h"
#include "lathe/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto header = lathe::io::parse_safetensors(data, size, "fuzz");
    uint64_t cursor = 0;
    unsigned sum = 0;
    for (const auto& t : header.tensors) {
      if (t.end > header.data_size || t.begin > t.end) std::abort();
      if (uint64_t(t.numel()) * lathe::io::st_element_size(t.dtype) != t.nbytes()) std::abort();
      cursor += t.nbytes();
      // Touch every byte a loader would read, so ASan sees an out-of-bounds range.
      for (uint64_t i = t.begin; i < t.end; ++i) sum += data[header.data_offset + i];
    }
    if (cursor != header.data_size || header.data_offset + header.data_size != size) std::abort();
    return int(sum & 0);
  } catch (const lathe::Error&) {
    return 0;
  }
}
