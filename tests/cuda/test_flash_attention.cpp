// The fused flash attention kernels of the cuda device (kernels/cuda/attention.cu, f16/bf16 on
// tensor cores) against the composite attention (scaled_dot_product_attention_slow) evaluated in
// f64 on the cpu at the same rounded inputs: outputs, log-sum-exp and the gradients of q, k, v (and
// of a floating mask, through the op). Sequence lengths 1, 17, 64, 129, 300 (tails of the 64-row
// tiles, several tiles, Tq != Tk), head dims 32, 64, 128, key-padding masks with partially and
// fully padded sequences, additive masks, causal, dropout. Outputs are filled with NaN before each
// run, so an element a kernel fails to write fails the comparison; in the simulated build the
// results must be bit-identical under every thread schedule.
//
// Errors are relative Frobenius norms ||actual - expected|| / ||expected||: the kernels round P to
// the input type before P V (as FlashAttention does) and round each output once, so a bf16 result
// is within a few 2^-8 of the reference, an f16 result within a few 2^-11.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>

#include "core/tensor_internal.h"
#include "cuda/kernel_test_util.h"
#include "kernels/kernel_table.h"
#include "lathe/core/random.h"
#include "support/test_util.h"

#ifdef LATHE_CUDA_SIM_BUILD
#include "kernels/sim/sim_runtime.h"
#endif

using namespace lathe;
using kernel_test::bytes_of;
using kernel_test::check_schedule_invariant;
using testing::random_tensor;

