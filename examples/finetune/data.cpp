#include "data.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "lathe/core/error.h"
#include "report.h"

namespace lathe::finetune {

namespace {

struct Encoded {
  std::vector<data::EncodedExample> examples;
  int64_t truncated = 0;
  std::vector<int64_t> full_lengths;  // before truncation
};

Encoded encode(const std::vector<data::Example>& examples, const data::LabelMap& labels,
               const data::Tokenizer& tokenizer, int64_t max_len) {
  Encoded out;
  const std::vector<int64_t> ids = labels.encode(examples);  // unknown labels name file:line
  data::EncodeOptions full;
  data::EncodeOptions cut;
  cut.max_length = max_len;
  for (size_t i = 0; i < examples.size(); ++i) {
    const data::Example& e = examples[i];
    const bool pair = !e.text_pair.empty();
    data::Encoding enc =
        pair ? tokenizer.encode_pair(e.text, e.text_pair, full) : tokenizer.encode(e.text, full);
    const auto full_len = static_cast<int64_t>(enc.input_ids.size());
    out.full_lengths.push_back(full_len);
    if (full_len > max_len) {
      ++out.truncated;
      enc = pair ? tokenizer.encode_pair(e.text, e.text_pair, cut) : tokenizer.encode(e.text, cut);
    }
    data::EncodedExample x;
    x.input_ids = std::move(enc.input_ids);
    if (pair) x.token_type_ids = std::move(enc.token_type_ids);
    x.label = ids[i];
    out.examples.push_back(std::move(x));
  }
  return out;
}

// A seeded subset of n examples with the label proportions of the whole.
std::vector<data::Example> stratified_subset(const std::vector<data::Example>& all, int64_t n,
                                             uint64_t seed) {
  if (n <= 0 || n >= static_cast<int64_t>(all.size())) return all;
  const double keep = double(n) / double(all.size());
  // stratified_split sends `fraction` of each label to dev; use that part as the subset.
  data::Split s = data::stratified_split(all, keep, 0.0, seed ^ 0x5eedULL);
  return s.dev;
}

std::vector<std::string> texts(const std::vector<data::Example>& examples) {
  std::vector<std::string> out;
  for (const auto& e : examples) out.push_back(e.text);
  return out;
}

}  // namespace

PreparedData prepare_data(const Options& o, const data::Tokenizer& tokenizer) {
  data::ReadOptions ro;
  ro.text_field = o.text_field;
  ro.label_field = o.label_field;
  std::vector<data::Example> train, dev, test;
  if (!o.data.empty()) {
    const data::Dataset all = data::read_dataset(o.data, ro);
    data::Split s = data::stratified_split(all.examples, o.dev_fraction, o.test_fraction, o.seed);
    train = std::move(s.train);
    dev = std::move(s.dev);
    test = std::move(s.test);
  } else {
    train = data::read_dataset(o.train, ro).examples;
    if (!o.dev.empty()) dev = data::read_dataset(o.dev, ro).examples;
    if (!o.test.empty()) test = data::read_dataset(o.test, ro).examples;
  }
  LATHE_CHECK(!dev.empty(), "the dev set is empty (", o.data.empty() ? o.dev : o.data,
              "); evaluation during training needs examples");
  const int64_t full_train = static_cast<int64_t>(train.size());
  train = stratified_subset(train, o.subset, o.seed);

  PreparedData p;
  // Labels come from the training data (sorted names: the same data always gives the same ids);
  // a dev/test label never seen in training is an error naming its row.
  p.labels = data::LabelMap::from_examples(train);
  LATHE_CHECK(p.labels.size() >= 2, "the training data has ", p.labels.size(),
              " distinct label(s); classification needs at least 2");
  Encoded tr = encode(train, p.labels, tokenizer, o.max_len);
  Encoded dv = encode(dev, p.labels, tokenizer, o.max_len);
  Encoded ts = encode(test, p.labels, tokenizer, o.max_len);
  p.train = std::move(tr.examples);
  p.dev = std::move(dv.examples);
  p.test = std::move(ts.examples);
  p.dev_text = texts(dev);
  p.test_text = texts(test);

  std::ostringstream os;
  auto count_labels = [&](const std::vector<data::EncodedExample>& xs) {
    std::vector<int64_t> c(static_cast<size_t>(p.labels.size()), 0);
    for (const auto& x : xs) ++c[static_cast<size_t>(x.label)];
    return c;
  };
  char buf[256];
  os << "data\n";
  std::snprintf(buf, sizeof buf, "  %-6s %7s", "split", "size");
  os << buf;
  for (const auto& name : p.labels.names()) {
    std::snprintf(buf, sizeof buf, "  %14s", name.c_str());
    os << buf;
  }
  os << "  tokens p50/p90/p99/max  truncated\n";
  auto row = [&](const char* split, const std::vector<data::EncodedExample>& xs,
                 const Encoded& enc) {
    if (xs.empty()) return;
    std::snprintf(buf, sizeof buf, "  %-6s %7zu", split, xs.size());
    os << buf;
    for (int64_t c : count_labels(xs)) {
      std::snprintf(buf, sizeof buf, "  %7lld (%4.1f%%)", static_cast<long long>(c),
                    100.0 * double(c) / double(xs.size()));
      os << buf;
    }
    const auto pc = percentiles(enc.full_lengths, {50, 90, 99, 100});
    std::snprintf(
        buf, sizeof buf, "  %5lld/%lld/%lld/%lld  %6lld (%.1f%%)\n", static_cast<long long>(pc[0]),
        static_cast<long long>(pc[1]), static_cast<long long>(pc[2]), static_cast<long long>(pc[3]),
        static_cast<long long>(enc.truncated), 100.0 * double(enc.truncated) / double(xs.size()));
    os << buf;
  };
  row("train", p.train, tr);
  row("dev", p.dev, dv);
  row("test", p.test, ts);
  if (o.subset > 0 && o.subset < full_train) {
    os << "  (train is a stratified subset of " << p.train.size() << " of " << full_train
       << " examples, --subset)\n";
  }
  os << "  max length " << o.max_len << " tokens incl. [CLS]/[SEP]; longer examples are cut\n";
  p.summary = os.str();
  return p;
}

}  // namespace lathe::finetune
