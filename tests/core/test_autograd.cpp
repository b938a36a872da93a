// The autograd engine (core/autograd/engine.cpp): graph shapes (diamonds, reuse), accumulation,
// retain_graph, grad mode, leaves vs non-leaves, explicit seeds, and the errors that protect users
// from silently wrong gradients (in-place edits of saved tensors, in-place ops on tensors that
// require grad). Expected gradients are worked out by hand from the values.
#include <cmath>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {
Tensor leaf(const Shape& shape, uint64_t seed) {
  return random_tensor(shape, seed, DType::F64, Device::cpu(), 0.5, 1.5).requires_grad_();
}
}  // namespace

TEST_CASE("autograd: a diamond graph sums the gradients of both branches", "[autograd]") {
  Tensor x = leaf({2, 3}, 1);
  Tensor a = exp(x);   // shared node
  Tensor b = a * 3.0;  // branch 1
  Tensor c = a * a;    // branch 2 (a used twice in one op)
  Tensor y = (b + c).sum();
  y.backward();
  // dy/dx = (3 + 2a) * a
  std::vector<double> expected;
  for (double v : x.to_vector<double>()) expected.push_back((3 + 2 * std::exp(v)) * std::exp(v));
  check_close(x.grad(), expected, {2, 3}, 1e-12, 1e-12);

  // The same graph against finite differences, with a second leaf entering both branches.
  gradcheck(
      [](const std::vector<Tensor>& in) {
        Tensor shared = in[0] * in[1];
        Tensor left = tanh(shared) * in[1];
        Tensor right = shared.t().reshape({3, 2}).t() * shared;  // a permuted path rejoining
        return left + right + shared.sum(std::vector<int64_t>{1}, true);
      },
      {leaf({2, 3}, 2), leaf({2, 3}, 3)});
}

TEST_CASE("autograd: gradients accumulate over uses and across backward calls", "[autograd]") {
  Tensor x = leaf({4}, 1);
  auto xv = x.to_vector<double>();
  (x * x + x + x).sum().backward();  // d/dx = 2x + 2
  std::vector<double> once;
  for (double v : xv) once.push_back(2 * v + 2);
  check_close(x.grad(), once, {4});

  (x * 5.0).sum().backward();  // a second graph adds 5
  std::vector<double> twice;
  for (double v : once) twice.push_back(v + 5);
  check_close(x.grad(), twice, {4});

  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
  (x * 5.0).sum().backward();
  check_close(x.grad(), std::vector<double>(4, 5.0), {4});

  // Accumulating never writes into a tensor the user holds: the first gradient is copied or owned.
  Tensor w = leaf({4}, 2);
  Tensor seed = ones({4}, DType::F64);
  w.backward(seed);  // backward of a leaf itself
  check_close(w.grad(), std::vector<double>(4, 1.0), {4});
  w.backward(seed);
  check_close(w.grad(), std::vector<double>(4, 2.0), {4});
  check_close(seed, std::vector<double>(4, 1.0), {4});
}

TEST_CASE("autograd: retain_graph allows a second backward, its absence errors clearly",
          "[autograd]") {
  Tensor x = leaf({3}, 1);
  auto xv = x.to_vector<double>();
  Tensor y = (x * x).sum();
  y.backward(Tensor(), /*retain_graph=*/true);
  y.backward();
  std::vector<double> expected;
  for (double v : xv) expected.push_back(4 * v);  // 2x, twice
  check_close(x.grad(), expected, {3});
  // The graph was freed by the second backward.
  check_error([&] { y.backward(); }, {"backward", "second time", "retain_graph"});

  // A graph shared by two roots: backward from one with retain_graph, then from the other.
  Tensor z = leaf({3}, 2);
  Tensor shared = exp(z);
  Tensor r1 = shared.sum();
  Tensor r2 = (shared * 2.0).sum();
  r1.backward(Tensor(), true);
  r2.backward();
  std::vector<double> ez;
  for (double v : z.to_vector<double>()) ez.push_back(3 * std::exp(v));
  check_close(z.grad(), ez, {3}, 1e-12, 1e-12);
}

