#pragma once
// make_pooled<T>(args...): std::make_shared whose block (control block and T together) comes
// from a per-thread free list of its size instead of the system allocator. Every op makes a
// TensorImpl and a Storage and frees them again; on tiny tensors the system allocator's
// malloc/free pair costs more than the op's arithmetic. A block freed on another thread joins
// that thread's list; each list keeps a bounded number of blocks and frees the rest.
#include <cstddef>
#include <memory>
#include <new>

namespace dimx {

namespace pool {

void* get(size_t bytes);
void put(void* p, size_t bytes) noexcept;

// A stateless allocator over get/put, for std::allocate_shared.
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(size_t n) {
    return n == 1 ? static_cast<T*>(get(sizeof(T))) : static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n == 1) put(p, sizeof(T));
    else ::operator delete(p);
  }
  template <class U>
  bool operator==(const Allocator<U>&) const noexcept { return true; }
};

}  // namespace pool

template <class T, class... Args>
std::shared_ptr<T> make_pooled(Args&&... args) {
  return std::allocate_shared<T>(pool::Allocator<T>(), std::forward<Args>(args)...);
}

}  // namespace dimx
