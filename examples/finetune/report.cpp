#include "report.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>

#include "lathe/core/error.h"

extern char** environ;

namespace lathe::finetune {

namespace fs = std::filesystem;

namespace {

std::string fixed(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// Display width of UTF-8 text: one column per code point, so that accented label names line up.
std::size_t columns(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string pad_left(const std::string& s, std::size_t width) {
  const std::size_t w = columns(s);
  return w >= width ? s : std::string(width - w, ' ') + s;
}

std::string pad_right(const std::string& s, std::size_t width) {
  const std::size_t w = columns(s);
  return w >= width ? s : s + std::string(width - w, ' ');
}

// Same directory as the target, so that the rename cannot cross filesystems; the pid keeps two
// processes writing the same file from sharing a temporary.
std::string temp_sibling(const std::string& path) {
  return path + ".tmp" + std::to_string(::getpid());
}

void write_file_atomically(const std::string& path, const std::string& content, const char* what) {
  const std::string tmp = temp_sibling(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LATHE_CHECK(out, what, ": cannot write '", tmp, "': ", std::strerror(errno));
    out << content;
    out.flush();
    if (!out) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      LATHE_FAIL(what, ": writing '", tmp, "' failed: ", std::strerror(errno));
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    LATHE_FAIL(what, ": cannot rename '", tmp, "' to '", path, "': ", ec.message());
  }
}

}  // namespace

// ---- metrics ----

Metrics compute_metrics(const std::vector<int64_t>& predicted, const std::vector<int64_t>& truth,
                        int64_t num_labels) {
  LATHE_CHECK(num_labels >= 1, "compute_metrics: num_labels must be at least 1, got ", num_labels);
  LATHE_CHECK(predicted.size() == truth.size(), "compute_metrics: ", predicted.size(),
              " predictions but ", truth.size(), " true labels");
  LATHE_CHECK(!truth.empty(), "compute_metrics: no examples (the prediction list is empty)");
  const auto n = static_cast<std::size_t>(num_labels);
  Metrics m;
  m.count = static_cast<int64_t>(truth.size());
  m.confusion.assign(n, std::vector<int64_t>(n, 0));
  int64_t correct = 0;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    const int64_t t = truth[i], p = predicted[i];
    LATHE_CHECK(t >= 0 && t < num_labels, "compute_metrics: true label ", t, " of example ", i,
                " is outside 0..", num_labels - 1);
    LATHE_CHECK(p >= 0 && p < num_labels, "compute_metrics: predicted label ", p, " of example ", i,
                " is outside 0..", num_labels - 1);
    ++m.confusion[std::size_t(t)][std::size_t(p)];
    correct += t == p;
  }
  m.accuracy = double(correct) / double(m.count);
  m.precision.assign(n, 0.0);
  m.recall.assign(n, 0.0);
  m.f1.assign(n, 0.0);
  m.support.assign(n, 0);
  for (std::size_t l = 0; l < n; ++l) {
    int64_t predicted_as = 0;
    for (std::size_t r = 0; r < n; ++r) predicted_as += m.confusion[r][l];
    for (std::size_t c = 0; c < n; ++c) m.support[l] += m.confusion[l][c];
    const int64_t tp = m.confusion[l][l];
    const int64_t fp = predicted_as - tp, fn = m.support[l] - tp;
    if (predicted_as > 0) m.precision[l] = double(tp) / double(predicted_as);
    if (m.support[l] > 0) m.recall[l] = double(tp) / double(m.support[l]);
    // The tp form equals 2PR/(P+R) wherever both are defined, and needs no special case when only
    // one of them is (then tp = 0 and F1 = 0, as scikit-learn gives).
    if (tp + fp + fn > 0) m.f1[l] = 2.0 * double(tp) / double(2 * tp + fp + fn);
    m.macro_f1 += m.f1[l];
  }
  m.macro_f1 /= double(n);
  return m;
}

std::string format_confusion(const Metrics& m, const std::vector<std::string>& label_names) {
  const std::size_t n = m.confusion.size();
  LATHE_CHECK(n > 0, "format_confusion: the metrics hold no confusion matrix");
  LATHE_CHECK(label_names.empty() || label_names.size() == n,
              "format_confusion: ", label_names.size(), " label names for ", n, " labels");
  std::vector<std::string> names = label_names;
  if (names.empty()) {
    for (std::size_t l = 0; l < n; ++l) names.push_back(std::to_string(l));
  }
  const std::string corner = "true \\ predicted";
  std::size_t first = columns(corner);
  for (const auto& name : names) first = std::max(first, columns(name));
  // Every count column is as wide as its header and the widest count, plus a gap.
  std::vector<std::size_t> width(n);
  for (std::size_t c = 0; c < n; ++c) {
    width[c] = columns(names[c]);
    for (std::size_t r = 0; r < n; ++r) {
      width[c] = std::max(width[c], std::to_string(m.confusion[r][c]).size());
    }
  }
  std::string out = pad_right(corner, first);
  for (std::size_t c = 0; c < n; ++c) out += "  " + pad_left(names[c], width[c]);
  out += '\n';
  for (std::size_t r = 0; r < n; ++r) {
    out += pad_right(names[r], first);
    for (std::size_t c = 0; c < n; ++c) {
      out += "  " + pad_left(std::to_string(m.confusion[r][c]), width[c]);
    }
    out += '\n';
  }
  out += '\n';
  std::size_t label_width = columns("label");
  for (const auto& name : names) label_width = std::max(label_width, columns(name));
  out += pad_right("label", label_width) + "  precision  recall      f1  support\n";
  for (std::size_t l = 0; l < n; ++l) {
    const int64_t support = l < m.support.size() ? m.support[l] : 0;
    out += pad_right(names[l], label_width);
    out += "  " + pad_left(fixed("%.4f", l < m.precision.size() ? m.precision[l] : 0.0), 9);
    out += "  " + pad_left(fixed("%.4f", l < m.recall.size() ? m.recall[l] : 0.0), 6);
    out += "  " + pad_left(fixed("%.4f", l < m.f1.size() ? m.f1[l] : 0.0), 6);
    out += "  " + pad_left(std::to_string(support), 7) + '\n';
  }
  out += "macro F1 " + fixed("%.4f", m.macro_f1) + ", accuracy " + fixed("%.4f", m.accuracy) +
         ", " + std::to_string(m.count) + " examples\n";
  return out;
}

// ---- statistics ----

std::vector<int64_t> percentiles(std::vector<int64_t> values, const std::vector<double>& pcts) {
  LATHE_CHECK(!values.empty(), "percentiles: no values");
  std::sort(values.begin(), values.end());
  const double n = double(values.size());
  std::vector<int64_t> out;
  out.reserve(pcts.size());
  for (double p : pcts) {
    LATHE_CHECK(p >= 0 && p <= 100, "percentiles: percentile ", p, " is outside [0, 100]");
    // p * n / 100 is exact for whole p (p / 100 * n is not: 7 / 100 * 100 = 7.000000000000001);
    // the tolerance absorbs the same rounding when the caller computed p itself.
    const double rank = std::ceil(p * n / 100.0 - 1e-9);
    const auto index = static_cast<std::size_t>(std::clamp(rank, 1.0, n)) - 1;
    out.push_back(values[index]);
  }
  return out;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long s = std::llround(seconds);
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  } else {
    const long long minutes = std::llround(seconds / 60.0);
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", minutes / 60, minutes % 60);
  }
  return buf;
}

// ---- progress ----

namespace {

double steady_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Progress::Progress(FILE* out, int64_t total_steps, int64_t plain_every,
                   std::function<double()> clock)
    : out_(out), total_(total_steps), plain_every_(plain_every), clock_(std::move(clock)) {
  LATHE_CHECK(out_ != nullptr, "Progress: no output stream");
  LATHE_CHECK(total_ >= 1, "Progress: total_steps must be at least 1, got ", total_);
  LATHE_CHECK(plain_every_ >= 1, "Progress: plain_every must be at least 1, got ", plain_every_);
  if (!clock_) clock_ = steady_seconds;
  terminal_ = ::isatty(::fileno(out_)) == 1;
  start_time_ = clock_();
}

Progress::~Progress() {
  finish();
}

std::string Progress::status_text(int64_t step, int64_t epoch, int64_t num_epochs, double loss_avg,
                                  double examples_per_s, double elapsed, double eta) const {
  const int64_t pct = step * 100 / total_;
  std::string s = std::to_string(step) + "/" + std::to_string(total_) + " (" + std::to_string(pct) +
                  "%) | epoch " + std::to_string(epoch) + "/" + std::to_string(num_epochs) +
                  " | loss " + fixed("%.4f", loss_avg) + " | " + fixed("%.1f", examples_per_s) +
                  " ex/s | elapsed " + format_duration(elapsed) + " | eta " + format_duration(eta);
  return s;
}

void Progress::update(int64_t step, int64_t epoch, int64_t num_epochs, double loss_avg,
                      double examples_per_s) {
  LATHE_CHECK(step >= 1 && step <= total_, "Progress::update: step ", step, " is outside 1..",
              total_);
  if (first_step_ < 0) first_step_ = step - 1;
  const double elapsed = clock_() - start_time_;
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / double(done) * double(total_ - step) : -1.0;
  const std::string status =
      status_text(step, epoch, num_epochs, loss_avg, examples_per_s, elapsed, eta);
  if (!terminal_) {
    if (step % plain_every_ == 0 || step == total_) {
      std::fprintf(out_, "step %s\n", status.c_str());
      std::fflush(out_);
    }
    return;
  }
  constexpr int64_t kBarWidth = 24;
  const int64_t filled = step * kBarWidth / total_;
  bar_ = "[" + std::string(std::size_t(filled), '#') +
         std::string(std::size_t(kBarWidth - filled), '.') + "] " + status;
  draw();
}

void Progress::draw() {
  // A line longer than the terminal wraps, and '\r' then returns only to the start of the last
  // row, so the bar is cut to the width (one column spare: some terminals wrap at the last one).
  std::size_t width = 80;
  winsize ws{};
  if (::ioctl(::fileno(out_), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 1) width = ws.ws_col;
  const std::string line = bar_.size() >= width ? bar_.substr(0, width - 1) : bar_;
  // \x1b[K clears what a longer previous bar left to the right.
  std::fprintf(out_, "\r%s\x1b[K", line.c_str());
  std::fflush(out_);
  bar_shown_ = true;
}

void Progress::message(const std::string& line) {
  if (terminal_ && bar_shown_) {
    std::fprintf(out_, "\r\x1b[K%s\n", line.c_str());
    draw();
    return;
  }
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Progress::finish() {
  if (!terminal_ || !bar_shown_) return;
  std::fputc('\n', out_);
  std::fflush(out_);
  bar_shown_ = false;
  bar_.clear();
}

// ---- JSON ----

namespace {

// Length of the well-formed UTF-8 sequence starting at s[i], or 0 when the byte there starts none
// (stray continuation byte, overlong form, surrogate, beyond U+10FFFF, cut short).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto byte = [&](std::size_t k) -> unsigned {
    return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0x100u;
  };
  const auto cont = [&](std::size_t k) { return (byte(k) & 0xC0u) == 0x80u; };
  const unsigned b0 = byte(0);
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    const unsigned b1 = byte(1);
    const unsigned lo = b0 == 0xE0 ? 0xA0 : 0x80, hi = b0 == 0xED ? 0x9F : 0xBF;
    return b1 >= lo && b1 <= hi && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    const unsigned b1 = byte(1);
    const unsigned lo = b0 == 0xF0 ? 0x90 : 0x80, hi = b0 == 0xF4 ? 0x8F : 0xBF;
    return b1 >= lo && b1 <= hi && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

// A minimal JSON reader, enough to tell a record's "step" and to reject lines that are not JSON
// objects. Values other than the top-level numbers are skipped, not stored.
class JsonScanner {
 public:
  explicit JsonScanner(std::string_view text) : s_(text) {}

  // True when the text is exactly one JSON object; *step is set when it has a numeric "step".
  bool object_with_step(std::optional<double>* step) {
    ws();
    if (!eat('{')) return false;
    ws();
    if (!eat('}')) {
      for (;;) {
        std::string key;
        if (!string(&key)) return false;
        ws();
        if (!eat(':')) return false;
        ws();
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) {
          double v = 0;
          if (!number(&v)) return false;
          if (key == "step") *step = v;
        } else if (!value(0)) {
          return false;
        }
        ws();
        if (eat('}')) break;
        if (!eat(',')) return false;
        ws();
      }
    }
    ws();
    return pos_ == s_.size();
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\r' || s_[pos_] == '\n')) {
      ++pos_;
    }
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }
  bool string(std::string* out) {
    if (!eat('"')) return false;
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return false;
      if (c != '\\') {
        if (out) *out += c;
        continue;
      }
      const char e = peek();
      ++pos_;
      switch (e) {
        case '"':
        case '\\':
        case '/':
          if (out) *out += e;
          break;
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
          if (out) *out += ' ';
          break;
        case 'u':
          for (int k = 0; k < 4; ++k) {
            if (!std::isxdigit(static_cast<unsigned char>(peek()))) return false;
            ++pos_;
          }
          // Only the key "step" matters, which needs no \u escape; any other key just must not
          // compare equal to it.
          if (out) *out += '?';
          break;
        default:
          return false;
      }
    }
    return false;
  }
  bool number(double* v) {
    const std::size_t start = pos_;
    eat('-');
    if (!(peek() >= '0' && peek() <= '9')) return false;
    while (pos_ < s_.size() && std::strchr("0123456789.eE+-", s_[pos_])) ++pos_;
    const auto result = std::from_chars(s_.data() + start, s_.data() + pos_, *v);
    return result.ec == std::errc() && result.ptr == s_.data() + pos_;
  }
  bool value(int depth) {
    if (depth > 64) return false;
    const char c = peek();
    if (c == '"') return string(nullptr);
    if (c == '-' || (c >= '0' && c <= '9')) {
      double ignored = 0;
      return number(&ignored);
    }
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    if (c == '[' || c == '{') {
      const char close = c == '[' ? ']' : '}';
      ++pos_;
      ws();
      if (eat(close)) return true;
      for (;;) {
        if (c == '{') {
          if (!string(nullptr)) return false;
          ws();
          if (!eat(':')) return false;
          ws();
        }
        if (!value(depth + 1)) return false;
        ws();
        if (eat(close)) return true;
        if (!eat(',')) return false;
        ws();
      }
    }
    return false;
  }

