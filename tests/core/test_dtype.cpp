// Element types: the 16-bit float conversions of half.h checked exhaustively and on hand-computed
// rounding cases, to(DType) between every pair of dtypes, element access (to_vector, item, data<T>)
// and printing.
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "support/test_util.h"

using namespace lathe;
using namespace lathe::testing;

namespace {

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 value of a bit pattern, computed independently of half.h with ldexp.
double half_reference(uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  double v;
  if (exp == 0x1f) {
    v = mant ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  } else if (exp == 0) {
    v = std::ldexp(double(mant), -24);
  } else {
    v = std::ldexp(double(1024 + mant), exp - 25);
  }
  return sign ? -v : v;
}

const DType kAllDTypes[] = {DType::F32, DType::F64, DType::F16, DType::BF16,
                            DType::I32, DType::I64, DType::Bool};

}  // namespace

TEST_CASE("dtype: every f16 bit pattern decodes correctly and round-trips", "[dtype][half]") {
  int checked = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const uint16_t h = uint16_t(bits);
    const float f = Half::to_float(h);
    const double ref = half_reference(h);
    if (std::isnan(ref)) {
      if (!std::isnan(f)) FAIL_CHECK("f16 NaN pattern " << bits << " decoded to " << f);
      uint16_t back = Half::from_float(f);
      // Still a NaN with the same sign after the round trip.
      if (!((back & 0x7c00) == 0x7c00 && (back & 0x3ff) != 0 && (back & 0x8000) == (h & 0x8000))) {
        FAIL_CHECK("f16 NaN pattern " << bits << " came back as " << back);
      }
      continue;
    }
    if (double(f) != ref) FAIL_CHECK("f16 pattern " << bits << ": " << f << " vs " << ref);
    if (Half::from_float(f) != h) {
      FAIL_CHECK("f16 pattern " << bits << " round-tripped to " << Half::from_float(f));
    }
    // The struct interface agrees with the static functions.
    if (static_cast<float>(Half(f)) != f) FAIL_CHECK("Half(" << f << ") does not round-trip");
    ++checked;
  }
  CHECK(checked == 65536 - 2 * 1023);  // every pattern but the NaNs
}

TEST_CASE("dtype: f16 rounds to nearest even, overflows to inf, keeps subnormals",
          "[dtype][half]") {
  struct Case {
    float value;
    uint16_t bits;
  };
  const float ulp1 = std::ldexp(1.0f, -10);  // f16 spacing at 1
  const Case cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {0.5f, 0x3800},
      {65504.0f, 0x7bff},  // the largest finite f16
      // Ties go to the even mantissa.
      {1.0f + ulp1 / 2, 0x3c00},
      {1.0f + 3 * ulp1 / 2, 0x3c02},
      {-(1.0f + 3 * ulp1 / 2), 0xbc02},
      {2049.0f, 0x6800},  // between 2048 (even) and 2050
      {2051.0f, 0x6802},  // between 2050 (odd) and 2052
      // Just off a tie rounds to the nearer neighbour.
      {1.0f + ulp1 / 2 + std::ldexp(1.0f, -20), 0x3c01},
      {1.0f + ulp1 / 2 - std::ldexp(1.0f, -20), 0x3c00},
      {0.1f, 0x2e66},  // 0.0999755859375
      // Overflow: below the midpoint to 65536 stays finite; the midpoint itself rounds (to even) to
      // inf, as does everything above.
      {65519.0f, 0x7bff},
      {65520.0f, 0x7c00},
      {1e6f, 0x7c00},
      {-1e6f, 0xfc00},
      {std::numeric_limits<float>::infinity(), 0x7c00},
      {-std::numeric_limits<float>::infinity(), 0xfc00},
      // Subnormals: 2^-24 is the smallest; half of it ties to 0, 3/2 of it ties to 2.
      {std::ldexp(1.0f, -24), 0x0001},
      {std::ldexp(1.0f, -25), 0x0000},
      {std::ldexp(3.0f, -25), 0x0002},
      {std::ldexp(1.0f, -25) + std::ldexp(1.0f, -40), 0x0001},
      {-std::ldexp(5.0f, -24), 0x8005},
      {std::ldexp(1023.0f, -24), 0x03ff},  // largest subnormal
      {std::ldexp(2047.0f, -25), 0x0400},  // its tie with the smallest normal goes to even
      {std::ldexp(1.0f, -14), 0x0400},     // smallest normal
      {std::ldexp(1.0f, -30), 0x0000},     // underflow to zero
      {-std::ldexp(1.0f, -30), 0x8000},
      {std::numeric_limits<float>::denorm_min(), 0x0000},
  };
  for (const auto& c : cases) {
    INFO("value " << c.value << " expected bits " << c.bits);
    CHECK(Half::from_float(c.value) == c.bits);
    CHECK(Half(c.value).bits == c.bits);
  }
  // NaN in, NaN out (never inf), including signalling NaNs and negative NaNs.
  for (uint32_t nan_bits : {0x7fc00000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu}) {
    uint16_t h = Half::from_float(bits_to_float(nan_bits));
    CHECK((h & 0x7c00) == 0x7c00);
    CHECK((h & 0x3ff) != 0);
    CHECK(std::isnan(Half::to_float(h)));
  }
}

