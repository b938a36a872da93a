// Optimizers with PyTorch's semantics (torch.optim.SGD, Adam, AdamW) over named parameter groups,
// gradient-norm clipping, and optimizer state that round-trips through safetensors for exact
// resume. Parameters are identified by their (Hugging Face style) names: state is keyed by name,
// so a checkpoint can be checked against the model it is loaded into and every mismatch reported
// by name. See docs/optim.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe::kernels {
struct AdamWStepScalars;
}  // namespace lathe::kernels

namespace lathe::optim {

// What nn::Module::named_parameters() returns: dotted names such as
// "encoder.layer.3.attention.self.query.weight" with the parameter tensors.
using NamedParameters = std::vector<std::pair<std::string, Tensor>>;

// A set of parameters sharing lr and weight decay (PyTorch's param_groups entry). The optimizer's
// other hyperparameters (momentum, betas, eps) are the same for every group.
struct ParamGroup {
  std::string name;
  std::vector<std::string> param_names;  // parallel to params
  std::vector<Tensor> params;
  double lr = 1e-3;
  double weight_decay = 0.0;
};

// One group named `name` holding every parameter of `named`.
ParamGroup make_param_group(const NamedParameters& named, double lr, double weight_decay = 0.0,
                            std::string name = "params");

// Tensors plus string metadata: what save_state writes to a safetensors file, and what a caller
// can merge with model weights into one checkpoint (io::save_safetensors).
struct StateDict {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// The state of one parameter: how many updates it has received and its named state tensors
// ("momentum_buffer"; "exp_avg", "exp_avg_sq", "master"). Tensors live on the parameter's device.
struct ParamState {
  int64_t step = 0;
  std::map<std::string, Tensor> tensors;
};

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // One update of every parameter that has a gradient (parameters without one are skipped and
  // keep their state and step count), under NoGradGuard, in place on the parameters' storage.
  virtual void step() = 0;
  // Drops every parameter's gradient (PyTorch's zero_grad(set_to_none=True)).
  void zero_grad();

  virtual const char* name() const = 0;  // "SGD", "Adam", "AdamW"

  // Schedules and callers may change lr and weight_decay of a group between steps; the parameter
  // lists are fixed at construction.
  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // The group called `group_name`; throws naming the groups there are.
  ParamGroup& param_group(const std::string& group_name);

  // Per-parameter state by parameter name (absent until the parameter's first update).
  const std::map<std::string, ParamState>& state() const { return state_; }

  // Tensors "optimizer/state/<param name>/<key>"; metadata "optimizer/kind",
  // "optimizer/hyperparameters" and "optimizer/param_groups" (JSON: each group's name, lr,
  // weight_decay and parameters with shape, dtype and step count).
  StateDict state_dict() const;
  // Restores a state_dict() of the same optimizer kind over the same parameters: group names,
  // parameter names (per group, any order), shapes and dtypes must match, and every state tensor
  // must have its parameter's shape; all mismatches are reported together, by name, and nothing
  // is changed unless everything matches. Group lr and weight_decay and the optimizer's
  // hyperparameters are restored too, as PyTorch's load_state_dict does. `source` names the
  // state in errors (a file path).
  void load_state_dict(const StateDict& state, const std::string& source = "state dict");

 protected:
  // Validates the groups (non-empty names, unique parameter names, each tensor at most once,
  // defined floating leaves) and stores them.
  Optimizer(std::vector<ParamGroup> groups, const char* kind);

  // Optimizer-wide hyperparameters by name, for state_dict / load_state_dict.
  virtual std::map<std::string, double> hyperparameters() const = 0;
  virtual void set_hyperparameters(const std::map<std::string, double>& values) = 0;
  // The state keys this optimizer may hold for a parameter of dtype `param_dtype`, and the dtype
  // of each (used to validate a loaded state).
  virtual std::map<std::string, DType> state_keys(DType param_dtype) const = 0;
  // Whether a parameter that has taken a step must have state tensors (all of state_keys).
  virtual bool keeps_state() const = 0;
  // Throws unless lr and weight decay of every group are finite and non-negative.
  void check_groups(const char* who) const;

