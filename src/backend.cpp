#include "backend.h"

#include <array>

namespace dimx::backend {

Backend& cpu_backend();  // src/cpu/cpu_backend.cpp

namespace {
std::array<Backend*, 2> g_backends{};
}

void register_backend(Device::Type type, Backend* backend) { g_backends[size_t(type)] = backend; }

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
  if (device.index != 0)
    throw Error("no backend for device " + device.str() + ": only cuda:0 is supported so far");
  Backend* b = g_backends[size_t(device.type)];
  if (!b) throw Error("no backend for device " + device.str() + ": dimx was built or loaded without it");
  return *b;
}

}  // namespace dimx::backend
