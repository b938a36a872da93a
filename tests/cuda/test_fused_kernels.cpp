// The fused transformer kernels (kernels/{cpu,cuda}/add_layer_norm, bias_gelu) and the ops built on
// them (add_layer_norm, bias_gelu), plus f16/bf16 storage accepted directly by the row-wise ops
// (layer_norm, softmax, log_softmax, cross_entropy, gelu, add_layer_norm, bias_gelu).
//
// Kernels: cuda (the simulator here, a GPU with LATHE_CUDA) against the cpu kernel at rows 1, 7, 37
// and widths 1, 3, 127, 384, 1000, 1536 (warp and block rows, 16-byte packs with heads and tails),
// outputs filled with NaN first, tolerances per dtype (16-bit: the cpu's f32 result rounded once,
// within an ulp), bit-identical under every simulator schedule. Ops: fused against composed
// (x + r then layer_norm; x + b then gelu) forward and backward, and f64 gradients against central
// differences on the cpu and cuda.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>

#include "cuda/kernel_test_util.h"
#include "lathe/core/autocast.h"
#include "lathe/nn/transformer.h"

using namespace lathe;
using namespace lathe::kernel_test;

namespace {

// ---- add_layer_norm ----

struct AddLayerNormOut {
  Tensor y, sum, mean, rstd;
};

// The add_layer_norm_forward kernel of `k` on (x, r, w, b) converted to `dtype` on `device`.
AddLayerNormOut run_add_layer_norm(const kernels::KernelTable& k, Device device, DType dtype,
                                   const Tensor& x, const Tensor& r, const Tensor& w,
                                   const Tensor& b, bool with_sum = true) {
  const int64_t rows = x.size(0), cols = x.size(1);
  auto on = [&](const Tensor& t) { return t.defined() ? t.to(dtype).to(device) : Tensor(); };
  const Tensor xd = on(x), rd = on(r), wd = on(w), bd = on(b);
  AddLayerNormOut o;
  o.y = nan_tensor({rows, cols}, dtype, device);
  if (with_sum) o.sum = nan_tensor({rows, cols}, dtype, device);
  o.mean = nan_tensor({rows}, wide(dtype), device);
  o.rstd = nan_tensor({rows}, wide(dtype), device);
  kernels::AddLayerNormForwardArgs a;
  a.dtype = dtype;
  a.rows = rows;
  a.cols = cols;
  a.x = ptr(xd);
  a.residual = ptr(rd);
  a.weight = ptr(wd);
  a.bias = ptr(bd);
  a.y = mut_ptr(o.y);
  a.sum = mut_ptr(o.sum);
  a.mean = mut_ptr(o.mean);
  a.rstd = mut_ptr(o.rstd);
  a.eps = 1e-5;
  k.add_layer_norm_forward(a);
  return o;
}

// The cpu layer_norm_forward kernel on `s` (wide dtype).
AddLayerNormOut cpu_layer_norm(const Tensor& s, const Tensor& w, const Tensor& b) {
  const int64_t rows = s.size(0), cols = s.size(1);
  const DType dt = s.dtype();
  const Tensor wd = w.defined() ? w.to(dt) : Tensor(), bd = b.defined() ? b.to(dt) : Tensor();
  AddLayerNormOut o;
  o.y = nan_tensor({rows, cols}, dt, kCpu);
  o.mean = nan_tensor({rows}, dt, kCpu);
  o.rstd = nan_tensor({rows}, dt, kCpu);
  kernels::LayerNormForwardArgs a;
  a.dtype = dt;
  a.rows = rows;
  a.cols = cols;
  a.x = s.data_ptr();
  a.weight = ptr(wd);
  a.bias = ptr(bd);
  a.y = o.y.data_ptr();
  a.mean = o.mean.data_ptr();
  a.rstd = o.rstd.data_ptr();
  a.eps = 1e-5;
  cpu_k().layer_norm_forward(a);
  return o;
}

// ---- bias_gelu ----

struct BiasGeluOut {
  Tensor y, gx, gb;
};

BiasGeluOut run_bias_gelu(const kernels::KernelTable& k, Device device, DType dtype,
                          const Tensor& x, const Tensor& b, const Tensor& gy, bool tanh_form,
                          bool need_gx = true, bool need_gb = true) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const Tensor xd = x.to(dtype).to(device), bd = b.to(dtype).to(device),
               gyd = gy.to(dtype).to(device);
  BiasGeluOut o;
  o.y = nan_tensor({rows, cols}, dtype, device);
  if (need_gx) o.gx = nan_tensor({rows, cols}, dtype, device);
  if (need_gb) o.gb = nan_tensor({cols}, dtype, device);
  // The fields the forward and the backward arguments share.
  auto inputs = [&](auto& a) {
    a.dtype = dtype;
    a.rows = rows;
    a.cols = cols;
    a.x = xd.data_ptr();
    a.bias = bd.data_ptr();
    a.tanh = tanh_form;
  };
  kernels::BiasGeluArgs f;
  inputs(f);
  f.y = o.y.data_ptr();
  k.bias_gelu_forward(f);
  kernels::BiasGeluBackwardArgs bw;
  inputs(bw);
  bw.grad_y = gyd.data_ptr();
  bw.grad_x = mut_ptr(o.gx);
  bw.grad_bias = mut_ptr(o.gb);
  k.bias_gelu_backward(bw);
  return o;
}

}  // namespace

