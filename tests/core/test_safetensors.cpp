// safetensors reader and writer: round trips over every dtype, zero-copy loading, a file written
// by the reference implementation (tests/golden/make_safetensors_golden.py), the real MiniLM
// checkpoint when fetched, and the catalogue of malformed files, each written here byte by byte.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "lathe/io/safetensors.h"
#include "support/test_util.h"

namespace fs = std::filesystem;
using namespace lathe;
using lathe::io::SafetensorsFile;
using lathe::testing::check_error;

namespace {

// A fresh directory, removed with its contents at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "lathe-st-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
  size_t entries() const {
    return size_t(std::distance(fs::directory_iterator(path), fs::directory_iterator()));
  }
};

fs::path golden_dir() {
  return fs::path(__FILE__).parent_path().parent_path() / "golden";
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file: the little-endian length of `header`, `header`, then `data`.
std::string st_file(const std::string& header, const std::string& data,
                    uint64_t length = std::numeric_limits<uint64_t>::max()) {
  if (length == std::numeric_limits<uint64_t>::max()) length = header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((length >> (8 * i)) & 0xff);
  return out + header + data;
}

template <class T>
Tensor make(const Shape& shape, const std::vector<T>& values) {
  Tensor t = Tensor::empty(shape, TensorOptions(dtype_v<T>));
  REQUIRE(size_t(t.numel()) == values.size());
  T* dst = t.data<T>();
  for (size_t i = 0; i < values.size(); ++i) dst[i] = values[i];  // vector<bool> has no data()
  return t;
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

TEST_CASE("safetensors: save then load round-trips every dtype, metadata and edge shapes",
          "[safetensors][cpu-only]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  std::map<std::string, Tensor> tensors;
  tensors["a.f32"] = make<float>({2, 3}, {0.5f, -1.25f, 3.0f, 1e-30f, -0.0f, 7.0f});
  tensors["b.f64"] = make<double>({3}, {1.0 / 3.0, -2.5e300, 4.9e-324});
  tensors["c.f16"] = make<Half>({2}, {Half(1.5f), Half(-65504.0f)});
  tensors["d.bf16"] = make<BFloat16>({2}, {BFloat16(3.140625f), BFloat16(-2.0f)});
  tensors["e.i32"] = make<int32_t>(
      {2, 2}, {1, -2, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()});
  tensors["f.i64"] = make<int64_t>({2}, {int64_t(1) << 40, -7});
  tensors["g.bool"] = make<bool>({3}, {true, false, true});
  tensors["h.scalar"] = make<float>({}, {42.5f});
  tensors["i.empty"] = Tensor::empty({0, 4}, TensorOptions(DType::F32));
  // A non-contiguous view is written as its logical (row-major) values.
  tensors["j.transposed"] = make<double>({2, 3}, {1, 2, 3, 4, 5, 6}).t();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo \"q\""}};
  io::save_safetensors(path, tensors, metadata);
  CHECK(dir.entries() == 1);  // no temporary file left behind

  const std::string bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[size_t(i)]);
  CHECK(n % 8 == 0);  // padded as the reference implementation pads
  CHECK(bytes[8 + n - 1] != '\0');

  auto file = SafetensorsFile::open(path);
  CHECK(file.metadata() == metadata);
  CHECK(file.names() == std::vector<std::string>{"a.f32", "b.f64", "c.f16", "d.bf16", "e.i32",
                                                 "f.i64", "g.bool", "h.scalar", "i.empty",
                                                 "j.transposed"});
  CHECK(file.info("c.f16").dtype == io::StDType::F16);
  CHECK(file.info("d.bf16").dtype == io::StDType::BF16);
  CHECK(file.info("h.scalar").shape.empty());
  auto loaded = io::load_safetensors(path);
  REQUIRE(loaded.size() == tensors.size());
  for (const auto& [name, original] : tensors) {
    INFO(name);
    const Tensor& t = loaded.at(name);
    CHECK(t.dtype() == original.dtype());
    CHECK(t.shape() == original.shape());
    const auto a = t.to_vector<double>(), b = original.to_vector<double>();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      // Bit-exact, including -0.0 and denormals.
      CHECK(std::memcmp(&a[i], &b[i], sizeof(double)) == 0);
    }
  }
  CHECK(loaded.at("e.i32").to_vector<int64_t>() ==
        std::vector<int64_t>{1, -2, std::numeric_limits<int32_t>::max(),
                             std::numeric_limits<int32_t>::min()});
  CHECK(loaded.at("f.i64").to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 40, -7});
  CHECK(loaded.at("j.transposed").to_vector<double>() == std::vector<double>{1, 4, 2, 5, 3, 6});

  // Overwriting replaces the file atomically and leaves no temporary behind.
  io::save_safetensors(path, {{"only", make<float>({1}, {9.0f})}});
  CHECK(dir.entries() == 1);
  CHECK(io::load_safetensors(path).at("only").item<double>() == 9.0);
  CHECK(SafetensorsFile::open(path).metadata().empty());
}

