// Non-template helpers of the module machinery (include/dimx/nn/module.h).
#include <dimx/nn/module.h>

#include <cctype>

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

void save_state_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  try {
    save_safetensors(path, tensors, metadata);
  } catch (const Error& e) {
    throw Error(std::string("save_state: ") + e.what());
  }
}

}  // namespace dimx::nn::detail
