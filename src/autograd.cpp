#include "autograd.h"

#include <dimx/autocast.h>
#include <dimx/elementwise.h>
#include <dimx/profile.h>
#include <dimx/reduce.h>

#include <algorithm>
#include <atomic>
#include <unordered_map>
#include <unordered_set>

#include "backend.h"
#include "padding.h"

namespace dimx {

namespace {
thread_local bool t_grad_enabled = true;

const AutogradMeta* meta_of(const Tensor& t) { return t.defined() ? t.impl().autograd.get() : nullptr; }

// Grad-ready hooks registered and not yet removed, process-wide: the engine looks for the
// leaves' last uses only while there are any.
std::atomic<int64_t> g_leaf_hooks{0};
std::atomic<uint64_t> g_next_hook_id{1};

struct EndHooks {
  std::mutex mu;
  std::vector<std::pair<uint64_t, std::function<void()>>> list;
};
EndHooks& end_hooks() {
  static EndHooks* h = new EndHooks;  // never destroyed: handles may outlive static destruction
  return *h;
}

bool has_grad_ready_hooks(const AutogradMeta* m) {
  std::lock_guard<std::mutex> lk(m->mu);
  return !m->grad_ready_hooks.empty();
}

void run_grad_ready_hooks(const AutogradMeta* m) {
  std::vector<std::function<void(const Tensor&)>> fns;
  Tensor g;
  {
    std::lock_guard<std::mutex> lk(m->mu);
    for (const auto& [id, fn] : m->grad_ready_hooks) fns.push_back(fn);
    g = m->grad;
  }
  for (const auto& fn : fns) fn(g);
}
}  // namespace

HookHandle register_grad_ready_hook(const Tensor& leaf, std::function<void(const Tensor& grad)> fn) {
  if (!leaf.defined()) throw Error("register_grad_ready_hook: undefined tensor");
  if (!fn) throw Error("register_grad_ready_hook: empty function for " + leaf.str());
  const std::shared_ptr<AutogradMeta>& sm = leaf.impl().autograd;
  if (!sm || !sm->requires_grad) throw Error("register_grad_ready_hook: " + leaf.str() + " does not require grad");
  if (sm->grad_fn)
    throw Error("register_grad_ready_hook: " + leaf.str() + " is not a leaf (it is the output of '" +
                std::string(sm->grad_fn->name) + "')");
  const uint64_t id = g_next_hook_id++;
  {
    std::lock_guard<std::mutex> lk(sm->mu);
    sm->grad_ready_hooks.emplace_back(id, std::move(fn));
  }
  ++g_leaf_hooks;
  std::weak_ptr<AutogradMeta> weak = sm;
  return HookHandle([weak, id] {
    --g_leaf_hooks;
    if (auto m = weak.lock()) {
      std::lock_guard<std::mutex> lk(m->mu);
      std::erase_if(m->grad_ready_hooks, [&](const auto& e) { return e.first == id; });
    }
  });
}

HookHandle register_backward_end_hook(std::function<void()> fn) {
  if (!fn) throw Error("register_backward_end_hook: empty function");
  const uint64_t id = g_next_hook_id++;
  EndHooks& h = end_hooks();
  {
    std::lock_guard<std::mutex> lk(h.mu);
    h.list.emplace_back(id, std::move(fn));
  }
  return HookHandle([id] {
    EndHooks& h = end_hooks();
    std::lock_guard<std::mutex> lk(h.mu);
    std::erase_if(h.list, [&](const auto& e) { return e.first == id; });
  });
}

bool grad_enabled() { return t_grad_enabled; }
NoGradGuard::NoGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = false; }
NoGradGuard::~NoGradGuard() { t_grad_enabled = prev_; }
EnableGradGuard::EnableGradGuard() : prev_(t_grad_enabled) { t_grad_enabled = true; }
EnableGradGuard::~EnableGradGuard() { t_grad_enabled = prev_; }

