#include "peft/bottleneck.h"

#include <cmath>
#include <set>

#include "core/allocator.h"
#include "core/error.h"
#include "core/philox.h"
#include "model/safetensors.h"

namespace llmft {
namespace {

constexpr const char* kWeightsFile = "adapter.safetensors";  // AdapterHub's SAFE_WEIGHTS_NAME

// AdapterHub's non_linearity names (transformers.activations.get_activation).
const char* activation_name(ops::Activation activation) {
  switch (activation) {
    case ops::Activation::kRelu: return "relu";
    case ops::Activation::kGelu: return "gelu";
    case ops::Activation::kSilu: return "swish";
    case ops::Activation::kTanh: return "tanh";
  }
  return "relu";
}

std::string site_module(int64_t layer, BlockSite site, const std::string& name) {
  return str_cat("model.layers.", layer, site == BlockSite::kAttention ? ".attention_adapters" : ".output_adapters",
                 ".adapters.", name, ".");
}

}  // namespace

void BottleneckAdapters::Config::validate(const std::string& source) const {
  if (bottleneck < 0) throw_bad_input(source, ": field 'bottleneck': expected an integer >= 0, found ", bottleneck);
  if (reduction_factor < 1)
    throw_bad_input(source, ": field 'reduction_factor': expected an integer >= 1, found ", reduction_factor);
  if (name.empty() || name.find('.') != std::string::npos)
    throw_bad_input(source, ": field 'name': expected a non-empty adapter name without '.', found \"", name, "\"");
}

BottleneckAdapters::BottleneckAdapters(Context& context, LlamaModel& model, const Config& config)
    : PeftMethod(model), config_(config) {
  config_.validate("bottleneck adapter config");
  const int64_t hidden = model.config().hidden_size;
  bottleneck_ = config_.bottleneck > 0 ? config_.bottleneck : hidden / config_.reduction_factor;
  if (bottleneck_ < 1 || hidden % bottleneck_ != 0)
    throw_bad_input("peft.bottleneck: field 'bottleneck': ", bottleneck_, " must divide hidden_size ", hidden,
                    " (AdapterHub stores the width as hidden_size / reduction_factor)");
  const DType dtype = model.options().compute_dtype;
  PhiloxGenerator generator(config_.seed);
  MemoryCategoryScope category(MemoryCategory::kTrainableWeights);
  auto add = [&](int64_t layer, BlockSite site) {
    const std::string prefix = site_module(layer, site, config_.name);
    Adapter adapter;
    adapter.down_weight = &parameters_.add(context, prefix + "adapter_down.0.weight", {bottleneck_, hidden}, dtype);
    adapter.down_bias = &parameters_.add(context, prefix + "adapter_down.0.bias", {bottleneck_}, dtype);
    adapter.up_weight = &parameters_.add(context, prefix + "adapter_up.weight", {hidden, bottleneck_}, dtype);
    adapter.up_bias = &parameters_.add(context, prefix + "adapter_up.bias", {hidden}, dtype);
    // kaiming_uniform_(a = sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)); zero bias and up.
    const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
    std::vector<float> values(static_cast<size_t>(bottleneck_ * hidden));
    for (float& value : values) value = static_cast<float>(bound * (2.0 * generator.next_uniform() - 1.0));
    {
      MemoryCategoryScope scratch(MemoryCategory::kWorkspace);
      adapter.down_weight->value.copy_from(Tensor::from_floats({bottleneck_, hidden}, values, dtype));
    }
    ops::fill(context, adapter.down_bias->value, 0.0f);
    ops::fill(context, adapter.up_weight->value, 0.0f);
    ops::fill(context, adapter.up_bias->value, 0.0f);
    return adapter;
  };
  for (int64_t layer = 0; layer < model.config().num_hidden_layers; ++layer) {
    if (config_.placement == Placement::kHoulsby) attention_.push_back(add(layer, BlockSite::kAttention));
    mlp_.push_back(add(layer, BlockSite::kMlp));
  }
  model.parameters().set_trainable([](const std::string&) { return false; });
  model.parameters().allocate_grads(context, model.options().grad_dtype);
  {
    MemoryCategoryScope gradients(MemoryCategory::kGradients);
    parameters_.allocate_grads(context, DType::kF32);
  }
  model.set_residual_adapter_hook(this);
}

BottleneckAdapters::~BottleneckAdapters() { model_.set_residual_adapter_hook(nullptr); }

bool BottleneckAdapters::adapts(int64_t layer, BlockSite site) const {
  return site == BlockSite::kMlp || config_.placement == Placement::kHoulsby;
}

const BottleneckAdapters::Adapter& BottleneckAdapters::adapter(int64_t layer, BlockSite site) const {
  return (site == BlockSite::kMlp ? mlp_ : attention_).at(static_cast<size_t>(layer));
}

void BottleneckAdapters::forward(Context& context, int64_t layer, BlockSite site, const Tensor& x, Tensor& stream) {
  const Adapter& a = adapter(layer, site);
  const int64_t rows = x.size(0), hidden = x.size(1);
  Tensor down = context.empty({rows, bottleneck_}, x.dtype());
  ops::linear_forward(context, x, a.down_weight->value, &a.down_bias->value, down);
  ops::activation_forward(context, config_.activation, down, down);
  Tensor up = context.empty({rows, hidden}, x.dtype());
  ops::linear_forward(context, down, a.up_weight->value, &a.up_bias->value, up);
  ops::add_scaled(context, config_.scaling, up, stream);
}

void BottleneckAdapters::backward(Context& context, int64_t layer, BlockSite site, const Tensor& dstream,
                                  const Tensor& x, Tensor& dx) {
  const Adapter& a = adapter(layer, site);
  const int64_t rows = x.size(0);
  // The down projection again from x (nothing but x is kept).
  Tensor pre = context.empty({rows, bottleneck_}, x.dtype());
  ops::linear_forward(context, x, a.down_weight->value, &a.down_bias->value, pre);
  Tensor down = context.empty(pre.shape(), pre.dtype());
  ops::activation_forward(context, config_.activation, pre, down);
  Tensor dup = dstream;
  if (config_.scaling != 1.0f) {
    dup = context.empty(dstream.shape(), dstream.dtype());
    dup.copy_from(dstream);
    ops::scale(context, dup, config_.scaling);
  }
  Tensor ddown = context.empty(down.shape(), down.dtype());
  ops::linear_backward(context, dup, down, a.up_weight->value, &ddown, &a.up_weight->grad, &a.up_bias->grad);
  ops::activation_backward(context, config_.activation, ddown, pre, ddown);
  ops::linear_backward(context, ddown, x, a.down_weight->value, &dx, &a.down_weight->grad, &a.down_bias->grad,
                       /*accumulate_dx=*/true);
}

std::string BottleneckAdapters::fingerprint_text() const {
  return str_cat("bottleneck(", config_.placement == Placement::kHoulsby ? "houlsby" : "pfeiffer", ",b=", bottleneck_,
                 ",act=", activation_name(config_.activation), ",scaling=", config_.scaling, ")");
}

std::string BottleneckAdapters::merge_unsupported_reason() const { return unmergeable_reason(type()); }

std::vector<NamedTensor> BottleneckAdapters::merged_state_dict(std::optional<DType>) const {
  throw_bad_input("merge: ", merge_unsupported_reason());
}

void BottleneckAdapters::save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                                      std::optional<DType> dtype) const {
  const bool houlsby = config_.placement == Placement::kHoulsby;
  const int64_t hidden = model_.config().hidden_size;
  // Every field AdapterHub 1.3's BnConfig writes, as SeqBnConfig /
  // DoubleSeqBnConfig set them, with the width as a reduction factor.
  const nlohmann::json config = {
      {"adapter_residual_before_ln", false},
      {"cross_adapter", false},
      {"dropout", 0.0},
      {"factorized_phm_W", true},
      {"factorized_phm_rule", false},
      {"hypercomplex_nonlinearity", "glorot-uniform"},
      {"init_weights", "mam_adapter"},
      {"init_weights_seed", nullptr},
      {"inv_adapter", nullptr},
      {"inv_adapter_reduction_factor", nullptr},
      {"is_parallel", false},
      {"learn_phm", true},
      {"leave_out", nlohmann::json::array()},
      {"ln_after", false},
      {"ln_before", false},
      {"mh_adapter", houlsby},
      {"non_linearity", activation_name(config_.activation)},
      {"original_ln_after", true},
      {"original_ln_before", !houlsby},
      {"output_adapter", true},
      {"phm_bias", true},
      {"phm_c_init", "normal"},
      {"phm_dim", 4},
      {"phm_init_range", 0.0001},
      {"phm_layer", false},
      {"phm_rank", 1},
      {"reduction_factor", hidden / bottleneck_},
      {"residual_before_ln", true},
      {"scaling", config_.scaling},
      {"shared_W_phm", false},
      {"shared_phm_rule", true},
      {"stochastic_depth", 0.0},
      {"use_gating", false},
  };
  const nlohmann::json json = {
      {"config", config},
      {"hidden_size", hidden},
      {"model_class", model_.config().model_type == "qwen2"     ? "Qwen2ForCausalLM"
                      : model_.config().model_type == "mistral" ? "MistralForCausalLM"
                                                                : "LlamaForCausalLM"},
      {"model_name", base_model_name_or_path},
      {"model_type", model_.config().model_type},
      {"name", config_.name},
      {"version", "adapters.1.3.0"},
  };
  std::filesystem::create_directories(directory);
  std::vector<NamedTensor> tensors;
  for (const Parameter* parameter : parameters_.all()) {
    Tensor host = parameter->value.device().is_cpu() ? parameter->value : parameter->value.to(default_host_allocator());
    const DType out_dtype = dtype.value_or(host.dtype());
    if (out_dtype != host.dtype()) host = Tensor::from_floats(host.shape(), host.to_floats(), out_dtype);
    tensors.push_back({parameter->name, host});
  }
  write_safetensors(directory / kWeightsFile, tensors);
  write_file_atomically(directory / "adapter_config.json", json.dump(2) + "\n");
}

