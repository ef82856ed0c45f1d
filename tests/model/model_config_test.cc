// ModelConfig: reading Hugging Face config.json files, rejecting bad fields
// with messages that name the file and field, and the RoPE frequencies.
#include "model/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace llmft {
namespace {

using nlohmann::json;

json tiny_llama() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
    "tie_word_embeddings": false, "hidden_act": "silu",
    "bos_token_id": 1, "eos_token_id": [2, 3], "torch_dtype": "bfloat16"})");
}

// Parses `config` and returns the error message (empty if it parsed).
std::string error_of(const json& config) {
  try {
    ModelConfig::from_json(config, "dir/config.json");
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    return error.what();
  }
  return "";
}

TEST(ModelConfig, ReadsLlamaFieldsAndDefaults) {
  ModelConfig config = ModelConfig::from_json(tiny_llama(), "config.json");
  EXPECT_EQ(config.architecture, "LlamaForCausalLM");
  EXPECT_EQ(config.hidden_size, 64);
  EXPECT_EQ(config.num_key_value_heads, 2);
  EXPECT_EQ(config.head_dim, 16);  // default hidden / heads
  EXPECT_EQ(config.vocab_size, 100);
  EXPECT_DOUBLE_EQ(config.rms_norm_eps, 1e-5);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_EQ(config.bos_token_ids, (std::vector<int64_t>{1}));
  EXPECT_EQ(config.eos_token_ids, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(config.torch_dtype, "bfloat16");

  json minimal = tiny_llama();
  minimal.erase("num_key_value_heads");
  minimal.erase("rope_theta");
  minimal.erase("tie_word_embeddings");
  ModelConfig defaults = ModelConfig::from_json(minimal, "config.json");
  EXPECT_EQ(defaults.num_key_value_heads, 4);  // = heads (plain multi-head attention)
  EXPECT_DOUBLE_EQ(defaults.rope_theta, 10000.0);
  EXPECT_FALSE(defaults.tie_word_embeddings);
}

TEST(ModelConfig, Qwen2HasQkvBiasButNoOutputBias) {
  json qwen = tiny_llama();
  qwen["architectures"] = {"Qwen2ForCausalLM"};
  ModelConfig config = ModelConfig::from_json(qwen, "config.json");
  EXPECT_EQ(config.model_type, "qwen2");
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_FALSE(config.o_bias);

  json llama = tiny_llama();
  llama["attention_bias"] = true;
  ModelConfig biased = ModelConfig::from_json(llama, "config.json");
  EXPECT_TRUE(biased.qkv_bias);
  EXPECT_TRUE(biased.o_bias);  // LlamaAttention puts the bias on o_proj too
}

TEST(ModelConfig, RejectsEachBadField) {
  json config = tiny_llama();
  config.erase("hidden_size");
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'hidden_size': expected a positive integer, found nothing (field missing)");

  config = tiny_llama();
  config["num_key_value_heads"] = 3;
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'num_key_value_heads': expected a divisor of num_attention_heads (4), found 3");

  config = tiny_llama();
  config["architectures"] = {"GPT2LMHeadModel"};
  EXPECT_NE(error_of(config).find("dir/config.json: field 'architectures': expected a list holding one of "
                                  "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, found array "
                                  "[\"GPT2LMHeadModel\"]"),
            std::string::npos)
      << error_of(config);

  config = tiny_llama();
  config["vocab_size"] = "100";
  EXPECT_EQ(error_of(config), "dir/config.json: field 'vocab_size': expected a positive integer, found string \"100\"");

  config = tiny_llama();
  config["intermediate_size"] = -4;
  EXPECT_EQ(error_of(config), "dir/config.json: field 'intermediate_size': expected a positive integer, found number -4");

  config = tiny_llama();
  config["hidden_act"] = "gelu";
  EXPECT_EQ(error_of(config), "dir/config.json: field 'hidden_act': expected \"silu\" (SwiGLU MLP), found string \"gelu\"");

  config = tiny_llama();
  config["tie_word_embeddings"] = 1;
  EXPECT_EQ(error_of(config), "dir/config.json: field 'tie_word_embeddings': expected true or false, found number 1");

  config = tiny_llama();
  config["hidden_size"] = 66;  // not a multiple of 4 heads, and no head_dim
  EXPECT_NE(error_of(config).find("field 'hidden_size': expected a multiple of num_attention_heads (4)"),
            std::string::npos);

  config = tiny_llama();
  config["torch_dtype"] = "int8";
  EXPECT_NE(error_of(config).find("field 'torch_dtype'"), std::string::npos);

  config = tiny_llama();
  config["eos_token_id"] = "</s>";
  EXPECT_NE(error_of(config).find("field 'eos_token_id': expected a non-negative integer or a list of them"),
            std::string::npos);

  config = tiny_llama();
  config.erase("architectures");
  config.erase("model_type");
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'architectures': expected a list holding one of LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM (or model_type llama, mistral or qwen2), found nothing (field "
            "missing)");
  config["model_type"] = "mistral";  // model_type alone is enough
  EXPECT_EQ(ModelConfig::from_json(config, "c").architecture, "MistralForCausalLM");

  EXPECT_EQ(error_of(json::array()), "dir/config.json: expected a JSON object, found array []");
}

TEST(ModelConfig, RejectsBadRopeScaling) {
  json config = tiny_llama();
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'rope_scaling.rope_type': expected \"default\", \"linear\" or \"llama3\" (others "
            "are not supported), found string \"yarn\"");

  config = tiny_llama();
  config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"original_max_position_embeddings", 8192}};
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'rope_scaling.high_freq_factor': expected a positive number, found nothing "
            "(field missing)");

  config = tiny_llama();
  config["rope_scaling"] = {{"type", "linear"}, {"factor", "two"}};
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'rope_scaling.factor': expected a positive number, found string \"two\"");

  config = tiny_llama();
  config["rope_scaling"] = 2;
  EXPECT_EQ(error_of(config), "dir/config.json: field 'rope_scaling': expected null or an object, found number 2");
}

