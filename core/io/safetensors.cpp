// safetensors files: memory mapping, zero-copy tensors over the mapping, and the atomic writer.
// Header validation lives in safetensors_header.cpp.
#include "lathe/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace lathe::io {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host would need byte swapping");

struct SafetensorsFile::State {
  std::string path;
  SafetensorsHeader header;
  std::map<std::string, size_t> index;  // name -> position in header.tensors
  const uint8_t* base = nullptr;
  size_t size = 0;
  // Owns the mapping (or the buffer); zero-copy storages hold a copy, so the memory outlives
  // the SafetensorsFile that created them.
  std::shared_ptr<void> owner;
};

namespace {

std::string errno_text() {
  return std::strerror(errno);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

SafetensorsFile::SafetensorsFile(std::shared_ptr<State> state) : state_(std::move(state)) {
  State& s = *state_;
  s.header = parse_safetensors(s.base, s.size, s.path);
  for (size_t i = 0; i < s.header.tensors.size(); ++i) s.index[s.header.tensors[i].name] = i;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto state = std::make_shared<State>();
  state->path = path;
  Fd file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LATHE_CHECK(file.fd >= 0, path, ": cannot open: ", errno_text());
  struct stat st {};
  LATHE_CHECK(::fstat(file.fd, &st) == 0, path, ": cannot stat: ", errno_text());
  LATHE_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  state->size = static_cast<size_t>(st.st_size);
  if (state->size > 0) {
    // Private + writable = copy-on-write: tensors that alias the mapping can be updated in place
    // (fine-tuning does exactly that) without ever writing to the file.
    void* map = ::mmap(nullptr, state->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, file.fd, 0);
    LATHE_CHECK(map != MAP_FAILED, path, ": cannot memory-map ", state->size,
                " bytes: ", errno_text());
    const size_t size = state->size;
    state->owner = std::shared_ptr<void>(map, [size](void* p) { ::munmap(p, size); });
    state->base = static_cast<const uint8_t*>(map);
  }
  return SafetensorsFile(std::move(state));
}

SafetensorsFile SafetensorsFile::from_bytes(std::string bytes, std::string source) {
  auto state = std::make_shared<State>();
  state->path = std::move(source);
  auto buffer = std::make_shared<std::string>(std::move(bytes));
  state->base = reinterpret_cast<const uint8_t*>(buffer->data());
  state->size = buffer->size();
  state->owner = std::move(buffer);
  return SafetensorsFile(std::move(state));
}

const std::string& SafetensorsFile::path() const {
  return state_->path;
}
const SafetensorsHeader& SafetensorsFile::header() const {
  return state_->header;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return state_->header.metadata;
}
const uint8_t* SafetensorsFile::bytes() const {
  return state_->base;
}
size_t SafetensorsFile::size() const {
  return state_->size;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& t : state_->header.tensors) out.push_back(t.name);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return state_->index.count(name) != 0;
}

const SafetensorsTensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = state_->index.find(name);
  LATHE_CHECK(it != state_->index.end(), state_->path, ": no tensor named \"", name, "\" (",
              state_->index.size(), " tensors in the file)");
  return state_->header.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name, Device device) const {
  const SafetensorsTensorInfo& info = this->info(name);
  const uint8_t* src = state_->base + state_->header.data_offset + info.begin;
  const int64_t numel = info.numel();
  const DType dtype = st_to_lathe(info.dtype);
  if (info.dtype == StDType::BOOL) {
    // A bool byte other than 0 or 1 is undefined behaviour once read as a C++ bool.
    for (int64_t i = 0; i < numel; ++i)
      LATHE_CHECK(src[i] <= 1, state_->path, ": tensor \"", name, "\": BOOL element ", i,
                  " holds byte ", int(src[i]), ", not 0 or 1");
  }
  Tensor out;
  const size_t esize = st_element_size(info.dtype);
  const bool same_layout = element_size(dtype) == esize;
  if (same_layout && numel > 0 && reinterpret_cast<uintptr_t>(src) % esize == 0) {
    auto owner = state_->owner;
    auto storage = std::make_shared<Storage>(const_cast<uint8_t*>(src), info.nbytes(),
                                             Device::cpu(), [owner](void*) {});
    out = Tensor::from_storage(std::move(storage), info.shape, contiguous_strides(info.shape), 0,
                               dtype);
  } else {
    out = Tensor::empty(info.shape, TensorOptions(dtype));
    if (same_layout) {
      if (numel > 0) std::memcpy(out.data_ptr(), src, info.nbytes());
    } else {
      // I8 / U8 widen to I32.
      auto* dst = out.data<int32_t>();
      for (int64_t i = 0; i < numel; ++i)
        dst[i] = info.dtype == StDType::I8 ? int32_t(static_cast<int8_t>(src[i])) : int32_t(src[i]);
    }
  }
  return device.is_cpu() ? out : out.to(device);
}

