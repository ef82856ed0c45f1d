// Parameters by Hugging Face name. The registry is what the optimizer,
// checkpoints, data-parallel gradient sync and `llmft inspect` walk over; the
// layers hold pointers into it (stable: parameters are never moved).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/parameter.h"
#include "core/tensor.h"

namespace llmft {

class ParameterRegistry {
 public:
  // Adds an (uninitialised) parameter; names are unique.
  Parameter& add(Context& context, const std::string& name, const Shape& shape, DType dtype);
  Parameter* find(const std::string& name);
  const Parameter* find(const std::string& name) const;
  // Throws kBadInput "no parameter '<name>'" when absent.
  Parameter& get(const std::string& name);

  // In registration order (embedding, layers in order, norm, head).
  std::vector<Parameter*> all();
  std::vector<const Parameter*> all() const;
  size_t size() const { return parameters_.size(); }

  // Marks every parameter whose name satisfies `predicate` (frozen otherwise
  // when `freeze_others`). Gradients follow at the next allocate_grads().
  void set_trainable(const std::function<bool(const std::string&)>& predicate, bool freeze_others = true);
  // Allocates zeroed gradients (of `grad_dtype`) for trainable parameters that
  // lack one and drops the gradients of frozen ones.
  void allocate_grads(Context& context, DType grad_dtype);
  // Zeroes every allocated gradient (start of a new accumulation window).
  void zero_grads(Context& context);

  int64_t num_elements(bool trainable_only = false) const;

 private:
  std::deque<Parameter> parameters_;  // deque: references stay valid as it grows
  std::map<std::string, size_t> index_;
};

}  // namespace llmft
