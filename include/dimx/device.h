#pragma once
/// \file
/// Where a tensor's storage lives. Ops need all operands on one device; moving is explicit.
#include <string>

namespace dimx {

struct Device {
  enum class Type { cpu, cuda };
  Type type = Type::cpu;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int index = 0) { return {Type::cuda, index}; }
  bool is_cpu() const { return type == Type::cpu; }
  std::string str() const;
  bool operator==(const Device&) const = default;
};

}  // namespace dimx
