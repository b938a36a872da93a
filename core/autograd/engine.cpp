// The backward engine and the autograd parts of Tensor. Gradients flow along Edges from the root
// to leaf AccumulateGrad nodes; a node runs once all of its consumers have delivered their
// gradients (dependency counting), and among ready nodes the most recently created runs first.
#include <algorithm>
#include <atomic>
#include <queue>
#include <unordered_map>

#include "lathe/core/autocast.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"

namespace lathe {

namespace {
thread_local bool g_grad_enabled = true;
std::atomic<uint64_t> g_next_sequence_nr{0};
}  // namespace

bool grad_mode_enabled() {
  return g_grad_enabled;
}
void set_grad_mode(bool enabled) {
  g_grad_enabled = enabled;
}
NoGradGuard::NoGradGuard() : previous_(g_grad_enabled) {
  g_grad_enabled = false;
}
NoGradGuard::~NoGradGuard() {
  g_grad_enabled = previous_;
}

namespace autograd {

Node::~Node() {
  thread_local bool releasing = false;
  thread_local std::vector<std::shared_ptr<Node>> pending;
  for (Edge& e : next_edges) {
    if (e.node && e.node.use_count() == 1) pending.push_back(std::move(e.node));
  }
  if (releasing) return;  // an outer destructor drains `pending`
  releasing = true;
  while (!pending.empty()) {
    std::shared_ptr<Node> last = std::move(pending.back());
    pending.pop_back();
    last.reset();  // its destructor only queues its own edges
  }
  releasing = false;
}

namespace {

AutogradMeta& meta_of(const Tensor& t) {
  auto& impl = t.impl();
  if (!impl.autograd) impl.autograd = std::make_unique<AutogradMeta>();
  return *impl.autograd;
}

// A node made by an op's forward: runs the op's backward closure.
class FunctionNode final : public Node {
 public:
  FunctionNode(const char* op, BackwardFn fn) : op_(op), fn_(std::move(fn)) {}
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override {
    LATHE_CHECK(fn_ != nullptr, "backward: trying to run backward through '", op_,
                "' a second time; its saved tensors were freed after the first backward. Pass "
                "retain_graph=true to the first backward() to keep them.");
    for (size_t i = 0; i < grads.size(); ++i) {
      if (!grads[i].defined())
        grads[i] =
            zeros(outputs[i].shape, TensorOptions(outputs[i].dtype).device(outputs[i].device));
    }
    return fn_(grads);
  }
  std::string name() const override { return op_; }
  void release() override { fn_ = nullptr; }

 private:
  const char* op_;
  BackwardFn fn_;
};

// The sink of a leaf tensor: adds the incoming gradient into tensor.grad().
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  std::vector<Tensor> apply(std::vector<Tensor>&& grads) override {
    accumulate(Tensor(leaf_), grads[0]);
    return {};
  }
  std::string name() const override { return "AccumulateGrad"; }

  static void accumulate(const Tensor& target, const Tensor& grad) {
    if (!grad.defined()) return;
    AutogradMeta& meta = meta_of(target);
    Tensor g = grad.dtype() == target.dtype() ? grad : grad.to(target.dtype());
    if (!meta.grad.defined()) {
      // Steal the buffer when nobody else can see it; otherwise copy, so that accumulating into
      // this gradient later never writes into another tensor's gradient.
      bool sole_owner = g.impl_ptr().use_count() <= 2 && g.storage().use_count() == 1 &&
                        g.is_contiguous() && g.offset() == 0;
      meta.grad = sole_owner ? g.detach() : g.detach().clone();
    } else {
      meta.grad.add_(g);
    }
  }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// The edge along which a gradient for `t` enters the graph.
Edge gradient_edge(const Tensor& t) {
  AutogradMeta& meta = meta_of(t);
  if (meta.grad_fn) return Edge{meta.grad_fn, meta.output_nr};
  std::shared_ptr<Node> acc = meta.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    acc->outputs.push_back(OutputMeta{t.shape(), t.dtype(), t.device()});
    acc->sequence_nr = g_next_sequence_nr++;
    meta.grad_accumulator = acc;
  }
  return Edge{acc, 0};
}

}  // namespace

SavedTensor::SavedTensor(const Tensor& t, const char* op)
    : tensor_(t.defined() ? t.detach() : Tensor()),
      version_(t.defined() ? t.storage()->version() : 0),
      op_(op) {}

const Tensor& SavedTensor::get() const {
  if (tensor_.defined()) {
    uint64_t now = tensor_.storage()->version();
    LATHE_CHECK(now == version_, "backward of '", op_, "': a tensor it saved for backward (",
                dtype_name(tensor_.dtype()), " ", shape_str(tensor_.shape()),
                ") was modified by an in-place operation (version ", version_, " when saved, now ",
                now, "). Clone the tensor before modifying it in place.");
  }
  return tensor_;
}

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs) {
    if (t && t->defined() && t->requires_grad()) return true;
  }
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor& t : inputs) {
    if (t.defined() && t.requires_grad()) return true;
  }
  return false;
}

