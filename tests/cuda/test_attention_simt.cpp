// The SIMT flash attention kernels of the cuda device for f32 and f64 (kernels/cuda/
// attention_simt.cu), called directly (they are not in the kernel table yet) with views of cuda
// tensors, against the cpu attention kernel (kernels/cpu/attention.cpp) run in f64 at the same
// inputs: output, log-sum-exp, the gradients of q, k and v, and grad_mask.
//
// Sequence lengths 1, 17, 64, 129, 300 (tails of the 64-row tiles, several tiles, Tq != Tk), head
// dims 16, 32, 64, 80, 128 and value dims that differ from them (all three head-dim buckets, dims
// that are not a multiple of the 16-byte vector), bool and additive masks broadcast over leading
// dims with partially and fully masked rows, causal, dropout (the cpu kernel draws the same Philox
// mask), strided operands (head views of [B, T, H, d] buffers, rows off 16-byte boundaries, k and v
// broadcast over heads) and the empty cases. Every output is filled with NaN before each run, so an
// element a kernel fails to write fails the comparison; in the simulated build results must be
// bit-identical under every thread schedule.
//
// Errors are relative Frobenius norms ||actual - expected|| / ||expected|| (with a floor where the
// result cancels, see rel_error): f64 within 1e-12 (the kernels and the cpu sum in different
// orders), f32 within 3e-5 of the f64 result (sums of up to 300 f32 products; measured <= 3e-6).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/tensor_internal.h"
#include "cuda/attention_test_util.h"
#include "cuda/kernel_test_util.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/kernel_table.h"
#include "support/test_util.h"

using namespace lathe;
using attention_test::mask_name;
using attention_test::MaskKind;
using attention_test::valid_keys;
using kernel_test::bytes_of;
using kernel_test::check_schedule_invariant;
using testing::random_tensor;

namespace {

const Device kCuda = Device::cuda(0);
const Device kCpu = Device::cpu();
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// Memory layouts of a [B, H, T, w] operand: contiguous; the head view of a [B, T, H, w] buffer
// (rows 16-byte aligned when H * w is a multiple of the vector: read and written in 16-byte
// pieces); the same one element past a 16-byte boundary (element by element).
enum class Layout { Contiguous, HeadView, Misaligned };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous:
      return "contiguous";
    case Layout::HeadView:
      return "head view of [B, T, H, w]";
    default:
      return "head view one element off a 16-byte boundary";
  }
}

struct Case {
  int64_t B = 1, H = 2, tq = 17, tk = 17, d = 32, dv = 32;
  DType dtype = DType::F32;
  bool causal = false;
  MaskKind mask = MaskKind::None;
  bool grad_mask = false;  // asks for grad_mask (floating masks)
  double p = 0.0;
  uint64_t seed = 0, offset = 0;
  // When defined: {seed, offset} as i64 in device memory, which the kernels read instead (a draw
  // inside a CUDA graph capture); seed and offset are then ignored.
  Tensor philox_state;
};

std::string describe(const Case& c) {
  std::ostringstream s;
  s << c.dtype << " B " << c.B << " H " << c.H << " Tq " << c.tq << " Tk " << c.tk << " d " << c.d
    << " dv " << c.dv << (c.causal ? " causal" : "") << " mask " << mask_name(c.mask) << " p "
    << c.p;
  return s.str();
}

// The inputs, on the cuda device: q, k, v and grad_out of c.dtype (views in some layout), the mask
// (bool or c.dtype, contiguous in its own shape).
struct Inputs {
  Tensor q, k, v, grad_out, mask;
};

