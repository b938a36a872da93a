// Mixed precision: autocast (which ops run in bf16/f16, which in f32, and the dtypes of their
// gradients), dtype promotion of mixed binary ops, f16/bf16 arithmetic on every device, and
// GradScaler's state machine. References are float64 loops over the *rounded* low-precision
// inputs (rounded here by bit manipulation, independently of lathe's casts), with tolerances of
// the output's rounding: the unit roundoff u = 2^-8 for bf16 (8 significant bits), 2^-11 for f16.
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/kernel_profile.h"
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Unit roundoff: the largest relative error of one round-to-nearest.
double unit_roundoff(DType t) {
  return t == DType::BF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
}

// Round-to-nearest-even of an f32 value to bf16 (the upper 16 bits).
double round_bf16(double x) {
  float f = static_cast<float>(x);
  uint32_t u = 0;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf / NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round-to-nearest-even to f16 (normal range, which the tests stay in): 11 significant bits.
double round_f16(double x) {
  if (x == 0) return x;
  int exp = 0;
  std::frexp(x, &exp);  // x = m * 2^exp, 0.5 <= |m| < 1
  const double quantum = std::ldexp(1.0, exp - 11);
  return std::nearbyint(x / quantum) * quantum;  // the default rounding mode is to nearest even
}

std::vector<double> rounded(const Tensor& t, DType dtype) {
  std::vector<double> v = t.to_vector<double>();
  for (double& x : v) x = dtype == DType::BF16 ? round_bf16(x) : round_f16(x);
  return v;
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::abs(x));
  return m;
}

// Values exactly representable in bf16 and f16 (multiples of 1/32 in [-2, 2)).
std::vector<double> exact_values(int64_t n, int64_t seed) {
  std::vector<double> v(size_t(n), 0.0);
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = double((i * 37 + seed * 11) % 128 - 64) / 32.0;
  return v;
}

// y[r, o] = sum_i x[r, i] * w[o, i] + b[o] in f64.
std::vector<double> linear_ref(const std::vector<double>& x, const std::vector<double>& w,
                               const std::vector<double>& b, int64_t rows, int64_t in,
                               int64_t out) {
  std::vector<double> y(size_t(rows * out), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[size_t(o)];
      for (int64_t i = 0; i < in; ++i) s += x[size_t(r * in + i)] * w[size_t(o * in + i)];
      y[size_t(r * out + o)] = s;
    }
  }
  return y;
}

// Attention over [batch, tq, d] / [batch, tk, d] / [batch, tk, dv], scale 1/sqrt(d), optional
// causal mask, softmax in f64.
std::vector<double> attention_ref(const std::vector<double>& q, const std::vector<double>& k,
                                  const std::vector<double>& v, int64_t batch, int64_t tq,
                                  int64_t tk, int64_t d, int64_t dv, bool causal) {
  std::vector<double> out(size_t(batch * tq * dv), 0.0);
  const double scale = 1.0 / std::sqrt(double(d));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < tq; ++i) {
      std::vector<double> s(size_t(tk), -kInf);
      double m = -kInf;
      for (int64_t j = 0; j < tk; ++j) {
        if (causal && j > i) continue;
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) {
          dot += q[size_t((b * tq + i) * d + c)] * k[size_t((b * tk + j) * d + c)];
        }
        s[size_t(j)] = dot * scale;
        m = std::max(m, s[size_t(j)]);
      }
      double z = 0;
      for (double& x : s) z += (x = std::exp(x - m));
      for (int64_t j = 0; j < tk; ++j) {
        for (int64_t c = 0; c < dv; ++c) {
          out[size_t((b * tq + i) * dv + c)] += s[size_t(j)] / z * v[size_t((b * tk + j) * dv + c)];
        }
      }
    }
  }
  return out;
}

nn::BertConfig tiny_config() {
  nn::BertConfig c = testing::tiny_bert_config();
  // Larger than BERT's 0.02 so the logits are O(1) and a bf16 error would show.
  c.initializer_range = 0.2;
  return c;
}

}  // namespace

TEST_CASE("autocast: off by default, scoped, nested, per device type", "[autocast]") {
  CHECK(!autocast_enabled(DeviceType::CPU));
  CHECK(!autocast_enabled(DeviceType::CUDA));
  {
    AutocastGuard outer(DType::BF16);  // cuda by default
    CHECK(autocast_enabled(DeviceType::CUDA));
    CHECK(!autocast_enabled(DeviceType::CPU));
    CHECK(autocast_dtype(DeviceType::CUDA) == DType::BF16);
    {
      AutocastGuard inner(DType::F16, std::nullopt);  // every device type
      CHECK(autocast_dtype(DeviceType::CUDA) == DType::F16);
      CHECK(autocast_dtype(DeviceType::CPU) == DType::F16);
      {
        NoAutocastGuard off;
        CHECK(!autocast_enabled(DeviceType::CUDA));
        CHECK(!autocast_enabled(DeviceType::CPU));
      }
      CHECK(autocast_dtype(DeviceType::CPU) == DType::F16);
    }
    CHECK(autocast_dtype(DeviceType::CUDA) == DType::BF16);
    CHECK(!autocast_dtype(DeviceType::CPU).has_value());
  }
  CHECK(!autocast_enabled(DeviceType::CUDA));
  check_error([] { AutocastGuard g(DType::F32); }, {"AutocastGuard", "bf16 or f16", "f32"});
}

TEST_CASE("autocast: every op of the policy table is in the op table", "[autocast]") {
  int low = 0, f32 = 0;
  for (const auto& [name, policy] : autocast_policy_table()) {
    INFO(name);
    bool found = false;
    for (const OpInfo& op : op_table()) found = found || name == op.name;
    CHECK(found);
    CHECK(autocast_policy(name) == policy);
    low += policy == AutocastPolicy::LowPrecision;
    f32 += policy == AutocastPolicy::F32;
  }
  CHECK(low == 4);
  CHECK(f32 == 10);
  CHECK(autocast_policy("matmul") == AutocastPolicy::LowPrecision);
  CHECK(autocast_policy("layer_norm") == AutocastPolicy::F32);
  CHECK(autocast_policy("gelu") == AutocastPolicy::None);
}

