// Per-thread recording and replay of Philox reservations, for re-running a block of ops with the
// random numbers its first run drew (activation checkpointing). The global generator is shared by
// every thread, so "set the generator back to where the block started" is wrong once another
// thread draws: the block's first-run reservations need not be contiguous, and moving the global
// state under another thread hands it numbers already used. Instead the first run records the
// reservations its own thread made, and the re-run is served those, in order, without touching
// the global generator.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lathe/core/random.h"

namespace lathe::detail {

// One reservation: what philox_reserve returned and how many values it covered.
struct PhiloxDraw {
  PhiloxState state;
  int64_t numel = 0;
};

// Records every reservation of the calling thread while alive, whether the global generator or a
// replay served it (nested recorders each see all of them). Stack-scoped only.
class PhiloxRecorder {
 public:
  PhiloxRecorder();
  ~PhiloxRecorder();
  PhiloxRecorder(const PhiloxRecorder&) = delete;
  PhiloxRecorder& operator=(const PhiloxRecorder&) = delete;
  std::vector<PhiloxDraw> take() { return std::move(draws_); }
  void add(const PhiloxDraw& draw) { draws_.push_back(draw); }

 private:
  std::vector<PhiloxDraw> draws_;
};

// While alive, the calling thread's philox_reserve calls are answered from `draws` in order (the
// innermost replay answers). A reservation of another size than recorded, or one past the end, is
// a lathe::Error naming `what`. Stack-scoped only.
class PhiloxReplay {
 public:
  PhiloxReplay(const std::vector<PhiloxDraw>& draws, std::string what);
  ~PhiloxReplay();
  PhiloxReplay(const PhiloxReplay&) = delete;
  PhiloxReplay& operator=(const PhiloxReplay&) = delete;
  // Throws, like a draw past the end, unless every recorded draw was asked for.
  void check_all_served() const;
  // The next recorded draw, which must cover `numel` values (philox_reserve's answer).
  PhiloxState serve(int64_t numel);

 private:
  const std::vector<PhiloxDraw>& draws_;
  std::string what_;
  size_t next_ = 0;
};

}  // namespace lathe::detail
