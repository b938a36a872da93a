// WordPiece tokenizer throughput on one core: every line of tests/golden/tokenizer_corpus.txt
// encoded as a single sentence (with [CLS]/[SEP], no padding), counted in output tokens per
// second. BM_Tokenize_MiniLM needs all-MiniLM-L6-v2 in $LATHE_CACHE (scripts/fetch-assets.sh);
// BM_Tokenize_SmallVocab uses the committed test vocabulary (more [UNK] words, shorter pieces).
// bench/bench_tokenizer_hf.py measures Hugging Face `tokenizers` on the same corpus.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "lathe/data/tokenizer.h"
#include "lathe/lathe.h"

namespace {

namespace fs = std::filesystem;

const fs::path kSourceDir = fs::path(__FILE__).parent_path().parent_path();

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> lines = [] {
    std::vector<std::string> out;
    std::ifstream in(kSourceDir / "tests" / "golden" / "tokenizer_corpus.txt");
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }();
  return lines;
}

void run(benchmark::State& state, const lathe::data::Tokenizer& tok) {
  const auto& lines = corpus();
  if (lines.empty()) {
    state.SkipWithError("tests/golden/tokenizer_corpus.txt not found");
    return;
  }
  int64_t tokens = 0;
  for (const auto& line : lines) tokens += int64_t(tok.encode(line).input_ids.size());
  for (auto _ : state) {
    for (const auto& line : lines) {
      lathe::data::Encoding enc = tok.encode(line);
      benchmark::DoNotOptimize(enc.input_ids.data());
    }
  }
  state.counters["tokens"] =
      benchmark::Counter(double(tokens), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["lines"] =
      benchmark::Counter(double(lines.size()), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_Tokenize_MiniLM(benchmark::State& state) {
  const char* cache = std::getenv("LATHE_CACHE");
  const char* home = std::getenv("HOME");
  const fs::path dir = (cache ? fs::path(cache) : fs::path(home ? home : "") / ".cache" / "lathe") /
                       "models" / "all-MiniLM-L6-v2";
  if (!fs::exists(dir / "tokenizer.json")) {
    state.SkipWithError("all-MiniLM-L6-v2 not in $LATHE_CACHE (run scripts/fetch-assets.sh)");
    return;
  }
  static const lathe::data::Tokenizer tok = lathe::data::Tokenizer::from_directory(dir.string());
  run(state, tok);
}
BENCHMARK(BM_Tokenize_MiniLM)->Unit(benchmark::kMillisecond)->Apply(lathe_bench::robust);

void BM_Tokenize_SmallVocab(benchmark::State& state) {
  static const lathe::data::Tokenizer tok = lathe::data::Tokenizer::from_vocab_file(
      (kSourceDir / "tests" / "data" / "small_vocab.txt").string());
  run(state, tok);
}
BENCHMARK(BM_Tokenize_SmallVocab)->Unit(benchmark::kMillisecond)->Apply(lathe_bench::robust);

}  // namespace