TEST_CASE("autocast: linear and matmul run in bf16/f16 from rounded inputs", "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  const DType low = GENERATE(DType::BF16, DType::F16);
  INFO(device.str() << " " << low);
  // Accumulated in f32, rounded once: one unit roundoff of the output dtype (+ f32 noise).
  const double rtol = unit_roundoff(low) + 1e-5;
  const Tensor x = random_tensor({3, 5, 8}, 1, DType::F32, device);
  const Tensor w = random_tensor({6, 8}, 2, DType::F32, device);
  const Tensor b = random_tensor({6}, 3, DType::F32, device);
  const Tensor m = random_tensor({2, 8, 4}, 4, DType::F32, device);
  const std::vector<double> xr = rounded(x, low), wr = rounded(w, low), br = rounded(b, low);
  const std::vector<double> mr = rounded(m, low);
  // x[3, 5, 8] @ m[2, 8, 4] needs broadcast batch dims; use x[0:2] instead: [2, 5, 8].
  std::vector<double> mm_ref(2 * 5 * 4, 0.0);
  for (int64_t bt = 0; bt < 2; ++bt) {
    for (int64_t i = 0; i < 5; ++i) {
      for (int64_t j = 0; j < 4; ++j) {
        double s = 0;
        for (int64_t c = 0; c < 8; ++c)
          s += xr[size_t(bt * 40 + i * 8 + c)] * mr[size_t(bt * 32 + c * 4 + j)];
        mm_ref[size_t(bt * 20 + i * 4 + j)] = s;
      }
    }
  }
  const std::vector<double> lin_ref = linear_ref(xr, wr, br, 15, 8, 6);
  {
    AutocastGuard amp(low, device.type);
    const Tensor y = linear(x, w, b);
    CHECK(y.dtype() == low);
    check_close(y, lin_ref, {3, 5, 6}, 1e-5, rtol);
    const Tensor z = matmul(x.slice(0, 0, 2), m);
    CHECK(z.dtype() == low);
    check_close(z, mm_ref, {2, 5, 4}, 1e-5, rtol);
    // Tensor method and transposed (non-contiguous) operands take the same path.
    const Tensor zt = matmul(x.slice(0, 0, 2), m.transpose(1, 2).contiguous().transpose(1, 2));
    check_close(zt, mm_ref, {2, 5, 4}, 1e-5, rtol);
    // f64 is never cast; integers are not touched.
    CHECK(matmul(x.to(DType::F64), m.select(0, 0).to(DType::F64)).dtype() == DType::F64);
  }
  // Outside the guard, and for a guard naming the other device type, nothing changes.
  CHECK(linear(x, w, b).dtype() == DType::F32);
  {
    AutocastGuard other(low, device.is_cpu() ? DeviceType::CUDA : DeviceType::CPU);
    CHECK(linear(x, w, b).dtype() == DType::F32);
  }
}

TEST_CASE("autocast: under no_grad a parameter is cast once per outermost guard", "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const std::string copy = device.is_cuda() ? "cuda copy" : "cpu copy";
  Tensor w = random_tensor({6, 8}, 2, DType::F32, device).requires_grad_(true);
  Tensor b = random_tensor({6}, 3, DType::F32, device).requires_grad_(true);
  const Tensor x = random_tensor({5, 8}, 1, DType::F32, device);
  const Tensor x2 = random_tensor({5, 8}, 4, DType::F32, device);
  // What each forward must give: the op on casts made here, outside autocast.
  auto expected = [&](const Tensor& in) {
    NoGradGuard no_grad;
    return linear(in.to(DType::BF16), w.to(DType::BF16), b.to(DType::BF16)).to_vector<double>();
  };
  CHECK(autocast_cached_casts() == 0);
  {
    NoGradGuard no_grad;
    AutocastGuard amp(DType::BF16, device.type);
    // The copies a linear makes besides the casts (the bias broadcast into the output) are the
    // same in every call; the casts are the difference.
    auto copies_of = [&](const Tensor& in) {
      const std::vector<double> want = expected(in);
      kernels::KernelCallCounter counter;
      const Tensor y = linear(in, w, b);
      const uint64_t calls = counter.calls(copy);
      CHECK(y.to_vector<double>() == want);
      return calls;
    };
    const uint64_t first = copies_of(x);
    CHECK(autocast_cached_casts() == 2);  // w and b; the activation x is not a parameter
    const uint64_t cached = copies_of(x2);
    CHECK(first - cached == 2);  // w and b came from the cache, x2 was cast
    CHECK(autocast_cached_casts() == 2);
    {
      AutocastGuard inner(DType::BF16, device.type);  // an inner guard shares the cache
      CHECK(copies_of(x) == cached);
    }
    CHECK(autocast_cached_casts() == 2);
    // An in-place update (an optimizer step) bumps the version: the next forward casts again.
    w.mul_(-0.5);
    CHECK(copies_of(x) == cached + 1);
    CHECK(copies_of(x) == cached);
    // A new storage for the same tensor (Module::to, load_state_dict) is a new cast as well.
    b.impl().storage = (b.detach() + 1.0).impl().storage;
    CHECK(copies_of(x) == cached + 1);
    // A frozen parameter (requires_grad_(false)) is still a parameter.
    w.requires_grad_(false);
    CHECK(copies_of(x) == cached);
    w.requires_grad_(true);
    // A plain f32 tensor used as a weight is not cached: it may be an activation.
    const Tensor plain = random_tensor({6, 8}, 5, DType::F32, device);
    const size_t before = autocast_cached_casts();
    linear(x, plain);
    CHECK(autocast_cached_casts() == before);
  }
  CHECK(autocast_cached_casts() == 0);  // the outermost guard's end empties the cache
  // With grad mode on nothing is cached: each forward records its own cast, and the f32
  // parameters get their gradients.
  {
    AutocastGuard amp(DType::BF16, device.type);
    linear(x, w, b).sum().backward();
    CHECK(autocast_cached_casts() == 0);
    linear(x2, w, b).sum().backward();
    CHECK(autocast_cached_casts() == 0);
  }
  REQUIRE(w.grad().defined());
  CHECK(w.grad().dtype() == DType::F32);
  // d/dw of sum(x w^T + b) over both calls: the column sums of x and x2 in every row (bf16 inputs).
  const std::vector<double> xs = rounded(x, DType::BF16), x2s = rounded(x2, DType::BF16);
  std::vector<double> dw(6 * 8, 0.0);
  for (int64_t o = 0; o < 6; ++o) {
    for (int64_t c = 0; c < 8; ++c) {
      for (int64_t r = 0; r < 5; ++r)
        dw[size_t(o * 8 + c)] += xs[size_t(r * 8 + c)] + x2s[size_t(r * 8 + c)];
    }
  }
  check_close(w.grad(), dw, {6, 8}, 1e-2, 1e-2);
}

