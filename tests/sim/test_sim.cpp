// The CUDA simulator's own semantics: barriers, shuffles lane by lane, schedules, and the errors
// that stand in for GPU hangs and undefined behaviour.
#include <catch2/catch.hpp>
#include <numeric>
#include <vector>

#include "kernels/sim/sim_runtime.h"
#include "lathe/core/error.h"
#include "tests/sim/sim_test_kernels.h"

using namespace lathe;
using lathe::sim::Schedule;

namespace {

// Runs fn under a schedule, restoring the previous one afterwards.
template <class F>
void with_schedule(Schedule s, uint64_t seed, F fn) {
  Schedule old = sim::current_schedule();
  uint64_t old_seed = sim::current_seed();
  sim::set_schedule(s, seed);
  try {
    fn();
  } catch (...) {
    sim::set_schedule(old, old_seed);
    throw;
  }
  sim::set_schedule(old, old_seed);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const lathe::Error& e) {
    return e.what();
  }
  return "";
}

const Schedule kAll[] = {Schedule::Forward, Schedule::Reverse, Schedule::Random,
                         Schedule::WarpRandom};

}  // namespace

TEST_CASE("sim: a correct block reduction is bit-identical under every schedule", "[sim]") {
  std::vector<float> in(1000);
  for (size_t i = 0; i < in.size(); ++i) in[i] = 1.0f / float(i + 1);
  double ref = 0;
  for (float v : in) ref += v;
  std::vector<float> first;
  for (Schedule s : kAll) {
    for (uint64_t seed : {1u, 2u}) {
      std::vector<float> out(3, -1.f);
      with_schedule(s, seed, [&] {
        sim_tests::launch_block_sum(in.data(), out.data(), 1000, 3, 256, false);
      });
      double total = double(out[0]) + out[1] + out[2];
      CHECK(total == Approx(ref).epsilon(1e-5));
      if (first.empty()) first = out;
      INFO("schedule " << sim::schedule_name(s));
      CHECK(out == first);
    }
  }
}

TEST_CASE("sim: a missing barrier changes the result under warp-random", "[sim]") {
#if defined(__SANITIZE_THREAD__)
  // Under ThreadSanitizer the planted race is reported instead (the "[.race]" case below).
  return;
#endif
  std::vector<float> in(256);
  for (size_t i = 0; i < in.size(); ++i) in[i] = float(i % 7) + 0.5f;
  float ref = std::accumulate(in.begin(), in.end(), 0.0f);
  bool wrong = false;
  for (uint64_t seed = 1; seed <= 8 && !wrong; ++seed) {
    std::vector<float> out(1, -1.f);
    with_schedule(Schedule::WarpRandom, seed,
                  [&] { sim_tests::launch_block_sum(in.data(), out.data(), 256, 1, 256, true); });
    wrong = out[0] != ref;
  }
  CHECK(wrong);
}

TEST_CASE("sim: shuffles, votes and barrier counts, lane by lane", "[sim]") {
  for (int width : {32, 8}) {
    std::vector<int> out(64 * 8, -1);
    sim_tests::launch_shuffles(out.data(), 64, width);
    for (int t = 0; t < 64; ++t) {
      INFO("thread " << t << " width " << width);
      int lane = t % 32, base = t - lane, group = lane / width * width;
      const int* row = &out[size_t(t) * 8];
      auto value = [&](int l) { return 100 + base + l; };
      CHECK(row[0] == value(group + 3 % width));
      CHECK(row[1] == (lane - group < 2 ? value(lane) : value(lane - 2)));
      CHECK(row[2] == (lane - group + 5 >= width ? value(lane) : value(lane + 5)));
      int x = lane ^ 6;
      CHECK(row[3] == (x >= group + width ? value(lane) : value(x)));
      unsigned ballot = 0;
      for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
      CHECK(unsigned(row[4]) == ballot);
      CHECK(row[5] == 1);
      CHECK(row[6] == 0);
      CHECK(row[7] == 32);
    }
  }
}

TEST_CASE("sim: a shuffle past the end of a partial warp is reported", "[sim]") {
  std::vector<float> in(64, 1.0f);  // the full-warp launch below reads 64 values
  float out = 0;
  sim_tests::launch_warp_sum_full_warps(in.data(), &out, 64);  // full warps: fine
  std::string e = error_of([&] { sim_tests::launch_warp_sum_full_warps(in.data(), &out, 48); });
  INFO(e);
  CHECK(e.find("warp 1 has only 16 threads") != std::string::npos);
}

TEST_CASE("sim: mismatched barriers and deadlocks raise errors naming the block", "[sim]") {
  std::vector<int> out(64, 0);
  std::string e = error_of([&] { sim_tests::launch_mismatched_barriers(out.data()); });
  INFO(e);
  CHECK(e.find("different __syncthreads") != std::string::npos);
  CHECK(e.find("block (0,0,0)") != std::string::npos);
  e = error_of([&] { sim_tests::launch_shuffle_while_others_wait(out.data()); });
  INFO(e);
  CHECK(e.find("deadlock") != std::string::npos);
}

TEST_CASE("sim: dynamic shared memory and atomics", "[sim]") {
  const int n = 1000, bins = 13;
  std::vector<int> values(n);
  for (int i = 0; i < n; ++i) values[size_t(i)] = (i * 7919) % 1000;
  for (Schedule s : kAll) {
    std::vector<int> counts(bins, 0), ref(bins, 0);
    for (int v : values) ++ref[size_t(v % bins)];
    with_schedule(s, 3,
                  [&] { sim_tests::launch_histogram(values.data(), n, bins, counts.data()); });
    CHECK(counts == ref);
  }
}

TEST_CASE("sim: launch limits are enforced", "[sim]") {
  CHECK(error_of([] { sim_tests::launch_with_block(1025, 1, 1, 0); }).find("limit is 1024") !=
        std::string::npos);
  CHECK(error_of([] { sim_tests::launch_with_block(32, 32, 2, 0); }).find("2048 threads") !=
        std::string::npos);
  CHECK(error_of([] {
          sim_tests::launch_with_block(32, 1, 1, 300 * 1024);
        }).find("dynamic shared memory") != std::string::npos);
  CHECK(error_of([] { (void)sim::parse_schedule("sideways"); }).find("sideways") !=
        std::string::npos);
}

// Hidden cases, run as subprocesses by the sanitizer builds (tests/sim/CMakeLists.txt), which
// assert that the sanitizer reports the planted bug.
TEST_CASE("sim: planted race for ThreadSanitizer", "[.race]") {
  std::vector<float> in(256, 1.0f), out(1);
  sim_tests::launch_block_sum(in.data(), out.data(), 256, 1, 256, true);
}

TEST_CASE("sim: planted out-of-bounds read for AddressSanitizer", "[.oob]") {
  std::vector<float> in(8, 1.0f), out(8);
  sim_tests::launch_out_of_bounds_read(in.data(), out.data(), 8);
}