void record(const char* op, const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs,
            BackwardFn backward) {
  auto node = std::make_shared<FunctionNode>(op, std::move(backward));
  node->sequence_nr = g_next_sequence_nr++;
  node->next_edges.reserve(inputs.size());
  for (const Tensor& in : inputs) {
    node->next_edges.push_back(in.defined() && in.requires_grad() ? gradient_edge(in) : Edge{});
  }
  node->outputs.reserve(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& out = outputs[i];
    node->outputs.push_back(OutputMeta{out.shape(), out.dtype(), out.device()});
    AutogradMeta& meta = meta_of(out);
    LATHE_CHECK(!meta.grad_fn, "record(", op, "): output ", i, " already has a grad_fn");
    meta.requires_grad = true;
    meta.grad_fn = node;
    meta.output_nr = uint32_t(i);
  }
}

void run_backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph) {
  LATHE_CHECK(roots.size() == grad_roots.size(), "backward: ", roots.size(), " roots but ",
              grad_roots.size(), " gradients");
  std::vector<Edge> root_edges;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    LATHE_CHECK(r.requires_grad(), "backward: tensor ", dtype_name(r.dtype()), " ",
                shape_str(r.shape()),
                " does not require grad and has no grad_fn (did you forget requires_grad_() on a "
                "leaf, or run under NoGradGuard?)");
    root_edges.push_back(gradient_edge(r));
  }

  // Count, for every node reachable from the roots, how many edges point at it.
  std::unordered_map<Node*, int> dependencies;
  {
    std::vector<Node*> stack;
    std::unordered_map<Node*, bool> seen;
    for (const Edge& e : root_edges) {
      if (!seen[e.node.get()]) {
        seen[e.node.get()] = true;
        stack.push_back(e.node.get());
      }
    }
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      for (const Edge& e : n->next_edges) {
        if (!e.node) continue;
        ++dependencies[e.node.get()];
        if (!seen[e.node.get()]) {
          seen[e.node.get()] = true;
          stack.push_back(e.node.get());
        }
      }
    }
  }

  std::unordered_map<Node*, std::vector<Tensor>> buffers;
  auto deliver = [&](const Edge& e, const Tensor& grad) {
    auto& slots = buffers[e.node.get()];
    if (slots.empty()) slots.resize(e.node->outputs.size());
    if (!grad.defined()) return;
    const OutputMeta& expected = e.node->outputs[e.input_nr];
    LATHE_CHECK(grad.shape() == expected.shape, "backward: gradient of shape ",
                shape_str(grad.shape()), " delivered to '", e.node->name(), "' whose output ",
                e.input_nr, " has shape ", shape_str(expected.shape));
    // A gradient arrives in its output's dtype (an op may hand back an f32 gradient for a bf16
    // output it consumed, or the caller seed one), so each backward rule sees the dtypes its
    // forward saw, and accumulation stays in that dtype.
    Tensor g = grad.dtype() == expected.dtype || !is_floating(expected.dtype)
                   ? grad
                   : grad.to(expected.dtype);
    Tensor& slot = slots[e.input_nr];
    slot = slot.defined() ? add(slot, g) : g;
  };

  auto later_first = [](const std::shared_ptr<Node>& a, const std::shared_ptr<Node>& b) {
    return a->sequence_nr < b->sequence_nr;
  };
  std::priority_queue<std::shared_ptr<Node>, std::vector<std::shared_ptr<Node>>,
                      decltype(later_first)>
      ready(later_first);

  NoGradGuard no_grad;
  // Gradients run in the dtypes of the forward, whether or not backward() is called inside an
  // AutocastGuard (PyTorch's autocast does not apply to backward ops either).
  NoAutocastGuard no_autocast;
  for (size_t i = 0; i < root_edges.size(); ++i) {
    const Tensor& r = roots[i];
    Tensor g = grad_roots[i];
    if (!g.defined()) {
      LATHE_CHECK(r.numel() == 1, "backward: tensor of shape ", shape_str(r.shape()),
                  " is not a scalar; pass a gradient of the same shape to backward()");
      g = ones(r.shape(), TensorOptions(r.dtype()).device(r.device()));
    }
    LATHE_CHECK(g.shape() == r.shape(), "backward: gradient shape ", shape_str(g.shape()),
                " does not match the tensor's shape ", shape_str(r.shape()));
    deliver(root_edges[i], g);
  }
  for (const Edge& e : root_edges) {
    if (dependencies[e.node.get()] == 0) {
      dependencies[e.node.get()] = -1;  // queued
      ready.push(e.node);
    }
  }

  while (!ready.empty()) {
    std::shared_ptr<Node> node = ready.top();
    ready.pop();
    std::vector<Tensor> grads = std::move(buffers[node.get()]);
    buffers.erase(node.get());
    grads.resize(node->outputs.size());

    for (size_t i = 0; i < node->retained_outputs.size() && i < grads.size(); ++i) {
      if (auto impl = node->retained_outputs[i].lock()) {
        if (grads[i].defined()) AccumulateGrad::accumulate(Tensor(impl), grads[i].clone());
      }
    }

    bool any = std::any_of(grads.begin(), grads.end(), [](const Tensor& g) { return g.defined(); });
    std::vector<Tensor> input_grads;
    if (any) {
      input_grads = node->apply(std::move(grads));
      if (!retain_graph) node->release();
    }
    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      deliver(e, i < input_grads.size() ? input_grads[i] : Tensor());
      if (--dependencies[e.node.get()] == 0) ready.push(e.node);
    }
  }
}

}  // namespace autograd

