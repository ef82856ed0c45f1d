// Prompt tuning, P-tuning and prefix tuning against independent references:
// central finite differences of the loss for every parameter of each method
// (encoders included); the base model run on the virtual tokens' own ids
// (prompt tuning from TEXT is the base model reading those tokens first);
// the base model's own KV cache as a prefix (prefix tuning with the cached
// keys/values of a prompt is the base model reading that prompt first, which
// pins PEFT's position rule: real tokens numbered from P); incremental
// decoding against the full forward; adapter directories written and read
// back.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/philox.h"
#include "peft/adapter_io.h"
#include "peft/prefix_tuning.h"
#include "peft/prompt_tuning.h"
#include "tests/peft/peft_test_util.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

using peft_test::check_gradients;
using peft_test::expect_base_frozen;
using peft_test::logits_of;
using peft_test::tiny_batch;
using peft_test::tiny_llama_dir;

// Padded rows (prompt tuning cannot take packed ones): the tiny batch as is.
PromptTuning::Config prompt_config(PeftType type, int64_t tokens) {
  PromptTuning::Config config;
  config.type = type;
  config.num_virtual_tokens = tokens;
  config.encoder_hidden_size = 12;
  config.seed = 3;
  return config;
}

PrefixTuning::Config prefix_config(int64_t tokens, bool projection) {
  PrefixTuning::Config config;
  config.num_virtual_tokens = tokens;
  config.prefix_projection = projection;
  config.encoder_hidden_size = 10;
  config.seed = 4;
  return config;
}

TEST(PromptTuning, GradientsMatchFiniteDifferencesAndTheBaseIsFrozen) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  PromptTuning method(*context, *model, prompt_config(PeftType::kPromptTuning, 3));
  EXPECT_EQ(method.parameters().size(), 1u);
  check_gradients(*context, *model, method);
  expect_base_frozen(*model);
}

TEST(PTuning, EncoderAndEmbeddingGradientsMatchFiniteDifferences) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  PromptTuning method(*context, *model, prompt_config(PeftType::kPTuning, 3));
  // PEFT's PromptEncoder: embedding, then mlp_head.0/2/4 weight and bias.
  ASSERT_EQ(method.parameters().size(), 7u);
  EXPECT_EQ(method.parameters().get("prompt_encoder.mlp_head.0.weight").value.shape(),
            (Shape{12, model->config().hidden_size}));
  EXPECT_EQ(method.parameters().get("prompt_encoder.mlp_head.4.weight").value.shape(),
            (Shape{model->config().hidden_size, 12}));
  check_gradients(*context, *model, method, 1e-3f);
  expect_base_frozen(*model);
}

TEST(PrefixTuning, GradientsMatchFiniteDifferencesWithAndWithoutProjection) {
  for (bool projection : {false, true}) {
    SCOPED_TRACE(projection ? "prefix_projection" : "plain");
    auto context = Context::cpu(0, 2);
    auto model = LlamaModel::load(*context, tiny_llama_dir());
    PrefixTuning method(*context, *model, prefix_config(2, projection));
    const ModelConfig& config = model->config();
    const int64_t kv = config.num_key_value_heads * config.head_dim;
    const Shape expected = projection ? Shape{2, kv} : Shape{2, config.num_hidden_layers * 2 * kv};
    EXPECT_EQ(method.parameters().get("prefix_encoder.embedding.weight").value.shape(), expected);
    check_gradients(*context, *model, method);
    expect_base_frozen(*model);
  }
}

