// Dataset readers, LabelMap, shuffling, stratified splits and length-bucketed batching. Expected
// values are written out by hand from the fixtures in tests/data/datasets/; the permutation
// golden comes from the independent Python splitmix64 in scripts/lib/make_dataset.py.
#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "lathe/data/batching.h"
#include "lathe/data/dataset.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace lathe;
using namespace lathe::data;
using lathe::testing::check_error;

namespace {

// tests/data/datasets: from LATHE_SOURCE_DIR (a compile definition or the environment), else
// found by walking up from this file's path and from the working directory.
fs::path fixture_dir() {
  std::vector<fs::path> roots;
#ifdef LATHE_SOURCE_DIR
  roots.emplace_back(LATHE_SOURCE_DIR);
#endif
  if (const char* env = std::getenv("LATHE_SOURCE_DIR")) roots.emplace_back(env);
  for (fs::path p : {fs::path(__FILE__).parent_path(), fs::current_path()}) {
    for (; !p.empty(); p = p.parent_path()) {
      roots.push_back(p);
      if (p == p.parent_path()) break;
    }
  }
  for (const auto& root : roots) {
    fs::path candidate = root / "tests" / "data" / "datasets";
    if (fs::exists(candidate / "sentiment.tsv")) return candidate;
  }
  FAIL("tests/data/datasets not found; set LATHE_SOURCE_DIR to the source tree");
  return {};
}

std::string fixture(const std::string& name) {
  return (fixture_dir() / name).string();
}

std::vector<std::string> texts(const Dataset& d) {
  std::vector<std::string> out;
  for (const auto& e : d.examples) out.push_back(e.text);
  return out;
}
std::vector<std::string> labels(const std::vector<Example>& examples) {
  std::vector<std::string> out;
  for (const auto& e : examples) out.push_back(e.label);
  return out;
}
std::vector<int64_t> lines(const Dataset& d) {
  std::vector<int64_t> out;
  for (const auto& e : d.examples) out.push_back(e.line);
  return out;
}

}  // namespace

TEST_CASE("TSV reader: header, blank lines, CRLF, UTF-8", "[dataset]") {
  const std::string path = fixture("sentiment.tsv");
  Dataset d = read_dataset(path);
  CHECK(texts(d) == std::vector<std::string>{"A gorgeous, witty film.", "Dull and far too long.",
                                             "Caf\xC3\xA9 scenes shine; the plot doesn't.",
                                             "An instant classic!",
                                             "So-so \"drama\" with a twist"});
  CHECK(labels(d.examples) ==
        std::vector<std::string>{"positive", "negative", "negative", "positive", "positive"});
  CHECK(lines(d) == std::vector<int64_t>{2, 3, 5, 7, 8});
  CHECK(d.skipped == 0);
  CHECK(d.examples[0].source == path);
  CHECK(d.examples[0].text_pair.empty());
}

TEST_CASE("TSV reader without a header uses column numbers", "[dataset]") {
  ReadOptions opt;
  opt.header = false;
  opt.text_field = "1";
  opt.label_field = "0";
  Dataset d = parse_dataset("pos\tnice\textra\nneg\tbad\n", "mem.tsv", opt);
  REQUIRE(d.examples.size() == 2);
  CHECK(d.examples[0].text == "nice");
  CHECK(d.examples[0].label == "pos");
  CHECK(d.examples[1].text == "bad");
  CHECK(d.examples[1].label == "neg");

  opt.text_field = "text";
  check_error([&] { parse_dataset("a\tb\n", "mem.tsv", opt); },
              {"mem.tsv", "column number", "'text'"});
  opt.text_field = "5";
  check_error([&] { parse_dataset("a\tb\n", "mem.tsv", opt); },
              {"mem.tsv:1", "expected at least 6 fields, got 2"});
}

