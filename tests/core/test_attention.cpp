// scaled_dot_product_attention: the fused op against a float64 loop written here (sizes around the
// kernel's 64-key tiles and 32-row query blocks, Tq != Tk, every mask kind, dropout with a mask
// regenerated here from Philox), the fused op against its composite twin (values and gradients,
// f32 and f64, with and without dropout), finite-difference gradients (non-contiguous BERT-style
// layouts, broadcast leading dims, a differentiable float mask), head views and packed QKV against
// contiguous inputs (no copies, and the output's layout), and error messages.
#include <cmath>
#include <limits>

#include "kernels/kernel_profile.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Dropout {
  double p = 0;
  PhiloxState state;
};

// Attention over row-major [batch, tq, d] / [batch, tk, d] / [batch, tk, dv] values. `bias` is
// [batch, tq, tk] (additive, -inf = masked) or empty. Fully masked rows give zeros.
std::vector<double> attention_ref(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int64_t batch, int64_t tq,
                                  int64_t tk, int64_t d, int64_t dv, double scale,
                                  const std::vector<double>& bias, bool causal,
                                  const Dropout& drop = {}) {
  std::vector<double> out(size_t(batch * tq * dv), 0.0);
  std::vector<double> s(static_cast<size_t>(tk));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < tq; ++i) {
      double m = -kInf;
      for (int64_t j = 0; j < tk; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += q[size_t((b * tq + i) * d + c)] * k[size_t((b * tk + j) * d + c)];
        }
        double x = scale * dot;
        if (!bias.empty()) x += bias[size_t((b * tq + i) * tk + j)];
        if (causal && j > i) x = -kInf;
        s[size_t(j)] = x;
        m = std::max(m, x);
      }
      if (m == -kInf) continue;
      double sum = 0;
      for (int64_t j = 0; j < tk; ++j) sum += std::exp(s[size_t(j)] - m);
      for (int64_t j = 0; j < tk; ++j) {
        double p = std::exp(s[size_t(j)] - m) / sum;
        if (drop.p > 0) {
          const uint64_t n = uint64_t((b * tq + i) * tk + j);
          const auto words = philox::block(drop.state.offset + n / 4, drop.state.seed);
          const bool keep = philox::to_uniform(words[n % 4]) >= float(drop.p);
          p = keep ? p / (1.0 - drop.p) : 0.0;
        }
        for (int64_t c = 0; c < dv; ++c) {
          out[size_t((b * tq + i) * dv + c)] += p * v[size_t((b * tk + j) * dv + c)];
        }
      }
    }
  }
  return out;
}

// The mask as dense additive values over `scores` (bool: 0 / -inf).
std::vector<double> dense_bias(const Tensor& mask, const Shape& scores) {
  if (!mask.defined()) return {};
  std::vector<double> m = mask.broadcast_to(scores).contiguous().to_vector<double>();
  if (mask.dtype() == DType::Bool) {
    for (double& x : m) x = x != 0 ? 0.0 : -kInf;
  }
  return m;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = 0;
  for (size_t e = 0; e < x.size(); ++e) m = std::max(m, std::abs(x[e] - y[e]));
  return m;
}

double atol_of(DType t) {
  return t == DType::F32 ? 3e-6 : 1e-13;
}
double rtol_of(DType t) {
  return t == DType::F32 ? 1e-4 : 1e-10;
}

enum class MaskKind { None, KeyPadding, RandomBool, Float, Causal, PaddingAndCausal };

const char* mask_name(MaskKind kind) {
  switch (kind) {
    case MaskKind::None:
      return "none";
    case MaskKind::KeyPadding:
      return "key padding";
    case MaskKind::RandomBool:
      return "random bool";
    case MaskKind::Float:
      return "float";
    case MaskKind::Causal:
      return "causal";
    case MaskKind::PaddingAndCausal:
      return "padding + causal";
  }
  return "?";
}

// Key-padding mask [B, 1, 1, tk]: sequence b keeps its first lengths[b] keys (0 = fully padded).
Tensor key_padding(const std::vector<int64_t>& lengths, int64_t tk, Device device) {
  const int64_t batch = int64_t(lengths.size());
  std::vector<double> m(size_t(batch * tk));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < tk; ++j) m[size_t(b * tk + j)] = j < lengths[size_t(b)] ? 1 : 0;
  }
  return from_vector(m, {batch, 1, 1, tk}, TensorOptions(DType::Bool).device(device));
}

