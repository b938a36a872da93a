// CUDA graphs: record the kernels and copies a piece of code queues on a cuda device once, then run
// them again with one launch.
//
// Why: a forward pass queues a few hundred kernels, each costing the host several microseconds to
// launch. A small batch (a server answering one request) finishes each kernel faster than the host
// launches the next, so the GPU waits on the host; a replayed graph is queued in one call.
//
//   lathe::Tensor ids = lathe::zeros({8, 64}, lathe::TensorOptions(lathe::DType::I64).device(gpu));
//   lathe::Tensor mask = ...;                 // the graph's inputs: fixed tensors on the device
//   lathe::Tensor logits;                     // its output
//   lathe::NoGradGuard no_grad;
//   lathe::CudaGraph graph =
//       lathe::CudaGraph::capture(gpu, [&] { logits = model.forward(ids, mask); });
//   for (each request) {
//     ids.copy_(request_ids);                 // new values into the same memory
//     graph.replay();                         // logits now holds this request's result
//     use(logits.to(lathe::Device::cpu()));
//   }
//
// What a graph holds, as with CUDA and PyTorch graphs:
//  - The addresses it was captured with: every replay reads the input tensors' memory and writes
//    the output tensors' memory of the capture. Feed it by copying into the inputs (copy_), never
//    by rebinding them; shapes are fixed (capture one graph per shape, e.g. per padded length).
//  - Memory: everything allocated during the capture comes from a pool of the graph's own, which
//    nothing else uses while the graph lives, and memory freed during the capture (temporaries,
//    or tensors from before the capture that the body drops) joins that pool, since the replays
//    read it. The pool goes back to the device when the graph is destroyed; outputs still held
//    then go back when they are dropped.
//  - Several graphs of one model (one per padded sequence length, say) may share one pool
//    (CaptureOptions::share_memory_with): a later capture then reuses the memory the earlier ones
//    freed (their temporaries) instead of taking its own, as PyTorch's `pool=` does. Each graph's
//    outputs stay its own, but its temporaries are another graph's too: replay such graphs one
//    after another on one stream, never at the same time. The pool lives until the last of them
//    is destroyed.
//  - Order: the capture records on a stream of its own; replay() queues the work on the caller's
//    current stream of the device. Replay on the stream the inputs were written on (or order it
//    after that one with Stream::wait); concurrent replays of one graph would share its memory.
//  - Several streams (CUDA's fork and join): inside the body, a created stream that waits for the
//    capture stream (Stream::wait, or an Event recorded in the body) joins the capture; work
//    queued on it from then on is part of the graph, may run beside the capture stream's, and
//    allocates from the graph's pool. Before the body returns, the capture stream must wait for
//    each joined stream after its last work, or the capture fails naming it:
//
//      lathe::Stream side = lathe::Stream::create(gpu, {.blocking = false});
//      graph = lathe::CudaGraph::capture(gpu, [&] {
//        side.wait(lathe::current_stream(gpu));             // fork
//        { lathe::StreamGuard on_side(side); b = branch(x); }
//        a = other_branch(x);                               // meanwhile, on the capture stream
//        lathe::current_stream(gpu).wait(side);             // join
//        out = a + b;
//      });
//
//    Fork from the capturing thread. Prefer non-blocking streams: while a blocking stream is in a
//    capture, CUDA refuses any work on the device's default stream (it would wait for the capture).
//    An Event recorded in a capture marks a point of the graph: streams may wait for it, the host
//    may not (query, synchronize and elapsed_ms refuse it).
//
// Training steps capture too (PyTorch's whole-network recipe): take one step eagerly (it creates
// the optimizer's state), then capture the loop body and replay it per batch:
//
//   step();                                   // zero_grad, forward, backward, clip, AdamW step
//   lathe::Tensor loss;
//   lathe::CudaGraph train = lathe::CudaGraph::capture(gpu, [&] { loss = step(); });
//   for (each batch) {
//     ids.copy_(batch_ids); labels.copy_(batch_labels);
//     train.replay();
//     scheduler.step();                       // the next replay reads the new lr
//     log(loss.item<float>());
//   }
//
// What changes from one replay to the next is not baked in: each dropout (and rand, randn) draws
// its numbers from the global generator at replay time, in capture order, so replays draw what the
// same steps run eagerly would; AdamW::step advances its step counts and reads each group's lr and
// weight decay at replay time. A replayed step is the eager step bit for bit.
//
// What a capture refuses, with an error naming it (and the capture then fails): a host wait
// (item(), Tensor::to(cpu), synchronize, an event's synchronize or query), a copy from host memory
// (upload before the capture or replay), a wait for an event recorded outside the capture, a fork
// not joined back, and an optimizer step a replay could not redo (SGD, the composed Adam update,
// fused_adamw_ called directly, an AdamW step before the optimizer's first).
// A cuda kernel that checks its indices still reports at the next host wait after a replay.
//
// The simulated cuda build records the same work and replays it, and refuses the same operations,
// so graph code is tested in CI; the cpu has no graphs (its work runs as it is issued).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "lathe/core/device.h"
#include "lathe/core/dtype.h"
#include "lathe/core/shape.h"
#include "lathe/core/tensor.h"

