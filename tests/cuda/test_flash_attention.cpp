// The fused flash attention kernels of the cuda device (kernels/cuda/attention.cu, f16/bf16 on
// tensor cores) against the composite attention (scaled_dot_product_attention_slow) evaluated in
// f64 on the cpu at the same rounded inputs: outputs, log-sum-exp and the gradients of q, k, v (and
// of a floating mask, through the op). Sequence lengths 1, 17, 64, 129, 300 (tails of the 64-row
// tiles, several tiles, Tq != Tk), head dims 32, 64, 128, key-padding masks with partially and
// fully padded sequences, additive masks, causal, dropout. Strided operands (head views of
// [B, T, H, d] buffers, packed QKV, rows with gaps) must give the contiguous run's bits, through
// the op without a copy kernel (counted), and layouts the kernels cannot read are copied by the op.
// Outputs are filled with NaN before each run, so an element a kernel fails to write fails the
// comparison; in the simulated build the results must be bit-identical under every thread
// schedule. The backward's correctness cases run in both dQ modes (AttentionBackwardArgs::
// deterministic): the fixed-order dQ kernel and the atomic accumulation from the dK/dV kernel,
// against the same reference; the atomic mode must leave out, lse, dk and dv bit-identical.
//
// Errors are relative Frobenius norms ||actual - expected|| / ||expected||: the kernels round P to
// the input type before P V (as FlashAttention does) and round each output once, so a bf16 result
// is within a few 2^-8 of the reference, an f16 result within a few 2^-11.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/tensor_internal.h"
#include "cuda/attention_test_util.h"
#include "cuda/kernel_test_util.h"
#include "kernels/cuda/attention_variant.h"
#include "kernels/kernel_profile.h"
#include "kernels/kernel_table.h"
#include "lathe/core/determinism.h"
#include "lathe/core/random.h"
#include "support/test_util.h"

#ifdef LATHE_CUDA_SIM_BUILD
#include "kernels/sim/sim_runtime.h"
#endif

using namespace lathe;
using attention_test::grad_leaf;
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

const kernels::KernelTable& cuda_k() {
  return kernels::kernel_table(DeviceType::CUDA);
}

struct Case {
  int64_t B = 1, H = 1, tq = 17, tk = 17, d = 64;
  DType dtype = DType::BF16;
  bool causal = false;
  MaskKind mask = MaskKind::None;
  double p = 0.0;
  uint64_t seed = 0, offset = 0;
  // When defined: {seed, offset} as i64 in device memory, which the kernels read instead (a draw
  // inside a CUDA graph capture); seed and offset are then ignored.
  Tensor philox_state;
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

Tensor make_mask(const Case& c, uint64_t seed) {
  if (c.mask == MaskKind::None) return Tensor();
  if (c.mask == MaskKind::Bias) {
    return random_tensor({c.H, c.tq, c.tk}, seed, DType::F64, kCpu, -2, 0.5)
        .to(DType::F32)
        .to(kCuda);
  }
  return attention_test::key_padding_mask(c.B, c.tk, c.mask == MaskKind::KeyPaddingFloat, seed,
                                          DType::F32);
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

// Memory layouts the kernels read and write where they are, each holding a [B, H, T, d] tensor: the
// head view of a [B, T, H, d] buffer (BERT's split heads), head views into one packed
// [B, T, n, H, d] buffer (q, k, v of a fused QKV projection, or dq, dk, dv written into one
// gradient buffer), and head views of [B, T, H, d + 8] buffers, whose rows have gaps that the
// kernels must leave alone.
enum class Layout { Contiguous, HeadView, Packed, PaddedRows };

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous:
      return "contiguous";
    case Layout::HeadView:
      return "head view of [B, T, H, d]";
    case Layout::Packed:
      return "packed [B, T, n, H, d]";
    default:
      return "padded rows [B, T, H, d + 8]";
  }
}

// n [B, H, T, d] views in `layout` filled with `value`, and the buffers they live in.
struct Laid {
  std::vector<Tensor> views, buffers;
};

Laid make_layout(Layout layout, int64_t n, const Case& c, int64_t t, double value) {
  const TensorOptions opts = TensorOptions(c.dtype).device(kCuda);
  Laid l;
  if (layout == Layout::Packed) {
    l.buffers.push_back(full({c.B, t, n, c.H, c.d}, value, opts));
    for (int64_t i = 0; i < n; ++i) l.views.push_back(l.buffers[0].select(2, i).transpose(1, 2));
    return l;
  }
  for (int64_t i = 0; i < n; ++i) {
    switch (layout) {
      case Layout::Contiguous:
        l.buffers.push_back(full({c.B, c.H, t, c.d}, value, opts));
        l.views.push_back(l.buffers.back());
        break;
      case Layout::HeadView:
        l.buffers.push_back(full({c.B, t, c.H, c.d}, value, opts));
        l.views.push_back(l.buffers.back().transpose(1, 2));
        break;
      default:
        l.buffers.push_back(full({c.B, t, c.H, c.d + 8}, value, opts));
        l.views.push_back(l.buffers.back().narrow(3, 0, c.d).transpose(1, 2));
        break;
    }
  }
  return l;
}

// The values of `xs` (contiguous [B, H, T, d], one T) in `layout`.
std::vector<Tensor> relayout_all(Layout layout, const Case& c, const std::vector<Tensor>& xs) {
  Laid l = make_layout(layout, int64_t(xs.size()), c, xs[0].size(2), 0.0);
  for (size_t i = 0; i < xs.size(); ++i) l.views[i].copy_(xs[i]);
  return l.views;
}

// q, k and v in `layout` (packed together when it is Packed, which needs Tq = Tk), grad_out in its
// own buffer of that layout, the mask as it is.
Inputs relayout(Layout layout, const Case& c, const Inputs& in) {
  Inputs r = in;
  if (layout == Layout::Packed) {
    REQUIRE(c.tq == c.tk);
    const std::vector<Tensor> qkv = relayout_all(layout, c, {in.q, in.k, in.v});
    r.q = qkv[0];
    r.k = qkv[1];
    r.v = qkv[2];
  } else {
    r.q = relayout_all(layout, c, {in.q})[0];
    r.k = relayout_all(layout, c, {in.k})[0];
    r.v = relayout_all(layout, c, {in.v})[0];
  }
  r.grad_out = relayout_all(layout, c, {in.grad_out})[0];
  return r;
}

struct Results {
  Tensor out, lse, dq, dk, dv;
  std::vector<Tensor> buffers;  // the memory out, dq, dk and dv were written into
  std::vector<Tensor> all() const { return {out, lse, dq, dk, dv}; }
};

Tensor nan_tensor(const Shape& shape, DType dtype) {
  return full(shape, kNaN, TensorOptions(dtype).device(kCuda));
}

// The cuda kernels called directly through the KernelTable, every output poisoned with NaN; out,
// dq, dk and dv are views in `out_layout` (dq, dk, dv in one buffer when it is Packed).
// `deterministic` picks the backward's dQ mode.
kernels::AttentionForwardArgs forward_args(const Case& c, const Inputs& in) {
  kernels::AttentionForwardArgs a;
  a.dtype = c.dtype;
  a.batch = c.B * c.H;
  a.q_len = c.tq;
  a.kv_len = c.tk;
  a.head_dim = a.value_dim = c.d;
  a.q = detail::make_view(in.q);
  a.k = detail::make_view(in.k);
  a.v = detail::make_view(in.v);
  if (in.mask.defined()) a.mask = detail::make_broadcast_view(in.mask, {c.B, c.H, c.tq, c.tk});
  a.causal = c.causal;
  a.scale = 1.0 / std::sqrt(double(c.d));
  a.dropout_p = c.p;
  a.philox = {c.seed, c.offset};
  if (c.philox_state.defined()) {
    a.philox.device_state = static_cast<const uint64_t*>(c.philox_state.data_ptr());
  }
  return a;
}