TEST_CASE("dtype: every bf16 bit pattern round-trips; bf16 rounds to nearest even",
          "[dtype][bfloat16]") {
  int nans = 0;
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    BFloat16 b;
    b.bits = uint16_t(bits);
    const float f = static_cast<float>(b);
    // bf16 is the top half of an f32.
    uint32_t fbits;
    std::memcpy(&fbits, &f, 4);
    if (fbits != bits << 16) FAIL_CHECK("bf16 pattern " << bits << " decoded to " << fbits);
    if (std::isnan(f)) {
      ++nans;
      if (!std::isnan(static_cast<float>(BFloat16(f)))) FAIL_CHECK("bf16 NaN " << bits << " lost");
      continue;
    }
    if (BFloat16::from_float(f) != bits) {
      FAIL_CHECK("bf16 pattern " << bits << " round-tripped to " << BFloat16::from_float(f));
    }
  }
  CHECK(nans == 2 * 127);

  const float ulp1 = std::ldexp(1.0f, -7);  // bf16 spacing at 1
  struct Case {
    float value;
    uint16_t bits;
  };
  const Case cases[] = {
      {1.0f, 0x3f80},
      {1.0f + ulp1 / 2, 0x3f80},  // tie to even
      {1.0f + 3 * ulp1 / 2, 0x3f82},
      {-(1.0f + 3 * ulp1 / 2), 0xbf82},
      {1.0f + ulp1 / 2 + std::ldexp(1.0f, -20), 0x3f81},
      {0.1f, 0x3dcd},                               // 0x3dcccccd rounds up
      {std::numeric_limits<float>::max(), 0x7f80},  // rounds past the largest bf16 to inf
      {bits_to_float(0x7f7f7fffu), 0x7f7f},         // just below the midpoint stays finite
      {std::numeric_limits<float>::infinity(), 0x7f80},
      {std::numeric_limits<float>::denorm_min(), 0x0000},  // far below half a bf16 subnormal
      {bits_to_float(0x00018000u), 0x0002},                // subnormal tie to even
      {bits_to_float(0x00010000u), 0x0001},                // a bf16 subnormal, exactly
  };
  for (const auto& c : cases) {
    INFO("value " << c.value << " expected bits " << c.bits);
    CHECK(BFloat16::from_float(c.value) == c.bits);
  }
  // A signalling NaN must not truncate to inf (0x7f800001 has no bits in the top half's mantissa).
  CHECK(std::isnan(static_cast<float>(BFloat16(bits_to_float(0x7f800001u)))));
  CHECK(std::isnan(static_cast<float>(BFloat16(bits_to_float(0xff800001u)))));
}