namespace {

const Device kCuda = Device::cuda(0);
const Device kCpu = Device::cpu();
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

const kernels::KernelTable& cuda_k() {
  return kernels::kernel_table(DeviceType::CUDA);
}

enum class MaskKind { None, KeyPaddingBool, KeyPaddingFloat, Bias };

const char* mask_name(MaskKind k) {
  switch (k) {
    case MaskKind::None:
      return "none";
    case MaskKind::KeyPaddingBool:
      return "key padding (bool)";
    case MaskKind::KeyPaddingFloat:
      return "key padding (additive f32)";
    default:
      return "f32 bias [H, Tq, Tk]";
  }
}

struct Case {
  int64_t B = 1, H = 1, tq = 17, tk = 17, d = 64;
  DType dtype = DType::BF16;
  bool causal = false;
  MaskKind mask = MaskKind::None;
  double p = 0.0;
  uint64_t seed = 0, offset = 0;
};

std::string describe(const Case& c) {
  std::ostringstream s;
  s << c.dtype << " B " << c.B << " H " << c.H << " Tq " << c.tq << " Tk " << c.tk << " d " << c.d
    << (c.causal ? " causal" : "") << " mask " << mask_name(c.mask) << " p " << c.p;
  return s.str();
}

// Inputs on the cuda device (q, k, v, grad_out of c.dtype; the mask bool or f32).
struct Inputs {
  Tensor q, k, v, mask, grad_out;
};

// Key-padding lengths: batch 0 keeps ~2/3 of its keys (at least one), batch 1 none (every row fully
// masked), further batches all keys.
int64_t valid_keys(int64_t b, int64_t tk) {
  if (b == 0) return std::max<int64_t>(1, tk - tk / 3);
  if (b == 1) return 0;
  return tk;
}

Tensor make_mask(const Case& c, uint64_t seed) {
  if (c.mask == MaskKind::None) return Tensor();
  if (c.mask == MaskKind::Bias) {
    return random_tensor({c.H, c.tq, c.tk}, seed, DType::F64, kCpu, -2, 0.5)
        .to(DType::F32)
        .to(kCuda);
  }
  std::vector<double> keep(size_t(c.B * c.tk));
  const std::vector<double> bias = testing::random_values(c.B * c.tk, seed, -1, 0);
  for (int64_t b = 0; b < c.B; ++b) {
    for (int64_t j = 0; j < c.tk; ++j) {
      const bool valid = j < valid_keys(b, c.tk);
      const size_t n = size_t(b * c.tk + j);
      keep[n] = c.mask == MaskKind::KeyPaddingBool ? (valid ? 1.0 : 0.0)
                                                   : (valid ? double(float(bias[n])) : -kInf);
    }
  }
  Tensor m = from_vector(keep, {c.B, 1, 1, c.tk}, TensorOptions(DType::F64));
  return (c.mask == MaskKind::KeyPaddingBool ? m.to(DType::Bool) : m.to(DType::F32)).to(kCuda);
}

Inputs make_inputs(const Case& c, uint64_t seed) {
  auto rnd = [&](int64_t t, uint64_t s, double lo, double hi) {
    return random_tensor({c.B, c.H, t, c.d}, s, DType::F64, kCpu, lo, hi).to(c.dtype).to(kCuda);
  };
  Inputs in;
  in.q = rnd(c.tq, seed, -2, 2);
  in.k = rnd(c.tk, seed + 1, -2, 2);
  in.v = rnd(c.tk, seed + 2, -1, 1);
  in.grad_out = rnd(c.tq, seed + 3, -1, 1);
  in.mask = make_mask(c, seed + 4);
  return in;
}

struct Results {
  Tensor out, lse, dq, dk, dv;
  std::vector<Tensor> all() const { return {out, lse, dq, dk, dv}; }
};

Tensor nan_tensor(const Shape& shape, DType dtype) {
  return full(shape, kNaN, TensorOptions(dtype).device(kCuda));
}

// The cuda kernels called directly through the KernelTable, every output poisoned with NaN.
Results run_kernels(const Case& c, const Inputs& in) {
  kernels::AttentionForwardArgs a;
  a.dtype = c.dtype;
  a.batch = c.B * c.H;
  a.q_len = c.tq;
  a.kv_len = c.tk;
  a.head_dim = a.value_dim = c.d;
  a.q = in.q.data_ptr();
  a.k = in.k.data_ptr();
  a.v = in.v.data_ptr();
  if (in.mask.defined()) a.mask = detail::make_broadcast_view(in.mask, {c.B, c.H, c.tq, c.tk});
  a.causal = c.causal;
  a.scale = 1.0 / std::sqrt(double(c.d));
  a.dropout_p = c.p;
  a.seed = c.seed;
  a.offset = c.offset;
  Results r;
  r.out = nan_tensor({c.B, c.H, c.tq, c.d}, c.dtype);
  r.lse = nan_tensor({c.B * c.H, c.tq}, DType::F32);
  a.out = r.out.data_ptr();
  a.lse = r.lse.data_ptr();
  cuda_k().attention_forward(a);
  kernels::AttentionBackwardArgs b;
  b.forward = a;
  b.grad_out = in.grad_out.data_ptr();
  r.dq = nan_tensor(in.q.shape(), c.dtype);
  r.dk = nan_tensor(in.k.shape(), c.dtype);
  r.dv = nan_tensor(in.v.shape(), c.dtype);
  b.grad_q = r.dq.data_ptr();
  b.grad_k = r.dk.data_ptr();
  b.grad_v = r.dv.data_ptr();
  cuda_k().attention_backward(b);
  return r;
}

struct Reference {
  Tensor out, dq, dk, dv, dmask;
};

// The composite attention in f64 on the cpu at the rounded inputs, with the same Philox state.
Reference reference(const Case& c, const Inputs& in) {
  auto leaf = [](const Tensor& t) {
    Tensor x = t.to(kCpu).to(DType::F64);
    x.requires_grad_();
    return x;
  };
  Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v);
  Tensor mask;
  if (in.mask.defined()) {
    mask = in.mask.dtype() == DType::Bool ? in.mask.to(kCpu) : leaf(in.mask);
  }
  const PhiloxState saved = philox_current();
  philox_set({c.seed, c.offset});
  Tensor out = scaled_dot_product_attention_slow(q, k, v, mask, c.causal, c.p);
  philox_set(saved);
  sum(out * in.grad_out.to(kCpu).to(DType::F64)).backward();
  Reference r;
  r.out = out.detach();
  r.dq = q.grad();
  r.dk = k.grad();
  r.dv = v.grad();
  if (mask.defined() && mask.dtype() != DType::Bool) r.dmask = mask.grad();
  return r;
}

double frobenius(const Tensor& t) {
  double s = 0;
  for (double x : t.to(kCpu).to(DType::F64).contiguous().to_vector<double>()) s += x * x;
  return std::sqrt(s);
}

// ||actual - expected|| / ||expected|| (over 0.01 when expected is ~0, e.g. dq with one key); NaN
// anywhere fails.
void check_rel(const Tensor& actual, const Tensor& expected, double tol, const char* what) {
  INFO(what);
  REQUIRE(actual.shape() == expected.shape());
  const Tensor a = actual.to(kCpu).to(DType::F64);
  const double diff = frobenius(a - expected), ref = frobenius(expected);
  const double err = diff / std::max(ref, 1e-2);
  INFO("relative Frobenius error " << err << " (|expected| " << ref << ")");
  CHECK(err <= tol);
}

double tol_of(DType t, bool grad) {
  // bf16 keeps 8 significant bits, f16 11; gradients go through one more rounded product.
  // Measured in the simulator: bf16 <= 2.6e-3 (output) and 3.6e-3 (gradients), f16 <= 2.6e-4
  // and 4.2e-4.
  if (t == DType::BF16) return grad ? 1e-2 : 6e-3;
  return grad ? 1.5e-3 : 1e-3;
}