// ------------------------------------------------------------------------ add_layer_norm kernels

TEST_CASE("fused kernels: add_layer_norm forward on cuda matches the cpu",
          "[cuda][fused][add_layer_norm]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  auto affine = GENERATE(0, 3);  // bit 0: weight, bit 1: bias
  for (auto [rows, cols] : row_sizes()) {
    INFO(dtype << " affine " << affine << " rows " << rows << " cols " << cols);
    // Offset values: the two-pass variance must not cancel.
    const Tensor x = values({rows, cols}, uint64_t(rows * 5 + cols), dtype, 1, 3);
    const Tensor r = values({rows, cols}, uint64_t(rows + 7 * cols), dtype, -1, 1);
    const Tensor w = (affine & 1) ? values({cols}, 3, dtype, 0.5, 1.5) : Tensor();
    const Tensor b = (affine & 2) ? values({cols}, 4, dtype) : Tensor();
    // The reference: the sum rounded to the dtype (as add stores it), then the cpu layer norm in
    // the wide type.
    const Tensor s = (x.to(DType::F64) + r.to(DType::F64)).to(dtype);
    const AddLayerNormOut ref = cpu_layer_norm(s.to(wide(dtype)), w, b);
    const AddLayerNormOut cuda = run_add_layer_norm(cuda_k(), kCuda, dtype, x, r, w, b);
    check_kernel(cuda.y, ref.y, dtype, 4.0);
    check_kernel(cuda.mean, ref.mean, wide(dtype));
    check_kernel(cuda.rstd, ref.rstd, wide(dtype), 10.0);
    // The saved sum is exactly x + r rounded once.
    CHECK(bytes_of(cuda.sum) == bytes_of(s));
    // Without the sum output (inference): the same y, bit for bit.
    const AddLayerNormOut no_sum = run_add_layer_norm(cuda_k(), kCuda, dtype, x, r, w, b, false);
    CHECK(bytes_of(no_sum.y) == bytes_of(cuda.y));
    if (!is_half(dtype)) {
      // The cpu kernel is layer norm on x + r, bit for bit.
      const AddLayerNormOut cpu = run_add_layer_norm(cpu_k(), kCpu, dtype, x, r, w, b);
      CHECK(bytes_of(cpu.y) == bytes_of(ref.y));
      CHECK(bytes_of(cpu.sum) == bytes_of(s));
      CHECK(bytes_of(cpu.mean) == bytes_of(ref.mean));
      CHECK(bytes_of(cpu.rstd) == bytes_of(ref.rstd));
      const AddLayerNormOut cpu_no_sum =
          run_add_layer_norm(cpu_k(), kCpu, dtype, x, r, w, b, false);
      CHECK(bytes_of(cpu_no_sum.y) == bytes_of(ref.y));
    }
  }
}

