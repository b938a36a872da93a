// The cuda transformer kernels (softmax.cu, layer_norm.cu, cross_entropy.cu, embedding.cu, the
// vectorized unary path of unary.cu) against the cpu kernels through the KernelTable contract, at
// odd sizes that cover both row shapes (a warp per row up to 1024 columns, a block per row above),
// 16-byte packs with scalar heads and tails, strided rows and special values. Every output is
// filled with NaN before the kernel runs, so an element it fails to write fails the comparison.
//
// References: the cpu kernel on the same values; for f16/bf16 the cpu's f32 kernel on the widened
// values, rounded once to the 16-bit type (which is what the cuda kernels compute in f32
// registers). Tolerances follow the dtype. The simulated build must also give bit-identical
// results under every thread schedule. At the op level (on the cuda device) the fused ops are held
// against their composite twins and against central differences in f64.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <map>

#include "cuda/kernel_test_util.h"
#include "kernels/cuda/layer_norm_variant.h"
#include "kernels/cuda/row_shapes.h"
#include "kernels/cuda/rows.cuh"

using namespace lathe;
using namespace lathe::kernel_test;

namespace {

// ---- softmax ----

struct SoftmaxOut {
  Tensor y, gx;
};

// softmax forward of x, and backward of (y_in, gy), on `device` in `dtype`.
SoftmaxOut run_softmax(const kernels::KernelTable& k, Device device, DType dtype, const Tensor& x,
                       const Tensor& y_in, const Tensor& gy, bool log) {
  const Tensor xd = x.to(dtype).to(device), yd = y_in.to(dtype).to(device),
               gyd = gy.to(dtype).to(device);
  SoftmaxOut o{nan_tensor(x.shape(), dtype, device), nan_tensor(x.shape(), dtype, device)};
  k.softmax_forward(view(xd), view(o.y), log);
  k.softmax_backward(view(yd), view(gyd), view(o.gx), log);
  return o;
}

// ---- layer norm ----

struct LayerNormOut {
  Tensor y, mean, rstd, dx, dw, db;
};

// Forward of (x, w, b) and backward of gy with the given statistics, on `device` in `dtype`.
// Undefined w / b are absent; need_dx etc. choose which gradients are requested.
LayerNormOut run_layer_norm(const kernels::KernelTable& k, Device device, DType dtype,
                            const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& gy,
                            const Tensor& mean_in, const Tensor& rstd_in, bool need_dx = true,
                            bool need_dw = true, bool need_db = true) {
  const int64_t rows = x.size(0), cols = x.size(1);
  auto on = [&](const Tensor& t, DType dt) { return t.defined() ? t.to(dt).to(device) : Tensor(); };
  const Tensor xd = on(x, dtype), wd = on(w, dtype), bd = on(b, dtype), gyd = on(gy, dtype);
  const Tensor md = on(mean_in, wide(dtype)), rd = on(rstd_in, wide(dtype));
  LayerNormOut o;
  o.y = nan_tensor({rows, cols}, dtype, device);
  o.mean = nan_tensor({rows}, wide(dtype), device);
  o.rstd = nan_tensor({rows}, wide(dtype), device);
  kernels::LayerNormForwardArgs f;
  f.dtype = dtype;
  f.rows = rows;
  f.cols = cols;
  f.x = xd.data_ptr();
  f.weight = wd.defined() ? wd.data_ptr() : nullptr;
  f.bias = bd.defined() ? bd.data_ptr() : nullptr;
  f.y = o.y.data_ptr();
  f.mean = o.mean.data_ptr();
  f.rstd = o.rstd.data_ptr();
  f.eps = 1e-5;
  k.layer_norm_forward(f);
  if (need_dx) o.dx = nan_tensor({rows, cols}, dtype, device);
  if (need_dw) o.dw = nan_tensor({cols}, dtype, device);
  if (need_db) o.db = nan_tensor({cols}, dtype, device);
  kernels::LayerNormBackwardArgs bw;
  bw.dtype = dtype;
  bw.rows = rows;
  bw.cols = cols;
  bw.x = xd.data_ptr();
  bw.weight = f.weight;
  bw.mean = md.data_ptr();
  bw.rstd = rd.data_ptr();
  bw.grad_y = gyd.data_ptr();
  bw.grad_x = need_dx ? o.dx.data_ptr() : nullptr;
  bw.grad_weight = need_dw ? o.dw.data_ptr() : nullptr;
  bw.grad_bias = need_db ? o.db.data_ptr() : nullptr;
  k.layer_norm_backward(bw);
  return o;
}

// ---- cross entropy ----

struct CrossEntropyOut {
  Tensor loss, lse, grad;
};

CrossEntropyOut run_cross_entropy(const kernels::KernelTable& k, Device device, DType dtype,
                                  const Tensor& logits, const Tensor& targets,
                                  const Tensor& grad_loss, const Tensor& lse_in, double smoothing,
                                  int64_t ignore_index = -100) {
  const int64_t rows = logits.size(0), classes = logits.size(1);
  const Tensor xd = logits.to(dtype).to(device), td = targets.to(device),
               gd = grad_loss.to(dtype).to(device), ld = lse_in.to(wide(dtype)).to(device);
  CrossEntropyOut o{nan_tensor({rows}, dtype, device), nan_tensor({rows}, wide(dtype), device),
                    nan_tensor({rows, classes}, dtype, device)};
  kernels::CrossEntropyForwardArgs f;
  f.dtype = dtype;
  f.rows = rows;
  f.classes = classes;
  f.logits = xd.data_ptr();
  f.targets = static_cast<const int64_t*>(td.data_ptr());
  f.loss = o.loss.data_ptr();
  f.lse = o.lse.data_ptr();
  f.ignore_index = ignore_index;
  f.label_smoothing = smoothing;
  k.cross_entropy_forward(f);
  kernels::CrossEntropyBackwardArgs bw;
  bw.dtype = dtype;
  bw.rows = rows;
  bw.classes = classes;
  bw.logits = xd.data_ptr();
  bw.targets = f.targets;
  bw.lse = ld.data_ptr();
  bw.grad_loss = gd.data_ptr();
  bw.grad_logits = o.grad.data_ptr();
  bw.ignore_index = ignore_index;
  bw.label_smoothing = smoothing;
  k.cross_entropy_backward(bw);
  return o;
}

// Targets in [0, classes), with every 5th row (from row 2) ignored.
Tensor make_targets(int64_t rows, int64_t classes, uint64_t seed) {
  std::vector<double> v = testing::random_values(rows, seed, 0, double(classes));
  std::vector<int64_t> t(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) t[size_t(r)] = r % 5 == 2 ? -100 : int64_t(v[size_t(r)]);
  return from_vector(t, {rows});
}

// ---- embedding backward ----

Tensor run_embedding_backward(const kernels::KernelTable& k, Device device, DType dtype,
                              const Tensor& indices, const Tensor& grad_out, int64_t num_embeddings,
                              int64_t padding_idx, bool transposed_grad = false) {
  const int64_t n = grad_out.size(0), dim = grad_out.size(1);
  const Tensor id = indices.to(device);
  // A transposed layout: [dim, n] memory viewed as [n, dim] (column stride n).
  const Tensor gd = transposed_grad ? grad_out.t().contiguous().to(dtype).to(device).t()
                                    : grad_out.to(dtype).to(device);
  Tensor gw = nan_tensor({num_embeddings, dim}, dtype, device);
  kernels::EmbeddingBackwardArgs a;
  a.indices = static_cast<const int64_t*>(id.data_ptr());
  a.n = n;
  a.grad_out = view(gd);
  a.grad_weight = gw.data_ptr();
  a.num_embeddings = num_embeddings;
  a.padding_idx = padding_idx;
  k.embedding_backward(a);
  return gw;
}

Tensor index_tensor(const std::vector<int64_t>& v) {
  return from_vector(v, {int64_t(v.size())});
}

// n indices in [0, v) with index 1 repeated often enough to span several groups of 32.
std::vector<int64_t> skewed_indices(int64_t n, int64_t v, uint64_t seed) {
  std::vector<double> r = testing::random_values(n, seed, 0, double(v));
  std::vector<int64_t> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = i % 3 == 0 ? 1 : int64_t(r[size_t(i)]);
  return out;
}

// Sets rows::row_launch's lanes-per-row rule (row_shapes.h) for a scope: both rules must give the
// cpu's results, since either may be the one a GPU run keeps.
struct RowShapesScope {
  explicit RowShapesScope(kernels::cuda::RowShapes rule) : saved(kernels::cuda::row_shapes()) {
    kernels::cuda::set_row_shapes(rule);
  }
  ~RowShapesScope() { kernels::cuda::set_row_shapes(saved); }
  kernels::cuda::RowShapes saved;
};

struct LayerNormDyScope {
  explicit LayerNormDyScope(kernels::cuda::LayerNormDy mode)
      : saved(kernels::cuda::layer_norm_dy()) {
    kernels::cuda::set_layer_norm_dy(mode);
  }
  ~LayerNormDyScope() { kernels::cuda::set_layer_norm_dy(saved); }
  kernels::cuda::LayerNormDy saved;
};

int64_t longest_run(const std::vector<int64_t>& idx, int64_t padding_idx) {
  std::map<int64_t, int64_t> count;
  int64_t best = 0;
  for (int64_t v : idx) {
    if (v != padding_idx) best = std::max(best, ++count[v]);
  }
  return best;
}

}  // namespace