TEST_CASE("CSV reader: RFC 4180 quoting", "[dataset]") {
  Dataset d = read_dataset(fixture("tricky.csv"));
  CHECK(texts(d) ==
        std::vector<std::string>{"Funny, warm, and smart.", "He said \"no\" twice, then left.",
                                 "A film about\nthree lines\r\nof verse", "Plain unquoted text"});
  CHECK(labels(d.examples) ==
        std::vector<std::string>{"positive", "negative", "positive", "negative"});
  // A record's line is where it starts; the quoted line breaks advance the count.
  CHECK(lines(d) == std::vector<int64_t>{2, 3, 4, 8});
}

TEST_CASE("CSV reader: edge cases from memory", "[dataset]") {
  ReadOptions opt;
  opt.format = Format::CSV;
  // BOM, a quoted empty field as text pair, a final record without a newline, CRLF after a quote.
  opt.text_pair_field = "b";
  Dataset d = parse_dataset("\xEF\xBB\xBFtext,b,label\r\n\"x,y\",\"z\"\"\",1\r\nu,v,0", "mem", opt);
  REQUIRE(d.examples.size() == 2);
  CHECK(d.examples[0].text == "x,y");
  CHECK(d.examples[0].text_pair == "z\"");
  CHECK(d.examples[0].label == "1");
  CHECK(d.examples[1].text == "u");
  CHECK(d.examples[1].text_pair == "v");
  CHECK(d.examples[1].label == "0");
  CHECK(d.examples[1].line == 3);
}

TEST_CASE("JSONL reader: sentence pairs and label types", "[dataset]") {
  ReadOptions opt;
  opt.text_field = "premise";
  opt.text_pair_field = "hypothesis";
  Dataset d = read_dataset(fixture("pairs.jsonl"), opt);
  REQUIRE(d.examples.size() == 3);
  CHECK(d.examples[0].text == "A man plays a guitar.");
  CHECK(d.examples[0].text_pair == "Someone makes music.");
  CHECK(d.examples[1].label == "contradiction");
  CHECK(d.examples[1].line == 3);
  CHECK(d.examples[2].text == "Order of keys does not matter.");
  CHECK(d.examples[2].text_pair == "Unicode \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80");
  CHECK(d.examples[2].label == "neutral");

  Dataset ints = read_dataset(fixture("int_labels.jsonl"));
  CHECK(labels(ints.examples) == std::vector<std::string>{"1", "0", "true"});
}

TEST_CASE("bad rows throw with file:line, or are skipped and counted", "[dataset]") {
  const std::string tsv = fixture("bad_fields.tsv");
  check_error([&] { read_dataset(tsv); }, {tsv + ":3:", "expected 2 fields, got 3"});
  ReadOptions skip;
  skip.skip_bad_rows = true;
  Dataset d = read_dataset(tsv, skip);
  CHECK(texts(d) == std::vector<std::string>{"good one", "okay one"});
  CHECK(d.skipped == 3);
  REQUIRE(d.skipped_messages.size() == 3);
  CHECK(d.skipped_messages[0] == tsv + ":3: expected 2 fields, got 3");
  CHECK(d.skipped_messages[1] == tsv + ":4: expected 2 fields, got 1");
  CHECK(d.skipped_messages[2] == tsv + ":5: empty text field");

  const std::string csv = fixture("bad_quotes.csv");
  check_error([&] { read_dataset(csv); }, {csv + ":3:", "after a closing quote"});
  Dataset c = read_dataset(csv, skip);
  CHECK(texts(c) == std::vector<std::string>{"fine", "still fine"});
  REQUIRE(c.skipped_messages.size() == 3);
  CHECK(c.skipped_messages[0] == csv + ":3: unexpected character after a closing quote");
  CHECK(c.skipped_messages[1] ==
        csv + ":4: quote inside an unquoted field (quote the whole field)");
  CHECK(c.skipped_messages[2] == csv + ":6: quoted field opened here is never closed");

  const std::string jsonl = fixture("bad.jsonl");
  check_error([&] { read_dataset(jsonl); }, {jsonl + ":2:", "invalid JSON"});
  Dataset j = read_dataset(jsonl, skip);
  CHECK(texts(j) == std::vector<std::string>{"ok", "ok too"});
  REQUIRE(j.skipped == 4);
  CHECK(j.skipped_messages[1] == jsonl + ":3: expected a JSON object");
  CHECK(j.skipped_messages[2] == jsonl + ":4: missing label key 'label'");
  CHECK(j.skipped_messages[3] == jsonl + ":5: text 'text' must be a string");

  // A broken header is never skipped, even when bad rows are.
  check_error([&] { parse_dataset("te\"xt,label\nfine,positive\n", "h.csv", skip); },
              {"h.csv:1: bad header row: quote inside an unquoted field"});

  const std::string utf8 = fixture("bad_utf8.tsv");
  check_error([&] { read_dataset(utf8); }, {utf8 + ":3:", "invalid UTF-8 in the text field"});
}

