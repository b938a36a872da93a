// WordPiece tokenizer tests. Parity: every case of tests/golden/tokenizer_goldens.jsonl (made by
// Hugging Face `tokenizers` with tests/golden/make_tokenizer_goldens.py) must give identical ids,
// attention masks and token type ids, with the committed small vocabulary always and with the
// real all-MiniLM-L6-v2 tokenizer when it is in $LATHE_CACHE. A per-code-point sweep compares the
// normalizer with Hugging Face's over all of Unicode. Hand-written cases pin the pieces of the
// pipeline with expectations worked out by hand.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lathe/data/tokenizer.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using lathe::data::EncodeOptions;
using lathe::data::Encoding;
using lathe::data::Padding;
using lathe::data::Tokenizer;
using lathe::data::TokenizerOptions;

namespace {

fs::path tests_dir() {
  return fs::path(__FILE__).parent_path().parent_path();
}
std::string small_vocab() {
  return (tests_dir() / "data" / "small_vocab.txt").string();
}

fs::path minilm_dir() {
  const char* cache = std::getenv("LATHE_CACHE");
  const char* home = std::getenv("HOME");
  fs::path root = cache ? fs::path(cache) : fs::path(home ? home : "") / ".cache" / "lathe";
  return root / "models" / "all-MiniLM-L6-v2";
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> golden_lines() {
  std::string corpus = read_file(tests_dir() / "golden" / "tokenizer_corpus.txt");
  std::vector<std::string> lines;
  std::size_t start = 0;
  for (std::size_t nl; (nl = corpus.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(corpus.substr(start, nl - start));
  return lines;
}

struct Golden {
  std::vector<std::string> lines;
  std::vector<nlohmann::json> cases;
};

const Golden& golden() {
  static const Golden g = [] {
    Golden out;
    out.lines = golden_lines();
    std::ifstream in(tests_dir() / "golden" / "tokenizer_goldens.jsonl");
    std::string line;
    bool first = true;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (first) {
        for (const auto& gen : j.at("generated")) out.lines.push_back(gen.get<std::string>());
        first = false;
      } else {
        out.cases.push_back(std::move(j));
      }
    }
    return out;
  }();
  return g;
}

// Runs every golden case that has expectations for `name`; returns the number of cases checked
// and reports the first mismatches in full.
int64_t check_goldens(const Tokenizer& tok, const std::string& name) {
  const Golden& g = golden();
  REQUIRE(g.lines.size() >= 2000);
  REQUIRE(g.cases.size() >= 2000);
  int64_t checked = 0, mismatches = 0;
  for (const auto& c : g.cases) {
    if (!c.contains(name)) continue;
    const std::string mode = c.at("mode");
    std::vector<std::string> inputs;
    for (const auto& i : c.at("inputs")) inputs.push_back(g.lines.at(i.get<std::size_t>()));
    EncodeOptions opt;
    std::vector<Encoding> got;
    if (mode == "single") {
      got.push_back(tok.encode(inputs[0], opt));
    } else if (mode == "pair" || mode == "trunc") {
      opt.max_length = c.at("max_length");
      opt.padding = Padding::MaxLength;
      got.push_back(mode == "pair" ? tok.encode_pair(inputs[0], inputs[1], opt)
                                   : tok.encode(inputs[0], opt));
    } else {
      opt.padding = Padding::Longest;
      got = tok.encode_batch(inputs, opt);
    }
    const auto& want = c.at(name);
    REQUIRE(want.size() == got.size());
    for (std::size_t k = 0; k < got.size(); ++k) {
      const auto ids = want[k].at("ids").get<std::vector<int64_t>>();
      const auto ones = want[k].at("mask").get<std::size_t>();
      std::vector<int64_t> mask(ids.size(), 0), types(ids.size(), 0);
      std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(ones), 1);
      if (want[k].contains("type")) {
        const std::string t = want[k]["type"];
        for (std::size_t i = 0; i < t.size(); ++i) types.at(i) = t[i] - '0';
      }
      if (got[k].input_ids != ids || got[k].attention_mask != mask ||
          got[k].token_type_ids != types) {
        if (++mismatches <= 5) {
          INFO(name << " " << mode << " case " << c.dump(-1, ' ', true).substr(0, 300));
          CHECK(got[k].input_ids == ids);
          CHECK(got[k].attention_mask == mask);
          CHECK(got[k].token_type_ids == types);
        }
      }
    }
    ++checked;
  }
  INFO(name << ": " << mismatches << " of " << checked << " cases differ");
  CHECK(mismatches == 0);
  return checked;
}

// FNV-1a over the normalized UTF-8 of each code point (0xFF after each), per 256-code-point block:
// the same hash the golden script computes from Hugging Face's BertNormalizer.
void check_unicode_sweep(const Tokenizer& tok, const std::string& name) {
  auto j = nlohmann::json::parse(read_file(tests_dir() / "golden" / "tokenizer_unicode.json"));
  const auto blocks = j.at(name).get<std::vector<std::string>>();
  REQUIRE(blocks.size() == 0x110000 / 256);
  int64_t bad = 0;
  std::string utf8;
  for (uint32_t block = 0; block < blocks.size(); ++block) {
    uint32_t h = 0x811C9DC5u;
    for (uint32_t cp = block * 256; cp < block * 256 + 256; ++cp) {
      if (cp >= 0xD800 && cp < 0xE000) continue;
      utf8.clear();
      if (cp < 0x80) {
        utf8 += static_cast<char>(cp);
      } else if (cp < 0x800) {
        utf8 += static_cast<char>(0xC0 | (cp >> 6));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        utf8 += static_cast<char>(0xE0 | (cp >> 12));
        utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        utf8 += static_cast<char>(0xF0 | (cp >> 18));
        utf8 += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        utf8 += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        utf8 += static_cast<char>(0x80 | (cp & 0x3F));
      }
      std::string out = tok.normalize(utf8);
      out.push_back(static_cast<char>(0xFF));
      for (char ch : out) h = (h ^ static_cast<unsigned char>(ch)) * 0x01000193u;
    }
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", h);
    if (blocks[block] != hex) {
      ++bad;
      UNSCOPED_INFO(name << ": block U+" << std::hex << block * 256 << " differs");
    }
  }
  CHECK(bad == 0);
}

std::vector<std::string> pieces(const Tokenizer& tok, const std::string& text) {
  return tok.tokenize(text);
}

Tokenizer tiny(TokenizerOptions opt = {}) {
  return Tokenizer({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un",  "##aff", "##able",
                    "aff",   "able",  "!",     ".",     "a",      "##b", "ab",    "é",
                    "e",     "中",    "文",    "cafe",  "##s",    "x",   "##x"},
                   std::move(opt));
}

}  // namespace

TEST_CASE("tokenizer: Hugging Face parity with the small vocabulary",
          "[tokenizer][golden][cpu-only]") {
  Tokenizer tok = Tokenizer::from_vocab_file(small_vocab());
  CHECK(check_goldens(tok, "small") >= 2000);
  TokenizerOptions cased;
  cased.lowercase = false;
  cased.strip_accents = false;
  CHECK(check_goldens(Tokenizer::from_vocab_file(small_vocab(), cased), "small_cased") >= 300);
}

TEST_CASE("tokenizer: Hugging Face parity with all-MiniLM-L6-v2", "[tokenizer][golden][cpu-only]") {
  const fs::path dir = minilm_dir();
  if (!fs::exists(dir / "tokenizer.json") || !fs::exists(dir / "vocab.txt")) {
    WARN("skipped: all-MiniLM-L6-v2 is not in " << dir.string()
                                                << " (run scripts/fetch-assets.sh)");
    return;
  }
  Tokenizer from_json = Tokenizer::from_tokenizer_json((dir / "tokenizer.json").string());
  CHECK(from_json.vocab_size() == 30522);
  CHECK(check_goldens(from_json, "minilm") >= 2000);
  // vocab.txt with the defaults (uncased BERT) must agree as well.
  CHECK(check_goldens(Tokenizer::from_vocab_file((dir / "vocab.txt").string()), "minilm") >= 2000);
  CHECK(check_goldens(Tokenizer::from_directory(dir.string()), "minilm") >= 2000);
}

TEST_CASE("tokenizer: normalizer matches Hugging Face on every code point",
          "[tokenizer][golden][cpu-only]") {
  Tokenizer lower = Tokenizer::from_vocab_file(small_vocab());
  check_unicode_sweep(lower, "lowercase");
  TokenizerOptions opt;
  opt.lowercase = false;
  opt.strip_accents = false;
  check_unicode_sweep(Tokenizer::from_vocab_file(small_vocab(), opt), "cased");
}

TEST_CASE("tokenizer: normalization by hand", "[tokenizer][cpu-only]") {
  Tokenizer tok = tiny();
  // Lowercase, accents stripped through NFD (precomposed and combining forms alike).
  CHECK(tok.normalize("Crème Brûlée") == "creme brulee");
  CHECK(tok.normalize("e\xCC\x81") == "e");
  CHECK(tok.normalize("\xC3\x85ngstr\xC3\xB6m") == "angstrom");
  // CJK ideographs get spaces; kana does not.
  CHECK(tok.normalize("a中b") == "a 中 b");
  CHECK(tok.normalize("かな") == "かな");
  // Control characters vanish, tab/newline and other whitespace become spaces.
  CHECK(tok.normalize(std::string("a\0b", 3)) == "ab");
  CHECK(tok.normalize("a\x07"
                      "b\tc\nd\re") == "ab c d e");
  CHECK(tok.normalize("a\xC2\xA0"
                      "b\xE3\x80\x80"
                      "c") == "a b c");
  CHECK(tok.normalize("zero\xE2\x80\x8Bwidth") == "zerowidth");
  CHECK(tok.normalize("\xEF\xBF\xBD") == "");
  // İ lowercases to i + combining dot when accents are kept (Rust's char::to_lowercase).
  TokenizerOptions keep;
  keep.strip_accents = false;
  CHECK(tiny(keep).normalize("\xC4\xB0") == "i\xCC\x87");
  CHECK(tok.normalize("\xC4\xB0") == "i");
  TokenizerOptions cased;
  cased.lowercase = false;
  CHECK(tiny(cased).normalize("Crème") == "Crème");
}

TEST_CASE("tokenizer: WordPiece and pre-tokenization by hand", "[tokenizer][cpu-only]") {
  Tokenizer tok = tiny();
  using V = std::vector<std::string>;
  CHECK(pieces(tok, "unaffable") == V{"un", "##aff", "##able"});
  CHECK(pieces(tok, "UNAFFABLE!") == V{"un", "##aff", "##able", "!"});
  // Greedy longest match: "ab" beats "a" + "##b".
  CHECK(pieces(tok, "ab abb") == V{"ab", "ab", "##b"});
  // One unmatched piece turns the whole word into [UNK]; neighbours are unaffected.
  CHECK(pieces(tok, "aff unz able") == V{"aff", "[UNK]", "able"});
  CHECK(pieces(tok, "a.b") == V{"a", ".", "[UNK]"});
  CHECK(pieces(tok, "Café's") == V{"cafe", "[UNK]", "[UNK]"});
  CHECK(pieces(tok, "cafes") == V{"cafe", "##s"});
  CHECK(pieces(tok, "中文") == V{"中", "文"});
  CHECK(pieces(tok, "  \t\n ").empty());
  CHECK(pieces(tok, "").empty());
  // Words of more than 100 characters are [UNK] even when they would split.
  CHECK(pieces(tok, std::string(100, 'x')).size() == 100);
  CHECK(pieces(tok, std::string(101, 'x')) == V{"[UNK]"});
  // Characters, not bytes, count: 100 two-byte characters still split.
  std::string e100;
  for (int i = 0; i < 100; ++i) e100 += "\xC3\xA9";  // é
  CHECK(pieces(tok, e100) == V{"[UNK]"});  // "##e" is absent after NFD, so [UNK] either way
  // Special tokens in the text stay whole, also glued to words; lowercase ones are plain text.
  CHECK(pieces(tok, "a[MASK]ab") == V{"a", "[MASK]", "ab"});
  CHECK(pieces(tok, "[mask]") == V{"[UNK]", "[UNK]", "[UNK]"});
}

TEST_CASE("tokenizer: invalid UTF-8 becomes U+FFFD", "[tokenizer][cpu-only]") {
  Tokenizer tok = tiny();
  using V = std::vector<std::string>;
  // clean_text drops U+FFFD, so bad bytes disappear without splitting the word.
  CHECK(tok.normalize("a\xFF"
                      "b") == "ab");
  CHECK(pieces(tok,
               "a\xC3"
               "b") == V{"ab"});
  CHECK(pieces(tok, "\xE2\x82") == V{});
  CHECK(tok.normalize("\xC0\xAF"
                      "x\xED\xA0\x80"
                      "x\xF4\x90\x80\x80") == "xx");
  TokenizerOptions raw;
  raw.clean_text = false;
  CHECK(tiny(raw).normalize("a\xFF") == "a\xEF\xBF\xBD");
}

TEST_CASE("tokenizer: arbitrary bytes never throw and give valid ids", "[tokenizer][cpu-only]") {
  Tokenizer tok = Tokenizer::from_vocab_file(small_vocab());
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<unsigned>(state >> 33);
  };
  EncodeOptions opt;
  opt.max_length = 16;
  opt.padding = Padding::MaxLength;
  for (int n = 0; n < 3000; ++n) {
    std::string text(next() % 64, '\0');
    // Mostly high bytes and brackets, so broken sequences and partial "[MASK]"s are common.
    for (char& c : text) {
      unsigned r = next();
      c = static_cast<char>(r % 4 == 0 ? "[MASK]"[r / 4 % 6]
                                       : (r % 4 == 1 ? 'a' + r / 4 % 26 : r / 4));
    }
    std::vector<int64_t> ids;
    REQUIRE_NOTHROW(ids = tok.encode_ids(text));
    for (int64_t id : ids) REQUIRE((id >= 0 && id < tok.vocab_size()));
    Encoding e = tok.encode_pair(text, text, opt);
    REQUIRE(e.input_ids.size() == 16);
    // Bad bytes became U+FFFD, which clean_text removed.
    REQUIRE(tok.normalize(text).find("\xEF\xBF\xBD") == std::string::npos);
  }
}