// ------------------------------------------------------------------------------- row shapes

TEST_CASE("cuda transformer kernels: row shapes fill the lanes' pack slots",
          "[cuda][transformer][rows]") {
  namespace cu = kernels::cuda;
  // {cols, element bytes} -> lanes per row (or block threads) and cached packs per thread.
  struct Case {
    int64_t cols, bytes, group;
    bool block;
    int packs;
  };
  auto check = [](const Case& c) {
    INFO("cols " << c.cols << " element bytes " << c.bytes);
    const cu::rows::RowLaunch l = cu::rows::row_launch(4096, c.cols, c.bytes);
    CHECK(l.group == c.group);
    CHECK(l.block == c.block);
    const int packs = c.bytes == 2 ? cu::rows::row_cache_packs<__nv_bfloat16>(c.cols, l.group)
                                   : cu::rows::row_cache_packs<float>(c.cols, l.group);
    CHECK(packs == c.packs);
    // Every pack of the row has a slot.
    const int64_t row_packs = c.cols * c.bytes / 16;
    CHECK(l.group * packs >= row_packs);
  };
  SECTION("balanced (the default)") {
    const RowShapesScope scope(cu::RowShapes::Balanced);
    for (const Case& c :
         {Case{384, 2, 16, false, 3}, Case{768, 2, 32, false, 3}, Case{1536, 2, 32, false, 6},
          Case{384, 4, 32, false, 3}, Case{768, 4, 32, false, 6}, Case{1536, 4, 128, true, 3},
          Case{1024, 2, 32, false, 4}, Case{64, 4, 8, false, 2}, Case{8192, 2, 256, true, 4}}) {
      check(c);
    }
  }
  SECTION("powers of two (the rule before)") {
    const RowShapesScope scope(cu::RowShapes::PowerOfTwo);
    for (const Case& c :
         {Case{384, 2, 32, false, 2}, Case{768, 2, 32, false, 3}, Case{64, 4, 16, false, 2}}) {
      check(c);
    }
  }
}

