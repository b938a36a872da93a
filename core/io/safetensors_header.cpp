// Parsing and validation of safetensors headers. Kept apart from the mapping and tensor code so
// the fuzz target can compile it alone (it needs only nlohmann_json and lathe/core/error.h).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "lathe/io/safetensors.h"

namespace lathe::io {

namespace {

// The reference implementation refuses headers over 100 MB; a larger one is a corrupt or hostile
// file, and refusing it bounds the memory a bad length field can make us allocate.
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DTypeEntry {
  std::string_view name;
  StDType dtype;
};
constexpr DTypeEntry kDTypes[] = {
    {"F64", StDType::F64},   {"F32", StDType::F32}, {"F16", StDType::F16},
    {"BF16", StDType::BF16}, {"I64", StDType::I64}, {"I32", StDType::I32},
    {"I8", StDType::I8},     {"U8", StDType::U8},   {"BOOL", StDType::BOOL}};

// Text of a JSON value for an error message, cut short so a huge value cannot flood the log.
std::string excerpt(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

}  // namespace

std::string_view st_dtype_name(StDType t) {
  for (const auto& e : kDTypes)
    if (e.dtype == t) return e.name;
  return "?";
}

size_t st_element_size(StDType t) {
  switch (t) {
    case StDType::F64:
    case StDType::I64:
      return 8;
    case StDType::F32:
    case StDType::I32:
      return 4;
    case StDType::F16:
    case StDType::BF16:
      return 2;
    case StDType::I8:
    case StDType::U8:
    case StDType::BOOL:
      return 1;
  }
  return 1;
}

DType st_to_lathe(StDType t) {
  switch (t) {
    case StDType::F64:
      return DType::F64;
    case StDType::F32:
      return DType::F32;
    case StDType::F16:
      return DType::F16;
    case StDType::BF16:
      return DType::BF16;
    case StDType::I64:
      return DType::I64;
    case StDType::I32:
    case StDType::I8:
    case StDType::U8:
      return DType::I32;
    case StDType::BOOL:
      return DType::Bool;
  }
  return DType::F32;
}

StDType lathe_to_st(DType t) {
  switch (t) {
    case DType::F64:
      return StDType::F64;
    case DType::F32:
      return StDType::F32;
    case DType::F16:
      return StDType::F16;
    case DType::BF16:
      return StDType::BF16;
    case DType::I64:
      return StDType::I64;
    case DType::I32:
      return StDType::I32;
    case DType::Bool:
      return StDType::BOOL;
  }
  return StDType::F32;
}

int64_t SafetensorsTensorInfo::numel() const {
  // A zero anywhere makes the product 0 without evaluating a possibly overflowing prefix.
  for (int64_t d : shape)
    if (d == 0) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsHeader parse_safetensors(const void* data, size_t size, std::string_view source) {
  const std::string where(source);
  const auto* bytes = static_cast<const uint8_t*>(data);
  LATHE_CHECK(size >= 8, where, ": not a safetensors file: ", size,
              " bytes, shorter than the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  LATHE_CHECK(n <= size - 8, where, ": header length ", n, " runs past the end of the file (",
              size - 8, " bytes after the length field)");
  LATHE_CHECK(n <= kMaxHeaderSize, where, ": header length ", n, " exceeds the ", kMaxHeaderSize,
              "-byte limit");

  SafetensorsHeader header;
  header.header_size = n;
  header.data_offset = 8 + n;
  header.data_size = size - 8 - n;

  // nlohmann keeps the last of duplicate keys silently; a file with two entries for one tensor
  // is ambiguous, so the parser callback tracks the keys of every open object and refuses repeats.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) {
      open_objects.emplace_back();
    } else if (event == E::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == E::key && !open_objects.empty() && duplicate.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second) duplicate = key;
    }
    return true;
  };
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text, text + n, callback);
  } catch (const nlohmann::json::exception& e) {
    LATHE_FAIL(where, ": header is not valid JSON: ", e.what());
  }
  LATHE_CHECK(duplicate.empty(), where, ": header has the key \"", duplicate, "\" more than once");
  LATHE_CHECK(root.is_object(), where, ": header is not a JSON object but ", root.type_name());

  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& entry = it.value();
    if (name == "__metadata__") {
      if (entry.is_null()) continue;  // the reference reads null as "no metadata"
      LATHE_CHECK(entry.is_object(), where, ": __metadata__ is not an object but ",
                  entry.type_name());
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        LATHE_CHECK(m.value().is_string(), where, ": __metadata__ value of \"", m.key(),
                    "\" is not a string but ", m.value().type_name(), " ", excerpt(m.value()));
        header.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tensor = where + ": tensor \"" + name + "\"";
    LATHE_CHECK(entry.is_object(), tensor, ": entry is not an object but ", entry.type_name());
    SafetensorsTensorInfo info;
    info.name = name;

    auto dtype = entry.find("dtype");
    LATHE_CHECK(dtype != entry.end(), tensor, ": missing \"dtype\"");
    LATHE_CHECK(dtype->is_string(), tensor, ": dtype is not a string but ", excerpt(*dtype));
    const auto& dtype_text = dtype->get_ref<const std::string&>();
    auto known = std::find_if(std::begin(kDTypes), std::end(kDTypes),
                              [&](const DTypeEntry& e) { return e.name == dtype_text; });
    LATHE_CHECK(known != std::end(kDTypes), tensor, ": unknown dtype \"", dtype_text,
                "\" (known: F64, F32, F16, BF16, I64, I32, I8, U8, BOOL)");
    info.dtype = known->dtype;

    auto shape = entry.find("shape");
    LATHE_CHECK(shape != entry.end(), tensor, ": missing \"shape\"");
    LATHE_CHECK(shape->is_array(), tensor, ": shape is not an array but ", excerpt(*shape));
    // The product of the non-zero dimensions must fit in int64 even when another dimension is 0:
    // strides are such products, and a tensor of this shape could not be indexed otherwise.
    uint64_t product = 1;
    bool has_zero = false;
    for (const auto& d : *shape) {
      LATHE_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0),
                  tensor, ": shape ", excerpt(*shape), " holds ", excerpt(d),
                  ", not a non-negative integer");
      const uint64_t v = d.get<uint64_t>();
      LATHE_CHECK(v == 0 || product <= uint64_t(std::numeric_limits<int64_t>::max()) / v, tensor,
                  ": shape ", excerpt(*shape), " has more than 2^63 elements");
      info.shape.push_back(static_cast<int64_t>(v));
      if (v == 0)
        has_zero = true;
      else
        product *= v;
    }
    const uint64_t numel = has_zero ? 0 : product;

    auto offsets = entry.find("data_offsets");
    LATHE_CHECK(offsets != entry.end(), tensor, ": missing \"data_offsets\"");
    LATHE_CHECK(offsets->is_array() && offsets->size() == 2, tensor,
                ": data_offsets is not a [begin, end] pair but ", excerpt(*offsets));
    for (const auto& o : *offsets)
      LATHE_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0),
                  tensor, ": data_offsets ", excerpt(*offsets), " are not non-negative integers");
    info.begin = (*offsets)[0].get<uint64_t>();
    info.end = (*offsets)[1].get<uint64_t>();
    LATHE_CHECK(info.begin <= info.end, tensor, ": data_offsets [", info.begin, ", ", info.end,
                "] end before they begin");
    LATHE_CHECK(info.end <= header.data_size, tensor, ": data_offsets [", info.begin, ", ",
                info.end, "] run past the end of the data section (", header.data_size, " bytes)");
    const uint64_t esize = st_element_size(info.dtype);
    // numel < 2^63 and esize <= 8, so numel * esize cannot wrap a uint64.
    LATHE_CHECK(numel * esize == info.nbytes(), tensor, ": shape ", excerpt(*shape), " of ",
                st_dtype_name(info.dtype), " needs ", numel * esize, " bytes but data_offsets [",
                info.begin, ", ", info.end, "] hold ", info.nbytes());
    header.tensors.push_back(std::move(info));
  }

  // The data section must be tiled exactly: sorted by offset, each tensor starts where the
  // previous one ended, and the last ends at the end of the file. This rejects overlaps (two names
  // reading the same bytes) and holes (bytes no tensor accounts for), as the reference does.
  std::vector<const SafetensorsTensorInfo*> by_offset;
  for (const auto& t : header.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const SafetensorsTensorInfo* previous = nullptr;
  for (const auto* t : by_offset) {
    LATHE_CHECK(t->begin >= cursor, where, ": tensors \"", previous ? previous->name : "",
                "\" and \"", t->name, "\" overlap (data_offsets [", previous ? previous->begin : 0,
                ", ", cursor, "] and [", t->begin, ", ", t->end, "])");
    LATHE_CHECK(t->begin == cursor, where, ": bytes [", cursor, ", ", t->begin,
                ") of the data section belong to no tensor (before \"", t->name, "\")");
    cursor = t->end;
    previous = t;
  }
  LATHE_CHECK(cursor == header.data_size, where, ": bytes [", cursor, ", ", header.data_size,
              ") at the end of the data section belong to no tensor");

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return header;
}

}  // namespace lathe::io