TEST_CASE("autocast: an evaluation loop under one guard gives the per-batch guard's logits",
          "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(6);
  nn::BertForSequenceClassification model(tiny_config());
  model.to(device);
  model.eval();
  const TensorOptions i64 = TensorOptions(DType::I64).device(device);
  const Tensor ids = from_vector<int64_t>({1, 5, 7, 9, 2, 3, 4, 0, 8, 6, 12, 30}, {3, 4}, i64);
  const Tensor ids2 = from_vector<int64_t>({3, 8, 2, 6, 9, 1, 5, 0, 4, 7, 11, 30}, {3, 4}, i64);
  const Tensor mask = from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0}, {3, 4}, i64);
  NoGradGuard no_grad;
  std::vector<std::vector<double>> per_batch;
  for (int i = 0; i < 2; ++i) {
    AutocastGuard amp(DType::BF16, device.type);
    per_batch.push_back(model.forward(i == 0 ? ids : ids2, mask).to_vector<double>());
  }
  const std::string copy = device.is_cuda() ? "cuda copy" : "cpu copy";
  AutocastGuard amp(DType::BF16, device.type);
  uint64_t first_copies = 0;
  {
    kernels::KernelCallCounter counter;
    CHECK(model.forward(ids, mask).to_vector<double>() == per_batch[0]);
    first_copies = counter.calls(copy);
  }
  kernels::KernelCallCounter counter;
  CHECK(model.forward(ids2, mask).to_vector<double>() == per_batch[1]);
  // Every linear's weight (2 layers x 6 + pooler + classifier = 14) and bias was cast by the
  // first forward only; the FFN's intermediate bias goes to the fused bias + GELU, which is not in
  // the policy table (the 2 layers' 12 other biases and the head's 2 are linear inputs).
  CHECK(first_copies - counter.calls(copy) == 26);
  CHECK(autocast_cached_casts() == 26);
}

TEST_CASE("autocast: self-attention casts its input once for q, k and v under no_grad",
          "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(8);
  nn::MultiHeadSelfAttention attention(16, 2);
  attention.to(device);
  const Tensor x = random_tensor({2, 5, 16}, 9, DType::F32, device);
  const TensorOptions i64 = TensorOptions(DType::I64).device(device);
  const Tensor mask =
      nn::key_padding_mask(from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, {2, 5}, i64));
  const std::string copy = device.is_cuda() ? "cuda copy" : "cpu copy";
  // The module's forward as it was: each projection on x itself, so each casts x.
  auto per_projection = [&]() {
    auto heads = [](const Tensor& t) { return t.view({2, 5, 2, 8}).transpose(1, 2); };
    const Tensor context = scaled_dot_product_attention(heads(attention.query->forward(x)),
                                                        heads(attention.key->forward(x)),
                                                        heads(attention.value->forward(x)), mask);
    return context.transpose(1, 2).reshape({2, 5, 16});
  };
  auto counted = [&](auto&& forward, uint64_t* copies) {
    kernels::KernelCallCounter counter;
    const Tensor y = forward();
    *copies = counter.calls(copy);
    return y.to_vector<double>();
  };
  AutocastGuard amp(DType::BF16, device.type);
  uint64_t fused = 0, separate = 0;
  {
    NoGradGuard no_grad;
    counted(per_projection, &separate);  // fills the cast cache with the weights
    const std::vector<double> want = counted(per_projection, &separate);
    const std::vector<double> got = counted([&] { return attention.forward(x, mask); }, &fused);
    CHECK(got == want);
    CHECK(separate - fused == 2);  // one cast of x instead of three
  }
  // With grad mode on the module keeps one cast per projection (x's three gradients are summed in
  // f32): the same forward, the same copies.
  const std::vector<double> want = counted(per_projection, &separate);
  CHECK(counted([&] { return attention.forward(x, mask); }, &fused) == want);
  CHECK(fused == separate);
}