// ------------------------------------------------------------------------------------- softmax

TEST_CASE("cuda transformer kernels: softmax forward and backward match the cpu",
          "[cuda][transformer][softmax]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  auto log = GENERATE(false, true);
  auto shapes = GENERATE(kernels::cuda::RowShapes::Balanced, kernels::cuda::RowShapes::PowerOfTwo);
  const RowShapesScope scope(shapes);
  for (auto [rows, cols] : row_sizes()) {
    INFO(dtype << (log ? " log_softmax" : " softmax") << " rows " << rows << " cols " << cols
               << " row shapes " << int(shapes));
    const Tensor x = values({rows, cols}, uint64_t(rows * 7 + cols), dtype, -8, 8);
    const Tensor gy = values({rows, cols}, uint64_t(rows + cols * 3), dtype);
    // The backward's y: the cpu's output in the test dtype, the same input on both devices.
    Tensor y_in = nan_tensor({rows, cols}, wide(dtype), kCpu);
    cpu_k().softmax_forward(view(x.to(wide(dtype))), view(y_in), log);
    y_in = y_in.to(dtype);
    const SoftmaxOut cpu = run_softmax(cpu_k(), kCpu, wide(dtype), x, y_in, gy, log);
    const SoftmaxOut cuda = run_softmax(cuda_k(), kCuda, dtype, x, y_in, gy, log);
    check_kernel(cuda.y, cpu.y, dtype, log ? 8.0 : 1.0);
    check_kernel(cuda.gx, cpu.gx, dtype);
  }
}

TEST_CASE("cuda transformer kernels: softmax of -inf, +inf and NaN entries gives the cpu's values",
          "[cuda][transformer][softmax]") {
  auto dtype = GENERATE(DType::F32, DType::F64, DType::BF16);
  auto log = GENERATE(false, true);
  // 300 (f32) and 384 rows are held in registers (rows.cuh), 5 and 1100 (bf16) streamed.
  for (int64_t cols : {5, 300, 384, 1100}) {
    INFO(dtype << " log " << log << " cols " << cols);
    std::vector<double> v = testing::random_values(6 * cols, uint64_t(cols), -4, 4);
    for (int64_t j = 0; j < cols; ++j) {
      if (j % 3 != 1) v[size_t(j)] = -kInf;  // row 0: masked except every third entry
      v[size_t(cols + j)] = -kInf;           // row 1: all masked (NaN, as on the cpu)
    }
    v[size_t(2 * cols + cols / 2)] = kInf;  // row 2: one +inf (NaN row)
    v[size_t(3 * cols + cols - 1)] = kNaN;  // row 3: one NaN (NaN row)
    v[size_t(4 * cols)] = -kInf;            // row 4: first entry masked
    for (int64_t j = 0; j < cols; ++j) v[size_t(5 * cols + j)] = 1e4 * (j % 2 ? 1 : -1);  // row 5
    const Tensor x = from_vector(v, {6, cols}).to(dtype);
    Tensor cpu_y = nan_tensor({6, cols}, wide(dtype), kCpu);
    cpu_k().softmax_forward(view(x.to(wide(dtype))), view(cpu_y), log);
    Tensor cuda_y = nan_tensor({6, cols}, dtype, kCuda);
    cuda_k().softmax_forward(view(x.to(kCuda)), view(cuda_y), log);
    check_kernel(cuda_y, cpu_y, dtype, 8.0);
    // Masked entries are exact zeros (-inf for log-softmax), not tiny numbers.
    const std::vector<double> y = cuda_y.to_vector<double>();
    CHECK(y[0] == (log ? -kInf : 0.0));
    CHECK(std::isnan(y[size_t(cols)]));
  }
}

TEST_CASE("cuda transformer kernels: softmax over strided and misaligned rows",
          "[cuda][transformer][softmax]") {
  auto dtype = GENERATE(DType::F32, DType::BF16);
  for (int64_t cols : {127, 384, 1100}) {
    INFO(dtype << " cols " << cols);
    const int64_t rows = 5;
    // Rows of a wider buffer, starting one element in: every row is misaligned differently.
    const Tensor wide_x = values({rows, cols + 3}, uint64_t(cols), dtype, -5, 5);
    const Tensor x = wide_x.slice(1, 1, cols + 1);
    Tensor out_buf = nan_tensor({rows, cols + 3}, dtype, kCuda);
    Tensor y = out_buf.slice(1, 2, cols + 2);
    const Tensor xd = wide_x.to(kCuda).slice(1, 1, cols + 1);
    REQUIRE_FALSE(xd.is_contiguous());
    cuda_k().softmax_forward(view(xd), view(y), false);
    Tensor ref = nan_tensor({rows, cols}, wide(dtype), kCpu);
    cpu_k().softmax_forward(view(x.contiguous().to(wide(dtype))), view(ref), false);
    check_kernel(y, ref, dtype);
    // Nothing outside the rows was written.
    const std::vector<double> b = out_buf.to_vector<double>();
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j : {int64_t(0), int64_t(1), cols + 2})
        CHECK(std::isnan(b[size_t(r * (cols + 3) + j)]));
    }
    // The backward over the same strided layout.
    const Tensor gy_wide = values({rows, cols + 3}, uint64_t(cols + 1), dtype);
    Tensor gx_buf = nan_tensor({rows, cols + 3}, dtype, kCuda);
    cuda_k().softmax_backward(view(y), view(gy_wide.to(kCuda).slice(1, 0, cols)),
                              view(gx_buf.slice(1, 3, cols + 3)), false);
    Tensor gx_ref = nan_tensor({rows, cols}, wide(dtype), kCpu);
    cpu_k().softmax_backward(view(y.to(kCpu).contiguous().to(wide(dtype))),
                             view(gy_wide.slice(1, 0, cols).contiguous().to(wide(dtype))),
                             view(gx_ref), false);
    check_kernel(gx_buf.slice(1, 3, cols + 3), gx_ref, dtype);
  }
}