void check_case(const Case& c, const Results& r, const Reference& ref) {
  INFO(describe(c));
  check_rel(r.out, ref.out, tol_of(c.dtype, false), "output");
  check_rel(r.dq, ref.dq, tol_of(c.dtype, true), "grad q");
  check_rel(r.dk, ref.dk, tol_of(c.dtype, true), "grad k");
  check_rel(r.dv, ref.dv, tol_of(c.dtype, true), "grad v");
  // The log-sum-exp of every row: finite, or -inf exactly for fully masked rows.
  const std::vector<float> lse = r.lse.to(kCpu).to_vector<float>();
  for (float x : lse) REQUIRE((std::isfinite(x) || x == -std::numeric_limits<float>::infinity()));
}

}  // namespace

TEST_CASE("flash attention: sequence lengths and head dims against the f64 composite",
          "[cuda][attention]") {
  const int64_t d = GENERATE(32, 64, 128);
  const int64_t t = GENERATE(1, 17, 64, 129, 300);
  Case c;
  c.tq = c.tk = t;
  c.d = d;
  // Alternate dtype and causal so every head dim meets both without doubling the cases.
  c.dtype = (t + d / 32) % 2 == 0 ? DType::F16 : DType::BF16;
  c.causal = t % 2 == 1;
  const Inputs in = make_inputs(c, 100 + uint64_t(t + d));
  check_case(c, run_kernels(c, in), reference(c, in));
}

TEST_CASE("flash attention: Tq != Tk, causal top-left, both dtypes", "[cuda][attention]") {
  const auto [tq, tk] =
      GENERATE(std::pair<int64_t, int64_t>{17, 129}, std::pair<int64_t, int64_t>{129, 70},
               std::pair<int64_t, int64_t>{65, 1});
  const DType dtype = GENERATE(DType::BF16, DType::F16);
  const bool causal = GENERATE(false, true);
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = tq;
  c.tk = tk;
  c.d = 32;
  c.dtype = dtype;
  c.causal = causal;
  const Inputs in = make_inputs(c, 200);
  check_case(c, run_kernels(c, in), reference(c, in));
}

TEST_CASE("flash attention: key-padding and additive masks, partially and fully padded",
          "[cuda][attention]") {
  const MaskKind kind =
      GENERATE(MaskKind::KeyPaddingBool, MaskKind::KeyPaddingFloat, MaskKind::Bias);
  const int64_t t = GENERATE(17, 129);
  const bool causal = GENERATE(false, true);
  Case c;
  c.B = 2;
  c.H = kind == MaskKind::Bias ? 2 : 1;
  c.tq = c.tk = t;
  c.d = 64;
  c.mask = kind;
  c.causal = causal;
  const Inputs in = make_inputs(c, 300 + uint64_t(t));
  const Results r = run_kernels(c, in);
  check_case(c, r, reference(c, in));
  if (kind != MaskKind::Bias) {
    // Batch 1 has every key padded: its rows are defined as zeros with lse = -inf, and its
    // gradients are zero (exactly).
    const Tensor out1 = r.out.to(kCpu).select(0, 1);
    CHECK(frobenius(out1) == 0.0);
    for (float x : r.lse.to(kCpu).select(0, 1).to_vector<float>()) {
      CHECK(x == -std::numeric_limits<float>::infinity());
    }
    CHECK(frobenius(r.dq.to(kCpu).select(0, 1)) == 0.0);
    CHECK(frobenius(r.dk.to(kCpu).select(0, 1)) == 0.0);
    CHECK(frobenius(r.dv.to(kCpu).select(0, 1)) == 0.0);
  }
}

TEST_CASE("flash attention: dropout from Philox, regenerated in backward", "[cuda][attention]") {
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = 129;
  c.tk = GENERATE(70, 75);  // odd: key pairs that straddle two Philox blocks
  c.d = 32;
  c.p = 0.25;
  c.seed = 1234;
  c.offset = 17;
  c.causal = GENERATE(false, true);
  const Inputs in = make_inputs(c, 400);
  const Results r = run_kernels(c, in);
  // The composite reference draws the same mask (same rule as the dropout kernel).
  check_case(c, r, reference(c, in));
  // Same seed: same bits; another seed or offset: other outputs and gradients.
  const Results again = run_kernels(c, in);
  for (size_t i = 0; i < 5; ++i) CHECK(bytes_of(again.all()[i]) == bytes_of(r.all()[i]));
  Case other = c;
  other.seed = 1235;
  const Results r2 = run_kernels(other, in);
  CHECK(bytes_of(r2.out) != bytes_of(r.out));
  CHECK(bytes_of(r2.dq) != bytes_of(r.dq));
  CHECK(bytes_of(r2.dk) != bytes_of(r.dk));
  CHECK(bytes_of(r2.dv) != bytes_of(r.dv));
  other = c;
  other.offset = 18;
  CHECK(bytes_of(run_kernels(other, in).out) != bytes_of(r.out));
  // p = 1 drops everything: zero output.
  other = c;
  other.p = 1.0;
  CHECK(frobenius(run_kernels(other, in).out) == 0.0);
}

