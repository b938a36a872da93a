// lathe-finetune's reporting pieces (examples/finetune/report.h). Expected numbers are worked out
// by hand in the comments, not by running the code under test.
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "examples/finetune/report.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace lathe::finetune;
using Catch::Matchers::Contains;
using lathe::testing::check_error;

namespace {

// A fresh directory under the system temp folder, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lathe-report-test-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string read_stream(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
  return out;
}

}  // namespace

// ---- compute_metrics ----

TEST_CASE("compute_metrics: three labels worked by hand", "[metrics]") {
  const std::vector<int64_t> truth = {0, 0, 0, 1, 1, 2, 2, 2, 2, 0};
  const std::vector<int64_t> predicted = {0, 1, 0, 1, 2, 2, 2, 1, 2, 0};
  // confusion [true][pred]:  row 0: 3 1 0 (support 4)
  //                          row 1: 0 1 1 (support 2)
  //                          row 2: 0 1 3 (support 4)
  // accuracy = (3 + 1 + 3) / 10 = 0.7
  // label 0: tp 3, predicted 3 -> P = 1,   R = 3/4, F1 = 2*3 / (6 + 0 + 1) = 6/7
  // label 1: tp 1, predicted 3 -> P = 1/3, R = 1/2, F1 = 2*1 / (2 + 2 + 1) = 2/5
  // label 2: tp 3, predicted 4 -> P = 3/4, R = 3/4, F1 = 3/4
  // macro F1 = (6/7 + 2/5 + 3/4) / 3 = (120 + 56 + 105) / 140 / 3 = 281/420
  const Metrics m = compute_metrics(predicted, truth, 3);
  CHECK(m.count == 10);
  CHECK(m.loss == 0);
  CHECK(m.confusion == std::vector<std::vector<int64_t>>{{3, 1, 0}, {0, 1, 1}, {0, 1, 3}});
  CHECK(m.support == std::vector<int64_t>{4, 2, 4});
  CHECK(m.accuracy == Approx(0.7).epsilon(1e-15));
  const std::vector<double> p = {1.0, 1.0 / 3, 0.75}, r = {0.75, 0.5, 0.75},
                            f = {6.0 / 7, 0.4, 0.75};
  for (std::size_t l = 0; l < 3; ++l) {
    INFO("label " << l);
    CHECK(m.precision[l] == Approx(p[l]).epsilon(1e-15));
    CHECK(m.recall[l] == Approx(r[l]).epsilon(1e-15));
    CHECK(m.f1[l] == Approx(f[l]).epsilon(1e-15));
  }
  CHECK(m.macro_f1 == Approx(281.0 / 420).epsilon(1e-15));
}

TEST_CASE("compute_metrics: labels without examples count as F1 0 (zero_division=0)", "[metrics]") {
  // Label 2 is neither true nor predicted anywhere: P = R = F1 = 0, and it still counts in the
  // macro mean. label 0: tp 1 of 1 predicted, 2 true -> P 1, R 1/2, F1 2/3; label 1: tp 2 of 3
  // predicted, 2 true -> P 2/3, R 1, F1 4/5. macro F1 = (2/3 + 4/5 + 0) / 3 = 22/45.
  const Metrics m = compute_metrics({0, 1, 1, 1}, {0, 0, 1, 1}, 3);
  CHECK(m.precision == std::vector<double>{1.0, 2.0 / 3, 0.0});
  CHECK(m.recall == std::vector<double>{0.5, 1.0, 0.0});
  CHECK(m.f1[0] == Approx(2.0 / 3).epsilon(1e-15));
  CHECK(m.f1[1] == Approx(0.8).epsilon(1e-15));
  CHECK(m.f1[2] == 0.0);
  CHECK(m.macro_f1 == Approx(22.0 / 45).epsilon(1e-15));
  CHECK(m.accuracy == 0.75);

  // Predicted but never true: precision 0/1 = 0, recall 0/0 -> 0, F1 0.
  // label 0: P 1, R 1/2, F1 2/3. macro = 1/3.
  const Metrics only_fp = compute_metrics({0, 1}, {0, 0}, 2);
  CHECK(only_fp.precision == std::vector<double>{1.0, 0.0});
  CHECK(only_fp.recall == std::vector<double>{0.5, 0.0});
  CHECK(only_fp.f1[1] == 0.0);
  CHECK(only_fp.macro_f1 == Approx(1.0 / 3).epsilon(1e-15));
}