TEST_CASE("cuda transformer kernels: equal entries of a row give equal bits (one row statistic)",
          "[cuda][transformer][softmax][layer_norm]") {
  // Every thread of a row must use bitwise the same max, sum, mean and rstd. The row repeats 8
  // values, so equal entries sit in different lanes and packs, whose partial results differ.
  for (DType dtype : {DType::F32, DType::BF16}) {
    for (int64_t cols : {1000, 1100}) {
      INFO(dtype << " cols " << cols);
      std::vector<double> v(static_cast<size_t>(3 * cols));
      for (size_t i = 0; i < v.size(); ++i) v[i] = double(int64_t(i * 5) % 8) * 0.37 - 1.1;
      const Tensor x = from_vector(v, {3, cols}).to(dtype).to(kCuda);
      std::vector<Tensor> outs;
      for (bool log : {false, true}) {
        Tensor y = nan_tensor({3, cols}, dtype, kCuda);
        cuda_k().softmax_forward(view(x), view(y), log);
        outs.push_back(y);
      }
      outs.push_back(run_layer_norm(cuda_k(), kCuda, dtype, x.to(kCpu), Tensor(), Tensor(),
                                    x.to(kCpu), ones({3}, wide(dtype)), ones({3}, wide(dtype)))
                         .y);
      for (const Tensor& y : outs) {
        const std::vector<double> yv = y.to_vector<double>();
        for (size_t i = 8; i < yv.size(); ++i) {
          if (i / size_t(cols) == (i - 8) / size_t(cols)) REQUIRE(yv[i] == yv[i - 8]);
        }
      }
    }
  }
}

// ----------------------------------------------------------------------------------- layer norm

TEST_CASE("cuda transformer kernels: layer_norm forward and backward match the cpu",
          "[cuda][transformer][layer_norm]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  auto affine = GENERATE(0, 1, 2, 3);  // bit 0: weight, bit 1: bias
  auto shapes = GENERATE(kernels::cuda::RowShapes::Balanced, kernels::cuda::RowShapes::PowerOfTwo);
  const RowShapesScope scope(shapes);
  for (auto [rows, cols] : row_sizes()) {
    INFO(dtype << " affine " << affine << " rows " << rows << " cols " << cols << " row shapes "
               << int(shapes));
    // Offset values: the two-pass variance must not cancel.
    const Tensor x = values({rows, cols}, uint64_t(rows * 5 + cols), dtype, 2, 4);
    const Tensor w = (affine & 1) ? values({cols}, 3, dtype, 0.5, 1.5) : Tensor();
    const Tensor b = (affine & 2) ? values({cols}, 4, dtype) : Tensor();
    const Tensor gy = values({rows, cols}, uint64_t(rows + 11 * cols), dtype);
    // The cpu's statistics feed both backwards, so they see identical inputs.
    LayerNormOut cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, b, gy,
                                      zeros({rows}, wide(dtype)), ones({rows}, wide(dtype)));
    cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, b, gy, cpu.mean, cpu.rstd);
    const LayerNormOut cuda =
        run_layer_norm(cuda_k(), kCuda, dtype, x, w, b, gy, cpu.mean, cpu.rstd);
    check_kernel(cuda.y, cpu.y, dtype, 4.0);
    check_kernel(cuda.mean, cpu.mean, wide(dtype));
    check_kernel(cuda.rstd, cpu.rstd, wide(dtype), 10.0);
    // dx scales with rstd (up to ~1 / 0.6 here); dw and db are sums over the rows.
    check_kernel(cuda.dx, cpu.dx, dtype, 10.0);
    check_kernel(cuda.dw, cpu.dw, dtype, 2.0 * double(rows));
    check_kernel(cuda.db, cpu.db, dtype, 2.0 * double(rows));
  }
}

TEST_CASE("cuda transformer kernels: layer_norm parameter gradients over many row chunks",
          "[cuda][transformer][layer_norm]") {
  auto dtype = GENERATE(DType::F32, DType::BF16, DType::F64);
  // Without dx (the separate parameter pass): 1000 rows make 32 chunks, 9000 rows hit the
  // 256-chunk cap. With dx, rows of whole packs take the fused kernel: 9000 rows hit its
  // 1024-chunk cap, 8 and 64 columns run 1-2 and 8-16 lanes per row. 33 columns take scalar
  // columns (both separate passes).
  auto with_dx = GENERATE(false, true);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1000, 33}, {9000, 8}, {300, 64}}) {
    INFO(dtype << " rows " << rows << " cols " << cols << (with_dx ? " with dx" : ""));
    const Tensor x = values({rows, cols}, 1, dtype, -2, 2);
    const Tensor w = values({cols}, 2, dtype, 0.5, 1.5);
    const Tensor gy = values({rows, cols}, 4, dtype);
    LayerNormOut cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, Tensor(), gy,
                                      zeros({rows}, wide(dtype)), ones({rows}, wide(dtype)));
    cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, Tensor(), gy, cpu.mean, cpu.rstd);
    // Without dx, grad_x null must be honoured.
    const LayerNormOut cuda = run_layer_norm(cuda_k(), kCuda, dtype, x, w, Tensor(), gy, cpu.mean,
                                             cpu.rstd, with_dx, true, true);
    check_kernel(cuda.dw, cpu.dw, dtype, std::sqrt(double(rows)) * 4);
    check_kernel(cuda.db, cpu.db, dtype, std::sqrt(double(rows)) * 4);
    if (with_dx) check_kernel(cuda.dx, cpu.dx, dtype, 10.0);
  }
}

