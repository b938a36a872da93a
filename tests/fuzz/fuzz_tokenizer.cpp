// libFuzzer target: the WordPiece tokenizer on arbitrary bytes (invalid UTF-8 included) with the
// committed tests/data/small_vocab.txt. Input layout: byte 0 picks the TokenizerOptions, byte 1 the
// EncodeOptions and mode (pair: the text splits at its first tab; batch: one member per line),
// byte 2 is max_length (255 stands for -1), the rest is the text. Findings: any sanitizer report,
// any exception other than the lathe::Error that bad EncodeOptions must raise, and any encoding
// that breaks the documented shape: ids outside the vocabulary, masks or type ids of another
// length, an over-long result, padding that is not trailing [PAD]s, or content that is not
// [CLS] + a prefix of each side's ids + [SEP] with longest_first using the whole budget.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lathe/core/error.h"
#include "lathe/data/tokenizer.h"

using lathe::data::EncodeOptions;
using lathe::data::Encoding;
using lathe::data::Padding;
using lathe::data::Tokenizer;
using lathe::data::TokenizerOptions;
using Ids = std::vector<int64_t>;

namespace {

#define FUZZ_ASSERT(cond)                                                             \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "fuzz_tokenizer: %s failed (line %d)\n", #cond, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

const std::string& vocab_text() {
  static const std::string text = [] {
    std::ifstream in(LATHE_FUZZ_SMALL_VOCAB, std::ios::binary);
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (s.empty()) {
      std::fprintf(stderr, "fuzz_tokenizer: cannot read %s\n", LATHE_FUZZ_SMALL_VOCAB);
      std::abort();
    }
    return s;
  }();
  return text;
}

// One tokenizer per options byte, built on first use: the vocabulary is read once, and inputs do
// not pay for building a tokenizer.
const Tokenizer& tokenizer(uint8_t variant) {
  static std::array<std::optional<Tokenizer>, 256> cache;
  std::optional<Tokenizer>& slot = cache[variant];
  if (!slot) {
    TokenizerOptions opt;
    opt.lowercase = !(variant & 1);
    opt.clean_text = !(variant & 2);
    opt.handle_chinese_chars = !(variant & 4);
    if ((variant >> 3 & 3) == 1) opt.strip_accents = true;
    if ((variant >> 3 & 3) == 2) opt.strip_accents = false;
    if (variant & 32) opt.max_input_chars_per_word = 5;
    // Overlapping added tokens ("un" inside words, "[unused0]" next to "[UNK]").
    if (variant & 64)
      opt.added_tokens = {"[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[unused0]", "un"};
    if (variant & 128) opt.continuing_subword_prefix.clear();
    slot.emplace(Tokenizer::from_vocab_string(vocab_text(), LATHE_FUZZ_SMALL_VOCAB, opt));
  }
  return *slot;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80         ? 1
                      : (c >> 5) == 6  ? 2
                      : (c >> 4) == 14 ? 3
                      : (c >> 3) == 30 ? 4
                                       : 0;
    if (len == 0 || i + len > s.size()) return false;
    char32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3F);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

bool is_prefix(const Ids& ids, std::size_t at, std::size_t count, const Ids& full) {
  return count <= full.size() && at + count <= ids.size() &&
         std::equal(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(count),
                    ids.begin() + static_cast<std::ptrdiff_t>(at));
}

// Checks one encoding of `a` (and `b` for pairs) against the ids of each side on its own; returns
// the number of real (unpadded) tokens.
std::size_t check_encoding(const Tokenizer& tok, const Encoding& enc, const Ids& a, const Ids* b,
                           const EncodeOptions& opt) {
  const std::size_t len = enc.input_ids.size();
  FUZZ_ASSERT(enc.attention_mask.size() == len);
  FUZZ_ASSERT(enc.token_type_ids.size() == len);
  for (int64_t id : enc.input_ids) FUZZ_ASSERT(id >= 0 && id < tok.vocab_size());
  std::size_t real = 0;
  while (real < len && enc.attention_mask[real] == 1) ++real;
  for (std::size_t i = real; i < len; ++i) {
    FUZZ_ASSERT(enc.attention_mask[i] == 0);
    FUZZ_ASSERT(enc.input_ids[i] == tok.pad_id());
    FUZZ_ASSERT(enc.token_type_ids[i] == 0);
  }
  const bool special = opt.add_special_tokens;
  const std::size_t added = special ? (b ? 3 : 2) : 0;
  const std::size_t whole = a.size() + (b ? b->size() : 0);
  if (opt.max_length > 0) {
    const auto max = static_cast<std::size_t>(opt.max_length);
    FUZZ_ASSERT(len <= max);
    FUZZ_ASSERT(real == std::min(whole, max - added) + added);
  } else {
    FUZZ_ASSERT(real == whole + added);
  }
  if (opt.padding == Padding::None) FUZZ_ASSERT(len == real);
  if (opt.padding == Padding::MaxLength)
    FUZZ_ASSERT(len == static_cast<std::size_t>(opt.max_length));

  std::size_t first = 0;  // real tokens of type 0
  while (first < real && enc.token_type_ids[first] == 0) ++first;
  for (std::size_t i = first; i < real; ++i) FUZZ_ASSERT(b && enc.token_type_ids[i] == 1);
  if (special) {
    FUZZ_ASSERT(real >= added && first >= 2);
    FUZZ_ASSERT(enc.input_ids[0] == tok.cls_id());
    FUZZ_ASSERT(enc.input_ids[first - 1] == tok.sep_id());
    FUZZ_ASSERT(enc.input_ids[real - 1] == tok.sep_id());
  }
  const std::size_t a_kept = first - (special ? 2 : 0);
  FUZZ_ASSERT(is_prefix(enc.input_ids, special ? 1 : 0, a_kept, a));
  if (b) {
    const std::size_t b_kept = real - first - (special ? 1 : 0);
    FUZZ_ASSERT(is_prefix(enc.input_ids, first, b_kept, *b));
  } else {
    FUZZ_ASSERT(first == real);
  }
  return real;
}

std::vector<std::string_view> split(std::string_view text, char sep, std::size_t max_parts) {
  std::vector<std::string_view> parts;
  std::size_t pos = 0;
  while (parts.size() + 1 < max_parts) {
    const std::size_t at = text.find(sep, pos);
    if (at == std::string_view::npos) break;
    parts.push_back(text.substr(pos, at - pos));
    pos = at + 1;
  }
  parts.push_back(text.substr(pos));
  return parts;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const Tokenizer& tok = tokenizer(data[0]);
  const uint8_t flags = data[1];
  const std::string_view text(reinterpret_cast<const char*>(data) + 3, size - 3);

  EncodeOptions opt;
  opt.add_special_tokens = !(flags & 1);
  const int padding = flags >> 1 & 3;
  opt.padding = padding == 1 ? Padding::Longest : padding == 2 ? Padding::MaxLength : Padding::None;
  opt.max_length = data[2] == 255 ? -1 : data[2];
  const bool pair = flags & 8, batch = flags & 16;
  const int64_t added = opt.add_special_tokens ? (pair ? 3 : 2) : 0;
  const bool must_throw = opt.max_length < 0 ||
                          (opt.padding == Padding::MaxLength && opt.max_length == 0) ||
                          (opt.max_length > 0 && opt.max_length < added);

  // Per-text invariants, independent of the options.
  const std::string normalized = tok.normalize(text);
  FUZZ_ASSERT(valid_utf8(normalized));
  if (tok.options().clean_text) FUZZ_ASSERT(normalized.find("\xEF\xBF\xBD") == std::string::npos);

  std::vector<std::pair<std::string, std::string>> members;
  for (std::string_view line :
       batch ? split(text, '\n', 16) : std::vector<std::string_view>{text}) {
    if (!pair) {
      members.emplace_back(line, std::string());
    } else {
      const auto halves = split(line, '\t', 2);
      members.emplace_back(halves[0], halves.size() > 1 ? halves[1] : std::string_view());
    }
  }
  std::vector<Ids> a_ids, b_ids;
  for (const auto& [a, b] : members) {
    a_ids.push_back(tok.encode_ids(a));
    b_ids.push_back(tok.encode_ids(b));
    for (const Ids* ids : {&a_ids.back(), &b_ids.back()})
      for (int64_t id : *ids) FUZZ_ASSERT(id >= 0 && id < tok.vocab_size());
  }
  FUZZ_ASSERT(tok.tokenize(members[0].first).size() == a_ids[0].size());

  std::vector<Encoding> encs;
  try {
    if (batch && pair) {
      encs = tok.encode_pair_batch(members, opt);
    } else if (batch) {
      std::vector<std::string> texts;
      for (const auto& m : members) texts.push_back(m.first);
      encs = tok.encode_batch(texts, opt);
    } else if (pair) {
      encs.push_back(tok.encode_pair(members[0].first, members[0].second, opt));
    } else {
      encs.push_back(tok.encode(members[0].first, opt));
    }
  } catch (const lathe::Error&) {
    FUZZ_ASSERT(must_throw);
    return 0;
  }
  FUZZ_ASSERT(!must_throw);
  FUZZ_ASSERT(encs.size() == members.size());
  std::size_t longest = 0;
  for (std::size_t i = 0; i < encs.size(); ++i)
    longest =
        std::max(longest, check_encoding(tok, encs[i], a_ids[i], pair ? &b_ids[i] : nullptr, opt));
  if (opt.padding == Padding::Longest)
    for (const auto& e : encs) FUZZ_ASSERT(e.input_ids.size() == longest);
  return 0;
}