TEST_CASE("compute_metrics: bad input is an error naming it", "[metrics]") {
  check_error([] { compute_metrics({}, {}, 2); }, {"compute_metrics", "no examples"});
  check_error(
      [] {
        compute_metrics({0, 1}, {0}, 2);
      },
      {"compute_metrics", "2 predictions", "1 true labels"});
  check_error([] { compute_metrics({0}, {0}, 0); }, {"num_labels", "0"});
  check_error(
      [] {
        compute_metrics({0, 3}, {0, 1}, 3);
      },
      {"predicted label 3", "example 1", "0..2"});
  check_error([] { compute_metrics({0, 1}, {-1, 1}, 3); }, {"true label -1", "example 0"});
}

TEST_CASE("format_confusion: table with label names and per-label lines", "[metrics]") {
  const Metrics m = compute_metrics({0, 1, 1, 1}, {0, 0, 1, 1}, 3);
  // Columns are as wide as their header ("neutral" is 7), rows start with a 16-column name field
  // (the width of "true \ predicted"); numbers are from the zero_division case above.
  const std::string expected =
      "true \\ predicted  neg  pos  neutral\n"
      "neg                 1    1        0\n"
      "pos                 0    2        0\n"
      "neutral             0    0        0\n"
      "\n"
      "label    precision  recall      f1  support\n"
      "neg         1.0000  0.5000  0.6667        2\n"
      "pos         0.6667  1.0000  0.8000        2\n"
      "neutral     0.0000  0.0000  0.0000        0\n"
      "macro F1 0.4889, accuracy 0.7500, 4 examples\n";
  CHECK(format_confusion(m, {"neg", "pos", "neutral"}) == expected);
  // Without names the ids head the rows and columns.
  CHECK_THAT(format_confusion(m, {}), Contains("true \\ predicted  0  1  2\n"));
  check_error([&] { format_confusion(m, {"a", "b"}); }, {"format_confusion", "2 label names"});
}

// ---- percentiles, durations ----

TEST_CASE("percentiles: nearest rank on the sorted values", "[stats]") {
  // Sorted: 15 20 35 40 50. Ranks ceil(p/100 * 5): p5 -> 1, p30 -> 2 (1.5), p40 -> 2, p50 -> 3
  // (2.5), p100 -> 5; p0 is the minimum.
  CHECK(percentiles({50, 15, 40, 20, 35}, {0, 5, 30, 40, 50, 100}) ==
        std::vector<int64_t>{15, 15, 20, 20, 35, 50});
  std::vector<int64_t> hundred;
  for (int64_t v = 100; v >= 1; --v) hundred.push_back(v);
  // 1..100: the p-th percentile is p itself (7/100*100 is 7.000000000000001 in floating point;
  // it must still be rank 7), p99.5 -> rank ceil(99.5) = 100.
  CHECK(percentiles(hundred, {7, 50, 90, 95, 99, 99.5}) ==
        std::vector<int64_t>{7, 50, 90, 95, 99, 100});
  CHECK(percentiles({42}, {0, 50, 100}) == std::vector<int64_t>{42, 42, 42});
  check_error([] { percentiles({}, {50}); }, {"percentiles", "no values"});
  check_error([] { percentiles({1, 2}, {101}); }, {"percentile 101", "[0, 100]"});
  check_error([] { percentiles({1, 2}, {-1}); }, {"percentile -1"});
}

TEST_CASE("format_duration: seconds, minutes, hours", "[stats]") {
  CHECK(format_duration(0) == "0s");
  CHECK(format_duration(45.2) == "45s");
  CHECK(format_duration(59.4) == "59s");
  CHECK(format_duration(59.6) == "1m00s");  // rounds to 60 s
  CHECK(format_duration(192) == "3m12s");
  CHECK(format_duration(3599) == "59m59s");
  CHECK(format_duration(3720) == "1h02m");
  CHECK(format_duration(3749) == "1h02m");  // 62.48 min
  CHECK(format_duration(3751) == "1h03m");  // 62.52 min
  CHECK(format_duration(100 * 3600 + 5 * 60) == "100h05m");
  CHECK(format_duration(-1) == "?");
  CHECK(format_duration(std::nan("")) == "?");
  CHECK(format_duration(INFINITY) == "?");
}

