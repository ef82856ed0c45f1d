// Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer
// Learning for NLP"; Pfeiffer et al. 2020, "AdapterFusion") with AdapterHub's
// conventions for Llama (`adapters` 1.3: methods/modeling.py Adapter,
// models/llama/modeling_llama.py), on the model's ResidualAdapterHook:
//
//   f(x) = scaling · up(act(down(x))),  down: Linear(hidden, b), up: Linear(b, hidden)
//
//  * Pfeiffer (AdapterHub SeqBnConfig, "seq_bn"): after the MLP only, on the
//    stream after its residual add: s = r + mlp(...); s + f(s).
//  * Houlsby (DoubleSeqBnConfig, "double_seq_bn"): after attention and after
//    the MLP, on the sub-block's output h before the residual add:
//    r + h + f(h).
//
// b = bottleneck (hidden / reduction_factor); act relu, gelu (exact), silu
// ("swish") or tanh. down starts as torch.nn.Linear does (kaiming_uniform_,
// a = sqrt(5)) with zero bias and up at zero (AdapterHub's "mam_adapter"
// init), so the initial model equals the base exactly.
//
// The adapter directory is AdapterHub's: adapter_config.json ({"config":
// {...}, "hidden_size", "model_class", "model_type", "name", "version"}) and
// adapter.safetensors with AdapterHub's names
// ("model.layers.0.output_adapters.adapters.<name>.adapter_down.0.weight"),
// for model.load_adapter(DIR, use_safetensors=True).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "nlohmann/json.hpp"
#include "peft/peft_method.h"

namespace llmft {

class BottleneckAdapters : public PeftMethod, public ResidualAdapterHook {
 public:
  enum class Placement { kPfeiffer, kHoulsby };

  struct Config {
    Placement placement = Placement::kPfeiffer;
    // The bottleneck width b; 0 means hidden_size / reduction_factor.
    int64_t bottleneck = 0;
    int64_t reduction_factor = 16;
    ops::Activation activation = ops::Activation::kRelu;
    float scaling = 1.0f;
    std::string name = "llmft";  // AdapterHub's adapter name (it appears in every tensor name)
    uint64_t seed = 0;

    // kBadInput naming `source` and the field.
    void validate(const std::string& source) const;
  };

  BottleneckAdapters(Context& context, LlamaModel& model, const Config& config);
  ~BottleneckAdapters() override;

  const Config& config() const { return config_; }
  int64_t bottleneck() const { return bottleneck_; }

  // The Config of an AdapterHub adapter_config.json (`json`, read from
  // `file`); kBadInput naming the file and field for what llmft does not
  // compute the same way (layer norms, gating, PHM layers, parallel adapters,
  // left-out layers, another hidden size).
  static Config from_adapterhub_config(const nlohmann::json& json, const std::string& file, const ModelConfig& model);

  // PeftMethod
  PeftType type() const override { return PeftType::kBottleneck; }
  std::string fingerprint_text() const override;
  std::string merge_unsupported_reason() const override;
  std::vector<NamedTensor> merged_state_dict(std::optional<DType> dtype = std::nullopt) const override;
  void save_adapter(const std::filesystem::path& directory, const std::string& base_model_name_or_path,
                    std::optional<DType> dtype = std::nullopt) const override;
  void load_adapter_weights(const std::filesystem::path& directory) override;

  // ResidualAdapterHook
  bool adapts(int64_t layer, BlockSite site) const override;
  bool after_residual() const override { return config_.placement == Placement::kPfeiffer; }
  void forward(Context& context, int64_t layer, BlockSite site, const Tensor& x, Tensor& stream) override;
  void backward(Context& context, int64_t layer, BlockSite site, const Tensor& dstream, const Tensor& x,
                Tensor& dx) override;

 private:
  struct Adapter {
    Parameter* down_weight;
    Parameter* down_bias;
    Parameter* up_weight;
    Parameter* up_bias;
  };
  const Adapter& adapter(int64_t layer, BlockSite site) const;

  Config config_;
  int64_t bottleneck_ = 0;
  // Per layer: the attention site's adapter (Houlsby) and the MLP's.
  std::vector<Adapter> attention_, mlp_;
};

}  // namespace llmft
