// TSV / CSV / JSONL readers, LabelMap, seeded shuffling and stratified splits (see dataset.h).
// Each reader turns the text into records of (line, fields); one shared step then picks the
// configured fields, so header handling, validation and skip-and-count behave the same for all.
#include "lathe/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "lathe/core/error.h"

namespace lathe::data {
namespace {

// A row that cannot become an example; caught per row when skipping is on.
struct BadRow {
  int64_t line;
  std::string reason;
};

struct Record {
  int64_t line = 0;
  std::vector<std::string> fields;
};

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Format resolve_format(Format format, const std::string& source) {
  if (format != Format::Auto) return format;
  std::string lower = source;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ends_with(lower, ".tsv") || ends_with(lower, ".tab")) return Format::TSV;
  if (ends_with(lower, ".csv")) return Format::CSV;
  if (ends_with(lower, ".jsonl") || ends_with(lower, ".ndjson")) return Format::JSONL;
  LATHE_FAIL(source, ": cannot tell the format from the extension; expected .tsv, .tab, .csv, ",
             ".jsonl or .ndjson, or set ReadOptions::format");
}

// Returns the byte offset of the first invalid UTF-8 sequence, or npos. Overlong forms,
// surrogates and code points past U+10FFFF count as invalid, as in the Unicode standard.
size_t invalid_utf8_at(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (int k = 1; k < len; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

bool blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

// Splits on '\n' (dropping a '\r' before it) and calls fn(line_number, line) for each line.
void for_each_line(std::string_view content,
                   const std::function<void(int64_t, std::string_view)>& fn) {
  int64_t number = 0;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(++number, line);
    pos = end + 1;
  }
}

// Collects records and bad rows; rethrows or counts them per the options.
class Collector {
 public:
  Collector(const std::string& source, const ReadOptions& options, Dataset& out)
      : source_(source), options_(options), out_(out) {}

  [[noreturn]] void fatal(const BadRow& row, const std::string& prefix) {
    throw Error(source_ + ":" + std::to_string(row.line) + ": " + prefix + row.reason);
  }

  void bad(const BadRow& row) {
    std::string message = source_ + ":" + std::to_string(row.line) + ": " + row.reason;
    if (!options_.skip_bad_rows) throw Error(message);
    ++out_.skipped;
    out_.skipped_messages.push_back(std::move(message));
  }

 private:
  const std::string& source_;
  const ReadOptions& options_;
  Dataset& out_;
};

std::vector<Record> split_tsv(std::string_view content, Collector& collector) {
  std::vector<Record> records;
  for_each_line(content, [&](int64_t number, std::string_view line) {
    if (blank(line)) return;
    Record record{number, {}};
    size_t pos = 0;
    while (true) {
      size_t tab = line.find('\t', pos);
      record.fields.emplace_back(line.substr(pos, tab == std::string_view::npos ? tab : tab - pos));
      if (tab == std::string_view::npos) break;
      pos = tab + 1;
    }
    records.push_back(std::move(record));
  });
  (void)collector;
  return records;
}

// RFC 4180: fields separated by commas, records by CRLF or LF; a field in double quotes may hold
// commas, line breaks and doubled quotes. A quote inside an unquoted field, text after a closing
// quote, and a quote left open at the end of the data are bad rows. After a bad row, reading
// resumes at the next line.
std::vector<Record> split_csv(std::string_view content, bool header, Collector& collector) {
  std::vector<Record> records;
  size_t i = 0;
  int64_t line = 1;
  const size_t n = content.size();
  auto skip_to_next_line = [&] {
    while (i < n && content[i] != '\n') ++i;
    if (i < n) {
      ++i;
      ++line;
    }
  };
  while (i < n) {
    Record record{line, {}};
    // Blank physical lines between records are not rows.
    size_t probe = i;
    while (probe < n && (content[probe] == ' ' || content[probe] == '\t' || content[probe] == '\r'))
      ++probe;
    if (probe == n || content[probe] == '\n') {
      i = probe;
      skip_to_next_line();
      continue;
    }
    std::optional<BadRow> error;
    bool end_of_record = false;
    while (!end_of_record && !error) {
      std::string field;
      if (i < n && content[i] == '"') {
        const int64_t open_line = line;
        ++i;
        bool closed = false;
        while (i < n) {
          char c = content[i];
          if (c == '"') {
            if (i + 1 < n && content[i + 1] == '"') {
              field += '"';
              i += 2;
              continue;
            }
            ++i;
            closed = true;
            break;
          }
          if (c == '\n') ++line;
          field += c;
          ++i;
        }
        if (!closed) {
          error = BadRow{open_line, "quoted field opened here is never closed"};
          break;
        }
        // Only a separator, a line break or the end may follow a closing quote.
        if (i < n && content[i] == '\r' && (i + 1 == n || content[i + 1] == '\n')) ++i;
        if (i < n && content[i] != ',' && content[i] != '\n') {
          error = BadRow{line, "unexpected character after a closing quote"};
          break;
        }
      } else {
        while (i < n && content[i] != ',' && content[i] != '\n') {
          if (content[i] == '"') {
            error = BadRow{line, "quote inside an unquoted field (quote the whole field)"};
            break;
          }
          field += content[i];
          ++i;
        }
        if (error) break;
        if (!field.empty() && field.back() == '\r' && (i == n || content[i] == '\n'))
          field.pop_back();
      }
      record.fields.push_back(std::move(field));
      if (i >= n) {
        end_of_record = true;
      } else if (content[i] == ',') {
        ++i;
      } else {  // '\n'
        ++i;
        ++line;
        end_of_record = true;
      }
    }
    if (error) {
      // Skipping a broken header would promote the first data row to header: never skip it.
      if (header && records.empty()) collector.fatal(*error, "bad header row: ");
      collector.bad(*error);
      if (error->reason.find("never closed") != std::string::npos) break;  // nothing left
      skip_to_next_line();
      continue;
    }
    records.push_back(std::move(record));
  }
  return records;
}

// Column positions of the configured fields: looked up in the header, or parsed as numbers.
struct Columns {
  size_t text = 0, label = 0;
  std::optional<size_t> pair;
  size_t needed = 0;  // fields a row must have
};

size_t column_number(const std::string& field, const std::string& source, const char* what) {
  size_t pos = 0;
  unsigned long long value = 0;
  bool ok = !field.empty() && field.size() <= 9 &&
            std::all_of(field.begin(), field.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (ok) value = std::stoull(field, &pos);
  LATHE_CHECK(ok, source, ": without a header row, the ", what, " field must be a column number ",
              "(0-based), got '", field, "'");
  return static_cast<size_t>(value);
}

Columns locate_columns(const std::optional<Record>& header, const ReadOptions& options,
                       const std::string& source) {
  Columns columns;
  auto find = [&](const std::string& field, const char* what) -> size_t {
    if (!header) return column_number(field, source, what);
    auto it = std::find(header->fields.begin(), header->fields.end(), field);
    if (it == header->fields.end()) {
      std::string names;
      for (const auto& f : header->fields) names += (names.empty() ? "'" : ", '") + f + "'";
      LATHE_FAIL(source, ":", header->line, ": no ", what, " column '", field,
                 "' in the header (columns: ", names, ")");
    }
    return static_cast<size_t>(it - header->fields.begin());
  };
  columns.text = find(options.text_field, "text");
  columns.label = find(options.label_field, "label");
  if (!options.text_pair_field.empty()) columns.pair = find(options.text_pair_field, "text pair");
  columns.needed = std::max({columns.text, columns.label, columns.pair.value_or(0)}) + 1;
  if (header) columns.needed = header->fields.size();
  return columns;
}

void check_text(const std::string& value, const char* what, int64_t line, bool allow_empty) {
  if (!allow_empty && value.empty()) throw BadRow{line, std::string("empty ") + what + " field"};
  size_t bad = invalid_utf8_at(value);
  if (bad != std::string_view::npos)
    throw BadRow{line, std::string("invalid UTF-8 in the ") + what + " field at byte " +
                           std::to_string(bad)};
}

void table_examples(std::vector<Record> records, const ReadOptions& options,
                    const std::string& source, Collector& collector, Dataset& out) {
  std::optional<Record> header;
  size_t first = 0;
  if (options.header) {
    LATHE_CHECK(!records.empty(), source, ": no header row (the file has no rows)");
    header = std::move(records[0]);
    first = 1;
  }
  Columns columns = locate_columns(header, options, source);
  for (size_t r = first; r < records.size(); ++r) {
    Record& record = records[r];
    try {
      const size_t got = record.fields.size();
      if (header ? got != columns.needed : got < columns.needed) {
        throw BadRow{record.line, std::string("expected ") + (header ? "" : "at least ") +
                                      std::to_string(columns.needed) + " fields, got " +
                                      std::to_string(got)};
      }
      Example example;
      example.text = std::move(record.fields[columns.text]);
      check_text(example.text, "text", record.line, false);
      if (columns.pair) {
        example.text_pair = std::move(record.fields[*columns.pair]);
        check_text(example.text_pair, "text pair", record.line, false);
      }
      example.label = std::move(record.fields[columns.label]);
      check_text(example.label, "label", record.line, false);
      example.source = source;
      example.line = record.line;
      out.examples.push_back(std::move(example));
    } catch (const BadRow& bad) {
      collector.bad(bad);
    }
  }
}

void jsonl_examples(std::string_view content, const ReadOptions& options, const std::string& source,
                    Collector& collector, Dataset& out) {
  using nlohmann::json;
  for_each_line(content, [&](int64_t number, std::string_view line) {
    if (blank(line)) return;
    try {
      json value;
      try {
        value = json::parse(line.begin(), line.end());
      } catch (const json::exception& e) {
        // nlohmann's message starts with "[json.exception.parse_error.101] "; keep the rest.
        std::string what = e.what();
        size_t cut = what.find("] ");
        throw BadRow{number,
                     "invalid JSON: " + (cut == std::string::npos ? what : what.substr(cut + 2))};
      }
      if (!value.is_object()) throw BadRow{number, "expected a JSON object"};
      auto string_field = [&](const std::string& key, const char* what) {
        auto it = value.find(key);
        if (it == value.end())
          throw BadRow{number, std::string("missing ") + what + " key '" + key + "'"};
        if (!it->is_string())
          throw BadRow{number, std::string(what) + " '" + key + "' must be a string"};
        std::string s = it->get<std::string>();
        check_text(s, what, number, false);
        return s;
      };
      Example example;
      example.text = string_field(options.text_field, "text");
      if (!options.text_pair_field.empty())
        example.text_pair = string_field(options.text_pair_field, "text pair");
      // Labels may be written as names or as integers / booleans (e.g. 0/1 sentiment).
      auto it = value.find(options.label_field);
      if (it == value.end())
        throw BadRow{number, "missing label key '" + options.label_field + "'"};
      if (it->is_string()) {
        example.label = it->get<std::string>();
        check_text(example.label, "label", number, false);
      } else if (it->is_number_unsigned()) {
        // Before the signed case, which would print 2^63 and above as negative numbers.
        example.label = std::to_string(it->get<uint64_t>());
      } else if (it->is_number_integer()) {
        example.label = std::to_string(it->get<int64_t>());
      } else if (it->is_boolean()) {
        example.label = it->get<bool>() ? "true" : "false";
      } else {
        throw BadRow{number, "label '" + options.label_field +
                                 "' must be a string, an integer or a boolean"};
      }
      example.source = source;
      example.line = number;
      out.examples.push_back(std::move(example));
    } catch (const BadRow& bad) {
      collector.bad(bad);
    }
  });
}

// splitmix64: tiny, fast, and fully specified, so seeds mean the same everywhere.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Unbiased draw in [0, n) by rejection.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }
};

}  // namespace

Dataset parse_dataset(std::string_view content, const std::string& source,
                      const ReadOptions& options) {
  const Format format = resolve_format(options.format, source);
  // A UTF-8 byte-order mark (spreadsheet exports add one) is not part of the first field.
  if (content.size() >= 3 && content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);
  Dataset out;
  Collector collector(source, options, out);
  switch (format) {
    case Format::TSV:
      table_examples(split_tsv(content, collector), options, source, collector, out);
      break;
    case Format::CSV:
      table_examples(split_csv(content, options.header, collector), options, source, collector,
                     out);
      break;
    case Format::JSONL:
      jsonl_examples(content, options, source, collector, out);
      break;
    case Format::Auto:
      break;
  }
  LATHE_CHECK(
      !out.examples.empty(), source, ": the dataset is empty (no examples",
      out.skipped ? ", " + std::to_string(out.skipped) + " bad rows skipped" : std::string(), ")");
  return out;
}

Dataset read_dataset(const std::string& path, const ReadOptions& options) {
  std::ifstream in(path, std::ios::binary);
  LATHE_CHECK(in.good(), path, ": cannot open the file for reading");
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LATHE_CHECK(!in.bad(), path, ": read error");
  return parse_dataset(content, path, options);
}

LabelMap::LabelMap(std::vector<std::string> names) : names_(std::move(names)) {
  for (size_t i = 0; i < names_.size(); ++i) {
    LATHE_CHECK(!names_[i].empty(), "LabelMap: label ", i, " has an empty name");
    bool inserted = ids_.emplace(names_[i], static_cast<int64_t>(i)).second;
    LATHE_CHECK(inserted, "LabelMap: duplicate label name '", names_[i], "'");
  }
}

LabelMap LabelMap::from_examples(const std::vector<Example>& examples) {
  LATHE_CHECK(!examples.empty(), "LabelMap::from_examples: no examples");
  std::vector<std::string> names;
  for (const auto& e : examples) names.push_back(e.label);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return LabelMap(std::move(names));
}

int64_t LabelMap::id(const std::string& name) const {
  auto it = ids_.find(name);
  if (it == ids_.end()) {
    std::string known;
    for (const auto& n : names_) known += (known.empty() ? "'" : ", '") + n + "'";
    LATHE_FAIL("unknown label '", name, "' (known labels: ", known, ")");
  }
  return it->second;
}

const std::string& LabelMap::name(int64_t id) const {
  LATHE_CHECK(id >= 0 && id < size(), "LabelMap: label id ", id, " out of range [0, ", size(), ")");
  return names_[static_cast<size_t>(id)];
}

std::vector<int64_t> LabelMap::encode(const std::vector<Example>& examples) const {
  std::vector<int64_t> ids;
  ids.reserve(examples.size());
  for (const auto& e : examples) {
    try {
      ids.push_back(id(e.label));
    } catch (const Error& err) {
      LATHE_FAIL(e.source, ":", e.line, ": ", err.what());
    }
  }
  return ids;
}

std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  LATHE_CHECK(n >= 0, "permutation: negative size ", n);
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  SplitMix64 rng{seed};
  for (int64_t i = n - 1; i > 0; --i) {
    auto j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i) + 1));
    std::swap(p[static_cast<size_t>(i)], p[static_cast<size_t>(j)]);
  }
  return p;
}

