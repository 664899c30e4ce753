#include "backend.h"

#include <dimx/gpu/runtime.h>

#include <array>
#include <map>
#include <mutex>

#include <dlfcn.h>

#include "profile.h"

namespace dimx::backend {

Backend& cpu_backend();  // src/cpu/cpu_backend.cpp

void Backend::binary_widening(BinaryOp op, DType a_dt, DType b_dt, const Shape& shape, const In& a, const In& b,
                              const Out& y) {
  // The half operand widened into a dense f32 buffer of its own elements (its broadcast axes
  // stay broadcast: stride 0).
  const bool a_half = a_dt != DType::f32;
  const In& h = a_half ? a : b;
  Shape own(shape.size(), 1);
  Strides dense(shape.size(), 0);
  int64_t n = 1;
  for (size_t i = shape.size(); i-- > 0;)
    if (h.strides[i] != 0) {
      own[i] = shape[i];
      dense[i] = n;
      n *= shape[i];
    }
  std::shared_ptr<Storage> buf = allocate(size_t(n) * sizeof(float));
  copy(own, a_half ? a_dt : b_dt, h, DType::f32, {buf->data, dense});
  const In w{buf->data, dense};
  binary(op, DType::f32, shape, a_half ? w : a, a_half ? b : w, y);
}

namespace {
std::mutex g_mu;
std::array<BackendFactory, 2> g_factories{};
std::array<std::optional<DeviceLayer>, 2> g_layers{};
std::map<std::pair<int, int>, Backend*> g_instances;  // never freed: tensors may outlive statics

// Loads the CUDA layer (libdimx_cuda) where the program was not linked with it: first next to
// libdimx itself (an install or a build tree), then by the loader's search path. Its static
// initializers register the backend and the device layer. Tried once; the outcome is kept.
const std::string& load_cuda_layer() {
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    {
      std::lock_guard<std::mutex> lk(g_mu);
      if (g_factories[size_t(Device::Type::cuda)]) return;  // linked in
    }
    std::vector<std::string> candidates;
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&load_cuda_layer), &info) && info.dli_fname) {
      std::string self = info.dli_fname;
      const size_t slash = self.rfind('/');
      if (slash != std::string::npos) candidates.push_back(self.substr(0, slash + 1) + "libdimx_cuda.so.0");
    }
    candidates.push_back("libdimx_cuda.so.0");
    std::string tried;
    for (const std::string& c : candidates) {
      if (dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL)) {
        error.clear();
        return;
      }
      const char* e = dlerror();
      tried += (tried.empty() ? "" : "; ") + std::string(e ? e : c);
    }
    error = "the CUDA layer libdimx_cuda could not be loaded (" + tried +
            "): dimx was built without it (DIMX_WITH_CUDA=OFF), or it is not installed next to libdimx";
  });
  return error;
}

void ensure_layer(Device::Type type) {
  if (type == Device::Type::cuda) load_cuda_layer();
}
}  // namespace

void register_backend(Device::Type type, BackendFactory factory) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_factories[size_t(type)] = std::move(factory);
}

void register_device_layer(Device::Type type, DeviceLayer layer) {
  std::lock_guard<std::mutex> lk(g_mu);
  g_layers[size_t(type)] = std::move(layer);
}

const DeviceLayer* device_layer(Device::Type type, std::string* why) {
  ensure_layer(type);
  std::lock_guard<std::mutex> lk(g_mu);
  const auto& l = g_layers[size_t(type)];
  if (!l && why) *why = type == Device::Type::cuda ? load_cuda_layer() : "no such device layer";
  return l ? &*l : nullptr;
}

namespace {
Backend& backend_of(Device device) {
  if (device.is_cpu()) return cpu_backend();
  ensure_layer(device.type);
  std::lock_guard<std::mutex> lk(g_mu);
  auto key = std::make_pair(int(device.type), device.index);
  auto it = g_instances.find(key);
  if (it != g_instances.end()) return *it->second;
  const BackendFactory& make = g_factories[size_t(device.type)];
  if (!make) {
    std::string why = device.type == Device::Type::cuda ? load_cuda_layer() : std::string();
    throw Error("no backend for device " + device.str() + (why.empty() ? ": dimx was built or loaded without it" : ": " + why));
  }
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

namespace dimx::gpu {

int device_count() {
  const backend::DeviceLayer* l = backend::device_layer(Device::Type::cuda);
  return l ? l->device_count() : 0;
}

std::string device_name(int index) {
  std::string why;
  const backend::DeviceLayer* l = backend::device_layer(Device::Type::cuda, &why);
  if (!l) throw Error("device_name: " + why);
  return l->device_name(index);
}

bool cuda_layer_available(std::string* why) { return backend::device_layer(Device::Type::cuda, why) != nullptr; }

void synchronize(int index) { backend::backend_for(Device::cuda(index)).synchronize(); }

namespace {
const backend::DeviceLayer& layer_for(const char* op, int index) {
  std::string why;
  const backend::DeviceLayer* l = backend::device_layer(Device::Type::cuda, &why);
  if (!l) throw Error(std::string(op) + ": " + why);
  const int n = l->device_count();
  if (index < 0 || index >= n)
    throw Error(std::string(op) + ": no device cuda:" + std::to_string(index) + " (" + std::to_string(n) +
                " CUDA device" + (n == 1 ? "" : "s") + ")");
  return *l;
}
}  // namespace

void* stream(int index) {
  layer_for("gpu::stream", index);
  return backend::backend_for(Device::cuda(index)).native_stream();
}

MemoryStats memory_stats(int index) {
  const backend::DeviceLayer& l = layer_for("memory_stats", index);
  synchronize(index);
  const std::array<size_t, 3> b = l.pool_bytes(index);
  return {b[0], b[1], b[2]};
}

void reset_peak_memory(int index) {
  const backend::DeviceLayer& l = layer_for("reset_peak_memory", index);
  synchronize(index);
  l.reset_pool_peak(index);
}

}  // namespace dimx::gpu
