// libFuzzer target: vocabulary loading from bytes. The first byte picks the format (odd: a
// tokenizer.json, even: a vocab.txt whose TokenizerOptions come from the other bits); the rest is
// the file. Any exception other than lathe::Error and any sanitizer report are findings, as is an
// accepted vocabulary whose lookups disagree with its pieces or that encodes text to ids outside
// it.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lathe/core/error.h"
#include "lathe/data/tokenizer.h"

using lathe::data::EncodeOptions;
using lathe::data::Padding;
using lathe::data::Tokenizer;
using lathe::data::TokenizerOptions;

namespace {

void check_ids(const Tokenizer& tok, const std::vector<int64_t>& ids) {
  for (int64_t id : ids)
    if (id < 0 || id >= tok.vocab_size()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view content(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::optional<Tokenizer> loaded;
  try {
    if (mode & 1) {
      loaded.emplace(Tokenizer::from_tokenizer_json_string(content, "fuzz.json"));
    } else {
      TokenizerOptions opt;
      opt.lowercase = !(mode & 2);
      opt.clean_text = !(mode & 4);
      opt.handle_chinese_chars = !(mode & 8);
      if (mode & 16) opt.strip_accents = (mode & 32) != 0;
      if (mode & 64) opt.continuing_subword_prefix.clear();
      // Short words make the max_input_chars_per_word cut-off reachable from small inputs.
      if (mode & 128) opt.max_input_chars_per_word = 4;
      loaded.emplace(Tokenizer::from_vocab_string(content, "fuzz.txt", opt));
    }
  } catch (const lathe::Error&) {
    return 0;
  }
  const Tokenizer& tok = *loaded;
  const int64_t n = tok.vocab_size();
  if (n <= 0) std::abort();
  for (int64_t id : {tok.unk_id(), tok.cls_id(), tok.sep_id(), tok.pad_id()})
    if (id < 0 || id >= n) std::abort();
  if (tok.mask_id() < -1 || tok.mask_id() >= n) std::abort();
  // Every piece is found, and a repeated piece resolves to one of its copies (the last one).
  for (int64_t id = 0; id < n; ++id) {
    const std::string& piece = tok.id_to_token(id);
    const int64_t found = tok.token_to_id(piece);
    if (found < id || tok.id_to_token(found) != piece) std::abort();
  }

  // The vocabulary's own bytes make text full of its pieces, prefixes and special tokens.
  check_ids(tok, tok.encode_ids(content.substr(0, 1024)));
  check_ids(tok,
            tok.encode_ids("Hello, World! Caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 [MASK] un##able"));
  EncodeOptions opt;
  opt.max_length = 8;
  opt.padding = Padding::MaxLength;
  const auto enc = tok.encode_pair(content.substr(0, 64), "x y z", opt);
  if (enc.input_ids.size() != 8 || enc.attention_mask.size() != 8 || enc.token_type_ids.size() != 8)
    std::abort();
  check_ids(tok, enc.input_ids);
  return 0;
}
