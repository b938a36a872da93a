// What lathe-finetune shows and records while it trains: classification metrics and the confusion
// table, length percentiles, a progress bar, a JSON Lines metrics log that survives resuming, and
// the loss/accuracy plot (a self-contained SVG, plus a PNG when gnuplot is installed).
// Invalid arguments throw lathe::Error naming the function and the offending value.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace lathe::finetune {

// ---- metrics ----

struct Metrics {
  int64_t count = 0;
  double loss = 0;  // mean loss; compute_metrics leaves it 0 for the caller to fill
  double accuracy = 0;
  // Mean of f1 over all num_labels labels, as scikit-learn's
  // f1_score(average="macro", labels=range(num_labels), zero_division=0).
  double macro_f1 = 0;
  // Per label. A ratio whose denominator is 0 (a label never predicted, never true) is 0, as with
  // zero_division=0; f1 = 2tp / (2tp + fp + fn).
  std::vector<double> precision, recall, f1;
  std::vector<int64_t> support;                 // true examples per label (row sums)
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
};

// Throws when the vectors differ in length or are empty, num_labels < 1, or an id is outside
// 0..num_labels-1.
Metrics compute_metrics(const std::vector<int64_t>& predicted, const std::vector<int64_t>& truth,
                        int64_t num_labels);

// The confusion matrix with label names as row (true) and column (predicted) headers, then one
// precision/recall/F1/support line per label and a macro-F1/accuracy line; ends with a newline.
// label_names must have one name per label, or be empty (ids are shown instead).
std::string format_confusion(const Metrics& m, const std::vector<std::string>& label_names);

// ---- statistics ----

// Nearest-rank percentiles: for p in pcts, the value at rank ceil(p/100 * n) (at least 1) of the
// sorted values, so 0 gives the minimum and 100 the maximum. Throws for no values or p outside
// [0, 100].
std::vector<int64_t> percentiles(std::vector<int64_t> values, const std::vector<double>& pcts);

// "45s", "3m12s", "1h02m" (rounded to the shown unit); "?" for negative or non-finite input.
std::string format_duration(double seconds);

// ---- progress ----

// One line per update. On a terminal it is a bar redrawn in place with '\r' (cut to the terminal
// width so that it never wraps); anywhere else, a plain line every `plain_every` steps and at the
// last step, so that logs stay readable.
class Progress {
 public:
  // `clock` returns seconds on any monotonic scale; the default is std::chrono::steady_clock
  // (tests pass a fake one).
  Progress(FILE* out, int64_t total_steps, int64_t plain_every = 50,
           std::function<double()> clock = {});
  ~Progress();  // finish()
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // step is the 1-based global step, loss_avg the running mean. The ETA is the mean time per step
  // since construction times the remaining steps; the first update's step fixes where counting
  // starts, so a resumed run does not count the skipped steps as done instantly.
  void update(int64_t step, int64_t epoch, int64_t num_epochs, double loss_avg,
              double examples_per_s);
  // Prints `line` on a line of its own: on a terminal the bar is cleared first and redrawn after.
  void message(const std::string& line);
  // Ends the bar's line (terminal only; does nothing when there is no bar or it already ended).
  void finish();
  bool is_terminal() const { return terminal_; }

 private:
  std::string status_text(int64_t step, int64_t epoch, int64_t num_epochs, double loss_avg,
                          double examples_per_s, double elapsed, double eta) const;
  void draw();

  FILE* out_;
  int64_t total_, plain_every_;
  std::function<double()> clock_;
  bool terminal_;
  double start_time_;
  int64_t first_step_ = -1;  // step before the first update (steps done before this run)
  std::string bar_;          // the last bar drawn (terminal), redrawn after message()
  bool bar_shown_ = false;
};

// ---- metrics log ----

// One JSON object per line, appended and flushed as written, so that a crash loses at most the
// line being written.
class JsonlWriter {
 public:
  // Opens `path` for appending (creating it). When truncate_after_step >= 0 the file is first
  // rewritten (atomically) keeping only the records whose numeric "step" is <= that value, so that
  // a resumed run's log matches its checkpoint; records without a step, and a last line cut off
  // without its newline, are dropped. A line that is not a flat JSON object throws, naming
  // path:line.
  explicit JsonlWriter(const std::string& path, int64_t truncate_after_step = -1);
  ~JsonlWriter();
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;

  // {"number_key": value, ..., "string_key": "value", ...} in the given order. Non-finite numbers
  // are written as null (JSON has no NaN). Throws on a repeated key or a failed write.
  void write(const std::vector<std::pair<std::string, double>>& numbers,
             const std::vector<std::pair<std::string, std::string>>& strings = {});
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  FILE* file_ = nullptr;
};

// `s` as a JSON string literal (quotes included): control characters escaped, bytes that are not
// well-formed UTF-8 replaced by U+FFFD so that the output is always valid JSON.
std::string json_quote(const std::string& s);
// The shortest decimal text that reads back as `v` ("3", "0.1", "1e-05"); "null" if not finite.
std::string json_number(double v);

// ---- plots ----

struct CurvePoint {
  double step;
  double value;
};

// A ~700x450 SVG with two panels sharing the step axis: "loss" (train loss as a line, dev loss as a
// line with markers) and "dev accuracy / macro-F1". Ticks, tick labels, legends and the title are
// plain SVG text with a generic font, no scripts or external references. Each non-empty series is
// one <polyline class="..."> (train-loss, dev-loss, dev-accuracy, dev-f1) with one point per finite
// input point; empty series are left out (the axes are still drawn). Written to a temporary file
// and renamed into place, so a reader never sees half a plot. Throws when the file cannot be
// written.
void write_training_plot_svg(const std::string& path, const std::string& title,
                             const std::vector<CurvePoint>& train_loss,
                             const std::vector<CurvePoint>& dev_loss,
                             const std::vector<CurvePoint>& dev_accuracy,
                             const std::vector<CurvePoint>& dev_f1);

// The same plot as a PNG rendered by gnuplot, when `gnuplot` is on PATH. Returns false (and never
// throws) when it is not, or when rendering fails; the file is then left as it was.
bool write_training_plot_png(const std::string& path, const std::string& title,
                             const std::vector<CurvePoint>& train_loss,
                             const std::vector<CurvePoint>& dev_loss,
                             const std::vector<CurvePoint>& dev_accuracy,
                             const std::vector<CurvePoint>& dev_f1);

}  // namespace lathe::finetune