// A mask of `kind` for q [B, H, tq, *], k [B, H, tk, *]; sets *causal.
Tensor make_mask(MaskKind kind, int64_t B, int64_t H, int64_t tq, int64_t tk, DType dtype,
                 Device device, bool* causal, uint64_t seed) {
  *causal = kind == MaskKind::Causal || kind == MaskKind::PaddingAndCausal;
  switch (kind) {
    case MaskKind::None:
    case MaskKind::Causal:
      return Tensor();
    case MaskKind::KeyPadding:
    case MaskKind::PaddingAndCausal: {
      std::vector<int64_t> lengths;
      for (int64_t b = 0; b < B; ++b)
        lengths.push_back(b == B - 1 ? 0 : std::max<int64_t>(1, tk - 3 * b));
      return key_padding(lengths, tk, device);
    }
    case MaskKind::RandomBool: {
      // ~30% masked; query row 0 fully masked.
      std::vector<double> r = random_values(B * H * tq * tk, seed, 0, 1);
      for (int64_t e = 0; e < B * H * tq * tk; ++e) {
        const int64_t i = (e / tk) % tq;
        r[size_t(e)] = (i == 0 || r[size_t(e)] < 0.3) ? 0 : 1;
      }
      return from_vector(r, {B, H, tq, tk}, TensorOptions(DType::Bool).device(device));
    }
    case MaskKind::Float: {
      // [H, tq, tk] broadcast over the batch; the last query row is all -inf.
      std::vector<double> r = random_values(H * tq * tk, seed, -2, 2);
      for (int64_t e = 0; e < H * tq * tk; ++e) {
        if ((e / tk) % tq == tq - 1) r[size_t(e)] = -kInf;
      }
      return from_vector(r, {H, tq, tk}, TensorOptions(dtype).device(device));
    }
  }
  return Tensor();
}

void check_forward(MaskKind kind, DType dtype, Device device, int64_t tq, int64_t tk, int64_t d,
                   int64_t dv) {
  const int64_t B = 3, H = 2;
  INFO("mask " << mask_name(kind) << " dtype " << dtype << " tq " << tq << " tk " << tk << " d "
               << d << " dv " << dv);
  const uint64_t seed = uint64_t(tq * 7919 + tk * 131 + d);
  const TensorOptions opts = TensorOptions(dtype).device(device);
  Tensor q = from_vector(random_values(B * H * tq * d, seed, -2, 2), {B, H, tq, d}, opts);
  Tensor k = from_vector(random_values(B * H * tk * d, seed + 1, -2, 2), {B, H, tk, d}, opts);
  Tensor v = from_vector(random_values(B * H * tk * dv, seed + 2), {B, H, tk, dv}, opts);
  bool causal = false;
  Tensor mask = make_mask(kind, B, H, tq, tk, dtype, device, &causal, seed + 3);
  Tensor out = scaled_dot_product_attention(q, k, v, mask, causal);
  CHECK(out.shape() == Shape{B, H, tq, dv});
  CHECK(out.dtype() == dtype);
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> ref =
      attention_ref(q.to_vector<double>(), k.to_vector<double>(), v.to_vector<double>(), B * H, tq,
                    tk, d, dv, scale, dense_bias(mask, {B, H, tq, tk}), causal);
  check_close(out, ref, {B, H, tq, dv}, atol_of(dtype), rtol_of(dtype));
}

// The gradients of sum(out * w) for every input that requires grad.
std::vector<Tensor> grads_of(const Tensor& out, const std::vector<Tensor>& inputs, uint64_t seed) {
  Tensor w = random_tensor(out.shape(), seed, out.dtype(), out.device());
  (out * w).sum().backward();
  std::vector<Tensor> g;
  for (const Tensor& t : inputs) g.push_back(t.grad());
  return g;
}

std::vector<Tensor> leaves(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) {
    Tensor l = t.detach().clone();
    if (is_floating(l.dtype())) l.requires_grad_(true);
    out.push_back(l);
  }
  return out;
}

}  // namespace