TEST_CASE("safetensors: an aligned tensor is loaded zero-copy and outlives the file object",
          "[safetensors][cpu-only]") {
  TempDir dir;
  const std::string path = dir.file("w.safetensors");
  io::save_safetensors(path, {{"w", make<float>({2, 2}, {1, 2, 3, 4})},
                              {"b", make<bool>({3}, {true, false, true})}});
  Tensor w;
  {
    auto file = SafetensorsFile::open(path);
    w = file.tensor("w");
    const auto* p = static_cast<const uint8_t*>(w.data_ptr());
    CHECK(p >= file.bytes());
    CHECK(p + 16 <= file.bytes() + file.size());
    CHECK(p == file.bytes() + file.header().data_offset + file.info("w").begin);
  }
  // The mapping is alive as long as the tensor, and writes stay private to the process.
  CHECK(w.to_vector<double>() == std::vector<double>{1, 2, 3, 4});
  w.fill_(7.0);
  CHECK(w.to_vector<double>() == std::vector<double>{7, 7, 7, 7});
  CHECK(io::load_safetensors(path).at("w").to_vector<double>() == std::vector<double>{1, 2, 3, 4});
}

TEST_CASE("safetensors: reads a file written by the reference implementation",
          "[safetensors][golden][cpu-only]") {
  const std::string path = (golden_dir() / "safetensors" / "golden.safetensors").string();
  auto file = SafetensorsFile::open(path);
  CHECK(file.metadata() ==
        std::map<std::string, std::string>{{"format", "pt"}, {"source", "lathe golden"}});
  CHECK(file.names().size() == 11);
  auto t = file.tensors();
  std::vector<double> weight;
  for (int i = 0; i < 12; ++i) weight.push_back(i * 0.25 - 1.0);
  CHECK(t.at("f32.weight").shape() == Shape{3, 4});
  CHECK(t.at("f32.weight").to_vector<double>() == weight);
  // The reference writer aligns the data section, so this F32 tensor aliases the mapping.
  const auto* p = static_cast<const uint8_t*>(t.at("f32.weight").data_ptr());
  CHECK((p >= file.bytes() && p < file.bytes() + file.size()));
  CHECK(t.at("f64.values").to_vector<double>() == std::vector<double>{1.0 / 3.0, -2.5, 1e300});
  CHECK(t.at("f16.half").dtype() == DType::F16);
  CHECK(t.at("f16.half").to_vector<double>() ==
        std::vector<double>{1.0, -0.5, 65504.0, std::ldexp(1.0, -14), std::ldexp(1.0, -24)});
  CHECK(t.at("bf16.brain").dtype() == DType::BF16);
  CHECK(t.at("bf16.brain").to_vector<double>() == std::vector<double>{1.0, -2.0, 3.140625, 0.0});
  CHECK(t.at("i64.ids").to_vector<int64_t>() ==
        std::vector<int64_t>{0, -1, int64_t(1) << 40, std::numeric_limits<int64_t>::min()});
  CHECK(t.at("i32.counts").shape() == Shape{2, 2});
  CHECK(t.at("i32.counts").to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 2147483647});
  // I8 / U8 have no lathe dtype: they load widened to I32.
  CHECK(file.info("i8.small").dtype == io::StDType::I8);
  CHECK(t.at("i8.small").dtype() == DType::I32);
  CHECK(t.at("i8.small").to_vector<int64_t>() == std::vector<int64_t>{-128, -1, 0, 127});
  CHECK(t.at("u8.bytes").to_vector<int64_t>() == std::vector<int64_t>{0, 1, 200, 255});
  CHECK(t.at("bool.mask").dtype() == DType::Bool);
  CHECK(t.at("bool.mask").to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1});
  CHECK(t.at("scalar").dim() == 0);
  CHECK(t.at("scalar").item<double>() == 42.5);
  CHECK(t.at("empty").shape() == Shape{0, 4});
  check_error([&] { file.tensor("missing"); }, {path, "no tensor named \"missing\""});
}

