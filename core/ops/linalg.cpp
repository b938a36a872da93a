// matmul and linear on top of the batched gemm kernel.
//
// Operands are handed to the kernel without copies whenever BLAS can read them: a matrix whose
// last two dims are row-major or transposed (column-major) with a usable leading dimension goes in
// as is with the matching trans flag (so weight.t(), k.transpose(-1, -2) and gradients built from
// transposes cost no copy); anything else is made contiguous first. Broadcast batch dims become
// zero batch strides; batch dims that cannot be described by one stride are looped over here, and
// when the right operand is shared by the whole batch (x[B, T, in] @ w[in, out]) the batch folds
// into the rows of a single GEMM. linear is its own node so the bias is written into the output
// before the GEMM accumulates into it (beta = 1) and the weight is read transposed in place.
//
// f16/bf16 operands multiply with f32 accumulation and one rounding of the result on every device;
// under autocast both ops cast their f32 inputs down first (core/autocast.cpp).
#include <algorithm>
#include <optional>

#include "core/tensor_internal.h"
#include "lathe/core/matmul_precision.h"

namespace lathe {

namespace {

struct BlasLayout {
  bool trans = false;
  int64_t ld = 1;
};

// How BLAS can read a rows x cols matrix with these strides, if it can. A dim of size 1 has no
// meaningful stride, so it never disqualifies a layout.
std::optional<BlasLayout> blas_layout(int64_t rows, int64_t cols, int64_t row_stride,
                                      int64_t col_stride) {
  if (rows == 0 || cols == 0) return BlasLayout{false, std::max<int64_t>(1, cols)};
  if ((cols == 1 || col_stride == 1) && (rows == 1 || row_stride >= cols)) {
    return BlasLayout{false, rows == 1 ? cols : row_stride};
  }
  if ((rows == 1 || row_stride == 1) && (cols == 1 || col_stride >= rows)) {
    return BlasLayout{true, cols == 1 ? rows : col_stride};
  }
  return std::nullopt;
}

// One GEMM operand: a tensor BLAS can read, its layout and its strides over the output's batch
// dims (0 where it is broadcast).
struct Operand {
  Tensor t;
  BlasLayout layout;
  Strides batch_strides;
};

Operand prepare_operand(const Tensor& x, const Shape& batch) {
  const int64_t nd = x.dim();
  auto layout_of = [&](const Tensor& t) {
    return blas_layout(t.shape()[size_t(nd - 2)], t.shape()[size_t(nd - 1)],
                       t.strides()[size_t(nd - 2)], t.strides()[size_t(nd - 1)]);
  };
  Operand op{x, {}, Strides(batch.size(), 0)};
  auto layout = layout_of(x);
  if (!layout) {
    op.t = x.contiguous();
    layout = layout_of(op.t);
  }
  op.layout = *layout;
  const size_t lead = batch.size() - size_t(nd - 2);
  for (size_t i = 0; i + 2 < size_t(nd); ++i) {
    if (op.t.shape()[i] != 1) op.batch_strides[lead + i] = op.t.strides()[i];
  }
  return op;
}

struct BatchDim {
  int64_t size, a, b, c;  // extent and each operand's stride
};

// c[batch..., m, n] (+)= a[..., m, k] @ b[..., k, n]; a's and b's batch dims broadcast to `batch`
// (c's leading dims). beta = 1 accumulates into c (linear's bias), beta = 0 overwrites it.
void gemm_into(const Tensor& c, const Tensor& a_in, const Tensor& b_in, const Shape& batch,
               double beta, const char* op_name) {
  const int64_t m = c.shape()[c.shape().size() - 2], n = c.shape().back();
  const int64_t k = a_in.shape().back();
  if (c.numel() == 0) return;
  if (detail::half_via_f32(c) && c.dtype() != DType::BF16) {
    // The cpu GEMM takes f32, f64 and bf16 (AMX tiles where the processor has them): f16 is
    // widened (exact), multiplied with f32 accumulation and rounded once, as the cuda GEMM does
    // with f16 inputs.
    Tensor c32 = beta != 0.0
                     ? c.to(DType::F32)
                     : Tensor::empty(c.shape(), TensorOptions(DType::F32).device(c.device()));
    gemm_into(c32, a_in.to(DType::F32), b_in.to(DType::F32), batch, beta, op_name);
    detail::copy_into(c32, c);
    return;
  }
  Operand a = prepare_operand(a_in, batch), b = prepare_operand(b_in, batch);
  const Strides c_strides = c.strides();
  const int64_t ldc = std::max<int64_t>(1, c_strides[c_strides.size() - 2]);

  // Merge batch dims that all three operands step through uniformly, outermost first.
  std::vector<BatchDim> dims;
  for (size_t i = 0; i < batch.size(); ++i) {
    if (batch[i] == 1) continue;
    BatchDim d{batch[i], a.batch_strides[i], b.batch_strides[i], c_strides[i]};
    if (!dims.empty()) {
      BatchDim& last = dims.back();
      if (last.a == d.a * d.size && last.b == d.b * d.size && last.c == d.c * d.size) {
        last = {last.size * d.size, d.a, d.b, d.c};
        continue;
      }
    }
    dims.push_back(d);
  }
  int64_t rows = m;
  // A right operand shared by the whole (inner) batch: stack the batch into the rows of one GEMM.
  if (!dims.empty()) {
    const BatchDim& inner = dims.back();
    if (inner.b == 0 && !a.layout.trans && inner.a == m * a.layout.ld && inner.c == m * ldc) {
      rows = m * inner.size;
      dims.pop_back();
    }
  }
  // More than one batch dim left means a loop of kernel calls below. On a GPU each is a launch
  // of a small GEMM (attention's [B, H, T, d] views of a [B, T, H*d] projection: B calls of H
  // batches, seen as the 10x call count of an f32 BERT step on an H200), while one copy makes
  // the batch uniform: copy the strided operands and issue a single strided-batched call.
  if (dims.size() > 1 && c.device().type == DeviceType::CUDA &&
      (!a_in.is_contiguous() || !b_in.is_contiguous())) {
    gemm_into(c, a_in.contiguous(), b_in.contiguous(), batch, beta, op_name);
    return;
  }
  kernels::GemmArgs args;
  args.dtype = c.dtype();
  args.trans_a = a.layout.trans;
  args.trans_b = b.layout.trans;
  args.m = rows;
  args.n = n;
  args.k = k;
  args.lda = a.layout.ld;
  args.ldb = b.layout.ld;
  args.ldc = ldc;
  args.beta = beta;
  args.allow_tf32 = args.dtype == DType::F32 && float32_matmul_precision() == MatmulPrecision::High;
  if (!dims.empty()) {
    args.batch = dims.back().size;
    args.batch_stride_a = dims.back().a;
    args.batch_stride_b = dims.back().b;
    args.batch_stride_c = dims.back().c;
    dims.pop_back();
  }
  // The remaining outer dims are walked here, one kernel call per index.
  int64_t outer = 1;
  for (const BatchDim& d : dims) outer *= d.size;
  const size_t elem = element_size(c.dtype());
  auto* a_base = static_cast<const char*>(a.t.data_ptr());
  auto* b_base = static_cast<const char*>(b.t.data_ptr());
  auto* c_base = static_cast<char*>(c.data_ptr());
  auto gemm = LATHE_KERNEL(c.device(), gemm, op_name);
  std::vector<int64_t> index(dims.size(), 0);
  for (int64_t step = 0; step < outer; ++step) {
    int64_t off_a = 0, off_b = 0, off_c = 0;
    for (size_t i = 0; i < dims.size(); ++i) {
      off_a += index[i] * dims[i].a;
      off_b += index[i] * dims[i].b;
      off_c += index[i] * dims[i].c;
    }
    args.a = a_base + off_a * int64_t(elem);
    args.b = b_base + off_b * int64_t(elem);
    args.c = c_base + off_c * int64_t(elem);
    gemm(args);
    for (size_t i = dims.size(); i-- > 0;) {
      if (++index[i] < dims[i].size) break;
      index[i] = 0;
    }
  }
}

void check_matmul_args(const Tensor& a, const Tensor& b, const char* op, const char* name_a,
                       const char* name_b) {
  detail::check_defined(a, op, name_a);
  detail::check_defined(b, op, name_b);
  detail::check_same_device(a, b, op);
  detail::check_same_dtype(a, b, op);
  detail::check_floating(a, op);
}

// Both operands have at least 2 dims here.
Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  const int64_t m = sa[sa.size() - 2], n = sb.back();
  Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  const size_t nb = std::max(batch_a.size(), batch_b.size());
  Shape batch(nb, 1);
  for (size_t i = 0; i < nb; ++i) {
    const int64_t da = i + batch_a.size() >= nb ? batch_a[i + batch_a.size() - nb] : 1;
    const int64_t db = i + batch_b.size() >= nb ? batch_b[i + batch_b.size() - nb] : 1;
    LATHE_CHECK(da == db || da == 1 || db == 1, "matmul: batch dims of ", shape_str(sa), " and ",
                shape_str(sb), " cannot be broadcast (", shape_str(batch_a), " vs ",
                shape_str(batch_b), ")");
    batch[i] = da == 1 ? db : da;
  }
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor out = Tensor::empty(out_shape, TensorOptions(a.dtype()).device(a.device()));
  {
    NoGradGuard no_grad;
    gemm_into(out, a, b, batch, 0.0, "matmul");
  }
  if (autograd::any_requires_grad({&a, &b})) {
    const bool need_a = a.requires_grad(), need_b = b.requires_grad();
    autograd::SavedTensor saved_a =
        need_b ? autograd::SavedTensor(a, "matmul") : autograd::SavedTensor();
    autograd::SavedTensor saved_b =
        need_a ? autograd::SavedTensor(b, "matmul") : autograd::SavedTensor();
    autograd::record("matmul", {a, b}, {out},
                     [saved_a, saved_b, need_a, need_b, shape_a = sa,
                      shape_b = sb](const std::vector<Tensor>& g) {
                       const Tensor& grad = g[0];
                       Tensor grad_a, grad_b;
                       if (need_a) {
                         grad_a = matmul(grad, saved_b.get().transpose(-1, -2));
                         if (grad_a.shape() != shape_a) grad_a = sum_to(grad_a, shape_a);
                       }
                       if (need_b) {
                         const Tensor& x = saved_a.get();
                         if (shape_b.size() == 2 && x.dim() > 2) {
                           // b is shared by the batch: contract over batch and rows in one GEMM
                           // instead of making a gradient per batch entry and summing them.
                           grad_b = matmul(x.reshape({-1, shape_a.back()}).t(),
                                           grad.reshape({-1, shape_b.back()}));
                         } else {
                           grad_b = matmul(x.transpose(-1, -2), grad);
                           if (grad_b.shape() != shape_b) grad_b = sum_to(grad_b, shape_b);
                         }
                       }
                       return std::vector<Tensor>{grad_a, grad_b};
                     });
  }
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  if (auto cast = detail::autocast_inputs("matmul", {&a, &b})) {
    NoAutocastGuard inside;
    return matmul((*cast)[0], (*cast)[1]);
  }
  check_matmul_args(a, b, "matmul", "a", "b");
  LATHE_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need at least 1 dim, got ",
              detail::describe(a), " and ", detail::describe(b));
  const int64_t ka = a.shape().back();
  const int64_t kb = b.dim() == 1 ? b.shape()[0] : b.shape()[size_t(b.dim() - 2)];
  LATHE_CHECK(ka == kb, "matmul: shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()),
              " are not aligned (", ka, " vs ", kb, ")");
  // numpy semantics: a 1-D left operand is a row, a 1-D right operand a column, and the added
  // dim is removed from the result again (so vector . vector is a 0-dim tensor).
  Tensor a2 = a.dim() == 1 ? a.unsqueeze(0) : a;
  Tensor b2 = b.dim() == 1 ? b.unsqueeze(1) : b;
  Tensor out = matmul_nd(a2, b2);
  if (b.dim() == 1) out = out.squeeze(-1);
  if (a.dim() == 1) out = out.squeeze(out.dim() - 1 - (b.dim() == 1 ? 0 : 1));
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  if (auto cast = detail::autocast_inputs("linear", {&x, &weight, &bias})) {
    NoAutocastGuard inside;
    return linear((*cast)[0], (*cast)[1], (*cast)[2]);
  }
  check_matmul_args(x, weight, "linear", "x", "weight");
  LATHE_CHECK(weight.dim() == 2, "linear: weight must be 2-D [out_features, in_features], got ",
              detail::describe(weight));
  LATHE_CHECK(x.dim() >= 1, "linear: input must have at least 1 dim, got ", detail::describe(x));
  const int64_t out_features = weight.shape()[0], in_features = weight.shape()[1];
  LATHE_CHECK(x.shape().back() == in_features, "linear: input ", shape_str(x.shape()),
              " does not match weight ", shape_str(weight.shape()), " (", x.shape().back(), " vs ",
              in_features, " input features)");
  if (bias.defined()) {
    detail::check_same_device(x, bias, "linear");
    detail::check_same_dtype(x, bias, "linear");
    LATHE_CHECK(bias.dim() == 1 && bias.shape()[0] == out_features, "linear: bias ",
                shape_str(bias.shape()), " does not match weight ", shape_str(weight.shape()),
                " (expected [", out_features, "])");
  }
  // Every leading dim of x becomes a row of one GEMM.
  int64_t rows_all = 1;
  for (size_t i = 0; i + 1 < x.shape().size(); ++i) rows_all *= x.shape()[i];
  Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(out_features);
  Tensor out = Tensor::empty(out_shape, TensorOptions(x.dtype()).device(x.device()));
  {
    NoGradGuard no_grad;
    Tensor x2 = x.reshape({rows_all, in_features});
    Tensor out2 = out.view({rows_all, out_features});
    double beta = 0.0;
    if (bias.defined() && out.numel() > 0) {
      out2.copy_(bias);
      beta = 1.0;
    }
    gemm_into(out2, x2, weight.t(), {}, beta, "linear");
  }
  if (autograd::any_requires_grad({&x, &weight, &bias})) {
    const bool need_x = x.requires_grad(), need_w = weight.requires_grad();
    const bool need_b = bias.defined() && bias.requires_grad();
    autograd::SavedTensor saved_x =
        need_w ? autograd::SavedTensor(x, "linear") : autograd::SavedTensor();
    autograd::SavedTensor saved_w =
        need_x ? autograd::SavedTensor(weight, "linear") : autograd::SavedTensor();
    std::vector<Tensor> inputs{x, weight};
    if (bias.defined()) inputs.push_back(bias);
    autograd::record(
        "linear", inputs, {out},
        [saved_x, saved_w, need_x, need_w, need_b, has_bias = bias.defined(), rows_all, in_features,
         out_features, x_shape = x.shape()](const std::vector<Tensor>& g) {
          Tensor grad = g[0].reshape({rows_all, out_features});
          std::vector<Tensor> grads(has_bias ? 3 : 2);
          if (need_x) grads[0] = matmul(grad, saved_w.get()).reshape(x_shape);
          if (need_w) {
            grads[1] = matmul(grad.t(), saved_x.get().reshape({rows_all, in_features}));
          }
          if (need_b) grads[2] = sum(grad, {0});
          return grads;
        });
  }
  return out;
}

}  // namespace lathe