TEST_CASE("attention: fused forward matches a float64 loop without a mask", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  for (auto [tq, tk] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {1, 17}, {17, 64}, {64, 129}, {129, 17}, {129, 129}}) {
    for (int64_t d : {8, 32, 64}) check_forward(MaskKind::None, dtype, device, tq, tk, d, d);
  }
  check_forward(MaskKind::None, dtype, device, 17, 64, 32, 5);  // value dim != head dim
}

TEST_CASE("attention: fused forward matches a float64 loop with bool masks", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto kind = GENERATE(MaskKind::KeyPadding, MaskKind::RandomBool);
  for (auto [tq, tk] :
       std::vector<std::pair<int64_t, int64_t>>{{1, 17}, {17, 64}, {64, 129}, {129, 17}}) {
    for (int64_t d : {8, 64}) check_forward(kind, dtype, device, tq, tk, d, d);
  }
}

TEST_CASE("attention: fused forward matches a float64 loop with float and causal masks",
          "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto kind = GENERATE(MaskKind::Float, MaskKind::Causal, MaskKind::PaddingAndCausal);
  // Tq < Tk, Tq > Tk and Tq == Tk: the causal mask is top-left aligned (tril(ones(Tq, Tk))).
  for (auto [tq, tk] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {17, 64}, {64, 17}, {129, 129}, {129, 64}}) {
    for (int64_t d : {8, 32}) check_forward(kind, dtype, device, tq, tk, d, d);
  }
}

TEST_CASE("attention: fully masked rows give zeros and zero gradients", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  const TensorOptions opts = TensorOptions(DType::F64).device(device);
  std::vector<Tensor> in = leaves({random_tensor({2, 2, 5, 4}, 1, DType::F64, device),
                                   random_tensor({2, 2, 7, 4}, 2, DType::F64, device),
                                   random_tensor({2, 2, 7, 3}, 3, DType::F64, device)});
  Tensor mask = key_padding({7, 0}, 7, device);  // the second sequence is all padding
  Tensor out = scaled_dot_product_attention(in[0], in[1], in[2], mask);
  std::vector<double> o = out.to_vector<double>();
  for (size_t e = o.size() / 2; e < o.size(); ++e) CHECK(o[e] == 0.0);
  for (double x : o) CHECK(std::isfinite(x));
  std::vector<Tensor> g = grads_of(out, in, 5);
  for (int t = 0; t < 3; ++t) {
    std::vector<double> gv = g[size_t(t)].to_vector<double>();
    bool first_half_nonzero = false;
    for (size_t e = 0; e < gv.size() / 2; ++e) first_half_nonzero |= gv[e] != 0.0;
    CHECK(first_half_nonzero);
    for (size_t e = gv.size() / 2; e < gv.size(); ++e) CHECK(gv[e] == 0.0);
  }
  // No keys at all: every row is fully masked.
  Tensor none = scaled_dot_product_attention(random_tensor({3, 4}, 1, DType::F64, device),
                                             zeros({0, 4}, opts), zeros({0, 2}, opts));
  check_close(none, std::vector<double>(6, 0.0), {3, 2});
}

TEST_CASE("attention: 2-d inputs, broadcast leading dims and an explicit scale", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  const TensorOptions opts = TensorOptions(DType::F64).device(device);
  // 2-d: no leading dims at all.
  Tensor q = random_tensor({5, 6}, 11, DType::F64, device, -2, 2);
  Tensor k = random_tensor({9, 6}, 12, DType::F64, device, -2, 2);
  Tensor v = random_tensor({9, 3}, 13, DType::F64, device);
  check_close(scaled_dot_product_attention(q, k, v, Tensor(), true, 0.0, 0.7),
              attention_ref(q.to_vector<double>(), k.to_vector<double>(), v.to_vector<double>(), 1,
                            5, 9, 6, 3, 0.7, {}, true),
              {5, 3});
  // k/v shared across the batch (multi-query style): [1, H, Tk, D] against q [B, H, Tq, D].
  Tensor qb = random_tensor({2, 3, 4, 6}, 14, DType::F64, device, -2, 2);
  Tensor out = scaled_dot_product_attention(qb, k.unsqueeze(0).unsqueeze(0).expand({1, 3, 9, 6}),
                                            v.unsqueeze(0));
  CHECK(out.shape() == Shape{2, 3, 4, 3});
  std::vector<double> kr, vr;
  for (int r = 0; r < 6; ++r) {
    for (double x : k.to_vector<double>()) kr.push_back(x);
    for (double x : v.to_vector<double>()) vr.push_back(x);
  }
  check_close(
      out,
      attention_ref(qb.to_vector<double>(), kr, vr, 6, 4, 9, 6, 3, 1 / std::sqrt(6.0), {}, false),
      {2, 3, 4, 3});
  // Empty query.
  CHECK(scaled_dot_product_attention(zeros({2, 0, 6}, opts), zeros({2, 9, 6}, opts),
                                     zeros({2, 9, 3}, opts))
            .shape() == Shape{2, 0, 3});
}