TEST_CASE("safetensors: malformed files are rejected with the file and the problem named",
          "[safetensors][cpu-only]") {
  TempDir dir;
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\x01');
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<std::string> fragments;
  };
  const std::vector<Case> cases = {
      {"empty file", "", {"0 bytes, shorter than the 8-byte header length"}},
      {"truncated file", std::string("\x10\x00\x00", 3), {"3 bytes, shorter than"}},
      {"header length beyond the file",
       st_file("{}", "", 1000),
       {"header length 1000 runs past the end of the file"}},
      {"huge header length", st_file("{}", "", uint64_t(1) << 62), {"runs past the end"}},
      {"non-JSON header", st_file("{\"w\": [1, 2", ""), {"header is not valid JSON"}},
      {"header not an object", st_file("[1, 2, 3]", ""), {"header is not a JSON object but array"}},
      {"invalid UTF-8 in header", st_file("{\"\xff\":1}", ""), {"header is not valid JSON"}},
      {"entry not an object", st_file(R"({"w": 5})", ""), {"tensor \"w\"", "not an object"}},
      {"unknown dtype",
       st_file(R"({"w":{"dtype":"F8","shape":[1],"data_offsets":[0,1]}})", "x"),
       {"tensor \"w\"", "unknown dtype \"F8\""}},
      {"missing dtype",
       st_file(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", "xxxx"),
       {"tensor \"w\"", "missing \"dtype\""}},
      {"negative dimension",
       st_file(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx"),
       {"tensor \"w\"", "not a non-negative integer"}},
      {"fractional dimension",
       st_file(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "xxxx"),
       {"not a non-negative integer"}},
      {"shape / byte-range mismatch",
       st_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
       {"tensor \"w\"", "needs 12 bytes but data_offsets [0, 8] hold 8"}},
      {"numel overflow",
       st_file(R"({"w":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               eight),
       {"tensor \"w\"", "has more than 2^63 elements"}},
      {"huge dimensions next to a zero",
       st_file(R"({"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})",
               ""),
       {"tensor \"w\"", "has more than 2^63 elements"}},
      {"large product within range",
       st_file(R"({"w":{"dtype":"F64","shape":[1152921504606846976],"data_offsets":[0,8]}})",
               eight),
       {"tensor \"w\"", "needs 9223372036854775808 bytes but data_offsets [0, 8] hold 8"}},
      {"overlapping ranges",
       st_file("{" + ok_entry + R"(,"v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight),
       {"\"w\" and \"v\" overlap"}},
      {"offsets past the end",
       st_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight),
       {"tensor \"w\"", "run past the end of the data section (8 bytes)"}},
      {"end before begin",
       st_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", eight),
       {"end before they begin"}},
      {"hole in the data section",
       st_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight),
       {"bytes [0, 4) of the data section belong to no tensor"}},
      {"trailing bytes",
       st_file("{" + ok_entry + "}", eight + "zz"),
       {"bytes [8, 10) at the end of the data section belong to no tensor"}},
      {"duplicate names",
       st_file("{" + ok_entry + "," + ok_entry + "}", eight),
       {"the key \"w\" more than once"}},
      {"non-string metadata",
       st_file(R"({"__metadata__":{"epoch":3}})", ""),
       {"__metadata__ value of \"epoch\" is not a string"}},
      {"metadata not an object",
       st_file(R"({"__metadata__":"x"})", ""),
       {"__metadata__ is not an object"}},
      {"offsets not a pair",
       st_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", eight),
       {"data_offsets is not a [begin, end] pair"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    INFO(c.what);
    const std::string path = dir.file("case" + std::to_string(i) + ".safetensors");
    write_bytes(path, c.bytes);
    auto fragments = c.fragments;
    fragments.push_back(path);
    check_error([&] { SafetensorsFile::open(path); }, fragments);
    // The same checks run on an in-memory buffer.
    check_error([&] { SafetensorsFile::from_bytes(c.bytes, "mem"); }, c.fragments);
  }
  check_error([&] { SafetensorsFile::open(dir.file("absent.safetensors")); },
              {"absent.safetensors", "cannot open"});
  check_error([&] { SafetensorsFile::open(dir.path.string()); }, {"not a regular file"});
  // A BOOL byte other than 0/1 is caught when the tensor is read.
  auto bad_bool = SafetensorsFile::from_bytes(
      st_file(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
              std::string("\x01\x07", 2)),
      "bools");
  check_error([&] { bad_bool.tensor("m"); }, {"bools", "tensor \"m\"", "byte 7"});
  // Empty header and null metadata are valid.
  CHECK(SafetensorsFile::from_bytes(st_file("{}", "")).names().empty());
  CHECK(SafetensorsFile::from_bytes(st_file(R"({"__metadata__":null})", "")).metadata().empty());
}