void BottleneckAdapters::load_adapter_weights(const std::filesystem::path& directory) {
  const SafetensorsFile weights = SafetensorsFile::open(directory / kWeightsFile);
  const std::string& file = weights.path();
  std::set<std::string> expected;
  for (Parameter* parameter : parameters_.all()) {
    expected.insert(parameter->name);
    if (!weights.contains(parameter->name))
      throw_bad_input(file, ": tensor '", parameter->name, "' is missing (expected shape ",
                      shape_to_string(parameter->value.shape()), ")");
    const SafetensorsEntry& entry = weights.entry(parameter->name);
    if (entry.shape != parameter->value.shape())
      throw_bad_input(file, ": tensor '", parameter->name, "': expected shape ", shape_to_string(parameter->value.shape()),
                      ", found ", shape_to_string(entry.shape));
    parameter->value.copy_from(weights.tensor_as(parameter->name, parameter->value.dtype()));
  }
  for (const SafetensorsEntry& entry : weights.entries())
    if (!expected.count(entry.name))
      throw_bad_input(file, ": unexpected tensor '", entry.name, "' (not a parameter of adapter '", config_.name,
                      "' with this placement)");
}

BottleneckAdapters::Config BottleneckAdapters::from_adapterhub_config(const nlohmann::json& json,
                                                                      const std::string& file,
                                                                      const ModelConfig& model) {
  if (!json.is_object() || !json.contains("config") || !json.at("config").is_object())
    throw_bad_input(file, ": field 'config': expected AdapterHub's adapter config object");
  const nlohmann::json& c = json.at("config");
  auto value = [&](const char* name) -> const nlohmann::json& {
    if (!c.contains(name)) throw_bad_input(file, ": field 'config.", name, "' is missing");
    return c.at(name);
  };
  auto expect = [&](const char* name, const nlohmann::json& wanted, const char* why) {
    if (c.contains(name) && c.at(name) != wanted)
      throw_bad_input(file, ": field 'config.", name, "': expected ", wanted.dump(), " (", why, "), found ",
                      c.at(name).dump());
  };
  if (json.contains("hidden_size") && json.at("hidden_size") != model.hidden_size)
    throw_bad_input(file, ": field 'hidden_size': expected ", model.hidden_size,
                    " (the base model's hidden_size), found ", json.at("hidden_size").dump(),
                    "; the adapter was made for another base model");
  for (const char* name : {"ln_before", "ln_after", "use_gating", "phm_layer", "is_parallel", "adapter_residual_before_ln"})
    expect(name, false, "not supported by llmft");
  expect("inv_adapter", nullptr, "invertible adapters are not supported");
  expect("output_adapter", true, "the adapter after the MLP");
  expect("residual_before_ln", true, "AdapterHub's sequential bottleneck");
  expect("original_ln_after", true, "AdapterHub's sequential bottleneck");
  if (c.contains("leave_out") && !c.at("leave_out").empty())
    throw_bad_input(file, ": field 'config.leave_out': expected [] (adapting a subset of layers is not supported), found ",
                    c.at("leave_out").dump());
  Config config;
  const bool mh = value("mh_adapter").get<bool>(), ln_before = value("original_ln_before").get<bool>();
  if (mh && !ln_before) {
    config.placement = Placement::kHoulsby;
  } else if (!mh && ln_before) {
    config.placement = Placement::kPfeiffer;
  } else {
    throw_bad_input(file, ": fields 'config.mh_adapter' ", mh ? "true" : "false", " and 'config.original_ln_before' ",
                    ln_before ? "true" : "false",
                    ": expected false/true (Pfeiffer, seq_bn) or true/false (Houlsby, double_seq_bn)");
  }
  const nlohmann::json& factor = value("reduction_factor");
  if (!factor.is_number() || factor.get<double>() <= 0)
    throw_bad_input(file, ": field 'config.reduction_factor': expected a positive number (one for every layer), found ",
                    factor.dump());
  config.bottleneck = static_cast<int64_t>(std::floor(static_cast<double>(model.hidden_size) / factor.get<double>()));
  const nlohmann::json& scaling = value("scaling");
  if (!scaling.is_number())
    throw_bad_input(file, ": field 'config.scaling': expected a number (learned scaling is not supported), found ",
                    scaling.dump());
  config.scaling = scaling.get<float>();
  const std::string activation = value("non_linearity").is_string() ? value("non_linearity").get<std::string>() : "";
  if (activation == "relu") config.activation = ops::Activation::kRelu;
  else if (activation == "gelu") config.activation = ops::Activation::kGelu;
  else if (activation == "swish" || activation == "silu") config.activation = ops::Activation::kSilu;
  else if (activation == "tanh") config.activation = ops::Activation::kTanh;
  else
    throw_bad_input(file, ": field 'config.non_linearity': expected relu, gelu, swish, silu or tanh, found ",
                    value("non_linearity").dump());
  if (!json.contains("name") || !json.at("name").is_string())
    throw_bad_input(file, ": field 'name': expected the adapter's name");
  config.name = json.at("name").get<std::string>();
  config.validate(file);
  return config;
}

}  // namespace llmft