TEST_CASE("flash attention: bit-identical under every simulator schedule", "[cuda][attention]") {
  Case c;
  c.B = 2;
  c.H = 1;
  c.tq = 70;
  c.tk = 75;
  c.d = GENERATE(32, 128);
  c.causal = true;
  c.mask = MaskKind::KeyPaddingFloat;
  c.p = 0.1;
  c.seed = 9;
  const Inputs in = make_inputs(c, 500);
  check_schedule_invariant([&] { return run_kernels(c, in).all(); });
}

TEST_CASE("flash attention: the op dispatches f16/bf16 to the fused kernel, with mask gradients",
          "[cuda][attention]") {
  // Through scaled_dot_product_attention on the cuda device: broadcast key-padding bias that is
  // differentiable, causal, autograd; against the composite in f64.
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = 33;
  c.tk = 40;
  c.d = 64;
  c.dtype = GENERATE(DType::BF16, DType::F16);
  c.mask = MaskKind::Bias;
  c.causal = GENERATE(false, true);
  const Inputs in = make_inputs(c, 600);
  auto leaf = [](const Tensor& t) {
    Tensor x = t.detach().clone();
    x.requires_grad_();
    return x;
  };
  Tensor q = leaf(in.q), k = leaf(in.k), v = leaf(in.v), mask = leaf(in.mask);
  Tensor out = scaled_dot_product_attention(q, k, v, mask, c.causal);
  REQUIRE(out.dtype() == c.dtype);
  sum(out * in.grad_out).backward();
  const Reference ref = reference(c, in);
  INFO(describe(c));
  check_rel(out.detach(), ref.out, tol_of(c.dtype, false), "output");
  check_rel(q.grad(), ref.dq, tol_of(c.dtype, true), "grad q");
  check_rel(k.grad(), ref.dk, tol_of(c.dtype, true), "grad k");
  check_rel(v.grad(), ref.dv, tol_of(c.dtype, true), "grad v");
  REQUIRE(mask.grad().dtype() == DType::F32);
  check_rel(mask.grad(), ref.dmask, tol_of(c.dtype, true), "grad mask");
}

TEST_CASE("flash attention: f32 on cuda and unsupported head dims still compose",
          "[cuda][attention]") {
  // f32 (the composite, as before) and bf16 with head dim 16 (widened to f32, composed) give the
  // composite's results.
  for (const auto& [dtype, d] : {std::pair<DType, int64_t>{DType::F32, 64}, {DType::BF16, 16}}) {
    INFO(dtype << " d " << d);
    const TensorOptions opt = TensorOptions(dtype).device(kCuda);
    const Tensor q = random_tensor({2, 9, d}, 1, DType::F32, kCuda).to(dtype);
    const Tensor k = random_tensor({2, 11, d}, 2, DType::F32, kCuda).to(dtype);
    const Tensor v = random_tensor({2, 11, d}, 3, DType::F32, kCuda).to(dtype);
    const Tensor fused = scaled_dot_product_attention(q, k, v, Tensor(), true);
    const Tensor slow = scaled_dot_product_attention_slow(q, k, v, Tensor(), true);
    REQUIRE(fused.dtype() == dtype);
    (void)opt;
    testing::check_close(fused.to(kCpu), slow.to(kCpu), 1e-6, 1e-5);
  }
}

TEST_CASE("flash attention: contiguous inputs off a 16-byte boundary are copied by the op",
          "[cuda][attention]") {
  // q, k, v as views one element into flat buffers: contiguous but not 16-byte aligned.
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = c.tk = 20;
  c.d = 32;
  const Inputs in = make_inputs(c, 700);
  auto shifted = [&](const Tensor& t) {
    Tensor flat = full({t.numel() + 1}, 0.0, TensorOptions(c.dtype).device(kCuda));
    flat.narrow(0, 1, t.numel()).copy_(t.reshape({t.numel()}));
    return flat.narrow(0, 1, t.numel()).view(t.shape());
  };
  const Tensor q = shifted(in.q), k = shifted(in.k), v = shifted(in.v);
  REQUIRE(reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 != 0);
  const Tensor out = scaled_dot_product_attention(q, k, v, Tensor(), true);
  const Tensor expected = scaled_dot_product_attention(in.q, in.k, in.v, Tensor(), true);
  CHECK(bytes_of(out) == bytes_of(expected));
}