Node::~Node() {
  // Nodes whose last owner goes away here are parked on a per-thread list and destroyed by
  // the outermost ~Node in a loop, so the depth of the C++ stack never follows the graph.
  thread_local std::vector<std::shared_ptr<Node>> pending;
  thread_local bool draining = false;
  for (const Tensor& in : inputs) {
    const AutogradMeta* m = meta_of(in);
    if (m && m->grad_fn) pending.push_back(m->grad_fn);
  }
  backward = nullptr;  // closures may hold tensors of the graph too
  inputs.clear();
  if (draining) return;
  draining = true;
  while (!pending.empty()) {
    std::shared_ptr<Node> n = std::move(pending.back());
    pending.pop_back();
    n.reset();  // may run ~Node, which parks that node's inputs and returns
  }
  draining = false;
}

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor record(const char* name, const Tensor& out, std::vector<Tensor> inputs, BackwardFn fn,
              AccumulateFn accumulate_into) {
  if (!t_grad_enabled) return out;
  bool any = false;
  for (const Tensor& t : inputs) any = any || (t.defined() && t.requires_grad());
  if (!any) return out;
  auto impl = make_pooled<TensorImpl>(out.impl());
  impl->autograd = std::make_shared<AutogradMeta>();
  impl->autograd->requires_grad = true;
  impl->autograd->grad_fn =
      std::make_shared<Node>(Node{name, std::move(inputs), std::move(fn), std::move(accumulate_into)});
  return Tensor(std::move(impl));
}

bool exclusively_owned(const Tensor& t) {
  return t.defined() && t.impl_ptr().use_count() == 1 && t.impl().storage.use_count() == 1;
}

Tensor sum_to(const Tensor& g, const Tensor& like) {
  Dims extra = minus_dims(g.dims(), like.dims());
  Tensor r = sum_over(g, extra);
  // A Dim of `like` that g lacks (a broadcast source of extent 1 or a constant) gets g as is.
  return broadcast_to_include(r, like.dims());
}

// ---- Tensor's autograd methods

bool Tensor::requires_grad() const {
  const AutogradMeta* m = meta_of(*this);
  return m && m->requires_grad;
}

Tensor Tensor::with_requires_grad(bool on) const {
  auto impl = make_pooled<TensorImpl>(this->impl());
  impl->autograd = nullptr;
  if (on) {
    if (!is_float_like(dtype()))
      throw Error("with_requires_grad: only floating tensors (f32, f64, bf16, f16) can require grad, got " + str());
    impl->autograd = std::make_shared<AutogradMeta>();
    impl->autograd->requires_grad = true;
  }
  return Tensor(std::move(impl));
}

Tensor Tensor::detach() const { return with_requires_grad(false); }

Tensor Tensor::grad() const {
  const AutogradMeta* m = meta_of(*this);
  if (!m) return Tensor();
  std::lock_guard<std::mutex> lk(m->mu);
  return m->grad;
}

void Tensor::set_grad(const Tensor& g) const {
  AutogradMeta* m = impl().autograd.get();
  if (!m) throw Error("set_grad: tensor does not require grad: " + str());
  if (g.defined() && (g.ndim() != ndim() || !contains_all(dims(), g.dims())))
    throw Error("set_grad: gradient " + g.str() + " does not have the Dims of " + str());
  if (g.defined() && (g.dtype() != dtype() || g.device() != device()))
    throw Error("set_grad: gradient " + g.str() + " does not have the dtype and device of " + str());
  std::lock_guard<std::mutex> lk(m->mu);
  m->grad = g;
}

void Tensor::copy_from(const Tensor& src) const {
  const TensorImpl& t = impl();
  if (!src.defined()) throw Error("copy_from: undefined source for " + str());
  if (src.ndim() != t.dims.size() || !contains_all(t.dims, src.dims()))
    throw Error("copy_from: source " + src.str() + " does not have the Dims of " + str());
  if (t.storage->read_only)
    throw Error("copy_from: " + str() + " is read-only (the lengths of a dynamic Dim never change once the Dim exists)");
  Tensor s = src.to(t.device());
  backend::backend_for(t.device())
      .copy(extents(t.dims), s.dtype(), {s.impl().data(), aligned_strides(s.impl(), t.dims)}, t.dtype,
            {t.data(), t.strides});
}

