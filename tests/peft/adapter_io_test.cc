// Hugging Face PEFT adapter directories: save → load round trip (config,
// tensors bit-exact, logits), PEFT's tensor names and shapes in the file,
// merged export reloaded by LlamaModel::load, and one clear error per bad
// adapter file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "peft/adapter_io.h"
#include "tests/peft/peft_test_util.h"
#include "tests/test_util.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;
using peft_test::logits_of;
using peft_test::randomize_lora_b;
using peft_test::tiny_batch;
using peft_test::tiny_llama_dir;

class AdapterIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() /
                 ("llmft_peft_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
                  std::to_string(::getpid()));
    fs::remove_all(directory_);
    context_ = Context::cpu(0, 2);
    model_ = LlamaModel::load(*context_, tiny_llama_dir());
    LoraSettings config;
    config.r = 4;
    config.alpha = 12.0f;
    config.dropout = 0.05f;
    config.use_rslora = true;
    config.target_modules = {"q_proj", "v_proj", "down_proj"};
    config.seed = 21;
    lora_ = std::make_unique<LoraModel>(*context_, *model_, config);
    randomize_lora_b(*lora_, 8, 0.3f);
    lora_->set_training(false);
    save_lora_adapter(*lora_, directory_, "tiny_llama");
  }
  void TearDown() override { fs::remove_all(directory_); }

  // Rewrites the adapter file with `edit` applied to its tensors.
  void edit_weights(const std::function<void(std::vector<NamedTensor>&)>& edit) {
    const SafetensorsFile file = SafetensorsFile::open(directory_ / "adapter_model.safetensors");
    std::vector<NamedTensor> tensors;
    for (const SafetensorsEntry& entry : file.entries())
      tensors.push_back({entry.name, file.tensor_as(entry.name, DType::kF32)});
    edit(tensors);
    write_safetensors(directory_ / "adapter_model.safetensors", tensors);
  }
  void edit_config(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json json = nlohmann::json::parse(std::ifstream(directory_ / "adapter_config.json"));
    edit(json);
    std::ofstream(directory_ / "adapter_config.json") << json.dump();
  }
  std::string load_error() {
    auto fresh = LlamaModel::load(*context_, tiny_llama_dir());
    return testing::bad_input_message([&] { load_lora_adapter(*context_, *fresh, directory_); });
  }

  fs::path directory_;
  std::unique_ptr<Context> context_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<LoraModel> lora_;
};

TEST_F(AdapterIoTest, FileHoldsPeftNamesShapesAndConfig) {
  const SafetensorsFile file = SafetensorsFile::open(directory_ / "adapter_model.safetensors");
  EXPECT_EQ(file.entries().size(), 12u);  // 3 modules x 2 layers x (A, B)
  EXPECT_EQ(file.entry("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").shape, (Shape{4, 64}));
  EXPECT_EQ(file.entry("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight").shape, (Shape{64, 4}));
  EXPECT_EQ(file.entry("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").shape, (Shape{4, 96}));
  EXPECT_EQ(file.entry("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").shape, (Shape{64, 4}));
  const nlohmann::json json = nlohmann::json::parse(std::ifstream(directory_ / "adapter_config.json"));
  EXPECT_EQ(json.at("peft_type"), "LORA");
  EXPECT_EQ(json.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(json.at("r"), 4);
  EXPECT_EQ(json.at("lora_alpha"), 12.0);
  EXPECT_EQ(json.at("use_rslora"), true);
  EXPECT_EQ(json.at("bias"), "none");
  EXPECT_EQ(json.at("base_model_name_or_path"), "tiny_llama");
  EXPECT_EQ(json.at("target_modules"), nlohmann::json({"q_proj", "v_proj", "down_proj"}));
}

TEST_F(AdapterIoTest, SaveLoadRoundTrip) {
  auto fresh = LlamaModel::load(*context_, tiny_llama_dir());
  std::unique_ptr<LoraModel> loaded = load_lora_adapter(*context_, *fresh, directory_);
  EXPECT_EQ(loaded->config().r, 4);
  EXPECT_EQ(loaded->config().alpha, 12.0f);
  EXPECT_FLOAT_EQ(loaded->config().dropout, 0.05f);
  EXPECT_TRUE(loaded->config().use_rslora);
  EXPECT_EQ(loaded->config().target_modules, (std::vector<std::string>{"q_proj", "v_proj", "down_proj"}));
  ASSERT_EQ(loaded->parameters().size(), lora_->parameters().size());
  for (const Parameter* parameter : lora_->parameters().all())
    EXPECT_EQ(loaded->parameters().get(parameter->name).value.to_floats(), parameter->value.to_floats())
        << parameter->name;
  loaded->set_training(false);
  EXPECT_EQ(logits_of(*context_, *fresh, tiny_batch()), logits_of(*context_, *model_, tiny_batch()));
}

// The merged directory, loaded as a plain model, gives the base+LoRA logits.
TEST_F(AdapterIoTest, MergedExportReloadsWithAdapterLogits) {
  const fs::path merged_dir = directory_ / "merged";
  save_merged_model(*lora_, merged_dir);
  auto merged = LlamaModel::load(*context_, merged_dir);
  const std::vector<float> expected = logits_of(*context_, *model_, tiny_batch());
  const std::vector<float> got = logits_of(*context_, *merged, tiny_batch());
  ASSERT_EQ(expected.size(), got.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-4f) << i;
  // bf16 export: config says so and the weights are bf16.
  save_merged_model(*lora_, directory_ / "merged_bf16", DType::kBF16);
  const nlohmann::json config = nlohmann::json::parse(std::ifstream(directory_ / "merged_bf16" / "config.json"));
  EXPECT_EQ(config.at("torch_dtype"), "bfloat16");
  EXPECT_EQ(SafetensorsCheckpoint::open(directory_ / "merged_bf16").entry("model.norm.weight").dtype_name, "BF16");
}

TEST_F(AdapterIoTest, TokenizerFilesAreCopied) {
  const fs::path source = directory_ / "source", target = directory_ / "target";
  fs::create_directories(source);
  std::ofstream(source / "tokenizer.json") << "{\"version\": \"1.0\"}";
  std::ofstream(source / "tokenizer_config.json") << "{}";
  std::ofstream(source / "model.safetensors") << "not a tokenizer file";
  EXPECT_EQ(copy_tokenizer_files(source, target),
            (std::vector<std::string>{"tokenizer.json", "tokenizer_config.json"}));
  std::ifstream copied(target / "tokenizer.json");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(copied), {}), "{\"version\": \"1.0\"}");
  EXPECT_FALSE(fs::exists(target / "model.safetensors"));
}

