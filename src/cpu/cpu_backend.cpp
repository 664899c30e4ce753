#include "cpu/cpu_backend.h"

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

}  // namespace

std::shared_ptr<Storage> CpuBackend::allocate(size_t bytes) {
  auto s = std::make_shared<Storage>();
  s->bytes = bytes;
  s->device = Device::cpu();
  if (bytes >= BlockCache::kMinCached) {
    size_t rounded = (bytes + BlockCache::kMinCached - 1) / BlockCache::kMinCached * BlockCache::kMinCached;
    s->data = cache().get(rounded);
    s->release = [rounded](void* p) { cache().put(p, rounded); };
  } else {
    // 64-byte alignment for full-width vector loads; never a null pointer, even for 0 bytes.
    s->data = std::aligned_alloc(64, bytes ? (bytes + 63) / 64 * 64 : 64);
    s->release = [](void* p) { std::free(p); };
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
