// The cross-entropy kernels' operands and arguments as every benchmark sets them up (the cuda
// row-kernel entries of bench_cuda_kernels.cpp and the per-device ones of
// bench_kernel_families.cpp): [rows, classes] normal logits of dtype t, targets spread over the
// classes, label smoothing 0.1, and the forward run once so that the backward's lse exists.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/kernel_table.h"
#include "lathe/lathe.h"

namespace lathe_bench {

struct CrossEntropyOperands {
  lathe::Tensor logits, targets, loss, lse, grad_loss, grad_logits;
  lathe::kernels::CrossEntropyForwardArgs forward;
  lathe::kernels::CrossEntropyBackwardArgs backward;
};

inline CrossEntropyOperands cross_entropy_operands(int64_t rows, int64_t classes, lathe::DType t,
                                                   lathe::Device device) {
  using lathe::DType;
  const auto on = [&](DType d) { return lathe::TensorOptions(d).device(device); };
  CrossEntropyOperands o;
  o.logits = lathe::randn({rows, classes}, on(DType::F32)).to(t);
  std::vector<int64_t> targets(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) targets[size_t(r)] = (r * 7919) % classes;
  o.targets = lathe::from_vector(targets, {rows}, lathe::TensorOptions().device(device));
  o.loss = lathe::empty({rows}, on(t));
  o.lse = lathe::empty({rows}, on(DType::F32));
  o.grad_loss = lathe::ones({rows}, on(t));
  o.grad_logits = lathe::empty({rows, classes}, on(t));
  auto& f = o.forward;
  f.dtype = t;
  f.rows = rows;
  f.classes = classes;
  f.logits = o.logits.data_ptr();
  f.targets = static_cast<const int64_t*>(o.targets.data_ptr());
  f.loss = o.loss.data_ptr();
  f.lse = o.lse.data_ptr();
  f.label_smoothing = 0.1;
  auto& b = o.backward;
  b.dtype = t;
  b.rows = rows;
  b.classes = classes;
  b.logits = f.logits;
  b.targets = f.targets;
  b.lse = f.lse;
  b.grad_loss = o.grad_loss.data_ptr();
  b.grad_logits = o.grad_logits.data_ptr();
  b.label_smoothing = 0.1;
  lathe::kernels::kernel_table(device.type).cross_entropy_forward(f);
  return o;
}

}  // namespace lathe_bench