TEST_CASE(
    "fused kernels: add_layer_norm over many rows on the cpu (threaded) is layer norm of the sum",
    "[cuda][fused][add_layer_norm]") {
  // Large enough for the OpenMP split; each thread uses its own row buffer when no sum is saved.
  const Tensor x = values({300, 384}, 1, DType::F32, -2, 2);
  const Tensor r = values({300, 384}, 2, DType::F32, -2, 2);
  const Tensor w = values({384}, 3, DType::F32, 0.5, 1.5), b = values({384}, 4, DType::F32);
  const AddLayerNormOut ref = cpu_layer_norm(x + r, w, b);
  for (bool with_sum : {false, true}) {
    const AddLayerNormOut cpu = run_add_layer_norm(cpu_k(), kCpu, DType::F32, x, r, w, b, with_sum);
    CHECK(bytes_of(cpu.y) == bytes_of(ref.y));
  }
}

// ----------------------------------------------------------------------------- bias_gelu kernels

TEST_CASE("fused kernels: bias_gelu forward and backward on cuda match the cpu",
          "[cuda][fused][bias_gelu]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  auto tanh_form = GENERATE(false, true);
  for (auto [rows, cols] : row_sizes()) {
    INFO(dtype << (tanh_form ? " tanh" : " erf") << " rows " << rows << " cols " << cols);
    const Tensor x = values({rows, cols}, uint64_t(rows * 3 + cols), dtype, -4, 4);
    const Tensor b = values({cols}, uint64_t(cols), dtype, -1, 1);
    const Tensor gy = values({rows, cols}, uint64_t(rows + 5 * cols), dtype);
    // 16-bit: the cpu's f32 kernel on the same (widened) values, rounded once.
    const BiasGeluOut cpu = run_bias_gelu(cpu_k(), kCpu, wide(dtype), x, b, gy, tanh_form);
    const BiasGeluOut cuda = run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, tanh_form);
    check_kernel(cuda.y, cpu.y, dtype, 4.0);
    check_kernel(cuda.gx, cpu.gx, dtype, 4.0);
    // dbias sums the unrounded dx over the rows.
    check_kernel(cuda.gb, cpu.gb, dtype, 4.0 * double(rows));
    // Either gradient alone: the same bits as with both.
    const BiasGeluOut only_gb = run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, tanh_form, false);
    CHECK(bytes_of(only_gb.gb) == bytes_of(cuda.gb));
    const BiasGeluOut only_gx =
        run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, tanh_form, true, false);
    CHECK(bytes_of(only_gx.gx) == bytes_of(cuda.gx));
  }
}

TEST_CASE("fused kernels: bias_gelu kernels equal gelu of x + b (f32, f64)",
          "[cuda][fused][bias_gelu]") {
  using kernels::UnaryOp;
  auto tanh_form = GENERATE(false, true);
  for (DType dtype : {DType::F32, DType::F64}) {
    for (Device device : both_devices()) {
      INFO(dtype << " " << device.str() << (tanh_form ? " tanh" : " erf"));
      const auto& k = device.is_cpu() ? cpu_k() : cuda_k();
      const int64_t rows = 7, cols = 384;
      const Tensor x = values({rows, cols}, 1, dtype, -4, 4), b = values({cols}, 2, dtype);
      const Tensor gy = values({rows, cols}, 3, dtype);
      const BiasGeluOut fused = run_bias_gelu(k, device, dtype, x, b, gy, tanh_form);
      const Tensor v = (x + b).to(device);
      Tensor y = nan_tensor({rows, cols}, dtype, device),
             gx = nan_tensor({rows, cols}, dtype, device);
      const UnaryOp op = tanh_form ? UnaryOp::GeluTanh : UnaryOp::Gelu;
      k.unary(op, detail::make_view(v), detail::make_view(y), 0, 0);
      k.unary_backward(op, detail::make_view(v), detail::make_view(gy.to(device)),
                       detail::make_view(gx), 0, 0);
      // The same formulas; the compiler may contract a * b + c differently in the two kernels.
      const Tol t = dtype == DType::F64 ? Tol{4e-15, 1e-14} : Tol{2e-7, 5e-7};
      testing::check_close(fused.y.to(kCpu), y.to(kCpu), t.atol, t.rtol);
      testing::check_close(fused.gx.to(kCpu), gx.to(kCpu), t.atol, t.rtol);
      testing::check_close(fused.gb.to(kCpu), gx.to(kCpu).sum({0}), t.atol * rows, 1e-5);
    }
  }
}