// ---- Progress ----

TEST_CASE("Progress: plain lines every N steps and at the last one when not a terminal",
          "[progress]") {
  FILE* out = std::tmpfile();
  REQUIRE(out != nullptr);
  double now = 100.0;
  {
    Progress progress(out, 120, 50, [&] { return now; });
    CHECK_FALSE(progress.is_terminal());
    for (int64_t step = 1; step <= 120; ++step) {
      now = 100.0 + 0.5 * double(step);  // half a second per step
      progress.update(step, step <= 60 ? 1 : 2, 2, 0.69314718, 64.0);
      if (step == 60) progress.message("dev loss 0.5000");
    }
    progress.finish();
  }
  // step 50: 25 s elapsed, 0.5 s/step * 70 left = 35 s; 50*100/120 = 41%.
  // step 100: 50 s elapsed, 20 left = 10 s. step 120 (the last): 60 s, nothing left.
  CHECK(read_stream(out) ==
        "step 50/120 (41%) | epoch 1/2 | loss 0.6931 | 64.0 ex/s | elapsed 25s | eta 35s\n"
        "dev loss 0.5000\n"
        "step 100/120 (83%) | epoch 2/2 | loss 0.6931 | 64.0 ex/s | elapsed 50s | eta 10s\n"
        "step 120/120 (100%) | epoch 2/2 | loss 0.6931 | 64.0 ex/s | elapsed 1m00s | eta 0s\n");
  std::fclose(out);
}

TEST_CASE("Progress: a resumed run times only the steps it ran", "[progress]") {
  FILE* out = std::tmpfile();
  REQUIRE(out != nullptr);
  double now = 0.0;
  Progress progress(out, 200, 100, [&] { return now; });
  // Resumed after step 60: steps 61..100 take 2 s each -> 80 s for 40 steps; 100 left -> 200 s.
  for (int64_t step = 61; step <= 100; ++step) {
    now = 2.0 * double(step - 60);
    progress.update(step, 1, 1, 1.25, 10);
  }
  CHECK(read_stream(out) ==
        "step 100/200 (50%) | epoch 1/1 | loss 1.2500 | 10.0 ex/s | elapsed 1m20s | eta 3m20s\n");
  check_error([&] { progress.update(201, 1, 1, 0, 0); }, {"Progress::update", "step 201"});
  std::fclose(out);
}

TEST_CASE("Progress: on a terminal the bar is redrawn in place", "[progress]") {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  // Raw mode: the pty must pass the bytes through unchanged (no \n -> \r\n).
  termios raw{};
  REQUIRE(::tcgetattr(slave, &raw) == 0);
  ::cfmakeraw(&raw);
  REQUIRE(::tcsetattr(slave, TCSANOW, &raw) == 0);
  FILE* out = ::fdopen(slave, "w");
  REQUIRE(out != nullptr);
  double now = 0.0;
  {
    Progress progress(out, 4, 50, [&] { return now; });
    CHECK(progress.is_terminal());
    now = 1.0;
    progress.update(1, 1, 1, 0.5, 8);
    progress.message("hello");
    now = 2.0;
    progress.update(2, 1, 1, 0.25, 8);
  }  // the destructor ends the bar's line
  std::fflush(out);
  // The pty hands bytes to the master side asynchronously: read until it stays quiet.
  std::string got;
  char buf[4096];
  for (pollfd pfd{master, POLLIN, 0}; ::poll(&pfd, 1, 300) > 0;) {
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, std::size_t(n));
  }
  std::fclose(out);
  ::close(master);
  // 24-cell bar: 1/4 -> 6 cells, 2/4 -> 12. 1 s per step: eta 3 s, then 2 s.
  const std::string bar1 =
      "[######..................] 1/4 (25%) | epoch 1/1 | loss 0.5000 | 8.0 ex/s | elapsed 1s"
      " | eta 3s";
  const std::string bar2 =
      "[############............] 2/4 (50%) | epoch 1/1 | loss 0.2500 | 8.0 ex/s | elapsed 2s"
      " | eta 2s";
  // A new pty reports 0 columns; the bar then assumes 80 and is cut to 79.
  CHECK(got == "\r" + bar1.substr(0, 79) + "\x1b[K" + "\r\x1b[Khello\n" + "\r" +
                   bar1.substr(0, 79) + "\x1b[K" + "\r" + bar2.substr(0, 79) + "\x1b[K" + "\n");
}