// ---- Tensor's autograd API ----

bool Tensor::requires_grad() const {
  const autograd::AutogradMeta* m = impl().autograd.get();
  return m && (m->requires_grad || m->grad_fn);
}

Tensor& Tensor::requires_grad_(bool enabled) {
  auto& meta = impl().autograd;
  LATHE_CHECK(!(meta && meta->grad_fn),
              "requires_grad_: only leaf tensors can change "
              "requires_grad; this tensor was produced by '",
              meta ? meta->grad_fn->name() : "", "' (use detach() first)");
  LATHE_CHECK(!enabled || is_floating(dtype()),
              "requires_grad_: only floating tensors can "
              "require gradients, this one is ",
              dtype());
  if (!meta) meta = std::make_unique<autograd::AutogradMeta>();
  meta->requires_grad = enabled;
  return *this;
}

bool Tensor::is_leaf() const {
  const autograd::AutogradMeta* m = impl().autograd.get();
  return !(m && m->grad_fn);
}

Tensor Tensor::grad() const {
  const autograd::AutogradMeta* m = impl().autograd.get();
  return m ? m->grad : Tensor();
}

void Tensor::set_grad(const Tensor& grad) {
  if (grad.defined()) {
    LATHE_CHECK(grad.shape() == shape(), "set_grad: gradient shape ", shape_str(grad.shape()),
                " does not match tensor shape ", shape_str(shape()));
  }
  if (!impl().autograd) impl().autograd = std::make_unique<autograd::AutogradMeta>();
  impl().autograd->grad = grad;
}

void Tensor::zero_grad() {
  if (impl().autograd) impl().autograd->grad = Tensor();
}

void Tensor::retain_grad() {
  LATHE_CHECK(requires_grad(), "retain_grad: tensor does not require grad");
  if (is_leaf()) return;  // leaves keep their gradient anyway
  autograd::AutogradMeta& m = *impl().autograd;
  m.retains_grad = true;
  auto& slots = m.grad_fn->retained_outputs;
  if (slots.size() <= m.output_nr) slots.resize(m.output_nr + 1);
  slots[m.output_nr] = impl_ptr();
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::run_backward({*this}, {gradient}, retain_graph);
}

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = this->impl().storage;
  impl->shape = shape();
  impl->strides = strides();
  impl->offset = offset();
  impl->dtype = dtype();
  return Tensor(std::move(impl));
}

std::shared_ptr<autograd::Node> Tensor::grad_fn() const {
  const autograd::AutogradMeta* m = impl().autograd.get();
  return m ? m->grad_fn : nullptr;
}

}  // namespace lathe