TEST_CASE("attention: fused matches the composite slow version (values and gradients)",
          "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  auto kind = GENERATE(MaskKind::None, MaskKind::KeyPadding, MaskKind::RandomBool, MaskKind::Float,
                       MaskKind::Causal, MaskKind::PaddingAndCausal);
  INFO("mask " << mask_name(kind) << " dtype " << dtype);
  const int64_t B = 2, H = 3, tq = 37, tk = 70, d = 16, dv = 9;
  bool causal = false;
  Tensor mask0 = make_mask(kind, B, H, tq, tk, dtype, device, &causal, 21);
  std::vector<Tensor> base = {random_tensor({B, H, tq, d}, 22, dtype, device, -2, 2),
                              random_tensor({B, H, tk, d}, 23, dtype, device, -2, 2),
                              random_tensor({B, H, tk, dv}, 24, dtype, device)};
  if (mask0.defined()) base.push_back(mask0);
  std::vector<Tensor> fused_in = leaves(base), slow_in = leaves(base);
  auto mask_of = [&](const std::vector<Tensor>& in) { return in.size() > 3 ? in[3] : Tensor(); };
  Tensor fused = scaled_dot_product_attention(fused_in[0], fused_in[1], fused_in[2],
                                              mask_of(fused_in), causal);
  Tensor slow = scaled_dot_product_attention_slow(slow_in[0], slow_in[1], slow_in[2],
                                                  mask_of(slow_in), causal);
  const double atol = dtype == DType::F32 ? 2e-5 : 1e-12;
  const double rtol = dtype == DType::F32 ? 1e-4 : 1e-10;
  check_close(fused, slow.detach(), atol, rtol);
  std::vector<Tensor> gf = grads_of(fused, fused_in, 25), gs = grads_of(slow, slow_in, 25);
  for (size_t t = 0; t < gf.size(); ++t) {
    INFO("gradient of input " << t);
    if (!gs[t].defined()) {
      CHECK(!gf[t].defined());
      continue;
    }
    REQUIRE(gf[t].defined());
    // The composite differentiates softmax and matmul separately, so compare f32 against the
    // size of the gradients rather than elementwise relative error.
    check_close(gf[t], gs[t], atol * 4, rtol * 4);
  }
}

TEST_CASE("attention: gradcheck of the fused op in f64", "[attention]") {
  auto kind =
      GENERATE(MaskKind::None, MaskKind::KeyPadding, MaskKind::RandomBool, MaskKind::Causal);
  INFO("mask " << mask_name(kind));
  bool causal = false;
  Tensor mask = make_mask(kind, 2, 2, 3, 5, DType::F64, Device::cpu(), &causal, 31);
  // q from a [B, T, H, D] layout transposed to [B, H, T, D], as in BERT (non-contiguous).
  gradcheck(
      [&](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0].transpose(1, 2), in[1], non_contiguous(in[2]),
                                            mask, causal);
      },
      {random_tensor({2, 3, 2, 4}, 32, DType::F64, Device::cpu(), -2, 2),
       random_tensor({2, 2, 5, 4}, 33, DType::F64, Device::cpu(), -2, 2),
       random_tensor({2, 2, 5, 3}, 34)});
}

