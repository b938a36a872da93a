// embedding: rows of weight [V, D] picked by integer indices of any shape, out = indices.shape +
// [D]. The forward is the index_select kernel over the flattened indices; the backward is the
// embedding_backward kernel, which writes the whole [V, D] gradient: each row the sum of the
// gradient rows of the positions that picked it (in a deterministic order, so repeated indices sum
// reproducibly; on cuda by sorting the positions by index and summing segments), the padding row
// and unused rows zero. An out-of-range index is reported by value instead of read out of bounds:
// on the cpu checked here first; on cuda by the kernel that reads it, raised at the host's next
// wait for the device (kernels/cuda/device_report.h), since reading the indices back here made
// the host wait at every lookup.
#include "core/tensor_internal.h"

namespace lathe {

Tensor embedding(const Tensor& indices, const Tensor& weight, std::optional<int64_t> padding_idx) {
  const char* op = "embedding";
  detail::check_defined(indices, op, "indices");
  detail::check_defined(weight, op, "weight");
  LATHE_CHECK(indices.dtype() == DType::I64 || indices.dtype() == DType::I32, op,
              ": indices must be i32 or i64, got ", detail::describe(indices));
  LATHE_CHECK(weight.dim() == 2, op, ": weight must be [num_embeddings, dim], got ",
              detail::describe(weight));
  detail::check_same_device(indices, weight, op);
  const int64_t V = weight.size(0), D = weight.size(1);
  std::optional<int64_t> pad;
  if (padding_idx) {
    LATHE_CHECK(*padding_idx >= -V && *padding_idx < V, op, ": padding_idx ", *padding_idx,
                " is out of range for ", V, " embeddings (weight ", detail::describe(weight), ")");
    pad = *padding_idx < 0 ? *padding_idx + V : *padding_idx;
  }
  if (indices.device().is_cpu()) {
    const std::vector<int64_t> values = indices.to_vector<int64_t>();
    for (size_t i = 0; i < values.size(); ++i) {
      LATHE_CHECK(values[i] >= 0 && values[i] < V, op, ": index ", values[i], " (at position ", i,
                  ") is out of range for ", V, " embeddings (weight ", detail::describe(weight),
                  ")");
    }
  }

  const int64_t n = indices.numel();
  Tensor flat = indices.detach().to(DType::I64).reshape({n}).contiguous();
  Tensor out_2d = empty({n, D}, TensorOptions(weight.dtype()).device(weight.device()));
  if (n > 0 && D > 0) {
    const kernels::ReportAs report_as(op);
    LATHE_KERNEL(weight.device(), index_select, op)
    (detail::make_view(weight.detach()), 0, detail::make_view(flat), detail::make_view(out_2d));
  }
  Shape out_shape = indices.shape();
  out_shape.push_back(D);
  Tensor out = out_2d.view(out_shape);

  if (autograd::any_requires_grad({&weight})) {
    autograd::record(
        op, {indices, weight}, {out},
        [saved = autograd::SavedTensor(flat, op), V, D, n, pad](const std::vector<Tensor>& g) {
          const Tensor& index = saved.get();
          // f16/bf16 on the cpu: the f32 kernel on the widened gradient, rounded once.
          const bool widen = detail::half_via_f32(g[0]);
          const Tensor gy = widen ? g[0].to(DType::F32) : g[0];
          Tensor gw = empty({V, D}, TensorOptions(gy.dtype()).device(gy.device()));
          const Tensor src = gy.reshape({n, D});
          kernels::EmbeddingBackwardArgs args;
          args.indices = static_cast<const int64_t*>(index.data_ptr());
          args.n = n;
          args.grad_out = detail::make_view(src);
          args.grad_weight = gw.data_ptr();
          args.num_embeddings = V;
          args.padding_idx = pad ? *pad : -1;
          LATHE_KERNEL(gy.device(), embedding_backward, "embedding backward")(args);
          return std::vector<Tensor>{Tensor(), widen ? gw.to(g[0].dtype()) : gw};
        });
  }
  return out;
}

}  // namespace lathe
