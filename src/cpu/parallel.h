#pragma once
// A small persistent thread pool for the CPU backend. Workers sleep between calls (no
// spinning), so they never compete with OpenBLAS's own threads during a GEMM.
#include <concepts>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace dimx::cpu {

// A non-owning reference to a callable fn(begin, end): passing a lambda allocates nothing.
// The callable must outlive the call it is passed to (parallel_for blocks until done).
class RangeFn {
 public:
  template <class F>
    requires(!std::same_as<std::remove_cvref_t<F>, RangeFn>)
  RangeFn(F&& f)  // NOLINT: implicit, as std::function
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(o))(b, e); }) {}
  void operator()(int64_t b, int64_t e) const { call_(obj_, b, e); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t);
};

int num_threads();
// Runs fn(begin, end) over [0, n) split into contiguous chunks, in parallel when n >= grain.
// Nested calls and calls while the pool is busy run serially on the caller.
void parallel_for(int64_t n, int64_t grain, RangeFn fn);

}  // namespace dimx::cpu