TEST_CASE("tokenizer: special tokens, pairs, truncation and padding by hand",
          "[tokenizer][cpu-only]") {
  Tokenizer tok = tiny();
  REQUIRE(tok.cls_id() == 2);
  REQUIRE(tok.sep_id() == 3);
  REQUIRE(tok.pad_id() == 0);
  REQUIRE(tok.unk_id() == 1);
  REQUIRE(tok.mask_id() == 4);
  using I = std::vector<int64_t>;
  Encoding e = tok.encode("unaffable");
  CHECK(e.input_ids == I{2, 5, 6, 7, 3});
  CHECK(e.attention_mask == I{1, 1, 1, 1, 1});
  CHECK(e.token_type_ids == I{0, 0, 0, 0, 0});

  Encoding p = tok.encode_pair("a", "ab!");
  CHECK(p.input_ids == I{2, 12, 3, 14, 10, 3});
  CHECK(p.token_type_ids == I{0, 0, 0, 1, 1, 1});

  EncodeOptions opt;
  opt.max_length = 8;
  opt.padding = Padding::MaxLength;
  // Single: cut to max_length - 2 tokens, then padded.
  Encoding s = tok.encode("x x x x x x x x x", opt);
  CHECK(s.input_ids == I{2, 21, 21, 21, 21, 21, 21, 3});
  opt.max_length = 10;
  s = tok.encode("x x", opt);
  CHECK(s.input_ids == I{2, 21, 21, 3, 0, 0, 0, 0, 0, 0});
  CHECK(s.attention_mask == I{1, 1, 1, 1, 0, 0, 0, 0, 0, 0});
  // longest_first, budget 10 - 3 = 7. Lengths 2 and 9: the short side keeps 2, the long one 5.
  Encoding t = tok.encode_pair("a a", "x x x x x x x x x", opt);
  CHECK(t.input_ids == I{2, 12, 12, 3, 21, 21, 21, 21, 21, 3});
  CHECK(t.token_type_ids == I{0, 0, 0, 0, 1, 1, 1, 1, 1, 1});
  // Both long (6 and 9): 7 / 2 = 3 for the first, 3 + 7 % 2 = 4 for the second.
  t = tok.encode_pair("a a a a a a", "x x x x x x x x x", opt);
  CHECK(t.input_ids == I{2, 12, 12, 12, 3, 21, 21, 21, 21, 3});
  // The first longer than the second (9 and 6): the odd unit goes to the longer side (the first).
  t = tok.encode_pair("x x x x x x x x x", "a a a a a a", opt);
  CHECK(t.input_ids == I{2, 21, 21, 21, 21, 3, 12, 12, 12, 3});
  // Equal lengths 5 and 5 (sum 10 > 7): 3 and 4.
  t = tok.encode_pair("x x x x x", "a a a a a", opt);
  CHECK(t.input_ids == I{2, 21, 21, 21, 3, 12, 12, 12, 12, 3});
  CHECK(t.attention_mask == I(10, 1));

  // Padding to the longest of a batch, and no special tokens on request.
  EncodeOptions batch;
  batch.padding = Padding::Longest;
  auto encs = tok.encode_batch({"a", "a a a", ""}, batch);
  REQUIRE(encs.size() == 3);
  CHECK(encs[0].input_ids == I{2, 12, 3, 0, 0});
  CHECK(encs[1].input_ids == I{2, 12, 12, 12, 3});
  CHECK(encs[2].input_ids == I{2, 3, 0, 0, 0});
  CHECK(encs[2].attention_mask == I{1, 1, 0, 0, 0});
  EncodeOptions bare;
  bare.add_special_tokens = false;
  CHECK(tok.encode("a a", bare).input_ids == I{12, 12});

  EncodeOptions tiny_max;
  tiny_max.max_length = 2;
  lathe::testing::check_error([&] { tok.encode_pair("a", "b", tiny_max); },
                              {"max_length", "special tokens"});
}