TEST_CASE("attention: gradcheck with a differentiable float mask and broadcast k/v",
          "[attention]") {
  // Float mask [H, 1, Tk] (reduced over batch and queries in backward); k/v broadcast over batch.
  gradcheck(
      [](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], in[3], false, 0.0, 0.8);
      },
      {random_tensor({2, 2, 3, 4}, 41, DType::F64, Device::cpu(), -2, 2),
       random_tensor({1, 2, 6, 4}, 42, DType::F64, Device::cpu(), -2, 2),
       random_tensor({1, 2, 6, 2}, 43), random_tensor({2, 1, 6}, 44)});
  // Causal with Tq > Tk, and a float mask that fully masks some rows with -inf.
  std::vector<double> m = random_values(4 * 3, 45);
  for (int j = 0; j < 3; ++j) m[size_t(2 * 3 + j)] = -kInf;  // query row 2
  Tensor mask = from_vector(m, {4, 3}, DType::F64);
  gradcheck(
      [&](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], mask, true);
      },
      {random_tensor({2, 4, 4}, 46), random_tensor({2, 3, 4}, 47), random_tensor({2, 3, 3}, 48)});
}

TEST_CASE("attention: dropout matches a float64 loop with the Philox mask", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const int64_t B = 2, H = 2, tq = 33, tk = 70, d = 8;
  const double p = 0.3;
  Tensor q = random_tensor({B, H, tq, d}, 51, dtype, device, -2, 2);
  Tensor k = random_tensor({B, H, tk, d}, 52, dtype, device, -2, 2);
  Tensor v = random_tensor({B, H, tk, d}, 53, dtype, device);
  Tensor mask = key_padding({tk, 40}, tk, device);
  manual_seed(1234);
  const PhiloxState before = philox_current();
  Tensor out = scaled_dot_product_attention(q, k, v, mask, true, p);
  // One reservation of batch * Tq * Tk values.
  CHECK(philox_current().offset == before.offset + uint64_t((B * H * tq * tk + 3) / 4));
  std::vector<double> ref = attention_ref(
      q.to_vector<double>(), k.to_vector<double>(), v.to_vector<double>(), B * H, tq, tk, d, d,
      1 / std::sqrt(double(d)), dense_bias(mask, {B, H, tq, tk}), true, Dropout{p, before});
  check_close(out, ref, {B, H, tq, d}, atol_of(dtype), rtol_of(dtype));
  // Dropout changed something.
  Tensor plain = scaled_dot_product_attention(q, k, v, mask, true);
  CHECK(max_abs_diff(out, plain) > 1e-3);
}

TEST_CASE("attention: dropout is deterministic and the fused op equals the slow one",
          "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F32, DType::F64);
  const double p = 0.25;
  std::vector<Tensor> base = {random_tensor({2, 3, 21, 8}, 61, dtype, device, -2, 2),
                              random_tensor({2, 3, 30, 8}, 62, dtype, device, -2, 2),
                              random_tensor({2, 3, 30, 6}, 63, dtype, device),
                              random_tensor({21, 30}, 64, dtype, device)};
  auto run = [&](bool fused, std::vector<Tensor>* grads) {
    std::vector<Tensor> in = leaves(base);
    manual_seed(99);
    Tensor out = fused ? scaled_dot_product_attention(in[0], in[1], in[2], in[3], true, p)
                       : scaled_dot_product_attention_slow(in[0], in[1], in[2], in[3], true, p);
    *grads = grads_of(out, in, 65);
    return out.detach();
  };
  std::vector<Tensor> g1, g2, gs;
  Tensor o1 = run(true, &g1), o2 = run(true, &g2), os = run(false, &gs);
  check_close(o2, o1, 0, 0);  // same seed: bit-identical
  for (size_t t = 0; t < g1.size(); ++t) check_close(g2[t], g1[t], 0, 0);
  const double atol = dtype == DType::F32 ? 2e-5 : 1e-12;
  const double rtol = dtype == DType::F32 ? 1e-4 : 1e-10;
  check_close(o1, os, atol, rtol);
  for (size_t t = 0; t < g1.size(); ++t) {
    INFO("gradient of input " << t);
    check_close(g1[t], gs[t], atol * 4, rtol * 4);
  }
  // Another seed gives another mask.
  manual_seed(100);
  Tensor other = scaled_dot_product_attention(base[0], base[1], base[2], base[3], true, p);
  CHECK(max_abs_diff(other, o1) > 1e-3);
}

