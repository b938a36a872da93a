// WordPiece tokenizer matching Hugging Face `tokenizers` (BertNormalizer + BertPreTokenizer +
// WordPiece + the BERT template). The character classes come from tables generated out of the
// pinned `tokenizers` itself (unicode_tables.cpp); utf8proc supplies NFD and case mappings.
// Normalization, pre-tokenization and WordPiece run fused over one pass of code points with
// reused buffers, so the hot path allocates nothing per character.
#include "lathe/data/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "lathe/core/error.h"
#include "unicode_tables.h"

namespace lathe::data {
namespace {

constexpr char32_t kReplacement = 0xFFFD;

// Class bits per code point.
enum : uint8_t {
  kDrop = 1,
  kToSpace = 2,
  kChinese = 4,
  kWhitespace = 8,
  kPunct = 16,
  kMark = 32,
  kDecomposes = 64,
};

bool in_ranges(const unicode::CodeRange* table, std::size_t n, char32_t cp) {
  const unicode::CodeRange* end = table + n;
  const unicode::CodeRange* it = std::upper_bound(
      table, end, cp, [](char32_t c, const unicode::CodeRange& r) { return c < r.lo; });
  return it != table && cp <= (it - 1)->hi;
}

uint8_t classify_slow(char32_t cp) {
  uint8_t c = 0;
  if (in_ranges(unicode::k_dropped, unicode::k_dropped_size, cp)) c |= kDrop;
  if (in_ranges(unicode::k_to_space, unicode::k_to_space_size, cp)) c |= kToSpace;
  if (in_ranges(unicode::k_chinese, unicode::k_chinese_size, cp)) c |= kChinese;
  if (in_ranges(unicode::k_whitespace, unicode::k_whitespace_size, cp)) c |= kWhitespace;
  if (in_ranges(unicode::k_punctuation, unicode::k_punctuation_size, cp)) c |= kPunct;
  if (in_ranges(unicode::k_nonspacing_mark, unicode::k_nonspacing_mark_size, cp)) c |= kMark;
  if (in_ranges(unicode::k_decomposes, unicode::k_decomposes_size, cp)) c |= kDecomposes;
  return c;
}

// A flat table for the BMP (64 KiB, built once); the rare astral code points search the ranges.
const std::vector<uint8_t>& bmp_classes() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(0x10000);
    for (char32_t cp = 0; cp < 0x10000; ++cp) t[cp] = classify_slow(cp);
    return t;
  }();
  return table;
}

inline uint8_t classify(const uint8_t* bmp, char32_t cp) {
  return cp < 0x10000 ? bmp[cp] : classify_slow(cp);
}

