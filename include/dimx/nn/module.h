#pragma once
/// \file
/// Modules: plain structs whose parameters and submodules are reflected with Boost.Hana.
///
///   struct Block : dimx::nn::Module {
///     Dim feature;                                   // not reflected: Dims, hyper-parameters
///     BOOST_HANA_DEFINE_STRUCT(Block,
///       (LayerNorm, norm),                           // a submodule
///       (Linear, ffn),
///       (std::vector<Linear>, layers),               // indexed names: layers.0.weight, ...
///       (std::optional<Tensor>, scale));             // skipped while empty
///     Block(Dim f, Generator& gen) : feature(f), norm(f), ffn(f, f, gen) {}
///   };
///
/// The reflected members may be: Tensor (a parameter, or a buffer if it does not require
/// grad), a module (any struct deriving from Module and/or reflected with
/// BOOST_HANA_DEFINE_STRUCT), and std::optional, std::vector, std::array or std::variant of
/// these, nested (a variant is named as its active alternative: the member's name, no index).
/// Anything else in the reflected list is a compile error.
/// Members declared outside the macro are invisible to the functions below.
///
/// Names follow PyTorch's state_dict: member names joined by '.', vector/array elements by
/// their index ("layers.2.ffn.weight"). A parameter reached twice through copies of the same
/// Tensor handle (tied weights) is listed once, under its first name.
///
/// Functions (all recursive, no registration code needed):
///   named_tensors(m)         [(name, Tensor*)] in declaration order: parameters and buffers
///   named_parameters(m)      the same for the tensors that require grad (the parameters)
///   parameters(m)            [Tensor*]
///   num_parameters(m)        total number of elements
///   train(m, on) / eval(m)   set Module::training on m and every submodule
///   to(m, device)            move every parameter to a device (ties kept)
///   reset_parameters(m, gen) calls each (sub)module's own `reset_parameters(Generator&)`
///                            member, children before their parent (so a parent's custom
///                            init of a child's weights wins)
///   describe(m)              multi-line printout: module tree, parameters with Dims, total
///   save_state(m, path)      safetensors file with every parameter under its name, each
///                            row-major in the parameter's own Dim order
///   load_state(m, file|path, strict)
///                            copies each file tensor into the parameter of the same name
///                            (in place: identity, grad and optimizer state are kept), the
///                            file's row-major shape read in the parameter's own Dim order
///                            (so PyTorch's [out, in] weights map onto Linear's {out, in}),
///                            converted to the parameter's dtype. strict: one dimx::Error
///                            naming every missing, unexpected and mis-shaped key, and nothing
///                            is loaded; not strict: loads what fits, returns the rest.
///   load_state(m, file|path, StateOptions) / save_state(m, path, StateOptions)
///                            the same with a key prefix, a renaming, file layouts declared
///                            per tensor by Dims, and a Strictness (see StateOptions).
#include <dimx/error.h>
#include <dimx/io.h>
#include <dimx/random.h>
#include <dimx/tensor.h>

#include <boost/core/demangle.hpp>
#include <boost/hana/accessors.hpp>
#include <boost/hana/concept/struct.hpp>
#include <boost/hana/define_struct.hpp>
#include <boost/hana/first.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/second.hpp>
#include <boost/hana/string.hpp>

#include <array>
#include <functional>
#include <map>
#include <cstdint>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <unordered_set>
#include <utility>
#include <variant>
#include <vector>

