#include "lathe/nn/module.h"

#include <algorithm>
#include <iomanip>
#include <set>
#include <sstream>

#include "lathe/core/autograd.h"
#include "lathe/core/error.h"
#include "lathe/core/shape.h"

namespace lathe::nn {

std::string LoadReport::str() const {
  std::ostringstream os;
  for (const auto& k : missing_keys) os << "missing key: " << k << "\n";
  for (const auto& k : unexpected_keys) os << "unexpected key: " << k << "\n";
  for (const auto& k : mismatched) os << "shape mismatch: " << k << "\n";
  return os.str();
}

void set_data(const Tensor& dst, const Tensor& src) {
  TensorImpl& d = dst.impl();
  const TensorImpl& s = src.impl();
  const bool same_kind =
      d.shape == s.shape && d.dtype == s.dtype && d.storage->device() == s.storage->device();
  d.storage = s.storage;
  d.shape = s.shape;
  d.strides = s.strides;
  d.offset = s.offset;
  d.dtype = s.dtype;
  if (!same_kind) Tensor(dst).zero_grad();
}

Module::Module(std::string type_name) : type_name_(std::move(type_name)) {}
Module::~Module() = default;

void Module::check_new_name(const std::string& name) const {
  LATHE_CHECK(!name.empty() && name.find('.') == std::string::npos, type_name_, ": invalid name '",
              name, "' (names are non-empty and contain no '.')");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& e) {
      if constexpr (std::is_same_v<std::decay_t<decltype(e)>, Buffer>) {
        return e.name == name;
      } else {
        return e.first == name;
      }
    });
  };
  LATHE_CHECK(!taken(parameters_) && !taken(buffers_) && !taken(children_), type_name_,
              ": the name '", name, "' is already registered");
}

Tensor Module::register_parameter(std::string name, Tensor value, bool requires_grad) {
  check_new_name(name);
  LATHE_CHECK(value.defined(), type_name_, ": parameter '", name, "' is undefined");
  LATHE_CHECK(is_floating(value.dtype()), type_name_, ": parameter '", name,
              "' must be floating, got ", value.dtype());
  // A parameter is a leaf even when it was computed (e.g. initialized from other tensors).
  if (!value.is_leaf()) value = value.detach();
  value.requires_grad_(requires_grad);
  parameters_.emplace_back(std::move(name), value);
  return value;
}

Tensor Module::register_buffer(std::string name, Tensor value, bool persistent) {
  check_new_name(name);
  LATHE_CHECK(value.defined(), type_name_, ": buffer '", name, "' is undefined");
  buffers_.push_back({std::move(name), value.detach(), persistent});
  return buffers_.back().value;
}

void Module::register_child(std::string name, std::shared_ptr<Module> module) {
  check_new_name(name);
  LATHE_CHECK(module != nullptr, type_name_, ": submodule '", name, "' is null");
  module->train(training_);
  children_.emplace_back(std::move(name), std::move(module));
}

void Module::collect_parameters(const std::string& prefix, bool recurse, NamedTensors& out) const {
  for (const auto& [name, t] : parameters_) out.emplace_back(prefix + name, t);
  if (!recurse) return;
  for (const auto& [name, child] : children_) {
    child->collect_parameters(prefix + name + ".", true, out);
  }
}

void Module::collect_buffers(const std::string& prefix, bool recurse, bool persistent_only,
                             NamedTensors& out) const {
  for (const auto& b : buffers_) {
    if (!persistent_only || b.persistent) out.emplace_back(prefix + b.name, b.value);
  }
  if (!recurse) return;
  for (const auto& [name, child] : children_) {
    child->collect_buffers(prefix + name + ".", true, persistent_only, out);
  }
}