TEST_CASE("tokenizer: loading errors name the file", "[tokenizer][cpu-only]") {
  using lathe::testing::check_error;
  const fs::path dir = fs::temp_directory_path() / "lathe_tokenizer_test";
  fs::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir / name, std::ios::binary) << text;
    return (dir / name).string();
  };
  check_error([&] { Tokenizer::from_vocab_file((dir / "missing.txt").string()); },
              {"cannot open", "missing.txt"});
  check_error([&] { Tokenizer::from_vocab_file(write("empty.txt", "")); }, {"empty.txt", "empty"});
  check_error([&] { Tokenizer::from_vocab_file(write("nounk.txt", "[PAD]\n[CLS]\n[SEP]\na\n")); },
              {"[UNK]", "nounk.txt"});
  check_error([&] { Tokenizer::from_tokenizer_json(write("bad.json", "{not json")); },
              {"bad.json", "not valid JSON"});
  check_error(
      [&] { Tokenizer::from_tokenizer_json(write("bpe.json", R"({"model":{"type":"BPE"}})")); },
      {"bpe.json", "WordPiece"});
  check_error(
      [&] {
        Tokenizer::from_tokenizer_json(
            write("gap.json", R"({"model":{"type":"WordPiece","vocab":{"[UNK]":0,"a":2}}})"));
      },
      {"gap.json", "without gaps"});
  check_error([&] { Tokenizer::from_directory((dir / "nowhere").string()); },
              {"neither tokenizer.json nor vocab.txt"});
  // CRLF vocabularies load like LF ones; a later duplicate line wins, as in Hugging Face.
  Tokenizer crlf = Tokenizer::from_vocab_file(
      write("crlf.txt", "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nab\r\nab\r\n"));
  CHECK(crlf.token_to_id("ab") == 5);
  CHECK(crlf.encode_ids("ab") == std::vector<int64_t>{5});
  CHECK(crlf.mask_id() == -1);
  CHECK(crlf.id_to_token(4) == "ab");
  check_error([&] { crlf.id_to_token(6); }, {"id 6", "outside"});

  // tokenizer.json settings are honoured: here no lowercasing, accents kept, one added token.
  const std::string json_path = write("cased.json", R"({
    "added_tokens": [{"id": 3, "content": "[SEP]", "special": true, "normalized": false}],
    "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                   "strip_accents": null, "lowercase": false},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 4,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5,
                        "A": 6, "##é": 7, "é": 8}}})");
  Tokenizer cased = Tokenizer::from_tokenizer_json(json_path);
  CHECK_FALSE(cased.options().lowercase);
  CHECK(cased.options().max_input_chars_per_word == 4);
  CHECK(
      cased.tokenize("Aé a[SEP]a [MASK] aaaaa") ==
      std::vector<std::string>{"A", "##é", "a", "[SEP]", "a", "[UNK]", "[UNK]", "[UNK]", "[UNK]"});
  // A folder with vocab.txt and tokenizer_config.json (do_lower_case false).
  fs::create_directories(dir / "model");
  std::ofstream(dir / "model" / "vocab.txt") << "[PAD]\n[UNK]\n[CLS]\n[SEP]\nA\na\n";
  std::ofstream(dir / "model" / "tokenizer_config.json") << R"({"do_lower_case": false})";
  Tokenizer from_dir = Tokenizer::from_directory((dir / "model").string());
  CHECK(from_dir.encode_ids("A a") == std::vector<int64_t>{4, 5});
  std::ofstream(dir / "model" / "tokenizer_config.json") << "{";
  check_error([&] { Tokenizer::from_directory((dir / "model").string()); },
              {"tokenizer_config.json", "not valid"});
  fs::remove_all(dir);
}