  std::string_view s_;
  std::size_t pos_ = 0;
};

}  // namespace

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = utf8_sequence_length(s, i);
    if (len == 0) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (len > 1) {
      out.append(s, i, len);
      i += len;
      continue;
    }
    const char c = s[i++];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, result.ptr);
}

// ---- metrics log ----

JsonlWriter::JsonlWriter(const std::string& path, int64_t truncate_after_step) : path_(path) {
  LATHE_CHECK(!path_.empty(), "JsonlWriter: empty path");
  std::string content;
  bool exists = false;
  {
    std::ifstream in(path_, std::ios::binary);
    if (in) {
      exists = true;
      content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      LATHE_CHECK(!in.bad(), "JsonlWriter: cannot read '", path_, "'");
    }
  }
  if (exists && truncate_after_step >= 0) {
    std::string kept;
    std::size_t begin = 0;
    int64_t line_no = 0;
    // The last line is taken only when its newline made it to disk; a crash in mid-write leaves
    // the record cut short, and the checkpoint being resumed cannot be newer than it anyway.
    for (std::size_t end; (end = content.find('\n', begin)) != std::string::npos; begin = end + 1) {
      ++line_no;
      const std::string_view line(content.data() + begin, end - begin);
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      std::optional<double> step;
      LATHE_CHECK(JsonScanner(line).object_with_step(&step), "JsonlWriter: ", path_, ":", line_no,
                  ": not a JSON object; refusing to rewrite the file");
      if (step && *step <= double(truncate_after_step)) {
        kept.append(line);
        kept += '\n';
      }
    }
    write_file_atomically(path_, kept, "JsonlWriter");
    content = kept;
  }
  file_ = std::fopen(path_.c_str(), "ab");
  LATHE_CHECK(file_ != nullptr, "JsonlWriter: cannot open '", path_,
              "' for appending: ", std::strerror(errno));
  // Appending to a line cut short would glue the next record onto it; end it, so that only the
  // broken record is lost.
  if (!content.empty() && content.back() != '\n') std::fputc('\n', file_);
}

