// Built against the installed package by scripts/test.sh. The first half is the usage example of
// README.md (kept identical, so the README's code is known to compile and run); the second half
// checks the loss and the gradients it printed against a double-precision computation written
// out by hand, and exits non-zero on any mismatch.
#include <lathe/lathe.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <vector>

namespace {

int failures = 0;

void expect_near(const char* what, double got, double want) {
  const double tolerance = 1e-5 + 1e-4 * std::abs(want);
  if (!(std::abs(got - want) <= tolerance)) {
    std::fprintf(stderr, "lathe-consumer: %s = %.8g, expected %.8g\n", what, got, want);
    ++failures;
  }
}

}  // namespace

int main() try {
  // ---- README example ----
  using namespace lathe;
  Tensor x = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});  // 2 samples, 3 features
  Tensor w = from_vector<float>({0.1f, -0.2f, 0.3f, 0.0f, 0.5f, -0.1f}, {2, 3});
  Tensor b = zeros({2});
  w.requires_grad_();
  b.requires_grad_();
  Tensor targets = from_vector<int64_t>({0, 1}, {2});  // class of each sample

  Tensor loss = cross_entropy(relu(linear(x, w, b)), targets);
  loss.backward();  // fills w.grad() and b.grad()
  std::cout << "loss " << loss.item<float>() << "\ndloss/dw " << w.grad() << "\n";
  {
    NoGradGuard no_grad;  // an SGD step, outside the graph
    w.add_(w.grad(), -0.1);
  }
  // ---- end of README example ----

  // The same computation in double precision: z = relu(x w^T + b), loss = mean(lse(z) - z[y]),
  // dloss/dz = (softmax(z) - onehot(y)) / n, masked by relu, then chained through the linear map.
  const std::vector<double> xs = {1, 2, 3, 4, 5, 6}, w0 = {0.1, -0.2, 0.3, 0.0, 0.5, -0.1};
  const int n = 2, in = 3, out = 2, y[2] = {0, 1};
  double ref_loss = 0.0;
  std::vector<double> dw(out * in, 0.0), db(out, 0.0);
  for (int i = 0; i < n; ++i) {
    double z[2], pre[2];
    for (int o = 0; o < out; ++o) {
      pre[o] = 0.0;
      for (int k = 0; k < in; ++k) pre[o] += xs[i * in + k] * w0[o * in + k];
      z[o] = std::max(pre[o], 0.0);
    }
    const double m = std::max(z[0], z[1]);
    const double lse = m + std::log(std::exp(z[0] - m) + std::exp(z[1] - m));
    ref_loss += (lse - z[y[i]]) / n;
    for (int o = 0; o < out; ++o) {
      double dz = (std::exp(z[o] - lse) - (o == y[i] ? 1.0 : 0.0)) / n;
      if (pre[o] <= 0.0) dz = 0.0;
      db[o] += dz;
      for (int k = 0; k < in; ++k) dw[o * in + k] += dz * xs[i * in + k];
    }
  }

  expect_near("loss", loss.item<double>(), ref_loss);
  const std::vector<double> got_b = b.grad().to_vector<double>();
  for (int o = 0; o < out; ++o) expect_near("dloss/db", got_b[o], db[o]);
  // w was updated in place after backward: w = w0 - 0.1 * dloss/dw.
  const std::vector<double> got_w = w.to_vector<double>();
  for (int j = 0; j < out * in; ++j)
    expect_near("w after the SGD step", got_w[j], w0[j] - 0.1 * dw[j]);

  if (failures > 0) {
    std::fprintf(stderr, "lathe-consumer: %d mismatch(es)\n", failures);
    return 1;
  }
  std::printf("lathe-consumer: loss and gradients match the reference\n");
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "lathe-consumer: %s\n", e.what());
  return 1;
}