std::map<std::string, Tensor> SafetensorsFile::tensors(Device device) const {
  std::map<std::string, Tensor> out;
  for (const auto& t : state_->header.tensors) out.emplace(t.name, tensor(t.name, device));
  return out;
}

std::map<std::string, Tensor> load_safetensors(const std::string& path, Device device) {
  return SafetensorsFile::open(path).tensors(device);
}

namespace {

// The temporary file of an atomic write; removed unless committed.
struct TempFile {
  std::string path;
  int fd = -1;
  bool committed = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!committed && !path.empty()) ::unlink(path.c_str());
  }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0 && errno == EINTR) continue;
    LATHE_CHECK(w > 0, path, ": write failed: ", errno_text());
    p += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  struct Entry {
    std::string name;
    Tensor data;  // contiguous, on the cpu
  };
  std::vector<Entry> entries;
  for (const auto& [name, t] : tensors) {
    LATHE_CHECK(!name.empty(), path, ": cannot save a tensor with an empty name");
    LATHE_CHECK(name != "__metadata__", path, ": \"__metadata__\" is reserved, not a tensor name");
    LATHE_CHECK(t.defined(), path, ": tensor \"", name, "\" is undefined");
    entries.push_back({name, t.detach().to(Device::cpu()).contiguous()});
  }
  // Larger elements first: every offset is then a multiple of its own element size, so all
  // tensors of the written file load zero-copy.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    const size_t ea = element_size(a.data.dtype()), eb = element_size(b.data.dtype());
    return ea != eb ? ea > eb : a.name < b.name;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& e : entries) {
    const uint64_t nbytes = uint64_t(e.data.numel()) * element_size(e.data.dtype());
    header[e.name] = {{"dtype", st_dtype_name(lathe_to_st(e.data.dtype()))},
                      {"shape", e.data.shape()},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  TempFile tmp;
  std::string temp_name = ".";
  temp_name.append(target.filename().string()).append(".tmp-XXXXXX");
  std::string pattern = (dir / temp_name).string();
  tmp.fd = ::mkstemp(pattern.data());
  LATHE_CHECK(tmp.fd >= 0, path, ": cannot create a temporary file in ", dir.string(), ": ",
              errno_text());
  tmp.path = pattern;
  ::fchmod(tmp.fd, 0644);  // mkstemp's 0600 would hide a checkpoint from other users
  write_all(tmp.fd, length, 8, path);
  write_all(tmp.fd, text.data(), text.size(), path);
  for (const auto& e : entries) {
    const size_t nbytes = size_t(e.data.numel()) * element_size(e.data.dtype());
    if (nbytes > 0) write_all(tmp.fd, e.data.data_ptr(), nbytes, path);
  }
  LATHE_CHECK(::fsync(tmp.fd) == 0, path, ": fsync failed: ", errno_text());
  const int fd = tmp.fd;
  tmp.fd = -1;
  LATHE_CHECK(::close(fd) == 0, path, ": close failed: ", errno_text());
  LATHE_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, path, ": cannot rename ", tmp.path,
              " over it: ", errno_text());
  tmp.committed = true;
  // The rename itself is durable only once the directory entry is flushed.
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d.fd >= 0) ::fsync(d.fd);
}

}  // namespace lathe::io
