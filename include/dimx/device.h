#pragma once
/// \file
/// Where a tensor's storage lives. Ops need all operands on one device; moving is explicit.
#include <string>

namespace dimx {

/// A device: its kind and, for CUDA, the GPU index.
struct Device {
  /// The kind of device: cpu (host memory) or cuda (a CUDA GPU).
  enum class Type { cpu, cuda };
  Type type = Type::cpu;  ///< the kind of device
  int index = 0;          ///< the GPU index (0 for the CPU)

  /// The CPU.
  static Device cpu() { return {}; }
  /// CUDA GPU number `index`.
  static Device cuda(int index = 0) { return {Type::cuda, index}; }
  /// True for the CPU.
  bool is_cpu() const { return type == Type::cpu; }
  /// "cpu", or "cuda:N" with N = index.
  std::string str() const;
  /// Same type and index.
  bool operator==(const Device&) const = default;
};

}  // namespace dimx
