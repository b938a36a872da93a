#include "step_graphs.h"

#include <utility>
#include <vector>

namespace lathe::finetune {

StepGraphs::StepGraphs(Device device, optim::Optimizer& optimizer, bool weighted,
                       ForwardBackward forward_backward, Clip clip)
    : device_(device),
      optimizer_(optimizer),
      weighted_(weighted),
      forward_backward_(std::move(forward_backward)),
      clip_(std::move(clip)) {}

const StepGraphs::Outputs& StepGraphs::micro_batch(const data::Batch& b, bool first, bool last,
                                                   double weight) {
  const Kind kind{b.input_ids.size(0), b.input_ids.size(1), first, last};
  if (auto found = micro_.find(kind); found != micro_.end()) {
    MicroGraph& g = found->second;
    g.ids.copy_(b.input_ids);
    g.mask.copy_(b.attention_mask);
    g.types.copy_(b.token_type_ids);
    g.labels.copy_(b.labels);
    if (weighted_) g.weight.fill_(weight);
    g.graph->replay();
    return g.outputs;
  }
  MicroGraph g;
  g.ids = b.input_ids.to(device_);
  g.mask = b.attention_mask.to(device_);
  g.types = b.token_type_ids.to(device_);
  g.labels = b.labels.to(device_);
  // f32, the loss's dtype: it multiplies as the eager loop's `loss * weight` does.
  if (weighted_) g.weight = full({}, weight, TensorOptions(DType::F32).device(device_));
  CaptureOptions options;
  options.share_memory_with = pool_;
  g.graph = std::make_unique<CudaGraph>(CudaGraph::capture(
      device_,
      [&] {
        if (first) {
          NoGradGuard no_grad;
          for (const optim::ParamGroup& group : optimizer_.param_groups()) {
            for (const Tensor& p : group.params) {
              Tensor grad = p.grad();
              if (grad.defined()) grad.zero_();
            }
          }
        }
        g.outputs.loss = forward_backward_(g.ids, g.mask, g.types, g.labels, g.weight);
        if (last) g.outputs.grad_norm = clip_();
      },
      options));
  if (pool_ == nullptr) pool_ = g.graph.get();
  g.graph->replay();
  return micro_.emplace(kind, std::move(g)).first->second.outputs;
}

void StepGraphs::optimizer_step() {
  if (!update_) {
    CaptureOptions options;
    options.share_memory_with = pool_;
    update_ = std::make_unique<CudaGraph>(CudaGraph::capture(
        device_, [&] { optimizer_.step(); }, options));
  }
  update_->replay();
}

int64_t StepGraphs::captured() const {
  return int64_t(micro_.size()) + (update_ ? 1 : 0);
}

GraphedFunction graphed_forward(Device device, const nn::BertForSequenceClassification& model) {
  return GraphedFunction(device, [&model](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{model.forward(in[0], in[1], in[2])};
  });
}

}  // namespace lathe::finetune
