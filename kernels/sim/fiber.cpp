#include "kernels/sim/fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

#include "lathe/core/error.h"

#if defined(__SANITIZE_ADDRESS__)
#define LATHE_SIM_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(__SANITIZE_THREAD__) || defined(LATHE_SIM_TSAN)
#undef LATHE_SIM_TSAN
#define LATHE_SIM_TSAN 1
#include <sanitizer/tsan_interface.h>
#endif

namespace lathe::sim {

size_t fiber_stack_bytes() {
#if defined(LATHE_SIM_ASAN) || defined(LATHE_SIM_TSAN)
  return 256 * 1024;
#else
  return 64 * 1024;
#endif
}

Stack::Stack(size_t usable_bytes) {
  guard_ = size_t(sysconf(_SC_PAGESIZE));
  usable_ = (usable_bytes + guard_ - 1) / guard_ * guard_;
  void* p =
      mmap(nullptr, usable_ + guard_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  base_ = static_cast<char*>(p);
  mprotect(base_, guard_, PROT_NONE);  // a stack overflow faults instead of corrupting memory
}

Stack::~Stack() {
#if LATHE_SIM_TSAN
  if (tsan_fiber_) __tsan_destroy_fiber(tsan_fiber_);
#endif
#if LATHE_SIM_ASAN
  // A stack dropped with frames still on it (threads abandoned when a kernel threw) keeps their
  // redzone and out-of-scope poison in ASan's shadow; a later mmap at the same addresses would
  // inherit it and report its new frames (seen: the wgmma misuse test's 2 KiB temporary).
  __asan_unpoison_memory_region(base_ + guard_, usable_);
#endif
  munmap(base_, usable_ + guard_);
}

void* Stack::tsan_fiber() {
#if LATHE_SIM_TSAN
  if (!tsan_fiber_) tsan_fiber_ = __tsan_create_fiber(0);
#endif
  return tsan_fiber_;
}

void Fiber::sanitizer_release(void* address) {
#if LATHE_SIM_TSAN
  if (!stack_) return;
  void* current = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(stack_->tsan_fiber(), __tsan_switch_to_fiber_no_sync);
  __tsan_release(address);
  __tsan_switch_to_fiber(current, __tsan_switch_to_fiber_no_sync);
#else
  (void)address;
#endif
}

Stack* StackPool::get(size_t index) {
  while (stacks_.size() <= index) stacks_.push_back(std::make_unique<Stack>(fiber_stack_bytes()));
  return stacks_[index].get();
}

void Fiber::run(Fiber* self) {
#if LATHE_SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &self->caller_stack_bottom_, &self->caller_stack_size_);
#endif
  try {
    self->entry_();
  } catch (...) {
    self->error_ = std::current_exception();
  }
  self->finished_ = true;
  self->yield();  // never resumed again
  std::terminate();
}

#if LATHE_SIM_USE_UCONTEXT

void Fiber::ucontext_entry(unsigned lo, unsigned hi) {
  run(reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo)));
}

void Fiber::reset(Stack* stack, std::function<void()> entry) {
  stack_ = stack;
  entry_ = std::move(entry);
  finished_ = false;
  error_ = nullptr;
  getcontext(&context_);
  context_.uc_stack.ss_sp = stack->bottom();
  context_.uc_stack.ss_size = stack->size();
  context_.uc_link = nullptr;
  uintptr_t self = reinterpret_cast<uintptr_t>(this);
  makecontext(&context_, reinterpret_cast<void (*)()>(&Fiber::ucontext_entry), 2,
              unsigned(self & 0xffffffffu), unsigned(self >> 32));
}

void Fiber::resume() {
  swapcontext(&caller_, &context_);
}
void Fiber::yield() {
  swapcontext(&context_, &caller_);
}

#else  // hand-written x86-64 switch

extern "C" void lathe_sim_switch(void** save_sp, void* load_sp);
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save_sp, loads load_sp and restores the same set from the other stack.
asm(R"(
  .text
  .globl lathe_sim_switch
  .type lathe_sim_switch,@function
lathe_sim_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw 12(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw 12(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size lathe_sim_switch,.-lathe_sim_switch
)");

// First code a new fiber runs: the initial frame put the Fiber* in r12 (restored by the switch).
extern "C" void lathe_sim_fiber_start();
extern "C" void lathe_sim_fiber_run(Fiber* self) {
  fiber_entry_trampoline(self);
}
asm(R"(
  .text
  .globl lathe_sim_fiber_start
  .type lathe_sim_fiber_start,@function
lathe_sim_fiber_start:
  movq %r12, %rdi
  andq $-16, %rsp
  call lathe_sim_fiber_run
  ud2
  .size lathe_sim_fiber_start,.-lathe_sim_fiber_start
)");

void fiber_entry_trampoline(Fiber* self) {
  Fiber::run(self);
}

void Fiber::reset(Stack* stack, std::function<void()> entry) {
  stack_ = stack;
  entry_ = std::move(entry);
  finished_ = false;
  error_ = nullptr;
  // Initial frame, read by the second half of lathe_sim_switch: control words, six callee-saved
  // registers, then the "return address" = the trampoline, with rsp % 16 == 8 at its entry.
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack->bottom()) + stack->size()) & ~uintptr_t(15);
  auto* slots = reinterpret_cast<uint64_t*>(top);
  slots[-1] = 0;  // fake return address of the trampoline (it never returns)
  slots[-2] = reinterpret_cast<uint64_t>(&lathe_sim_fiber_start);
  for (int i = 3; i <= 8; ++i) slots[-i] = 0;    // rbp rbx r12 r13 r14 r15
  slots[-5] = reinterpret_cast<uint64_t>(this);  // r12
  auto* control = reinterpret_cast<uint32_t*>(&slots[-10]);
  control[2] = 0x1F80;  // MXCSR default
  control[3] = 0x037F;  // x87 control word default
  sp_ = &slots[-10];
}

void Fiber::resume() {
#if LATHE_SIM_TSAN
  tsan_caller_ = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(stack_->tsan_fiber(), __tsan_switch_to_fiber_no_sync);
#endif
#if LATHE_SIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stack_->bottom(), stack_->size());
#endif
  lathe_sim_switch(&caller_sp_, sp_);
#if LATHE_SIM_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void Fiber::yield() {
#if LATHE_SIM_TSAN
  __tsan_switch_to_fiber(tsan_caller_, __tsan_switch_to_fiber_no_sync);
#endif
#if LATHE_SIM_ASAN
  __sanitizer_start_switch_fiber(finished_ ? nullptr : &asan_fake_stack_, caller_stack_bottom_,
                                 caller_stack_size_);
#endif
  lathe_sim_switch(&sp_, caller_sp_);
#if LATHE_SIM_ASAN
  __sanitizer_finish_switch_fiber(asan_fake_stack_, &caller_stack_bottom_, &caller_stack_size_);
#endif
}

#endif

}  // namespace lathe::sim