TEST_CASE("autocast: attention runs on bf16 inputs with f32 statistics", "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  const bool causal = GENERATE(false, true);
  INFO(device.str() << " causal " << causal);
  const Tensor q = random_tensor({2, 2, 5, 8}, 5, DType::F32, device, -2, 2);
  const Tensor k = random_tensor({2, 2, 6, 8}, 6, DType::F32, device, -2, 2);
  const Tensor v = random_tensor({2, 2, 6, 4}, 7, DType::F32, device);
  const std::vector<double> ref = attention_ref(rounded(q, DType::BF16), rounded(k, DType::BF16),
                                                rounded(v, DType::BF16), 4, 5, 6, 8, 4, causal);
  AutocastGuard amp(DType::BF16, device.type);
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    const Tensor out = fused ? scaled_dot_product_attention(q, k, v, Tensor(), causal)
                             : scaled_dot_product_attention_slow(q, k, v, Tensor(), causal);
    CHECK(out.dtype() == DType::BF16);
    check_close(out, ref, {2, 2, 5, 4}, 1e-5, unit_roundoff(DType::BF16) + 1e-5);
  }
  // A float mask stays f32 (it is read in f32); a bool mask works as without autocast.
  const Tensor bias = random_tensor({5, 6}, 8, DType::F32, device, -1, 0);
  const Tensor keep = gt(random_tensor({2, 1, 1, 6}, 9, DType::F32, device), zeros({}, device));
  CHECK(scaled_dot_product_attention(q, k, v, bias).dtype() == DType::BF16);
  CHECK(scaled_dot_product_attention(q, k, v, keep).dtype() == DType::BF16);
}

TEST_CASE("autocast: softmax, layer norm, cross-entropy and sums run in f32", "[autocast]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const TensorOptions bf16 = TensorOptions(DType::BF16).device(device);
  const Tensor x = from_vector(exact_values(12, 1), {3, 4}, bf16);
  const std::vector<double> xv = x.to_vector<double>();
  AutocastGuard amp(DType::BF16, device.type);

  std::vector<double> sm(12), lsm(12), ln(12), rowsum(3, 0.0);
  for (int r = 0; r < 3; ++r) {
    double mx = -kInf, z = 0, mean = 0, var = 0;
    for (int c = 0; c < 4; ++c) mx = std::max(mx, xv[size_t(r * 4 + c)]);
    for (int c = 0; c < 4; ++c) z += std::exp(xv[size_t(r * 4 + c)] - mx);
    for (int c = 0; c < 4; ++c) mean += xv[size_t(r * 4 + c)] / 4;
    for (int c = 0; c < 4; ++c) var += std::pow(xv[size_t(r * 4 + c)] - mean, 2) / 4;
    for (int c = 0; c < 4; ++c) {
      const double xi = xv[size_t(r * 4 + c)];
      sm[size_t(r * 4 + c)] = std::exp(xi - mx) / z;
      lsm[size_t(r * 4 + c)] = xi - mx - std::log(z);
      ln[size_t(r * 4 + c)] = (xi - mean) / std::sqrt(var + 1e-5);
      rowsum[size_t(r)] += xi;
    }
  }
  const Tensor s = softmax(x, -1), ls = log_softmax(x, -1);
  const Tensor n = layer_norm(x, Tensor(), Tensor()), ns = layer_norm_slow(x, Tensor(), Tensor());
  for (const Tensor* t : {&s, &ls, &n, &ns}) CHECK(t->dtype() == DType::F32);
  check_close(s, sm, {3, 4}, 1e-6, 1e-5);
  check_close(ls, lsm, {3, 4}, 1e-6, 1e-5);
  check_close(n, ln, {3, 4}, 1e-5, 1e-4);
  check_close(ns, ln, {3, 4}, 1e-5, 1e-4);

  const Tensor sums = sum(x, {1});
  CHECK(sums.dtype() == DType::F32);
  check_close(sums, rowsum, {3}, 0, 0);  // 4 multiples of 1/32: exact in f32
  CHECK(x.mean().dtype() == DType::F32);
  CHECK(var(x).dtype() == DType::F32);

  const Tensor targets =
      from_vector<int64_t>({0, 3, 1}, {3}, TensorOptions(DType::I64).device(device));
  double nll = 0;
  for (int r = 0; r < 3; ++r) nll -= lsm[size_t(r * 4 + (r == 0 ? 0 : r == 1 ? 3 : 1))] / 3;
  for (bool fused : {true, false}) {
    const Tensor loss = fused ? cross_entropy(x, targets) : cross_entropy_slow(x, targets);
    CHECK(loss.dtype() == DType::F32);
    check_close(loss, {nll}, {}, 1e-6, 1e-5);
  }
  // Other ops keep their input's dtype.
  CHECK(gelu(x).dtype() == DType::BF16);
  CHECK((x * x).dtype() == DType::BF16);
}

TEST_CASE("autocast: f32 leaves get f32 gradients that match the rounded-input loop",
          "[autocast][grad]") {
  const Device device = GENERATE(from_range(test_devices()));
  const bool backward_inside = GENERATE(false, true);
  INFO(device.str() << " backward inside the guard " << backward_inside);
  Tensor x = random_tensor({4, 8}, 11, DType::F32, device).requires_grad_();
  Tensor w = random_tensor({6, 8}, 12, DType::F32, device).requires_grad_();
  Tensor b = random_tensor({6}, 13, DType::F32, device).requires_grad_();
  const Tensor r = random_tensor({4, 6}, 14, DType::F32, device);
  Tensor loss;
  {
    AutocastGuard amp(DType::BF16, device.type);
    const Tensor y = linear(x, w, b);
    CHECK(y.dtype() == DType::BF16);
    loss = sum(y * r);  // bf16 * f32 -> f32, summed in f32
    CHECK(loss.dtype() == DType::F32);
    if (backward_inside) loss.backward();
  }
  if (!backward_inside) loss.backward();
  for (const Tensor* t : {&x, &w, &b}) CHECK(t->grad().dtype() == DType::F32);

  // d loss / d y arrives as bf16(r) (the gradient of y is in y's dtype); the bf16 backward GEMMs
  // accumulate in f32 and round once; the casts hand f32 back to the leaves.
  const std::vector<double> xr = rounded(x, DType::BF16), wr = rounded(w, DType::BF16);
  const std::vector<double> gy = rounded(r, DType::BF16);
  std::vector<double> gx(4 * 8, 0.0), gw(6 * 8, 0.0), gb(6, 0.0);
  for (int n = 0; n < 4; ++n) {
    for (int o = 0; o < 6; ++o) {
      const double g = gy[size_t(n * 6 + o)];
      gb[size_t(o)] += g;
      for (int i = 0; i < 8; ++i) {
        gx[size_t(n * 8 + i)] += g * wr[size_t(o * 8 + i)];
        gw[size_t(o * 8 + i)] += g * xr[size_t(n * 8 + i)];
      }
    }
  }
  check_close(x.grad(), gx, {4, 8}, 1e-5, unit_roundoff(DType::BF16) + 1e-5);
  check_close(w.grad(), gw, {6, 8}, 1e-5, unit_roundoff(DType::BF16) + 1e-5);
  check_close(b.grad(), gb, {6}, 1e-5, unit_roundoff(DType::BF16) + 1e-5);
}

