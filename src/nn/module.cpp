// Non-template helpers of the module machinery (include/dimx/nn/module.h).
#include <dimx/nn/module.h>

#include <set>

#include <cctype>

#include "tensor_impl.h"

namespace dimx::nn::detail {

std::string group_digits(int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out = n < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string unqualified(const std::string& s) {
  static const std::string anon = "(anonymous namespace)";
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "::") == 0) {
      if (out.size() >= anon.size() && out.compare(out.size() - anon.size(), anon.size(), anon) == 0) {
        out.erase(out.size() - anon.size());
      } else {
        while (!out.empty() && (std::isalnum(static_cast<unsigned char>(out.back())) || out.back() == '_'))
          out.pop_back();
      }
      i += 2;
    } else {
      out += s[i++];
    }
  }
  return out;
}

std::string describe_tensor(const Tensor& t) {
  return dims_str(t.dims()) + " " + dtype_name(t.dtype()) + ", " + group_digits(t.numel());
}

LoadReport load_state_bindings(const SafeTensors& file, std::vector<LoadBinding> bindings, bool strict) {
  try {
    return load_into(file, bindings, strict);
  } catch (const Error& e) {
    throw Error(std::string("load_state: ") + e.what());
  }
}

std::vector<LoadBinding> state_bindings(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                        const StateOptions& o, const char* op) {
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) names.insert(name);
  for (const auto& [name, order] : o.layouts)
    if (!names.count(name)) {
      std::string have;
      for (const auto& n : names) have += (have.empty() ? "" : ", ") + n;
      throw Error(std::string(op) + ": a layout is declared for '" + name + "', which the module lacks (its tensors: " +
                  have + ")");
    }
  std::vector<LoadBinding> out;
  std::set<std::string> keys;
  for (const auto& [name, t] : tensors) {
    const std::string key = o.prefix + (o.rename ? o.rename(name) : name);
    if (key.empty()) throw Error(std::string(op) + ": tensor '" + name + "' maps to an empty key");
    if (!keys.insert(key).second)
      throw Error(std::string(op) + ": two tensors map to the key '" + key + "' (the second is '" + name + "')");
    Dims order = t.dims();
    if (auto it = o.layouts.find(name); it != o.layouts.end()) {
      order = it->second;
      if (order.size() != t.ndim() || !contains_all(order, t.dims()))
        throw Error(std::string(op) + ": the layout " + dims_str(order) + " declared for '" + name +
                    "' is not an order of its Dims " + dims_str(t.dims()));
    }
    out.push_back(LoadBinding{key, t, order});
  }
  return out;
}

LoadReport load_state_bindings(const SafeTensors& file, std::vector<LoadBinding> bindings, const StateOptions& o) {
  try {
    return load_into(file, bindings, LoadOptions{o.strict, o.prefix});
  } catch (const Error& e) {
    throw Error(std::string("load_state: ") + e.what());
  }
}

void save_state_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  try {
    save_safetensors(path, tensors, metadata);
  } catch (const Error& e) {
    throw Error(std::string("save_state: ") + e.what());
  }
}

}  // namespace dimx::nn::detail
