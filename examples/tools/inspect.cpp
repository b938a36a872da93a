// lathe-inspect FILE.safetensors [--json]: what a checkpoint holds (names, dtypes, shapes,
// parameter counts per dtype, byte sizes, metadata), read from the validated header alone, so it
// is instant on large files and safe on broken ones: bad input is one line on stderr and exit 1.
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "lathe/io/safetensors.h"

namespace {

constexpr const char* kUsage =
    "usage: lathe-inspect FILE.safetensors [--json]\n"
    "Prints the tensors (name, dtype, shape, bytes), parameter counts per dtype and the metadata\n"
    "of a safetensors file. --json prints the same as one JSON object.\n";

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
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
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
  }
  return out + "\"";
}

std::string shape_text(const lathe::Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// 22713216 -> "22,713,216"
std::string grouped(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Control characters in names or metadata would let a hostile file rewrite the terminal.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

struct Totals {
  uint64_t parameters = 0;
  uint64_t bytes = 0;
  int64_t tensors = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json") {
      as_json = true;
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      std::cerr << "lathe-inspect: unknown option " << arg << " (see --help)\n";
      return 2;
    } else if (path.empty()) {
      path = arg;
    } else {
      std::cerr << "lathe-inspect: one file at a time (got " << path << " and " << arg << ")\n";
      return 2;
    }
  }
  if (path.empty()) {
    std::cerr << "lathe-inspect: no file given (see --help)\n";
    return 2;
  }
  try {
    const auto file = lathe::io::SafetensorsFile::open(path);
    const auto& header = file.header();
    std::map<std::string, Totals> per_dtype;
    Totals total;
    for (const auto& t : header.tensors) {
      Totals& d = per_dtype[std::string(lathe::io::st_dtype_name(t.dtype))];
      for (Totals* x : {&d, &total}) {
        x->parameters += uint64_t(t.numel());
        x->bytes += t.nbytes();
        x->tensors += 1;
      }
    }
    std::ostringstream out;
    if (as_json) {
      out << "{\"file\": " << json_string(path) << ", \"file_bytes\": " << file.size()
          << ", \"header_bytes\": " << header.header_size
          << ", \"data_bytes\": " << header.data_size << ", \"parameters\": " << total.parameters
          << ",\n \"metadata\": {";
      bool first = true;
      for (const auto& [k, v] : header.metadata) {
        out << (first ? "" : ", ") << json_string(k) << ": " << json_string(v);
        first = false;
      }
      out << "},\n \"dtypes\": {";
      first = true;
      for (const auto& [name, d] : per_dtype) {
        out << (first ? "" : ", ") << json_string(name) << ": {\"tensors\": " << d.tensors
            << ", \"parameters\": " << d.parameters << ", \"bytes\": " << d.bytes << "}";
        first = false;
      }
      out << "},\n \"tensors\": [";
      first = true;
      for (const auto& t : header.tensors) {
        out << (first ? "\n  " : ",\n  ") << "{\"name\": " << json_string(t.name)
            << ", \"dtype\": \"" << lathe::io::st_dtype_name(t.dtype)
            << "\", \"shape\": " << shape_text(t.shape) << ", \"parameters\": " << t.numel()
            << ", \"data_offsets\": [" << t.begin << ", " << t.end << "]}";
        first = false;
      }
      out << "\n ]}\n";
    } else {
      size_t name_width = 4, shape_width = 5;
      for (const auto& t : header.tensors) {
        name_width = std::max(name_width, printable(t.name).size());
        shape_width = std::max(shape_width, shape_text(t.shape).size());
      }
      out << "file: " << printable(path) << " (" << grouped(file.size()) << " bytes, header "
          << grouped(header.header_size) << " bytes)\n";
      out << "metadata:" << (header.metadata.empty() ? " none\n" : "\n");
      for (const auto& [k, v] : header.metadata)
        out << "  " << printable(k) << ": " << printable(v) << "\n";
      out << "tensors: " << header.tensors.size() << "\n";
      for (const auto& t : header.tensors) {
        const std::string name = printable(t.name), shape = shape_text(t.shape);
        out << "  " << name << std::string(name_width - name.size() + 2, ' ')
            << lathe::io::st_dtype_name(t.dtype)
            << std::string(6 - lathe::io::st_dtype_name(t.dtype).size(), ' ') << shape
            << std::string(shape_width - shape.size() + 2, ' ') << grouped(t.nbytes())
            << " bytes\n";
      }
      out << "parameters: " << grouped(total.parameters) << " (" << grouped(total.bytes)
          << " bytes)\n";
      for (const auto& [name, d] : per_dtype)
        out << "  " << name << ": " << grouped(d.parameters) << " in " << d.tensors << " tensors ("
            << grouped(d.bytes) << " bytes)\n";
    }
    std::cout << out.str();
    std::cout.flush();
    if (!std::cout) {
      std::cerr << "lathe-inspect: cannot write to stdout\n";
      return 1;
    }
  } catch (const std::exception& e) {
    // lathe::Error messages can be multi-line (nlohmann's parse errors are not); keep one line.
    std::string reason = e.what();
    for (char& c : reason)
      if (c == '\n' || c == '\r') c = ' ';
    std::cerr << "lathe-inspect: " << reason << "\n";
    return 1;
  }
  return 0;
}