TEST_CASE("autocast: attention gradients of f32 leaves match finite differences",
          "[autocast][grad]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const int64_t tq = 3, tk = 5, d = 4, dv = 3;
  Tensor q = random_tensor({1, 2, tq, d}, 21, DType::F32, device, -2, 2).requires_grad_();
  Tensor k = random_tensor({1, 2, tk, d}, 22, DType::F32, device, -2, 2).requires_grad_();
  Tensor v = random_tensor({1, 2, tk, dv}, 23, DType::F32, device).requires_grad_();
  const Tensor r = random_tensor({1, 2, tq, dv}, 24, DType::F32, device);
  {
    AutocastGuard amp(DType::BF16, device.type);
    sum(scaled_dot_product_attention(q, k, v) * r).backward();
  }
  for (const Tensor* t : {&q, &k, &v}) CHECK(t->grad().dtype() == DType::F32);

  // Central differences of sum(attention(q, k, v) * bf16(r)) in f64 at the rounded inputs.
  std::vector<std::vector<double>> in = {rounded(q, DType::BF16), rounded(k, DType::BF16),
                                         rounded(v, DType::BF16)};
  const std::vector<double> rr = rounded(r, DType::BF16);
  auto f = [&]() {
    const std::vector<double> o = attention_ref(in[0], in[1], in[2], 2, tq, tk, d, dv, false);
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * rr[i];
    return s;
  };
  const Tensor* grads[] = {&q, &k, &v};
  for (size_t which = 0; which < 3; ++which) {
    std::vector<double> fd(in[which].size());
    for (size_t i = 0; i < fd.size(); ++i) {
      const double saved = in[which][i], h = 1e-6;
      in[which][i] = saved + h;
      const double up = f();
      in[which][i] = saved - h;
      fd[i] = (up - f()) / (2 * h);
      in[which][i] = saved;
    }
    INFO("input " << which);
    // bf16 gradients: a few roundings of 2^-9 each on values of size max|fd|.
    check_close(grads[which]->grad(), fd, grads[which]->shape(), 1e-2 * max_abs(fd), 1e-2);
  }
}

TEST_CASE("autocast: tiny BERT forward and backward under bf16 stay close to f32",
          "[autocast][grad]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  manual_seed(5);
  nn::BertForSequenceClassification model(tiny_config());
  model.to(device);
  const TensorOptions i64 = TensorOptions(DType::I64).device(device);
  const Tensor ids = from_vector<int64_t>({1, 5, 7, 9, 2, 3, 4, 0, 8, 6, 12, 30}, {3, 4}, i64);
  const Tensor mask = from_vector<int64_t>({1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0}, {3, 4}, i64);
  const Tensor labels = from_vector<int64_t>({0, 1, 1}, {3}, i64);

  const Tensor logits32 = model.forward(ids, mask);
  cross_entropy(logits32, labels).backward();
  std::vector<std::pair<std::string, std::vector<double>>> grads32;
  for (const auto& [name, p] : model.named_parameters()) {
    grads32.emplace_back(name, p.grad().to_vector<double>());
  }
  model.zero_grad();

  Tensor logits;
  {
    AutocastGuard amp(DType::BF16, device.type);
    logits = model.forward(ids, mask);
    CHECK(logits.dtype() == DType::BF16);  // the classifier is a linear
    const Tensor loss = cross_entropy(logits, labels);
    CHECK(loss.dtype() == DType::F32);
    loss.backward();
  }
  const std::vector<double> a = logits.to_vector<double>(), b = logits32.to_vector<double>();
  CHECK(max_abs(b) > 0.1);  // the comparison below means something
  double diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff = std::max(diff, std::abs(a[i] - b[i]));
  CHECK(diff <= 3e-2);

  size_t i = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    INFO(name);
    REQUIRE(p.grad().defined());
    CHECK(p.grad().dtype() == DType::F32);
    const std::vector<double> g = p.grad().to_vector<double>();
    const std::vector<double>& g32 = grads32[i++].second;
    double num = 0, den = 0;
    for (size_t j = 0; j < g.size(); ++j) {
      num += (g[j] - g32[j]) * (g[j] - g32[j]);
      den += g32[j] * g32[j];
    }
    if (name.find("key.bias") != std::string::npos) {
      // Exactly 0: a key bias shifts every score of a query by the same q . b, which softmax
      // ignores. Both runs hold rounding noise; bf16's may be larger, never large.
      CHECK(std::sqrt(num) <= 1e-3);
      continue;
    }
    // Relative L2 error of each parameter's gradient (the unused token-type row is 0 in both).
    if (den > 0) CHECK(std::sqrt(num / den) <= 5e-2);
  }
}