TEST_CASE("attention: gradcheck under dropout with a fixed seed", "[attention]") {
  gradcheck(
      [](const std::vector<Tensor>& in) {
        manual_seed(7);
        return scaled_dot_product_attention(in[0], in[1], in[2], Tensor(), false, 0.4);
      },
      {random_tensor({2, 5, 4}, 71, DType::F64, Device::cpu(), -2, 2),
       random_tensor({2, 6, 4}, 72, DType::F64, Device::cpu(), -2, 2),
       random_tensor({2, 6, 3}, 73)});
}

TEST_CASE("attention: larger sizes use several threads and key ranges consistently",
          "[attention]") {
  // One batch with many keys splits the backward over key ranges (dQ partials); compare with the
  // slow version in f64.
  std::vector<Tensor> base = {random_tensor({1, 150, 16}, 81, DType::F64, Device::cpu(), -2, 2),
                              random_tensor({1, 300, 16}, 82, DType::F64, Device::cpu(), -2, 2),
                              random_tensor({1, 300, 16}, 83)};
  for (bool causal : {false, true}) {
    std::vector<Tensor> a = leaves(base), b = leaves(base);
    Tensor fused = scaled_dot_product_attention(a[0], a[1], a[2], Tensor(), causal);
    Tensor slow = scaled_dot_product_attention_slow(b[0], b[1], b[2], Tensor(), causal);
    check_close(fused, slow.detach(), 1e-12, 1e-10);
    std::vector<Tensor> ga = grads_of(fused, a, 84), gb = grads_of(slow, b, 84);
    for (size_t t = 0; t < 3; ++t) check_close(ga[t], gb[t], 1e-11, 1e-9);
  }
  // The same split over [T, B, d] buffers seen as [B, T, d]: rows 2 d apart, read in place, and
  // the gradients (dQ summed from the partials) written in the buffers' order.
  for (bool causal : {false, true}) {
    std::vector<Tensor> buffers, views;
    for (uint64_t i = 0; i < 3; ++i) {
      buffers.push_back(
          random_tensor({i == 0 ? 150 : 300, 2, 16}, 85 + i, DType::F64, Device::cpu(), -2, 2));
      buffers.back().requires_grad_(true);
      views.push_back(buffers.back().transpose(0, 1));
    }
    std::vector<Tensor> flat = leaves(views);
    Tensor fused = scaled_dot_product_attention(views[0], views[1], views[2], Tensor(), causal);
    CHECK(fused.transpose(0, 1).is_contiguous());
    Tensor slow = scaled_dot_product_attention_slow(flat[0], flat[1], flat[2], Tensor(), causal);
    check_close(fused, slow.detach(), 1e-12, 1e-10);
    grads_of(fused, buffers, 88);
    std::vector<Tensor> gb = grads_of(slow, flat, 88);
    for (size_t t = 0; t < 3; ++t)
      check_close(buffers[t].grad().transpose(0, 1), gb[t], 1e-11, 1e-9);
  }
}