TEST_F(AdapterIoTest, MissingTensorIsNamed) {
  edit_weights([](std::vector<NamedTensor>& tensors) { tensors.erase(tensors.begin()); });
  const std::string message = load_error();
  EXPECT_NE(message.find("adapter_model.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("is missing"), std::string::npos) << message;
  EXPECT_NE(message.find("base_model.model.model.layers."), std::string::npos) << message;
  EXPECT_NE(message.find("expected shape ["), std::string::npos) << message;
}

TEST_F(AdapterIoTest, WrongShapeIsNamed) {
  edit_weights([](std::vector<NamedTensor>& tensors) {
    for (NamedTensor& named : tensors)
      if (named.name == "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
        named.tensor = Tensor::zeros_cpu({8, 64}, DType::kF32);
  });
  const std::string message = load_error();
  EXPECT_NE(message.find("adapter_model.safetensors: tensor "
                         "'base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight': expected shape [4, 64], "
                         "found [8, 64]"),
            std::string::npos)
      << message;
}

TEST_F(AdapterIoTest, UnexpectedTensorIsNamed) {
  edit_weights([](std::vector<NamedTensor>& tensors) {
    tensors.push_back(
        {"base_model.model.model.layers.0.mlp.up_proj.lora_A.weight", Tensor::zeros_cpu({4, 64}, DType::kF32)});
  });
  const std::string message = load_error();
  EXPECT_NE(message.find("unexpected tensor 'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight'"),
            std::string::npos)
      << message;
}

TEST_F(AdapterIoTest, BadConfigsAreNamed) {
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {[](nlohmann::json& json) { json["peft_type"] = "PREFIX_TUNING"; },
       "adapter_config.json: field 'peft_type': expected \"LORA\", found \"PREFIX_TUNING\""},
      {[](nlohmann::json& json) { json.erase("r"); }, "adapter_config.json: field 'r' is missing"},
      {[](nlohmann::json& json) { json["r"] = "eight"; }, "field 'r': expected an integer, found \"eight\""},
      {[](nlohmann::json& json) { json["r"] = 0; }, "field 'r': expected an integer >= 1, found 0"},
      {[](nlohmann::json& json) { json["lora_alpha"] = nullptr; }, "field 'lora_alpha': expected a number"},
      {[](nlohmann::json& json) { json["lora_dropout"] = 1.5; }, "field 'lora_dropout': expected a probability"},
      {[](nlohmann::json& json) {
         json["target_modules"] = {"q_proj", "c_attn"};
       },
       "unknown module 'c_attn'"},
      {[](nlohmann::json& json) { json["target_modules"] = 3; }, "field 'target_modules': expected a list"},
      {[](nlohmann::json& json) { json["bias"] = "all"; }, "field 'bias': expected \"none\""},
      {[](nlohmann::json& json) { json["use_rslora"] = "yes"; }, "field 'use_rslora': expected true or false"},
      {[](nlohmann::json& json) { json["use_dora"] = true; }, "field 'use_dora': expected false"},
      {[](nlohmann::json& json) { json["lora_bias"] = true; }, "field 'lora_bias': expected false"},
      {[](nlohmann::json& json) { json["modules_to_save"] = {"lm_head"}; },
       "field 'modules_to_save': expected null (not supported by llmft's LoRA), found [\"lm_head\"]"},
      {[](nlohmann::json& json) {
         json["rank_pattern"] = {{"q_proj", 2}};
       },
       "field 'rank_pattern': expected {}"},
      {[](nlohmann::json& json) {
         json["alpha_pattern"] = {{"v_proj", 3}};
       },
       "field 'alpha_pattern': expected {}"},
      {[](nlohmann::json& json) { json["layers_to_transform"] = {0}; }, "field 'layers_to_transform': expected null"},
  };
  const std::string original = [&] {
    std::ifstream in(directory_ / "adapter_config.json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  for (const Case& test_case : cases) {
    std::ofstream(directory_ / "adapter_config.json") << original;
    edit_config(test_case.edit);
    const std::string message = load_error();
    EXPECT_NE(message.find(test_case.expected), std::string::npos) << message;
  }
  std::ofstream(directory_ / "adapter_config.json") << "{\"peft_type\": ";
  EXPECT_NE(load_error().find("adapter_config.json: not valid JSON"), std::string::npos);
  fs::remove(directory_ / "adapter_config.json");
  EXPECT_NE(load_error().find("adapter_config.json: cannot open"), std::string::npos);
}

}  // namespace
}  // namespace llmft