TEST_CASE("fused kernels: bias_gelu bias gradient over many row chunks",
          "[cuda][fused][bias_gelu]") {
  auto dtype = GENERATE(DType::F32, DType::BF16, DType::F64);
  // 1000 rows: 32 chunks; 9000 rows: the 256-chunk cap. 33 columns are scalar, 64 packs.
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1000, 33}, {9000, 8}, {300, 64}}) {
    INFO(dtype << " rows " << rows << " cols " << cols);
    const Tensor x = values({rows, cols}, 1, dtype, -3, 3);
    const Tensor b = values({cols}, 2, dtype);
    const Tensor gy = values({rows, cols}, 4, dtype);
    const BiasGeluOut cpu = run_bias_gelu(cpu_k(), kCpu, wide(dtype), x, b, gy, false);
    const BiasGeluOut cuda = run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, false, false, true);
    check_kernel(cuda.gb, cpu.gb, dtype, std::sqrt(double(rows)) * 4);
  }
}

TEST_CASE("fused kernels: bias_gelu with zero rows writes a zero bias gradient",
          "[cuda][fused][bias_gelu]") {
  for (Device device : both_devices()) {
    const auto& k = device.is_cpu() ? cpu_k() : cuda_k();
    Tensor gb = nan_tensor({7}, DType::F32, device);
    kernels::BiasGeluBackwardArgs a;
    a.rows = 0;
    a.cols = 7;
    a.grad_bias = gb.data_ptr();
    k.bias_gelu_backward(a);
    CHECK(gb.to_vector<double>() == std::vector<double>(7, 0.0));
  }
}

// -------------------------------------------------------------------------------- schedules

TEST_CASE("fused kernels: bit-identical under every simulator schedule",
          "[cuda][fused][schedule]") {
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (int64_t cols : {127, 384, 1100}) {
      INFO(dtype << " cols " << cols);
      const int64_t rows = cols > 1024 ? 5 : 37;
      const Tensor x = values({rows, cols}, 1, dtype, -4, 4);
      const Tensor r = values({rows, cols}, 2, dtype);
      const Tensor gy = values({rows, cols}, 3, dtype);
      const Tensor w = values({cols}, 4, dtype, 0.5, 1.5), b = values({cols}, 5, dtype);
      check_schedule_invariant([&] {
        AddLayerNormOut o = run_add_layer_norm(cuda_k(), kCuda, dtype, x, r, w, b);
        return std::vector<Tensor>{o.y, o.sum, o.mean, o.rstd};
      });
      check_schedule_invariant([&] {
        BiasGeluOut o = run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, false);
        BiasGeluOut t = run_bias_gelu(cuda_k(), kCuda, dtype, x, b, gy, true);
        return std::vector<Tensor>{o.y, o.gx, o.gb, t.y, t.gx, t.gb};
      });
    }
  }
}

// ------------------------------------------------------------------------------------- the ops

TEST_CASE("fused ops: add_layer_norm and bias_gelu agree with their compositions (f64)",
          "[cuda][fused][ops]") {
  for (Device device : both_devices()) {
    for (int64_t cols : {37, 1100}) {
      INFO(device.str() << " cols " << cols);
      const Shape shape{2, 3, cols};
      const Tensor x0 = values(shape, 1, DType::F64, -3, 3).to(device);
      const Tensor r0 = values(shape, 2, DType::F64, -1, 1).to(device);
      const Tensor w0 = values({cols}, 3, DType::F64, 0.5, 1.5).to(device);
      const Tensor b0 = values({cols}, 4, DType::F64).to(device);
      const Tensor gy = values(shape, 5, DType::F64).to(device);
      std::vector<std::vector<Tensor>> ln;
      for (bool fused : {true, false}) {
        Tensor x = x0.clone().requires_grad_(true), r = r0.clone().requires_grad_(true),
               w = w0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
        Tensor y = fused ? add_layer_norm(x, r, w, b, 1e-5) : layer_norm(x + r, w, b, 1e-5);
        (y * gy).sum().backward();
        ln.push_back({y.detach(), x.grad(), r.grad(), w.grad(), b.grad()});
      }
      for (size_t i = 0; i < ln[0].size(); ++i) {
        INFO("output " << i);
        testing::check_close(ln[0][i], ln[1][i], 1e-10, 1e-10);
      }
      for (auto approx : {GeluApproximation::None, GeluApproximation::Tanh}) {
        std::vector<std::vector<Tensor>> bg;
        for (bool fused : {true, false}) {
          Tensor x = x0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
          Tensor y = fused ? bias_gelu(x, b, approx) : gelu(x + b, approx);
          (y * gy).sum().backward();
          bg.push_back({y.detach(), x.grad(), b.grad()});
        }
        for (size_t i = 0; i < bg[0].size(); ++i) {
          INFO("bias_gelu output " << i << " tanh " << (approx == GeluApproximation::Tanh));
          testing::check_close(bg[0][i], bg[1][i], 1e-12, 1e-10);
        }
      }
    }
  }
}

