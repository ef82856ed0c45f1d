// A stack of dense layers, y = act(x Wᵀ + b), applied to a handful of rows
// ([P, in]): the reparameterisation networks of P-tuning (Liu et al. 2021,
// "GPT Understands, Too": PEFT's PromptEncoder MLP head) and of prefix tuning
// (Li & Liang 2021: PEFT's PrefixEncoder transform). torch.nn.Linear's layout
// and default initialisation; parameters are named as the torch.nn.Sequential
// that holds them, where every activation takes an index of its own
// ("<name>.0.weight", "<name>.2.weight", ...).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/philox.h"
#include "kernels/ops.h"
#include "model/parameters.h"

namespace llmft {

class DenseStack {
 public:
  struct Layer {
    int64_t out_features;
    std::optional<ops::Activation> activation;  // after the layer; none for the last one
  };

  // Registers "<name>.<2i>.weight" [out, in] and ".bias" [out] in `registry`
  // (dtype `dtype`), drawn as torch.nn.Linear.reset_parameters does:
  // kaiming_uniform_(a = sqrt(5)) for W, i.e. U(-1/sqrt(in), 1/sqrt(in)), and
  // the same bound for b, in registration order from `generator`.
  DenseStack(Context& context, ParameterRegistry& registry, const std::string& name, int64_t in_features,
             const std::vector<Layer>& layers, DType dtype, PhiloxGenerator& generator);

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return layers_.back().spec.out_features; }

  // x [P, in] -> [P, out]; keeps what the backward needs until the next call.
  Tensor forward(Context& context, const Tensor& x);
  // dy [P, out]: adds every weight's and bias's gradient (fp32) and returns
  // dx [P, in] in the parameters' dtype.
  Tensor backward(Context& context, const Tensor& dy);

 private:
  struct Entry {
    Layer spec;
    Parameter* weight;
    Parameter* bias;
    Tensor input;           // the layer's input, saved by forward
    Tensor pre_activation;  // x Wᵀ + b, saved when an activation follows
  };
  int64_t in_features_;
  std::vector<Entry> layers_;
};

}  // namespace llmft