TEST_CASE("cuda transformer kernels: layer_norm's fused backward with packed dy",
          "[cuda][transformer][layer_norm]") {
  // kernels/cuda/layer_norm_variant.h: bf16 dy kept as the loaded packs and widened at each use
  // must give the widened run's values, at each packs-per-lane count of the fused kernel (384:
  // 16 lanes x 3 packs; 256: 16 x 2; 768: 32 x 3; 1024: 32 x 4), and match the cpu; f16 ignores
  // the knob.
  namespace cu = kernels::cuda;
  for (DType dtype : {DType::BF16, DType::F16}) {
    for (int64_t cols : {256, 384, 768, 1024}) {
      const int64_t rows = 37;
      INFO(dtype << " rows " << rows << " cols " << cols);
      const Tensor x = values({rows, cols}, uint64_t(cols), dtype, 2, 4);
      const Tensor w = values({cols}, 3, dtype, 0.5, 1.5), b = values({cols}, 4, dtype);
      const Tensor gy = values({rows, cols}, uint64_t(cols + 1), dtype);
      LayerNormOut cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, b, gy,
                                        zeros({rows}, wide(dtype)), ones({rows}, wide(dtype)));
      cpu = run_layer_norm(cpu_k(), kCpu, wide(dtype), x, w, b, gy, cpu.mean, cpu.rstd);
      LayerNormOut widened, packed;
      {
        const LayerNormDyScope scope(cu::LayerNormDy::Widened);
        widened = run_layer_norm(cuda_k(), kCuda, dtype, x, w, b, gy, cpu.mean, cpu.rstd);
      }
      {
        const LayerNormDyScope scope(cu::LayerNormDy::Packed);
        const long long launches = cu::layer_norm_packed_dy_launches();
        packed = run_layer_norm(cuda_k(), kCuda, dtype, x, w, b, gy, cpu.mean, cpu.rstd);
        // The fused kernel ran packed (bf16 only: f16 always runs widened).
        CHECK(cu::layer_norm_packed_dy_launches() == launches + (dtype == DType::BF16 ? 1 : 0));
        if (dtype == DType::BF16 && cols == 384) {
          check_schedule_invariant([&] {
            LayerNormOut o =
                run_layer_norm(cuda_k(), kCuda, dtype, x, w, b, gy, cpu.mean, cpu.rstd);
            return std::vector<Tensor>{o.dx, o.dw, o.db};
          });
        }
      }
      check_kernel(packed.dx, cpu.dx, dtype, 10.0);
      check_kernel(packed.dw, cpu.dw, dtype, 2.0 * double(rows));
      check_kernel(packed.db, cpu.db, dtype, 2.0 * double(rows));
      // The same arithmetic on the same values: only the compiler's FMA contraction of the
      // rearranged loops may move a result by a rounding (g++ does so for f16 dx here).
      check_kernel(packed.dx, widened.dx, dtype);
      check_kernel(packed.dw, widened.dw, dtype);
      check_kernel(packed.db, widened.db, dtype);
    }
  }
}

TEST_CASE("cuda transformer kernels: layer_norm with zero rows writes zero parameter gradients",
          "[cuda][transformer][layer_norm]") {
  Tensor dw = nan_tensor({7}, DType::F32, kCuda), db = nan_tensor({7}, DType::F32, kCuda);
  kernels::LayerNormBackwardArgs a;
  a.rows = 0;
  a.cols = 7;
  a.grad_weight = dw.data_ptr();
  a.grad_bias = db.data_ptr();
  cuda_k().layer_norm_backward(a);
  CHECK(dw.to_vector<double>() == std::vector<double>(7, 0.0));
  CHECK(db.to_vector<double>() == std::vector<double>(7, 0.0));
}

// -------------------------------------------------------------------------------- cross entropy

TEST_CASE("cuda transformer kernels: cross_entropy forward and backward match the cpu",
          "[cuda][transformer][cross_entropy]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  auto smoothing = GENERATE(0.0, 0.15);
  for (auto [rows, classes] : row_sizes()) {
    INFO(dtype << " smoothing " << smoothing << " rows " << rows << " classes " << classes);
    const Tensor x = values({rows, classes}, uint64_t(rows * 3 + classes), dtype, -6, 6);
    const Tensor t = make_targets(rows, classes, uint64_t(rows + classes));
    const Tensor g = values({rows}, 9, dtype, 0.5, 2);
    CrossEntropyOut cpu = run_cross_entropy(cpu_k(), kCpu, wide(dtype), x, t, g,
                                            zeros({rows}, wide(dtype)), smoothing);
    cpu = run_cross_entropy(cpu_k(), kCpu, wide(dtype), x, t, g, cpu.lse, smoothing);
    const CrossEntropyOut cuda =
        run_cross_entropy(cuda_k(), kCuda, dtype, x, t, g, cpu.lse, smoothing);
    check_kernel(cuda.loss, cpu.loss, dtype, 8.0);
    check_kernel(cuda.lse, cpu.lse, wide(dtype), 8.0);
    check_kernel(cuda.grad, cpu.grad, dtype, 2.0);
    // Ignored rows: loss and gradient exactly zero.
    const std::vector<double> loss = cuda.loss.to_vector<double>(),
                              grad = cuda.grad.to_vector<double>();
    for (int64_t r = 2; r < rows; r += 5) {
      CHECK(loss[size_t(r)] == 0.0);
      for (int64_t j = 0; j < classes; ++j) CHECK(grad[size_t(r * classes + j)] == 0.0);
    }
  }
}

