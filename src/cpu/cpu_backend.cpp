#include "cpu/cpu_backend.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace dimx::backend {
Backend& cpu_backend() {
  static cpu::CpuBackend b;
  return b;
}
}  // namespace dimx::backend

namespace dimx::cpu {

std::shared_ptr<Storage> CpuBackend::allocate(size_t bytes) {
  auto s = std::make_shared<Storage>();
  // 64-byte alignment for full-width vector loads; never a null pointer, even for 0 bytes.
  size_t rounded = (bytes + 63) / 64 * 64;
  s->data = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!s->data) throw Error("cpu allocate: out of memory allocating " + std::to_string(bytes) + " bytes");
  s->bytes = bytes;
  s->device = Device::cpu();
  s->release = [](void* p) { std::free(p); };
  return s;
}

void CpuBackend::copy_from_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void CpuBackend::copy_to_host(void* dst, const void* src, size_t bytes) {
  if (bytes) std::memcpy(dst, src, bytes);
}

}  // namespace dimx::cpu