TEST_CASE("dtype: to(DType) converts between every pair of dtypes", "[dtype]") {
  auto device = GENERATE(from_range(test_devices()));
  // Values exact in every dtype (bool aside), on a non-contiguous layout.
  const std::vector<double> values{0, 1, -2, 3, 100, -7, 64, 0};
  for (DType from : kAllDTypes) {
    Tensor x = from_vector(values, {2, 4}, TensorOptions(from).device(device)).t();
    std::vector<double> in_from;
    for (double v : values) in_from.push_back(from == DType::Bool ? double(v != 0) : v);
    for (DType to : kAllDTypes) {
      INFO("from " << from << " to " << to);
      Tensor y = x.to(to);
      CHECK(y.dtype() == to);
      CHECK(y.device() == device);
      std::vector<double> expected;
      for (int64_t j = 0; j < 4; ++j) {
        for (int64_t i = 0; i < 2; ++i) {
          double v = in_from[size_t(i * 4 + j)];
          expected.push_back(to == DType::Bool ? double(v != 0) : v);
        }
      }
      check_close(y, expected, {4, 2}, 0.0, 0.0);
      if (to == from) CHECK(y.is_same(x));  // same dtype: no copy
    }
  }
  // Floating to integer truncates toward zero, floating to bool tests != 0.
  Tensor f = from_vector<double>({2.7, -2.7, 0.5, -0.5, 1e-30, -0.0}, {6},
                                 TensorOptions(DType::F64).device(device));
  check_close(f.to(DType::I32), {2, -2, 0, 0, 0, 0}, {6}, 0.0, 0.0);
  check_close(f.to(DType::I64), {2, -2, 0, 0, 0, 0}, {6}, 0.0, 0.0);
  check_close(f.to(DType::Bool), {1, 1, 1, 1, 1, 0}, {6}, 0.0, 0.0);
  check_close(f.to(DType::F16).to(DType::Bool), {1, 1, 1, 1, 0, 0}, {6}, 0.0, 0.0);  // 1e-30 -> 0
  // Tensor casts use the same rounding as the scalar conversions.
  std::vector<double> awkward{0.1, 1.0 / 3.0, 65519.0, 70000.0, -1e-7, 3.14159};
  Tensor a = from_vector(awkward, {6}, TensorOptions(DType::F32).device(device));
  std::vector<double> as_half, as_bf16;
  for (double v : awkward) {
    as_half.push_back(Half::to_float(Half::from_float(float(v))));
    as_bf16.push_back(static_cast<float>(BFloat16(float(v))));
  }
  check_close(a.to(DType::F16), as_half, {6}, 0.0, 0.0);
  check_close(a.to(DType::BF16), as_bf16, {6}, 0.0, 0.0);
  // Large i64 values survive i64 paths exactly (not through a double).
  const int64_t big = (int64_t(1) << 53) + 1;
  Tensor i = from_vector<int64_t>({big, -big}, {2}, TensorOptions().device(device));
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{big, -big});
  CHECK(i.clone().to_vector<int64_t>() == std::vector<int64_t>{big, -big});
  CHECK(from_vector<int32_t>({-5, 7}).to(DType::I64).to_vector<int64_t>() ==
        std::vector<int64_t>{-5, 7});
}

TEST_CASE("dtype: element access with to_vector, item and data<T>", "[dtype]") {
  Tensor x = from_vector<float>({1.5f, -2.25f, 3.0f, 4.75f}, {2, 2});
  CHECK(x.to_vector<double>() == std::vector<double>{1.5, -2.25, 3.0, 4.75});
  CHECK(x.to_vector<float>() == std::vector<float>{1.5f, -2.25f, 3.0f, 4.75f});
  CHECK(x.to_vector<int>() == std::vector<int>{1, -2, 3, 4});
  CHECK(x.t().to_vector<double>() == std::vector<double>{1.5, 3.0, -2.25, 4.75});  // row-major
  CHECK(x.select(1, 1).to_vector<double>() == std::vector<double>{-2.25, 4.75});
  CHECK(from_vector<double>({0.5, 0.25}, {2}, DType::F16).to_vector<double>() ==
        std::vector<double>{0.5, 0.25});
  CHECK(from_vector<double>({0, 2}, {2}, DType::Bool).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1});

  CHECK(x.select(0, 1).select(0, 1).item<double>() == 4.75);
  CHECK(x.narrow(1, 0, 1).narrow(0, 1, 1).item<float>() == 3.0f);  // one element, 2-d
  CHECK(scalar_tensor(7, DType::I64).item<int64_t>() == 7);
  CHECK(scalar_tensor(1, DType::Bool).item<bool>());
  check_error([&] { (void)x.item<double>(); }, {"item", "[2, 2]", "4 elements"});
  check_error([&] { (void)zeros({0}).item<float>(); }, {"item", "[0]", "0 elements"});

  // data<T>() is the typed host pointer of the first element (offset applied).
  float* p = x.data<float>();
  CHECK(p[3] == 4.75f);
  Tensor row = x.select(0, 1);
  CHECK(row.data<float>()[0] == 3.0f);
  CHECK(row.data<float>() == p + 2);
  check_error([&] { (void)x.data<double>(); }, {"data<T>()", "f32", "f64"});
  check_error([&] { (void)from_vector<int64_t>({1}).data<int32_t>(); }, {"i64", "i32"});
  check_error([&] { (void)zeros({2}, DType::Bool).data<float>(); }, {"bool", "f32"});
  CHECK(zeros({2}, DType::BF16).data<BFloat16>() != nullptr);
  CHECK(zeros({2}, DType::F16).data<Half>() != nullptr);
}