TEST_CASE("tokenizer: loading from memory matches loading from files", "[tokenizer][cpu-only]") {
  using lathe::testing::check_error;
  Tokenizer from_file = Tokenizer::from_vocab_file(small_vocab());
  Tokenizer from_memory = Tokenizer::from_vocab_string(read_file(small_vocab()), "small_vocab.txt");
  CHECK(from_memory.vocab_size() == from_file.vocab_size());
  const std::string text = "The caf\xC3\xA9 in Z\xC3\xBCrich was [MASK] \xE4\xB8\xAD\xE6\x96\x87!";
  CHECK(from_memory.encode_ids(text) == from_file.encode_ids(text));
  // Lines as std::getline splits them: a last line needs no '\n', a final '\n' adds no piece.
  CHECK(Tokenizer::from_vocab_string("[PAD]\n[UNK]\n[CLS]\n[SEP]", "m").vocab_size() == 4);
  CHECK(Tokenizer::from_vocab_string("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", "m").vocab_size() == 4);
  CHECK(Tokenizer::from_vocab_string("[PAD]\n[UNK]\n[CLS]\n[SEP]\n\n", "m").vocab_size() == 5);
  check_error([&] { Tokenizer::from_vocab_string("", "mem.txt"); }, {"mem.txt", "empty"});
  check_error([&] { Tokenizer::from_vocab_string("[PAD]\n", "mem.txt"); }, {"mem.txt", "[UNK]"});
  check_error([&] { Tokenizer::from_tokenizer_json_string("[1]", "mem.json"); },
              {"mem.json", "not an object"});
  // Without a normalizer nothing is lowercased.
  Tokenizer json = Tokenizer::from_tokenizer_json_string(
      R"({"model": {"type": "WordPiece",
                    "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}}})",
      "mem.json");
  CHECK(json.encode_ids("A a") == std::vector<int64_t>{1, 4});
}

