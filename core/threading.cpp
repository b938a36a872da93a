#include "lathe/core/threading.h"

#include <cstdlib>
#include <string>

#include "lathe/core/error.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe {

namespace {
// Applies LATHE_NUM_THREADS once, before the first kernel runs.
struct ThreadsFromEnv {
  ThreadsFromEnv() {
    if (const char* env = std::getenv("LATHE_NUM_THREADS")) {
      char* end = nullptr;
      long n = std::strtol(env, &end, 10);
      if (end != env && *end == '\0' && n > 0) set_num_threads(int(n));
    }
  }
};
const ThreadsFromEnv g_threads_from_env;
}  // namespace

void set_num_threads(int threads) {
  LATHE_CHECK(threads > 0, "set_num_threads: expected a positive count, got ", threads);
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
}

int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace lathe