Results run_kernels(const Case& c, const Inputs& in, Layout out_layout = Layout::Contiguous,
                    bool deterministic = true) {
  kernels::AttentionForwardArgs a = forward_args(c, in);
  Results r;
  const Laid out = make_layout(out_layout, 1, c, c.tq, kNaN);
  Laid grads;
  if (out_layout == Layout::Packed) {
    REQUIRE(c.tq == c.tk);
    grads = make_layout(out_layout, 3, c, c.tq, kNaN);
  } else {
    for (int64_t t : {c.tq, c.tk, c.tk}) {
      const Laid g = make_layout(out_layout, 1, c, t, kNaN);
      grads.views.push_back(g.views[0]);
      grads.buffers.push_back(g.buffers[0]);
    }
  }
  r.buffers = out.buffers;
  r.buffers.insert(r.buffers.end(), grads.buffers.begin(), grads.buffers.end());
  r.out = out.views[0];
  r.lse = nan_tensor({c.B * c.H, c.tq}, DType::F32);
  a.out = detail::make_view(r.out);
  a.lse = r.lse.data_ptr();
  cuda_k().attention_forward(a);
  kernels::AttentionBackwardArgs b;
  b.forward = a;
  b.grad_out = detail::make_view(in.grad_out);
  r.dq = grads.views[0];
  r.dk = grads.views[1];
  r.dv = grads.views[2];
  b.grad_q = detail::make_view(r.dq);
  b.grad_k = detail::make_view(r.dk);
  b.grad_v = detail::make_view(r.dv);
  b.deterministic = deterministic;
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

// Two kernels that do the same arithmetic in the same order (a pipelined variant and the one it
// pipelines; the atomic-dQ instantiation's out, lse, dK, dV and the deterministic one's): the
// simulator, one compiler and one schedule of operations, must give the same bits. On a GPU ptxas
// compiles each kernel separately and may contract a multiply and an add into an FMA in one and
// not the other, so there the values are checked within the dtype's tolerance and differing bits
// are reported as a warning (in tests-cuda.log) rather than failed.
void check_same_arithmetic(const Tensor& other, const Tensor& base, DType dtype, bool grad,
                           const char* what) {
#ifdef LATHE_CUDA_SIM_BUILD
  (void)dtype;
  (void)grad;
  INFO(what);
  CHECK(bytes_of(other) == bytes_of(base));
#else
  if (bytes_of(other) != bytes_of(base)) {
    WARN(what << ": not the same bits as the kernel it should match (separately compiled)");
    check_rel(other, base.to(kCpu).to(DType::F64), tol_of(dtype, grad), what);
  }
#endif
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

// The backward's dQ modes: each correctness case runs in both.
constexpr bool kDqModes[] = {true, false};

const char* mode_name(bool deterministic) {
  return deterministic ? "deterministic dQ" : "atomic dQ";
}

// Sets lathe::deterministic_algorithms() for a scope.
class DeterminismGuard {
 public:
  explicit DeterminismGuard(bool enabled) : saved_(deterministic_algorithms()) {
    set_deterministic_algorithms(enabled);
  }
  ~DeterminismGuard() { set_deterministic_algorithms(saved_); }
  DeterminismGuard(const DeterminismGuard&) = delete;
  DeterminismGuard& operator=(const DeterminismGuard&) = delete;

 private:
  bool saved_;
};

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
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    check_case(c, run_kernels(c, in, Layout::Contiguous, det), ref);
  }
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
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    check_case(c, run_kernels(c, in, Layout::Contiguous, det), ref);
  }
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
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    const Results r = run_kernels(c, in, Layout::Contiguous, det);
    check_case(c, r, ref);
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
  // The composite reference draws the same mask (same rule as the dropout kernel).
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    check_case(c, run_kernels(c, in, Layout::Contiguous, det), ref);
  }
  // Bit for bit only in the deterministic mode: atomic dQ may differ between runs on a GPU.
  attention_test::check_dropout_determinism(c, [&](const Case& k) { return run_kernels(k, in); });
  // p = 1 drops everything: zero output.
  Case other = c;
  other.p = 1.0;
  CHECK(frobenius(run_kernels(other, in).out) == 0.0);
}

TEST_CASE("flash attention: bit-identical under every simulator schedule", "[cuda][attention]") {
  // The deterministic mode only: in the atomic mode the order of the float additions into a dQ
  // element follows the schedule, so dq legitimately varies (the next case checks the rest).
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

TEST_CASE("flash attention: atomic dQ agrees with the deterministic mode, the rest bit for bit",
          "[cuda][attention]") {
  // Same inputs in both modes: out, lse, dk and dv come from the same arithmetic (bit-identical,
  // also under every simulator schedule); dq differs only by the order of f32 additions before the
  // one rounding to the input type.
  Case c;
  c.B = 2;
  c.H = 1;
  c.d = GENERATE(32, 64, 128);
  c.tq = c.d == 64 ? 129 : 70;
  c.tk = c.d == 64 ? 200 : 75;
  c.dtype = c.d == 64 ? DType::F16 : DType::BF16;
  c.causal = c.d != 64;
  c.mask = c.d == 32 ? MaskKind::KeyPaddingFloat : MaskKind::None;
  c.p = c.d == 128 ? 0.1 : 0.0;
  c.seed = 5;
  INFO(describe(c));
  const Inputs in = make_inputs(c, 1300 + uint64_t(c.d));
  const Results det = run_kernels(c, in, Layout::Contiguous, true);
  const Results atomic = run_kernels(c, in, Layout::Contiguous, false);
  check_same_arithmetic(atomic.out, det.out, c.dtype, false, "out, atomic vs deterministic");
  check_same_arithmetic(atomic.lse, det.lse, c.dtype, false, "lse, atomic vs deterministic");
  check_same_arithmetic(atomic.dk, det.dk, c.dtype, true, "dk, atomic vs deterministic");
  check_same_arithmetic(atomic.dv, det.dv, c.dtype, true, "dv, atomic vs deterministic");
  // Rounding the same f32 sum summed in another order moves an element by at most about one unit
  // in the last place of the input type.
  check_rel(atomic.dq, det.dq.to(kCpu).to(DType::F64), c.dtype == DType::BF16 ? 4e-3 : 5e-4,
            "grad q, atomic vs deterministic");
  check_schedule_invariant([&] {
    const Results r = run_kernels(c, in, Layout::Contiguous, false);
    return std::vector<Tensor>{r.out, r.lse, r.dk, r.dv};
  });
}

namespace {

// A variant of the kernels (kernels/cuda/attention_variant.h) for a scope.
class VariantGuard {
 public:
  explicit VariantGuard(kernels::cuda::FlashAttentionVariant v)
      : saved_(kernels::cuda::flash_attention_variant()) {
    kernels::cuda::set_flash_attention_variant(v);
  }
  ~VariantGuard() { kernels::cuda::set_flash_attention_variant(saved_); }
  VariantGuard(const VariantGuard&) = delete;
  VariantGuard& operator=(const VariantGuard&) = delete;

 private:
  kernels::cuda::FlashAttentionVariant saved_;
};

}  // namespace

TEST_CASE("flash attention: the occupancy variants match the f64 composite and the default's bits",
          "[cuda][attention]") {
  // Variant 1 of both directions (the forward in 64-row blocks, the dK/dV kernel in 32-query
  // tiles), bf16 at d = 64, the only shape it exists for. Their register caps exist only on the GPU
  // and need no case of their own; the tiling does. Every output element comes from the default's
  // operations in the default's order, so in the simulator, where atomic dQ's order is fixed too,
  // the variant must reproduce the default's bits in both dQ modes; on the GPU, where ptxas
  // compiles the variants separately, the reference decides. Cases: tails of 32- and 64-row tiles,
  // Tq != Tk both ways, causal (a key block's first query tile depends on the tile size), masks
  // with a fully padded sequence.
  const auto [tq, tk, causal, mask] =
      GENERATE(table<int64_t, int64_t, bool, MaskKind>({{129, 129, true, MaskKind::None},
                                                        {33, 200, false, MaskKind::KeyPaddingBool},
                                                        {200, 97, true, MaskKind::Bias}}));
  Case c;
  c.B = 2;
  c.H = mask == MaskKind::Bias ? 2 : 1;
  c.tq = tq;
  c.tk = tk;
  c.d = 64;
  c.causal = causal;
  c.mask = mask;
  INFO(describe(c));
  const Inputs in = make_inputs(c, 1500 + uint64_t(tq));
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    const Results base = run_kernels(c, in, Layout::Contiguous, det);
    const long long launches = kernels::cuda::flash_attention_variant_launches();
    const VariantGuard variant({1, 1});
    const Results r = run_kernels(c, in, Layout::Contiguous, det);
    CHECK(kernels::cuda::flash_attention_variant_launches() == launches + 2);
    check_case(c, r, ref);
#ifdef LATHE_CUDA_SIM_BUILD
    for (size_t i = 0; i < base.all().size(); ++i) {
      INFO("output " << i << " of out, lse, dq, dk, dv");
      CHECK(bytes_of(r.all()[i]) == bytes_of(base.all()[i]));
    }
#endif
    if (mask == MaskKind::Bias) {
      // Under every schedule; atomic dQ's order follows the schedule, so dq is left out there.
      check_schedule_invariant([&] {
        const Results s = run_kernels(c, in, Layout::Contiguous, det);
        return det ? s.all() : std::vector<Tensor>{s.out, s.lse, s.dk, s.dv};
      });
    }
  }
}