// Reproducers of problems found by the libFuzzer targets in tests/fuzz (or while writing them).
TEST_CASE("tokenizer: fuzzing regressions", "[tokenizer][cpu-only]") {
  using lathe::testing::check_error;
  // fuzz_vocab: a float max_input_chars_per_word was converted to int64_t with undefined
  // behaviour (UBSan: 1e+300 is outside the range of representable values).
  check_error(
      [] {
        Tokenizer::from_tokenizer_json_string(
            R"({"model":{"type":"WordPiece","max_input_chars_per_word":1e300,)"
            R"("vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2,"[PAD]":3}}})",
            "f.json");
      },
      {"f.json", "max_input_chars_per_word is not an integer"});
  check_error(
      [] {
        Tokenizer::from_tokenizer_json_string(
            R"({"model":{"type":"WordPiece","max_input_chars_per_word":-1,)"
            R"("vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2,"[PAD]":3}}})",
            "f.json");
      },
      {"f.json", "max_input_chars_per_word must be > 0"});
  // fuzz_tokenizer's length invariant: a negative max_length meant "no limit", and MaxLength
  // padding without a max_length did not pad; both now throw.
  Tokenizer tok = tiny();
  EncodeOptions negative;
  negative.max_length = -1;
  check_error([&] { tok.encode("x x x", negative); }, {"max_length -1", "negative"});
  EncodeOptions unbounded;
  unbounded.padding = Padding::MaxLength;
  check_error([&] { tok.encode_pair("a", "b", unbounded); }, {"MaxLength", "max_length > 0"});
  check_error([&] { tok.encode_batch({"a"}, unbounded); }, {"MaxLength", "max_length > 0"});
}
