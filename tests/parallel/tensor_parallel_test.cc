// Tensor parallelism (Megatron layout) with ranks as threads of one process
// (parallel/in_process_communicator.h): a model split over tp = 2 and 4 gives
// the one-process model's loss, logits and gradients, for full fine-tuning
// (Llama with GQA; Qwen2 with q/k/v biases; every activation policy) and for
// LoRA on every linear with dropout (the masks are keyed by the element's
// place in the whole input, so they are the one-process masks). The
// reference is the unsplit model, which shares no sharding code path.
// Tolerance: the row-parallel sums run in another order (partial GEMMs, then
// the all-reduce): ~1e-7 relative in fp32; bound 2e-5 of the largest value.
// Also: shard arithmetic against hand-computed slices, loading a checkpoint
// slice per rank, gathering the full state back, and the one-line error when
// the heads do not divide (SmolLM2's 9 heads over tp 2).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <thread>
#include <unistd.h>

#include "core/error.h"
#include "core/philox.h"
#include "model/llama.h"
#include "in_process_ranks.h"
#include "parallel/shard.h"
#include "peft/lora.h"

namespace llmft {
namespace {

using parallel::Communicator;

using parallel::testing_support::on_ranks;

ModelConfig tiny_config(const std::string& architecture, int64_t heads = 8, int64_t kv_heads = 4) {
  nlohmann::json json = {{"architectures", {architecture}},
                         {"hidden_size", 16},
                         {"intermediate_size", 24},
                         {"num_hidden_layers", 2},
                         {"num_attention_heads", heads},
                         {"num_key_value_heads", kv_heads},
                         {"head_dim", 4},
                         {"vocab_size", 23},
                         {"rms_norm_eps", 1e-5},
                         {"tie_word_embeddings", false},
                         {"rope_theta", 100.0}};
  return ModelConfig::from_json(json, "tiny");
}

// Full-shape random values (unit-ish scale so every path matters), sliced to
// each parameter's shard: every layout holds the same model.
void randomize(const std::vector<Parameter*>& parameters, uint64_t seed, int tp) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : parameters) {
    const Shape& full_shape = parameter->full_shape();
    const bool is_norm = parameter->name.ends_with("norm.weight");
    const double fan_in = full_shape.size() == 2 ? static_cast<double>(full_shape[1]) : 1.0;
    std::vector<float> values(static_cast<size_t>(shape_numel(full_shape)));
    for (float& value : values) {
      const float normal = generator.next_normal();
      value = is_norm ? 1.0f + 0.2f * normal
                      : full_shape.size() == 1 ? 0.2f * normal : static_cast<float>(normal / std::sqrt(fan_in));
    }
    parameter->value.copy_from(
        parallel::take_shard(Tensor::from_floats(full_shape, values, parameter->value.dtype()), parameter->shard, tp));
  }
}

Batch batch() {
  Batch batch;
  batch.input_ids = Tensor::from_ints({2, 6}, std::vector<int32_t>{3, 17, 5, 22, 9, 1, 4, 4, 8, 0, 13, 2});
  batch.targets = Tensor::from_ints({2, 6}, std::vector<int32_t>{17, 5, 22, 9, -100, 4, -100, 8, 0, 12, 2, 7});
  return batch;
}

struct Outcome {
  double loss = 0.0;
  std::vector<float> logits;
  std::map<std::string, std::vector<float>> grads;  // full tensors by name
};

double max_abs(const std::vector<float>& values) {
  double worst = 0.0;
  for (float value : values) worst = std::max(worst, static_cast<double>(std::abs(value)));
  return worst;
}

void expect_close(const Outcome& found, const Outcome& expected, const std::string& what) {
  EXPECT_NEAR(found.loss, expected.loss, 2e-6 * std::abs(expected.loss)) << what;
  ASSERT_EQ(found.logits.size(), expected.logits.size()) << what;
  const double logit_scale = max_abs(expected.logits);
  for (size_t i = 0; i < found.logits.size(); ++i)
    ASSERT_NEAR(found.logits[i], expected.logits[i], 2e-5 * logit_scale) << what << ": logit " << i;
  ASSERT_EQ(found.grads.size(), expected.grads.size()) << what;
  for (const auto& [name, values] : expected.grads) {
    const std::vector<float>& got = found.grads.at(name);
    ASSERT_EQ(got.size(), values.size()) << what << ": " << name;
    const double scale = std::max(max_abs(values), 1e-12);
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_NEAR(got[i], values[i], 2e-5 * scale) << what << ": " << name << "[" << i << "]";
  }
}