std::vector<Example> shuffled(const std::vector<Example>& examples, uint64_t seed) {
  std::vector<Example> out;
  out.reserve(examples.size());
  for (int64_t i : permutation(static_cast<int64_t>(examples.size()), seed))
    out.push_back(examples[static_cast<size_t>(i)]);
  return out;
}

Split stratified_split(const std::vector<Example>& examples, double dev_fraction,
                       double test_fraction, uint64_t seed) {
  LATHE_CHECK(dev_fraction >= 0 && test_fraction >= 0 && dev_fraction + test_fraction <= 1,
              "stratified_split: fractions must be >= 0 with dev + test <= 1, got dev ",
              dev_fraction, ", test ", test_fraction);
  LATHE_CHECK(!examples.empty(), "stratified_split: no examples");
  // Labels in sorted order, each with its own stream, so one label's split does not depend on
  // which other labels exist.
  std::map<std::string, std::vector<size_t>> by_label;
  for (size_t i = 0; i < examples.size(); ++i) by_label[examples[i].label].push_back(i);
  std::vector<int> part(examples.size(), 0);  // 0 train, 1 dev, 2 test
  uint64_t stream = 0;
  for (auto& [label, members] : by_label) {
    const auto n = static_cast<int64_t>(members.size());
    auto order = permutation(n, seed ^ (0x9E3779B97F4A7C15ULL * ++stream));
    const auto n_dev = static_cast<int64_t>(std::llround(static_cast<double>(n) * dev_fraction));
    const auto n_test = std::min<int64_t>(
        n - n_dev, static_cast<int64_t>(std::llround(static_cast<double>(n) * test_fraction)));
    for (int64_t k = 0; k < n; ++k) {
      size_t idx = members[static_cast<size_t>(order[static_cast<size_t>(k)])];
      part[idx] = k < n_dev ? 1 : (k < n_dev + n_test ? 2 : 0);
    }
  }
  Split split;
  for (size_t i = 0; i < examples.size(); ++i) {
    auto& dst = part[i] == 0 ? split.train : (part[i] == 1 ? split.dev : split.test);
    dst.push_back(examples[i]);
  }
  return split;
}

}  // namespace lathe::data