TEST_CASE("empty datasets, missing columns, unreadable files", "[dataset]") {
  const std::string empty = fixture("header_only.tsv");
  check_error([&] { read_dataset(empty); }, {empty, "dataset is empty"});
  ReadOptions skip;
  skip.skip_bad_rows = true;
  check_error([&] { parse_dataset("text\tlabel\nonly text\n", "m.tsv", skip); },
              {"m.tsv", "dataset is empty", "1 bad rows skipped"});
  check_error([&] { parse_dataset("", "m.csv"); }, {"m.csv", "no header row"});
  check_error([&] { parse_dataset("", "m.jsonl"); }, {"m.jsonl", "dataset is empty"});
  check_error([&] { parse_dataset("sentence\tlabel\nx\ty\n", "m.tsv"); },
              {"m.tsv:1", "no text column 'text'", "'sentence', 'label'"});
  check_error([&] { parse_dataset("text\tlabel\n", "m.txt"); }, {"m.txt", "format"});
  check_error([&] { read_dataset("/nonexistent/lathe/x.tsv"); },
              {"/nonexistent/lathe/x.tsv", "cannot open"});
}

TEST_CASE("LabelMap: ids, names, unknown labels", "[dataset]") {
  Dataset d = read_dataset(fixture("sentiment.tsv"));
  LabelMap map = LabelMap::from_examples(d.examples);
  CHECK(map.names() == std::vector<std::string>{"negative", "positive"});
  CHECK(map.id("negative") == 0);
  CHECK(map.id("positive") == 1);
  CHECK(map.name(1) == "positive");
  CHECK(map.encode(d.examples) == std::vector<int64_t>{1, 0, 0, 1, 1});

  LabelMap given({"positive", "negative"});
  CHECK(given.encode(d.examples) == std::vector<int64_t>{0, 1, 1, 0, 0});
  check_error([&] { given.id("neutral"); }, {"unknown label 'neutral'", "'positive', 'negative'"});
  check_error([&] { given.name(2); }, {"label id 2 out of range"});
  check_error([] { LabelMap({"a", "b", "a"}); }, {"duplicate label name 'a'"});

  const std::string unknown = fixture("unknown_label.tsv");
  Dataset u = read_dataset(unknown);
  check_error([&] { given.encode(u.examples); }, {unknown + ":4:", "unknown label 'neutral'"});
}

TEST_CASE("permutation is a seeded, portable Fisher-Yates shuffle", "[dataset]") {
  // Golden from the Python splitmix64 in scripts/lib/make_dataset.py.
  CHECK(permutation(10, 42) == std::vector<int64_t>{0, 9, 5, 8, 6, 4, 7, 2, 1, 3});
  CHECK(permutation(7, 0) == std::vector<int64_t>{6, 3, 1, 5, 4, 0, 2});
  CHECK(permutation(0, 1).empty());
  auto p = permutation(1000, 5);
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) REQUIRE(sorted[static_cast<size_t>(i)] == i);
  CHECK(p != permutation(1000, 6));

  Dataset d = read_dataset(fixture("sentiment.tsv"));
  auto s = shuffled(d.examples, 42);
  REQUIRE(s.size() == 5);
  auto order = permutation(5, 42);
  for (size_t i = 0; i < 5; ++i) CHECK(s[i].text == d.examples[static_cast<size_t>(order[i])].text);
}