Tensor make_mask(const Case& c, uint64_t seed) {
  const TensorOptions f64 = TensorOptions(DType::F64);
  switch (c.mask) {
    case MaskKind::None:
      return Tensor();
    case MaskKind::Bias:
      return random_tensor({c.H, c.tq, c.tk}, seed, DType::F64, kCpu, -2, 0.5)
          .to(c.dtype)
          .to(kCuda);
    case MaskKind::RowsBool: {
      // ~70% kept; rows i % 5 == 3 have no key at all.
      const std::vector<double> u = testing::random_values(c.B * c.H * c.tq * c.tk, seed, 0, 1);
      std::vector<double> keep(u.size());
      for (size_t n = 0; n < u.size(); ++n) {
        const int64_t i = int64_t(n) / c.tk % c.tq;
        keep[n] = i % 5 == 3 ? 0.0 : (u[n] < 0.7 ? 1.0 : 0.0);
      }
      return from_vector(keep, {c.B, c.H, c.tq, c.tk}, f64).to(DType::Bool).to(kCuda);
    }
    default:
      break;
  }
  return attention_test::key_padding_mask(c.B, c.tk, c.mask == MaskKind::KeyPaddingFloat, seed,
                                          c.dtype);
}

// A [B, H, t, w] tensor of c.dtype filled with `value` in `layout`.
Tensor laid_out(Layout layout, const Case& c, int64_t t, int64_t w, double value) {
  const TensorOptions opts = TensorOptions(c.dtype).device(kCuda);
  switch (layout) {
    case Layout::Contiguous:
      return full({c.B, c.H, t, w}, value, opts);
    case Layout::HeadView:
      return full({c.B, t, c.H, w}, value, opts).transpose(1, 2);
    default: {
      const int64_t n = c.B * t * c.H * w;
      Tensor flat = full({n + 1}, value, opts);
      return flat.narrow(0, 1, n).view({c.B, t, c.H, w}).transpose(1, 2);
    }
  }
}

Tensor relayout(Layout layout, const Case& c, const Tensor& x) {
  Tensor y = laid_out(layout, c, x.size(2), x.size(3), 0.0);
  y.copy_(x);
  return y;
}

Inputs make_inputs(const Case& c, uint64_t seed, Layout layout = Layout::Contiguous) {
  auto rnd = [&](int64_t t, int64_t w, uint64_t s, double lo, double hi) {
    Tensor x = random_tensor({c.B, c.H, t, w}, s, DType::F64, kCpu, lo, hi).to(c.dtype).to(kCuda);
    return layout == Layout::Contiguous ? x : relayout(layout, c, x);
  };
  Inputs in;
  in.q = rnd(c.tq, c.d, seed, -2, 2);
  in.k = rnd(c.tk, c.d, seed + 1, -2, 2);
  in.v = rnd(c.tk, c.dv, seed + 2, -1, 1);
  in.grad_out = rnd(c.tq, c.dv, seed + 3, -1, 1);
  in.mask = make_mask(c, seed + 4);
  return in;
}

struct Results {
  Tensor out, lse, dq, dk, dv, dmask;
  std::vector<Tensor> all() const {
    std::vector<Tensor> r = {out, lse, dq, dk, dv};
    if (dmask.defined()) r.push_back(dmask);
    return r;
  }
};

kernels::AttentionForwardArgs forward_args(const Case& c, const Inputs& in, DType dtype) {
  kernels::AttentionForwardArgs a;
  a.dtype = dtype;
  a.batch = c.B * c.H;
  a.q_len = c.tq;
  a.kv_len = c.tk;
  a.head_dim = c.d;
  a.value_dim = c.dv;
  a.q = detail::make_view(in.q);
  a.k = detail::make_view(in.k);
  a.v = detail::make_view(in.v);
  if (in.mask.defined()) a.mask = detail::make_broadcast_view(in.mask, {c.B, c.H, c.tq, c.tk});
  a.causal = c.causal;
  a.scale = 1.0 / std::sqrt(double(std::max<int64_t>(c.d, 1)));
  a.dropout_p = c.p;
  a.philox = {c.seed, c.offset};
  if (c.philox_state.defined()) {
    a.philox.device_state = static_cast<const uint64_t*>(c.philox_state.data_ptr());
  }
  return a;
}