// ---- the engine

namespace {

struct Pass {
  std::vector<Node*> order;  // reverse topological: outputs first
  std::unordered_map<Node*, std::shared_ptr<Node>> keep;
};

Pass topo(const std::shared_ptr<Node>& root) {
  Pass p;
  std::unordered_set<Node*> seen;
  std::vector<std::pair<Node*, size_t>> stack{{root.get(), 0}};
  seen.insert(root.get());
  p.keep[root.get()] = root;
  std::vector<Node*> post;
  while (!stack.empty()) {
    auto& [n, i] = stack.back();
    if (i < n->inputs.size()) {
      const AutogradMeta* m = meta_of(n->inputs[i++]);
      if (m && m->grad_fn && seen.insert(m->grad_fn.get()).second) {
        p.keep[m->grad_fn.get()] = m->grad_fn;
        stack.push_back({m->grad_fn.get(), 0});
      }
      continue;
    }
    post.push_back(n);
    stack.pop_back();
  }
  p.order.assign(post.rbegin(), post.rend());
  return p;
}

Tensor accumulate(const Tensor& acc, const Tensor& g) { return acc.defined() ? add(acc, g) : g; }

// Runs the graph from `output`; calls on_leaf(meta, grad) for each leaf gradient and
// on_node(node, grad) with each node's total gradient.
template <class Leaf, class NodeCb>
void run(const char* op, const Tensor& output, const Tensor& grad_output, bool track_leaves, Leaf&& on_leaf,
         NodeCb&& on_node) {
  if (!output.defined()) throw Error(std::string(op) + ": undefined output");
  const AutogradMeta* om = meta_of(output);
  if (!om || !om->requires_grad)
    throw Error(std::string(op) + ": output " + output.str() + " does not require grad (no input was marked with with_requires_grad())");
  Tensor g0 = grad_output;
  if (!g0.defined()) {
    if (output.numel() != 1)
      throw Error(std::string(op) + ": output " + output.str() + " has more than one element; pass grad_output");
    g0 = Tensor::ones(output.dims(), output.dtype(), output.device());
  } else if (g0.ndim() != output.ndim() || !contains_all(output.dims(), g0.dims())) {
    throw Error(std::string(op) + ": grad_output " + g0.str() + " does not have the Dims of output " + output.str());
  } else if (g0.dtype() != output.dtype() || g0.device() != output.device()) {
    throw Error(std::string(op) + ": grad_output " + g0.str() + " does not have the dtype and device of output " +
                output.str());
  }
  NoGradGuard no_grad;
  AutocastGuard no_autocast(DType::f32, /*enabled=*/false);  // gradients keep the forward's dtypes
  ProfileSection engine("backward");
  if (!om->grad_fn) {
    on_leaf(om, g0);
    if (track_leaves && g_leaf_hooks.load() > 0) run_grad_ready_hooks(om);
    return;
  }
  Pass p = topo(om->grad_fn);
  // Grad-ready hooks: each hooked leaf is final once the last node of the pass that has it as
  // an input has run (or been skipped for lack of a gradient).
  std::vector<std::vector<const AutogradMeta*>> due;
  std::unordered_set<const AutogradMeta*> reached;
  if (track_leaves && g_leaf_hooks.load() > 0) {
    std::unordered_map<const AutogradMeta*, size_t> last;
    for (size_t i = 0; i < p.order.size(); ++i)
      for (const Tensor& in : p.order[i]->inputs) {
        const AutogradMeta* m = meta_of(in);
        if (m && m->requires_grad && !m->grad_fn) last[m] = i;
      }
    due.resize(p.order.size());
    for (const auto& [m, i] : last)
      if (has_grad_ready_hooks(m)) due[i].push_back(m);
  }
  auto node_done = [&](size_t i) {
    if (due.empty()) return;
    for (const AutogradMeta* m : due[i])
      if (reached.count(m)) run_grad_ready_hooks(m);
  };
  std::unordered_map<Node*, Tensor> acc{{om->grad_fn.get(), g0}};
  for (size_t ni = 0; ni < p.order.size(); ++ni) {
    Node* n = p.order[ni];
    auto it = acc.find(n);
    if (it == acc.end()) {
      node_done(ni);
      continue;
    }
    Tensor g = it->second;
    acc.erase(it);
    on_node(n, g);
    if (n->accumulate_into && n->inputs.size() == 1) {
      const AutogradMeta* m = meta_of(n->inputs[0]);
      if (m && m->requires_grad && m->grad_fn) {
        ProfileSection in_node(n->name);
        n->accumulate_into(g, acc[m->grad_fn.get()]);
        node_done(ni);
        continue;
      }
    }
    std::vector<Tensor> grads;
    {
      ProfileSection in_node(n->name);
      grads = n->backward(g);
    }
    for (size_t i = 0; i < n->inputs.size() && i < grads.size(); ++i) {
      const Tensor& in = n->inputs[i];
      const AutogradMeta* m = meta_of(in);
      if (!m || !m->requires_grad || !grads[i].defined()) continue;
      const Tensor& gi = grads[i];
      if (gi.ndim() != in.ndim() || !contains_all(in.dims(), gi.dims()))
        throw Error(std::string(op) + ": internal error: gradient of '" + n->name + "' has Dims " +
                    dims_str(gi.dims()) + " for input " + in.str());
      if (m->grad_fn) {
        acc[m->grad_fn.get()] = accumulate(acc[m->grad_fn.get()], gi);
      } else {
        on_leaf(m, gi);
        if (!due.empty()) reached.insert(m);
      }
    }
    node_done(ni);
  }
}

}  // namespace