TEST_CASE("Progress: bad arguments", "[progress]") {
  check_error([] { Progress(stderr, 0); }, {"Progress", "total_steps", "0"});
  check_error([] { Progress(stderr, 10, 0); }, {"plain_every"});
  check_error([] { Progress(nullptr, 10); }, {"Progress", "no output"});
}

// ---- JsonlWriter ----

TEST_CASE("JsonlWriter: numbers and strings, one flushed line each", "[jsonl]") {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  JsonlWriter w(path);
  w.write({{"step", 3}, {"loss", 0.1}, {"lr", 2e-05}, {"nan", std::nan("")}},
          {{"split", "dev"}, {"note", "a \"quoted\"\ttab\\ \x01 caf\xc3\xa9 bad\xff"}});
  // Flushed: readable before the writer is closed.
  CHECK(read_file(path) ==
        "{\"step\": 3, \"loss\": 0.1, \"lr\": 2e-05, \"nan\": null, \"split\": \"dev\", "
        "\"note\": \"a \\\"quoted\\\"\\ttab\\\\ \\u0001 caf\xc3\xa9 bad\\ufffd\"}\n");
  check_error([&] { w.write({{"step", 1}}, {{"step", "x"}}); }, {"JsonlWriter", "'step'", "twice"});
}

TEST_CASE("JsonlWriter: resuming keeps the records up to the checkpoint's step", "[jsonl]") {
  TempDir dir;
  const std::string path = dir.file("metrics.jsonl");
  {
    JsonlWriter w(path);
    for (int step = 1; step <= 5; ++step) {
      w.write({{"step", step}, {"loss", 1.0 / step}}, {{"split", "train"}});
    }
  }
  {
    JsonlWriter w(path, 3);
    w.write({{"step", 4}, {"loss", 0.125}}, {{"split", "resumed"}});
  }
  CHECK(read_file(path) ==
        "{\"step\": 1, \"loss\": 1, \"split\": \"train\"}\n"
        "{\"step\": 2, \"loss\": 0.5, \"split\": \"train\"}\n"
        "{\"step\": 3, \"loss\": 0.3333333333333333, \"split\": \"train\"}\n"
        "{\"step\": 4, \"loss\": 0.125, \"split\": \"resumed\"}\n");
  // Without truncation it only appends.
  {
    JsonlWriter w(path);
    w.write({{"step", 5}});
  }
  CHECK_THAT(read_file(path), Contains("\"resumed\"}\n{\"step\": 5}\n"));
}

TEST_CASE("JsonlWriter: a cut-off last line, missing steps and other JSON on resume", "[jsonl]") {
  TempDir dir;
  const std::string path = dir.file("m.jsonl");
  // A record without "step" is dropped, nested values are skipped over, and the last line (no
  // newline: the process died while writing it) is dropped even though its step is small.
  write_text(path,
             "{\"step\": 1, \"x\": [1, {\"step\": 99}], \"s\": \"}\\\"\"}\n"
             "\n"
             "{\"config\": \"lr=1e-4\"}\n"
             "{\"loss\": 2, \"step\": 2.0e0}\n"
             "{\"step\": 7}\n"
             "{\"step\": 1, \"lo");
  {
    JsonlWriter w(path, 2);
    w.write({{"step", 3}});
  }
  CHECK(read_file(path) ==
        "{\"step\": 1, \"x\": [1, {\"step\": 99}], \"s\": \"}\\\"\"}\n"
        "{\"loss\": 2, \"step\": 2.0e0}\n"
        "{\"step\": 3}\n");

  // Appending after a cut-off line starts a new line rather than gluing onto it.
  write_text(path, "{\"step\": 1}\n{\"step\": 2, \"lo");
  {
    JsonlWriter w(path);
    w.write({{"step", 3}});
  }
  CHECK(read_file(path) == "{\"step\": 1}\n{\"step\": 2, \"lo\n{\"step\": 3}\n");

  // Garbage in the middle is not silently dropped.
  write_text(path, "{\"step\": 1}\nnot json\n{\"step\": 2}\n");
  check_error([&] { JsonlWriter(path, 5); }, {"JsonlWriter", "m.jsonl:2", "not a JSON object"});
  CHECK(read_file(path) == "{\"step\": 1}\nnot json\n{\"step\": 2}\n");  // left untouched

  // A missing file is simply created, whatever the step.
  const std::string fresh = dir.file("fresh.jsonl");
  {
    JsonlWriter w(fresh, 10);
    w.write({{"step", 11}});
  }
  CHECK(read_file(fresh) == "{\"step\": 11}\n");
  check_error([&] { JsonlWriter(dir.file("no/such/dir/m.jsonl")); },
              {"JsonlWriter", "cannot open", "no/such/dir/m.jsonl"});
}