JsonlWriter::~JsonlWriter() {
  if (file_) std::fclose(file_);
}

void JsonlWriter::write(const std::vector<std::pair<std::string, double>>& numbers,
                        const std::vector<std::pair<std::string, std::string>>& strings) {
  std::set<std::string> seen;
  std::string line = "{";
  auto key = [&](const std::string& k) {
    LATHE_CHECK(seen.insert(k).second, "JsonlWriter: key '", k, "' given twice for ", path_);
    if (line.size() > 1) line += ", ";
    line += json_quote(k) + ": ";
  };
  for (const auto& [k, v] : numbers) {
    key(k);
    line += json_number(v);
  }
  for (const auto& [k, v] : strings) {
    key(k);
    line += json_quote(v);
  }
  line += "}\n";
  const bool ok =
      std::fwrite(line.data(), 1, line.size(), file_) == line.size() && std::fflush(file_) == 0;
  LATHE_CHECK(ok, "JsonlWriter: writing to '", path_, "' failed: ", std::strerror(errno));
}

// ---- plots ----

namespace {

struct Range {
  double lo, hi, step;  // axis limits, both on a tick, and the tick spacing
};

// About `target` ticks at 1, 2 or 5 times a power of ten, the limits widened to the ticks around
// the data.
Range nice_range(double lo, double hi, int target = 5) {
  if (!(lo <= hi)) lo = 0, hi = 1;
  if (hi - lo <= 1e-12 * std::max(1.0, std::abs(lo))) {
    const double pad = lo != 0 ? std::abs(lo) * 0.1 : 1.0;
    lo -= pad;
    hi += pad;
  }
  const double raw = (hi - lo) / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  // Tick indices, not products, decide the limits, so 1.0 stays 1.0 rather than 1.0000000000002.
  const double k_lo = std::floor(lo / step + 1e-9), k_hi = std::ceil(hi / step - 1e-9);
  return {k_lo * step, k_hi * step, step};
}

std::string tick_label(double v, double step) {
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0"
  const int decimals = std::clamp(int(-std::floor(std::log10(step) + 1e-9)), 0, 6);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 forbids most control characters even escaped.
        out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
    }
  }
  return out;
}

