// `export --gguf-adapter`: the LoRA adapter as llama.cpp's adapter GGUF
// (model/gguf_lora_export.h), read back with llmft's GGUF reader. The metadata
// and names are those llama_adapter_lora_init checks; the shapes fit the base
// as it checks them; and base + (alpha / r) · B·A, with B's q/k row
// permutation undone, is the merged weight LoraModel::merged_state_dict
// writes. Bad input and a full disk end in one error and leave no file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>

#include "core/context.h"
#include "core/error.h"
#include "core/half.h"
#include "model/gguf_convert.h"
#include "model/gguf_export.h"
#include "model/gguf_lora_export.h"
#include "model/gguf_reader.h"
#include "model/llama.h"
#include "peft/lora.h"
#include "tests/gguf/full_disk_file_ops.h"
#include "tests/peft/peft_test_util.h"
#include "tests/test_util.h"
#include "trainer/export.h"
#include "trainer/training_setup.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

class GgufLoraExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() /
            ("llmft_gguf_lora_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
             std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    context_ = Context::cpu(0, 2);
    // The tiny Llama has 4 heads and 2 KV heads, so the q/k permutation moves rows.
    model_.model = LlamaModel::load(*context_, peft_test::tiny_llama_dir());
  }
  void TearDown() override { fs::remove_all(root_); }

  void attach_lora(int64_t rank, float alpha, bool rslora) {
    LoraSettings config;
    config.r = rank;
    config.alpha = alpha;
    config.use_rslora = rslora;
    config.target_modules = {"all-linear"};
    config.seed = 3;
    model_.peft = std::make_unique<LoraModel>(*context_, *model_.model, config);
    peft_test::randomize_lora_b(lora(), 11, 0.2f);
    lora().set_training(false);
  }

  LoraModel& lora() { return dynamic_cast<LoraModel&>(*model_.peft); }

  std::vector<std::string> entries() {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(root_)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

  // base + scale · B·A from the file, B's rows un-permuted for q/k, against
  // the merged weights; returns the largest difference over all matrices.
  float reconstruction_error(const gguf::GgufFile& file, bool undo_permutation) {
    const ModelConfig& config = model_.model->config();
    const float alpha = static_cast<float>(file.get_float("adapter.lora.alpha"));
    std::map<std::string, std::vector<float>> base, merged;
    for (const NamedTensor& tensor : model_.model->state_dict(DType::kF32)) base[tensor.name] = tensor.tensor.to_floats();
    for (const NamedTensor& tensor : lora().merged_state_dict(DType::kF32))
      merged[tensor.name] = tensor.tensor.to_floats();
    float worst = 0.0f;
    for (const auto& [hf_name, shape] : gguf::gguf_model_tensors(config)) {
      if (shape.size() != 2 || hf_name.find("layers") == std::string::npos) continue;
      const std::string name = gguf::gguf_tensor_name(hf_name);
      const gguf::TensorInfo& a_info = file.tensor(name + ".lora_a");
      const gguf::TensorInfo& b_info = file.tensor(name + ".lora_b");
      const std::vector<float> a = file.dequantize(a_info);
      std::vector<float> b = file.dequantize(b_info);
      const int64_t out = shape[0], in = shape[1], rank = static_cast<int64_t>(b_info.ne[0]);
      // llama.cpp's get_scale: alpha over the rank read from B's ne[0].
      const double scale = alpha / static_cast<double>(rank);
      // Only the llama architecture permutes q and k (qwen2 keeps Hugging Face's rows).
      int64_t heads = 0;
      if (file.get_string("general.architecture") != "llama") undo_permutation = false;
      if (hf_name.ends_with("q_proj.weight")) heads = config.num_attention_heads;
      if (hf_name.ends_with("k_proj.weight")) heads = config.num_key_value_heads;
      if (heads > 0 && undo_permutation) b = gguf::unpermute_rope_rows(b, out, rank, heads);
      const std::vector<float>& w = base.at(hf_name);
      const std::vector<float>& want = merged.at(hf_name);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < in; ++i) {
          double delta = 0.0;
          for (int64_t k = 0; k < rank; ++k) delta += static_cast<double>(b[o * rank + k]) * a[k * in + i];
          const double got = w[o * in + i] + scale * delta;
          worst = std::max(worst, static_cast<float>(std::fabs(got - want[o * in + i])));
        }
    }
    return worst;
  }

  fs::path root_;
  std::unique_ptr<Context> context_;
  trainer::TrainingModel model_;
};