TEST_CASE("attention: head views and packed QKV give the contiguous inputs' results",
          "[attention]") {
  // q, k and v as BERT splits its heads: [B, H, T, d] views of [B, T, H, d] projections, or of one
  // packed [B, T, 3, H, d] projection. The fused kernels (every dtype on both devices) read them
  // where they are and write the output in q's memory order (a head view too, so merging the heads
  // is free): the contiguous inputs' values and gradients, with no layout copy.
  auto device = GENERATE(from_range(test_devices()));
  auto dtype = GENERATE(DType::F64, DType::BF16);
  const bool packed = GENERATE(false, true);
  INFO(dtype << (packed ? " packed QKV" : " separate projections"));
  const int64_t B = 2, T = 9, H = 2, d = 32;
  std::vector<Tensor> buffers, heads;
  if (packed) {
    buffers.push_back(random_tensor({B, T, 3, H, d}, 91, dtype, device, -2, 2));
    buffers[0].requires_grad_(true);
    for (int64_t i = 0; i < 3; ++i) heads.push_back(buffers[0].select(2, i).transpose(1, 2));
  } else {
    for (uint64_t i = 0; i < 3; ++i) {
      buffers.push_back(random_tensor({B, T, H, d}, 91 + i, dtype, device, -2, 2));
      buffers.back().requires_grad_(true);
      heads.push_back(buffers.back().transpose(1, 2));
    }
  }
  std::vector<Tensor> flat = leaves(heads);
  REQUIRE(flat[0].is_contiguous());
  bool causal = false;
  const Tensor mask = make_mask(MaskKind::KeyPadding, B, H, T, T, dtype, device, &causal, 94);
  causal = packed;
  Tensor out;
  {
    kernels::KernelCallCounter counter;
    out = scaled_dot_product_attention(heads[0], heads[1], heads[2], mask, causal);
    // The cpu rounds its f32 result of 16-bit inputs once, in one copy (see the op).
    const uint64_t copies = !device.is_cuda() && is_low_precision(dtype) ? 1 : 0;
    CHECK(counter.calls(device.is_cuda() ? "cuda copy" : "cpu copy") == copies);
  }
  const Tensor expected = scaled_dot_product_attention(flat[0], flat[1], flat[2], mask, causal);
  CHECK(out.transpose(1, 2).is_contiguous());
  CHECK(out.transpose(1, 2).reshape({B, T, H * d}).data_ptr() == out.data_ptr());
  // Same kernels on the same values: equal, up to the f64 composite's GEMMs on cuda, which may
  // order a strided operand's products differently.
  const double atol = dtype == DType::F64 ? 1e-12 : 0.0, rtol = dtype == DType::F64 ? 1e-10 : 0.0;
  check_close(out.detach(), expected.detach(), atol, rtol);
  Tensor w = random_tensor(out.shape(), 95, dtype, device);
  (out * w).sum().backward();
  (expected * w).sum().backward();
  for (int64_t i = 0; i < 3; ++i) {
    INFO("gradient of input " << i);
    const Tensor g = packed ? buffers[0].grad().select(2, i).transpose(1, 2)
                            : buffers[size_t(i)].grad().transpose(1, 2);
    check_close(g, flat[size_t(i)].grad(), atol, rtol);
  }
}

TEST_CASE("attention: cpu f16/bf16 are the f32 kernel's arithmetic, rounded once",
          "[attention][cpu-only]") {
  // The cpu kernel reads 16-bit q, k, v (and dO) as they are and computes in f32: the widened
  // tiles, f32 dK/dV/dQ accumulators, each output rounded once, the backward's row dots from the
  // unrounded output. So its output is, bit for bit, the f32 kernel's on the widened inputs,
  // rounded (what the op computed before the kernel took 16-bit storage, by casts), and its
  // gradients that within one unit in the last place (OpenBLAS may order a tile's sums by where
  // its operands lie). Head views (strided rows), masks, causal, dropout, and keys enough for the
  // backward to split them into ranges.
  const Device cpu = Device::cpu();
  auto dtype = GENERATE(DType::BF16, DType::F16);
  auto kind = GENERATE(MaskKind::None, MaskKind::KeyPadding, MaskKind::Float, MaskKind::Causal);
  const double p = GENERATE(0.0, 0.2);
  const int64_t B = 1, H = 2, tq = 45, tk = 300, d = 32;
  INFO(dtype << ", mask " << mask_name(kind) << ", dropout " << p);
  bool causal = false;
  const Tensor mask0 = make_mask(kind, B, H, tq, tk, DType::F32, cpu, &causal, 71);
  std::vector<Tensor> base = {random_tensor({B, tq, H, d}, 72, dtype, cpu, -2, 2),
                              random_tensor({B, tk, H, d}, 73, dtype, cpu, -2, 2),
                              random_tensor({B, tk, H, d}, 74, dtype, cpu)};
  if (mask0.defined()) base.push_back(mask0);
  auto run = [&](bool widened, std::vector<Tensor>* grads) {
    std::vector<Tensor> in = leaves(base);
    std::vector<Tensor> heads;
    for (size_t i = 0; i < 3; ++i) {
      const Tensor h = in[i].transpose(1, 2);
      heads.push_back(widened ? h.to(DType::F32) : h);
    }
    const Tensor mask = in.size() > 3 ? in[3] : Tensor();
    manual_seed(5);
    Tensor out = scaled_dot_product_attention(heads[0], heads[1], heads[2], mask, causal, p);
    if (widened) out = out.to(dtype);
    *grads = grads_of(out, in, 75);
    return out.detach();
  };
  std::vector<Tensor> g16, g32;
  const Tensor out16 = run(false, &g16), out32 = run(true, &g32);
  REQUIRE(out16.dtype() == dtype);
  check_close(out16, out32, 0, 0);
  {
    // Without a backward to record, the kernel rounds the rows itself (no f32 output, no copy):
    // the same bits.
    NoGradGuard no_grad;
    std::vector<Tensor> heads;
    for (size_t i = 0; i < 3; ++i) heads.push_back(base[i].transpose(1, 2));
    manual_seed(5);
    kernels::KernelCallCounter counter;
    const Tensor out = scaled_dot_product_attention(
        heads[0], heads[1], heads[2], base.size() > 3 ? base[3] : Tensor(), causal, p);
    CHECK(counter.calls("cpu copy") == 0);
    REQUIRE(out.dtype() == dtype);
    check_close(out, out16, 0, 0);
  }
  // One unit in the last place, relative; absolute, the f32 sums' rounding of terms of order 1
  // where a gradient cancels to about 0 (the causal query 0 sees one key, so its dS = dP - D is 0
  // in exact arithmetic), which also covers f16's subnormals (steps of 2^-24).
  const double ulp = dtype == DType::BF16 ? std::ldexp(1.0, -7) : std::ldexp(1.0, -10);
  const double f32_noise = std::ldexp(1.0, -22);
  for (size_t t = 0; t < g16.size(); ++t) {
    INFO("gradient of input " << t);
    REQUIRE(g16[t].defined() == g32[t].defined());  // a bool mask has none
    if (!g16[t].defined()) continue;
    REQUIRE(g16[t].dtype() == g32[t].dtype());
    check_close(g16[t], g32[t], f32_noise, ulp);
  }
}