namespace dimx::nn {

/// Base of every module. `training` is not a parameter and is never reflected.
struct Module {
  bool training = true;  ///< training mode (true) or evaluation mode; set by train() and eval()
};

/// How a module's tensors map onto a file's keys and layouts (load_state / save_state):
///   key of tensor `name` = prefix + rename(name)   (rename unset: the name itself)
///   layouts[name]        the file's row-major order of that tensor's Dims (unset: the
///                        tensor's own order), e.g. {in, out} for RETURNN's [in, out] weights
///   strict               exact: every tensor found with the right shape and no other key
///                        under the prefix; module: every tensor found with the right shape
///                        (other keys, under the prefix or not, are only reported); none:
///                        load what fits, report the rest. Keys outside the prefix are never
///                        reported.
struct StateOptions {
  std::string prefix;                                     ///< prepended to every key
  std::function<std::string(const std::string&)> rename;  ///< tensor name -> key without the prefix
  std::map<std::string, Dims> layouts;                    ///< file Dim order per tensor name
  Strictness strict = Strictness::exact;                  ///< which problems make a load fail
};

namespace detail {

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

template <class T>
struct is_vector : std::false_type {};
template <class T, class A>
struct is_vector<std::vector<T, A>> : std::true_type {};

template <class T>
struct is_variant : std::false_type {};
template <class... T>
struct is_variant<std::variant<T...>> : std::true_type {};

template <class T>
struct is_array : std::false_type {};
template <class T, size_t N>
struct is_array<std::array<T, N>> : std::true_type {};

template <class T>
inline constexpr bool is_reflected_v = boost::hana::Struct<T>::value;

template <class T>
inline constexpr bool is_module_v = std::is_base_of_v<Module, T> || is_reflected_v<T>;

template <class T>
inline constexpr bool always_false_v = false;

inline std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

/// Visits every node reachable from `x` (which may be const). `on_tensor(name, Tensor&)` for
/// each defined Tensor; `on_module(name, M&, depth)` for each module before its children and
/// `after_module(name, M&, depth)` after them.
template <class T, class OnTensor, class OnModule, class AfterModule>
void visit(T& x, const std::string& name, int depth, OnTensor&& on_tensor, OnModule&& on_module,
           AfterModule&& after_module) {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, Tensor>) {
    if (x.defined()) on_tensor(name, x);
  } else if constexpr (is_optional<U>::value) {
    if (x.has_value()) visit(*x, name, depth, on_tensor, on_module, after_module);
  } else if constexpr (is_variant<U>::value) {
    std::visit([&](auto& alt) { visit(alt, name, depth, on_tensor, on_module, after_module); }, x);
  } else if constexpr (is_vector<U>::value || is_array<U>::value) {
    for (size_t i = 0; i < x.size(); ++i)
      visit(x[i], join(name, std::to_string(i)), depth, on_tensor, on_module, after_module);
  } else if constexpr (is_module_v<U>) {
    on_module(name, x, depth);
    if constexpr (is_reflected_v<U>) {
      boost::hana::for_each(boost::hana::accessors<U>(), [&](auto pair) {
        auto& member = boost::hana::second(pair)(x);
        std::string member_name = boost::hana::to<const char*>(boost::hana::first(pair));
        visit(member, join(name, member_name), depth + 1, on_tensor, on_module, after_module);
      });
    }
    after_module(name, x, depth);
  } else {
    static_assert(always_false_v<U>,
                  "dimx::nn: a reflected member must be a Tensor, a module (derived from dimx::nn::Module "
                  "or reflected with BOOST_HANA_DEFINE_STRUCT), or std::optional / std::vector / std::array "
                  "of these; declare other members outside BOOST_HANA_DEFINE_STRUCT");
  }
}

struct Ignore {
  template <class... A>
  void operator()(A&&...) const {}
};

/// Module type name without namespace qualifications ("Linear", "Block<float>").
std::string unqualified(const std::string& demangled);
template <class T>
std::string type_name() {
  return unqualified(boost::core::demangle(typeid(T).name()));
}

template <class T>
concept HasResetParameters = requires(T& t, Generator& g) { t.reset_parameters(g); };

template <class T>
concept HasExtraRepr = requires(const T& t) {
  { t.extra_repr() } -> std::convertible_to<std::string>;
};

std::string describe_tensor(const Tensor& t);  ///< "{out:4, in:8} f32, 32"
std::string group_digits(int64_t n);           ///< 12345 -> "12,345"
LoadReport load_state_bindings(const SafeTensors& file, std::vector<LoadBinding> bindings, bool strict);
/// The bindings of (name, tensor) pairs under `o` (checks that every layout names a tensor and
/// is a permutation of its Dims).
std::vector<LoadBinding> state_bindings(const std::vector<std::pair<std::string, Tensor>>& tensors,
                                        const StateOptions& o, const char* op);
LoadReport load_state_bindings(const SafeTensors& file, std::vector<LoadBinding> bindings, const StateOptions& o);
void save_state_tensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata);

}  // namespace detail