// Decodes one code point at s[i]; ill-formed input (overlong forms, surrogates, values past
// U+10FFFF, truncated sequences, stray continuation bytes) yields U+FFFD and consumes one byte.
inline char32_t decode_utf8(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  const std::size_t left = s.size() - i;
  auto cont = [&](std::size_t k) {
    return k < left && (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
  };
  auto byte = [&](std::size_t k) { return static_cast<char32_t>(s[i + k]) & 0x3F; };
  if (b0 >= 0xC2 && b0 <= 0xDF && cont(1)) {
    char32_t cp = ((b0 & 0x1F) << 6) | byte(1);
    i += 2;
    return cp;
  }
  if (b0 >= 0xE0 && b0 <= 0xEF && cont(1) && cont(2)) {
    char32_t cp = ((b0 & 0x0F) << 12) | (byte(1) << 6) | byte(2);
    if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
      i += 3;
      return cp;
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4 && cont(1) && cont(2) && cont(3)) {
    char32_t cp = ((b0 & 0x07) << 18) | (byte(1) << 12) | (byte(2) << 6) | byte(3);
    if (cp >= 0x10000 && cp <= 0x10FFFF) {
      i += 4;
      return cp;
    }
  }
  ++i;
  return kReplacement;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

// Open-addressing map from piece bytes to id; keys live in the vocabulary, stored here as views
// (with the continuation prefix already cut off for the "##" table).
class PieceTable {
 public:
  void build(const std::vector<std::pair<std::string_view, int64_t>>& entries) {
    std::size_t cap = 16;
    while (cap < entries.size() * 2) cap *= 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    max_len_ = 0;
    for (const auto& [key, id] : entries) {
      uint64_t h = hash_bytes(key);
      std::size_t i = h & mask_;
      // A later duplicate overwrites the earlier one, as Hugging Face's HashMap insert does.
      while (slots_[i].id >= 0 && !(slots_[i].hash == h && slots_[i].key == key))
        i = (i + 1) & mask_;
      slots_[i] = Slot{h, key, id};
      max_len_ = std::max(max_len_, key.size());
    }
  }
  int64_t find(std::string_view key) const {
    uint64_t h = hash_bytes(key);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.id < 0) return -1;
      if (s.hash == h && s.key == key) return s.id;
    }
  }
  std::size_t max_len() const { return max_len_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    std::string_view key;
    int64_t id = -1;
  };
  std::vector<Slot> slots_{Slot{}};
  std::size_t mask_ = 0;
  std::size_t max_len_ = 0;
};

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  LATHE_CHECK(in, "Tokenizer: cannot open ", what, " '", path, "'");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LATHE_CHECK(!in.bad(), "Tokenizer: cannot read ", what, " '", path, "'");
  return content;
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> vocab;
  TokenizerOptions options;
  bool strip_accents = true;
  PieceTable words;         // pieces that start a word
  PieceTable continuation;  // pieces after the prefix, for the rest of a word
  int64_t unk = -1, cls = -1, sep = -1, pad = -1, mask = -1;
  // Added tokens matched verbatim in the raw text, longest first at the leftmost position.
  std::vector<std::pair<std::string, int64_t>> specials;
  std::array<bool, 256> special_first{};
  const uint8_t* bmp = nullptr;

  // Normalizes one code point and passes the results to sink, in Hugging Face's stage order:
  // clean text, chinese spacing, NFD + drop Mn, lowercase.
  template <class Sink>
  void normalize_cp(char32_t cp, Sink& sink) const {
    uint8_t cls_bits = classify(bmp, cp);
    if (options.clean_text) {
      if (cls_bits & kDrop) return;
      if (cls_bits & kToSpace) {
        sink(U' ');
        return;
      }
    }
    const bool chinese = options.handle_chinese_chars && (cls_bits & kChinese);
    if (chinese) sink(U' ');
    if (cp < 0x80) {
      if (options.lowercase && cp >= 'A' && cp <= 'Z') cp += 32;
      sink(cp);
    } else if (strip_accents && (cls_bits & kDecomposes)) {
      utf8proc_int32_t buf[8];
      utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 8,
                                                   UTF8PROC_DECOMPOSE, nullptr);
      if (n < 0 || n > 8) {
        lower_and_emit(cp, sink);
      } else {
        for (utf8proc_ssize_t k = 0; k < n; ++k) {
          if (classify(bmp, static_cast<char32_t>(buf[k])) & kMark) continue;
          lower_and_emit(static_cast<char32_t>(buf[k]), sink);
        }
      }
    } else if (strip_accents && (cls_bits & kMark)) {
      // A mark on its own (not from a decomposition) is dropped as well.
    } else {
      lower_and_emit(cp, sink);
    }
    if (chinese) sink(U' ');
  }

  template <class Sink>
  void lower_and_emit(char32_t cp, Sink& sink) const {
    if (!options.lowercase) {
      sink(cp);
    } else if (cp == 0x130) {
      // Rust's char::to_lowercase applies the unconditional special casing: İ -> i + U+0307.
      sink(U'i');
      sink(char32_t{0x307});
    } else {
      sink(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp))));
    }
  }

  template <class Sink>
  void normalize_segment(std::string_view text, Sink& sink) const {
    for (std::size_t i = 0; i < text.size();) normalize_cp(decode_utf8(text, i), sink);
  }

  // Greedy longest-match-first WordPiece over one pre-tokenized word.
  void wordpiece(std::string_view word, std::size_t chars, std::vector<int64_t>& out) const {
    if (static_cast<int64_t>(chars) > options.max_input_chars_per_word) {
      out.push_back(unk);
      return;
    }
    const std::size_t mark = out.size();
    std::size_t start = 0;
    while (start < word.size()) {
      const PieceTable& table = start == 0 ? words : continuation;
      std::size_t end = std::min(word.size(), start + table.max_len());
      while (end < word.size() && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80) --end;
      int64_t id = -1;
      while (end > start) {
        id = table.find(word.substr(start, end - start));
        if (id >= 0) break;
        do --end;
        while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
      }
      if (id < 0) {
        out.resize(mark);
        out.push_back(unk);
        return;
      }
      out.push_back(id);
      start = end;
    }
  }

  // Normalized code points -> words (split on whitespace, punctuation isolated) -> pieces.
  struct WordSink {
    const Impl& impl;
    std::vector<int64_t>& out;
    std::string word;
    std::size_t chars = 0;

    void flush() {
      if (!word.empty()) impl.wordpiece(word, chars, out);
      word.clear();
      chars = 0;
    }
    void operator()(char32_t cp) {
      if (cp < 0x80 && cp > ' ' && !(impl.bmp[cp] & kPunct)) {
        word.push_back(static_cast<char>(cp));
        ++chars;
        return;
      }
      uint8_t bits = classify(impl.bmp, cp);
      if (bits & kWhitespace) {
        flush();
      } else if (bits & kPunct) {
        flush();
        append_utf8(word, cp);
        chars = 1;
        flush();
      } else {
        append_utf8(word, cp);
        ++chars;
      }
    }
  };

  void encode_into(std::string_view text, std::vector<int64_t>& out) const {
    thread_local std::string word_buffer;
    WordSink sink{*this, out, std::move(word_buffer)};
    sink.word.clear();
    std::size_t seg_start = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (!special_first[static_cast<unsigned char>(text[i])]) continue;
      const std::pair<std::string, int64_t>* best = nullptr;
      for (const auto& sp : specials)
        if (text.substr(i).starts_with(sp.first) && (!best || sp.first.size() > best->first.size()))
          best = &sp;
      if (!best) continue;
      normalize_segment(text.substr(seg_start, i - seg_start), sink);
      sink.flush();
      out.push_back(best->second);
      i += best->first.size() - 1;
      seg_start = i + 1;
    }
    normalize_segment(text.substr(seg_start), sink);
    sink.flush();
    word_buffer = std::move(sink.word);
  }

  void finish(std::vector<int64_t>& a, std::vector<int64_t>* b, const EncodeOptions& opt,
              Encoding& enc) const {
    const int64_t added = opt.add_special_tokens ? (b ? 3 : 2) : 0;
    // Otherwise a negative length would silently mean "no limit", and MaxLength would not pad.
    LATHE_CHECK(opt.max_length >= 0, "Tokenizer: max_length ", opt.max_length, " is negative");
    LATHE_CHECK(opt.padding != Padding::MaxLength || opt.max_length > 0,
                "Tokenizer: Padding::MaxLength needs max_length > 0");
    if (opt.max_length > 0) {
      LATHE_CHECK(opt.max_length >= added, "Tokenizer: max_length ", opt.max_length,
                  " cannot hold the ", added, " special tokens");
      // Hugging Face's longest_first: the shorter side keeps what it can, the longer side gets
      // the rest, and when both are too long the budget is halved (odd unit to the second).
      const std::size_t m = static_cast<std::size_t>(opt.max_length - added);
      std::size_t n1 = a.size(), n2 = b ? b->size() : 0;
      if (n1 + n2 > m) {
        if (!b) {
          a.resize(m);
        } else {
          const bool swap = n1 > n2;
          if (swap) std::swap(n1, n2);
          n2 = n1 > m ? n1 : std::max(n1, m - n1);
          if (n1 + n2 > m) {
            n1 = m / 2;
            n2 = n1 + m % 2;
          }
          if (swap) std::swap(n1, n2);
          a.resize(std::min(a.size(), n1));
          b->resize(std::min(b->size(), n2));
        }
      }
    }
    enc.input_ids.clear();
    enc.token_type_ids.clear();
    if (opt.add_special_tokens) enc.input_ids.push_back(cls);
    enc.input_ids.insert(enc.input_ids.end(), a.begin(), a.end());
    if (opt.add_special_tokens) enc.input_ids.push_back(sep);
    enc.token_type_ids.assign(enc.input_ids.size(), 0);
    if (b) {
      enc.input_ids.insert(enc.input_ids.end(), b->begin(), b->end());
      if (opt.add_special_tokens) enc.input_ids.push_back(sep);
      enc.token_type_ids.resize(enc.input_ids.size(), 1);
    }
    enc.attention_mask.assign(enc.input_ids.size(), 1);
    if (opt.padding == Padding::MaxLength) pad_to(enc, opt.max_length);
  }

  void pad_to(Encoding& enc, int64_t length) const {
    const auto n = static_cast<std::size_t>(std::max<int64_t>(length, 0));
    if (enc.input_ids.size() >= n) return;
    enc.input_ids.resize(n, pad);
    enc.attention_mask.resize(n, 0);
    enc.token_type_ids.resize(n, 0);
  }

  void pad_batch(std::vector<Encoding>& encs, const EncodeOptions& opt) const {
    if (opt.padding != Padding::Longest) return;
    std::size_t longest = 0;
    for (const auto& e : encs) longest = std::max(longest, e.input_ids.size());
    for (auto& e : encs) pad_to(e, static_cast<int64_t>(longest));
  }
};

