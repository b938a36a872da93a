// lathe-tokenize: WordPiece-tokenizes lines from stdin exactly as Hugging Face's BERT tokenizer
// does, printing one line of space-separated ids (with [CLS]/[SEP]) per input line, or the pieces
// with --tokens. --pair reads "first<TAB>second" lines. Bad arguments or an unreadable model give
// a one-line reason on stderr and a non-zero exit.
#include <cstdlib>
#include <iostream>
#include <string>

#include "lathe/data/tokenizer.h"
#include "lathe/lathe.h"

namespace {

constexpr const char* kUsage =
    "usage: lathe-tokenize (--model DIR | --vocab FILE) [--tokens] [--pair] [--max-length N]\n"
    "  --model DIR       a Hugging Face model folder (tokenizer.json, else vocab.txt)\n"
    "  --vocab FILE      a BERT vocab.txt (uncased: lowercase + strip accents)\n"
    "  --cased           with --vocab: keep case and accents\n"
    "  --tokens          print word pieces instead of ids\n"
    "  --pair            each line is FIRST<TAB>SECOND (token type ids 0 then 1)\n"
    "  --max-length N    truncate to N tokens including [CLS]/[SEP] (longest_first for pairs)\n";

[[noreturn]] void fail(const std::string& reason) {
  std::cerr << "lathe-tokenize: " << reason << "\n";
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, vocab;
  bool tokens = false, pair = false, cased = false;
  int64_t max_length = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--model") {
      model = value();
    } else if (arg == "--vocab") {
      vocab = value();
    } else if (arg == "--tokens") {
      tokens = true;
    } else if (arg == "--pair") {
      pair = true;
    } else if (arg == "--cased") {
      cased = true;
    } else if (arg == "--max-length") {
      const std::string v = value();
      std::size_t used = 0;
      try {
        max_length = std::stoll(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || max_length < 1)
        fail("--max-length needs a positive integer, got '" + v + "'");
    } else if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    } else {
      fail("unknown argument '" + arg + "' (see --help)");
    }
  }
  if (model.empty() == vocab.empty()) fail("give exactly one of --model DIR or --vocab FILE");
  if (cased && vocab.empty()) fail("--cased applies to --vocab only");

  try {
    lathe::data::TokenizerOptions opt;
    if (cased) {
      opt.lowercase = false;
      opt.strip_accents = false;
    }
    const lathe::data::Tokenizer tok = model.empty()
                                           ? lathe::data::Tokenizer::from_vocab_file(vocab, opt)
                                           : lathe::data::Tokenizer::from_directory(model);
    lathe::data::EncodeOptions enc_opt;
    enc_opt.max_length = max_length;
    std::ios::sync_with_stdio(false);
    std::string line, out;
    int64_t line_no = 0;
    while (std::getline(std::cin, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lathe::data::Encoding enc;
      if (pair) {
        const std::size_t tab = line.find('\t');
        if (tab == std::string::npos)
          fail("line " + std::to_string(line_no) + " has no TAB (--pair)");
        enc = tok.encode_pair(std::string_view(line).substr(0, tab),
                              std::string_view(line).substr(tab + 1), enc_opt);
      } else {
        enc = tok.encode(line, enc_opt);
      }
      out.clear();
      for (std::size_t k = 0; k < enc.input_ids.size(); ++k) {
        if (k) out += ' ';
        out += tokens ? tok.id_to_token(enc.input_ids[k]) : std::to_string(enc.input_ids[k]);
      }
      out += '\n';
      std::cout << out;
    }
    std::cout.flush();
    if (!std::cout) fail("cannot write to stdout");
  } catch (const lathe::Error& e) {
    fail(e.what());
  }
  return 0;
}