void backward(const Tensor& output, const Tensor& grad_output) {
  run("backward", output, grad_output, /*track_leaves=*/true,
      [](const AutogradMeta* m, const Tensor& g) {
        std::lock_guard<std::mutex> lk(m->mu);
        const_cast<AutogradMeta*>(m)->grad = accumulate(m->grad, g);
      },
      [](Node*, const Tensor&) {});
  std::vector<std::function<void()>> fns;
  {
    EndHooks& h = end_hooks();
    std::lock_guard<std::mutex> lk(h.mu);
    for (const auto& [id, fn] : h.list) fns.push_back(fn);
  }
  if (fns.empty()) return;
  NoGradGuard no_grad;
  for (const auto& fn : fns) fn();
}

std::vector<Tensor> grad(const Tensor& output, const std::vector<Tensor>& inputs, const Tensor& grad_output,
                         bool allow_unused) {
  std::unordered_map<const void*, Tensor> found;
  for (const Tensor& in : inputs) {
    const AutogradMeta* m = meta_of(in);
    if (!m || !m->requires_grad) throw Error("grad: input " + in.str() + " does not require grad");
  }
  run("grad", output, grad_output, /*track_leaves=*/false,
      [&](const AutogradMeta* m, const Tensor& g) { found[m] = accumulate(found[m], g); },
      [&](Node* n, const Tensor& g) { found[n] = g; });
  std::vector<Tensor> out;
  for (const Tensor& in : inputs) {
    const AutogradMeta* m = meta_of(in);
    const void* key = m->grad_fn ? static_cast<const void*>(m->grad_fn.get()) : static_cast<const void*>(m);
    auto it = found.find(key);
    if (it == found.end()) {
      if (!allow_unused) throw Error("grad: output " + output.str() + " does not depend on input " + in.str());
      out.emplace_back();
    } else {
      out.push_back(it->second);
    }
  }
  return out;
}

}  // namespace dimx