Tokenizer::Tokenizer(std::vector<std::string> vocab, TokenizerOptions options)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  LATHE_CHECK(!vocab.empty(), "Tokenizer: empty vocabulary");
  LATHE_CHECK(options.max_input_chars_per_word > 0,
              "Tokenizer: max_input_chars_per_word must be > 0");
  m.vocab = std::move(vocab);
  m.options = std::move(options);
  m.strip_accents = m.options.strip_accents.value_or(m.options.lowercase);
  m.bmp = bmp_classes().data();
  const std::string& prefix = m.options.continuing_subword_prefix;
  std::vector<std::pair<std::string_view, int64_t>> words, cont;
  words.reserve(m.vocab.size());
  for (std::size_t i = 0; i < m.vocab.size(); ++i) {
    std::string_view piece = m.vocab[i];
    if (!prefix.empty() && piece.size() > prefix.size() && piece.starts_with(prefix))
      cont.emplace_back(piece.substr(prefix.size()), static_cast<int64_t>(i));
    words.emplace_back(piece, static_cast<int64_t>(i));
  }
  m.words.build(words);
  m.continuation.build(prefix.empty() ? words : cont);
  auto require = [&](const std::string& token, const char* what) {
    int64_t id = m.words.find(token);
    LATHE_CHECK(id >= 0, "Tokenizer: the vocabulary has no ", what, " token '", token, "'");
    return id;
  };
  m.unk = require(m.options.unk_token, "unknown");
  m.cls = require(m.options.cls_token, "classifier");
  m.sep = require(m.options.sep_token, "separator");
  m.pad = require(m.options.pad_token, "padding");
  m.mask = m.words.find(m.options.mask_token);
  std::vector<std::string> added = m.options.added_tokens;
  if (added.empty()) {
    for (const std::string& t : {m.options.pad_token, m.options.unk_token, m.options.cls_token,
                                 m.options.sep_token, m.options.mask_token})
      if (m.words.find(t) >= 0) added.push_back(t);
  }
  for (const std::string& t : added) {
    LATHE_CHECK(!t.empty(), "Tokenizer: empty added token");
    int64_t id = m.words.find(t);
    LATHE_CHECK(id >= 0, "Tokenizer: added token '", t, "' is not in the vocabulary");
    bool seen = false;
    for (const auto& sp : m.specials) seen = seen || sp.first == t;
    if (seen) continue;
    m.specials.emplace_back(t, id);
    m.special_first[static_cast<unsigned char>(t[0])] = true;
  }
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_vocab_file(const std::string& path, TokenizerOptions options) {
  return from_vocab_string(read_text_file(path, "vocabulary file"), path, std::move(options));
}