TEST_CASE("fused ops: f32 fused and composed agree, gradients to one input only",
          "[cuda][fused][ops]") {
  for (Device device : both_devices()) {
    INFO(device.str());
    const Tensor x0 = values({5, 384}, 1, DType::F32, -3, 3).to(device);
    const Tensor r0 = values({5, 384}, 2, DType::F32).to(device);
    const Tensor w = values({384}, 3, DType::F32, 0.5, 1.5).to(device);
    const Tensor b = values({384}, 4, DType::F32).to(device);
    // Residual only (x is a constant): its gradient is layer norm's dx.
    Tensor r = r0.clone().requires_grad_(true);
    add_layer_norm(x0, r, w, b).sum().backward();
    Tensor r2 = r0.clone().requires_grad_(true);
    layer_norm(x0 + r2, w, b).sum().backward();
    testing::check_close(r.grad(), r2.grad(), 1e-5, 1e-4);
    testing::check_close(add_layer_norm(x0, r0, w, b), layer_norm(x0 + r0, w, b), 1e-5, 1e-5);
    // bias_gelu: only the bias requires grad.
    Tensor bb = b.clone().requires_grad_(true), bb2 = b.clone().requires_grad_(true);
    bias_gelu(x0, bb).sum().backward();
    gelu(x0 + bb2).sum().backward();
    testing::check_close(bb.grad(), bb2.grad(), 1e-4, 1e-5);
    // No grad at all: no saved sum, same values.
    NoGradGuard no_grad;
    testing::check_close(bias_gelu(x0, b, GeluApproximation::Tanh),
                         gelu(x0 + b, GeluApproximation::Tanh), 1e-6, 1e-6);
  }
}

TEST_CASE("fused ops: f64 gradients match central differences", "[cuda][fused][ops][grad]") {
  // Full gradcheck on the cpu (every entry); directional checks on both devices at a wide row.
  testing::gradcheck(
      [](const std::vector<Tensor>& in) { return add_layer_norm(in[0], in[1], in[2], in[3]); },
      {values({3, 5}, 1, DType::F64, -2, 2), values({3, 5}, 2, DType::F64),
       values({5}, 3, DType::F64, 0.5, 1.5), values({5}, 4, DType::F64)});
  testing::gradcheck(
      [](const std::vector<Tensor>& in) {
        return add_layer_norm(in[0], in[1], Tensor(), Tensor());
      },
      {values({2, 7}, 5, DType::F64, -2, 2), values({2, 7}, 6, DType::F64)});
  // Two normalized dims (weight [2, 3]) and a non-contiguous x.
  testing::gradcheck(
      [](const std::vector<Tensor>& in) {
        return add_layer_norm(in[0].transpose(0, 1), in[1], in[2], in[3]);
      },
      {values({2, 4, 3}, 11, DType::F64, -2, 2), values({4, 2, 3}, 12, DType::F64),
       values({2, 3}, 13, DType::F64, 0.5, 1.5), values({2, 3}, 14, DType::F64)});
  for (auto approx : {GeluApproximation::None, GeluApproximation::Tanh}) {
    testing::gradcheck(
        [approx](const std::vector<Tensor>& in) { return bias_gelu(in[0], in[1], approx); },
        {values({4, 6}, 7, DType::F64, -3, 3), values({6}, 8, DType::F64)});
    // A 3-d input and a non-contiguous one.
    testing::gradcheck(
        [approx](const std::vector<Tensor>& in) {
          return bias_gelu(in[0].transpose(0, 1), in[1], approx);
        },
        {values({3, 2, 5}, 9, DType::F64, -3, 3), values({5}, 10, DType::F64)});
  }
  for (Device device : both_devices()) {
    for (int64_t cols : {5, 1100}) {
      INFO(device.str() << " cols " << cols);
      check_directional(
          device,
          [](const std::vector<Tensor>& in) { return add_layer_norm(in[0], in[1], in[2], in[3]); },
          {values({2, cols}, 1, DType::F64, -2, 2), values({2, cols}, 2, DType::F64),
           values({cols}, 3, DType::F64, 0.5, 1.5), values({cols}, 4, DType::F64)},
          21);
      check_directional(
          device, [](const std::vector<Tensor>& in) { return bias_gelu(in[0], in[1]); },
          {values({3, cols}, 5, DType::F64, -3, 3), values({cols}, 6, DType::F64)}, 22);
    }
  }
}