TEST_CASE("cuda transformer kernels: cross_entropy with masked logits, a custom ignore_index",
          "[cuda][transformer][cross_entropy]") {
  auto dtype = GENERATE(DType::F32, DType::BF16);
  for (int64_t classes : {10, 1500}) {
    INFO(dtype << " classes " << classes);
    std::vector<double> v = testing::random_values(4 * classes, 5, -3, 3);
    for (int64_t j = 1; j < classes; j += 2) v[size_t(j)] = -kInf;         // row 0: half masked
    for (int64_t j = 0; j < classes; ++j) v[size_t(classes + j)] = -kInf;  // row 1: all masked
    const Tensor x = from_vector(v, {4, classes}).to(dtype);
    const Tensor t = from_vector(std::vector<int64_t>{0, 3, 7, 2}, {4});  // row 2 ignored below
    const Tensor g = values({4}, 2, dtype, 0.5, 1.5);
    CrossEntropyOut cpu =
        run_cross_entropy(cpu_k(), kCpu, wide(dtype), x, t, g, zeros({4}, wide(dtype)), 0.0, 7);
    cpu = run_cross_entropy(cpu_k(), kCpu, wide(dtype), x, t, g, cpu.lse, 0.0, 7);
    const CrossEntropyOut cuda =
        run_cross_entropy(cuda_k(), kCuda, dtype, x, t, g, cpu.lse, 0.0, 7);
    check_kernel(cuda.loss, cpu.loss, dtype, 4.0);
    check_kernel(cuda.lse, cpu.lse, wide(dtype), 4.0);
    check_kernel(cuda.grad, cpu.grad, dtype);
    CHECK(std::isnan(cuda.loss.to_vector<double>()[1]));  // all masked: NaN, as on the cpu
    CHECK(cuda.loss.to_vector<double>()[2] == 0.0);       // ignore_index 7
  }
}

// ---------------------------------------------------------------------------- embedding backward

TEST_CASE("cuda transformer kernels: embedding backward matches the cpu, padding_idx skipped",
          "[cuda][transformer][embedding]") {
  auto dtype = GENERATE(from_range(std::begin(kFloatTypes), std::end(kFloatTypes)));
  struct Case {
    int64_t n, dim, num_embeddings, padding_idx;
    bool transposed;
  };
  const Case cases[] = {{1, 3, 4, -1, false},     {37, 1, 5, 2, false},  {37, 127, 50, -1, true},
                        {300, 384, 40, 0, false}, {200, 8, 3, 1, false}, {2500, 4, 7, 3, true}};
  for (const Case& c : cases) {
    INFO(dtype << " n " << c.n << " dim " << c.dim << " V " << c.num_embeddings << " padding "
               << c.padding_idx << (c.transposed ? " transposed grad" : ""));
    const std::vector<int64_t> idx = skewed_indices(c.n, c.num_embeddings, uint64_t(c.n + c.dim));
    const Tensor indices = index_tensor(idx);
    const Tensor grad = values({c.n, c.dim}, uint64_t(c.dim), dtype);
    const Tensor ref = run_embedding_backward(cpu_k(), kCpu, wide(dtype), indices, grad,
                                              c.num_embeddings, c.padding_idx);
    const Tensor got = run_embedding_backward(cuda_k(), kCuda, dtype, indices, grad,
                                              c.num_embeddings, c.padding_idx, c.transposed);
    check_kernel(got, ref, dtype, std::sqrt(double(c.n)));
    if (c.padding_idx >= 0) {
      const std::vector<double> row = got.to(kCpu).select(0, c.padding_idx).to_vector<double>();
      CHECK(row == std::vector<double>(size_t(c.dim), 0.0));
    }
    // Segments of at most 32 positions are summed in the cpu's order: identical bits.
    if (!is_half(dtype) && longest_run(idx, c.padding_idx) <= 32) {
      CHECK(bytes_of(got) == bytes_of(ref));
    }
  }
}

TEST_CASE("cuda transformer kernels: embedding backward edge cases and errors",
          "[cuda][transformer][embedding]") {
  SECTION("every position is padding, or there are none: all zeros") {
    for (const std::vector<int64_t>& idx :
         {std::vector<int64_t>{2, 2, 2}, std::vector<int64_t>{}}) {
      const Tensor grad = values({int64_t(idx.size()), 5}, 1, DType::F32);
      const Tensor got =
          run_embedding_backward(cuda_k(), kCuda, DType::F32, index_tensor(idx), grad, 4, 2);
      CHECK(got.to_vector<double>() == std::vector<double>(20, 0.0));
    }
  }
  SECTION("an index out of range is raised at the next wait and its position skipped") {
    const Tensor indices = index_tensor({0, 3, 9, 1});
    const Tensor grad = values({4, 6}, 1, DType::F32);
    Tensor gw = nan_tensor({5, 6}, DType::F32, kCuda);
    const Tensor id = indices.to(kCuda), gd = grad.to(kCuda);
    kernels::EmbeddingBackwardArgs a;
    a.indices = static_cast<const int64_t*>(id.data_ptr());
    a.n = 4;
    a.grad_out = view(gd);
    a.grad_weight = gw.data_ptr();
    a.num_embeddings = 5;
    testing::check_error(
        [&] {
          cuda_k().embedding_backward(a);
          lathe::synchronize(kCuda);
        },
        {"embedding backward", "index 9", "position 2", "5 embeddings"});
    // Rows 0, 3 and 1 took positions 0, 1 and 3; the others are zero.
    const std::vector<double> got = gw.to_vector<double>(), g = grad.to_vector<double>();
    for (int row = 0; row < 5; ++row) {
      const int from = row == 0 ? 0 : row == 3 ? 1 : row == 1 ? 3 : -1;
      for (int c = 0; c < 6; ++c) {
        INFO("row " << row << " column " << c);
        CHECK(got[size_t(row * 6 + c)] == (from < 0 ? 0.0 : g[size_t(from * 6 + c)]));
      }
    }
    // The cpu kernel checks first and writes nothing (host buffers: on a GPU the cuda ones are not
    // host-readable).
    Tensor gw_host = nan_tensor({5, 6}, DType::F32, Device::cpu());
    kernels::EmbeddingBackwardArgs h = a;
    h.indices = static_cast<const int64_t*>(indices.data_ptr());
    h.grad_out = view(grad);
    h.grad_weight = gw_host.data_ptr();
    testing::check_error([&] { cpu_k().embedding_backward(h); },
                         {"embedding backward", "index 9", "position 2", "5 embeddings"});
    for (double v : gw_host.to_vector<double>()) CHECK(std::isnan(v));
  }
}