Tokenizer Tokenizer::from_vocab_string(std::string_view content, const std::string& source,
                                       TokenizerOptions options) {
  std::vector<std::string> vocab;
  // Lines as std::getline gives them: a final line needs no '\n', and a final '\n' adds none.
  for (std::size_t pos = 0; pos < content.size();) {
    std::size_t nl = std::min(content.find('\n', pos), content.size());
    std::string_view line = content.substr(pos, nl - pos);
    // Hugging Face trims trailing whitespace (and with it a '\r' of CRLF files).
    std::size_t end = line.find_last_not_of(" \t\r\n\v\f");
    vocab.emplace_back(line.substr(0, end == std::string_view::npos ? 0 : end + 1));
    pos = nl + 1;
  }
  LATHE_CHECK(!vocab.empty(), "Tokenizer: vocabulary '", source, "' is empty");
  try {
    return Tokenizer(std::move(vocab), std::move(options));
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (in '" + source + "')");
  }
}

Tokenizer Tokenizer::from_tokenizer_json(const std::string& path) {
  return from_tokenizer_json_string(read_text_file(path, "tokenizer file"), path);
}

Tokenizer Tokenizer::from_tokenizer_json_string(std::string_view content,
                                                const std::string& source) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(content.begin(), content.end());
  } catch (const json::exception& e) {
    throw Error("Tokenizer: '" + source + "' is not valid JSON: " + e.what());
  }
  auto fail = [&](const std::string& what) -> Error {
    return Error("Tokenizer: '" + source + "': " + what);
  };
  if (!j.is_object()) throw fail("top level is not an object");
  TokenizerOptions opt;
  std::vector<std::string> vocab;
  try {
    const json& model = j.at("model");
    if (model.value("type", std::string("WordPiece")) != "WordPiece")
      throw fail("model.type is '" + model.value("type", std::string()) + "', expected WordPiece");
    opt.unk_token = model.value("unk_token", opt.unk_token);
    opt.continuing_subword_prefix =
        model.value("continuing_subword_prefix", opt.continuing_subword_prefix);
    if (model.contains("max_input_chars_per_word")) {
      // get<int64_t>() would convert a float such as 1e300 with undefined behaviour.
      const json& limit = model.at("max_input_chars_per_word");
      if (!limit.is_number_integer())
        throw fail("model.max_input_chars_per_word is not an integer");
      opt.max_input_chars_per_word = limit.get<int64_t>();
    }
    const json& vocab_json = model.at("vocab");
    if (!vocab_json.is_object() || vocab_json.empty())
      throw fail("model.vocab is not a non-empty object");
    vocab.assign(vocab_json.size(), std::string());
    std::vector<bool> filled(vocab_json.size(), false);
    for (const auto& [piece, id_json] : vocab_json.items()) {
      if (!id_json.is_number_unsigned()) throw fail("model.vocab['" + piece + "'] is not an id");
      const auto id = id_json.get<uint64_t>();
      if (id >= vocab.size() || filled[id])
        throw fail("model.vocab ids are not 0.." + std::to_string(vocab.size() - 1) +
                   " without gaps or repeats (at '" + piece + "')");
      vocab[id] = piece;
      filled[id] = true;
    }
    const json& norm = j.contains("normalizer") ? j["normalizer"] : json();
    if (norm.is_null()) {
      opt.lowercase = false;
      opt.strip_accents = false;
      opt.clean_text = false;
      opt.handle_chinese_chars = false;
    } else {
      if (norm.value("type", std::string()) != "BertNormalizer")
        throw fail("normalizer type '" + norm.value("type", std::string()) +
                   "' is not supported (BertNormalizer only)");
      opt.lowercase = norm.value("lowercase", true);
      opt.clean_text = norm.value("clean_text", true);
      opt.handle_chinese_chars = norm.value("handle_chinese_chars", true);
      if (norm.contains("strip_accents") && !norm["strip_accents"].is_null())
        opt.strip_accents = norm["strip_accents"].get<bool>();
    }
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null() &&
        j["pre_tokenizer"].value("type", std::string()) != "BertPreTokenizer")
      throw fail("pre_tokenizer type '" + j["pre_tokenizer"].value("type", std::string()) +
                 "' is not supported (BertPreTokenizer only)");
    if (j.contains("added_tokens")) {
      for (const json& t : j["added_tokens"]) {
        const std::string token = t.at("content").get<std::string>();
        if (t.value("normalized", false) || t.value("lstrip", false) || t.value("rstrip", false) ||
            t.value("single_word", false))
          throw fail("added token '" + token +
                     "' uses normalized/lstrip/rstrip/single_word, which lathe does not support");
        opt.added_tokens.push_back(token);
      }
    }
    if (j.contains("padding") && j["padding"].is_object())
      opt.pad_token = j["padding"].value("pad_token", opt.pad_token);
  } catch (const json::exception& e) {
    throw fail(std::string("unexpected layout: ") + e.what());
  }
  try {
    return Tokenizer(std::move(vocab), std::move(opt));
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (in '" + source + "')");
  }
}