TEST_CASE("flash attention: a variant asked for where it does not exist is an error",
          "[cuda][attention]") {
  // Falling back to the default instead would let a benchmark or a test of a variant time or check
  // the default without a word.
  Case c;
  c.d = 64;
  const Inputs in = make_inputs(c, 1600);
  {
    const VariantGuard variant({5, 0});
    CHECK_THROWS_WITH(run_kernels(c, in), Catch::Contains("no forward variant 5"));
  }
  {
    const VariantGuard variant({0, 3});
    CHECK_THROWS_WITH(run_kernels(c, in), Catch::Contains("no backward variant 3"));
  }
  for (const auto& [dtype, d, p] : {std::tuple<DType, int64_t, double>{DType::F16, 64, 0.0},
                                    {DType::BF16, 128, 0.0},
                                    {DType::BF16, 64, 0.1}}) {
    Case other = c;
    other.dtype = dtype;
    other.d = d;
    other.p = p;
    INFO(describe(other));
    const Inputs o = make_inputs(other, 1601);
    {
      const VariantGuard variant({1, 0});
      CHECK_THROWS_WITH(run_kernels(other, o), Catch::Contains("forward variant exists for bf16"));
    }
    const VariantGuard variant({0, 1});
    CHECK_THROWS_WITH(run_kernels(other, o), Catch::Contains("backward variant exists for bf16"));
  }
}

namespace {

// The forward kernel alone (out and lse poisoned with NaN; out a view in `out_layout`).
Results run_forward(const Case& c, const Inputs& in, Layout out_layout = Layout::Contiguous) {
  kernels::AttentionForwardArgs a = forward_args(c, in);
  Results r;
  const Laid out = make_layout(out_layout, 1, c, c.tq, kNaN);
  r.buffers = out.buffers;
  r.out = out.views[0];
  r.lse = nan_tensor({c.B * c.H, c.tq}, DType::F32);
  a.out = detail::make_view(r.out);
  a.lse = r.lse.data_ptr();
  cuda_k().attention_forward(a);
  return r;
}

// The natural log-sum-exp of every query row's scaled and masked scores, in f64 from the rounded
// inputs ([B * H * tq]); -inf where every key is masked.
std::vector<double> reference_lse(const Case& c, const Inputs& in) {
  const Tensor q = in.q.to(kCpu).to(DType::F64), k = in.k.to(kCpu).to(DType::F64);
  const std::vector<double> s = matmul(q, k.transpose(2, 3)).contiguous().to_vector<double>();
  std::vector<double> mask;
  if (in.mask.defined()) {
    Tensor m = in.mask.to(kCpu).to(DType::F64);
    if (m.dim() == 3) m = m.unsqueeze(0);
    mask = m.expand({c.B, c.H, c.tq, c.tk}).contiguous().to_vector<double>();
  }
  const bool bool_mask = in.mask.defined() && in.mask.dtype() == DType::Bool;
  const double scale = 1.0 / std::sqrt(double(c.d));
  std::vector<double> lse(size_t(c.B * c.H * c.tq));
  for (size_t row = 0; row < lse.size(); ++row) {
    std::vector<double> x;
    const int64_t i = int64_t(row) % c.tq;
    for (int64_t j = 0; j < c.tk; ++j) {
      const size_t at = row * size_t(c.tk) + size_t(j);
      if (c.causal && j > i) continue;
      double v = s[at] * scale;
      if (!mask.empty()) {
        if (bool_mask && mask[at] == 0) continue;
        if (!bool_mask) v += mask[at];
      }
      if (v != -kInf) x.push_back(v);
    }
    if (x.empty()) {
      lse[row] = -kInf;
      continue;
    }
    const double mx = *std::max_element(x.begin(), x.end());
    double sum = 0;
    for (double v : x) sum += std::exp(v - mx);
    lse[row] = mx + std::log(sum);
  }
  return lse;
}

// lse within tol (absolute, times max(1, |lse|)) of the reference, -inf exactly where it is.
void check_lse(const Tensor& lse, const std::vector<double>& want) {
  const std::vector<float> got = lse.to(kCpu).to_vector<float>();
  REQUIRE(got.size() == want.size());
  double worst = 0;
  int64_t wrong_inf = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (want[i] == -kInf) {
      wrong_inf += got[i] != -std::numeric_limits<float>::infinity();
      continue;
    }
    const double err = std::abs(double(got[i]) - want[i]) / std::max(1.0, std::abs(want[i]));
    worst = std::isnan(err) ? kInf : std::max(worst, err);
  }
  INFO("lse: worst relative error " << worst << ", " << wrong_inf << " rows not -inf");
  // S is exact products summed in f32 and ex2.approx errs by ~2^-22: far below 1e-4.
  CHECK(worst <= 1e-4);
  CHECK(wrong_inf == 0);
}

// The wgmma variants the tests compare with variant 2: forward 3 and 4, backward 4, or those named
// in LATHE_TEST_WGMMA_VARIANTS (e.g. "2,3"; forward and backward alike). scripts/gpu-check.sh
// reruns a failed sm_90a test with "2,3" to tell whether variant 4's TMA pipeline (the one with
// mbarriers, which can hang the GPU) or the wgmma arithmetic they share failed.
bool forward_variant_tested(int which) {
  const char* list = std::getenv("LATHE_TEST_WGMMA_VARIANTS");
  if (list == nullptr || *list == '\0') return true;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    if (item == std::to_string(which)) return true;
  }
  return false;
}
std::vector<int> pipelined_forward_variants() {
  std::vector<int> out;
  for (int which : {3, 4}) {
    if (forward_variant_tested(which)) out.push_back(which);
  }
  return out;
}

// Forward variants 2, 3 and 4 on `c`: variant 2's output against the f64 composite and its lse
// against reference_lse, counting the launches; variants 3 and 4 (the same arithmetic, pipelined:
// intra-warpgroup overlap, then TMA producer and ping-pong) must give variant 2's bits.
Results check_wgmma_forward(const Case& c, const Inputs& in) {
  INFO(describe(c));
  const Reference ref = reference(c, in);
  const long long launches = kernels::cuda::flash_attention_variant_launches();
  Results r;
  {
    const VariantGuard variant({2, 0});
    r = run_forward(c, in);
  }
  check_rel(r.out, ref.out, tol_of(c.dtype, false), "output");
  check_lse(r.lse, reference_lse(c, in));
  const std::vector<int> pipelined = pipelined_forward_variants();
  for (int which : pipelined) {
    INFO("variant " << which);
    const VariantGuard variant({which, 0});
    const Results other = run_forward(c, in);
    check_same_arithmetic(other.out, r.out, c.dtype, false, "out against variant 2's");
    check_same_arithmetic(other.lse, r.lse, c.dtype, false, "lse against variant 2's");
  }
  CHECK(kernels::cuda::flash_attention_variant_launches() ==
        launches + 1 + static_cast<long long>(pipelined.size()));
  return r;
}

}  // namespace