// ------------------------------------------------------------------------- gelu (vectorized path)

TEST_CASE("cuda transformer kernels: gelu's vectorized path agrees with the element-wise one",
          "[cuda][transformer][gelu]") {
  using kernels::UnaryOp;
  auto op = GENERATE(UnaryOp::Gelu, UnaryOp::GeluTanh);
  for (int64_t n : {1, 3, 127, 1000, 1537}) {
    INFO("op " << int(op) << " n " << n);
    const Tensor x32 = values({n}, uint64_t(n), DType::F32, -5, 5);
    const Tensor g32 = values({n}, uint64_t(n + 1), DType::F32);
    for (DType dtype : kFloatTypes) {
      INFO(dtype);
      // The 16-bit inputs are the f32 values rounded; their reference is the f32 kernel on them.
      const Tensor x = x32.to(dtype).to(kCuda), g = g32.to(dtype).to(kCuda);
      Tensor y = nan_tensor({n}, dtype, kCuda), gx = nan_tensor({n}, dtype, kCuda);
      cuda_k().unary(op, view(x), view(y), 0, 0);
      cuda_k().unary_backward(op, view(x), view(g), view(gx), 0, 0);
      // The same values one element into a larger buffer: misaligned, so the element-wise path.
      Tensor xs = nan_tensor({n + 1}, dtype, kCuda).slice(0, 1, n + 1);
      xs.copy_(x);
      Tensor gs = nan_tensor({n + 1}, dtype, kCuda).slice(0, 1, n + 1);
      gs.copy_(g);
      Tensor ys = nan_tensor({n + 1}, dtype, kCuda).slice(0, 1, n + 1);
      Tensor gxs = nan_tensor({n + 1}, dtype, kCuda).slice(0, 1, n + 1);
      cuda_k().unary(op, view(xs), view(ys), 0, 0);
      cuda_k().unary_backward(op, view(xs), view(gs), view(gxs), 0, 0);
      // Same functor, but the compiler may contract a * b + c into an FMA differently in the two
      // loops (g++ and nvcc both contract by default), so the paths agree to an ulp, not bitwise.
      // The derivative cancels near GELU's minimum, so the bound is absolute at the terms' size.
      const Tol path_tol = dtype == DType::F64   ? Tol{4e-15, 1e-14}
                           : dtype == DType::F32 ? Tol{2e-7, 5e-7}
                                                 : tol_of(dtype);
      testing::check_close(y.to(kCpu), ys.to(kCpu), path_tol.atol, path_tol.rtol);
      testing::check_close(gx.to(kCpu), gxs.to(kCpu), path_tol.atol, path_tol.rtol);
      if (is_half(dtype)) {
        // 16-bit: the f32 computation, rounded once.
        Tensor y32 = nan_tensor({n}, DType::F32, kCuda), gx32 = nan_tensor({n}, DType::F32, kCuda);
        cuda_k().unary(op, view(x.to(DType::F32)), view(y32), 0, 0);
        cuda_k().unary_backward(op, view(x.to(DType::F32)), view(g.to(DType::F32)), view(gx32), 0,
                                0);
        check_kernel(y, y32, dtype);
        check_kernel(gx, gx32, dtype);
      } else {
        Tensor yc = nan_tensor({n}, dtype, kCpu), gxc = nan_tensor({n}, dtype, kCpu);
        cpu_k().unary(op, view(x.to(kCpu)), view(yc), 0, 0);
        cpu_k().unary_backward(op, view(x.to(kCpu)), view(g.to(kCpu)), view(gxc), 0, 0);
        check_kernel(y, yc, dtype);
        check_kernel(gx, gxc, dtype);
      }
    }
  }
}

// ---------------------------------------------------------------------------------- schedules