Tokenizer Tokenizer::from_directory(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path d(dir);
  if (fs::exists(d / "tokenizer.json")) return from_tokenizer_json((d / "tokenizer.json").string());
  LATHE_CHECK(fs::exists(d / "vocab.txt"), "Tokenizer: '", dir,
              "' has neither tokenizer.json nor vocab.txt");
  TokenizerOptions opt;
  const fs::path config = d / "tokenizer_config.json";
  if (fs::exists(config)) {
    std::ifstream in(config);
    try {
      auto j = nlohmann::json::parse(in);
      opt.lowercase = j.value("do_lower_case", true);
      opt.handle_chinese_chars = j.value("tokenize_chinese_chars", true);
      if (j.contains("strip_accents") && !j["strip_accents"].is_null())
        opt.strip_accents = j["strip_accents"].get<bool>();
    } catch (const nlohmann::json::exception& e) {
      throw Error("Tokenizer: '" + config.string() + "' is not valid: " + e.what());
    }
  }
  return from_vocab_file((d / "vocab.txt").string(), std::move(opt));
}

std::string Tokenizer::normalize(std::string_view text) const {
  std::string out;
  out.reserve(text.size());
  auto sink = [&out](char32_t cp) { append_utf8(out, cp); };
  impl_->normalize_segment(text, sink);
  return out;
}