TEST_CASE("mixed dtypes: binary ops promote, gradients come back in each input's dtype",
          "[autocast][elementwise]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  struct Case {
    DType a, b, result;
  };
  for (const Case c :
       {Case{DType::BF16, DType::F32, DType::F32}, Case{DType::F16, DType::F32, DType::F32},
        Case{DType::BF16, DType::F16, DType::F32}, Case{DType::F32, DType::BF16, DType::F32},
        Case{DType::BF16, DType::F64, DType::F64}}) {
    INFO(c.a << " with " << c.b);
    // Exactly representable in both half types, so the inputs carry no rounding.
    const std::vector<double> av = exact_values(6, 1), bv = exact_values(3, 2);
    Tensor a = from_vector(av, {2, 3}, TensorOptions(c.a).device(device)).requires_grad_();
    Tensor b = from_vector(bv, {3}, TensorOptions(c.b).device(device)).requires_grad_();
    const Tensor sum_ab = a + b, prod = a * b;
    CHECK(sum_ab.dtype() == c.result);
    CHECK(prod.dtype() == c.result);
    std::vector<double> s(6), p(6);
    for (int i = 0; i < 6; ++i) {
      s[size_t(i)] = av[size_t(i)] + bv[size_t(i % 3)];
      p[size_t(i)] = av[size_t(i)] * bv[size_t(i % 3)];
    }
    check_close(sum_ab, s, {2, 3}, 0, 0);  // exact: few significant bits
    check_close(prod, p, {2, 3}, 0, 0);
    // d/da sum(a * b + a) = b + 1 (broadcast), d/db = sum over rows of a.
    sum(prod + a).backward();
    CHECK(a.grad().dtype() == c.a);
    CHECK(b.grad().dtype() == c.b);
    std::vector<double> ga(6), gb(3, 0.0);
    for (int i = 0; i < 6; ++i) {
      ga[size_t(i)] = bv[size_t(i % 3)] + 1;
      gb[size_t(i % 3)] += av[size_t(i)];
    }
    check_close(a.grad(), ga, {2, 3}, 0, 0);
    check_close(b.grad(), gb, {3}, 0, 0);
  }
}

TEST_CASE("bf16/f16 arithmetic computes in f32 and rounds once on every device",
          "[autocast][elementwise]") {
  const Device device = GENERATE(from_range(test_devices()));
  const DType low = GENERATE(DType::BF16, DType::F16);
  INFO(device.str() << " " << low);
  const TensorOptions opts = TensorOptions(low).device(device);
  const Tensor a = random_tensor({4, 5}, 31, DType::F32, device).to(low);
  const Tensor b = random_tensor({5}, 32, DType::F32, device).to(low);
  const std::vector<double> av = a.to_vector<double>(), bv = b.to_vector<double>();
  auto round_low = [&](double x) {
    return low == DType::BF16 ? round_bf16(float(x)) : round_f16(float(x));
  };
  std::vector<double> s(20), p(20), q(20), e(20);
  for (int i = 0; i < 20; ++i) {
    const double x = av[size_t(i)], y = bv[size_t(i % 5)];
    s[size_t(i)] = round_low(float(x) + float(y));
    p[size_t(i)] = round_low(float(x) * float(y));
    q[size_t(i)] = round_low(float(x) / float(y));
    e[size_t(i)] = std::exp(x);
  }
  const Tensor sum_ab = a + b, prod = a * b, quot = a / b, ex = exp(a);
  for (const Tensor* t : {&sum_ab, &prod, &quot, &ex}) CHECK(t->dtype() == low);
  check_close(sum_ab, s, {4, 5}, 0, 0);
  check_close(prod, p, {4, 5}, 0, 0);
  check_close(quot, q, {4, 5}, 0, 0);
  check_close(ex, e, {4, 5}, 0, unit_roundoff(low) + 1e-6);
  // Reductions accumulate in f32 (or wider) and round once.
  double total = 0;
  for (double x : av) total += x;
  check_close(sum(a), {round_low(total)}, {}, 0, 2 * unit_roundoff(low));
  CHECK(argmax(a, 1).dtype() == DType::I64);
  // In-place ops round into the tensor.
  Tensor c = a.clone();
  c.mul_(0.5);
  std::vector<double> half(20);
  for (int i = 0; i < 20; ++i) half[size_t(i)] = av[size_t(i)] * 0.5;
  check_close(c, half, {4, 5}, 0, 0);
  c.add_(b);
  for (int i = 0; i < 20; ++i)
    half[size_t(i)] = round_low(float(half[size_t(i)]) + float(bv[size_t(i % 5)]));
  check_close(c, half, {4, 5}, 0, 0);
  // Unary gradients in the input's dtype.
  Tensor leaf = a.detach().requires_grad_();
  sum(tanh(leaf)).backward();
  CHECK(leaf.grad().dtype() == low);
  std::vector<double> dt(20);
  for (int i = 0; i < 20; ++i) dt[size_t(i)] = 1 - std::pow(std::tanh(av[size_t(i)]), 2);
  check_close(leaf.grad(), dt, {4, 5}, 1e-5, unit_roundoff(low) + 1e-5);
  (void)opts;
}

TEST_CASE("bf16 dropout keeps the f32 mask and rounds once", "[autocast][dropout]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const Tensor x = random_tensor({7, 9}, 41, DType::F32, device).to(DType::BF16);
  manual_seed(3);
  const Tensor y = dropout(x, 0.3);
  manual_seed(3);
  const Tensor y32 = dropout(x.to(DType::F32), 0.3);
  CHECK(y.dtype() == DType::BF16);
  check_close(y, rounded(y32, DType::BF16), {7, 9}, 0, 0);
}

// ---- GradScaler ----

namespace {

struct ScalerFixture {
  Tensor w;
  std::unique_ptr<optim::SGD> sgd;
  explicit ScalerFixture(Device device) {
    w = from_vector<float>({1, 2, 3}, {3}, TensorOptions().device(device)).requires_grad_();
    optim::SGDOptions o;
    o.lr = 0.5;
    sgd = std::make_unique<optim::SGD>(optim::NamedParameters{{"w", w}}, o);
  }
  // A backward pass of scaler.scale(sum(w * c)): w.grad = scale * c.
  void backward(optim::GradScaler& scaler, const std::vector<float>& c) {
    sgd->zero_grad();
    scaler.scale(sum(w * from_vector<float>(c, {3}, TensorOptions().device(w.device()))))
        .backward();
  }
};

}  // namespace