// Gradient checkpointing reruns each block's forward, and with it layer 0's
// prefix projection, in the backward: the gradients stay bit for bit.
TEST(PrefixTuning, RecomputedBlocksGiveTheSameGradients) {
  auto context = Context::cpu(0, 2);
  std::vector<std::vector<float>> results[3];
  int run = 0;
  for (ActivationPolicy policy : {ActivationPolicy::kSaveAll, ActivationPolicy::kRecompute, ActivationPolicy::kSelective}) {
    LlamaOptions options;
    options.activation_policy = policy;
    auto model = LlamaModel::load(*context, tiny_llama_dir(), options);
    PrefixTuning method(*context, *model, prefix_config(2, true));
    model->forward_backward(*context, tiny_batch());
    for (const Parameter* parameter : method.parameters().all()) results[run].push_back(parameter->grad.to_floats());
    ++run;
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(results[0], results[2]);
}

// TEXT init takes the base model's embeddings of the text's ids; with
// positions 0 .. P+T-1 the result is exactly the base model reading those ids
// before the input.
TEST(PromptTuning, TextInitIsTheBaseModelReadingTheTextFirst) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  const std::vector<int32_t> text = {7, 30, 2};
  const std::vector<int32_t> input = {1, 17, 5, 42};
  Batch longer;
  std::vector<int32_t> joined = text;
  joined.insert(joined.end(), input.begin(), input.end());
  longer.input_ids = Tensor::from_ints({1, 7}, joined);
  const std::vector<float> expected = logits_of(*context, *model, longer);

  PromptTuning::Config config = prompt_config(PeftType::kPromptTuning, 3);
  config.init = PromptTuning::Init::kText;
  config.init_token_ids = text;
  auto method = std::make_unique<PromptTuning>(*context, *model, config);
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, 4}, input);
  const std::vector<float> got = logits_of(*context, *model, batch);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-5f) << i;

  // Shorter text repeats, longer text is cut (PEFT's rule).
  PromptTuning::Config repeated = config;
  repeated.num_virtual_tokens = 5;
  repeated.init_token_ids = {7, 30};
  method.reset();  // detaches its hook first
  method = std::make_unique<PromptTuning>(*context, *model, repeated);
  const Tensor table = model->parameters().get("model.embed_tokens.weight").value;
  const std::vector<float> embeddings = method->virtual_token_embeddings().to_floats();
  const int64_t hidden = model->config().hidden_size;
  const int32_t want[] = {7, 30, 7, 30, 7};
  for (int64_t i = 0; i < 5; ++i) {
    const std::vector<float> row = table.slice_rows(want[i], want[i] + 1).to_floats();
    for (int64_t d = 0; d < hidden; ++d) ASSERT_EQ(embeddings[static_cast<size_t>(i * hidden + d)], row[d]);
  }
}

// The keys/values the base model caches for a prompt, used as the prefix,
// make prefix tuning the base model reading that prompt first: same logits at
// every real position. This holds only when the real tokens are numbered from
// P (transformers + PEFT's rule), not from 0.
TEST(PrefixTuning, TheBaseModelsOwnCacheAsPrefixIsTheBaseReadingThePromptFirst) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  const std::vector<int32_t> prompt = {7, 30, 2};
  const std::vector<int32_t> input = {1, 17, 5, 42};
  KvCache cache;
  model->forward_incremental(*context, prompt, cache);
  std::vector<int32_t> joined = prompt;
  joined.insert(joined.end(), input.begin(), input.end());
  Batch longer;
  longer.input_ids = Tensor::from_ints({1, 7}, joined);
  const std::vector<float> full = logits_of(*context, *model, longer);

  PrefixTuning method(*context, *model, prefix_config(3, false));
  const ModelConfig& config = model->config();
  const int64_t kv = config.num_key_value_heads * config.head_dim, layers = config.num_hidden_layers;
  std::vector<float> values(static_cast<size_t>(3 * layers * 2 * kv));
  for (int64_t l = 0; l < layers; ++l) {
    const std::vector<float> keys = cache.keys[l].to_floats(), cached_values = cache.values[l].to_floats();
    for (int64_t p = 0; p < 3; ++p)
      for (int64_t i = 0; i < kv; ++i) {
        values[static_cast<size_t>((p * layers * 2 + 2 * l) * kv + i)] = keys[static_cast<size_t>(p * kv + i)];
        values[static_cast<size_t>((p * layers * 2 + 2 * l + 1) * kv + i)] = cached_values[static_cast<size_t>(p * kv + i)];
      }
  }
  Parameter& embedding = method.parameters().get("prefix_encoder.embedding.weight");
  embedding.value.copy_from(Tensor::from_floats(embedding.value.shape(), values, DType::kF32));
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, 4}, input);
  const std::vector<float> got = logits_of(*context, *model, batch);
  const size_t vocab = got.size() / 4;
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], full[3 * vocab + i], 1e-5f) << i;
}

// Generation: the KV cache path (virtual tokens or prefix at the prefill)
// gives the full forward's logits at every step.
TEST(PromptLearning, IncrementalDecodingMatchesTheFullForward) {
  auto context = Context::cpu(0, 2);
  const std::vector<int32_t> ids = {5, 9, 2, 44, 61, 7};
  for (int method_index = 0; method_index < 3; ++method_index) {
    SCOPED_TRACE(method_index);
    auto model = LlamaModel::load(*context, tiny_llama_dir());
    std::unique_ptr<PeftMethod> method;
    if (method_index == 0) method = std::make_unique<PromptTuning>(*context, *model, prompt_config(PeftType::kPromptTuning, 3));
    if (method_index == 1) method = std::make_unique<PromptTuning>(*context, *model, prompt_config(PeftType::kPTuning, 2));
    if (method_index == 2) method = std::make_unique<PrefixTuning>(*context, *model, prefix_config(2, true));
    Batch batch;
    batch.input_ids = Tensor::from_ints({1, 6}, ids);
    const std::vector<float> full = logits_of(*context, *model, batch);
    const int64_t virtual_tokens = method_index < 2 ? method->parameters().all().front()->value.size(0) : 0;
    const size_t vocab = full.size() / static_cast<size_t>(6 + virtual_tokens);
    KvCache cache;
    std::vector<float> step = model->forward_incremental(*context, std::span(ids).first(2), cache).to_floats();
    for (size_t t = 2; t <= ids.size(); ++t) {
      const size_t row = static_cast<size_t>(virtual_tokens) + t - 1;
      for (size_t v = 0; v < vocab; ++v) ASSERT_NEAR(step[v], full[row * vocab + v], 1e-4f) << "token " << t;
      if (t < ids.size()) step = model->forward_incremental(*context, std::span(ids).subspan(t, 1), cache).to_floats();
    }
  }
}