void Tokenizer::encode_ids(std::string_view text, std::vector<int64_t>& out) const {
  impl_->encode_into(text, out);
}

std::vector<int64_t> Tokenizer::encode_ids(std::string_view text) const {
  std::vector<int64_t> out;
  impl_->encode_into(text, out);
  return out;
}

std::vector<std::string> Tokenizer::tokenize(std::string_view text) const {
  std::vector<std::string> pieces;
  for (int64_t id : encode_ids(text)) pieces.push_back(id_to_token(id));
  return pieces;
}

Encoding Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  Encoding enc;
  std::vector<int64_t> a = encode_ids(text);
  impl_->finish(a, nullptr, options, enc);
  return enc;
}

Encoding Tokenizer::encode_pair(std::string_view first, std::string_view second,
                                const EncodeOptions& options) const {
  Encoding enc;
  std::vector<int64_t> a = encode_ids(first), b = encode_ids(second);
  impl_->finish(a, &b, options, enc);
  return enc;
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                              const EncodeOptions& options) const {
  std::vector<Encoding> encs;
  encs.reserve(texts.size());
  for (const auto& t : texts) encs.push_back(encode(t, options));
  impl_->pad_batch(encs, options);
  return encs;
}

std::vector<Encoding> Tokenizer::encode_pair_batch(
    const std::vector<std::pair<std::string, std::string>>& pairs,
    const EncodeOptions& options) const {
  std::vector<Encoding> encs;
  encs.reserve(pairs.size());
  for (const auto& [a, b] : pairs) encs.push_back(encode_pair(a, b, options));
  impl_->pad_batch(encs, options);
  return encs;
}

int64_t Tokenizer::token_to_id(std::string_view token) const {
  return impl_->words.find(token);
}

const std::string& Tokenizer::id_to_token(int64_t id) const {
  LATHE_CHECK(id >= 0 && id < vocab_size(), "Tokenizer: id ", id, " is outside the vocabulary of ",
              vocab_size());
  return impl_->vocab[static_cast<std::size_t>(id)];
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->vocab.size());
}
const TokenizerOptions& Tokenizer::options() const {
  return impl_->options;
}
int64_t Tokenizer::unk_id() const {
  return impl_->unk;
}
int64_t Tokenizer::cls_id() const {
  return impl_->cls;
}
int64_t Tokenizer::sep_id() const {
  return impl_->sep;
}
int64_t Tokenizer::pad_id() const {
  return impl_->pad;
}
int64_t Tokenizer::mask_id() const {
  return impl_->mask;
}

}  // namespace lathe::data
