// libFuzzer target: config.json text -> BertConfig. Any exception other than lathe::Error and any
// sanitizer report are findings, as is an accepted config whose to_json() does not parse back to
// the same text.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "lathe/core/error.h"
#include "lathe/nn/bert_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  lathe::nn::BertConfig config;
  try {
    config = lathe::nn::BertConfig::from_json(text, "fuzz");
  } catch (const lathe::Error&) {
    return 0;
  }
  const std::string once = config.to_json();
  const std::string twice = lathe::nn::BertConfig::from_json(once, "round trip").to_json();
  if (once != twice) std::abort();
  return 0;
}