TEST_CASE("GradScaler: skips inf/NaN steps, backs off, grows after growth_interval",
          "[autocast][grad_scaler]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  ScalerFixture fx(device);
  optim::GradScalerOptions o;
  o.init_scale = 8.0;
  o.growth_interval = 2;
  optim::GradScaler scaler(o);
  CHECK(scaler.scale() == 8.0);
  CHECK(scaler.scale(full({}, 1.5, TensorOptions().device(device))).item<double>() == 12.0);

  // Step 1: clean. grad = 8 * c, unscaled to c; w -= 0.5 * c.
  fx.backward(scaler, {1, -2, 4});
  check_close(fx.w.grad(), {8, -16, 32}, {3}, 0, 0);
  CHECK(scaler.step(*fx.sgd));
  check_close(fx.w.grad(), {1, -2, 4}, {3}, 0, 0);
  check_close(fx.w, {0.5, 3, 1}, {3}, 0, 0);
  CHECK(scaler.found_inf(*fx.sgd) == false);
  scaler.update();
  CHECK(scaler.scale() == 8.0);
  CHECK(scaler.growth_tracker() == 1);
  CHECK(!scaler.found_inf(*fx.sgd).has_value());

  // Step 2: clean; the second clean update in a row doubles the scale.
  fx.backward(scaler, {2, 2, 2});
  CHECK(scaler.step(*fx.sgd));
  check_close(fx.w, {-0.5, 2, 0}, {3}, 0, 0);
  scaler.update();
  CHECK(scaler.scale() == 16.0);
  CHECK(scaler.growth_tracker() == 0);

  // Step 3: an inf gradient: the step is skipped, the scale halves.
  fx.backward(scaler, {1, 1, 1});
  {
    NoGradGuard ng;
    fx.w.grad().copy_(from_vector<double>({1, kInf, 1}, {3}, TensorOptions().device(device)));
  }
  CHECK(!scaler.step(*fx.sgd));
  CHECK(scaler.found_inf(*fx.sgd) == true);
  check_close(fx.w, {-0.5, 2, 0}, {3}, 0, 0);
  scaler.update();
  CHECK(scaler.scale() == 8.0);
  CHECK(scaler.growth_tracker() == 0);

  // Step 4: a NaN, found by an explicit unscale_ (as before clipping); step() then skips.
  fx.backward(scaler, {1, 1, 1});
  {
    NoGradGuard ng;
    fx.w.grad().copy_(
        from_vector<double>({std::nan(""), 0, 0}, {3}, TensorOptions().device(device)));
  }
  scaler.unscale_(*fx.sgd);
  CHECK(scaler.found_inf(*fx.sgd) == true);
  check_error([&] { scaler.unscale_(*fx.sgd); }, {"unscale_", "already", "since the last update"});
  CHECK(!scaler.step(*fx.sgd));
  check_error([&] { scaler.step(*fx.sgd); }, {"step", "already called"});
  check_error([&] { scaler.unscale_(*fx.sgd); }, {"unscale_", "after step"});
  scaler.update();
  CHECK(scaler.scale() == 4.0);

  // Huge finite gradients are not mistaken for overflow.
  fx.backward(scaler, {1, 1, 1});
  {
    NoGradGuard ng;
    fx.w.grad().copy_(
        from_vector<double>({3e38, -3e38, 3e38}, {3}, TensorOptions().device(device)));
  }
  scaler.unscale_(*fx.sgd);
  CHECK(scaler.found_inf(*fx.sgd) == false);
  check_close(fx.w.grad(), {7.5e37, -7.5e37, 7.5e37}, {3}, 0, 1e-7);
  scaler.update();
  CHECK(scaler.growth_tracker() == 1);

  check_error([&] { scaler.update(); }, {"update", "no inf checks"});
  scaler.update(3.0);
  CHECK(scaler.scale() == 3.0);
  check_error([&] { scaler.update(0.0); }, {"update", "new scale"});
}

TEST_CASE("GradScaler: unscale_ multiplies by the f32 reciprocal, like PyTorch",
          "[autocast][grad_scaler]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  ScalerFixture fx(device);
  optim::GradScalerOptions o;
  o.init_scale = 3.0;  // not a power of two: the reciprocal is rounded
  optim::GradScaler scaler(o);
  const std::vector<double> g = random_values(3, 51, -5, 5);
  {
    NoGradGuard ng;
    fx.w.set_grad(from_vector(g, {3}, TensorOptions(DType::F32).device(device)));
  }
  scaler.unscale_(*fx.sgd);
  const float inv = float(1.0 / 3.0);
  std::vector<double> expect;
  for (double x : g) expect.push_back(double(float(x) * inv));
  check_close(fx.w.grad(), expect, {3}, 0, 0);

  // bf16 gradients (bf16 parameters) unscale in f32 and round once; f16 ones are refused.
  Tensor p = zeros({4}, TensorOptions(DType::BF16).device(device)).requires_grad_();
  optim::Adam adam(optim::NamedParameters{{"p", p}});  // SGD takes f32/f64 parameters only
  optim::GradScaler scaler2;                           // 65536
  const std::vector<double> big = {65536.0 * 3, -65536.0 * 0.25, 65536.0 * 1.5, 0};
  p.set_grad(from_vector(big, {4}, TensorOptions(DType::BF16).device(device)));
  scaler2.unscale_(adam);
  check_close(p.grad(), {3, -0.25, 1.5, 0}, {4}, 0, 0);
  Tensor h = zeros({2}, TensorOptions(DType::F16).device(device)).requires_grad_();
  optim::Adam sgd16(optim::NamedParameters{{"h", h}});
  h.set_grad(ones({2}, TensorOptions(DType::F16).device(device)));
  check_error([&] { scaler2.unscale_(sgd16); }, {"unscale_", "'h'", "f16 gradient"});
  optim::SGD nothing(
      optim::NamedParameters{{"q", zeros({1}, TensorOptions().device(device)).requires_grad_()}});
  optim::GradScaler fresh;
  check_error([&] { fresh.step(nothing); }, {"no parameter", "gradient"});
  // The failed step left no inf check behind.
  check_error([&] { fresh.update(); }, {"update", "no inf checks"});
}

