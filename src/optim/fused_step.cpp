#include "optim/fused_step.h"

#include "tensor_impl.h"

namespace dimx::optim::detail {

std::vector<Optimizer::Update> fused_step(
    const std::vector<Optimizer::Update>& updates, backend::OptimStep a, const std::vector<std::string>& buffers,
    const std::function<void(const Optimizer::Update&, backend::OptimStep::Item&)>& item) {
  struct Group {
    Device device;
    DType dtype;
    backend::OptimStep step;
    std::vector<Tensor> grads;  // alive until the step is issued
  };
  std::vector<Group> groups;
  std::vector<Optimizer::Update> rest;
  for (const Optimizer::Update& u : updates) {
    const Tensor& p = *u.param;
    if ((p.dtype() != DType::f32 && p.dtype() != DType::f64) || !p.is_contiguous()) {
      rest.push_back(u);
      continue;
    }
    Group* g = nullptr;
    for (Group& x : groups)
      if (x.device == p.device() && x.dtype == p.dtype()) g = &x;
    if (!g) g = &groups.emplace_back(Group{p.device(), p.dtype(), a, {}});
    backend::OptimStep::Item it{};
    item(u, it);  // before the buffers below exist: it may ask whether they did
    it.param = p.impl().data();
    const Tensor grad = u.grad.transpose_to(p.dims());  // contiguous in p's order (a view if it is)
    g->grads.push_back(grad);
    it.grad = grad.impl().data();
    it.n = p.numel();
    for (size_t i = 0; i < buffers.size(); ++i) {
      Tensor& b = u.state->buffers[buffers[i]];
      b = b.defined() ? b.transpose_to(p.dims()) : Tensor::zeros(p.dims(), p.dtype(), p.device());
      it.buf[i] = b.impl().data();
    }
    u.state->step += 1;
    g->step.items.push_back(it);
  }
  for (const Group& g : groups) backend::backend_for(g.device).optim_step(g.dtype, g.step);
  return rest;
}

}  // namespace dimx::optim::detail
