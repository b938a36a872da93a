// libFuzzer target: the TSV / CSV / JSONL dataset readers on arbitrary bytes. Input layout: byte 0
// picks the format (Auto, TSV, CSV, JSONL), header, skip_bad_rows and the file name's extension;
// byte 1 the text and label fields, byte 2 the text pair field (0: none); the rest is the file.
// Findings: any sanitizer report, any exception other than lathe::Error, an error message that does
// not start with the file name, and an accepted dataset that breaks the documented contract
// (empty or invalid UTF-8 fields, lines out of order, skip counts without skip_bad_rows), does not
// survive a CSV round trip, or trips LabelMap / shuffling / splitting.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "lathe/core/error.h"
#include "lathe/data/dataset.h"

using namespace lathe::data;

namespace {

#define FUZZ_ASSERT(cond)                                                           \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "fuzz_dataset: %s failed (line %d)\n", #cond, __LINE__); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

// Column names and numbers that appear in the seeds, plus a few that never should match.
constexpr const char* kFields[16] = {"text", "label", "premise", "hypothesis", "0", "1",
                                     "2",    "3",     "",        "source",     "a", "b",
                                     "Text", "10",    "-1",      "00"};
constexpr const char* kExtensions[4] = {".tsv", ".csv", ".jsonl", ".txt"};

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

std::string csv_field(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  ReadOptions opt;
  opt.format = static_cast<Format>(data[0] & 3);
  opt.header = !(data[0] & 4);
  opt.skip_bad_rows = data[0] & 8;
  const std::string source = std::string("fuzz") + kExtensions[data[0] >> 4 & 3];
  opt.text_field = kFields[data[1] & 15];
  opt.label_field = kFields[((data[1] >> 4) + 1) & 15];
  if (data[2] != 0) opt.text_pair_field = kFields[(data[2] - 1) & 15];
  const std::string_view content(reinterpret_cast<const char*>(data) + 3, size - 3);

  Dataset d;
  try {
    d = parse_dataset(content, source, opt);
  } catch (const lathe::Error& e) {
    FUZZ_ASSERT(std::string_view(e.what()).starts_with(source));
    return 0;
  }
  const Format format = opt.format != Format::Auto ? opt.format
                        : source.ends_with(".tsv") ? Format::TSV
                        : source.ends_with(".csv") ? Format::CSV
                                                   : Format::JSONL;
  FUZZ_ASSERT(!d.examples.empty());
  FUZZ_ASSERT(d.skipped == static_cast<int64_t>(d.skipped_messages.size()));
  FUZZ_ASSERT(opt.skip_bad_rows || d.skipped == 0);
  for (const auto& m : d.skipped_messages) FUZZ_ASSERT(m.starts_with(source + ":"));
  const auto lines = static_cast<int64_t>(std::count(content.begin(), content.end(), '\n')) + 1;
  int64_t previous = 0;
  for (const Example& e : d.examples) {
    FUZZ_ASSERT(!e.text.empty() && valid_utf8(e.text));
    FUZZ_ASSERT(!e.label.empty() && valid_utf8(e.label));
    FUZZ_ASSERT(opt.text_pair_field.empty() ? e.text_pair.empty()
                                            : !e.text_pair.empty() && valid_utf8(e.text_pair));
    FUZZ_ASSERT(e.source == source);
    FUZZ_ASSERT(e.line > previous && e.line <= lines);
    previous = e.line;
    if (format == Format::TSV)
      for (const std::string* s : {&e.text, &e.label, &e.text_pair})
        FUZZ_ASSERT(s->find_first_of("\t\n") == std::string::npos);
  }

  // What was read survives a fully quoted CSV round trip exactly.
  const bool pairs = !opt.text_pair_field.empty();
  std::string csv = pairs ? "text,label,pair\n" : "text,label\n";
  for (const Example& e : d.examples)
    csv += csv_field(e.text) + "," + csv_field(e.label) +
           (pairs ? "," + csv_field(e.text_pair) : std::string()) + "\n";
  ReadOptions back;
  back.format = Format::CSV;
  if (pairs) back.text_pair_field = "pair";
  const Dataset again = parse_dataset(csv, "round-trip.csv", back);
  FUZZ_ASSERT(again.skipped == 0 && again.examples.size() == d.examples.size());
  for (std::size_t i = 0; i < d.examples.size(); ++i) {
    FUZZ_ASSERT(again.examples[i].text == d.examples[i].text);
    FUZZ_ASSERT(again.examples[i].label == d.examples[i].label);
    FUZZ_ASSERT(again.examples[i].text_pair == d.examples[i].text_pair);
  }

  const LabelMap labels = LabelMap::from_examples(d.examples);
  const std::vector<int64_t> ids = labels.encode(d.examples);
  FUZZ_ASSERT(ids.size() == d.examples.size());
  for (std::size_t i = 0; i < ids.size(); ++i)
    FUZZ_ASSERT(labels.name(ids[i]) == d.examples[i].label);
  const uint64_t seed = size;
  FUZZ_ASSERT(shuffled(d.examples, seed).size() == d.examples.size());
  const Split split = stratified_split(d.examples, 0.25, 0.25, seed);
  FUZZ_ASSERT(split.train.size() + split.dev.size() + split.test.size() == d.examples.size());
  return 0;
}