TEST_CASE("json_number: shortest text that reads back", "[jsonl]") {
  CHECK(json_number(3) == "3");
  CHECK(json_number(-0.5) == "-0.5");
  CHECK(json_number(0.1) == "0.1");
  CHECK(json_number(1e-5) == "1e-05");
  CHECK(json_number(123456789012.0) == "123456789012");
  CHECK(json_number(INFINITY) == "null");
}

// ---- SVG plot ----

namespace {

// Tags balance: every <x ...> is closed by </x> in order, or self-closed; no stray '<' or '&'.
bool balanced_xml(const std::string& s, std::string* why) {
  std::vector<std::string> stack;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '&') {
      const std::size_t semi = s.find(';', i);
      const std::string entity = s.substr(i, semi == std::string::npos ? 0 : semi - i + 1);
      if (entity != "&amp;" && entity != "&lt;" && entity != "&gt;" && entity != "&quot;" &&
          entity != "&apos;") {
        *why = "bad entity at " + std::to_string(i);
        return false;
      }
      continue;
    }
    if (s[i] == '>') {
      *why = "stray '>' at " + std::to_string(i);
      return false;
    }
    if (s[i] != '<') continue;
    const std::size_t end = s.find('>', i);
    if (end == std::string::npos) {
      *why = "unclosed '<'";
      return false;
    }
    std::string tag = s.substr(i + 1, end - i - 1);
    i = end;
    if (tag.find('<') != std::string::npos) {
      *why = "'<' inside a tag";
      return false;
    }
    if (tag.starts_with('/')) {
      if (stack.empty() || stack.back() != tag.substr(1)) {
        *why = "</" + tag.substr(1) + "> closes " + (stack.empty() ? "nothing" : stack.back());
        return false;
      }
      stack.pop_back();
    } else if (!tag.ends_with('/')) {
      stack.push_back(tag.substr(0, tag.find(' ')));
    }
  }
  if (!stack.empty()) *why = "<" + stack.back() + "> never closed";
  return stack.empty();
}

// The number of "x,y" pairs of <polyline class="name">; -1 when there is none.
int polyline_points(const std::string& svg, const std::string& name) {
  const std::size_t at = svg.find("<polyline class=\"" + name + "\"");
  if (at == std::string::npos) return -1;
  const std::size_t begin = svg.find("points=\"", at) + 8;
  const std::string points = svg.substr(begin, svg.find('"', begin) - begin);
  std::istringstream in(points);
  int n = 0;
  for (std::string pair; in >> pair; ++n) {
    double x = 0, y = 0;
    char comma = 0;
    std::istringstream p(pair);
    if (!(p >> x >> comma >> y) || comma != ',') return -2;
    // Inside the 700x450 canvas.
    if (x < 0 || x > 700 || y < 0 || y > 450) return -3;
  }
  return n;
}

}  // namespace