TEST_CASE("cuda transformer kernels: bit-identical under every simulator schedule",
          "[cuda][transformer][schedule]") {
  // One warp-per-row and one block-per-row width, f32 and bf16.
  for (DType dtype : {DType::F32, DType::BF16}) {
    // 384: rows of whole packs (layer norm's fused backward); 127 and 1100: scalar columns or
    // blocks per row.
    for (int64_t cols : {127, 384, 1100}) {
      INFO(dtype << " cols " << cols);
      const int64_t rows = 6;
      const Tensor x = values({rows, cols}, 1, dtype, -4, 4);
      const Tensor gy = values({rows, cols}, 2, dtype);
      const Tensor w = values({cols}, 3, dtype, 0.5, 1.5), b = values({cols}, 4, dtype);
      const Tensor t = make_targets(rows, cols, 5);
      const Tensor g = values({rows}, 6, dtype, 0.5, 1.5);
      const Tensor stats = ones({rows}, wide(dtype)) * 0.7;
      check_schedule_invariant([&] {
        SoftmaxOut s = run_softmax(cuda_k(), kCuda, dtype, x, x, gy, false);
        SoftmaxOut l = run_softmax(cuda_k(), kCuda, dtype, x, x, gy, true);
        return std::vector<Tensor>{s.y, s.gx, l.y, l.gx};
      });
      check_schedule_invariant([&] {
        LayerNormOut o = run_layer_norm(cuda_k(), kCuda, dtype, x, w, b, gy, stats, stats);
        return std::vector<Tensor>{o.y, o.mean, o.rstd, o.dx, o.dw, o.db};
      });
      check_schedule_invariant([&] {
        CrossEntropyOut o = run_cross_entropy(cuda_k(), kCuda, dtype, x, t, g, stats, 0.1);
        return std::vector<Tensor>{o.loss, o.lse, o.grad};
      });
    }
    // Embedding backward through the sort's global stages (3000 keys pad to 4096 > one tile).
    const std::vector<int64_t> idx = skewed_indices(3000, 9, 7);
    const Tensor grad = values({3000, 16}, 8, dtype);
    check_schedule_invariant([&] {
      return std::vector<Tensor>{
          run_embedding_backward(cuda_k(), kCuda, dtype, index_tensor(idx), grad, 9, 4)};
    });
  }
}

// ------------------------------------------------------------------ the ops on the cuda device

TEST_CASE("cuda transformer kernels: fused ops on cuda agree with their composite twins",
          "[cuda][transformer][ops]") {
  for (int64_t cols : {37, 1100}) {
    INFO("cols " << cols);
    const Shape shape{3, cols};
    const Tensor x0 = values(shape, 1, DType::F64, -3, 3).to(kCuda);
    const Tensor w0 = values({cols}, 2, DType::F64, 0.5, 1.5).to(kCuda);
    const Tensor b0 = values({cols}, 3, DType::F64).to(kCuda);
    const Tensor gy = values(shape, 4, DType::F64).to(kCuda);
    // layer_norm vs layer_norm_slow
    std::vector<std::vector<Tensor>> ln;
    for (bool slow : {false, true}) {
      Tensor x = x0.clone().requires_grad_(true), w = w0.clone().requires_grad_(true),
             b = b0.clone().requires_grad_(true);
      Tensor y = slow ? layer_norm_slow(x, w, b, 1e-5) : layer_norm(x, w, b, 1e-5);
      (y * gy).sum().backward();
      ln.push_back({y.detach(), x.grad(), w.grad(), b.grad()});
    }
    for (size_t i = 0; i < 4; ++i) testing::check_close(ln[0][i], ln[1][i], 1e-10, 1e-10);
    // softmax / log_softmax vs exp(x - logsumexp(x)) built from primitives.
    for (bool log : {false, true}) {
      std::vector<Tensor> grads, outs;
      for (bool composed : {false, true}) {
        Tensor x = x0.clone().requires_grad_(true);
        Tensor y;
        if (composed) {
          Tensor shifted = x - max(x, {1}, true).detach();
          Tensor log_p = shifted - lathe::log(exp(shifted).sum({1}, true));
          y = log ? log_p : exp(log_p);
        } else {
          y = log ? log_softmax(x, 1) : softmax(x, 1);
        }
        (y * gy).sum().backward();
        outs.push_back(y.detach());
        grads.push_back(x.grad());
      }
      testing::check_close(outs[0], outs[1], 1e-12, 1e-10);
      testing::check_close(grads[0], grads[1], 1e-12, 1e-10);
    }
    // cross_entropy vs cross_entropy_slow, smoothing and an ignored row.
    const Tensor t =
        from_vector(std::vector<int64_t>{1, -100, cols - 1}, {3}, TensorOptions().device(kCuda));
    std::vector<Tensor> ce_loss, ce_grad;
    for (bool slow : {false, true}) {
      Tensor x = x0.clone().requires_grad_(true);
      CrossEntropyOptions o;
      o.label_smoothing = 0.1;
      Tensor loss = slow ? cross_entropy_slow(x, t, o) : cross_entropy(x, t, o);
      loss.backward();
      ce_loss.push_back(loss.detach());
      ce_grad.push_back(x.grad());
    }
    testing::check_close(ce_loss[0], ce_loss[1], 1e-12, 1e-10);
    testing::check_close(ce_grad[0], ce_grad[1], 1e-12, 1e-10);
  }
}

TEST_CASE("cuda transformer kernels: op gradients on cuda match central differences in f64",
          "[cuda][transformer][ops][grad]") {
  for (int64_t cols : {5, 1100}) {
    INFO("cols " << cols);
    const Shape shape{2, cols};
    check_directional(
        kCuda, [](const std::vector<Tensor>& in) { return layer_norm(in[0], in[1], in[2], 1e-5); },
        {values(shape, 1, DType::F64, -2, 2), values({cols}, 2, DType::F64, 0.5, 1.5),
         values({cols}, 3, DType::F64)},
        11);
    check_directional(
        kCuda, [](const std::vector<Tensor>& in) { return softmax(in[0], 1); },
        {values(shape, 4, DType::F64, -3, 3)}, 12);
    check_directional(
        kCuda, [](const std::vector<Tensor>& in) { return log_softmax(in[0], 1); },
        {values(shape, 5, DType::F64, -3, 3)}, 13);
    const Tensor t =
        from_vector(std::vector<int64_t>{0, cols - 1}, {2}, TensorOptions().device(kCuda));
    check_directional(
        kCuda,
        [&](const std::vector<Tensor>& in) {
          CrossEntropyOptions o;
          o.label_smoothing = 0.2;
          o.reduction = Reduction::None;
          return cross_entropy(in[0], t, o);
        },
        {values(shape, 6, DType::F64, -3, 3)}, 14);
  }
}