TEST_CASE("autograd: NoGradGuard records nothing and restores the mode", "[autograd]") {
  Tensor x = leaf({2}, 1);
  CHECK(grad_mode_enabled());
  {
    NoGradGuard outer;
    CHECK_FALSE(grad_mode_enabled());
    Tensor y = exp(x) * 2.0 + x;
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
    CHECK(y.is_leaf());
    Tensor v = x.reshape({2, 1}).t();  // views record nothing either
    CHECK_FALSE(v.requires_grad());
    {
      NoGradGuard inner;
      CHECK_FALSE(grad_mode_enabled());
    }
    CHECK_FALSE(grad_mode_enabled());  // the inner guard restores "off", not "on"
    check_error([&] { y.sum().backward(); }, {"backward", "does not require grad", "NoGradGuard"});
  }
  CHECK(grad_mode_enabled());
  Tensor y = exp(x);
  CHECK(y.requires_grad());
  CHECK(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name() == "exp");
}

TEST_CASE("autograd: detach cuts the graph but shares storage", "[autograd]") {
  Tensor x = leaf({3}, 1);
  Tensor d = x.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.is_leaf());
  CHECK(d.storage() == x.storage());
  // y = detach(x) * x: only the second factor carries gradient, so dy/dx = x (not 2x).
  (d * x).sum().backward();
  check_close(x.grad(), x.detach().to_vector<double>(), {3});
  // A detached non-leaf is a leaf without history.
  Tensor e = exp(x).detach();
  CHECK(e.is_leaf());
  CHECK(e.grad_fn() == nullptr);
  e.requires_grad_();  // allowed: it is a leaf now
  CHECK(e.requires_grad());
}

TEST_CASE("autograd: leaves, non-leaves, requires_grad_ and retain_grad", "[autograd]") {
  Tensor x = leaf({3}, 1);
  Tensor plain = ones({3}, DType::F64);
  CHECK(x.is_leaf());
  CHECK(plain.is_leaf());
  CHECK_FALSE(plain.requires_grad());
  Tensor y = x * 2.0;
  CHECK_FALSE(y.is_leaf());
  CHECK(y.requires_grad());
  // An op of tensors that do not require grad makes a leaf that does not either.
  CHECK((plain * 2.0).is_leaf());
  CHECK_FALSE((plain * 2.0).requires_grad());
  // Mixed inputs: the result requires grad.
  CHECK((plain * x).requires_grad());

  check_error([&] { y.requires_grad_(); }, {"requires_grad_", "leaf", "mul"});
  check_error([&] { y.requires_grad_(false); }, {"requires_grad_", "leaf", "detach"});
  check_error([&] { ones({2}, DType::I64).requires_grad_(); },
              {"requires_grad_", "floating", "i64"});
  check_error([&] { plain.retain_grad(); }, {"retain_grad", "does not require grad"});
  plain.requires_grad_(true);
  CHECK(plain.requires_grad());
  plain.requires_grad_(false);
  CHECK_FALSE(plain.requires_grad());

  // Non-leaf gradients are dropped unless retained.
  Tensor h = x * 3.0;
  Tensor k = exp(x);
  k.retain_grad();
  (h * k).sum().backward();
  CHECK_FALSE(h.grad().defined());
  check_close(k.grad(), h.detach().to_vector<double>(), {3});  // d/dk (h * k) = h
  x.retain_grad();                                             // a no-op on leaves
  std::vector<double> expected;
  for (double v : x.to_vector<double>()) expected.push_back(3 * std::exp(v) + 3 * v * std::exp(v));
  check_close(x.grad(), expected, {3}, 1e-12, 1e-12);
}

TEST_CASE("autograd: backward seeds: scalars, explicit gradients and their errors", "[autograd]") {
  Tensor x = leaf({2, 3}, 1);
  Tensor y = x * 3.0;
  check_error([&] { y.backward(); }, {"backward", "[2, 3]", "not a scalar"});
  check_error([&] { y.backward(ones({3, 2}, DType::F64)); }, {"backward", "[3, 2]", "[2, 3]"});
  Tensor g = random_tensor({2, 3}, 9);
  y.backward(g);
  std::vector<double> expected;
  for (double v : g.to_vector<double>()) expected.push_back(3 * v);
  check_close(x.grad(), expected, {2, 3});
  // A one-element tensor of any rank is a scalar for backward.
  Tensor z = leaf({1, 1}, 2);
  (z * 4.0).backward();
  check_close(z.grad(), {4.0}, {1, 1});
  // set_grad checks the shape.
  check_error([&] { x.set_grad(zeros({3}, DType::F64)); }, {"set_grad", "[3]", "[2, 3]"});
  // Gradients keep the leaf's dtype through a dtype conversion.
  Tensor f = random_tensor({3}, 3, DType::F32).requires_grad_();
  (f.to(DType::F64) * 2.0).sum().backward();
  CHECK(f.grad().dtype() == DType::F32);
  check_close(f.grad(), {2, 2, 2}, {3});
}