TEST_CASE("flash attention: forward variants 2, 3 and 4 (sm_90a wgmma) against the f64 composite",
          "[cuda][attention][sm90]") {
  // Blocks of 128 query rows (two warpgroups of 64) and 128-key tiles: T = 1, 17 (one partial
  // tile and one idle warpgroup), 64, 129 (a second query block and key tile with one row/key),
  // 300 (three key tiles, so both buffers are refilled; variant 3's pipeline runs its loop twice),
  // 800 (seven key tiles: variant 4's ring of 3 stages at d = 64, 2 at d = 128, goes round until
  // every stage's full and empty barriers have flipped parity at least twice, and the producer
  // refills stages that a consumer's wgmma may still be reading if it released them too early).
  // Both dtypes meet each head dim and causal setting.
  const int64_t t = GENERATE(1, 17, 64, 129, 300, 800);
  const int64_t d = GENERATE(64, 128);
  const bool causal = GENERATE(false, true);
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = c.tk = t;
  c.d = d;
  c.causal = causal;
  c.dtype = (t + d / 64 + (causal ? 1 : 0)) % 2 == 0 ? DType::F16 : DType::BF16;
  check_wgmma_forward(c, make_inputs(c, 2000 + uint64_t(t + d)));
}

TEST_CASE("flash attention: forward variants 2, 3 and 4 with Tq != Tk and masks",
          "[cuda][attention][sm90]") {
  SECTION("Tq != Tk, causal top-left") {
    const auto [tq, tk] =
        GENERATE(std::pair<int64_t, int64_t>{17, 129}, std::pair<int64_t, int64_t>{129, 70},
                 std::pair<int64_t, int64_t>{65, 1}, std::pair<int64_t, int64_t>{200, 300});
    const bool causal = GENERATE(false, true);
    Case c;
    c.B = 2;
    c.H = 1;
    c.tq = tq;
    c.tk = tk;
    c.d = tq == 129 ? 128 : 64;
    c.dtype = causal ? DType::F16 : DType::BF16;
    c.causal = causal;
    check_wgmma_forward(c, make_inputs(c, 2100 + uint64_t(tq + tk)));
  }
  SECTION("key-padding and additive masks, fully padded rows") {
    const MaskKind kind =
        GENERATE(MaskKind::KeyPaddingBool, MaskKind::KeyPaddingFloat, MaskKind::Bias);
    const int64_t t = GENERATE(17, 129);
    const bool causal = GENERATE(false, true);
    Case c;
    c.B = 2;
    c.H = kind == MaskKind::Bias ? 2 : 1;
    c.tq = c.tk = t;
    c.d = kind == MaskKind::KeyPaddingFloat ? 128 : 64;
    c.dtype = t == 17 ? DType::BF16 : DType::F16;
    c.mask = kind;
    c.causal = causal;
    const Results r = check_wgmma_forward(c, make_inputs(c, 2200 + uint64_t(t)));
    if (kind != MaskKind::Bias) {
      // Batch 1 has every key padded: zeros and lse = -inf (the reference lse says so too).
      CHECK(frobenius(r.out.to(kCpu).select(0, 1)) == 0.0);
      for (float x : r.lse.to(kCpu).select(0, 1).to_vector<float>()) {
        CHECK(x == -std::numeric_limits<float>::infinity());
      }
    }
  }
}

TEST_CASE("flash attention: forward variants 2, 3 and 4 read strided operands, schedule-invariant",
          "[cuda][attention][sm90]") {
  // Same arithmetic through batch, head and row strides: the contiguous run's bits. And the same
  // bits under every simulator schedule (the warpgroup rendezvous, the barriers around the
  // double buffer).
  const Layout layout = GENERATE(Layout::HeadView, Layout::Packed, Layout::PaddedRows);
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 150;
  c.d = layout == Layout::HeadView ? 128 : 64;
  c.dtype = layout == Layout::Packed ? DType::F16 : DType::BF16;
  c.causal = layout != Layout::PaddedRows;
  c.mask = MaskKind::KeyPaddingFloat;
  INFO(layout_name(layout) << ", " << describe(c));
  const Inputs in = make_inputs(c, 2300 + uint64_t(layout));
  const Inputs strided = relayout(layout, c, in);
  REQUIRE(!strided.q.is_contiguous());
  const int which = GENERATE(2, 3, 4);
  if (which != 2 && !forward_variant_tested(which)) return;
  INFO("variant " << which);
  const VariantGuard variant({which, 0});
  const Results contiguous = run_forward(c, in);
  const Results r = run_forward(c, strided, layout);
  REQUIRE(!r.out.is_contiguous());
  CHECK(bytes_of(r.out) == bytes_of(contiguous.out));
  CHECK(bytes_of(r.lse) == bytes_of(contiguous.lse));
  if (layout == Layout::PaddedRows) {
    for (double x :
         r.buffers[0].narrow(3, c.d, 8).to(kCpu).to(DType::F64).contiguous().to_vector<double>()) {
      REQUIRE(std::isnan(x));
    }
  }
  if (layout == Layout::Packed) {
    check_schedule_invariant([&] {
      const Results s = run_forward(c, strided, layout);
      return std::vector<Tensor>{s.out, s.lse};
    });
  }
}

TEST_CASE("flash attention: forward variants 2, 3 and 4 read k and v broadcast over heads",
          "[cuda][attention][sm90]") {
  // Grouped-query style sharing: k and v of head 0 seen by every head through a stride-0 view.
  // Variant 4's tensor maps fold the head dim into the row with stride 0 (q's heads merge with
  // its batch instead); a broadcast over the whole batch has no tensor map, and variant 4 falls
  // back to variant 3 there.
  Case c;
  c.B = 2;
  c.H = 3;
  c.tq = c.tk = 140;
  c.d = GENERATE(64, 128);
  c.dtype = c.d == 64 ? DType::BF16 : DType::F16;
  c.causal = true;
  INFO(describe(c));
  Inputs in = make_inputs(c, 3100 + uint64_t(c.d));
  in.k = in.k.narrow(1, 0, 1).expand({c.B, c.H, c.tk, c.d});
  in.v = in.v.narrow(1, 0, 1).expand({c.B, c.H, c.tk, c.d});
  REQUIRE(in.k.strides()[1] == 0);
  check_wgmma_forward(c, in);
  Inputs shared = in;
  shared.k = in.k.narrow(0, 0, 1).narrow(1, 0, 1).expand({c.B, c.H, c.tk, c.d});
  shared.v = in.v.narrow(0, 0, 1).narrow(1, 0, 1).expand({c.B, c.H, c.tk, c.d});
  if (!forward_variant_tested(4)) return;
  // Shared by the whole batch: no tensor map, so variant 4 runs variant 3 (the same bits as 2).
  Results expected;
  {
    const VariantGuard variant({2, 0});
    expected = run_forward(c, shared);
  }
  const VariantGuard variant({4, 0});
  const long long fallbacks = kernels::cuda::flash_attention_tma_fallbacks();
  const Results r = run_forward(c, shared);
  CHECK(kernels::cuda::flash_attention_tma_fallbacks() == fallbacks + 1);
  CHECK(bytes_of(r.out) == bytes_of(expected.out));
  CHECK(bytes_of(r.lse) == bytes_of(expected.lse));
  // The stride-0 heads alone have a tensor map: no fallback there.
  run_forward(c, in);
  CHECK(kernels::cuda::flash_attention_tma_fallbacks() == fallbacks + 1);
}

TEST_CASE("flash attention: forward variants 2, 3 and 4 refuse what they do not support",
          "[cuda][attention][sm90]") {
  // Head dims other than 64 and 128 are not in the wgmma kernels (wgmma's N, the swizzled rows).
  Case c;
  c.d = 32;
  INFO(describe(c));
  const Inputs in = make_inputs(c, 2400);
  for (int which : {2, 3, 4}) {
    const VariantGuard variant({which, 0});
    CHECK_THROWS_WITH(run_forward(c, in),
                      Catch::Contains("forward variant " + std::to_string(which) +
                                      " (sm_90a wgmma) exists for f16/bf16 at head dim 64 or 128 "
                                      "only, got 32"));
  }
}