TEST_CASE("write_training_plot_svg: two panels, one polyline per series", "[plot]") {
  TempDir dir;
  const std::string path = dir.file("plot.svg");
  std::vector<CurvePoint> train, dev_loss, acc, f1;
  for (int s = 10; s <= 300; s += 10) train.push_back({double(s), 1.0 / s + 0.2});
  train.push_back({310, std::nan("")});  // skipped, not drawn as NaN
  for (int s = 100; s <= 300; s += 100) {
    dev_loss.push_back({double(s), 0.5 - s / 1000.0});
    acc.push_back({double(s), 0.7 + s / 2000.0});
    f1.push_back({double(s), 0.6 + s / 2000.0});
  }
  write_training_plot_svg(path, "MiniLM on <sst2> & co", train, dev_loss, acc, f1);
  const std::string svg = read_file(path);
  CHECK(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  CHECK_THAT(svg, Contains("width=\"700\" height=\"450\""));
  CHECK_THAT(svg, Contains(">MiniLM on &lt;sst2&gt; &amp; co</text>"));
  CHECK_THAT(svg, Contains(">loss</text>"));
  CHECK_THAT(svg, Contains(">dev accuracy / macro-F1</text>"));
  CHECK_THAT(svg, Contains(">train loss</text>"));  // legend
  CHECK(polyline_points(svg, "train-loss") == 30);
  CHECK(polyline_points(svg, "dev-loss") == 3);
  CHECK(polyline_points(svg, "dev-accuracy") == 3);
  CHECK(polyline_points(svg, "dev-f1") == 3);
  CHECK(svg.find("<script") == std::string::npos);
  CHECK(svg.find("href") == std::string::npos);
  std::string why;
  CHECK(balanced_xml(svg, &why));
  INFO(why);
  // The step axis runs 0..300 in ticks of 50 (300 / 5 = 60 -> 50): the 300 label is the last.
  CHECK_THAT(svg, Contains(">300</text>"));
  CHECK_THAT(svg, Contains(">0</text>"));
  // Only the temporary's rename leaves a file behind.
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++files;
  CHECK(files == 1);
}

TEST_CASE("write_training_plot_svg: empty series draw axes only", "[plot]") {
  TempDir dir;
  const std::string path = dir.file("empty.svg");
  write_training_plot_svg(path, "nothing yet", {}, {}, {}, {});
  const std::string svg = read_file(path);
  CHECK(polyline_points(svg, "train-loss") == -1);
  CHECK(polyline_points(svg, "dev-f1") == -1);
  CHECK_THAT(svg, Contains("no data yet"));
  std::string why;
  CHECK(balanced_xml(svg, &why));
  INFO(why);
  // Only dev points, one of them: both panels still get a finite range.
  write_training_plot_svg(path, "one", {}, {{5, 0.3}}, {{5, 0.9}}, {});
  const std::string one = read_file(path);
  CHECK(polyline_points(one, "dev-loss") == 1);
  CHECK(polyline_points(one, "dev-accuracy") == 1);
  CHECK(one.find("nan") == std::string::npos);
  CHECK(one.find("inf") == std::string::npos);
  check_error([&] { write_training_plot_svg(dir.file("no/dir/x.svg"), "t", {}, {}, {}, {}); },
              {"write_training_plot_svg", "no/dir/x.svg"});
}

TEST_CASE("write_training_plot_png: false without gnuplot, a PNG with it", "[plot]") {
  TempDir dir;
  const std::string path = dir.file("plot.png");
  const std::vector<CurvePoint> train = {{1, 0.7}, {2, 0.6}, {3, 0.5}};
  const std::vector<CurvePoint> acc = {{3, 0.8}};
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", dir.path.c_str(), 1);  // a directory without gnuplot
  const bool without = write_training_plot_png(path, "t", train, {}, acc, {});
  ::setenv("PATH", saved.c_str(), 1);
  CHECK_FALSE(without);
  CHECK_FALSE(fs::exists(path));
  // With the real PATH it works exactly when gnuplot is installed.
  bool have_gnuplot = false;
  for (std::string_view rest = saved; !rest.empty();) {
    const std::size_t colon = rest.find(':');
    if (::access((std::string(rest.substr(0, colon)) + "/gnuplot").c_str(), X_OK) == 0) {
      have_gnuplot = true;
    }
    rest = colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
  }
  const bool with = write_training_plot_png(path, "it's a \"title\"", train, {}, acc, {});
  CHECK(with == have_gnuplot);
  if (with) CHECK(read_file(path).starts_with("\x89PNG\r\n\x1a\n"));
}
