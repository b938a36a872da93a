// nn::Module: a tree of named submodules, parameters and buffers, as in PyTorch. Dotted names are
// built from the registration names, so a BERT built from lathe's modules has exactly Hugging
// Face's names (`encoder.layer.3.attention.self.query.weight`) and its checkpoints load by name.
//
// Parameters are ordinary leaf tensors that require grad. Tensor is a handle, so a module's
// member `Tensor weight` and the registry alias the same TensorImpl; moving a module to another
// device or dtype rewrites that TensorImpl in place (PyTorch's `param.data = ...`), so the handles
// held by layers, optimizers and users stay valid.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lathe/core/device.h"
#include "lathe/core/dtype.h"
#include "lathe/core/tensor.h"

namespace lathe::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using StateDict = std::map<std::string, Tensor>;

// What load_state_dict found: keys the module has but the dict lacks, keys the dict has but the
// module lacks, and shape mismatches ("name: expected [..], got [..]").
struct LoadReport {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<std::string> mismatched;
  bool clean() const {
    return missing_keys.empty() && unexpected_keys.empty() && mismatched.empty();
  }
  std::string str() const;  // one line per problem, empty when clean
};

struct LoadOptions {
  // Missing or unexpected keys are an error (mismatched shapes always are).
  bool strict = true;
  // Take over the dict's tensors (no copy) where dtype and device already match, as PyTorch's
  // load_state_dict(assign=True). The parameters then alias the source (e.g. a memory-mapped,
  // copy-on-write checkpoint).
  bool assign = false;
};

class Module {
 public:
  explicit Module(std::string type_name);
  virtual ~Module();
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // The class name shown by summary() ("Linear", "BertLayer", ...).
  const std::string& type_name() const { return type_name_; }

  // ---- the tree ----
  // In registration order, depth first; names are dotted paths from this module.
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_buffers(bool recurse = true) const;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_children() const;
  // This module (name "") and every descendant.
  std::vector<std::pair<std::string, Module*>> named_modules() const;
  // The descendant at a dotted path ("encoder.layer.2"); throws lathe::Error naming the path.
  Module& submodule(std::string_view path) const;
  // The parameter or buffer at a dotted path; throws lathe::Error naming the path.
  Tensor tensor(std::string_view path) const;

  // ---- mode, device, dtype ----
  void train(bool on = true);  // recursive
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves every parameter and buffer (in place: handles stay valid; gradients are dropped).
  void to(Device device);
  // Converts floating parameters and buffers; integer buffers keep their dtype.
  void to(DType dtype);

  // ---- state ----
  // Parameters and persistent buffers by dotted name (aliases, detached from the graph).
  StateDict state_dict() const;
  // Copies values in by name (converting dtype and device). Mismatched shapes are always an
  // error; missing/unexpected keys are one when options.strict. Every problem is named in the
  // error, not just the first.
  LoadReport load_state_dict(const StateDict& dict, LoadOptions options = {});

  // requires_grad off/on for parameters whose dotted name starts with `prefix` ("" = all);
  // returns how many were changed. Frozen parameters get no gradient and no optimizer update.
  int64_t freeze(std::string_view prefix = "");
  int64_t unfreeze(std::string_view prefix = "");
  void zero_grad();  // drops every parameter's gradient

  int64_t num_parameters(bool trainable_only = false) const;
  // A table of the direct children with their types and parameter counts, then the totals.
  std::string summary() const;

 protected:
  // Registers a parameter (made a leaf; requires_grad as given) and returns the same handle.
  Tensor register_parameter(std::string name, Tensor value, bool requires_grad = true);
  // Buffers move with the module but are not trained; non-persistent ones stay out of state_dict.
  Tensor register_buffer(std::string name, Tensor value, bool persistent = true);
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> module) {
    register_child(std::move(name), module);
    return module;
  }

 private:
  struct Buffer {
    std::string name;
    Tensor value;
    bool persistent = true;
  };
  void register_child(std::string name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  void collect_parameters(const std::string& prefix, bool recurse, NamedTensors& out) const;
  void collect_buffers(const std::string& prefix, bool recurse, bool persistent_only,
                       NamedTensors& out) const;
  void collect_modules(const std::string& prefix,
                       std::vector<std::pair<std::string, Module*>>& out) const;

  std::string type_name_;
  bool training_ = true;
  NamedTensors parameters_;
  std::vector<Buffer> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

// An indexed list of submodules named "0", "1", ... (BERT's `encoder.layer.<i>`).
class ModuleList : public Module {
 public:
  ModuleList() : Module("ModuleList") {}
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    register_module(std::to_string(size_), module);
    ++size_;
    return module;
  }
  int64_t size() const { return size_; }

 private:
  int64_t size_ = 0;
};

// Rewrites `dst`'s TensorImpl to hold `src`'s storage and layout (PyTorch's `dst.data = src`);
// every handle to dst sees the change. Autograd history of src is not taken; dst's gradient is
// dropped when its shape, dtype or device changes.
void set_data(const Tensor& dst, const Tensor& src);

}  // namespace lathe::nn