void Module::collect_modules(const std::string& prefix,
                             std::vector<std::pair<std::string, Module*>>& out) const {
  out.emplace_back(prefix.empty() ? prefix : prefix.substr(0, prefix.size() - 1),
                   const_cast<Module*>(this));
  for (const auto& [name, child] : children_) child->collect_modules(prefix + name + ".", out);
}

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors out;
  collect_parameters("", recurse, out);
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors out;
  collect_buffers("", recurse, false, out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_children() const {
  return children_;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, Module*>> out;
  collect_modules("", out);
  return out;
}

Module& Module::submodule(std::string_view path) const {
  const Module* m = this;
  std::string_view rest = path;
  while (!rest.empty()) {
    const size_t dot = rest.find('.');
    const std::string_view part = rest.substr(0, dot);
    const Module* next = nullptr;
    for (const auto& [name, child] : m->children_) {
      if (name == part) next = child.get();
    }
    LATHE_CHECK(next != nullptr, type_name_, ": no submodule '", path, "' (", m->type_name_,
                " has no child '", part, "')");
    m = next;
    rest = dot == std::string_view::npos ? std::string_view() : rest.substr(dot + 1);
  }
  return const_cast<Module&>(*m);
}

Tensor Module::tensor(std::string_view path) const {
  const size_t dot = path.rfind('.');
  const Module& owner = dot == std::string_view::npos ? *this : submodule(path.substr(0, dot));
  const std::string_view leaf = dot == std::string_view::npos ? path : path.substr(dot + 1);
  for (const auto& [name, t] : owner.parameters_) {
    if (name == leaf) return t;
  }
  for (const auto& b : owner.buffers_) {
    if (b.name == leaf) return b.value;
  }
  LATHE_FAIL(type_name_, ": no parameter or buffer '", path, "'");
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::to(Device device) {
  NoGradGuard no_grad;
  auto move = [&](const Tensor& t) {
    if (t.device() != device) set_data(t, t.detach().to(device));
  };
  for (auto& [name, t] : named_parameters()) move(t);
  for (auto& [name, t] : named_buffers()) move(t);
}

void Module::to(DType dtype) {
  LATHE_CHECK(is_floating(dtype), type_name_, ": to(", dtype,
              ") — modules convert to floating dtypes only");
  NoGradGuard no_grad;
  auto convert = [&](const Tensor& t) {
    if (is_floating(t.dtype()) && t.dtype() != dtype) set_data(t, t.detach().to(dtype));
  };
  for (auto& [name, t] : named_parameters()) convert(t);
  for (auto& [name, t] : named_buffers()) convert(t);
}

StateDict Module::state_dict() const {
  StateDict out;
  for (auto& [name, t] : named_parameters()) out.emplace(name, t.detach());
  NamedTensors buffers;
  collect_buffers("", true, true, buffers);
  for (auto& [name, t] : buffers) out.emplace(name, t.detach());
  return out;
}

LoadReport Module::load_state_dict(const StateDict& dict, LoadOptions options) {
  LoadReport report;
  NamedTensors own = named_parameters();
  collect_buffers("", true, true, own);
  std::set<std::string> own_names;
  for (const auto& [name, t] : own) {
    own_names.insert(name);
    auto it = dict.find(name);
    if (it == dict.end()) {
      report.missing_keys.push_back(name);
      continue;
    }
    LATHE_CHECK(it->second.defined(), type_name_, ".load_state_dict: '", name, "' is undefined");
    if (it->second.shape() != t.shape()) {
      report.mismatched.push_back(name + ": expected " + shape_str(t.shape()) + ", got " +
                                  shape_str(it->second.shape()));
    }
  }
  for (const auto& [name, t] : dict) {
    if (!own_names.count(name)) report.unexpected_keys.push_back(name);
  }
  const bool fatal =
      !report.mismatched.empty() ||
      (options.strict && (!report.missing_keys.empty() || !report.unexpected_keys.empty()));
  LATHE_CHECK(!fatal, type_name_, ".load_state_dict: the state dict does not fit the module:\n",
              report.str());
  NoGradGuard no_grad;
  for (const auto& [name, t] : own) {
    auto it = dict.find(name);
    if (it == dict.end()) continue;
    const Tensor& src = it->second;
    if (options.assign && src.dtype() == t.dtype() && src.device() == t.device()) {
      set_data(t, src.detach());
    } else {
      Tensor(t).copy_(src);
    }
  }
  return report;
}

int64_t Module::freeze(std::string_view prefix) {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) {
    if (name.compare(0, prefix.size(), prefix) == 0 && t.requires_grad()) {
      t.requires_grad_(false);
      t.zero_grad();
      ++n;
    }
  }
  return n;
}

int64_t Module::unfreeze(std::string_view prefix) {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) {
    if (name.compare(0, prefix.size(), prefix) == 0 && !t.requires_grad()) {
      t.requires_grad_(true);
      ++n;
    }
  }
  return n;
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

int64_t Module::num_parameters(bool trainable_only) const {
  int64_t n = 0;
  for (auto& [name, t] : named_parameters()) {
    if (!trainable_only || t.requires_grad()) n += t.numel();
  }
  return n;
}

namespace {
std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}
}  // namespace

std::string Module::summary() const {
  std::ostringstream os;
  size_t width = 4;
  for (const auto& [name, child] : children_) width = std::max(width, name.size());
  for (const auto& [name, t] : parameters_) width = std::max(width, name.size());
  os << type_name_ << "\n";
  os << "  " << std::left << std::setw(int(width)) << "name"
     << "  " << std::setw(30) << "type" << std::right << std::setw(14) << "parameters"
     << std::setw(14) << "trainable"
     << "\n";
  for (const auto& [name, t] : parameters_) {
    os << "  " << std::left << std::setw(int(width)) << name << "  " << std::setw(30)
       << ("Parameter " + shape_str(t.shape())) << std::right << std::setw(14)
       << with_commas(t.numel()) << std::setw(14) << with_commas(t.requires_grad() ? t.numel() : 0)
       << "\n";
  }
  for (const auto& [name, child] : children_) {
    os << "  " << std::left << std::setw(int(width)) << name << "  " << std::setw(30)
       << child->type_name() << std::right << std::setw(14) << with_commas(child->num_parameters())
       << std::setw(14) << with_commas(child->num_parameters(true)) << "\n";
  }
  os << "total parameters: " << with_commas(num_parameters())
     << ", trainable: " << with_commas(num_parameters(true)) << "\n";
  return os.str();
}

}  // namespace lathe::nn
