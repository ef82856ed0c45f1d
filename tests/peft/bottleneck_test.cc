// Bottleneck adapters against independent references: the base model (the
// zero up-projection start), central finite differences of the loss for every
// adapter tensor in both placements, recomputation under gradient
// checkpointing, and the AdapterHub directory written and read back. Which
// function each placement computes is held against AdapterHub itself by the
// interop test bottleneck_adapters.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/philox.h"
#include "peft/adapter_io.h"
#include "peft/bottleneck.h"
#include "tests/peft/peft_test_util.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

using peft_test::check_gradients;
using peft_test::expect_base_frozen;
using peft_test::logits_of;
using peft_test::tiny_batch;
using peft_test::tiny_llama_dir;

BottleneckAdapters::Config config_of(BottleneckAdapters::Placement placement,
                                     ops::Activation activation = ops::Activation::kRelu) {
  BottleneckAdapters::Config config;
  config.placement = placement;
  config.reduction_factor = 8;
  config.activation = activation;
  config.seed = 6;
  return config;
}

// Every up-projection (zero at init, which hides bugs) ~ stddev · N(0, 1).
void randomize_up(BottleneckAdapters& adapters, uint64_t seed, float stddev) {
  PhiloxGenerator generator(seed);
  for (Parameter* parameter : adapters.parameters().all()) {
    if (parameter->name.find("adapter_up") == std::string::npos) continue;
    std::vector<float> values(static_cast<size_t>(parameter->value.numel()));
    for (float& value : values) value = stddev * generator.next_normal();
    parameter->value.copy_from(Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

constexpr BottleneckAdapters::Placement kPlacements[] = {BottleneckAdapters::Placement::kPfeiffer,
                                                         BottleneckAdapters::Placement::kHoulsby};

TEST(Bottleneck, InitialModelEqualsTheBaseExactlyAndNamesAreAdapterHubs) {
  auto context = Context::cpu(0, 2);
  for (auto placement : kPlacements) {
    auto model = LlamaModel::load(*context, tiny_llama_dir());
    const std::vector<float> base = logits_of(*context, *model, tiny_batch());
    BottleneckAdapters adapters(*context, *model, config_of(placement));
    EXPECT_EQ(logits_of(*context, *model, tiny_batch()), base);
    const int64_t layers = model->config().num_hidden_layers, hidden = model->config().hidden_size;
    const bool houlsby = placement == BottleneckAdapters::Placement::kHoulsby;
    EXPECT_EQ(adapters.bottleneck(), hidden / 8);
    EXPECT_EQ(adapters.parameters().size(), static_cast<size_t>(layers * (houlsby ? 8 : 4)));
    EXPECT_EQ(adapters.parameters().get("model.layers.1.output_adapters.adapters.llmft.adapter_down.0.weight").value.shape(),
              (Shape{hidden / 8, hidden}));
    EXPECT_EQ(adapters.parameters().get("model.layers.0.output_adapters.adapters.llmft.adapter_up.bias").value.shape(),
              (Shape{hidden}));
    EXPECT_EQ(adapters.parameters().find("model.layers.0.attention_adapters.adapters.llmft.adapter_up.weight") != nullptr,
              houlsby);
  }
}

TEST(Bottleneck, GradientsMatchFiniteDifferencesInBothPlacements) {
  for (auto placement : kPlacements) {
    for (ops::Activation activation : {ops::Activation::kRelu, ops::Activation::kGelu}) {
      SCOPED_TRACE(static_cast<int>(placement) * 10 + static_cast<int>(activation));
      auto context = Context::cpu(0, 2);
      auto model = LlamaModel::load(*context, tiny_llama_dir());
      BottleneckAdapters adapters(*context, *model, config_of(placement, activation));
      randomize_up(adapters, 3, 0.3f);
      check_gradients(*context, *model, adapters, activation == ops::Activation::kRelu ? 1e-3f : 1e-2f);
      expect_base_frozen(*model);
    }
  }
}

// Pfeiffer feeds the adapter s = r + h, Houlsby h: from the same weights
// (one adapter per layer at the MLP site in both) they compute different
// functions, each deterministic. (Which one matches AdapterHub is held by the
// interop test bottleneck_adapters.)
TEST(Bottleneck, PlacementsComputeDifferentFunctionsFromTheSameWeights) {
  auto context = Context::cpu(0, 2);
  std::vector<float> results[2];
  for (int i = 0; i < 2; ++i) {
    auto model = LlamaModel::load(*context, tiny_llama_dir());
    BottleneckAdapters adapters(*context, *model, config_of(kPlacements[i]));
    randomize_up(adapters, 3, 0.3f);
    results[i] = logits_of(*context, *model, tiny_batch());
    // Deterministic: a second forward gives the same bits.
    EXPECT_EQ(logits_of(*context, *model, tiny_batch()), results[i]);
  }
  double difference = 0.0;
  for (size_t j = 0; j < results[0].size(); ++j)
    difference = std::max(difference, static_cast<double>(std::abs(results[0][j] - results[1][j])));
  EXPECT_GT(difference, 1e-3);
}

TEST(Bottleneck, RecomputedBlocksGiveTheSameGradients) {
  auto context = Context::cpu(0, 2);
  for (auto placement : kPlacements) {
    std::vector<std::vector<float>> results[3];
    int run = 0;
    for (ActivationPolicy policy :
         {ActivationPolicy::kSaveAll, ActivationPolicy::kRecompute, ActivationPolicy::kSelective}) {
      LlamaOptions options;
      options.activation_policy = policy;
      auto model = LlamaModel::load(*context, tiny_llama_dir(), options);
      BottleneckAdapters adapters(*context, *model, config_of(placement));
      randomize_up(adapters, 3, 0.3f);
      model->forward_backward(*context, tiny_batch());
      for (const Parameter* parameter : adapters.parameters().all())
        results[run].push_back(parameter->grad.to_floats());
      ++run;
    }
    EXPECT_EQ(results[0], results[1]);
    EXPECT_EQ(results[0], results[2]);
  }
}

using BottleneckAdapterDirTest = peft_test::AdapterDirectoryTest;

TEST_F(BottleneckAdapterDirTest, RoundTripsInBothPlacements) {
  for (auto placement : kPlacements) {
    auto model = LlamaModel::load(*context_, tiny_llama_dir());
    BottleneckAdapters adapters(*context_, *model, config_of(placement, ops::Activation::kSilu));
    randomize_up(adapters, 3, 0.3f);
    adapters.save_adapter(directory_, "tiny_llama");
    const std::vector<float> expected = logits_of(*context_, *model, tiny_batch());
    auto fresh = LlamaModel::load(*context_, tiny_llama_dir());
    std::unique_ptr<PeftMethod> loaded = load_peft_adapter(*context_, *fresh, directory_);
    ASSERT_EQ(loaded->type(), PeftType::kBottleneck);
    const auto& bottleneck = dynamic_cast<const BottleneckAdapters&>(*loaded);
    EXPECT_EQ(bottleneck.config().placement, placement);
    EXPECT_EQ(bottleneck.config().activation, ops::Activation::kSilu);
    EXPECT_EQ(logits_of(*context_, *fresh, tiny_batch()), expected);
    loaded.reset();
    std::filesystem::remove_all(directory_);
  }
}

TEST_F(BottleneckAdapterDirTest, WhatLlmftDoesNotComputeIsRefusedNamingTheField) {
  auto model = LlamaModel::load(*context_, tiny_llama_dir());
  {
    BottleneckAdapters adapters(*context_, *model, config_of(BottleneckAdapters::Placement::kPfeiffer));
    adapters.save_adapter(directory_, "tiny_llama");
  }
  const std::string file = (directory_ / "adapter_config.json").string();
  edit_config([](nlohmann::json& json) { json["config"]["ln_before"] = true; });
  EXPECT_EQ(load_error(), file + ": field 'config.ln_before': expected false (not supported by llmft), found true");
  edit_config([](nlohmann::json& json) {
    json["config"]["ln_before"] = false;
    json["hidden_size"] = 4096;
  });
  EXPECT_EQ(load_error(), str_cat(file, ": field 'hidden_size': expected ", model->config().hidden_size,
                                  " (the base model's hidden_size), found 4096; the adapter was made for another base "
                                  "model"));
  edit_config([&](nlohmann::json& json) {
    json["hidden_size"] = model->config().hidden_size;
    json["config"]["non_linearity"] = "elu";
  });
  EXPECT_EQ(load_error(), file + ": field 'config.non_linearity': expected relu, gelu, swish, silu or tanh, found "
                                 "\"elu\"");
  edit_config([](nlohmann::json& json) {
    json["config"]["non_linearity"] = "relu";
    json["config"]["mh_adapter"] = true;  // Houlsby's attention adapters, which the file does not hold
  });
  EXPECT_NE(load_error().find("fields 'config.mh_adapter' true and 'config.original_ln_before' true"),
            std::string::npos)
      << load_error();
}

TEST(Bottleneck, AWidthThatDoesNotDivideTheHiddenSizeIsRefused) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, tiny_llama_dir());
  BottleneckAdapters::Config config = config_of(BottleneckAdapters::Placement::kPfeiffer);
  config.bottleneck = 7;
  EXPECT_EQ(testing::bad_input_message([&] { BottleneckAdapters adapters(*context, *model, config); }),
            str_cat("peft.bottleneck: field 'bottleneck': 7 must divide hidden_size ", model->config().hidden_size,
                    " (AdapterHub stores the width as hidden_size / reduction_factor)"));
}

}  // namespace
}  // namespace llmft