TEST_CASE("fused ops: empty inputs give empty outputs and zero parameter gradients",
          "[cuda][fused][ops]") {
  for (Device device : both_devices()) {
    INFO(device.str());
    const TensorOptions o = TensorOptions(DType::F32).device(device);
    Tensor x = zeros({0, 5}, o).requires_grad_(true), r = zeros({0, 5}, o).requires_grad_(true);
    Tensor w = ones({5}, o).requires_grad_(true), b = zeros({5}, o).requires_grad_(true);
    Tensor y = add_layer_norm(x, r, w, b);
    CHECK(y.shape() == Shape{0, 5});
    Tensor z = bias_gelu(x, b);
    CHECK(z.shape() == Shape{0, 5});
    (y.sum() + z.sum()).backward();
    if (b.grad().defined())
      CHECK(b.grad().to(kCpu).to_vector<double>() == std::vector<double>(5, 0.0));
  }
}

TEST_CASE("fused ops: argument errors name the op and the operands", "[cuda][fused][ops]") {
  const Tensor x = values({2, 4}, 1, DType::F32);
  testing::check_error(
      [&] {
        add_layer_norm(x, values({2, 3}, 2, DType::F32), Tensor(), Tensor());
      },
      {"add_layer_norm", "same shape", "[2, 3]"});
  testing::check_error([&] { add_layer_norm(x, x.to(DType::F64), Tensor(), Tensor()); },
                       {"add_layer_norm"});
  testing::check_error([&] { bias_gelu(x, values({3}, 2, DType::F32)); },
                       {"bias_gelu", "bias", "[3]"});
  testing::check_error([&] { bias_gelu(x, values({2, 4}, 2, DType::F32)); }, {"bias_gelu"});
}

// ------------------------------------------------------------------- f16/bf16 storage, all ops

namespace {

// Runs `f` on 16-bit inputs and on the same values in f32; the 16-bit result (and each input's
// gradient, of the input's dtype) must equal the f32 one rounded once, within the dtype's
// tolerance (a few ulp: the f32 computation may itself round differently on the two devices).
void check_half_op(Device device, DType dtype,
                   const std::function<Tensor(const std::vector<Tensor>&)>& f,
                   const std::vector<Tensor>& inputs_f64, double scale = 1.0) {
  std::vector<Tensor> half_in, f32_in;
  for (const Tensor& t : inputs_f64) {
    const Tensor h = t.to(dtype);  // the values the 16-bit op sees, exactly, also in f32
    half_in.push_back(h.to(device).detach().requires_grad_(true));
    f32_in.push_back(h.to(DType::F32).to(device).detach().requires_grad_(true));
  }
  const Tensor yh = f(half_in), y32 = f(f32_in);
  REQUIRE(yh.dtype() == dtype);
  const double rtol = dtype == DType::BF16 ? 2e-2 : 4e-3;
  const double atol = (dtype == DType::BF16 ? 2e-2 : 4e-3) * scale;
  testing::check_close(yh.to(kCpu).to(DType::F64), y32.to(kCpu).to(DType::F64), atol, rtol);
  const Tensor w = values(yh.shape(), 99, DType::F64).to(dtype);
  (yh * w.to(device)).sum().backward();
  (y32 * w.to(DType::F32).to(device)).sum().backward();
  for (size_t i = 0; i < half_in.size(); ++i) {
    INFO("gradient " << i);
    REQUIRE(half_in[i].grad().defined());
    CHECK(half_in[i].grad().dtype() == dtype);
    const Tensor g32 = f32_in[i].grad().to(kCpu).to(DType::F64);
    // Gradients of sums over rows (weight, bias) grow with the row count.
    const double gscale = lathe::abs(g32).max().item<double>() + 1.0;
    testing::check_close(half_in[i].grad().to(kCpu).to(DType::F64), g32, atol * gscale, rtol * 2);
  }
}

}  // namespace

