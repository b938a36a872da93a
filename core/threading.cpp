// OpenMP keeps its team size (nthreads-var) per thread: omp_set_num_threads in one thread leaves
// every other thread at OMP_NUM_THREADS or the core count. A program that sets lathe's thread
// count once and then runs models on worker threads (a server) would get full-size teams in each
// worker, oversubscribing the cores. So the count is lathe's own process-wide setting, and each
// thread brings its OpenMP setting up to date before it runs a cpu kernel (sync_num_threads, from
// the cpu kernel table).
#include "lathe/core/threading.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "lathe/core/error.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lathe {

namespace {
// 0 until set: each thread keeps OpenMP's default.
std::atomic<int> g_num_threads{0};

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
  g_num_threads.store(threads, std::memory_order_relaxed);
  detail::sync_num_threads();
}

int get_num_threads() {
#ifdef _OPENMP
  detail::sync_num_threads();
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace detail {
void sync_num_threads() {
#ifdef _OPENMP
  thread_local int applied = 0;
  const int wanted = g_num_threads.load(std::memory_order_relaxed);
  if (wanted != applied) {
    if (wanted > 0) omp_set_num_threads(wanted);
    applied = wanted;
  }
#endif
}
}  // namespace detail

}  // namespace lathe