// Loss, logits and every trainable gradient (gathered) of one forward/backward.
Outcome run_model(Communicator* tp, const ModelConfig& config, ActivationPolicy policy, bool lora, float dropout) {
  auto context = Context::cpu(0, 1);
  LlamaOptions options;
  options.tensor_parallel = tp;
  options.activation_policy = policy;
  LlamaModel model(*context, config, options);
  const int tp_size = tp != nullptr ? tp->size() : 1;
  randomize(model.parameters().all(), 11, tp_size);
  std::unique_ptr<LoraModel> adapters;
  ParameterRegistry* trainable = &model.parameters();
  if (lora) {
    LoraSettings lora_config;
    lora_config.r = 4;
    lora_config.dropout = dropout;
    lora_config.target_modules = {"all-linear"};
    lora_config.seed = 3;
    adapters = std::make_unique<LoraModel>(*context, model, lora_config);
    // B = 0 would leave A without gradient: give B values too.
    std::vector<Parameter*> lora_b;
    for (Parameter* parameter : adapters->parameters().all())
      if (parameter->name.ends_with("lora_B.weight")) lora_b.push_back(parameter);
    randomize(lora_b, 12, tp_size);
    adapters->set_dropout_step(5);
    trainable = &adapters->parameters();
  } else {
    model.parameters().allocate_grads(*context, DType::kF32);
  }
  Outcome outcome;
  outcome.loss = model.forward_backward(*context, batch(), 1.0f).loss;
  if (adapters) adapters->set_training(false);
  Tensor logits;
  model.forward(*context, batch(), &logits);
  outcome.logits = logits.to_floats();
  for (Parameter* parameter : trainable->all()) {
    Tensor full = tp != nullptr ? parallel::gather_shards(*tp, parameter->grad, parameter->shard, "test gather")
                                : parameter->grad;
    EXPECT_EQ(full.shape(), parameter->full_shape()) << parameter->name;
    outcome.grads[parameter->name] = full.to_floats();
  }
  return outcome;
}

class TensorParallelModel : public ::testing::TestWithParam<int> {};

TEST_P(TensorParallelModel, FullFineTuningMatchesOneProcessForEveryActivationPolicy) {
  const int tp = GetParam();
  for (const std::string architecture : {"LlamaForCausalLM", "Qwen2ForCausalLM"}) {
    const ModelConfig config = tiny_config(architecture);
    for (ActivationPolicy policy : {ActivationPolicy::kSaveAll, ActivationPolicy::kRecompute, ActivationPolicy::kSelective}) {
      const Outcome expected = run_model(nullptr, config, policy, false, 0.0f);
      on_ranks(tp, [&](Communicator& group) {
        const Outcome found = run_model(&group, config, policy, false, 0.0f);
        expect_close(found, expected, str_cat(architecture, " tp ", tp, " policy ", static_cast<int>(policy), " rank ", group.rank()));
      });
    }
  }
}

