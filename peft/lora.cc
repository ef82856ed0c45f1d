#include "peft/lora.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/philox.h"
#include "kernels/ops.h"
#include "parallel/shard.h"

namespace llmft {

// ---- LoraSettings -----------------------------------------------------------------

float LoraSettings::scaling() const {
  // peft/tuners/lora/layer.py update_layer: lora_alpha / sqrt(r) with rsLoRA, else lora_alpha / r.
  const double rank = static_cast<double>(r);
  return static_cast<float>(use_rslora ? alpha / std::sqrt(rank) : alpha / rank);
}

void LoraSettings::validate(const std::string& source) const {
  if (r < 1) throw_bad_input(source, ": field 'r': expected an integer >= 1, found ", r);
  if (!(dropout >= 0.0f && dropout < 1.0f))
    throw_bad_input(source, ": field 'lora_dropout': expected a probability in [0, 1), found ", dropout);
  if (target_modules.empty())
    throw_bad_input(source, ": field 'target_modules': expected at least one module name, found none");
  const auto& known = lora_target_module_names();
  for (const std::string& name : target_modules) {
    if (name == "all-linear" || std::find(known.begin(), known.end(), name) != known.end()) continue;
    throw_bad_input(source, ": field 'target_modules': unknown module '", name,
                    "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj or all-linear)");
  }
}

std::vector<std::string> LoraSettings::resolved_target_modules() const {
  const bool all = std::find(target_modules.begin(), target_modules.end(), "all-linear") != target_modules.end();
  std::vector<std::string> result;
  for (const std::string& name : lora_target_module_names())
    if (all || std::find(target_modules.begin(), target_modules.end(), name) != target_modules.end())
      result.push_back(name);
  return result;
}

// ---- LoraAdapter ----------------------------------------------------------------

LoraAdapter::LoraAdapter(const Linear& base, Parameter& lora_a, Parameter& lora_b, float scaling, float dropout,
                         uint64_t dropout_seed)
    : base_(base),
      lora_a_(lora_a),
      lora_b_(lora_b),
      scaling_(scaling),
      dropout_(dropout),
      dropout_seed_(dropout_seed) {}

ops::DropoutLayout LoraAdapter::dropout_layout() const {
  // A row-parallel input is this rank's column slice of the whole input.
  if (!row_parallel()) return {};
  return ops::DropoutLayout{full_in_features(), lora_a_.shard.offset};
}

LoraAdapter::DownProjection LoraAdapter::down_project(Context& context, const Tensor& x) const {
  DownProjection result{x, Tensor()};
  if (dropout_active()) {
    result.dropped = context.empty(x.shape(), x.dtype());
    ops::dropout_forward(context, x, dropout_, dropout_seed_, dropout_offset(x.size(0)), result.dropped,
                         dropout_layout());
  }
  result.hidden = context.empty({x.size(0), lora_a_.value.size(0)}, x.dtype());
  ops::linear_forward(context, result.dropped, lora_a_.value, nullptr, result.hidden);
  // Row-parallel: each rank holds a slice of the input features; the sum is
  // the whole model's hidden.
  if (row_parallel())
    base_.tensor_parallel()->all_reduce(result.hidden, parallel::ReduceOp::kSum,
                                        "LoRA hidden all-reduce (row-parallel, tensor parallel)");
  return result;
}

void LoraAdapter::forward(Context& context, const Tensor& x, Tensor& y_accumulate) {
  if (merged_) return;
  const Tensor hidden = down_project(context, x).hidden;
  // Row-parallel: y is this rank's partial sum, which the block reduces, so
  // B·hidden (the same on every rank) enters once.
  if (row_parallel() && base_.tensor_parallel()->rank() != 0) return;
  // y += scaling · hidden Bᵀ, accumulated by the GEMM itself (beta = 1).
  ops::gemm(context, hidden, lora_b_.value, y_accumulate, /*trans_a=*/false, /*trans_b=*/true, scaling_, 1.0f);
}

void LoraAdapter::backward(Context& context, const Tensor& dy, const Tensor& x, Tensor* dx_accumulate) {
  if (merged_) throw_runtime(base_.name(), ": LoRA backward on a merged adapter (unmerge before training)");
  const int64_t rows = x.size(0), rank = lora_a_.value.size(0);
  const auto [dropped, hidden] = down_project(context, x);

  // dhidden = scaling · dy B   [rows, r]; column-parallel: this rank's share
  // (dy and B hold its output rows).
  Tensor dhidden = context.empty({rows, rank}, x.dtype());
  ops::gemm(context, dy, lora_b_.value, dhidden, false, false, scaling_, 0.0f);
  // dB += scaling · dyᵀ hidden   [out, r]
  if (lora_b_.trainable && lora_b_.grad.defined())
    ops::gemm(context, dy, hidden, lora_b_.grad, true, false, scaling_, 1.0f);
  // dx += dhidden A (through the dropout); column-parallel: a share of the
  // input gradient, which the block's reduction sums with the base's.
  if (dx_accumulate != nullptr) {
    if (!dropout_active()) {
      ops::gemm(context, dhidden, lora_a_.value, *dx_accumulate, false, false, 1.0f, 1.0f);
    } else {
      Tensor ddropped = context.empty(x.shape(), x.dtype());
      ops::gemm(context, dhidden, lora_a_.value, ddropped, false, false, 1.0f, 0.0f);
      ops::dropout_backward(context, ddropped, dropout_, dropout_seed_, dropout_offset(rows), ddropped,
                            dropout_layout());
      ops::add(context, *dx_accumulate, ddropped, *dx_accumulate);
    }
  }
  // The replicated A of a column-parallel linear needs the whole dhidden.
  if (column_parallel())
    base_.tensor_parallel()->all_reduce(dhidden, parallel::ReduceOp::kSum,
                                        "LoRA dhidden all-reduce (column-parallel, tensor parallel)");
  // dA += dhiddenᵀ dropout(x)   [r, in]
  if (lora_a_.trainable && lora_a_.grad.defined())
    ops::gemm(context, dhidden, dropped, lora_a_.grad, true, false, 1.0f, 1.0f);
}

// ---- LoraModel ------------------------------------------------------------------

namespace {

// The module's type ("q_proj") from its path ("model.layers.0.self_attn.q_proj").
std::string module_type(const std::string& module_name) {
  const size_t dot = module_name.rfind('.');
  return dot == std::string::npos ? module_name : module_name.substr(dot + 1);
}

// SplitMix64 (Steele et al. 2014): decorrelated per-adapter dropout seeds from one run seed.
uint64_t mix_seed(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

}  // namespace

LoraModel::LoraModel(Context& context, LlamaModel& model, const LoraSettings& config)
    : PeftMethod(model), config_(config) {
  MemoryCategoryScope category(MemoryCategory::kTrainableWeights);
  config_.validate("LoRA config");
  const std::vector<std::string> targets = config_.resolved_target_modules();
  const float scaling = config_.scaling();
  const DType dtype = model.options().compute_dtype;
  PhiloxGenerator generator(config_.seed);
  const int tp_size = model.tensor_parallel_size();
  const int tp_rank = model.tensor_parallel() != nullptr ? model.tensor_parallel()->rank() : 0;
  for (Linear* linear : model.linears()) {
    const std::string type = module_type(linear->name());
    if (std::find(targets.begin(), targets.end(), type) == targets.end()) continue;
    const Shape& base_shape = linear->weight().full_shape();
    const int64_t out = base_shape[0], in = base_shape[1];
    // Tensor parallelism: B split like a column-parallel W's rows, A like a
    // row-parallel W's columns; the other one replicated.
    const ParameterShard a_shard = parallel::even_shard(
        {config_.r, in}, linear->shard_kind() == ShardKind::kRow ? 1 : -1, tp_size, tp_rank);
    const ParameterShard b_shard = parallel::even_shard(
        {out, config_.r}, linear->shard_kind() == ShardKind::kColumn ? 0 : -1, tp_size, tp_rank);
    const Shape a_shape = a_shard.sharded() ? parallel::shard_shape(a_shard, tp_size) : Shape{config_.r, in};
    const Shape b_shape = b_shard.sharded() ? parallel::shard_shape(b_shard, tp_size) : Shape{out, config_.r};
    Parameter& lora_a = parameters_.add(context, linear->name() + ".lora_A.weight", a_shape, dtype);
    Parameter& lora_b = parameters_.add(context, linear->name() + ".lora_B.weight", b_shape, dtype);
    lora_a.shard = a_shard;
    lora_b.shard = b_shard;
    // torch.nn.init.kaiming_uniform_(A, a=sqrt(5)) (PEFT's init_lora_weights=True):
    // gain = sqrt(2 / (1 + a²)), bound = gain · sqrt(3 / fan_in), fan_in = in.
    // Drawn at full shape, then this rank's slice taken.
    const double negative_slope = std::sqrt(5.0);
    const double gain = std::sqrt(2.0 / (1.0 + negative_slope * negative_slope));
    const double bound = gain * std::sqrt(3.0 / static_cast<double>(in));
    std::vector<float> values(static_cast<size_t>(config_.r * in));
    for (float& value : values) value = static_cast<float>(bound * (2.0 * generator.next_uniform() - 1.0));
    {
      MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
      lora_a.value.copy_from(
          parallel::take_shard(Tensor::from_floats({config_.r, in}, values, dtype), a_shard, tp_size));
    }
    ops::fill(context, lora_b.value, 0.0f);  // B = 0: the adapted model starts equal to the base
    auto adapter = std::make_shared<LoraAdapter>(*linear, lora_a, lora_b, scaling, config_.dropout,
                                                 mix_seed(config_.seed ^ mix_seed(adapters_.size())));
    linear->add_adapter(adapter);
    linears_.push_back(linear);
    adapters_.push_back(std::move(adapter));
  }
  if (adapters_.empty()) throw_bad_input("LoRA config: field 'target_modules': no linear layer of the model matched");
  model.parameters().set_trainable([](const std::string&) { return false; });
  model.parameters().allocate_grads(context, model.options().grad_dtype);  // drops every base gradient
  parameters_.allocate_grads(context, DType::kF32);
}

LoraModel::~LoraModel() {
  // A merged model keeps its merged weights (the merged model is what gets
  // exported); only the adapters, which would otherwise add B·A again, go.
  for (size_t i = 0; i < linears_.size(); ++i) {
    std::vector<std::shared_ptr<LinearAdapter>> others;
    for (const auto& adapter : linears_[i]->adapters())
      if (adapter != adapters_[i]) others.push_back(adapter);
    linears_[i]->clear_adapters();
    for (auto& adapter : others) linears_[i]->add_adapter(std::move(adapter));
  }
}

std::vector<std::string> LoraModel::adapted_modules() const {
  std::vector<std::string> names;
  for (const Linear* linear : linears_) names.push_back(linear->name());
  return names;
}

std::string LoraModel::fingerprint_text() const {
  std::string text = str_cat("lora(r=", config_.r, ",alpha=", config_.alpha, ",rslora=", config_.use_rslora, ",targets=");
  for (const std::string& name : config_.resolved_target_modules()) text += name + " ";
  return text + ")";
}

void LoraModel::set_training(bool training) {
  for (auto& adapter : adapters_) adapter->set_training(training);
}

void LoraModel::set_dropout_step(uint64_t step) {
  for (auto& adapter : adapters_) adapter->set_dropout_step(step);
}

void LoraModel::set_data_parallel_rank(int rank) {
  for (auto& adapter : adapters_) adapter->set_data_parallel_rank(rank);
}

void LoraModel::apply_delta(Context& context, float sign) {
  for (const auto& adapter : adapters_) {
    Parameter& weight = adapter->base().weight();
    // PEFT get_delta_weight: (B @ A) * scaling; the sum is formed in fp32 and cast once.
    Tensor weight_f32 = context.empty(weight.value.shape(), DType::kF32);
    ops::cast(context, weight.value, weight_f32);
    ops::gemm(context, adapter->lora_b().value, adapter->lora_a().value, weight_f32, false, false,
              sign * adapter->scaling(), 1.0f);
    ops::cast(context, weight_f32, weight.value);
  }
}

void LoraModel::merge(Context& context) {
  if (merged_) throw_runtime("LoRA merge: the adapters are already merged");
  apply_delta(context, 1.0f);
  merged_ = true;
  for (auto& adapter : adapters_) adapter->set_merged(true);
}

void LoraModel::unmerge(Context& context) {
  if (!merged_) throw_runtime("LoRA unmerge: the adapters are not merged");
  apply_delta(context, -1.0f);
  merged_ = false;
  for (auto& adapter : adapters_) adapter->set_merged(false);
}

std::vector<NamedTensor> LoraModel::merged_state_dict(std::optional<DType> dtype) const {
  if (model_.tensor_parallel_size() > 1)
    throw_runtime("LoRA merged_state_dict: the model is split over ", model_.tensor_parallel_size(),
                  " tensor-parallel ranks; export from the (layout-free) training checkpoint instead");
  const DType out_dtype = dtype.value_or(model_.options().compute_dtype);
  std::vector<NamedTensor> tensors = model_.state_dict(DType::kF32);  // host fp32 (copies where converted)
  for (NamedTensor& named : tensors) {
    const LoraAdapter* adapter = nullptr;
    for (const auto& candidate : adapters_)
      if (candidate->base().weight().name == named.name) adapter = candidate.get();
    std::vector<float> values = named.tensor.to_floats();
    if (adapter != nullptr && !merged_) {
      const std::vector<float> a = adapter->lora_a().value.to_floats(), b = adapter->lora_b().value.to_floats();
      const int64_t out = named.tensor.size(0), in = named.tensor.size(1), rank = adapter->lora_a().value.size(0);
      const float scaling = adapter->scaling();
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          float delta = 0.0f;
          for (int64_t k = 0; k < rank; ++k) delta += b[o * rank + k] * a[k * in + i];
          values[o * in + i] += scaling * delta;
        }
    }
    named.tensor = Tensor::from_floats(named.tensor.shape(), values, out_dtype);
  }
  return tensors;
}

}  // namespace llmft
