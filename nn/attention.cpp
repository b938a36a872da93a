#include "lathe/nn/attention.h"

#include "lathe/core/autocast.h"
#include "lathe/core/autograd.h"
#include "lathe/core/functional.h"

namespace lathe::nn {

Tensor key_padding_mask(const Tensor& attention_mask) {
  LATHE_CHECK(attention_mask.dim() == 2,
              "key_padding_mask: attention_mask must be [batch, seq], got ",
              shape_str(attention_mask.shape()));
  LATHE_CHECK(!is_floating(attention_mask.dtype()),
              "key_padding_mask: attention_mask must be integer or bool (1 = token, 0 = padding), "
              "got ",
              attention_mask.dtype());
  Tensor keep =
      attention_mask.dtype() == DType::Bool
          ? attention_mask
          : ne(attention_mask,
               zeros({}, TensorOptions(attention_mask.dtype()).device(attention_mask.device())));
  return keep.reshape({attention_mask.size(0), 1, 1, attention_mask.size(1)});
}

namespace {

// x as the linear op's autocast would cast it (x itself when autocast is off for its device or
// leaves x as it is: f64, or already in the autocast dtype).
Tensor autocast_linear_input(const Tensor& x) {
  const std::optional<DType> target = autocast_dtype(x.device().type);
  if (!target || autocast_policy("linear") != AutocastPolicy::LowPrecision) return x;
  if (!is_floating(x.dtype()) || x.dtype() == DType::F64 || x.dtype() == *target) return x;
  return x.to(*target);
}

}  // namespace

MultiHeadSelfAttention::MultiHeadSelfAttention(int64_t hidden_size, int64_t num_heads,
                                               double attention_dropout, bool causal)
    : Module("MultiHeadSelfAttention"),
      hidden_size_(hidden_size),
      num_heads_(num_heads),
      attention_dropout_(0),
      causal_(causal) {
  LATHE_CHECK(num_heads > 0 && hidden_size % num_heads == 0, "MultiHeadSelfAttention: hidden size ",
              hidden_size, " is not divisible by ", num_heads, " heads");
  set_attention_dropout(attention_dropout);
  query = register_module("query", std::make_shared<Linear>(hidden_size, hidden_size));
  key = register_module("key", std::make_shared<Linear>(hidden_size, hidden_size));
  value = register_module("value", std::make_shared<Linear>(hidden_size, hidden_size));
}

void MultiHeadSelfAttention::set_attention_dropout(double p) {
  LATHE_CHECK(p >= 0 && p < 1, "MultiHeadSelfAttention: dropout must be in [0, 1), got ", p);
  attention_dropout_ = p;
}

Tensor MultiHeadSelfAttention::forward(const Tensor& x, const Tensor& mask) const {
  LATHE_CHECK(x.dim() == 3 && x.size(2) == hidden_size_, "MultiHeadSelfAttention: input must be ",
              "[batch, seq, ", hidden_size_, "], got ", shape_str(x.shape()));
  const int64_t batch = x.size(0), seq = x.size(1), head_dim = hidden_size_ / num_heads_;
  // [B, T, H] -> [B, heads, T, head_dim] as a view; the attention op reads strided inputs.
  auto split_heads = [&](const Tensor& t) {
    return t.view({batch, seq, num_heads_, head_dim}).transpose(1, 2);
  };
  // Under autocast each projection would cast x to the low dtype itself: three identical casts of
  // the same activation. With grad mode off, cast it once here (the same bits). With grad mode on
  // each linear keeps its own cast, so the three gradients of x are summed in f32 as before.
  const Tensor in = grad_mode_enabled() ? x : autocast_linear_input(x);
  const Tensor q = split_heads(query->forward(in));
  const Tensor k = split_heads(key->forward(in));
  const Tensor v = split_heads(value->forward(in));
  const double p = is_training() ? attention_dropout_ : 0.0;
  const Tensor context = scaled_dot_product_attention(q, k, v, mask, causal_, p);
  // The flash kernel (cuda, f16/bf16) writes context in q's memory order, [B, T, heads, head_dim],
  // so this reshape is a view there, and so are the reshapes of the gradients on the way back.
  return context.transpose(1, 2).reshape({batch, seq, hidden_size_});
}

}  // namespace lathe::nn