bool finite_point(const CurvePoint& p) {
  return std::isfinite(p.step) && std::isfinite(p.value);
}

struct Series {
  const std::vector<CurvePoint>* points;
  const char* css_class;
  const char* label;
  const char* color;
  bool markers;  // dev evaluations are few and far apart: mark each
};

// The step range over every series, and the value range over those of one panel.
void extend(const std::vector<CurvePoint>& pts, double* lo, double* hi, bool use_step) {
  for (const auto& p : pts) {
    if (!finite_point(p)) continue;
    const double v = use_step ? p.step : p.value;
    *lo = std::min(*lo, v);
    *hi = std::max(*hi, v);
  }
}

Range value_range(const std::vector<Series>& series) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& s : series) extend(*s.points, &lo, &hi, false);
  return std::isfinite(lo) ? nice_range(lo, hi) : nice_range(0, 1);
}

Range step_range(const std::vector<const std::vector<CurvePoint>*>& all) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto* s : all) extend(*s, &lo, &hi, true);
  return std::isfinite(lo) ? nice_range(lo, hi) : nice_range(0, 1);
}

constexpr double kWidth = 700, kHeight = 450;
constexpr double kPlotLeft = 64, kPlotRight = 540, kLegendLeft = 552;

void svg_panel(std::string& out, const std::string& panel_title, double top, double bottom,
               const Range& x, const std::vector<Series>& series, bool x_tick_labels) {
  const Range y = value_range(series);
  const double w = kPlotRight - kPlotLeft, h = bottom - top;
  const auto px = [&](double v) { return kPlotLeft + (v - x.lo) / (x.hi - x.lo) * w; };
  const auto py = [&](double v) { return bottom - (v - y.lo) / (y.hi - y.lo) * h; };
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\" font-weight=\"bold\">%s</text>\n",
                kPlotLeft, top - 8, xml_escape(panel_title).c_str());
  out += buf;
  // Grid and tick labels first, so that the curves are drawn over them.
  out += "<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n";
  const int ny = int(std::lround((y.hi - y.lo) / y.step)),
            nx = int(std::lround((x.hi - x.lo) / x.step));
  for (int k = 0; k <= ny; ++k) {
    const double yy = py(y.lo + k * y.step);
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n",
                  kPlotLeft, yy, kPlotRight, yy);
    out += buf;
  }
  for (int k = 0; k <= nx; ++k) {
    const double xx = px(x.lo + k * x.step);
    std::snprintf(buf, sizeof buf, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", xx,
                  top, xx, bottom);
    out += buf;
  }
  out += "</g>\n<g font-size=\"11\" fill=\"#333\">\n";
  for (int k = 0; k <= ny; ++k) {
    const double v = y.lo + k * y.step;
    std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                  kPlotLeft - 6, py(v) + 4, tick_label(v, y.step).c_str());
    out += buf;
  }
  if (x_tick_labels) {
    for (int k = 0; k <= nx; ++k) {
      const double v = x.lo + k * x.step;
      std::snprintf(buf, sizeof buf,
                    "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px(v),
                    bottom + 16, tick_label(v, x.step).c_str());
      out += buf;
    }
  }
  out += "</g>\n";
  std::snprintf(buf, sizeof buf,
                "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                "stroke=\"#333\" stroke-width=\"1\"/>\n",
                kPlotLeft, top, w, h);
  out += buf;

  bool any = false;
  for (const auto& s : series) {
    std::string points;
    std::size_t count = 0;
    for (const auto& p : *s.points) {
      if (!finite_point(p)) continue;
      std::snprintf(buf, sizeof buf, "%s%.1f,%.1f", count ? " " : "", px(p.step), py(p.value));
      points += buf;
      ++count;
    }
    if (count == 0) continue;
    any = true;
    out += "<polyline class=\"" + std::string(s.css_class) + "\" fill=\"none\" stroke=\"" +
           s.color + "\" stroke-width=\"1.6\" stroke-linejoin=\"round\" points=\"" + points +
           "\"/>\n";
    if (s.markers && count <= 200) {
      out += "<g fill=\"" + std::string(s.color) + "\">\n";
      for (const auto& p : *s.points) {
        if (!finite_point(p)) continue;
        std::snprintf(buf, sizeof buf, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\"/>\n", px(p.step),
                      py(p.value));
        out += buf;
      }
      out += "</g>\n";
    }
  }
  if (!any) {
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#999\" "
                  "text-anchor=\"middle\">no data yet</text>\n",
                  (kPlotLeft + kPlotRight) / 2, (top + bottom) / 2);
    out += buf;
  }
  // The legend sits right of the plot so that it never hides a curve.
  double ly = top + 12;
  for (const auto& s : series) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                  "stroke-width=\"2\"/>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%s</text>\n",
                  kLegendLeft, ly, kLegendLeft + 20, ly, s.color, kLegendLeft + 26, ly + 4,
                  s.label);
    out += buf;
    ly += 18;
  }
}