TEST_F(GgufLoraExportTest, MetadataNamesAndShapesAreWhatLlamaCppLoads) {
  attach_lora(4, 8.0f, false);
  const fs::path out = root_ / "adapter.gguf";
  EXPECT_TRUE(trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {}).empty());
  const gguf::GgufFile file = gguf::GgufFile::open(out);
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.get_string("general.type"), "adapter");
  EXPECT_EQ(file.get_string("general.architecture"), "llama");
  EXPECT_EQ(file.get_string("adapter.type"), "lora");
  EXPECT_EQ(file.get("adapter.lora.alpha").type, gguf::ValueType::kFloat32);
  EXPECT_EQ(file.get_float("adapter.lora.alpha"), 8.0);
  EXPECT_EQ(file.find("tokenizer.ggml.tokens"), nullptr);  // an adapter carries no vocabulary

  // 7 matrices x 2 layers, A and B each, and nothing else (llama.cpp refuses
  // any other suffix).
  const ModelConfig& config = model_.model->config();
  EXPECT_EQ(file.tensors().size(), 28u);
  for (const gguf::TensorInfo& tensor : file.tensors())
    EXPECT_TRUE(tensor.name.ends_with(".weight.lora_a") || tensor.name.ends_with(".weight.lora_b")) << tensor.name;
  for (const auto& [hf_name, shape] : gguf::gguf_model_tensors(config)) {
    if (shape.size() != 2 || hf_name.find("layers") == std::string::npos) continue;
    SCOPED_TRACE(hf_name);
    const std::string name = gguf::gguf_tensor_name(hf_name);
    const gguf::TensorInfo& a = file.tensor(name + ".lora_a");
    const gguf::TensorInfo& b = file.tensor(name + ".lora_b");
    EXPECT_EQ(a.type, gguf::GgmlType::kF32);  // convert_lora_to_gguf.py's default --outtype
    EXPECT_EQ(b.type, gguf::GgmlType::kF32);
    // llama_adapter_lora_init: W.ne[0] == A.ne[0], W.ne[1] == B.ne[1], A.ne[1] == B.ne[0].
    const std::vector<uint64_t> w_ne = {static_cast<uint64_t>(shape[1]), static_cast<uint64_t>(shape[0])};
    EXPECT_EQ(a.ne, (std::vector<uint64_t>{w_ne[0], 4}));
    EXPECT_EQ(b.ne, (std::vector<uint64_t>{4, w_ne[1]}));
  }
  EXPECT_NE(file.find_tensor("blk.1.ffn_down.weight.lora_b"), nullptr);
}

TEST_F(GgufLoraExportTest, BasePlusScaledProductWithPermutationUndoneIsTheMergedWeight) {
  attach_lora(4, 8.0f, false);
  const fs::path out = root_ / "adapter.gguf";
  trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {});
  const gguf::GgufFile file = gguf::GgufFile::open(out);
  const float error = reconstruction_error(file, true);
  EXPECT_LE(error, 1e-5f);
  // Control: B of q and k is stored permuted; read as if it were not, q and k
  // come out wrong.
  EXPECT_GT(reconstruction_error(file, false), 100 * 1e-5f);
  // A is never permuted: the stored A of q is LoRA's A as it is.
  const Parameter& q_a = lora().adapters().front()->lora_a();
  EXPECT_EQ(file.dequantize(file.tensor("blk.0.attn_q.weight.lora_a")), q_a.value.to_floats());
}