TEST_P(TensorParallelModel, LoraOnEveryLinearWithDropoutMatchesOneProcess) {
  const int tp = GetParam();
  const ModelConfig config = tiny_config("Qwen2ForCausalLM");
  for (float dropout : {0.0f, 0.3f}) {
    const Outcome expected = run_model(nullptr, config, ActivationPolicy::kRecompute, true, dropout);
    on_ranks(tp, [&](Communicator& group) {
      const Outcome found = run_model(&group, config, ActivationPolicy::kRecompute, true, dropout);
      expect_close(found, expected, str_cat("LoRA dropout ", dropout, " tp ", tp, " rank ", group.rank()));
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, TensorParallelModel, ::testing::Values(2, 4));

// The control for the dropout comparison above: dropout 0.3 does change the
// loss, so equal losses mean equal masks (and keying a row-parallel input by
// its local offsets instead fails that comparison).
TEST(TensorParallelLora, TheComparedDropoutChangesTheLoss) {
  const ModelConfig config = tiny_config("LlamaForCausalLM");
  const Outcome with = run_model(nullptr, config, ActivationPolicy::kSaveAll, true, 0.3f);
  const Outcome without = run_model(nullptr, config, ActivationPolicy::kSaveAll, true, 0.0f);
  EXPECT_GT(std::abs(with.loss - without.loss), 1e-4);
}

TEST(TensorParallelModelErrors, HeadsThatDoNotDivideAreOneLineBadInput) {
  // SmolLM2-135M's shape: 9 heads, 3 KV heads.
  const ModelConfig config = tiny_config("LlamaForCausalLM", 9, 3);
  on_ranks(2, [&](Communicator& group) {
    auto context = Context::cpu(0, 1);
    LlamaOptions options;
    options.tensor_parallel = &group;
    try {
      LlamaModel model(*context, config, options);
      ADD_FAILURE() << "no error";
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos);
      EXPECT_NE(std::string(error.what()).find("config.json: field 'num_attention_heads': 9 does not divide by "
                                               "parallel.tp 2"),
                std::string::npos)
          << error.what();
    }
  });
}

TEST(TensorParallelModelIo, EachRankLoadsItsSliceAndTheStateDictGathersTheWholeModel) {
  const ModelConfig config = tiny_config("Qwen2ForCausalLM");
  const std::filesystem::path directory =
      std::filesystem::temp_directory_path() / str_cat("llmft-tp-io-", ::getpid());
  auto context = Context::cpu(0, 1);
  LlamaModel whole(*context, config, {});
  randomize(whole.parameters().all(), 21, 1);
  whole.save_pretrained(directory);
  const std::vector<NamedTensor> expected = whole.state_dict();
  on_ranks(2, [&](Communicator& group) {
    auto rank_context = Context::cpu(0, 1);
    LlamaOptions options;
    options.tensor_parallel = &group;
    auto model = LlamaModel::load(*rank_context, directory, options);
    // q_proj [32, 16]: rows [16r, 16r + 16) hold rank r's 4 of the 8 heads (head_dim 4).
    const Parameter& q = model->parameters().get("model.layers.0.self_attn.q_proj.weight");
    EXPECT_EQ(q.value.shape(), (Shape{16, 16}));
    EXPECT_EQ(q.shard.split_dim, 0);
    EXPECT_EQ(q.shard.offset, 16 * group.rank());
    const std::vector<float> full_q = whole.parameters().get("model.layers.0.self_attn.q_proj.weight").value.to_floats();
    const std::vector<float> local_q = q.value.to_floats();
    for (int64_t row = 0; row < 16; ++row)
      for (int64_t column = 0; column < 16; ++column)
        ASSERT_EQ(local_q[row * 16 + column], full_q[(16 * group.rank() + row) * 16 + column]);
    const Parameter& down = model->parameters().get("model.layers.1.mlp.down_proj.weight");
    EXPECT_EQ(down.value.shape(), (Shape{16, 12}));
    EXPECT_EQ(down.shard.split_dim, 1);
    const std::vector<NamedTensor> gathered = model->state_dict();
    ASSERT_EQ(gathered.size(), expected.size());
    for (size_t i = 0; i < gathered.size(); ++i) {
      EXPECT_EQ(gathered[i].name, expected[i].name);
      EXPECT_EQ(gathered[i].tensor.to_floats(), expected[i].tensor.to_floats()) << gathered[i].name;
    }
  });
  std::filesystem::remove_all(directory);
}

TEST(ShardArithmetic, SlicesAndGathersMatchHandComputedValues) {
  // [2, 6] split along dimension 1 over 3 ranks: rank r holds columns 2r, 2r + 1.
  const Tensor full = Tensor::from_floats({2, 6}, std::vector<float>{0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15});
  const ParameterShard shard = parallel::even_shard({2, 6}, 1, 3, 1);
  EXPECT_EQ(shard.offset, 2);
  EXPECT_EQ(parallel::shard_shape(shard, 3), (Shape{2, 2}));
  EXPECT_EQ(parallel::take_shard(full, shard, 3).to_floats(), (std::vector<float>{2, 3, 12, 13}));
  EXPECT_EQ(parallel::slice_dim(full, 0, 1, 1).to_floats(), (std::vector<float>{10, 11, 12, 13, 14, 15}));
  Tensor target = Tensor::zeros_cpu({2, 6}, DType::kF32);
  parallel::place_slice(target, Tensor::from_floats({2, 2}, std::vector<float>{7, 8, 9, 6}), 1, 4);
  EXPECT_EQ(target.to_floats(), (std::vector<float>{0, 0, 0, 0, 7, 8, 0, 0, 0, 0, 9, 6}));
  on_ranks(3, [&](Communicator& group) {
    const ParameterShard mine = parallel::even_shard({2, 6}, 1, 3, group.rank());
    const Tensor gathered = parallel::gather_shards(group, parallel::take_shard(full, mine, 3), mine, "test");
    EXPECT_EQ(gathered.to_floats(), full.to_floats());
  });
}

}  // namespace
}  // namespace llmft