namespace lathe {

class CudaGraph;

struct CaptureOptions {
  // Capture into this graph's memory pool instead of a new one (see above). Same device.
  const CudaGraph* share_memory_with = nullptr;
};

class CudaGraph {
 public:
  // Runs `body` with a capture stream of `device` current on this thread and records the work it
  // queues on `device` instead of running it (work queued on other devices runs as usual). Throws
  // lathe::Error for a device without graphs (the cpu) and for work a capture refuses (above);
  // when `body` throws, its exception propagates and nothing is kept.
  static CudaGraph capture(Device device, const std::function<void()>& body,
                           CaptureOptions options = {});

  CudaGraph(CudaGraph&&) noexcept;
  CudaGraph& operator=(CudaGraph&&) noexcept;
  ~CudaGraph();

  // Queues one run of the recorded work on this thread's current stream of device(), after
  // refilling what the run must change (random draws, optimizer steps; see above). Throws, having
  // queued nothing, when an optimizer whose step was captured was destroyed or reloaded.
  void replay() const;
  Device device() const;

 private:
  struct Pool;
  struct State;
  explicit CudaGraph(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// The serving loop above, packaged: a function of tensors made into graphs, one per distinct set of
// input shapes and dtypes (a server's padded lengths and batch sizes), captured at the first call
// with those shapes and all sharing one memory pool. Each call copies the inputs (from any device)
// into that graph's input tensors, replays it and returns its outputs:
//
//   lathe::GraphedFunction classify(gpu, [&](const std::vector<lathe::Tensor>& in) {
//     return std::vector<lathe::Tensor>{model.forward(in[0], in[1])};
//   });
//   lathe::Tensor logits = classify({ids, mask})[0];
//
// For inference: `fn` runs under NoGradGuard, and must do only what a capture allows (above). The
// outputs are the graph's own tensors, overwritten by the next call with the same shapes: read or
// clone them before that. Calls are not thread-safe (the graphs of one pool replay one at a time).
class GraphedFunction {
 public:
  using Fn = std::function<std::vector<Tensor>(const std::vector<Tensor>& inputs)>;
  GraphedFunction(Device device, Fn fn);

  std::vector<Tensor> operator()(const std::vector<Tensor>& inputs);
  // How many graphs (input signatures) have been captured so far.
  size_t graphs() const { return graphs_.size(); }

 private:
  using Signature = std::vector<std::pair<Shape, DType>>;
  struct Captured {
    std::vector<Tensor> inputs, outputs;
    std::unique_ptr<CudaGraph> graph;
  };
  Device device_;
  Fn fn_;
  std::map<Signature, Captured> graphs_;
  const CudaGraph* pool_owner_ = nullptr;  // the first graph: the others share its pool
};

}  // namespace lathe