TEST_CASE("stratified_split: proportions per label, determinism, order", "[dataset]") {
  std::vector<Example> all;
  const std::map<std::string, int> sizes = {{"a", 600}, {"b", 300}, {"c", 100}, {"d", 5}};
  int64_t line = 0;
  for (int round = 0; round < 600; ++round) {
    for (const auto& [label, n] : sizes) {
      if (round < n) all.push_back({label + std::to_string(round), "", label, "mem", ++line});
    }
  }
  Split s = stratified_split(all, 0.1, 0.2, 7);
  auto count = [](const std::vector<Example>& v, const std::string& label) {
    return std::count_if(v.begin(), v.end(), [&](const Example& e) { return e.label == label; });
  };
  // round(n * fraction) per label: d has 5 -> dev round(0.5) = 1 (half away from zero), test 1.
  const std::map<std::string, std::array<int64_t, 3>> expected = {
      {"a", {420, 60, 120}}, {"b", {210, 30, 60}}, {"c", {70, 10, 20}}, {"d", {3, 1, 1}}};
  for (const auto& [label, e] : expected) {
    CHECK(count(s.train, label) == e[0]);
    CHECK(count(s.dev, label) == e[1]);
    CHECK(count(s.test, label) == e[2]);
  }
  // A partition of the input, each part in input order.
  std::set<int64_t> seen;
  for (const auto* part : {&s.train, &s.dev, &s.test}) {
    for (size_t i = 0; i < part->size(); ++i) {
      CHECK(seen.insert((*part)[i].line).second);
      if (i > 0) CHECK((*part)[i - 1].line < (*part)[i].line);
    }
  }
  CHECK(seen.size() == all.size());

  Split again = stratified_split(all, 0.1, 0.2, 7);
  CHECK(labels(again.dev) == labels(s.dev));
  std::vector<int64_t> dev_lines, again_lines, other_lines;
  for (const auto& e : s.dev) dev_lines.push_back(e.line);
  for (const auto& e : again.dev) again_lines.push_back(e.line);
  for (const auto& e : stratified_split(all, 0.1, 0.2, 8).dev) other_lines.push_back(e.line);
  CHECK(dev_lines == again_lines);
  CHECK(dev_lines != other_lines);

  check_error([&] { stratified_split(all, 0.6, 0.5, 1); }, {"dev + test <= 1"});
  check_error([&] { stratified_split({}, 0.1, 0.1, 1); }, {"no examples"});
}

namespace {
std::vector<EncodedExample> toy_examples(int64_t n, uint64_t seed) {
  std::vector<EncodedExample> out;
  auto values = lathe::testing::random_values(n, seed, 1.0, 40.0);
  for (int64_t i = 0; i < n; ++i) {
    EncodedExample e;
    const auto len = static_cast<int64_t>(values[static_cast<size_t>(i)]);
    for (int64_t k = 0; k < len; ++k) e.input_ids.push_back(1000 * (i + 1) + k);
    if (i % 2 == 1)  // pairs: second half is segment 1
      for (int64_t k = 0; k < len; ++k) e.token_type_ids.push_back(k >= len / 2 ? 1 : 0);
    e.label = i % 3;
    out.push_back(std::move(e));
  }
  return out;
}
}  // namespace

