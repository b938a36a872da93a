// Dynamic reverse-mode autograd. Every differentiable op that sees an input requiring grad records
// a Node holding its backward rule (a closure next to the op's forward, tinygrad-style) and the
// tensors it saved. backward() runs the nodes in reverse topological order; gradients of a tensor
// used several times accumulate. Saved tensors remember their storage version, so an in-place
// write between forward and backward is reported instead of silently giving wrong gradients.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lathe/core/tensor.h"

namespace lathe {

// Disables graph recording in its scope (evaluation, optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

bool grad_mode_enabled();
void set_grad_mode(bool enabled);

namespace autograd {

struct Edge {
  std::shared_ptr<Node> node;  // null: that input needs no gradient
  uint32_t input_nr = 0;       // which gradient slot of `node` this edge feeds
};

// Metadata of one forward output, enough to make a zero gradient when a multi-output node only
// receives some of its gradients.
struct OutputMeta {
  Shape shape;
  DType dtype = DType::F32;
  Device device;
};

class Node {
 public:
  // Releases the graph behind this node iteratively, so that dropping a very long chain (an RNN
  // unrolled over 10^6 steps) cannot overflow the stack through nested destructors.
  virtual ~Node();
  // Maps gradients of the forward outputs to gradients of the forward inputs (one per edge).
  virtual std::vector<Tensor> apply(std::vector<Tensor>&& grad_outputs) = 0;
  virtual std::string name() const = 0;
  // Drops saved tensors once backward has run without retain_graph.
  virtual void release() {}

  std::vector<Edge> next_edges;
  std::vector<OutputMeta> outputs;
  uint64_t sequence_nr = 0;  // creation order; later nodes run first among ready ones
  // Non-leaf outputs that asked to retain_grad(), by output slot.
  std::vector<std::weak_ptr<TensorImpl>> retained_outputs;
};

struct AutogradMeta {
  bool requires_grad = false;
  bool retains_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;         // non-leaf: the node that made this tensor
  uint32_t output_nr = 0;                // which output of grad_fn
  std::weak_ptr<Node> grad_accumulator;  // leaf: created on first use
};

// A tensor saved for backward, with the storage version at the time it was saved. It keeps a
// detached alias, so saving an op's own output creates no reference cycle.
class SavedTensor {
 public:
  SavedTensor() = default;
  // `op` names the op for the error message if the tensor is modified in place later.
  SavedTensor(const Tensor& t, const char* op);
  const Tensor& get() const;  // throws lathe::Error if the storage was modified since
  bool defined() const { return tensor_.defined(); }
  void reset() { tensor_ = Tensor(); }

 private:
  Tensor tensor_;
  uint64_t version_ = 0;
  const char* op_ = "";
};

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

// True when grad mode is on and any of `inputs` requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);

// Records a node named `op` with `backward` (which returns one gradient per input, undefined
// where none) and makes it the grad_fn of `outputs`. Call only when any_requires_grad(inputs).
void record(const char* op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward);

// Runs backward from `roots` with the given seed gradients.
void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph);

}  // namespace autograd
}  // namespace lathe