class PromptLearningAdapterTest : public peft_test::AdapterDirectoryTest {
 protected:
  // Saves `method`, loads the directory onto a fresh base and compares logits.
  void round_trip(PeftMethod& method, LlamaModel& model, const char* type) {
    method.save_adapter(directory_, "tiny_llama");
    std::ifstream in(directory_ / "adapter_config.json");
    const nlohmann::json json = nlohmann::json::parse(in);
    EXPECT_EQ(json.at("peft_type"), type);
    const std::vector<float> expected = logits_of(*context_, model, tiny_batch());
    auto fresh = LlamaModel::load(*context_, tiny_llama_dir());
    std::unique_ptr<PeftMethod> loaded = load_peft_adapter(*context_, *fresh, directory_);
    EXPECT_EQ(peft_type_name(loaded->type()), type);
    EXPECT_EQ(loaded->parameters().size(), 1u);  // the stored tensor, no encoder
    const std::vector<float> got = logits_of(*context_, *fresh, tiny_batch());
    ASSERT_EQ(got.size(), expected.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-5f) << i;
  }

};

TEST_F(PromptLearningAdapterTest, EveryMethodRoundTripsWithTheComputedEmbeddings) {
  {
    auto model = LlamaModel::load(*context_, tiny_llama_dir());
    PromptTuning method(*context_, *model, prompt_config(PeftType::kPromptTuning, 3));
    round_trip(method, *model, "PROMPT_TUNING");
  }
  {
    auto model = LlamaModel::load(*context_, tiny_llama_dir());
    PromptTuning method(*context_, *model, prompt_config(PeftType::kPTuning, 3));
    round_trip(method, *model, "P_TUNING");
  }
  {
    auto model = LlamaModel::load(*context_, tiny_llama_dir());
    PrefixTuning method(*context_, *model, prefix_config(2, true));
    round_trip(method, *model, "PREFIX_TUNING");
  }
}

TEST_F(PromptLearningAdapterTest, AnAdapterForAnotherBaseOrOfAnUnknownTypeIsRefused) {
  auto model = LlamaModel::load(*context_, tiny_llama_dir());
  {
    PrefixTuning method(*context_, *model, prefix_config(2, false));
    method.save_adapter(directory_, "tiny_llama");
  }
  const ModelConfig& config = model->config();
  const std::string file = (directory_ / "adapter_config.json").string();
  edit_config([](nlohmann::json& json) { json["num_layers"] = 7; });
  EXPECT_EQ(load_error(), str_cat(file, ": field 'num_layers': expected ", config.num_hidden_layers,
                                  " (the base model's num_hidden_layers), found 7; the adapter was made for another "
                                  "base model"));
  edit_config([&](nlohmann::json& json) {
    json["num_layers"] = config.num_hidden_layers;
    json["token_dim"] = 3;
  });
  EXPECT_EQ(load_error(), str_cat(file, ": field 'token_dim': expected ", config.num_key_value_heads * config.head_dim,
                                  " (the base model's num_key_value_heads x head_dim), found 3; the adapter was made "
                                  "for another base model"));
  edit_config([](nlohmann::json& json) { json["peft_type"] = "IA3"; });
  EXPECT_EQ(load_error(), str_cat(file, ": field 'peft_type': expected \"LORA\", \"PROMPT_TUNING\", \"P_TUNING\" or "
                                  "\"PREFIX_TUNING\", found \"IA3\""));
  edit_config([&](nlohmann::json& json) {
    json["peft_type"] = "PREFIX_TUNING";
    json["token_dim"] = config.num_key_value_heads * config.head_dim;
    json["num_virtual_tokens"] = 5;
  });
  EXPECT_NE(load_error().find("tensor 'prompt_embeddings': expected shape [5, "), std::string::npos) << load_error();
}

TEST(PromptLearning, MergeIsRefusedWithTheReason) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  PrefixTuning method(*context, *model, prefix_config(2, false));
  EXPECT_NE(method.merge_unsupported_reason().find("no base weight can hold them"), std::string::npos);
  EXPECT_NE(testing::bad_input_message([&] { save_merged_model(method, ::testing::TempDir() + "/never"); })
                .find("merge: PREFIX_TUNING adds trained key/value positions"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(::testing::TempDir() + "/never"));
}

}  // namespace
}  // namespace llmft
