// embedding: forward against a naive row copy (i32/i64 indices of any shape, 0-dim included,
// non-contiguous weight), gradient accumulation over repeated indices against a naive loop,
// padding_idx rows with zero gradient, gradcheck, and errors naming the bad index and V.
#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

std::vector<double> embedding_ref(const std::vector<int64_t>& idx, const std::vector<double>& w,
                                  int64_t D) {
  std::vector<double> out;
  for (int64_t i : idx) {
    for (int64_t d = 0; d < D; ++d) out.push_back(w[size_t(i * D + d)]);
  }
  return out;
}

}  // namespace

TEST_CASE("embedding: rows of the weight for i32/i64 indices of any shape", "[embedding]") {
  auto device = GENERATE(from_range(test_devices()));
  auto index_dtype = GENERATE(DType::I32, DType::I64);
  auto dtype = GENERATE(DType::F32, DType::F64);
  const int64_t V = 37, D = 7;
  Tensor w = random_tensor({V, D}, 1, dtype, device);
  std::vector<double> wv = w.to_vector<double>();
  for (Shape shape : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{2, 1, 4}, Shape{}}) {
    INFO("indices " << shape_str(shape));
    std::vector<double> u = random_values(shape_numel(shape), 2, 0, double(V));
    std::vector<int64_t> idx;
    for (double e : u) idx.push_back(int64_t(e));
    Tensor indices = from_vector(idx, shape, TensorOptions(index_dtype).device(device));
    Tensor out = embedding(indices, w);
    Shape out_shape = shape;
    out_shape.push_back(D);
    CHECK(out.dtype() == dtype);
    check_close(out, embedding_ref(idx, wv, D), out_shape);
  }
  // A non-contiguous weight gives the same rows.
  Tensor idx =
      from_vector(std::vector<int64_t>{0, 36, 5}, {3}, TensorOptions(index_dtype).device(device));
  check_close(embedding(idx, non_contiguous(w)), embedding_ref({0, 36, 5}, wv, D), {3, D});
}

TEST_CASE("embedding: repeated indices accumulate, padding_idx gets no gradient",
          "[embedding][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  auto pad =
      GENERATE(std::optional<int64_t>(), std::optional<int64_t>(2), std::optional<int64_t>(-1));
  const int64_t V = 6, D = 5;
  std::vector<int64_t> idx{2, 0, 2, 5, 2, 3, 5, 0, 1};
  Tensor indices = from_vector(idx, {3, 3}, TensorOptions(DType::I64).device(device));
  Tensor w = random_tensor({V, D}, 3, DType::F64, device).requires_grad_(true);
  Tensor out = embedding(indices, w, pad);
  // The forward still returns the padding row's values, as in PyTorch.
  check_close(out, embedding_ref(idx, w.to_vector<double>(), D), {3, 3, D});
  Tensor g = random_tensor({3, 3, D}, 4, DType::F64, device);
  (out * g).sum().backward();
  std::vector<double> gv = g.to_vector<double>(), expected(size_t(V * D), 0.0);
  const int64_t pad_row = pad ? (*pad < 0 ? *pad + V : *pad) : -1;
  for (size_t i = 0; i < idx.size(); ++i) {
    if (idx[i] == pad_row) continue;
    for (int64_t d = 0; d < D; ++d)
      expected[size_t(idx[i] * D + d)] += gv[i * size_t(D) + size_t(d)];
  }
  check_close(w.grad(), expected, {V, D});
  if (pad) {
    for (int64_t d = 0; d < D; ++d)
      CHECK(w.grad().to_vector<double>()[size_t(pad_row * D + d)] == 0.0);
  }
}

TEST_CASE("embedding: gradcheck through a non-contiguous weight", "[embedding][grad]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor indices = from_vector(std::vector<int32_t>{3, 1, 3, 0, 4, 4, 4}, {7},
                               TensorOptions(DType::I32).device(device));
  // No padding_idx here: its zero gradient deliberately disagrees with finite differences.
  gradcheck([&](const std::vector<Tensor>& in) { return embedding(indices, in[0].to(device).t()); },
            {random_tensor({4, 5}, 5)});
}

TEST_CASE("embedding: errors name the index and the table size", "[embedding][errors]") {
  auto device = GENERATE(from_range(test_devices()));
  Tensor w = zeros({10, 4}, TensorOptions(DType::F32).device(device));
  auto idx = [&](std::vector<int64_t> v) {
    return from_vector(v, {int64_t(v.size())}, TensorOptions(DType::I64).device(device));
  };
  // On cuda the kernel finds a bad index and the host raises it at its next wait (here the copy
  // back); on the cpu the op checks first.
  check_error(
      [&] {
        embedding(idx({1, 10, 2}), w).to(Device::cpu());
      },
      {"embedding", "index 10", "position 1", "10 embeddings"});
  check_error([&] { embedding(idx({-1}), w).to(Device::cpu()); }, {"embedding", "index -1"});
  // The device is usable afterwards: the error was raised once.
  CHECK(embedding(idx({9, 0}), w).to(Device::cpu()).to_vector<double>() ==
        std::vector<double>(8, 0.0));
  check_error([&] { embedding(idx({1}), zeros({10}, TensorOptions(DType::F32).device(device))); },
              {"embedding", "weight", "[10]"});
  check_error([&] { embedding(zeros({3}, TensorOptions(DType::F32).device(device)), w); },
              {"embedding", "indices", "f32"});
  check_error([&] { embedding(idx({1}), w, 10); }, {"embedding", "padding_idx 10"});
}
