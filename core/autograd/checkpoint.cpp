// Activation checkpointing (include/lathe/core/checkpoint.h). The block runs once in the forward
// with grad mode as it is, so that its outputs require grad exactly when they would without
// checkpointing and so that the re-run in backward takes the same code paths (an op may choose a
// different kernel when nothing records); its graph is dropped at once by returning detached
// aliases of the outputs, which one "checkpoint" node then owns. The node's backward re-runs the
// block on the saved inputs and calls the engine on the rebuilt graph from inside the outer
// backward: run_backward keeps all of its state on its own stack, so it nests. The re-run draws the
// random numbers of the first run from a per-thread record of its reservations (random_replay.h),
// never from the global generator, which other threads may be drawing from meanwhile.
#include "lathe/core/checkpoint.h"

#include <memory>
#include <string>

#include "core/random_replay.h"
#include "lathe/core/autocast.h"
#include "lathe/core/autograd.h"

namespace lathe {

namespace {

class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled) : previous_(grad_mode_enabled()) { set_grad_mode(enabled); }
  ~GradModeGuard() { set_grad_mode(previous_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

// What backward needs to re-run the block and check that it built the same outputs.
struct CheckpointReplay {
  CheckpointFn fn;
  std::vector<autograd::SavedTensor> inputs;
  std::vector<bool> input_wants_grad;
  std::vector<detail::PhiloxDraw> draws;  // the first run's reservations, this thread's only
  AutocastState autocast;
  size_t output_count = 0;
  std::vector<size_t> recorded_slots;  // outputs that required grad, in the node's output order
  std::vector<autograd::OutputMeta> recorded_meta;
};

std::vector<Tensor> replay_backward(const CheckpointReplay& replay,
                                    const std::vector<Tensor>& grad_outputs) {
  std::vector<Tensor> inputs(replay.inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& saved = replay.inputs[i].get();
    if (!saved.defined()) continue;
    inputs[i] = saved.detach();
    if (replay.input_wants_grad[i]) inputs[i].requires_grad_(true);
  }
  std::vector<Tensor> outputs;
  {
    GradModeGuard grad_on(true);
    AutocastStateGuard cast_as_before(replay.autocast);
    detail::PhiloxReplay same_draws(replay.draws, "checkpoint");
    outputs = replay.fn(inputs);
    same_draws.check_all_served();
  }
  LATHE_CHECK(outputs.size() == replay.output_count, "checkpoint: the block returned ",
              replay.output_count, " tensors in the forward but ", outputs.size(),
              " when re-run in backward");
  std::vector<Tensor> roots, seeds;
  for (size_t k = 0; k < replay.recorded_slots.size(); ++k) {
    const size_t slot = replay.recorded_slots[k];
    const Tensor& out = outputs[slot];
    const autograd::OutputMeta& first = replay.recorded_meta[k];
    if (!(out.defined() && out.requires_grad() && out.shape() == first.shape &&
          out.dtype() == first.dtype && out.device() == first.device)) {
      std::string now = "an undefined tensor";
      if (out.defined()) {
        now = std::string(dtype_name(out.dtype())) + " " + shape_str(out.shape()) + " on " +
              out.device().str() + (out.requires_grad() ? "" : " not requiring grad");
      }
      LATHE_FAIL("checkpoint: output ", slot, " of the block was ", dtype_name(first.dtype), " ",
                 shape_str(first.shape), " on ", first.device.str(),
                 " requiring grad in the forward, but the re-run in backward gave ", now,
                 " (does the block depend on state that changed since, such as train/eval mode?)");
    }
    roots.push_back(out);
    seeds.push_back(grad_outputs[k]);
  }
  autograd::run_backward(roots, seeds, /*retain_graph=*/false);
  std::vector<Tensor> input_grads(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (replay.input_wants_grad[i]) input_grads[i] = inputs[i].grad();
  }
  return input_grads;
}

}  // namespace

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs) {
  LATHE_CHECK(fn != nullptr, "checkpoint: no function given");
  if (!grad_mode_enabled()) return fn(inputs);

  auto replay = std::make_shared<CheckpointReplay>();
  replay->autocast = autocast_state();
  std::vector<Tensor> outputs;
  {
    detail::PhiloxRecorder draws;
    outputs = fn(inputs);
    replay->draws = draws.take();
  }

  // Detached aliases share the outputs' storage; dropping `outputs` drops the block's graph and
  // every tensor it saved.
  std::vector<Tensor> result, recorded;
  result.reserve(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    LATHE_CHECK(outputs[i].defined(), "checkpoint: output ", i, " of the block is undefined");
    Tensor alias = outputs[i].detach();
    if (outputs[i].requires_grad()) {
      replay->recorded_slots.push_back(i);
      replay->recorded_meta.push_back(
          autograd::OutputMeta{alias.shape(), alias.dtype(), alias.device()});
      recorded.push_back(alias);
    }
    result.push_back(std::move(alias));
  }
  outputs.clear();
  if (recorded.empty()) return result;

  replay->fn = fn;
  replay->output_count = result.size();
  for (const Tensor& in : inputs) {
    replay->inputs.emplace_back(in, "checkpoint");
    replay->input_wants_grad.push_back(in.defined() && in.requires_grad());
  }
  autograd::record("checkpoint", inputs, recorded,
                   [replay](const std::vector<Tensor>& grad_outputs) {
                     return replay_backward(*replay, grad_outputs);
                   });
  return result;
}

Tensor checkpoint(const std::function<Tensor(const Tensor&)>& fn, const Tensor& input) {
  LATHE_CHECK(fn != nullptr, "checkpoint: no function given");
  // By value: backward calls it again long after this frame is gone.
  return checkpoint([fn](const std::vector<Tensor>& in) { return std::vector<Tensor>{fn(in[0])}; },
                    {input})[0];
}

}  // namespace lathe