TEST_CASE("GradScaler: defaults, growth after 2000 clean steps, f32 overflow, disabled",
          "[autocast][grad_scaler]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  optim::GradScaler scaler;
  CHECK(scaler.scale() == 65536.0);
  CHECK(scaler.options().growth_factor == 2.0);
  CHECK(scaler.options().backoff_factor == 0.5);
  CHECK(scaler.options().growth_interval == 2000);
  Tensor p = zeros({2}, TensorOptions().device(device)).requires_grad_();
  optim::SGD sgd(optim::NamedParameters{{"p", p}});
  const Tensor g = ones({2}, TensorOptions().device(device));
  for (int i = 1; i <= 2000; ++i) {
    p.set_grad(g.clone());
    scaler.step(sgd);
    scaler.update();
    if (i == 1999) REQUIRE(scaler.scale() == 65536.0);
  }
  CHECK(scaler.scale() == 131072.0);
  CHECK(scaler.growth_tracker() == 0);

  // Growth past f32's range is not applied.
  optim::GradScalerOptions o;
  o.init_scale = std::ldexp(1.0, 127);
  o.growth_interval = 1;
  optim::GradScaler top(o);
  p.set_grad(g.clone());
  top.step(sgd);
  top.update();
  CHECK(top.scale() == std::ldexp(1.0, 127));

  // Disabled: a pass-through, so one loop serves bf16 (no scaling needed) and f16.
  o.enabled = false;
  optim::GradScaler off(o);
  const Tensor loss = full({}, 2.5, TensorOptions().device(device));
  CHECK(off.scale(loss).is_same(loss));
  CHECK(off.scale() == 1.0);
  p.set_grad(g.clone());
  CHECK(off.step(sgd));
  off.update();

  o.enabled = true;
  o.backoff_factor = 1.5;
  check_error([&] { optim::GradScaler bad(o); }, {"GradScaler", "backoff_factor"});
}

TEST_CASE("GradScaler: state round-trips exactly and resumes the same sequence",
          "[autocast][grad_scaler]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  optim::GradScalerOptions o;
  o.init_scale = 1024.0;
  o.growth_interval = 3;
  o.backoff_factor = 0.25;
  Tensor p = zeros({2}, TensorOptions().device(device)).requires_grad_();
  optim::SGD sgd(optim::NamedParameters{{"p", p}});
  auto run = [&](optim::GradScaler& s, const std::vector<bool>& infs) {
    for (bool inf : infs) {
      p.set_grad(from_vector<double>({inf ? kInf : 1.0, 1.0}, {2}, TensorOptions().device(device)));
      s.step(sgd);
      s.update();
    }
  };
  optim::GradScaler a(o);
  run(a, {false, true, false, false});
  const optim::StateDict sd = a.state_dict();
  optim::GradScaler b;  // other hyperparameters: load replaces them
  b.load_state_dict(sd);
  CHECK(b.scale() == a.scale());
  CHECK(b.growth_tracker() == a.growth_tracker());
  CHECK(b.options().backoff_factor == 0.25);
  CHECK(b.options().growth_interval == 3);
  run(a, {false, true, false});
  run(b, {false, true, false});
  CHECK(a.scale() == b.scale());
  CHECK(a.scale() == 1024.0 * 0.25 * 2 * 0.25);
  CHECK(a.growth_tracker() == b.growth_tracker());

  check_error([&] { b.load_state_dict(optim::StateDict{}, "ckpt.safetensors"); },
              {"ckpt.safetensors", "grad_scaler/state"});
  optim::StateDict broken = sd;
  broken.metadata["grad_scaler/state"] = "{\"scale\": 1}";
  check_error([&] { b.load_state_dict(broken); }, {"GradScaler", "invalid metadata"});
}

TEST_CASE("GradScaler: f16 gradients that underflow without scaling survive with it",
          "[autocast][grad_scaler]") {
  const Device device = GENERATE(from_range(test_devices()));
  INFO(device.str());
  const Tensor x = random_tensor({4, 8}, 61, DType::F32, device);
  Tensor w = random_tensor({3, 8}, 62, DType::F32, device).requires_grad_();
  optim::SGD sgd(optim::NamedParameters{{"w", w}});
  // d loss / d y = 1e-8 per element: below f16's smallest subnormal (6e-8), so the f16 gradient of
  // the linear's output flushes to zero unless the loss is scaled.
  auto loss_of = [&]() {
    AutocastGuard amp(DType::F16, device.type);
    const Tensor y = linear(x, w);
    CHECK(y.dtype() == DType::F16);
    return sum(y) * 1e-8;
  };
  loss_of().backward();
  CHECK(max_abs(w.grad().to_vector<double>()) == 0.0);

  sgd.zero_grad();
  optim::GradScaler scaler;
  scaler.scale(loss_of()).backward();
  scaler.unscale_(sgd);
  CHECK(scaler.found_inf(sgd) == false);
  CHECK(w.grad().dtype() == DType::F32);
  // grad w[o, i] = sum_n 1e-8 * x[n, i] (x rounded to f16), computed in f16 at 65536x that size.
  const std::vector<double> xr = rounded(x, DType::F16);
  std::vector<double> expect(3 * 8, 0.0);
  for (int o = 0; o < 3; ++o) {
    for (int i = 0; i < 8; ++i) {
      for (int n = 0; n < 4; ++n) expect[size_t(o * 8 + i)] += 1e-8 * xr[size_t(n * 8 + i)];
    }
  }
  check_close(w.grad(), expect, {3, 8}, 1e-12, 3 * unit_roundoff(DType::F16));
  CHECK(scaler.step(sgd));
  scaler.update();
}