namespace {

// The backward variants on wgmma the tests run: 2, and 4 (its TMA pipeline) unless
// LATHE_TEST_WGMMA_VARIANTS leaves it out.
std::vector<int> wgmma_backward_variants() {
  std::vector<int> out = {2};
  if (forward_variant_tested(4)) out.push_back(4);
  return out;
}

// Backward variants 2 and 4 on `c`, in both dQ modes: the gradients against the f64 composite
// (check_case, the forward being the default's), and the launches counted. The atomic mode (dQ
// added by the dK/dV kernel) must give the deterministic mode's out, lse, dK and dV bits; its dQ
// sums the key tiles in another grouping, so only the reference judges it. Variant 4 (variant 2's
// arithmetic on the TMA pipeline) must give variant 2's bits in each mode, except the atomic
// mode's dQ: the two warpgroups of a block add into the same dQ rows, in an order that follows the
// schedule (under warp-random it differs between the two kernels' instruction streams).
Results check_wgmma_backward(const Case& c, const Inputs& in) {
  INFO(describe(c));
  const Reference ref = reference(c, in);
  Results first, variant2[2];
  for (int which : wgmma_backward_variants()) {
    INFO("backward variant " << which);
    const VariantGuard variant({0, which});
    for (bool det : kDqModes) {
      INFO(mode_name(det));
      const long long launches = kernels::cuda::flash_attention_variant_launches();
      Results r = run_kernels(c, in, Layout::Contiguous, det);
      CHECK(kernels::cuda::flash_attention_variant_launches() == launches + 1);
      check_case(c, r, ref);
      if (which == 2) {
        variant2[det ? 0 : 1] = r;
      } else {
        for (size_t i = 0; i < r.all().size(); ++i) {
          if (!det && i == 2) continue;  // the atomic dQ
          INFO("output " << i << " of out, lse, dq, dk, dv against variant 2's");
          check_same_arithmetic(r.all()[i], variant2[det ? 0 : 1].all()[i], c.dtype, i >= 2,
                                "against variant 2's");
        }
      }
      if (det) {
        first = r;
      } else {
        check_same_arithmetic(r.out, first.out, c.dtype, false, "out, atomic vs deterministic");
        check_same_arithmetic(r.lse, first.lse, c.dtype, false, "lse, atomic vs deterministic");
        check_same_arithmetic(r.dk, first.dk, c.dtype, true, "dk, atomic vs deterministic");
        check_same_arithmetic(r.dv, first.dv, c.dtype, true, "dv, atomic vs deterministic");
      }
    }
  }
  return variant2[0];
}

}  // namespace

TEST_CASE("flash attention: backward variants 2 and 4 (sm_90a wgmma) against the f64 composite",
          "[cuda][attention][sm90]") {
  // dK/dV blocks of 128 keys (two warpgroups of 64) over 64-query tiles, dQ blocks of 128 queries
  // over 128-key (d = 64) or 64-key (d = 128) tiles: T = 1, 17, 64 (one whole query tile), 129
  // and 300 (tails of every tile size, several tiles, both buffers refilled).
  const int64_t t = GENERATE(1, 17, 64, 129, 300);
  const int64_t d = GENERATE(64, 128);
  const bool causal = GENERATE(false, true);
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = c.tk = t;
  c.d = d;
  c.causal = causal;
  c.dtype = (t + d / 64 + (causal ? 0 : 1)) % 2 == 0 ? DType::F16 : DType::BF16;
  check_wgmma_backward(c, make_inputs(c, 2500 + uint64_t(t + d)));
}

TEST_CASE("flash attention: backward variants 2 and 4 with Tq != Tk and masks",
          "[cuda][attention][sm90]") {
  SECTION("Tq != Tk, causal top-left") {
    const auto [tq, tk] =
        GENERATE(std::pair<int64_t, int64_t>{17, 129}, std::pair<int64_t, int64_t>{129, 70},
                 std::pair<int64_t, int64_t>{65, 1}, std::pair<int64_t, int64_t>{200, 300});
    const bool causal = GENERATE(false, true);
    Case c;
    c.B = 2;
    c.H = 1;
    c.tq = tq;
    c.tk = tk;
    c.d = tq == 129 ? 128 : 64;
    c.dtype = causal ? DType::BF16 : DType::F16;
    c.causal = causal;
    check_wgmma_backward(c, make_inputs(c, 2600 + uint64_t(tq + tk)));
  }
  SECTION("key-padding and additive masks, fully padded rows") {
    const MaskKind kind =
        GENERATE(MaskKind::KeyPaddingBool, MaskKind::KeyPaddingFloat, MaskKind::Bias);
    const int64_t t = GENERATE(17, 129);
    const bool causal = GENERATE(false, true);
    Case c;
    c.B = 2;
    c.H = kind == MaskKind::Bias ? 2 : 1;
    c.tq = c.tk = t;
    c.d = kind == MaskKind::KeyPaddingFloat ? 128 : 64;
    c.dtype = t == 17 ? DType::F16 : DType::BF16;
    c.mask = kind;
    c.causal = causal;
    const Results r = check_wgmma_backward(c, make_inputs(c, 2700 + uint64_t(t)));
    if (kind != MaskKind::Bias) {
      // Batch 1 has every key padded: zero gradients, exactly.
      CHECK(frobenius(r.dq.to(kCpu).select(0, 1)) == 0.0);
      CHECK(frobenius(r.dk.to(kCpu).select(0, 1)) == 0.0);
      CHECK(frobenius(r.dv.to(kCpu).select(0, 1)) == 0.0);
    }
  }
}

TEST_CASE("flash attention: backward variants 2 and 4 read strided operands, schedule-invariant",
          "[cuda][attention][sm90]") {
  // Gradients written through batch, head and row strides: the contiguous run's bits; and the
  // same bits under every simulator schedule. Variant 4 reads them through its tensor maps.
  const Layout layout = GENERATE(Layout::HeadView, Layout::Packed, Layout::PaddedRows);
  const int which = GENERATE_COPY(from_range(wgmma_backward_variants()));
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 150;
  c.d = layout == Layout::HeadView ? 128 : 64;
  c.dtype = layout == Layout::Packed ? DType::BF16 : DType::F16;
  c.causal = layout != Layout::PaddedRows;
  c.mask = MaskKind::KeyPaddingFloat;
  INFO(layout_name(layout) << ", " << describe(c) << ", backward variant " << which);
  const Inputs in = make_inputs(c, 2800 + uint64_t(layout));
  const Inputs strided = relayout(layout, c, in);
  REQUIRE(!strided.q.is_contiguous());
  const VariantGuard variant({0, which});
  const Results contiguous = run_kernels(c, in);
  const Results r = run_kernels(c, strided, layout);
  REQUIRE(!r.dq.is_contiguous());
  for (size_t i = 0; i < r.all().size(); ++i) {
    INFO("output " << i << " of out, lse, dq, dk, dv");
    CHECK(bytes_of(r.all()[i]) == bytes_of(contiguous.all()[i]));
  }
  if (layout == Layout::Packed) {
    check_schedule_invariant([&] { return run_kernels(c, strided, layout).all(); });
    // The atomic mode too, but for dQ: its order of additions follows the schedule on a GPU.
    check_schedule_invariant([&] {
      const Results a = run_kernels(c, strided, layout, false);
      return std::vector<Tensor>{a.out, a.lse, a.dk, a.dv};
    });
  }
}

TEST_CASE("flash attention: backward variants 2 and 4 refuse what they do not support",
          "[cuda][attention][sm90]") {
  Case c;
  c.d = 32;
  const Inputs in = make_inputs(c, 2900);
  for (int which : {2, 4}) {
    const VariantGuard variant({0, which});
    CHECK_THROWS_WITH(run_kernels(c, in),
                      Catch::Contains("backward variant " + std::to_string(which) +
                                      " (sm_90a wgmma) exists for f16/bf16 at head dim 64 or 128 "
                                      "only, got 32"));
  }
}

