// Hugging Face directory -> GGUF -> Hugging Face directory: llmft's reader
// gives back the weights exactly (f32, f16, bf16) or within the quantization
// step, and the tokenizer and chat template unchanged; bad input and a full
// disk end in one error and leave no file behind.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "core/context.h"
#include "core/error.h"
#include "core/half.h"
#include "model/gguf_convert.h"
#include "model/gguf_quantize.h"
#include "model/gguf_reader.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "tests/gguf/full_disk_file_ops.h"
#include "trainer/export.h"
#include "trainer/file_ops.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kTestdata = fs::path(LLMFT_SOURCE_DIR) / "tests/testdata";

json read_json(const fs::path& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class GgufExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("llmft_gguf_export_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    model_dir_ = root_ / "model";
    fs::create_directories(model_dir_);
    // The tiny Llama with SmolLM2's byte-level BPE tokenizer and chat template.
    fs::copy_file(kTestdata / "tokenizer/smollm2/tokenizer.json", model_dir_ / "tokenizer.json");
    fs::copy_file(kTestdata / "tokenizer/smollm2/tokenizer_config.json", model_dir_ / "tokenizer_config.json");
    ModelConfig config = ModelConfig::load(kTestdata / "model/tiny_llama/config.json");
    config.vocab_size = 49152;
    config.max_position_embeddings = 8192;
    auto context = Context::cpu(0, 2);
    LlamaModel model(*context, config);
    model.init_random(*context, 5, 0.05f);
    model.save_pretrained(model_dir_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Every entry of the output directory (a temp file left behind would show here).
  std::vector<std::string> entries(const fs::path& directory) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  fs::path root_, model_dir_;
};

TEST_F(GgufExportTest, RoundTripGivesBackWeightsTokenizerAndChatTemplate) {
  const SafetensorsCheckpoint original = SafetensorsCheckpoint::open(model_dir_);
  for (const char* type_name : {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"}) {
    SCOPED_TRACE(type_name);
    const gguf::GgmlType type = *gguf::parse_quantize_type(type_name);
    const fs::path out = root_ / (std::string("model-") + type_name + ".gguf");
    trainer::convert_directory_to_gguf(model_dir_, out, {type, "tiny"});
    const gguf::GgufFile file = gguf::GgufFile::open(out);
    EXPECT_EQ(file.get_string("general.architecture"), "llama");
    EXPECT_EQ(file.get_string("tokenizer.ggml.pre"), "smollm");
    EXPECT_EQ(file.tensor("blk.0.attn_norm.weight").type, gguf::GgmlType::kF32);  // 1-D stays F32
    EXPECT_EQ(file.tensor("blk.0.ffn_up.weight").type, type);
    const gguf::HfModel back = gguf::convert_gguf(file);

    for (const NamedTensor& tensor : back.tensors) {
      const std::vector<float> got = tensor.tensor.to_floats();
      const std::vector<float> want = original.tensor_as(tensor.name, DType::kF32).to_floats();
      ASSERT_EQ(got.size(), want.size()) << tensor.name;
      const bool matrix = tensor.tensor.shape().size() == 2;
      float worst = 0.0f, amax = 0.0f;
      for (size_t i = 0; i < got.size(); ++i) {
        float expected = want[i];
        if (matrix && type == gguf::GgmlType::kF16) expected = f16_bits_to_float(float_to_f16_bits(want[i]));
        if (matrix && type == gguf::GgmlType::kBF16) expected = bf16_bits_to_float(float_to_bf16_bits(want[i]));
        worst = std::max(worst, std::fabs(got[i] - expected));
        amax = std::max(amax, std::fabs(want[i]));
      }
      const bool exact = !matrix || type == gguf::GgmlType::kF32 || type == gguf::GgmlType::kF16 ||
                         type == gguf::GgmlType::kBF16;
      // Per-block bounds are in gguf_writer_test; here the tensor-wide step.
      const float allowed = exact ? 0.0f : type == gguf::GgmlType::kQ8_0 ? amax / 127 * 0.51f : amax / 8 * 1.01f;
      EXPECT_LE(worst, allowed) << tensor.name;
    }
    EXPECT_EQ(back.tensors.size(), original.tensor_names().size());
    // Control: q/k come back in Hugging Face row order only because the reader un-permutes;
    // the stored rows differ from the HF rows.
    if (type == gguf::GgmlType::kF32) {
      const std::vector<float> stored = file.dequantize(file.tensor("blk.0.attn_k.weight"));
      EXPECT_NE(stored, original.tensor_as("model.layers.0.self_attn.k_proj.weight", DType::kF32).to_floats());
    }

    EXPECT_EQ(json::parse(back.tokenizer.dump()), read_json(model_dir_ / "tokenizer.json"));
    const json config = read_json(model_dir_ / "tokenizer_config.json");
    EXPECT_EQ(back.tokenizer_config["chat_template"], config["chat_template"]);
    for (const char* key : {"bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token"})
      EXPECT_EQ(back.tokenizer_config[key], config[key]) << key;
  }
}

TEST_F(GgufExportTest, UnsupportedTypeArchitectureAndTokenizerAreOneLineErrorsAndNoFile) {
  const fs::path out = root_ / "out" / "model.gguf";
  fs::create_directories(out.parent_path());
  auto error_of = [&](const gguf::GgufExportOptions& options) -> std::string {
    try {
      trainer::convert_directory_to_gguf(model_dir_, out, options);
    } catch (const Error& error) {
      EXPECT_EQ(error.exit_code(), 2);
      return error.what();
    }
    return "no error";
  };
  EXPECT_NE(error_of({gguf::GgmlType::kQ6_K, ""}).find("type Q6_K is not supported"), std::string::npos);

  json config = read_json(model_dir_ / "config.json");
  config["model_type"] = "gemma";
  config["architectures"] = {"GemmaForCausalLM"};
  std::ofstream(model_dir_ / "config.json") << config.dump();
  const std::string arch_error = error_of({});
  // ModelConfig refuses it first, naming config.json's field.
  EXPECT_NE(arch_error.find("config.json"), std::string::npos) << arch_error;
  config["model_type"] = "llama";
  config["architectures"] = {"LlamaForCausalLM"};
  std::ofstream(model_dir_ / "config.json") << config.dump();

  // A SentencePiece-style vocabulary (Metaspace, byte fallback) has no place in
  // tokenizer.ggml.model "gpt2".
  fs::copy_file(kTestdata / "tokenizer/byte_fallback/tokenizer.json", model_dir_ / "tokenizer.json",
                fs::copy_options::overwrite_existing);
  const std::string tokenizer_error = error_of({});
  EXPECT_NE(tokenizer_error.find("tokenizer.json: field 'model"), std::string::npos) << tokenizer_error;

  // A merge whose part holds a space cannot be written as "a b".
  json tokenizer = read_json(kTestdata / "tokenizer/smollm2/tokenizer.json");
  tokenizer["model"]["merges"][5] = json::array({"a b", "c"});
  std::ofstream(model_dir_ / "tokenizer.json") << tokenizer.dump();
  const std::string merge_error = error_of({});
  EXPECT_NE(merge_error.find("merge 5 ['a b', 'c'] holds a space"), std::string::npos) << merge_error;

  for (const std::string& message : {arch_error, tokenizer_error, merge_error})
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_TRUE(entries(out.parent_path()).empty());
}

TEST_F(GgufExportTest, FullDiskMidWriteLeavesNoFileAndKeepsAnOldOne) {
  const fs::path directory = root_ / "out";
  fs::create_directories(directory);
  const fs::path out = directory / "model.gguf";
  FullDiskFileOps full_disk(4);  // the header, two tensors, then the disk is full
  try {
    trainer::convert_directory_to_gguf(model_dir_, out, {gguf::GgmlType::kQ8_0, ""}, full_disk);
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("No space left on device"), std::string::npos) << error.what();
  }
  EXPECT_EQ(full_disk.appends, 4);
  EXPECT_TRUE(entries(directory).empty());

  // Control: the same operations without the fault write the file; a failure
  // after that leaves the old file whole.
  FullDiskFileOps healthy(-1);
  trainer::convert_directory_to_gguf(model_dir_, out, {gguf::GgmlType::kQ8_0, ""}, healthy);
  EXPECT_GT(healthy.appends, 4);
  EXPECT_EQ(entries(directory), std::vector<std::string>{"model.gguf"});
  const uintmax_t size = fs::file_size(out);
  FullDiskFileOps full_again(2);
  EXPECT_THROW(trainer::convert_directory_to_gguf(model_dir_, out, {gguf::GgmlType::kF16, ""}, full_again), Error);
  EXPECT_EQ(entries(directory), std::vector<std::string>{"model.gguf"});
  EXPECT_EQ(fs::file_size(out), size);
  EXPECT_NO_THROW(gguf::GgufFile::open(out));
}

}  // namespace
}  // namespace llmft