// The simt kernels on the cuda device, every output filled with NaN first; out, dq, dk and dv
// are views in `out_layout`.
Results run_simt(const Case& c, const Inputs& in, Layout out_layout = Layout::Contiguous) {
  kernels::AttentionForwardArgs a = forward_args(c, in, c.dtype);
  Results r;
  r.out = laid_out(out_layout, c, c.tq, c.dv, kNaN);
  r.lse = full({c.B * c.H, c.tq}, kNaN, TensorOptions(c.dtype).device(kCuda));
  a.out = detail::make_view(r.out);
  a.lse = r.lse.data_ptr();
  kernels::cuda::attention_forward_simt(a);

  kernels::AttentionBackwardArgs b;
  b.forward = a;
  b.grad_out = detail::make_view(in.grad_out);
  r.dq = laid_out(out_layout, c, c.tq, c.d, kNaN);
  r.dk = laid_out(out_layout, c, c.tk, c.d, kNaN);
  r.dv = laid_out(out_layout, c, c.tk, c.dv, kNaN);
  b.grad_q = detail::make_view(r.dq);
  b.grad_k = detail::make_view(r.dk);
  b.grad_v = detail::make_view(r.dv);
  if (c.grad_mask) {
    r.dmask = full({c.B * c.H, c.tq, c.tk}, kNaN, TensorOptions(c.dtype).device(kCuda));
    b.grad_mask = r.dmask.data_ptr();
  }
  kernels::cuda::attention_backward_simt(b);
  return r;
}

// The cpu kernel in f64 at the same input values (contiguous copies), the same Philox state.
Results cpu_reference(const Case& c, const Inputs& in) {
  auto f64 = [](const Tensor& t) { return t.to(kCpu).to(DType::F64).contiguous(); };
  Inputs x;
  x.q = f64(in.q);
  x.k = f64(in.k);
  x.v = f64(in.v);
  x.grad_out = f64(in.grad_out);
  if (in.mask.defined()) {
    x.mask = in.mask.dtype() == DType::Bool ? in.mask.to(kCpu).contiguous() : f64(in.mask);
  }
  const TensorOptions opts = TensorOptions(DType::F64);
  kernels::AttentionForwardArgs a = forward_args(c, x, DType::F64);
  Results r;
  r.out = full({c.B, c.H, c.tq, c.dv}, kNaN, opts);
  r.lse = full({c.B * c.H, c.tq}, kNaN, opts);
  a.out = detail::make_view(r.out);
  a.lse = r.lse.data_ptr();
  kernels::cpu_kernel_table().attention_forward(a);
  kernels::AttentionBackwardArgs b;
  b.forward = a;
  b.grad_out = detail::make_view(x.grad_out);
  r.dq = full({c.B, c.H, c.tq, c.d}, kNaN, opts);
  r.dk = full({c.B, c.H, c.tk, c.d}, kNaN, opts);
  r.dv = full({c.B, c.H, c.tk, c.dv}, kNaN, opts);
  b.grad_q = detail::make_view(r.dq);
  b.grad_k = detail::make_view(r.dk);
  b.grad_v = detail::make_view(r.dv);
  if (c.grad_mask) {
    r.dmask = full({c.B * c.H, c.tq, c.tk}, kNaN, opts);
    b.grad_mask = r.dmask.data_ptr();
  }
  kernels::cpu_kernel_table().attention_backward(b);
  return r;
}

std::vector<double> values_of(const Tensor& t) {
  return t.to(kCpu).to(DType::F64).contiguous().to_vector<double>();
}

// ||actual - expected|| / max(||expected||, 0.05 sqrt(n)); a NaN anywhere fails. The floor (an RMS
// of 0.05 per element, below the terms' size of ~1) makes the comparison absolute where the exact
// result cancels to ~0: with a single visible key P = 1 and dS = dP - D, so dq and dk are rounding
// noise of size eps * |dP|.
double rel_error(const Tensor& actual, const Tensor& expected) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = values_of(actual), e = values_of(expected);
  double diff = 0, ref = 0;
  for (size_t n = 0; n < a.size(); ++n) {
    if (std::isnan(a[n]) || std::isnan(e[n])) return kInf;
    diff += (a[n] - e[n]) * (a[n] - e[n]);
    ref += e[n] * e[n];
  }
  const double floor = 0.05 * std::sqrt(double(std::max<size_t>(a.size(), 1)));
  return std::sqrt(diff) / std::max(std::sqrt(ref), floor);
}