TEST_CASE(
    "flash attention: backward variant 4 falls back to variant 2 where there is no tensor map",
    "[cuda][attention][sm90]") {
  // k and v shared by every batch entry and head (stride 0 over both) have no tensor map: variant
  // 4 runs variant 2's kernels, in both dQ modes, and gives their bits. k and v broadcast over the
  // heads only fold into the row and keep variant 4.
  if (!forward_variant_tested(4)) return;
  Case d;
  d.B = 2;
  d.H = 2;
  d.tq = 70;
  d.tk = 90;
  d.d = 64;
  d.mask = MaskKind::KeyPaddingBool;
  const Inputs in = make_inputs(d, 2901);
  Inputs shared = in;
  shared.k = in.k.narrow(0, 0, 1).narrow(1, 0, 1).expand({d.B, d.H, d.tk, d.d});
  shared.v = in.v.narrow(0, 0, 1).narrow(1, 0, 1).expand({d.B, d.H, d.tk, d.d});
  Inputs per_batch = in;
  per_batch.k = in.k.narrow(1, 0, 1).expand({d.B, d.H, d.tk, d.d});
  per_batch.v = in.v.narrow(1, 0, 1).expand({d.B, d.H, d.tk, d.d});
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    Results expected;
    {
      const VariantGuard variant({0, 2});
      expected = run_kernels(d, shared, Layout::Contiguous, det);
    }
    const VariantGuard variant({0, 4});
    const long long fallbacks = kernels::cuda::flash_attention_tma_fallbacks();
    const Results r = run_kernels(d, shared, Layout::Contiguous, det);
    CHECK(kernels::cuda::flash_attention_tma_fallbacks() == fallbacks + 1);
    CHECK(bytes_of(r.dk) == bytes_of(expected.dk));
    CHECK(bytes_of(r.dv) == bytes_of(expected.dv));
    if (det) CHECK(bytes_of(r.dq) == bytes_of(expected.dq));
    check_case(d, r, reference(d, shared));
    run_kernels(d, per_batch, Layout::Contiguous, det);
    CHECK(kernels::cuda::flash_attention_tma_fallbacks() == fallbacks + 1);
  }
}

TEST_CASE("flash attention: the wgmma variants with dropout from Philox",
          "[cuda][attention][sm90]") {
  // Forward variants 2, 3 and 4 and backward variants 2 and 4 draw the default kernels' mask (the
  // composite reference draws it too): odd key counts put key pairs across Philox blocks, several
  // tiles of every kernel, causal and not. Variants 3 and 4 must give variant 2's bits; the same
  // seed gives the same bits again.
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = 129;
  c.tk = GENERATE(75, 300);
  c.d = GENERATE(64, 128);
  c.p = 0.25;
  c.seed = 1234;
  c.offset = 17;
  c.causal = GENERATE(false, true);
  c.dtype = c.d == 64 ? DType::BF16 : DType::F16;
  INFO(describe(c));
  const Inputs in = make_inputs(c, 3000 + uint64_t(c.tk + c.d));
  const Reference ref = reference(c, in);
  std::vector<Results> pipelined;
  for (int which : pipelined_forward_variants()) {
    const VariantGuard variant({which, which == 4 ? 4 : 2});
    pipelined.push_back(run_kernels(c, in));
  }
  const VariantGuard variant({2, 2});
  const Results r = run_kernels(c, in);
  check_case(c, r, ref);
  for (const Results& other : pipelined) {
    for (size_t i = 0; i < r.all().size(); ++i) {
      INFO("output " << i << " of out, lse, dq, dk, dv (forward variants 3, 4; backward 2, 4)");
      check_same_arithmetic(other.all()[i], r.all()[i], c.dtype, i >= 2,
                            "against forward variant 2 and backward variant 2");
    }
  }
  attention_test::check_dropout_determinism(c, [&](const Case& k) { return run_kernels(k, in); });
  // The mask's state in device memory (a CUDA graph's launch, GraphParams): every pipelined
  // variant's bits, whatever the launch's own seed and offset.
  Case on_device = c;
  on_device.philox_state =
      from_vector(std::vector<int64_t>{int64_t(c.seed), int64_t(c.offset)}).to(kCuda);
  on_device.seed = c.seed + 3;
  on_device.offset = c.offset + 5;
  const std::vector<int> variants = pipelined_forward_variants();
  for (size_t k = 0; k < variants.size(); ++k) {
    const VariantGuard pipelined_variant({variants[k], variants[k] == 4 ? 4 : 2});
    const Results from_device = run_kernels(on_device, in);
    for (size_t i = 0; i < r.all().size(); ++i) {
      INFO("forward variant " << variants[k] << ", output " << i << " of out, lse, dq, dk, dv");
      CHECK(kernel_test::bytes_of(from_device.all()[i]) ==
            kernel_test::bytes_of(pipelined[k].all()[i]));
    }
  }
}

TEST_CASE("flash attention: no queries or no keys, on every variant", "[cuda][attention][sm90]") {
  // An empty q or k/v has no memory to describe: the TMA variant must not build a tensor map for
  // it. Rows with no keys are fully masked rows (output 0, gradients 0), as on the cpu.
  const auto [tq, tk] =
      GENERATE(std::pair<int64_t, int64_t>{0, 70}, std::pair<int64_t, int64_t>{70, 0},
               std::pair<int64_t, int64_t>{0, 0});
  const int64_t d = GENERATE(64, 128);
  INFO("tq " << tq << ", tk " << tk << ", d " << d);
  const Tensor q0 = randn({1, 2, tq, d}).to(DType::BF16), k0 = randn({1, 2, tk, d}).to(DType::BF16),
               v0 = randn({1, 2, tk, d}).to(DType::BF16), g0 = randn({1, 2, tq, d}).to(DType::BF16);
  auto run = [&](Device device) {
    Tensor q = grad_leaf(q0.to(device)), k = grad_leaf(k0.to(device)), v = grad_leaf(v0.to(device));
    Tensor out = scaled_dot_product_attention(q, k, v);
    sum(out * g0.to(device)).backward();
    return std::vector<Tensor>{out, q.grad(), k.grad(), v.grad()};
  };
  const std::vector<Tensor> expected = run(kCpu);
  for (const auto& [fwd, bwd] : std::vector<std::pair<int, int>>{{0, 0}, {2, 2}, {3, 2}, {4, 4}}) {
    if (fwd == 4 && !forward_variant_tested(4)) continue;
    INFO("forward variant " << fwd << ", backward variant " << bwd);
    const VariantGuard variant({fwd, bwd});
    const std::vector<Tensor> got = run(kCuda);
    for (size_t i = 0; i < got.size(); ++i) {
      INFO("output " << i << " of out, dq, dk, dv");
      REQUIRE(got[i].defined());
      CHECK(got[i].shape() == expected[i].shape());
      CHECK(got[i].to(kCpu).to(DType::F64).to_vector<double>() ==
            expected[i].to(DType::F64).to_vector<double>());
    }
  }
}

TEST_CASE("flash attention: backward variant 4 writes variant 2's mask gradient",
          "[cuda][attention][sm90]") {
  // Through the op, as above: a differentiable additive mask, whose gradient (dS) the dK/dV step
  // writes; variant 4 runs variant 2's step on its TMA pipeline, so every gradient has its bits.
  if (!forward_variant_tested(4)) return;
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = 70;
  c.tk = 150;
  c.d = 64;
  c.dtype = DType::BF16;
  c.mask = MaskKind::Bias;
  c.causal = GENERATE(false, true);
  INFO(describe(c));
  const Inputs in = make_inputs(c, 610);
  auto grads = [&](int which) {
    const VariantGuard variant({0, which});
    Tensor q = grad_leaf(in.q), k = grad_leaf(in.k), v = grad_leaf(in.v), mask = grad_leaf(in.mask);
    sum(scaled_dot_product_attention(q, k, v, mask, c.causal) * in.grad_out).backward();
    return std::vector<Tensor>{q.grad(), k.grad(), v.grad(), mask.grad()};
  };
  const std::vector<Tensor> two = grads(2), four = grads(4);
  for (size_t i = 0; i < two.size(); ++i) {
    INFO("gradient " << i << " of q, k, v, mask");
    check_same_arithmetic(four[i], two[i], c.dtype, true, "against variant 2's");
  }
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
  // The backward's variant 2 (sm_90a wgmma) writes grad_mask too (variant 4 shares its step; not
  // here, where gpu-check runs it outside the per-case processes of the [sm90] tests).
  const int backward_variant = GENERATE(0, 2);
  const VariantGuard variant({0, backward_variant});
  const Inputs in = make_inputs(c, 600);
  const Reference ref = reference(c, in);
  INFO(describe(c) << ", backward variant " << backward_variant);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    const DeterminismGuard mode(det);
    Tensor q = grad_leaf(in.q), k = grad_leaf(in.k), v = grad_leaf(in.v), mask = grad_leaf(in.mask);
    Tensor out = scaled_dot_product_attention(q, k, v, mask, c.causal);
    REQUIRE(out.dtype() == c.dtype);
    sum(out * in.grad_out).backward();
    check_rel(out.detach(), ref.out, tol_of(c.dtype, false), "output");
    check_rel(q.grad(), ref.dq, tol_of(c.dtype, true), "grad q");
    check_rel(k.grad(), ref.dk, tol_of(c.dtype, true), "grad k");
    check_rel(v.grad(), ref.dv, tol_of(c.dtype, true), "grad v");
    REQUIRE(mask.grad().dtype() == DType::F32);
    check_rel(mask.grad(), ref.dmask, tol_of(c.dtype, true), "grad mask");
  }
}