TEST_F(GgufLoraExportTest, Qwen2KeepsBInHuggingFaceRowOrder) {
  model_.model = LlamaModel::load(*context_, peft_test::tiny_llama_dir().parent_path() / "tiny_qwen2");
  attach_lora(4, 8.0f, false);
  const fs::path out = root_ / "adapter.gguf";
  trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir().parent_path() / "tiny_qwen2", out, {});
  const gguf::GgufFile file = gguf::GgufFile::open(out);
  EXPECT_EQ(file.get_string("general.architecture"), "qwen2");  // must equal the base GGUF's
  const Parameter& q_b = lora().adapters().front()->lora_b();
  EXPECT_EQ(file.dequantize(file.tensor("blk.0.attn_q.weight.lora_b")), q_b.value.to_floats());
  EXPECT_LE(reconstruction_error(file, true), 1e-5f);
}

TEST_F(GgufLoraExportTest, RsLoraWritesTheAlphaThatGivesItsScaling) {
  attach_lora(4, 6.0f, true);  // scaling alpha / sqrt(r) = 3
  const fs::path out = root_ / "adapter.gguf";
  trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {});
  const gguf::GgufFile file = gguf::GgufFile::open(out);
  EXPECT_FLOAT_EQ(static_cast<float>(file.get_float("adapter.lora.alpha")) / 4.0f, lora().config().scaling());
  EXPECT_LE(reconstruction_error(file, true), 1e-5f);
}

TEST_F(GgufLoraExportTest, HalfTypesRoundAndQ8_0KeepsF16ForShortRows) {
  attach_lora(4, 8.0f, false);
  for (const gguf::GgmlType type : {gguf::GgmlType::kF16, gguf::GgmlType::kBF16, gguf::GgmlType::kQ8_0}) {
    const std::string type_name = gguf::ggml_type_name(static_cast<uint32_t>(type));
    SCOPED_TRACE(type_name);
    const fs::path out = root_ / ("adapter-" + type_name + ".gguf");
    const std::vector<std::string> notes = trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out,
                                                                        {type, ""});
    const gguf::GgufFile file = gguf::GgufFile::open(out);
    const gguf::TensorInfo& a = file.tensor("blk.0.attn_v.weight.lora_a");
    const gguf::TensorInfo& b = file.tensor("blk.0.attn_v.weight.lora_b");
    const std::vector<float> a_want = lora().adapters()[2]->lora_a().value.to_floats();
    const std::vector<float> a_got = file.dequantize(a);
    EXPECT_EQ(a.type, type);  // rows of 64 (hidden) fill whole Q8_0 blocks
    if (type == gguf::GgmlType::kQ8_0) {
      // B's rows are r = 4 long: not a Q8_0 block, so F16, as the converter falls back.
      EXPECT_EQ(b.type, gguf::GgmlType::kF16);
      ASSERT_EQ(notes.size(), 1u);
      EXPECT_NE(notes[0].find("written as F16"), std::string::npos) << notes[0];
      float amax = 0.0f, worst = 0.0f;
      for (size_t i = 0; i < a_want.size(); ++i) {
        amax = std::max(amax, std::fabs(a_want[i]));
        worst = std::max(worst, std::fabs(a_got[i] - a_want[i]));
      }
      EXPECT_LE(worst, amax / 127);  // one step of the largest block scale
    } else {
      EXPECT_EQ(b.type, type);
      EXPECT_TRUE(notes.empty());
      for (size_t i = 0; i < a_want.size(); ++i) {
        const float rounded = type == gguf::GgmlType::kF16 ? f16_bits_to_float(float_to_f16_bits(a_want[i]))
                                                           : bf16_bits_to_float(float_to_bf16_bits(a_want[i]));
        ASSERT_EQ(a_got[i], rounded) << i;
      }
    }
  }
}