TEST_CASE("safetensors: a failed save leaves nothing behind", "[safetensors][cpu-only]") {
  TempDir dir;
  const std::string path = dir.file("keep.safetensors");
  io::save_safetensors(path, {{"x", make<float>({1}, {1.0f})}});
  const std::string before = read_bytes(path);
  check_error([&] { io::save_safetensors(path, {{"x", Tensor()}}); }, {path, "undefined"});
  check_error(
      [&] {
        io::save_safetensors(path, {{"__metadata__", make<float>({1}, {1.0f})}});
      },
      {"reserved"});
  check_error([&] { io::save_safetensors(dir.file("no/such/dir/x.safetensors"), {}); },
              {"cannot create a temporary file"});
  CHECK(read_bytes(path) == before);
  CHECK(dir.entries() == 1);
}

TEST_CASE("safetensors: the fetched all-MiniLM-L6-v2 checkpoint", "[safetensors][cpu-only]") {
  const std::string home = env_or("HOME", "/root");
  const fs::path model = fs::path(env_or("LATHE_CACHE", home + "/.cache/lathe")) / "models" /
                         "all-MiniLM-L6-v2" / "model.safetensors";
  if (!fs::exists(model)) {
    WARN("skipped: " << model.string() << " is absent (run scripts/fetch-assets.sh)");
    return;
  }
  auto file = SafetensorsFile::open(model.string());
  // The BERT encoder: 5 embedding tensors, 16 per layer x 6 layers, and the 2-tensor pooler.
  std::map<std::string, Shape> expected = {{"embeddings.word_embeddings.weight", {30522, 384}},
                                           {"embeddings.position_embeddings.weight", {512, 384}},
                                           {"embeddings.token_type_embeddings.weight", {2, 384}},
                                           {"embeddings.LayerNorm.weight", {384}},
                                           {"embeddings.LayerNorm.bias", {384}},
                                           {"pooler.dense.weight", {384, 384}},
                                           {"pooler.dense.bias", {384}}};
  for (int l = 0; l < 6; ++l) {
    const std::string p = "encoder.layer." + std::to_string(l) + ".";
    for (const char* m : {"attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense"}) {
      expected[p + m + ".weight"] = {384, 384};
      expected[p + m + ".bias"] = {384};
    }
    expected[p + "attention.output.LayerNorm.weight"] = {384};
    expected[p + "attention.output.LayerNorm.bias"] = {384};
    expected[p + "intermediate.dense.weight"] = {1536, 384};
    expected[p + "intermediate.dense.bias"] = {1536};
    expected[p + "output.dense.weight"] = {384, 1536};
    expected[p + "output.dense.bias"] = {384};
    expected[p + "output.LayerNorm.weight"] = {384};
    expected[p + "output.LayerNorm.bias"] = {384};
  }
  REQUIRE(expected.size() == 103);
  int64_t parameters = 0;
  for (const auto& [name, shape] : expected) {
    INFO(name);
    REQUIRE(file.contains(name));
    CHECK(file.info(name).shape == shape);
    CHECK(file.info(name).dtype == io::StDType::F32);
    parameters += file.info(name).numel();
  }
  CHECK(parameters == 22'713'216);  // the 22.7M of the model card
  // Anything else may only be the position_ids buffer older checkpoints carry.
  for (const auto& name : file.names())
    if (!expected.count(name)) CHECK(name == "embeddings.position_ids");
  Tensor ln = file.tensor("embeddings.LayerNorm.weight");
  CHECK(std::isfinite(ln.sum().item<double>()));
}