double tol_of(DType t) {
  // Measured in the simulator: f64 <= 2e-14, f32 <= 1e-6 (1e-5 where the result cancels, see
  // rel_error).
  return t == DType::F64 ? 1e-12 : 3e-5;
}

void check_rel(const Tensor& actual, const Tensor& expected, DType dtype, const char* what) {
  INFO(what);
  const double err = rel_error(actual, expected);
  INFO("relative Frobenius error " << err);
  CHECK(err <= tol_of(dtype));
}

// lse: -inf exactly where the reference has it (fully masked rows), close elsewhere.
void check_lse(const Tensor& actual, const Tensor& expected, DType dtype) {
  const std::vector<double> a = values_of(actual), e = values_of(expected);
  REQUIRE(a.size() == e.size());
  const double tol = dtype == DType::F64 ? 1e-13 : 2e-6;
  for (size_t n = 0; n < a.size(); ++n) {
    INFO("lse element " << n << ": " << a[n] << " vs " << e[n]);
    if (std::isinf(e[n])) {
      REQUIRE(a[n] == e[n]);
    } else {
      REQUIRE(std::abs(a[n] - e[n]) <= tol * (1 + std::abs(e[n])));
    }
  }
}

void check_against(const Case& c, const Results& r, const Results& ref) {
  INFO(describe(c));
  check_rel(r.out, ref.out, c.dtype, "output");
  check_lse(r.lse, ref.lse, c.dtype);
  check_rel(r.dq, ref.dq, c.dtype, "grad q");
  check_rel(r.dk, ref.dk, c.dtype, "grad k");
  check_rel(r.dv, ref.dv, c.dtype, "grad v");
  if (c.grad_mask) check_rel(r.dmask, ref.dmask, c.dtype, "grad mask");
}

void check_case(const Case& c, const Inputs& in) {
  check_against(c, run_simt(c, in), cpu_reference(c, in));
}

