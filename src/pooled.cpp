#include "pooled.h"

#include <cstdint>

// Under AddressSanitizer a block on a free list is poisoned, so that a use after free through
// a pooled block is reported as it would be for the system allocator.
#if defined(__SANITIZE_ADDRESS__)
#define DIMX_POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DIMX_POOL_ASAN 1
#endif
#endif
#ifdef DIMX_POOL_ASAN
#include <sanitizer/asan_interface.h>
#define DIMX_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define DIMX_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define DIMX_POISON(p, n) ((void)(p), (void)(n))
#define DIMX_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace dimx::pool {

namespace {

constexpr size_t kGrain = 16, kMax = 1024, kClasses = kMax / kGrain, kKeep = 64;

struct FreeBlock {
  FreeBlock* next;
};

// Trivially constructed, so reaching it costs no initialization check.
struct Lists {
  FreeBlock* head[kClasses];
  uint32_t count[kClasses];
  bool registered;  // the thread's Releaser exists
  bool dead;        // the thread's lists are gone: blocks go back to the system
};
thread_local Lists t_lists;

// Frees the thread's blocks when it ends.
struct Releaser {
  ~Releaser() {
    t_lists.dead = true;
    for (size_t c = 0; c < kClasses; ++c)
      while (FreeBlock* b = t_lists.head[c]) {
        DIMX_UNPOISON(b, (c + 1) * kGrain);
        t_lists.head[c] = b->next;
        ::operator delete(b);
      }
  }
};
thread_local Releaser t_releaser;

size_t class_of(size_t bytes) { return (bytes + kGrain - 1) / kGrain - 1; }

}  // namespace

void* get(size_t bytes) {
  if (bytes <= kMax) {
    Lists& l = t_lists;
    const size_t c = class_of(bytes);
    if (FreeBlock* b = l.head[c]) {
      DIMX_UNPOISON(b, (c + 1) * kGrain);
      l.head[c] = b->next;
      --l.count[c];
      return b;
    }
    return ::operator new((c + 1) * kGrain);
  }
  return ::operator new(bytes);
}

void put(void* p, size_t bytes) noexcept {
  Lists& l = t_lists;
  if (bytes > kMax || l.dead) return ::operator delete(p);
  const size_t c = class_of(bytes);
  if (l.count[c] >= kKeep) return ::operator delete(p);
  if (!l.registered) {
    l.registered = true;
    asm volatile("" : : "r"(&t_releaser));  // constructs it, so that its destructor runs at thread exit
  }
  auto* b = static_cast<FreeBlock*>(p);
  b->next = l.head[c];
  l.head[c] = b;
  ++l.count[c];
  DIMX_POISON(b, (c + 1) * kGrain);
}

}  // namespace dimx::pool