TEST_CASE("safetensors: lathe-inspect summarizes a file and rejects a broken one",
          "[safetensors][cpu-only]") {
  // The tool is built next to this test binary (build/bin/); a build without examples lacks it.
  const fs::path tool = fs::read_symlink("/proc/self/exe").parent_path() / "lathe-inspect";
  if (!fs::exists(tool)) {
    WARN("skipped: " << tool.string() << " is not built");
    return;
  }
  TempDir dir;
  auto run = [&](const std::string& args, std::string& output) {
    const std::string out_file = dir.file("out.txt");
    const std::string command = tool.string() + " " + args + " >" + out_file + " 2>&1";
    const int status = std::system(command.c_str());
    output = read_bytes(out_file);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  const std::string golden = (golden_dir() / "safetensors" / "golden.safetensors").string();
  std::string out;
  REQUIRE(run("'" + golden + "'", out) == 0);
  CHECK(out.find("tensors: 11\n") != std::string::npos);
  CHECK(out.find("  f32.weight  F32   [3, 4]  48 bytes\n") != std::string::npos);
  CHECK(out.find("parameters: 44 (153 bytes)\n") != std::string::npos);
  CHECK(out.find("  F32: 13 in 3 tensors (52 bytes)\n") != std::string::npos);
  CHECK(out.find("  source: lathe golden\n") != std::string::npos);
  REQUIRE(run("--json '" + golden + "'", out) == 0);
  CHECK(out.find("\"parameters\": 44,") != std::string::npos);
  CHECK(out.find("{\"name\": \"scalar\", \"dtype\": \"F32\", \"shape\": [], \"parameters\": 1, "
                 "\"data_offsets\": [104, 108]}") != std::string::npos);

  const std::string bad = dir.file("bad.safetensors");
  write_bytes(bad, st_file(R"({"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}})", "x"));
  CHECK(run("'" + bad + "'", out) == 1);
  CHECK(out == "lathe-inspect: " + bad +
                   ": tensor \"w\": unknown dtype \"Q4\" (known: F64, F32, "
                   "F16, BF16, I64, I32, I8, U8, BOOL)\n");
  CHECK(run("", out) == 2);
  CHECK(run("--bogus", out) == 2);
}
