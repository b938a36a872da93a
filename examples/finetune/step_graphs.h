// --cuda-graphs: training steps and evaluations replayed from CUDA graphs
// (lathe/core/cuda_graph.h).
//
// After the process's first step (eager: it creates the gradients and the optimizer's state), a
// step replays a graph per micro-batch, then the optimizer step's. A micro-batch's graph is
// captured at the first batch of its kind: its shape, whether it is the step's first (it zeroes the
// gradients in place first) and whether it is the step's last (it clips after its backward). Each
// leaves its weighted loss, and the last the gradient norm, in output tensors; the host reads them,
// as the eager loop does, and only then replays the optimizer's graph, so a non-finite step still
// stops the run before it changes the weights. The gradients stay allocated between steps (no
// zero_grad) and the backward adds into them in place, so every graph reads and writes the same
// gradient tensors. All graphs share one memory pool and replay on one stream, which also orders
// the host's sum of the micro-batch losses before the next replay of the same graph overwrites its
// output. With accumulation the loss weight (the batch's share of the step's examples) is an input
// tensor, not a constant. Dropout draws and AdamW's lr and step count are refilled at each replay:
// with the same padding the run is the eager run, bit for bit.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <tuple>

#include "lathe/lathe.h"

namespace lathe::finetune {

class StepGraphs {
 public:
  // One micro-batch's forward and backward on the device: the loss times `weight` (a 0-dim f32
  // tensor, or undefined for no weighting), detached.
  using ForwardBackward =
      std::function<Tensor(const Tensor& ids, const Tensor& mask, const Tensor& types,
                           const Tensor& labels, const Tensor& weight)>;
  // Clips the gradients; returns their norm (a device tensor).
  using Clip = std::function<Tensor()>;

  // `weighted`: the micro-batches' losses are weighted (gradient accumulation).
  StepGraphs(Device device, optim::Optimizer& optimizer, bool weighted,
             ForwardBackward forward_backward, Clip clip);

  // A replayed micro-batch's outputs, overwritten by the next replay of its graph.
  struct Outputs {
    Tensor loss;       // weighted
    Tensor grad_norm;  // for a step's last micro-batch only
  };
  // Copies batch `b` into its graph's inputs and replays it (capturing it first, at its kind's
  // first batch).
  const Outputs& micro_batch(const data::Batch& b, bool first, bool last, double weight);
  // Replays the optimizer step (capturing it first).
  void optimizer_step();
  // Graphs captured so far.
  int64_t captured() const;

 private:
  struct MicroGraph {
    Tensor ids, mask, types, labels, weight;  // the graph's inputs
    Outputs outputs;
    std::unique_ptr<CudaGraph> graph;
  };
  // (batch rows, padded length, first of the step, last of the step)
  using Kind = std::tuple<int64_t, int64_t, bool, bool>;

  Device device_;
  optim::Optimizer& optimizer_;
  bool weighted_;
  ForwardBackward forward_backward_;
  Clip clip_;
  std::map<Kind, MicroGraph> micro_;
  std::unique_ptr<CudaGraph> update_;
  const CudaGraph* pool_ = nullptr;  // the first graph: the others share its memory pool
};

// A model's forward (ids, mask, types -> logits) as a GraphedFunction: one graph per batch shape,
// kept across evaluations (the optimizer updates the weights in place, and under autocast the
// graph casts them itself at each replay).
GraphedFunction graphed_forward(Device device, const nn::BertForSequenceClassification& model);

}  // namespace lathe::finetune