/// (name, tensor) for every reflected tensor in declaration order: the parameters and the
/// buffers (tensors that do not require grad, such as a constant table a checkpoint carries).
/// Copies of one Tensor handle appear once (first name) unless remove_duplicate is false.
/// Pointers stay valid while the module is not resized. save_state, load_state and to use it.
template <class M>
auto named_tensors(M& m, bool remove_duplicate = true) {
  using Ptr = std::conditional_t<std::is_const_v<M>, const Tensor*, Tensor*>;
  std::vector<std::pair<std::string, Ptr>> out;
  std::unordered_set<const void*> seen;
  detail::visit(
      m, "", 0,
      [&](const std::string& name, auto& t) {
        if (!remove_duplicate || seen.insert(t.impl_ptr().get()).second) out.emplace_back(name, &t);
      },
      detail::Ignore{}, detail::Ignore{});
  return out;
}

/// (name, parameter): the tensors that require grad (what an optimizer updates), in
/// declaration order, each once unless remove_duplicate is false.
template <class M>
auto named_parameters(M& m, bool remove_duplicate = true) {
  auto all = named_tensors(m, remove_duplicate);
  decltype(all) out;
  for (auto& e : all)
    if (e.second->requires_grad()) out.push_back(e);
  return out;
}

/// The pointers of named_parameters(m), without the names.
template <class M>
auto parameters(M& m) {
  using Ptr = std::conditional_t<std::is_const_v<M>, const Tensor*, Tensor*>;
  std::vector<Ptr> out;
  for (auto& [name, p] : named_parameters(m)) out.push_back(p);
  return out;
}

/// Total number of elements over all (distinct) parameters.
template <class M>
int64_t num_parameters(const M& m) {
  int64_t n = 0;
  for (const auto& [name, p] : named_parameters(m)) n += p->numel();
  return n;
}

/// Sets `training` on m and every submodule.
template <class M>
void train(M& m, bool on = true) {
  detail::visit(
      m, "", 0, detail::Ignore{},
      [&](const std::string&, auto& mod, int) {
        if constexpr (std::is_base_of_v<Module, std::remove_cvref_t<decltype(mod)>>) mod.training = on;
      },
      detail::Ignore{});
}

/// Moves every parameter to `device` (fresh leaves with the same requires_grad; gradients are
/// dropped). Tied parameters stay tied. Pointers from named_parameters stay valid, so build
/// optimizers after the move or keep using the same ones.
template <class M>
void to(M& m, Device device) {
  std::map<const void*, Tensor> moved;
  for (auto& [name, p] : named_tensors(m, /*remove_duplicate=*/false)) {
    const void* key = p->impl_ptr().get();
    auto it = moved.find(key);
    if (it == moved.end())
      it = moved.emplace(key, p->to(device).detach().with_requires_grad(p->requires_grad())).first;
    *p = it->second;
  }
}

/// train(m, false): sets `training` to false on m and every submodule.
template <class M>
void eval(M& m) {
  train(m, false);
}

/// Calls reset_parameters(gen) on every (sub)module that has it, children before parents.
template <class M>
void reset_parameters(M& m, Generator& gen) {
  detail::visit(m, "", 0, detail::Ignore{}, detail::Ignore{}, [&](const std::string&, auto& mod, int) {
    if constexpr (detail::HasResetParameters<std::remove_cvref_t<decltype(mod)>>) mod.reset_parameters(gen);
  });
}