TEST_CASE("dtype: printing is readable for every dtype", "[dtype][print]") {
  Tensor f = from_vector<double>({1, -2.5, 1e-8, 123456789}, {2, 2});
  std::string fs = f.str();
  INFO(fs);
  CHECK(fs.find("tensor([[") == 0);
  CHECK(fs.find("-2.5") != std::string::npos);
  CHECK(fs.find("1e-08") != std::string::npos);
  CHECK(fs.find("1.23457e+08") != std::string::npos);
  CHECK(fs.find("dtype=f64") != std::string::npos);
  CHECK(fs.find("\n") != std::string::npos);  // one row per line

  std::string is = from_vector<int64_t>({3, -10, 7}).str();
  CHECK(is == "tensor([  3, -10,   7], shape=[3], dtype=i64)");
  std::string bs = from_vector<bool>({true, false}).str();
  CHECK(bs == "tensor([ true, false], shape=[2], dtype=bool)");
  std::string hs = from_vector<double>({0.5, 2}, {2}, DType::F16).str();
  CHECK(hs == "tensor([0.5,  2.], shape=[2], dtype=f16)");
  CHECK(from_vector<double>({1.5}, {1}, DType::BF16).str().find("dtype=bf16") != std::string::npos);
  std::string special = from_vector<float>({std::nanf(""), std::numeric_limits<float>::infinity(),
                                            -std::numeric_limits<float>::infinity()})
                            .str();
  CHECK(special.find("nan") != std::string::npos);
  CHECK(special.find("-inf") != std::string::npos);
  CHECK(scalar_tensor(2.5).str() == "tensor(2.5, shape=[], dtype=f32)");
  CHECK(zeros({0, 3}).str() == "tensor([], shape=[0, 3], dtype=f32)");
  CHECK(Tensor().str() == "Tensor(undefined)");
  Tensor leaf_t = ones({2}).requires_grad_();
  CHECK(leaf_t.str().find("requires_grad") != std::string::npos);
  std::ostringstream out;
  out << from_vector<int32_t>({1, 2});
  CHECK(out.str() == "tensor([1, 2], shape=[2], dtype=i32)");
  // A long 1-d tensor is elided to its ends.
  std::string longs = arange(2000).str();
  CHECK(longs.find("2, ..., 1997, 1998, 1999]") != std::string::npos);
  CHECK(longs.size() < 200);
}

TEST_CASE("dtype: names, sizes and dispatch", "[dtype]") {
  CHECK(element_size(DType::F32) == 4);
  CHECK(element_size(DType::F64) == 8);
  CHECK(element_size(DType::F16) == 2);
  CHECK(element_size(DType::BF16) == 2);
  CHECK(element_size(DType::I32) == 4);
  CHECK(element_size(DType::I64) == 8);
  CHECK(element_size(DType::Bool) == 1);
  for (DType t : kAllDTypes) {
    size_t size = dispatch_all(t, "test", [&]<class T>() { return sizeof(T); });
    CHECK(size == element_size(t));
    DType round_trip = dispatch_all(t, "test", [&]<class T>() { return dtype_v<T>; });
    CHECK(round_trip == t);
  }
  CHECK(is_floating(DType::BF16));
  CHECK_FALSE(is_floating(DType::I32));
  CHECK(is_integral(DType::I64));
  CHECK_FALSE(is_integral(DType::Bool));
  check_error([] { dispatch_float(DType::I32, "myop", []<class T>() {}); },
              {"myop", "i32", "f32 or f64"});
  check_error([] { dispatch_numeric(DType::Bool, "otherop", []<class T>() {}); },
              {"otherop", "bool"});
}