std::optional<std::string> find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (!path) return std::nullopt;
  std::string_view rest(path);
  while (true) {
    const std::size_t colon = rest.find(':');
    // An empty PATH entry means the current directory.
    std::string dir(rest.substr(0, colon));
    if (dir.empty()) dir = ".";
    const std::string candidate = dir + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0 && fs::is_regular_file(candidate)) {
      return candidate;
    }
    if (colon == std::string_view::npos) return std::nullopt;
    rest.remove_prefix(colon + 1);
  }
}

// gnuplot's single-quoted strings take everything literally except '' for one quote.
std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "''";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out + "'";
}

// Runs `program script`, its output discarded; true when it exits 0.
bool run_quietly(const std::string& program, const std::string& script) {
  posix_spawn_file_actions_t actions;
  if (posix_spawn_file_actions_init(&actions) != 0) return false;
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::string arg0 = program, arg1 = script;
  char* argv[] = {arg0.data(), arg1.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, program.c_str(), &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return false;
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

void write_training_plot_svg(const std::string& path, const std::string& title,
                             const std::vector<CurvePoint>& train_loss,
                             const std::vector<CurvePoint>& dev_loss,
                             const std::vector<CurvePoint>& dev_accuracy,
                             const std::vector<CurvePoint>& dev_f1) {
  LATHE_CHECK(!path.empty(), "write_training_plot_svg: empty path");
  const Range x = step_range({&train_loss, &dev_loss, &dev_accuracy, &dev_f1});
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n",
                kWidth, kHeight, kWidth, kHeight);
  out += buf;
  out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.1f\" y=\"22\" font-size=\"16\" text-anchor=\"middle\">", kWidth / 2);
  out += buf + xml_escape(title) + "</text>\n";
  svg_panel(out, "loss", 54, 214, x,
            {{&train_loss, "train-loss", "train loss", "#1f77b4", false},
             {&dev_loss, "dev-loss", "dev loss", "#ff7f0e", true}},
            false);
  svg_panel(out, "dev accuracy / macro-F1", 252, 402, x,
            {{&dev_accuracy, "dev-accuracy", "dev accuracy", "#2ca02c", true},
             {&dev_f1, "dev-f1", "dev macro-F1", "#9467bd", true}},
            true);
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.1f\" y=\"440\" font-size=\"12\" text-anchor=\"middle\">step</text>\n",
                (kPlotLeft + kPlotRight) / 2);
  out += buf;
  out += "</svg>\n";
  write_file_atomically(path, out, "write_training_plot_svg");
}