/// A readable printout:
///   Block [train]
///     norm: LayerNorm(feature=feature:16, eps=1e-05, affine=true)
///       norm.weight  {feature:16} f32, 16
///     ...
///   total: 1,234 parameters in 5 tensors
template <class M>
std::string describe(const M& m) {
  std::ostringstream os;
  std::unordered_set<const void*> seen;
  int64_t total = 0;
  size_t count = 0;
  detail::visit(
      m, "", 0,
      [&](const std::string&, const Tensor& t) {
        /// Parameters are printed by their module (below); here only the totals.
        if (seen.insert(t.impl_ptr().get()).second) {
          total += t.numel();
          ++count;
        }
      },
      [&](const std::string& name, const auto& mod, int depth) {
        using T = std::remove_cvref_t<decltype(mod)>;
        os << std::string(2 * depth, ' ');
        if (!name.empty()) os << name << ": ";
        os << detail::type_name<T>();
        if constexpr (detail::HasExtraRepr<T>) os << "(" << std::string(mod.extra_repr()) << ")";
        if constexpr (std::is_base_of_v<Module, T>) {
          if (depth == 0) os << (mod.training ? " [train]" : " [eval]");
        }
        os << "\n";
        /// The module's own parameters (direct Tensor members, also inside optionals/vectors).
        if constexpr (detail::is_reflected_v<T>) {
          boost::hana::for_each(boost::hana::accessors<T>(), [&](auto pair) {
            const auto& member = boost::hana::second(pair)(mod);
            std::string member_name = boost::hana::to<const char*>(boost::hana::first(pair));
            auto print = [&](const std::string& pname, const Tensor& t) {
              os << std::string(2 * depth + 2, ' ') << detail::join(name, pname) << "  " << detail::describe_tensor(t)
                 << (t.requires_grad() ? "" : " (no grad)") << "\n";
            };
            using Mem = std::remove_cvref_t<decltype(member)>;
            if constexpr (std::is_same_v<Mem, Tensor>) {
              if (member.defined()) print(member_name, member);
            } else if constexpr (std::is_same_v<Mem, std::optional<Tensor>>) {
              if (member && member->defined()) print(member_name, *member);
            } else if constexpr (std::is_same_v<Mem, std::vector<Tensor>>) {
              for (size_t i = 0; i < member.size(); ++i)
                if (member[i].defined()) print(member_name + "." + std::to_string(i), member[i]);
            }
          });
        }
      },
      detail::Ignore{});
  os << "total: " << detail::group_digits(total) << " parameters in " << count << " tensors\n";
  return os.str();
}

/// Writes every parameter under its name (see the top of this file).
template <class M>
void save_state(const M& m, const std::string& path, const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, p] : named_tensors(m)) tensors.emplace_back(name, *p);
  detail::save_state_tensors(path, tensors, metadata);
}

/// Loads parameters by name (see the top of this file). Returns what was loaded and, when not
/// strict, what was missing, unexpected or mis-shaped.
template <class M>
LoadReport load_state(M& m, const SafeTensors& file, bool strict = true) {
  std::vector<LoadBinding> bindings;
  for (const auto& [name, p] : named_tensors(m)) bindings.push_back(LoadBinding{name, *p, p->dims()});
  return detail::load_state_bindings(file, std::move(bindings), strict);
}

/// Opens the safetensors file at `path` and loads from it as above.
template <class M>
LoadReport load_state(M& m, const std::string& path, bool strict = true) {
  return load_state(m, SafeTensors::open(path), strict);
}

/// Loads parameters and buffers under a prefix, renamed, in declared layouts (StateOptions).
template <class M>
LoadReport load_state(M& m, const SafeTensors& file, const StateOptions& options) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, p] : named_tensors(m)) tensors.emplace_back(name, *p);
  return detail::load_state_bindings(file, detail::state_bindings(tensors, options, "load_state"), options);
}

/// Opens the safetensors file at `path` and loads from it as above.
template <class M>
LoadReport load_state(M& m, const std::string& path, const StateOptions& options) {
  return load_state(m, SafeTensors::open(path), options);
}

/// Writes parameters and buffers under a prefix, renamed, in declared layouts (options.strict
/// is not used).
template <class M>
void save_state(const M& m, const std::string& path, const StateOptions& options,
                const std::map<std::string, std::string>& metadata = {}) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, p] : named_tensors(m)) tensors.emplace_back(name, *p);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const LoadBinding& b : detail::state_bindings(tensors, options, "save_state"))
    out.emplace_back(b.key, b.target.transpose_to(b.file_order));
  detail::save_state_tensors(path, out, metadata);
}

}  // namespace dimx::nn