TEST_CASE("Batcher: padding, masks, token types and labels", "[dataset][batching]") {
  std::vector<EncodedExample> ex = {
      {{101, 7, 102}, {}, 1}, {{101, 5, 6, 7, 102}, {0, 0, 0, 1, 1}, 0}, {{101, 102}, {}, 2}};
  BatchOptions opt;
  opt.batch_size = 2;
  opt.shuffle = false;
  opt.pad_id = 99;
  Batcher batcher(ex, opt);
  // Sorted by length: example 2 (2 tokens), 0 (3), then 1 (5) alone.
  CHECK(batcher.plan() == std::vector<std::vector<int64_t>>{{2, 0}, {1}});
  auto batches = batcher.batches();
  REQUIRE(batches.size() == 2);
  const Batch& b = batches[0];
  CHECK(b.input_ids.shape() == Shape{2, 3});
  CHECK(b.input_ids.dtype() == DType::I64);
  CHECK(b.input_ids.to_vector<int64_t>() == std::vector<int64_t>{101, 102, 99, 101, 7, 102});
  CHECK(b.attention_mask.to_vector<int64_t>() == std::vector<int64_t>{1, 1, 0, 1, 1, 1});
  CHECK(b.token_type_ids.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 0, 0, 0});
  CHECK(b.labels.shape() == Shape{2});
  CHECK(b.labels.to_vector<int64_t>() == std::vector<int64_t>{2, 1});
  CHECK(b.indices == std::vector<int64_t>{2, 0});
  CHECK(batches[1].input_ids.shape() == Shape{1, 5});
  CHECK(batches[1].token_type_ids.to_vector<int64_t>() == std::vector<int64_t>{0, 0, 0, 1, 1});
  CHECK(batches[1].attention_mask.dtype() == DType::I64);

  Batch custom = batcher.collate({1, 2});
  CHECK(custom.input_ids.to_vector<int64_t>() ==
        std::vector<int64_t>{101, 5, 6, 7, 102, 101, 102, 99, 99, 99});
  CHECK(custom.token_type_ids.to_vector<int64_t>() ==
        std::vector<int64_t>{0, 0, 0, 1, 1, 0, 0, 0, 0, 0});
  check_error([&] { batcher.collate({3}); }, {"index 3 out of range"});

  SECTION("padded to a multiple of 4, never past 6 unless an example is longer") {
    opt.pad_to_multiple_of = 4;
    opt.max_padded_length = 6;
    const Batcher padded(ex, opt);
    const Batch short_batch = padded.collate({2, 0});  // longest 3: 4
    CHECK(short_batch.input_ids.to_vector<int64_t>() ==
          std::vector<int64_t>{101, 102, 99, 99, 101, 7, 102, 99});
    CHECK(short_batch.attention_mask.to_vector<int64_t>() ==
          std::vector<int64_t>{1, 1, 0, 0, 1, 1, 1, 0});
    CHECK(padded.collate({1}).input_ids.shape() == Shape{1, 6});  // longest 5: 8, capped at 6
    opt.max_padded_length = 4;
    CHECK(Batcher(ex, opt).collate({1}).input_ids.shape() == Shape{1, 5});  // the example's 5
    opt.pad_to_multiple_of = -1;
    check_error([&] { Batcher(ex, opt); }, {"pad_to_multiple_of", "-1"});
  }
}

TEST_CASE("Batcher: every example once, seeded, bucketed", "[dataset][batching]") {
  auto ex = toy_examples(203, 11);
  BatchOptions opt;
  opt.batch_size = 8;
  opt.seed = 3;
  opt.pool_batches = 5;
  Batcher batcher(ex, opt);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    auto batches = batcher.batches(epoch);
    CHECK(batches.size() == 26);  // ceil(203 / 8)
    std::vector<int> hits(ex.size(), 0);
    int64_t partial = 0;
    for (const auto& b : batches) {
      const int64_t rows = b.input_ids.size(0), cols = b.input_ids.size(1);
      partial += rows < 8;
      auto ids = b.input_ids.to_vector<int64_t>();
      auto mask = b.attention_mask.to_vector<int64_t>();
      auto types = b.token_type_ids.to_vector<int64_t>();
      auto labs = b.labels.to_vector<int64_t>();
      int64_t longest = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const auto& e = ex[static_cast<size_t>(b.indices[static_cast<size_t>(r)])];
        ++hits[static_cast<size_t>(b.indices[static_cast<size_t>(r)])];
        const auto len = static_cast<int64_t>(e.input_ids.size());
        longest = std::max(longest, len);
        CHECK(labs[static_cast<size_t>(r)] == e.label);
        for (int64_t c = 0; c < cols; ++c) {
          const auto at = static_cast<size_t>(r * cols + c);
          const bool real = c < len;
          REQUIRE(ids[at] == (real ? e.input_ids[static_cast<size_t>(c)] : 0));
          REQUIRE(mask[at] == (real ? 1 : 0));
          const int64_t type =
              real && !e.token_type_ids.empty() ? e.token_type_ids[static_cast<size_t>(c)] : 0;
          REQUIRE(types[at] == type);
        }
      }
      CHECK(cols == longest);  // padded to the batch's own longest example
    }
    CHECK(partial == 1);
    CHECK(std::all_of(hits.begin(), hits.end(), [](int h) { return h == 1; }));
  }
  CHECK(batcher.plan(1) == Batcher(ex, opt).plan(1));
  CHECK(batcher.plan(0) != batcher.plan(1));
  BatchOptions other = opt;
  other.seed = 4;
  CHECK(Batcher(ex, other).plan(0) != batcher.plan(0));

  // With one pool covering the whole set, batches are contiguous runs of the length order, so
  // the padding is the least any batching of the same sizes could have.
  BatchOptions one_pool = opt;
  one_pool.pool_batches = 1000;
  auto plan = Batcher(ex, one_pool).plan(0);
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& batch : plan) {
    size_t lo = SIZE_MAX, hi = 0;
    for (int64_t i : batch) {
      lo = std::min(lo, ex[static_cast<size_t>(i)].input_ids.size());
      hi = std::max(hi, ex[static_cast<size_t>(i)].input_ids.size());
    }
    ranges.emplace_back(lo, hi);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t k = 1; k < ranges.size(); ++k) CHECK(ranges[k - 1].second <= ranges[k].first);

  BatchOptions drop = opt;
  drop.drop_last = true;
  auto dropped = Batcher(ex, drop).plan(0);
  CHECK(dropped.size() == 25);
  for (const auto& batch : dropped) CHECK(batch.size() == 8);
}

