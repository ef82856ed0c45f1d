// A named parameter: its value and, while trainable, its gradient. It lives
// in core/ so that optim/ and parallel/ (gradient buckets) use parameters
// without knowing model/ (DESIGN.md "Distributed design"); model/parameters.h
// holds the registry that owns them.
#pragma once

#include <string>

#include "core/tensor.h"

namespace llmft {

struct Parameter {
  std::string name;  // "model.layers.3.self_attn.q_proj.weight"
  Tensor value;      // in the model's compute dtype, on the context's device
  // Defined only while trainable (after allocate_grads). May be a view into a
  // flat buffer shared with other parameters (parallel/gradient_buckets.h).
  Tensor grad;
  bool trainable = true;
};

}  // namespace llmft