TEST(ModelConfig, MissingOrMalformedFileNamesThePath) {
  std::filesystem::path directory = std::filesystem::temp_directory_path() / "llmft_model_config_test";
  std::filesystem::create_directories(directory);
  std::filesystem::remove(directory / "config.json");
  try {
    ModelConfig::load(directory);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("config.json: cannot open"), std::string::npos) << error.what();
  }
  std::ofstream(directory / "config.json") << "{\"hidden_size\": 64,";
  try {
    ModelConfig::load(directory);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("config.json: not valid JSON"), std::string::npos) << error.what();
  }
  // A number beyond a double's range (out_of_range, not parse_error).
  std::ofstream(directory / "config.json") << "{\"hidden_size\": 1e999}";
  try {
    ModelConfig::load(directory);
    FAIL() << "expected an error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("config.json: not valid JSON"), std::string::npos) << error.what();
  }
  std::filesystem::remove_all(directory);
}

// transformers 5 writes rope_theta and the scaling inside rope_parameters;
// read as transformers 4's rope_theta + rope_scaling would be (a config that
// ignored it would silently run RoPE with base 10000).
TEST(ModelConfig, ReadsTransformers5RopeParameters) {
  json config = tiny_llama();
  config.erase("rope_theta");
  config["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  ModelConfig plain = ModelConfig::from_json(config, "config.json");
  EXPECT_EQ(plain.rope_theta, 1000000.0);
  EXPECT_EQ(plain.rope_scaling.type, RopeScalingType::kNone);
  config["rope_parameters"] = {{"rope_theta", 500000.0}, {"rope_type", "llama3"}, {"factor", 8.0},
                               {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                               {"original_max_position_embeddings", 64}};
  config["rope_theta"] = 10000.0;  // rope_parameters wins, as in transformers 5
  ModelConfig scaled = ModelConfig::from_json(config, "config.json");
  EXPECT_EQ(scaled.rope_theta, 500000.0);
  EXPECT_EQ(scaled.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(scaled.rope_scaling.original_max_position_embeddings, 64);
  config["rope_parameters"] = {{"rope_theta", -1.0}, {"rope_type", "default"}};
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'rope_parameters.rope_theta': expected a positive number, found number -1.0");
  config["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", "yarn"}};
  EXPECT_EQ(error_of(config),
            "dir/config.json: field 'rope_parameters.rope_type': expected \"default\", \"linear\" or \"llama3\" "
            "(others are not supported), found string \"yarn\"");
}

TEST(ModelConfig, JsonRoundTrip) {
  json source = tiny_llama();
  source["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  ModelConfig config = ModelConfig::from_json(source, "config.json");
  ModelConfig again = ModelConfig::from_json(config.to_json(), "round-trip");
  EXPECT_EQ(again.to_json(), config.to_json());
  EXPECT_EQ(again.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(again.eos_token_ids, config.eos_token_ids);
  EXPECT_EQ(config.to_json()["model_type"], "llama");
}

TEST(ModelConfig, RopeFrequencies) {
  ModelConfig config = ModelConfig::from_json(tiny_llama(), "config.json");
  std::vector<float> plain = config.rope_inv_freq();
  ASSERT_EQ(plain.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(plain[i], static_cast<float>(std::pow(10000.0, -2.0 * i / 16.0)));

  config.rope_scaling.type = RopeScalingType::kLinear;
  config.rope_scaling.factor = 4.0;
  std::vector<float> linear = config.rope_inv_freq();
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(linear[i], plain[i] / 4.0f);

  // llama3 with original context 64, low 1, high 4, factor 8: wavelengths
  // 2 pi / f_i. Above 64 -> f / 8; below 16 -> f; between -> interpolated
  // with smooth = (64 / wavelen - 1) / 3 (hand-applied formula).
  config.rope_scaling = {RopeScalingType::kLlama3, 8.0, 1.0, 4.0, 64};
  std::vector<float> llama3 = config.rope_inv_freq();
  int low = 0, mid = 0, high = 0;
  for (int i = 0; i < 8; ++i) {
    double f = std::pow(10000.0, -2.0 * i / 16.0);
    double wavelen = 2 * M_PI / f;
    double expected = f;
    if (wavelen > 64) {
      expected = f / 8, ++low;
    } else if (wavelen >= 16) {
      double smooth = (64 / wavelen - 1) / 3;
      expected = (1 - smooth) * f / 8 + smooth * f, ++mid;
    } else {
      ++high;
    }
    EXPECT_FLOAT_EQ(llama3[i], static_cast<float>(expected)) << i;
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
}

}  // namespace
}  // namespace llmft