  std::vector<ParamGroup> groups_;
  std::map<std::string, ParamState> state_;
  // Expires with the optimizer: a captured step's replay (a CUDA graph may outlive the optimizer)
  // checks it before touching state_.
  std::shared_ptr<const bool> alive_ = std::make_shared<const bool>(true);
};

// ---- SGD ----

struct SGDOptions {
  double lr = 1e-3;           // used by the NamedParameters constructor only
  double weight_decay = 0.0;  // likewise; groups carry their own
  double momentum = 0.0;
  double dampening = 0.0;
  bool nesterov = false;  // needs momentum > 0 and dampening == 0
};

// torch.optim.SGD: g = grad + wd * p; with momentum, buf = g on the first step, then
// buf = momentum * buf + (1 - dampening) * g, and g = g + momentum * buf (Nesterov) or buf;
// p -= lr * g. f32 and f64 parameters.
class SGD : public Optimizer {
 public:
  SGD(std::vector<ParamGroup> groups, SGDOptions options = {});
  SGD(const NamedParameters& named, SGDOptions options = {});
  void step() override;
  const char* name() const override { return "SGD"; }
  const SGDOptions& options() const { return options_; }

 protected:
  std::map<std::string, double> hyperparameters() const override;
  void set_hyperparameters(const std::map<std::string, double>& values) override;
  std::map<std::string, DType> state_keys(DType param_dtype) const override;
  bool keeps_state() const override { return options_.momentum != 0; }

 private:
  SGDOptions options_;
};

// ---- Adam and AdamW ----

// Whether Adam/AdamW use the fused multi-tensor kernel (one pass per group, no temporaries):
// Auto when every parameter of a group and its gradient are contiguous f32 (or f16/bf16) on one
// device, else the composed path; Always throws when a group does not qualify; Never always
// composes the update from elementwise ops.
enum class FusedMode { Auto, Always, Never };

struct AdamOptions {
  double lr = 1e-3;  // used by the NamedParameters constructor only
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;  // used by the NamedParameters constructor only
  FusedMode fused = FusedMode::Auto;
};

// torch.optim.Adam (L2: g = grad + wd * p) and, with decoupled weight decay, torch.optim.AdamW
// (p *= 1 - lr * wd before the update). Per parameter with step t:
//   m = beta1 * m + (1 - beta1) * g,  v = beta2 * v + (1 - beta2) * g^2,
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)     (eps outside the sqrt)
// f32 and f64 parameters keep moments of their dtype; f16/bf16 parameters keep f32 moments and an
// f32 master copy ("master") that the update runs on, the parameter receiving it rounded.
class Adam : public Optimizer {
 public:
  Adam(std::vector<ParamGroup> groups, AdamOptions options = {});
  Adam(const NamedParameters& named, AdamOptions options = {});
  void step() override;
  const char* name() const override { return decoupled_ ? "AdamW" : "Adam"; }
  const AdamOptions& options() const { return options_; }
  void set_fused(FusedMode mode) { options_.fused = mode; }

 protected:
  Adam(std::vector<ParamGroup> groups, AdamOptions options, bool decoupled);
  std::map<std::string, double> hyperparameters() const override;
  void set_hyperparameters(const std::map<std::string, double>& values) override;
  std::map<std::string, DType> state_keys(DType param_dtype) const override;
  bool keeps_state() const override { return true; }

 private:
  // Inside a CUDA graph capture: the device address of the step scalars of `param_names` (one
  // launch of group `group_index`), which each replay computes from the group's lr and weight
  // decay at that time and the parameters' advanced step counts.
  const kernels::AdamWStepScalars* replay_step(size_t group_index,
                                               std::vector<std::string> param_names,
                                               const std::vector<Tensor>& exp_avgs, Device device);

  AdamOptions options_;
  bool decoupled_;
};

// AdamW's default weight decay is 0.01, as torch.optim.AdamW's.
inline AdamOptions adamw_defaults() {
  AdamOptions o;
  o.weight_decay = 1e-2;
  return o;
}

class AdamW : public Adam {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamOptions options = adamw_defaults());
  AdamW(const NamedParameters& named, AdamOptions options = adamw_defaults());
};

// ---- gradient clipping ----

// torch.nn.utils.clip_grad_norm_: the norm_type-norm of all gradients together (parameters
// without a gradient are skipped; norm_type may be infinity for the max-abs norm); when
// max_norm / (total + 1e-6) < 1 every gradient is multiplied by it, in place. A non-finite total
// turns the gradients into NaN, as in PyTorch. Returns the total norm before clipping as a 0-dim
// f64 tensor on the gradients' device (the first gradient's device when they live on several),
// or a cpu 0 when no parameter has a gradient. On cuda the call never makes the host wait for the
// device: the norm and the coefficient stay on the device; `.item<double>()` on the result is
// the wait, for a caller that wants the value.
Tensor clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);
Tensor clip_grad_norm_(const NamedParameters& named, double max_norm, double norm_type = 2.0);
// Every parameter of every group of `optimizer`.
Tensor clip_grad_norm_(const Optimizer& optimizer, double max_norm, double norm_type = 2.0);

}  // namespace lathe::optim