bool all_zero(const Tensor& t) {
  for (double x : values_of(t)) {
    if (x != 0.0) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("attention simt: sequence lengths and head dims against the cpu kernel",
          "[cuda][attention_simt]") {
  // (head dim, value dim): each bucket (32, 64, 128), dims below a bucket, value dim != head dim,
  // and dims that are not a multiple of the 16-byte vector (tails read element by element).
  const auto [d, dv] =
      GENERATE(std::pair<int64_t, int64_t>{16, 16}, std::pair<int64_t, int64_t>{32, 32},
               std::pair<int64_t, int64_t>{64, 64}, std::pair<int64_t, int64_t>{80, 80},
               std::pair<int64_t, int64_t>{128, 128}, std::pair<int64_t, int64_t>{45, 100},
               std::pair<int64_t, int64_t>{128, 19});
  const int64_t t = GENERATE(1, 17, 64, 129, 300);
  Case c;
  c.tq = c.tk = t;
  c.d = d;
  c.dv = dv;
  // Alternate dtype and causal so that each head dim meets both without doubling the cases.
  c.dtype = (t + d) % 2 == 0 ? DType::F64 : DType::F32;
  c.causal = (t + d / 16) % 2 == 1;
  check_case(c, make_inputs(c, 100 + uint64_t(t + d + dv)));
}

TEST_CASE("attention simt: Tq != Tk, causal top-left", "[cuda][attention_simt]") {
  const auto [tq, tk] =
      GENERATE(std::pair<int64_t, int64_t>{17, 129}, std::pair<int64_t, int64_t>{129, 70},
               std::pair<int64_t, int64_t>{65, 1}, std::pair<int64_t, int64_t>{1, 300});
  const DType dtype = GENERATE(DType::F32, DType::F64);
  const bool causal = GENERATE(false, true);
  Case c;
  c.tq = tq;
  c.tk = tk;
  c.d = 32;
  c.dv = 48;
  c.dtype = dtype;
  c.causal = causal;
  check_case(c, make_inputs(c, 200));
}

TEST_CASE("attention simt: bool and additive masks, broadcast, fully masked rows, grad_mask",
          "[cuda][attention_simt]") {
  const MaskKind kind = GENERATE(MaskKind::KeyPaddingBool, MaskKind::KeyPaddingFloat,
                                 MaskKind::Bias, MaskKind::RowsBool);
  const bool causal = GENERATE(false, true);
  const DType dtype = GENERATE(DType::F32, DType::F64);
  Case c;
  c.B = 3;
  c.H = 2;
  c.tq = 70;
  c.tk = 75;
  c.d = 64;
  c.dv = 40;
  c.dtype = dtype;
  c.causal = causal;
  c.mask = kind;
  c.grad_mask = kind == MaskKind::KeyPaddingFloat || kind == MaskKind::Bias;
  const Inputs in = make_inputs(c, 300);
  const Results r = run_simt(c, in);
  check_against(c, r, cpu_reference(c, in));
  INFO(describe(c));
  if (kind == MaskKind::KeyPaddingBool || kind == MaskKind::KeyPaddingFloat) {
    // Batch 1 has every key padded: zeros, lse = -inf and exact zero gradients.
    CHECK(all_zero(r.out.select(0, 1)));
    for (double x : values_of(r.lse.narrow(0, c.H, c.H))) CHECK(x == -kInf);
    CHECK(all_zero(r.dq.select(0, 1)));
    CHECK(all_zero(r.dk.select(0, 1)));
    CHECK(all_zero(r.dv.select(0, 1)));
    if (c.grad_mask) CHECK(all_zero(r.dmask.narrow(0, c.H, c.H)));
  }
  if (kind == MaskKind::RowsBool) {
    // Rows i % 5 == 3 see no key.
    for (int64_t i = 3; i < c.tq; i += 5) {
      CHECK(all_zero(r.out.select(2, i)));
      CHECK(all_zero(r.dq.select(2, i)));
      for (double x : values_of(r.lse.select(1, i))) CHECK(x == -kInf);
    }
  }
}

TEST_CASE("attention simt: dropout draws the cpu kernel's Philox mask, regenerated in backward",
          "[cuda][attention_simt]") {
  const DType dtype = GENERATE(DType::F32, DType::F64);
  const bool causal = GENERATE(false, true);
  Case c;
  c.tq = 129;
  c.tk = 75;  // odd: rows start at every position of a Philox block
  c.d = 32;
  c.dv = 32;
  c.dtype = dtype;
  c.causal = causal;
  c.mask = MaskKind::KeyPaddingFloat;
  c.B = 2;
  c.p = 0.25;
  c.seed = 1234;
  c.offset = 17;
  const Inputs in = make_inputs(c, 400);
  const Results r = run_simt(c, in);
  check_against(c, r, cpu_reference(c, in));
  attention_test::check_dropout_determinism(c, [&](const Case& k) { return run_simt(k, in); });
  // p = 1 drops everything: zero output and zero dV.
  Case other = c;
  other.p = 1.0;
  const Results all_dropped = run_simt(other, in);
  CHECK(all_zero(all_dropped.out));
  CHECK(all_zero(all_dropped.dv));
}

TEST_CASE("attention simt: strided operands give the contiguous run's bits",
          "[cuda][attention_simt]") {
  // q, k, v and dO read, and out, dq, dk, dv written, through head views (16-byte pieces) and
  // misaligned views (element by element): the arithmetic is the same, so are the bits.
  const Layout layout = GENERATE(Layout::HeadView, Layout::Misaligned);
  const DType dtype = GENERATE(DType::F32, DType::F64);
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = 70;
  c.tk = 66;
  c.d = 80;
  c.dv = 64;
  c.dtype = dtype;
  c.causal = true;
  c.mask = MaskKind::Bias;
  c.grad_mask = true;
  INFO(layout_name(layout) << ", " << describe(c));
  const Inputs in = make_inputs(c, 500);
  Inputs strided = in;
  strided.q = relayout(layout, c, in.q);
  strided.k = relayout(layout, c, in.k);
  strided.v = relayout(layout, c, in.v);
  strided.grad_out = relayout(layout, c, in.grad_out);
  REQUIRE(!strided.q.is_contiguous());
  REQUIRE(kernels::attention_rows_aligned(detail::make_view(strided.q)) ==
          (layout == Layout::HeadView));
  const Results contiguous = run_simt(c, in);
  const Results r = run_simt(c, strided, layout);
  REQUIRE(!r.out.is_contiguous());
  for (size_t i = 0; i < r.all().size(); ++i) {
    INFO("result " << i << " (out, lse, dq, dk, dv, dmask)");
    CHECK(bytes_of(r.all()[i]) == bytes_of(contiguous.all()[i]));
  }
  check_against(c, r, cpu_reference(c, in));
}

TEST_CASE("attention simt: rows with gaps, k and v broadcast over heads",
          "[cuda][attention_simt]") {
  // Outputs as head views of [B, T, H, w + 3] buffers (odd row strides: element by element) must
  // leave the gaps alone; k and v given as [B, 1, T, w] expanded over H (stride 0) read the same
  // rows for every head.
  const DType dtype = GENERATE(DType::F32, DType::F64);
  Case c;
  c.B = 2;
  c.H = 3;
  c.tq = 33;
  c.tk = 40;
  c.d = 24;
  c.dv = 24;
  c.dtype = dtype;
  c.mask = MaskKind::KeyPaddingBool;
  INFO(describe(c));
  Inputs in = make_inputs(c, 600);
  Case one_head = c;
  one_head.H = 1;
  const Inputs shared = make_inputs(one_head, 650);
  in.k = shared.k.expand({c.B, c.H, c.tk, c.d});
  in.v = shared.v.expand({c.B, c.H, c.tk, c.dv});
  REQUIRE(detail::make_view(in.k).stride[1] == 0);

  const TensorOptions opts = TensorOptions(c.dtype).device(kCuda);
  std::vector<Tensor> buffers;
  auto gapped = [&](int64_t t, int64_t w) {
    buffers.push_back(full({c.B, t, c.H, w + 3}, kNaN, opts));
    return buffers.back().narrow(3, 0, w).transpose(1, 2);
  };
  kernels::AttentionForwardArgs a = forward_args(c, in, c.dtype);
  const Tensor out = gapped(c.tq, c.dv);
  const Tensor lse = full({c.B * c.H, c.tq}, kNaN, opts);
  a.out = detail::make_view(out);
  a.lse = lse.data_ptr();
  kernels::cuda::attention_forward_simt(a);
  kernels::AttentionBackwardArgs b;
  b.forward = a;
  b.grad_out = detail::make_view(in.grad_out);
  const Tensor dq = gapped(c.tq, c.d);
  // dk and dv of broadcast k and v are per head (the op sums them over the broadcast).
  const Tensor dk = gapped(c.tk, c.d), dv = gapped(c.tk, c.dv);
  b.grad_q = detail::make_view(dq);
  b.grad_k = detail::make_view(dk);
  b.grad_v = detail::make_view(dv);
  kernels::cuda::attention_backward_simt(b);

  Inputs materialized = in;
  materialized.k = in.k.contiguous();
  materialized.v = in.v.contiguous();
  const Results expected = run_simt(c, materialized);
  CHECK(bytes_of(out) == bytes_of(expected.out));
  CHECK(bytes_of(lse) == bytes_of(expected.lse));
  CHECK(bytes_of(dq) == bytes_of(expected.dq));
  CHECK(bytes_of(dk) == bytes_of(expected.dk));
  CHECK(bytes_of(dv) == bytes_of(expected.dv));
  check_against(c, expected, cpu_reference(c, materialized));
  // The three columns after each row were NaN and must still be.
  for (const Tensor& buffer : buffers) {
    const int64_t w = buffer.size(3) - 3;
    for (double x : values_of(buffer.narrow(3, w, 3))) REQUIRE(std::isnan(x));
  }
}

TEST_CASE("attention simt: bit-identical under every simulator schedule",
          "[cuda][attention_simt]") {
  // Each head-dim bucket once: f32 d = 128, f64 d = 80 (bucket 128) with value dim 40, f32 d = 16
  // with value dim 32 (bucket 32), f64 d = 64.
  const auto [dtype, d, dv] = GENERATE(std::tuple<DType, int64_t, int64_t>{DType::F32, 128, 128},
                                       std::tuple<DType, int64_t, int64_t>{DType::F64, 80, 40},
                                       std::tuple<DType, int64_t, int64_t>{DType::F32, 16, 32},
                                       std::tuple<DType, int64_t, int64_t>{DType::F64, 64, 64});
  Case c;
  c.B = 2;
  c.H = 1;
  c.tq = 70;
  c.tk = 75;
  c.d = d;
  c.dv = dv;
  c.dtype = dtype;
  c.causal = true;
  c.mask = MaskKind::KeyPaddingFloat;
  c.grad_mask = true;
  c.p = 0.1;
  c.seed = 9;
  INFO(describe(c));
  const Inputs in = make_inputs(c, 700, Layout::HeadView);
  check_schedule_invariant([&] { return run_simt(c, in).all(); });
}

TEST_CASE("attention simt: empty batch, queries or keys", "[cuda][attention_simt]") {
  const DType dtype = GENERATE(DType::F32, DType::F64);
  Case c;
  c.B = 2;
  c.H = 1;
  c.d = 32;
  c.dv = 16;
  c.dtype = dtype;
  c.mask = MaskKind::KeyPaddingFloat;
  c.grad_mask = true;

  SECTION("kv_len = 0: zeros, lse = -inf, dq = 0") {
    c.tq = 5;
    c.tk = 0;
    const Results r = run_simt(c, make_inputs(c, 800));
    CHECK(all_zero(r.out));
    for (double x : values_of(r.lse)) CHECK(x == -kInf);
    CHECK(all_zero(r.dq));
    CHECK(r.dk.numel() == 0);
  }
  SECTION("q_len = 0: dk = dv = 0") {
    c.tq = 0;
    c.tk = 7;
    const Results r = run_simt(c, make_inputs(c, 801));
    CHECK(r.out.numel() == 0);
    CHECK(all_zero(r.dk));
    CHECK(all_zero(r.dv));
  }
  SECTION("batch = 0: nothing to do") {
    c.B = 0;
    c.tq = 3;
    c.tk = 4;
    const Results r = run_simt(c, make_inputs(c, 802));
    CHECK(r.out.numel() == 0);
  }
  SECTION("one query, one key") {
    c.tq = c.tk = 1;
    c.mask = MaskKind::None;
    c.grad_mask = false;
    check_case(c, make_inputs(c, 803));
  }
}

TEST_CASE("attention simt: unsupported arguments are refused", "[cuda][attention_simt]") {
  Case c;
  c.tq = c.tk = 4;
  c.d = c.dv = 16;
  const Inputs in = make_inputs(c, 900);
  kernels::AttentionForwardArgs a = forward_args(c, in, c.dtype);
  const Tensor out = full({c.B, c.H, c.tq, c.dv}, 0.0, TensorOptions(c.dtype).device(kCuda));
  const Tensor lse = full({c.B * c.H, c.tq}, 0.0, TensorOptions(c.dtype).device(kCuda));
  a.out = detail::make_view(out);
  a.lse = lse.data_ptr();

  kernels::AttentionForwardArgs half = a;
  half.dtype = DType::F16;
  testing::check_error([&] { kernels::cuda::attention_forward_simt(half); },
                       {"simt attention", "f32 or f64"});
  kernels::AttentionBackwardArgs b;
  b.forward = half;
  testing::check_error([&] { kernels::cuda::attention_backward_simt(b); },
                       {"simt attention", "f32 or f64"});

  kernels::AttentionForwardArgs wide = a;
  wide.head_dim = 129;
  testing::check_error([&] { kernels::cuda::attention_forward_simt(wide); },
                       {"simt attention", "128"});

  // A head dim with stride != 1 ([B, H, d, T] memory).
  kernels::AttentionForwardArgs columns = a;
  const Tensor q_cols = in.q.transpose(2, 3).contiguous().transpose(2, 3);
  columns.q = detail::make_view(q_cols);
  testing::check_error([&] { kernels::cuda::attention_forward_simt(columns); },
                       {"simt attention", "q", "stride 1"});

  kernels::AttentionForwardArgs mixed = a;
  mixed.v = detail::make_view(in.v.to(DType::F64));
  testing::check_error([&] { kernels::cuda::attention_forward_simt(mixed); },
                       {"simt attention", "v"});
}