TEST_F(GgufLoraExportTest, BadInputIsOneLineErrorAndNoFile) {
  const fs::path out = root_ / "adapter.gguf";
  // Full fine-tuning has no adapter.
  const std::string full = testing::bad_input_message(
      [&] { trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {}); });
  EXPECT_NE(full.find("full fine-tuning (peft none), which has no adapter"), std::string::npos) << full;

  attach_lora(4, 8.0f, false);
  // A type llama.cpp's converter does not write for adapters.
  const std::string type = testing::bad_input_message([&] {
    trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {gguf::GgmlType::kQ4_0, ""});
  });
  EXPECT_NE(type.find("type Q4_0 is not supported (supported: f32, f16, bf16, q8_0"), std::string::npos) << type;

  // An architecture llama.cpp would not match with the base.
  gguf::LoraAdapterSource source;
  source.config = model_.model->config();
  source.config.model_type = "gemma";
  source.config_source = "base/config.json";
  source.adapter_source = "adapter";
  source.alpha = 8.0f;
  source.pairs.push_back({"model.layers.0.self_attn.q_proj.weight", {4, 64}, {64, 4}});
  const std::string arch = testing::bad_input_message([&] { gguf::GgufLoraExport::plan(source, {}); });
  EXPECT_NE(arch.find("base/config.json: field 'model_type': 'gemma' is not supported"), std::string::npos) << arch;

  // Shapes that do not fit the base, a matrix GGUF has no name for.
  source.config.model_type = "llama";
  source.pairs[0].b_shape = {32, 4};
  const std::string shape = testing::bad_input_message([&] { gguf::GgufLoraExport::plan(source, {}); });
  EXPECT_NE(shape.find("LoRA B of model.layers.0.self_attn.q_proj.weight: shape [32, 4], expected [64, 4]"),
            std::string::npos)
      << shape;
  source.pairs[0] = {"model.embed_tokens.weight", {4, 64}, {100, 4}};
  const std::string embedding = testing::bad_input_message([&] { gguf::GgufLoraExport::plan(source, {}); });
  EXPECT_NE(embedding.find("which is not a projection of a GGUF llama block"), std::string::npos) << embedding;
  // Control: the same source with a fitting pair plans.
  source.pairs[0] = {"model.layers.0.self_attn.q_proj.weight", {4, 64}, {64, 4}};
  EXPECT_NO_THROW(gguf::GgufLoraExport::plan(source, {}));

  for (const std::string& message : {full, type, arch, shape, embedding})
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  EXPECT_TRUE(entries().empty());
}

TEST_F(GgufLoraExportTest, FullDiskMidWriteLeavesNoFileAndKeepsAnOldOne) {
  attach_lora(4, 8.0f, false);
  const fs::path out = root_ / "adapter.gguf";
  FullDiskFileOps full_disk(3);  // the header, one tensor, then the disk is full
  try {
    trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {}, full_disk);
    FAIL() << "no error";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("No space left on device"), std::string::npos) << error.what();
  }
  EXPECT_EQ(full_disk.appends, 3);
  EXPECT_TRUE(entries().empty());

  // Control: without the fault the file is written; a failure after that
  // leaves the old file whole.
  FullDiskFileOps healthy(-1);
  trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {}, healthy);
  EXPECT_GT(healthy.appends, 3);
  EXPECT_EQ(entries(), std::vector<std::string>{"adapter.gguf"});
  const uintmax_t size = fs::file_size(out);
  FullDiskFileOps full_again(5);
  EXPECT_THROW(trainer::export_gguf_adapter(model_, peft_test::tiny_llama_dir(), out, {gguf::GgmlType::kF16, ""},
                                            full_again),
               Error);
  EXPECT_EQ(entries(), std::vector<std::string>{"adapter.gguf"});
  EXPECT_EQ(fs::file_size(out), size);
  EXPECT_NO_THROW(gguf::GgufFile::open(out));
}

}  // namespace
}  // namespace llmft