TEST_CASE("fused ops: row-wise ops take f16 and bf16 tensors directly on every device",
          "[cuda][fused][ops][half]") {
  auto dtype = GENERATE(DType::BF16, DType::F16);
  for (Device device : both_devices()) {
    for (int64_t cols : {7, 384, 1100}) {
      INFO(dtype << " " << device.str() << " cols " << cols);
      const Tensor x = values({3, cols}, 1, DType::F64, -3, 3);
      const Tensor r = values({3, cols}, 2, DType::F64);
      const Tensor w = values({cols}, 3, DType::F64, 0.5, 1.5), b = values({cols}, 4, DType::F64);
      check_half_op(
          device, dtype,
          [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2]); }, {x, w, b},
          4.0);
      check_half_op(
          device, dtype,
          [](const std::vector<Tensor>& in) { return add_layer_norm(in[0], in[1], in[2], in[3]); },
          {x, r, w, b}, 4.0);
      check_half_op(device, dtype, [](const std::vector<Tensor>& in) { return softmax(in[0], 1); },
                    {x});
      check_half_op(
          device, dtype, [](const std::vector<Tensor>& in) { return log_softmax(in[0], 1); }, {x},
          4.0);
      check_half_op(
          device, dtype, [](const std::vector<Tensor>& in) { return gelu(in[0]); }, {x}, 2.0);
      check_half_op(
          device, dtype,
          [](const std::vector<Tensor>& in) {
            return bias_gelu(in[0], in[1], GeluApproximation::Tanh);
          },
          {x, b}, 2.0);
      const Tensor t = from_vector(std::vector<int64_t>{0, cols - 1, cols / 2}, {3},
                                   TensorOptions().device(device));
      for (Reduction red : {Reduction::Mean, Reduction::None}) {
        check_half_op(
            device, dtype,
            [&](const std::vector<Tensor>& in) {
              CrossEntropyOptions o;
              o.label_smoothing = 0.1;
              o.reduction = red;
              return cross_entropy(in[0], t, o);
            },
            {x}, 8.0);
      }
    }
  }
}

TEST_CASE("fused ops: bias_gelu in bf16 on the cpu has the bits of the op widened to f32",
          "[cuda][fused][ops][half]") {
  // The cpu kernel takes bf16 itself (computed in f32, rounded once per element) instead of the op
  // widening x and b and narrowing the result; gradients included, dbias summed before rounding.
  // Against the old path written out: casts to f32 around the f32 op, which autograd then undoes.
  const auto [rows, cols] =
      GENERATE(std::pair<int64_t, int64_t>{37, 1000}, std::pair<int64_t, int64_t>{700, 130});
  const auto form = GENERATE(GeluApproximation::None, GeluApproximation::Tanh);
  INFO(rows << " x " << cols << (form == GeluApproximation::Tanh ? ", tanh" : ", erf"));
  const Tensor x0 = values({rows, cols}, 1, DType::F32, -4, 4).to(DType::BF16);
  const Tensor b0 = values({cols}, 2, DType::F32).to(DType::BF16);
  const Tensor g = values({rows, cols}, 3, DType::F32).to(DType::BF16);
  auto run = [&](bool widened) {
    Tensor x = x0.clone().requires_grad_(true), b = b0.clone().requires_grad_(true);
    Tensor y = widened ? bias_gelu(x.to(DType::F32), b.to(DType::F32), form).to(DType::BF16)
                       : bias_gelu(x, b, form);
    (y * g).sum().backward();
    return std::vector<Tensor>{y, x.grad(), b.grad()};
  };
  const std::vector<Tensor> native = run(false), widened = run(true);
  for (size_t i = 0; i < native.size(); ++i) {
    INFO("output " << i << " of y, dx, dbias");
    REQUIRE(native[i].dtype() == DType::BF16);
    CHECK(bytes_of(native[i]) == bytes_of(widened[i]));
  }
}