TEST_CASE("autograd: modifying a saved tensor in place is reported at backward", "[autograd]") {
  // exp saves its input: edit the leaf under NoGradGuard (like an optimizer step) between forward
  // and backward.
  Tensor x = leaf({3}, 1);
  Tensor y = exp(x).sum();
  {
    NoGradGuard no_grad;
    x.add_(ones({3}, DType::F64));
  }
  check_error([&] { y.backward(); }, {"exp", "modified by an in-place operation", "[3]"});

  // mul saves the other factor: an edit of a tensor that does not require grad.
  Tensor a = leaf({2, 2}, 2);
  Tensor w = random_tensor({2, 2}, 3);
  Tensor z = (a * w).sum();
  w.mul_(2.0);
  check_error([&] { z.backward(); }, {"mul", "modified by an in-place operation"});

  // The version counter belongs to the storage: writing through another view of it counts too.
  Tensor base = random_tensor({4, 4}, 4);
  Tensor b = leaf({4}, 5);
  Tensor v = base.select(0, 1);
  Tensor u = (b * v).sum();
  base.select(0, 3).fill_(0.0);
  check_error([&] { u.backward(); }, {"mul", "modified by an in-place operation"});

  // No edit: fine, and an edit after backward is harmless.
  Tensor c = leaf({3}, 6);
  Tensor q = exp(c).sum();
  q.backward();
  NoGradGuard no_grad;
  c.add_(ones({3}, DType::F64));
  CHECK(c.grad().defined());
}

TEST_CASE("autograd: in-place ops on tensors that require grad are refused", "[autograd]") {
  Tensor x = leaf({3}, 1);
  check_error([&] { x.add_(ones({3}, DType::F64)); },
              {"add_", "in-place", "requires grad", "NoGradGuard"});
  check_error([&] { x.mul_(2.0); }, {"mul_", "requires grad"});
  check_error([&] { x.fill_(0.0); }, {"fill_", "requires grad"});
  check_error([&] { x.zero_(); }, {"requires grad"});
  check_error([&] { x.copy_(ones({3}, DType::F64)); }, {"copy_", "requires grad"});
  Tensor y = x * 2.0;  // a non-leaf requires grad as well
  check_error([&] { y.masked_fill_(ones({3}, DType::Bool), 0.0); },
              {"masked_fill_", "requires grad"});
  // Under NoGradGuard they run (this is how optimizers update parameters).
  auto before = x.to_vector<double>();
  {
    NoGradGuard no_grad;
    x.add_(ones({3}, DType::F64), 0.5);
  }
  auto after = x.to_vector<double>();
  for (size_t i = 0; i < before.size(); ++i) CHECK(after[i] == before[i] + 0.5);
  CHECK(x.requires_grad());
  CHECK(x.is_leaf());
}

TEST_CASE("autograd: long chains and wide fan-out", "[autograd]") {
  Tensor x = leaf({2}, 1);
  Tensor y = x;
  const int depth = 2000;
  for (int i = 0; i < depth; ++i) y = y * 1.0001;
  y.sum().backward();
  const double factor = std::pow(1.0001, depth);
  check_close(x.grad(), {factor, factor}, {2}, 1e-9, 1e-9);

  // Many consumers of one tensor: every contribution arrives once.
  Tensor z = leaf({3}, 2);
  Tensor total = zeros({3}, DType::F64);
  for (int i = 1; i <= 50; ++i) total = total + z * double(i);
  total.sum().backward();
  check_close(z.grad(), std::vector<double>(3, 50.0 * 51.0 / 2.0), {3});
}

TEST_CASE("autograd: unused and non-differentiable paths", "[autograd]") {
  Tensor x = leaf({3}, 1);
  Tensor w = leaf({3}, 2);
  Tensor unused = exp(w);  // never reaches the root
  (void)unused;
  (x * 2.0).sum().backward();
  CHECK(x.grad().defined());
  CHECK_FALSE(w.grad().defined());
  // Comparisons are not differentiable: a mask built from x does not carry gradient.
  Tensor x2 = leaf({4}, 3);
  Tensor mask = gt(x2, scalar_tensor(1.0, DType::F64));
  CHECK_FALSE(mask.requires_grad());
  Tensor out = where(mask, x2 * 2.0, x2 * 0.0).sum();
  out.backward();
  std::vector<double> expected;
  for (double v : x2.detach().to_vector<double>()) expected.push_back(v > 1.0 ? 2.0 : 0.0);
  check_close(x2.grad(), expected, {4});
}
