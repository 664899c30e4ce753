#include "backend.h"

#include "profile.h"

#include <array>
#include <map>
#include <mutex>

namespace dimx::backend {

Backend& cpu_backend();  // src/cpu/cpu_backend.cpp

namespace {
std::mutex g_mu;
std::array<BackendFactory, 2> g_factories{};
std::map<std::pair<int, int>, Backend*> g_instances;  // never freed: tensors may outlive statics
}  // namespace

void register_backend(Device::Type type, BackendFactory factory) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_factories[size_t(type)] = std::move(factory);
}

namespace {
Backend& backend_of(Device device) {
  if (device.is_cpu()) return cpu_backend();
  std::lock_guard<std::mutex> lk(g_mu);
  auto key = std::make_pair(int(device.type), device.index);
  auto it = g_instances.find(key);
  if (it != g_instances.end()) return *it->second;
  const BackendFactory& make = g_factories[size_t(device.type)];
  if (!make) throw Error("no backend for device " + device.str() + ": dimx was built or loaded without it");
  Backend* b = make(device.index);  // throws for an index with no device
  g_instances.emplace(key, b);
  return *b;
}
}  // namespace

Backend& backend_for(Device device) {
  Backend& b = backend_of(device);
  return profile::active() ? profile::wrap(b) : b;
}

}  // namespace dimx::backend
