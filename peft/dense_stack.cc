#include "peft/dense_stack.h"

#include <cmath>

#include "core/allocator.h"
#include "core/error.h"

namespace llmft {

DenseStack::DenseStack(Context& context, ParameterRegistry& registry, const std::string& name, int64_t in_features,
                       const std::vector<Layer>& layers, DType dtype, PhiloxGenerator& generator)
    : in_features_(in_features) {
  if (layers.empty()) throw_runtime("DenseStack ", name, ": no layers");
  int64_t in = in_features;
  for (size_t i = 0; i < layers.size(); ++i) {
    const int64_t out = layers[i].out_features;
    const std::string prefix = str_cat(name, ".", 2 * i, ".");
    Parameter& weight = registry.add(context, prefix + "weight", {out, in}, dtype);
    Parameter& bias = registry.add(context, prefix + "bias", {out}, dtype);
    // torch.nn.Linear.reset_parameters: kaiming_uniform_(a = sqrt(5)) gives
    // bound sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in); the bias uses the same.
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    auto draw = [&](Parameter& parameter) {
      std::vector<float> values(static_cast<size_t>(parameter.value.numel()));
      for (float& value : values) value = static_cast<float>(bound * (2.0 * generator.next_uniform() - 1.0));
      MemoryCategoryScope scratch(MemoryCategory::kWorkspace);  // the host copy is not a weight
      parameter.value.copy_from(Tensor::from_floats(parameter.value.shape(), values, dtype));
    };
    draw(weight);
    draw(bias);
    layers_.push_back(Entry{layers[i], &weight, &bias, Tensor(), Tensor()});
    in = out;
  }
}

Tensor DenseStack::forward(Context& context, const Tensor& x) {
  Tensor current = x;
  for (Entry& layer : layers_) {
    layer.input = current;
    Tensor y = context.empty({current.size(0), layer.spec.out_features}, layer.weight->value.dtype());
    ops::linear_forward(context, current, layer.weight->value, &layer.bias->value, y);
    if (layer.spec.activation) {
      layer.pre_activation = y;
      Tensor activated = context.empty(y.shape(), y.dtype());
      ops::activation_forward(context, *layer.spec.activation, y, activated);
      y = activated;
    }
    current = y;
  }
  return current;
}

Tensor DenseStack::backward(Context& context, const Tensor& dy) {
  // Gradients flow in the compute dtype, as through the model's own linears;
  // the parameter gradients accumulate in fp32.
  const DType dtype = layers_.front().weight->value.dtype();
  Tensor gradient = dy;
  if (gradient.dtype() != dtype) {
    gradient = context.empty(dy.shape(), dtype);
    ops::cast(context, dy, gradient);
  }
  for (auto layer = layers_.rbegin(); layer != layers_.rend(); ++layer) {
    if (!layer->input.defined()) throw_runtime("DenseStack::backward without a forward");
    if (layer->spec.activation) {
      Tensor before = context.empty(gradient.shape(), dtype);
      ops::activation_backward(context, *layer->spec.activation, gradient, layer->pre_activation, before);
      gradient = before;
    }
    Tensor dx = context.empty({gradient.size(0), layer->input.size(1)}, dtype);
    ops::linear_backward(context, gradient, layer->input, layer->weight->value, &dx, &layer->weight->grad,
                         &layer->bias->grad);
    gradient = dx;
  }
  return gradient;
}

}  // namespace llmft
