#include "lathe/core/matmul_precision.h"

#include <atomic>
#include <cstdlib>

#include "lathe/core/error.h"

namespace lathe {

namespace {

MatmulPrecision parse(const std::string& text, const char* source) {
  if (text == "highest") return MatmulPrecision::Highest;
  if (text == "high") return MatmulPrecision::High;
  LATHE_FAIL(source, ": unknown f32 matmul precision '", text,
             "' (expected 'highest' for full f32 or 'high' for TF32 on the cuda device)");
}

MatmulPrecision from_env() {
  const char* env = std::getenv("LATHE_FLOAT32_MATMUL_PRECISION");
  return env == nullptr ? MatmulPrecision::Highest : parse(env, "LATHE_FLOAT32_MATMUL_PRECISION");
}

// Initialised on first use (as determinism.cpp's flag), so a setting made before main is not
// overwritten by the environment afterwards.
std::atomic<MatmulPrecision>& setting() {
  static std::atomic<MatmulPrecision> precision{from_env()};
  return precision;
}

}  // namespace

void set_float32_matmul_precision(MatmulPrecision precision) {
  setting().store(precision, std::memory_order_relaxed);
}

void set_float32_matmul_precision(const std::string& precision) {
  set_float32_matmul_precision(parse(precision, "set_float32_matmul_precision"));
}

MatmulPrecision float32_matmul_precision() {
  return setting().load(std::memory_order_relaxed);
}

const char* matmul_precision_name(MatmulPrecision precision) {
  return precision == MatmulPrecision::High ? "high" : "highest";
}

}  // namespace lathe