TEST_CASE("Batcher: invalid input", "[dataset][batching]") {
  BatchOptions opt;
  check_error([&] { Batcher({}, opt); }, {"Batcher: no examples"});
  check_error([&] { Batcher({{{}, {}, 0}}, opt); }, {"example 0 has no tokens"});
  check_error(
      [&] {
        Batcher({{{1, 2}, {0, 0}, 0}, {{1, 2, 3}, {0}, 1}}, opt);
      },
      {"example 1 has 3 input_ids but 1 token_type_ids"});
  opt.batch_size = 0;
  check_error([&] { Batcher({{{1}, {}, 0}}, opt); }, {"batch_size must be positive"});
}

TEST_CASE("fetched sentiment dataset matches docs/data.md", "[dataset][assets]") {
  const char* env = std::getenv("LATHE_CACHE");
  const char* home = std::getenv("HOME");
  fs::path cache = env && *env ? fs::path(env) : fs::path(home ? home : "") / ".cache" / "lathe";
  fs::path dir = cache / "data" / "movie-review-snippets";
  if (!fs::exists(dir / "train.tsv")) {
    WARN("skipped: " << dir.string() << " not found (run scripts/fetch-assets.sh --data-only)");
    return;
  }
  // The counts documented in docs/data.md.
  const std::map<std::string, std::array<int64_t, 2>> expected = {
      {"train", {4061, 3997}}, {"dev", {507, 499}}, {"test", {507, 499}}};
  LabelMap map({"negative", "positive"});
  std::set<std::string> all_texts;
  int64_t total = 0;
  for (const auto& [split, counts] : expected) {
    Dataset d = read_dataset((dir / (split + ".tsv")).string());
    CHECK(d.skipped == 0);
    std::array<int64_t, 2> got = {0, 0};
    for (int64_t id : map.encode(d.examples)) ++got[static_cast<size_t>(id)];
    CHECK(got == counts);
    for (const auto& e : d.examples) all_texts.insert(e.text);
    total += static_cast<int64_t>(d.examples.size());
  }
  CHECK(total == 10070);
  CHECK(all_texts.size() == 10070);  // no text in two splits
}

TEST_CASE("JSONL reader: integer labels past INT64_MAX keep their value", "[dataset]") {
  // Read as int64_t, 18446744073709551615 became the label "-1".
  Dataset d = parse_dataset(
      "{\"text\": \"a\", \"label\": 18446744073709551615}\n{\"text\": \"b\", \"label\": -3}\n",
      "big.jsonl");
  CHECK(labels(d.examples) == std::vector<std::string>{"18446744073709551615", "-3"});
}
