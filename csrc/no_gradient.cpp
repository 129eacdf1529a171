// The Autograd kernel of every sparsekit op: the ops are for inference. A call that records no
// gradient (grad mode off, or no input requiring one) passes straight to the op's device kernel;
// kept in C++ because a Python autograd kernel costs several microseconds of every call, about
// what a small layer's whole call costs. A call that would record one runs too, and its outputs'
// grad_fn refuses the backward pass, naming the op.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "ops.h"

namespace sparsekit {
namespace {

struct NoGradient final : torch::autograd::Node {
  explicit NoGradient(std::string op) : op_(std::move(op)) {}
  torch::autograd::variable_list apply(torch::autograd::variable_list&&) override {
    TORCH_CHECK_VALUE(false, op_, ": sparsekit ops are for inference and have no gradient");
  }
  std::string name() const override { return "sparsekit::NoGradient"; }

 private:
  std::string op_;
};

// torch's autograd holds nodes by c10::intrusive_ptr in recent releases (2.13 here) and by
// std::shared_ptr in earlier ones (the GPU machines' 2.11): the node is made as Node asks.
template <typename Derived>
auto make_node(std::string op) {
  if constexpr (std::is_base_of_v<c10::intrusive_ptr_target, Derived>)
    return c10::intrusive_ptr<torch::autograd::Node>(c10::make_intrusive<Derived>(std::move(op)));
  else
    return std::shared_ptr<torch::autograd::Node>(std::make_shared<Derived>(std::move(op)));
}

// The arguments on the stack that require a gradient (none when grad mode is off).
std::vector<at::Tensor> needing_gradient(const c10::OperatorHandle& op,
                                         const torch::jit::Stack& stack) {
  std::vector<at::Tensor> found;
  if (!at::GradMode::is_enabled()) return found;
  for (const c10::IValue& value : torch::jit::last(stack, op.schema().arguments().size())) {
    if (value.isTensor()) {
      if (value.toTensor().requires_grad()) found.push_back(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList())
        if (t.requires_grad()) found.push_back(t);
    }
  }
  return found;
}

void autograd_kernel(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                     torch::jit::Stack* stack) {
  const std::vector<at::Tensor> inputs = needing_gradient(op, *stack);
  {
    // as torch's own fallback does: the kernel below (a Python one too) records no graph of
    // its own, which its output would otherwise keep alive
    at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }
  if (inputs.empty()) return;
  auto node = make_node<NoGradient>(op.schema().name());
  node->set_next_edges(torch::autograd::collect_next_edges(inputs));
  for (const c10::IValue& value : torch::jit::last(*stack, op.schema().returns().size()))
    if (value.isTensor()) torch::autograd::set_history(value.toTensor(), node);
}

}  // namespace

void refuse_gradient(const std::string& op) {
  // registrations last as long as the Library that made them: this one, for the process
  static auto* library = new torch::Library(torch::Library::IMPL, "sparsekit",
                                            c10::DispatchKey::Autograd, __FILE__, __LINE__);
  library->impl(op.c_str(), torch::CppFunction::makeFromBoxedFunction<&autograd_kernel>());
}

}  // namespace sparsekit