bool write_training_plot_png(const std::string& path, const std::string& title,
                             const std::vector<CurvePoint>& train_loss,
                             const std::vector<CurvePoint>& dev_loss,
                             const std::vector<CurvePoint>& dev_accuracy,
                             const std::vector<CurvePoint>& dev_f1) {
  if (path.empty()) return false;
  const auto gnuplot = find_on_path("gnuplot");
  if (!gnuplot) return false;
  std::string dir;
  const std::string png_tmp = temp_sibling(path);
  bool ok = false;
  try {
    std::string pattern = (fs::temp_directory_path() / "lathe-plot-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) return false;
    dir = pattern;
    // One data file per series; gnuplot is told only about the non-empty ones, because plotting
    // an empty file is an error there.
    auto data = [&](const std::vector<CurvePoint>& pts, const char* name) -> std::string {
      std::string text;
      for (const auto& p : pts) {
        if (finite_point(p)) text += json_number(p.step) + " " + json_number(p.value) + "\n";
      }
      if (text.empty()) return "";
      const std::string file = dir + "/" + name;
      std::ofstream(file) << text;
      return file;
    };
    const Range x = step_range({&train_loss, &dev_loss, &dev_accuracy, &dev_f1});
    std::ostringstream gp;
    gp << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
       << "  set terminal pngcairo size 1000,640 noenhanced font 'sans,10'\n"
       << "} else {\n"
       << "  set terminal png size 1000,640 noenhanced\n"
       << "}\n"
       << "set output " << gnuplot_quote(png_tmp) << "\n"
       << "set multiplot layout 2,1 title " << gnuplot_quote(title) << "\n"
       << "set grid\nset key outside right top\n"
       << "set xrange [" << json_number(x.lo) << ":" << json_number(x.hi) << "]\n";
    auto panel =
        [&](const std::string& panel_title, const std::string& xlabel,
            const std::vector<std::tuple<std::string, const char*, const char*, bool>>& series) {
          gp << "set title " << gnuplot_quote(panel_title) << "\n"
             << "set xlabel " << gnuplot_quote(xlabel) << "\n";
          std::string plots;
          for (const auto& [file, label, color, markers] : series) {
            if (file.empty()) continue;
            if (!plots.empty()) plots += ", ";
            plots += gnuplot_quote(file) + " using 1:2 with " +
                     (markers ? "linespoints pt 7 ps 0.6" : "lines") + " lw 2 lc rgb '" + color +
                     "' title " + gnuplot_quote(label);
          }
          if (plots.empty()) {
            // Axes only: a function below the visible range draws nothing.
            gp << "set yrange [0:1]\nplot -1 notitle\nset autoscale y\n";
          } else {
            gp << "plot " << plots << "\n";
          }
        };
    panel("loss", "",
          {{data(train_loss, "train_loss.dat"), "train loss", "#1f77b4", false},
           {data(dev_loss, "dev_loss.dat"), "dev loss", "#ff7f0e", true}});
    panel("dev accuracy / macro-F1", "step",
          {{data(dev_accuracy, "dev_accuracy.dat"), "dev accuracy", "#2ca02c", true},
           {data(dev_f1, "dev_f1.dat"), "dev macro-F1", "#9467bd", true}});
    gp << "unset multiplot\nset output\n";
    const std::string script = dir + "/plot.gp";
    std::ofstream(script) << gp.str();
    if (run_quietly(*gnuplot, script)) {
      // Check the signature: gnuplot can exit 0 after writing nothing useful.
      std::ifstream in(png_tmp, std::ios::binary);
      char sig[8] = {};
      in.read(sig, 8);
      if (in && std::memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0) {
        std::error_code ec;
        fs::rename(png_tmp, path, ec);
        ok = !ec;
      }
    }
  } catch (...) {
    ok = false;
  }
  std::error_code ignored;
  if (!ok) fs::remove(png_tmp, ignored);
  if (!dir.empty()) fs::remove_all(dir, ignored);
  return ok;
}

}  // namespace lathe::finetune