TEST_CASE("flash attention: deterministic_algorithms() picks the op's dQ mode",
          "[cuda][attention]") {
  // The default comes from LATHE_DETERMINISTIC (unset: on), and the op hands the setting at
  // backward time to the kernels. In the simulator the atomic mode is reproducible too (blocks run
  // one after another, each adding to a dQ element once), so the op's dq must equal the kernels'
  // dq of the chosen mode bit for bit; with these inputs a few elements of the two modes' dq
  // differ in their last bit (the key tiles' products are summed in another grouping).
  const char* env = std::getenv("LATHE_DETERMINISTIC");
  const std::string value = env == nullptr ? "" : env;
  CHECK(deterministic_algorithms() == !(value == "0" || value == "false" || value == "off"));
  Case c;
  c.B = 1;
  c.H = 2;
  c.tq = c.tk = 200;
  c.d = 64;
  c.dtype = DType::F16;
  const Inputs in = make_inputs(c, 1400);
  std::vector<Tensor> dq;
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    const Results direct = run_kernels(c, in, Layout::Contiguous, det);
    Tensor q = in.q.detach().clone();
    q.requires_grad_();
    Tensor out;
    {
      const DeterminismGuard mode(!det);
      out = scaled_dot_product_attention(q, in.k, in.v, Tensor(), false);
    }
    {
      const DeterminismGuard mode(det);  // read when the backward runs
      CHECK(deterministic_algorithms() == det);
      sum(out * in.grad_out).backward();
    }
#ifdef LATHE_CUDA_SIM_BUILD
    CHECK(bytes_of(q.grad()) == bytes_of(direct.dq));
#else
    check_rel(q.grad(), direct.dq.to(kCpu).to(DType::F64), 5e-4, "grad q");
#endif
    dq.push_back(direct.dq);
  }
  const std::vector<double> a = dq[0].to(kCpu).to(DType::F64).contiguous().to_vector<double>();
  const std::vector<double> b = dq[1].to(kCpu).to(DType::F64).contiguous().to_vector<double>();
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  INFO(differ << " of " << a.size() << " elements of dq differ between the modes");
#ifdef LATHE_CUDA_SIM_BUILD
  CHECK(differ > 0);
#endif
  CHECK(differ < a.size() / 100);
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

TEST_CASE("flash attention: strided q, k, v, dO and outputs give the contiguous run's bits",
          "[cuda][attention]") {
  // The kernels read q, k, v and dO and write out, dq, dk and dv through batch, head and row
  // strides; the arithmetic is the same, so every result equals the contiguous run bit for bit.
  const Layout layout = GENERATE(Layout::HeadView, Layout::Packed, Layout::PaddedRows);
  const int64_t d = GENERATE(32, 128);
  Case c;
  c.B = 2;
  c.H = 3;
  c.tq = c.tk = 70;
  c.d = d;
  c.dtype = d == 32 ? DType::BF16 : DType::F16;
  c.causal = d == 128;
  c.mask = MaskKind::KeyPaddingFloat;
  INFO(layout_name(layout) << ", " << describe(c));
  const Inputs in = make_inputs(c, 800 + uint64_t(d));
  const Inputs strided = relayout(layout, c, in);
  REQUIRE(!strided.q.is_contiguous());
  REQUIRE(!strided.grad_out.is_contiguous());
  const Reference ref = reference(c, in);
  for (bool det : kDqModes) {
    INFO(mode_name(det));
    const Results contiguous = run_kernels(c, in, Layout::Contiguous, det);
    const Results r = run_kernels(c, strided, layout, det);
    REQUIRE(!r.out.is_contiguous());
    for (size_t i = 0; i < 5; ++i) {
      if (i == 2 && !det) continue;  // atomic dq: the order of its additions may differ
      INFO("result " << i << " (out, lse, dq, dk, dv)");
      CHECK(bytes_of(r.all()[i]) == bytes_of(contiguous.all()[i]));
    }
    check_case(c, r, ref);
    if (layout == Layout::PaddedRows) {
      // The 8 columns between rows were poisoned with NaN and must still be.
      for (const Tensor& buffer : r.buffers) {
        for (double x :
             buffer.narrow(3, c.d, 8).to(kCpu).to(DType::F64).contiguous().to_vector<double>()) {
          REQUIRE(std::isnan(x));
        }
      }
    }
  }
}

TEST_CASE("flash attention: strided operands are bit-identical under every simulator schedule",
          "[cuda][attention]") {
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 70;
  c.d = 64;
  c.causal = true;
  c.mask = MaskKind::KeyPaddingFloat;
  c.p = 0.1;
  c.seed = 11;
  const Inputs in = relayout(Layout::Packed, c, make_inputs(c, 900));
  check_schedule_invariant([&] { return run_kernels(c, in, Layout::Packed).all(); });
}

namespace {

// q, k and v as BERT makes them, with the values of `in`: leaves standing for the weights,
// projections [B, T, H * d] (or one packed [B, T, 3 * H * d]) computed from them by an op, and
// the heads as view/select + transpose of the projections.
struct HeadViews {
  std::vector<Tensor> leaves;  // [B, T, H * d] each, or one [B, T, 3 * H * d]
  Tensor q, k, v;
};

HeadViews head_leaves(const Case& c, const Inputs& in, bool packed) {
  const int64_t B = c.B, T = c.tq, H = c.H, d = c.d;
  auto leaf = [](const Tensor& t) {
    Tensor x = t.detach();
    x.requires_grad_();
    return x;
  };
  HeadViews h;
  if (packed) {
    Tensor buffer = full({B, T, 3, H, d}, 0.0, TensorOptions(c.dtype).device(kCuda));
    const Tensor* xs[] = {&in.q, &in.k, &in.v};
    for (int64_t i = 0; i < 3; ++i) buffer.select(2, i).transpose(1, 2).copy_(*xs[i]);
    h.leaves.push_back(leaf(buffer.reshape({B, T, 3 * H * d})));
  } else {
    for (const Tensor& x : {in.q, in.k, in.v}) {
      h.leaves.push_back(leaf(x.transpose(1, 2).contiguous().reshape({B, T, H * d})));
    }
  }
  return h;
}

// The projections and the head views. The multiply by one makes each projection an op output, as a
// Linear's is, so the gradients reaching the leaves are fresh tensors whichever way they arrive.
void split_heads(const Case& c, HeadViews& h) {
  const int64_t B = c.B, T = c.tq, H = c.H, d = c.d;
  const Tensor one = ones({}, TensorOptions(c.dtype).device(kCuda));
  if (h.leaves.size() == 1) {
    const Tensor heads = (h.leaves[0] * one).view({B, T, 3, H, d});
    h.q = heads.select(2, 0).transpose(1, 2);
    h.k = heads.select(2, 1).transpose(1, 2);
    h.v = heads.select(2, 2).transpose(1, 2);
  } else {
    auto split = [&](const Tensor& l) { return (l * one).view({B, T, H, d}).transpose(1, 2); };
    h.q = split(h.leaves[0]);
    h.k = split(h.leaves[1]);
    h.v = split(h.leaves[2]);
  }
}

// The gradient of head i (0 = q, 1 = k, 2 = v) as [B, H, T, d].
Tensor head_grad(const Case& c, const HeadViews& h, int64_t i) {
  if (h.leaves.size() == 1) {
    return h.leaves[0].grad().view({c.B, c.tq, 3, c.H, c.d}).select(2, i).transpose(1, 2);
  }
  return h.leaves[size_t(i)].grad().view({c.B, c.tq, c.H, c.d}).transpose(1, 2);
}

}  // namespace

