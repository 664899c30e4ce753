#include "cpu/cpu_backend.h"

#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include <sys/mman.h>

namespace dimx::backend {
Backend& cpu_backend() {
  static cpu::CpuBackend b;
  return b;
}
}  // namespace dimx::backend

namespace dimx::cpu {

namespace {

// Large blocks are cached after release: a fresh mmap'd block costs a page fault per 4 KiB
// on first touch, which would dominate every memory-bound op on big tensors.
class BlockCache {
 public:
  static constexpr size_t kMinCached = size_t(1) << 20;

  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
        return p;
      }
    }
    // aligned_alloc wants a size that is a multiple of the alignment.
    const size_t whole = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, whole);
    if (!p) {
      trim(0);
      p = std::aligned_alloc(kHuge, whole);
    }
#ifdef MADV_HUGEPAGE
    if (p) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
  }

  void put(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lk(mu_);
    if (cached_ + bytes > limit()) {
      std::free(p);
      return;
    }
    free_[bytes].push_back(p);
    cached_ += bytes;
  }

  void trim(size_t keep) {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto& [bytes, blocks] : free_)
      while (cached_ > keep && !blocks.empty()) {
        std::free(blocks.back());
        blocks.pop_back();
        cached_ -= bytes;
      }
  }

 private:
  static constexpr size_t kHuge = size_t(2) << 20;
  static size_t limit() {
    static size_t l = [] {
      const char* env = std::getenv("DIMX_CPU_CACHE_MB");
      return size_t(env ? std::atoll(env) : 1024) << 20;
    }();
    return l;
  }
  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: storages may outlive statics
  return *c;
}

// Small blocks (up to 4 KiB, in 64-byte classes) are kept per thread after release: the
// tensors of small ops are allocated and freed at a high rate, and aligned_alloc costs more
// than the arithmetic on them. A block freed on another thread joins that thread's lists.
class SmallBlocks {
 public:
  static constexpr size_t kMax = 4096, kClass = 64, kKeep = 32;

  ~SmallBlocks() {
    alive_ = false;
    for (auto& f : free_)
      for (void* p : f) std::free(p);
  }
  void* get(size_t rounded) {
    auto& f = free_[rounded / kClass - 1];
    if (!alive_ || f.empty()) return std::aligned_alloc(64, rounded);
    void* p = f.back();
    f.pop_back();
    return p;
  }
  static void put(void* p, size_t rounded);

 private:
  static thread_local bool alive_;
  std::array<std::vector<void*>, kMax / kClass> free_;
};

thread_local bool SmallBlocks::alive_ = true;
thread_local SmallBlocks t_small;

void SmallBlocks::put(void* p, size_t rounded) {
  // After this thread's lists are gone (a tensor released by a later thread_local or static
  // destructor), the block goes back to the system.
  if (!alive_) return std::free(p);
  auto& f = t_small.free_[rounded / kClass - 1];
  if (f.size() < kKeep) f.push_back(p);
  else std::free(p);
}

}  // namespace

std::shared_ptr<Storage> CpuBackend::allocate(size_t bytes) {
  auto s = make_pooled<Storage>();
  s->bytes = bytes;
  s->device = Device::cpu();
  if (bytes >= BlockCache::kMinCached) {
    size_t rounded = (bytes + BlockCache::kMinCached - 1) / BlockCache::kMinCached * BlockCache::kMinCached;
    s->data = cache().get(rounded);
    s->release = [rounded](void* p) { cache().put(p, rounded); };
  } else {
    // 64-byte alignment for full-width vector loads; never a null pointer, even for 0 bytes.
    const size_t rounded = bytes ? (bytes + 63) / 64 * 64 : 64;
    if (rounded <= SmallBlocks::kMax) {
      s->data = t_small.get(rounded);
      s->release = [rounded](void* p) { SmallBlocks::put(p, rounded); };
    } else {
      s->data = std::aligned_alloc(64, rounded);
      s->release = [](void* p) { std::free(p); };
    }
  }
  if (!s->data) {
    s->release = nullptr;
    throw Error("cpu allocate: out of memory allocating " + std::to_string(bytes) + " bytes");
  }
  return s;
}

void CpuBackend::copy_from_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

}  // namespace dimx::cpu
