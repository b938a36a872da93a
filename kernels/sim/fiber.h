// Stackful fibers for the CUDA simulator: one per simulated CUDA thread. A fiber runs until it
// switches back to the scheduler; switching costs a few nanoseconds with the hand-written x86-64
// switch (callee-saved registers + stack pointer), against ~150 ns for swapcontext, which is kept
// as the portable fallback (other architectures, or LATHE_SIM_UCONTEXT). Stacks are mmap'd with a
// guard page below them and reused across launches.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <vector>

#if !defined(__x86_64__) || defined(LATHE_SIM_UCONTEXT)
#define LATHE_SIM_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace lathe::sim {

class Fiber;
void fiber_entry_trampoline(Fiber* self);

// A fixed-size stack with a PROT_NONE guard page at its low end.
class Stack {
 public:
  explicit Stack(size_t usable_bytes);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* bottom() const { return base_ + guard_; }  // lowest usable address
  size_t size() const { return usable_; }
  // The ThreadSanitizer fiber of whichever simulated thread runs on this stack (null without
  // TSan). It lives as long as the stack: creating one maps and clears a TSan thread state, and
  // doing that for every thread of every launch kept the TSan run in the kernel clearing pages
  // (a small f64 gradient check took 10 minutes). Reuse hides nothing, since the host orders
  // every block after the previous one anyway; stacks of abandoned fibers are dropped
  // (sim_runtime.cpp), and their TSan fibers with them.
  void* tsan_fiber();

 private:
  char* base_ = nullptr;
  size_t guard_ = 0;
  size_t usable_ = 0;
  void* tsan_fiber_ = nullptr;
};

// Stack size per simulated thread: 64 KiB, or 256 KiB under sanitizers (their frames are larger).
size_t fiber_stack_bytes();

// A pool of stacks reused across launches (allocating 1024 stacks per block would dominate).
class StackPool {
 public:
  Stack* get(size_t index);  // grows on demand
  void clear() { stacks_.clear(); }

 private:
  std::vector<std::unique_ptr<Stack>> stacks_;
};

class Fiber {
 public:
  Fiber() = default;
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  // Prepares the fiber to run `entry` on `stack` the first time it is resumed.
  void reset(Stack* stack, std::function<void()> entry);
  // Switches from the scheduler into this fiber; returns when the fiber yields or finishes.
  void resume();
  // Called from inside the running fiber: back to the scheduler.
  void yield();
  bool finished() const { return finished_; }
  // For a fiber abandoned mid-kernel (another thread raised an error): tells ThreadSanitizer that
  // this fiber released `address`, without running it, so the host can acquire its accesses.
  void sanitizer_release(void* address);
  std::exception_ptr error() const { return error_; }

 private:
  static void run(Fiber* self);
#if LATHE_SIM_USE_UCONTEXT
  static void ucontext_entry(unsigned lo, unsigned hi);
  ucontext_t context_{};
  ucontext_t caller_{};
#else
  friend void fiber_entry_trampoline(Fiber* self);
  void* sp_ = nullptr;
  void* caller_sp_ = nullptr;
#endif
  Stack* stack_ = nullptr;
  std::function<void()> entry_;
  bool finished_ = false;
  std::exception_ptr error_;
  // Sanitizer fiber bookkeeping.
  void* asan_fake_stack_ = nullptr;
  const void* caller_stack_bottom_ = nullptr;
  size_t caller_stack_size_ = 0;
  void* tsan_caller_ = nullptr;
};

}  // namespace lathe::sim
