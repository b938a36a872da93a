// Labelled text datasets: TSV / CSV (RFC 4180) / JSONL readers with configurable fields, label
// names <-> ids, seeded shuffling and stratified splits. Readers keep the file and line of every
// example, so errors found later (an unknown label, say) can still point at the row.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lathe::data {

// One labelled row. text_pair is empty unless ReadOptions::text_pair_field names a column.
struct Example {
  std::string text;
  std::string text_pair;
  std::string label;
  std::string source;  // file the row came from
  int64_t line = 0;    // 1-based line where the row starts
};

enum class Format { Auto, TSV, CSV, JSONL };

struct ReadOptions {
  // Auto picks by extension: .tsv/.tab, .csv, .jsonl/.ndjson; anything else must be explicit.
  Format format = Format::Auto;
  // TSV/CSV: the first row names the columns and fields are looked up by name. Without a header,
  // fields are 0-based column numbers written as strings ("0", "1"). JSONL fields are keys.
  bool header = true;
  std::string text_field = "text";
  std::string text_pair_field;  // empty: single sentences
  std::string label_field = "label";
  // false: the first bad row throws lathe::Error naming file:line. true: bad rows are skipped
  // and counted in Dataset::skipped (with their messages in Dataset::skipped_messages).
  bool skip_bad_rows = false;
};

struct Dataset {
  std::vector<Example> examples;
  int64_t skipped = 0;
  std::vector<std::string> skipped_messages;  // "file:line: reason", one per skipped row
};

// Reads a whole file. Throws lathe::Error when the file cannot be read, a row is bad (unless
// skip_bad_rows), a named field is missing from the header, or no example remains.
Dataset read_dataset(const std::string& path, const ReadOptions& options = {});
// The same from memory; `source` names the data in messages (and picks the format under Auto).
Dataset parse_dataset(std::string_view content, const std::string& source,
                      const ReadOptions& options = {});

// Label names <-> dense ids 0..size()-1.
class LabelMap {
 public:
  LabelMap() = default;
  // Ids follow the given order; empty or duplicate names throw.
  explicit LabelMap(std::vector<std::string> names);
  // The distinct labels of `examples`, sorted, so the same data always gives the same ids.
  static LabelMap from_examples(const std::vector<Example>& examples);

  int64_t size() const { return static_cast<int64_t>(names_.size()); }
  const std::vector<std::string>& names() const { return names_; }
  bool contains(const std::string& name) const { return ids_.count(name) != 0; }
  int64_t id(const std::string& name) const;  // throws for an unknown label
  const std::string& name(int64_t id) const;  // throws when out of range
  // Every example's label id; an unknown label throws naming the example's file:line.
  std::vector<int64_t> encode(const std::vector<Example>& examples) const;

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, int64_t> ids_;
};

// A permutation of 0..n-1 from a splitmix64-seeded Fisher-Yates shuffle: the same on every
// platform and standard library (std::shuffle is not).
std::vector<int64_t> permutation(int64_t n, uint64_t seed);
std::vector<Example> shuffled(const std::vector<Example>& examples, uint64_t seed);

struct Split {
  std::vector<Example> train, dev, test;
};
// Per label, a seeded shuffle sends round(n * dev_fraction) examples to dev and
// round(n * test_fraction) to test, the rest to train; each part keeps the input order.
Split stratified_split(const std::vector<Example>& examples, double dev_fraction,
                       double test_fraction, uint64_t seed);

}  // namespace lathe::data