TEST_CASE("flash attention: the op attends head views in place and answers in q's layout",
          "[cuda][attention]") {
  const bool packed = GENERATE(false, true);
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 33;
  c.d = 64;
  c.dtype = GENERATE(DType::BF16, DType::F16);
  c.mask = MaskKind::KeyPaddingBool;
  c.causal = packed;
  INFO((packed ? "packed QKV, " : "separate projections, ") << describe(c));
  const Inputs in = make_inputs(c, 1000);
  const int64_t B = c.B, T = c.tq, H = c.H, d = c.d;

  HeadViews h = head_leaves(c, in, packed);
  split_heads(c, h);
  REQUIRE(!h.q.is_contiguous());
  const Tensor out = scaled_dot_product_attention(h.q, h.k, h.v, in.mask, c.causal);
  // The output is the head view of a [B, T, H, d] buffer, so merging the heads is a view too.
  CHECK(out.transpose(1, 2).is_contiguous());
  const Tensor context = out.transpose(1, 2).reshape({B, T, H * d});
  CHECK(context.data_ptr() == out.data_ptr());
  context.backward(in.grad_out.transpose(1, 2).contiguous().reshape({B, T, H * d}));

  // The same op on contiguous copies: the same bits.
  Tensor q = grad_leaf(in.q), k = grad_leaf(in.k), v = grad_leaf(in.v);
  const Tensor expected = scaled_dot_product_attention(q, k, v, in.mask, c.causal);
  REQUIRE(expected.is_contiguous());
  expected.backward(in.grad_out);
  CHECK(bytes_of(out) == bytes_of(expected));
  // Equal values; the packed gradient is select's backward, which adds the zeros of the other two
  // slices (-0 + 0 = +0), so compare numbers rather than bits.
  const Tensor* expected_grads[] = {&q, &k, &v};
  for (int64_t i = 0; i < 3; ++i) {
    INFO("gradient " << i);
    testing::check_close(head_grad(c, h, i).to(kCpu).to(DType::F64),
                         expected_grads[i]->grad().to(kCpu).to(DType::F64), 0.0, 0.0);
  }
  // And the f64 composite.
  const Reference ref = reference(c, in);
  check_rel(out.detach(), ref.out, tol_of(c.dtype, false), "output");
  check_rel(head_grad(c, h, 0), ref.dq, tol_of(c.dtype, true), "grad q");
  check_rel(head_grad(c, h, 1), ref.dk, tol_of(c.dtype, true), "grad k");
  check_rel(head_grad(c, h, 2), ref.dv, tol_of(c.dtype, true), "grad v");
}

TEST_CASE("flash attention: no copy kernel for head views, forward or backward",
          "[cuda][attention]") {
  // Counted with the profiler's counters (kernels/kernel_profile.h): splitting the heads, the op
  // and merging the heads, then the whole backward down to the projections' leaves, launch no
  // copy kernel, except for select's backward from packed QKV (zeros, then a copy of each head's
  // gradient into its slice), which is not attention's.
  const bool packed = GENERATE(false, true);
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 20;
  c.d = 32;
  c.mask = MaskKind::KeyPaddingBool;
  c.causal = packed;
  INFO((packed ? "packed QKV" : "separate projections"));
  const Inputs in = make_inputs(c, 1100);
  const Tensor grad_context = in.grad_out.transpose(1, 2).contiguous().reshape({c.B, c.tq, -1});
  HeadViews h = head_leaves(c, in, packed);
  Tensor context;
  {
    kernels::KernelCallCounter counter;
    split_heads(c, h);
    const Tensor out = scaled_dot_product_attention(h.q, h.k, h.v, in.mask, c.causal);
    context = out.transpose(1, 2).reshape({c.B, c.tq, c.H * c.d});
    CHECK(counter.calls("cuda attention_forward") == 1);
    CHECK(counter.calls("cuda copy") == 0);
  }
  {
    kernels::KernelCallCounter counter;
    context.backward(grad_context);
    CHECK(counter.calls("cuda attention_backward") == 1);
    CHECK(counter.calls("cuda copy") == (packed ? 3 : 0));
  }
  for (int64_t i = 0; i < 3; ++i) REQUIRE(head_grad(c, h, i).defined());
}

TEST_CASE("flash attention: rows the kernels cannot read in place are copied first",
          "[cuda][attention]") {
  // A head dim with stride != 1, rows 2 + 64 k bytes apart (a [B, T, H, d + 1] buffer), and a
  // contiguous view one element off a 16-byte boundary: the op copies them (the counter sees the
  // copies) and gives the contiguous inputs' results; the kernels themselves refuse such views.
  Case c;
  c.B = 2;
  c.H = 2;
  c.tq = c.tk = 24;
  c.d = 32;
  c.dtype = DType::F16;
  const Inputs in = make_inputs(c, 1200);
  const TensorOptions opts = TensorOptions(c.dtype).device(kCuda);
  auto column_major = [&](const Tensor& x) {  // [B, H, d, T] memory: stride(3) = T
    return x.transpose(2, 3).contiguous().transpose(2, 3);
  };
  auto odd_rows = [&](const Tensor& x) {  // row stride H * (d + 1) elements
    Tensor buffer = full({c.B, x.size(2), c.H, c.d + 1}, 0.0, opts);
    Tensor view = buffer.narrow(3, 0, c.d).transpose(1, 2);
    view.copy_(x);
    return view;
  };
  auto off_boundary = [&](const Tensor& x) {
    Tensor flat = full({x.numel() + 1}, 0.0, opts);
    Tensor view = flat.narrow(0, 1, x.numel()).view(x.shape());
    view.copy_(x);
    return view;
  };
  const int which = GENERATE(0, 1, 2);
  const std::function<Tensor(const Tensor&)> relay[] = {column_major, odd_rows, off_boundary};
  const char* names[] = {"head dim stride != 1", "rows not 16-byte aligned", "off a boundary"};
  INFO(names[which]);
  auto leaf = [](const Tensor& t) {
    Tensor x = t.detach();
    x.requires_grad_();
    return x;
  };
  Tensor q = leaf(relay[which](in.q)), k = leaf(relay[which](in.k)), v = leaf(relay[which](in.v));
  REQUIRE(!kernels::attention_rows_aligned(detail::make_view(q)));
  Tensor out;
  {
    kernels::KernelCallCounter counter;
    out = scaled_dot_product_attention(q, k, v, Tensor(), true);
    CHECK(counter.calls("cuda copy") == 3);
  }
  const Tensor grad_out = relay[which](in.grad_out);
  {
    kernels::KernelCallCounter counter;
    out.backward(grad_out);
    CHECK(counter.calls("cuda copy") >= 1);  // dO
  }
  Tensor q0 = leaf(in.q.clone()), k0 = leaf(in.k.clone()), v0 = leaf(in.v.clone());
  const Tensor expected = scaled_dot_product_attention(q0, k0, v0, Tensor(), true);
  expected.backward(in.grad_out);
  CHECK(bytes_of(out) == bytes_of(expected));
  CHECK(bytes_of(q.grad()) == bytes_of(q0.grad()));
  CHECK(bytes_of(k.grad()) == bytes_of(k0.grad()));
  CHECK(bytes_of(v.grad()) == bytes_of(v0.grad()));

  Inputs bad = in;
  bad.q = q.detach();
  testing::check_error([&] { run_kernels(c, bad); }, {"attention on cuda", "q", "16-byte"});
}