TEST_CASE("fused ops: bias_gelu casts an f32 bias to a bf16 input, as linear does under autocast",
          "[cuda][fused][ops][half]") {
  for (Device device : both_devices()) {
    const Tensor x = values({4, 16}, 1, DType::BF16, -3, 3).to(device);
    Tensor b = values({16}, 2, DType::F32).to(device).requires_grad_(true);
    const Tensor y = bias_gelu(x, b);
    CHECK(y.dtype() == DType::BF16);
    y.to(DType::F32).sum().backward();
    REQUIRE(b.grad().defined());
    CHECK(b.grad().dtype() == DType::F32);
    testing::check_close(y.to(kCpu).to(DType::F64),
                         gelu(x + b.detach().to(DType::BF16)).to(kCpu).to(DType::F64), 2e-2, 2e-2);
  }
}

// ------------------------------------------------------------------------------------ nn modules

TEST_CASE("fused ops: nn blocks use them and compute what the unfused modules compute",
          "[cuda][fused][nn]") {
  for (Device device : both_devices()) {
    INFO(device.str());
    auto block = std::make_shared<nn::ResidualOutput>(12, 8, 0.1, 1e-12);
    auto ffn = std::make_shared<nn::FeedForwardIn>(8, 12, "gelu");
    auto ffn_tanh = std::make_shared<nn::FeedForwardIn>(8, 12, "gelu_new");
    for (auto* m : std::initializer_list<nn::Module*>{block.get(), ffn.get(), ffn_tanh.get()}) {
      m->to(DType::F64);
      m->to(device);
      m->eval();
    }
    const Tensor h = values({2, 3, 12}, 1, DType::F64).to(device);
    const Tensor res = values({2, 3, 8}, 2, DType::F64).to(device);
    const Tensor x = values({2, 3, 8}, 3, DType::F64).to(device);
    testing::check_close(block->forward(h, res),
                         block->layer_norm->forward(block->dense->forward(h) + res), 1e-12, 1e-10);
    testing::check_close(ffn->forward(x), gelu(ffn->dense->forward(x)), 1e-12, 1e-10);
    testing::check_close(ffn_tanh->forward(x),
                         gelu(ffn_tanh->dense->forward(x), GeluApproximation::Tanh), 1e-12, 1e-10);
    // The graph shows the fused ops (parameters require grad, so the ops record their nodes).
    REQUIRE(block->forward(h, res).grad_fn());
    CHECK(block->forward(h, res).grad_fn()->name() == "add_layer_norm");
    CHECK(ffn->forward(x).grad_fn()->name() == "bias_gelu");
    // Under autocast (bf16 linear outputs, an f32 residual) with f32 modules.
    auto block32 = std::make_shared<nn::ResidualOutput>(12, 8, 0.1, 1e-12);
    auto ffn32 = std::make_shared<nn::FeedForwardIn>(8, 12, "gelu");
    block32->to(device);
    ffn32->to(device);
    block32->eval();
    const Tensor h32 = h.to(DType::F32), res32 = res.to(DType::F32), x32 = x.to(DType::F32);
    AutocastGuard autocast(DType::BF16, std::nullopt);  // every device type
    const Tensor out = block32->forward(h32, res32);
    CHECK(out.dtype() == DType::F32);
    const Tensor ref = layer_norm(block32->dense->forward(h32) + res32, block32->layer_norm->weight,
                                  block32->layer_norm->bias, 1e-12);
    testing::check_close(out.to(kCpu), ref.to(kCpu), 1e-5, 1e-5);
    const Tensor f = ffn32->forward(x32);
    CHECK(f.dtype() == DType::BF16);
    testing::check_close(f.to(kCpu).to(DType::F32),
                         gelu(ffn32->dense->forward(x32)).to(kCpu).to(DType::F32), 1e-2, 1e-2);
  }
}