TEST_CASE("attention: errors name the op, shapes and dtypes", "[attention]") {
  auto device = GENERATE(from_range(test_devices()));
  const TensorOptions f32 = TensorOptions(DType::F32).device(device);
  Tensor q = zeros({2, 4, 8}, f32), k = zeros({2, 5, 8}, f32), v = zeros({2, 5, 3}, f32);
  const std::string op = "scaled_dot_product_attention";
  check_error(
      [&] {
        scaled_dot_product_attention(q, zeros({2, 5, 7}, f32), v);
      },
      {op, "head dims", "[2, 4, 8]", "[2, 5, 7]"});
  check_error(
      [&] {
        scaled_dot_product_attention(q, k, zeros({2, 6, 3}, f32));
      },
      {op, "number of keys", "[2, 6, 3]"});
  check_error(
      [&] {
        scaled_dot_product_attention(q, k, v, zeros({3, 5}, f32));
      },
      {op, "mask", "[3, 5]", "does not broadcast", "[2, 4, 5]"});
  check_error(
      [&] {
        scaled_dot_product_attention(q, k, v, zeros({3, 2, 4, 5}, f32));
      },
      {op, "mask", "[3, 2, 4, 5]"});
  check_error(
      [&] {
        scaled_dot_product_attention(zeros({2, 4, 8}, TensorOptions(DType::I64).device(device)), k,
                                     v);
      },
      {op, "f32 or f64", "i64 [2, 4, 8]"});
  check_error(
      [&] {
        scaled_dot_product_attention(q, zeros({2, 5, 8}, TensorOptions(DType::F64).device(device)),
                                     v);
      },
      {op, "share a dtype", "f64 [2, 5, 8]"});
  check_error(
      [&] {
        scaled_dot_product_attention(q, k, v,
                                     zeros({4, 5}, TensorOptions(DType::I32).device(device)));
      },
      {op, "mask must be bool", "i32 [4, 5]"});
  check_error([&] { scaled_dot_product_attention(zeros({8}, f32), k, v); },
              {op, "at least 2 dims", "[8]"});
  check_error(
      [&] {
        scaled_dot_product_attention(zeros({3, 4, 8}, f32), k, v);
      },
      {op, "[3]", "[2]"});
  check_error([&] { scaled_dot_product_attention(q, k, v, Tensor(), false, 1.5); },
              {op, "dropout_p", "1.5"});
  check_error(
      [&] {
        scaled_dot_product_attention_slow(q, zeros({2, 5, 7}, f32), v);
      },
      {"scaled_dot_product_attention_slow", "head dims"});
}
