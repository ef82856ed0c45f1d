// The decoder against golden logits from an independent NumPy implementation
// of the Hugging Face forward (tests/reference/llama_reference.py, which also
// wrote the checkpoints under tests/testdata/model/): untied Llama with GQA in
// f32, and Qwen2 with q/k/v biases, a tied head, head_dim != hidden/heads and
// llama3 rope_scaling in bf16 storage. Also: chunked LM head, packed
// sequences, prompt-tuning hook, save/load round trip, load errors.
#include "model/llama.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "kernels/ops.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

fs::path testdata(const std::string& name) { return fs::path(LLMFT_SOURCE_DIR) / "tests/testdata/model" / name; }

struct Golden {
  Tensor input_ids;      // i32 [B, T]
  std::vector<float> logits;  // [B, T, V]
  int64_t vocab = 0;
};

Golden read_golden(const std::string& name) {
  SafetensorsFile file = SafetensorsFile::open(testdata(name) / "golden.safetensors");
  Golden golden;
  golden.input_ids = file.tensor("input_ids").clone();
  Tensor logits = file.tensor("logits");
  golden.vocab = logits.size(-1);
  golden.logits = logits.to_floats();
  return golden;
}

// Max |a - b| relative to the golden logits' largest magnitude.
double relative_error(const std::vector<float>& actual, const std::vector<float>& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  double max_error = 0.0, max_magnitude = 1e-30;
  for (size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    max_error = std::max(max_error, std::fabs(static_cast<double>(actual[i]) - expected[i]));
    max_magnitude = std::max(max_magnitude, std::fabs(static_cast<double>(expected[i])));
  }
  return max_error / max_magnitude;
}

class LlamaGoldenTest : public ::testing::TestWithParam<const char*> {
 protected:
  std::unique_ptr<Context> context_ = Context::cpu(0, 2);
};

TEST_P(LlamaGoldenTest, LogitsMatchNumpyReference) {
  Golden golden = read_golden(GetParam());
  for (int64_t chunk_rows : {int64_t{0}, int64_t{5}}) {  // one chunk, and chunks that straddle sequences
    LlamaOptions options;
    options.lm_head_chunk_rows = chunk_rows;
    auto model = LlamaModel::load(*context_, testdata(GetParam()), options);
    Batch batch;
    batch.input_ids = golden.input_ids;
    Tensor logits;
    model->forward(*context_, batch, &logits);
    ASSERT_EQ(logits.shape(), (Shape{golden.input_ids.size(0), golden.input_ids.size(1), golden.vocab}));
    EXPECT_LT(relative_error(logits.to_floats(), golden.logits), 1e-4) << GetParam() << " chunk " << chunk_rows;
  }
}

TEST_P(LlamaGoldenTest, LossIsMeanCrossEntropyOfGoldenLogits) {
  Golden golden = read_golden(GetParam());
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  const int64_t b = golden.input_ids.size(0), t = golden.input_ids.size(1), v = golden.vocab;
  // Next-token targets, the last position and one more ignored (-100).
  std::vector<int32_t> targets(static_cast<size_t>(b * t), -100);
  const int32_t* ids = golden.input_ids.data<int32_t>();
  double expected = 0.0;
  int count = 0;
  for (int64_t s = 0; s < b; ++s) {
    for (int64_t i = 0; i + 1 < t; ++i) {
      if (s == 1 && i == 2) continue;
      const int32_t target = ids[s * t + i + 1];
      targets[static_cast<size_t>(s * t + i)] = target;
      const float* row = &golden.logits[static_cast<size_t>((s * t + i) * v)];
      double max_logit = *std::max_element(row, row + v), sum = 0.0;
      for (int64_t j = 0; j < v; ++j) sum += std::exp(row[j] - max_logit);
      expected += max_logit + std::log(sum) - row[target];
      ++count;
    }
  }
  Batch batch;
  batch.input_ids = golden.input_ids;
  batch.targets = Tensor::from_ints({b, t}, targets);
  StepResult result = model->forward(*context_, batch);
  EXPECT_EQ(result.num_target_tokens, count);
  EXPECT_NEAR(result.loss, expected / count, 1e-4 * std::fabs(expected / count));
}

TEST_P(LlamaGoldenTest, PackedSequencesMatchSeparateOnes) {
  // Both golden sequences in one row: positions restart and attention stays
  // inside each document, so the logits equal those of the separate rows.
  Golden golden = read_golden(GetParam());
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  const int64_t b = golden.input_ids.size(0), t = golden.input_ids.size(1);
  std::vector<int32_t> positions, doc_start;
  for (int64_t s = 0; s < b; ++s)
    for (int64_t i = 0; i < t; ++i) {
      positions.push_back(static_cast<int32_t>(i));
      doc_start.push_back(static_cast<int32_t>(s * t));
    }
  Batch batch;
  batch.input_ids = golden.input_ids.reshape({1, b * t});
  batch.position_ids = Tensor::from_ints({1, b * t}, positions);
  batch.doc_start = Tensor::from_ints({1, b * t}, doc_start);
  Tensor logits;
  model->forward(*context_, batch, &logits);
  EXPECT_LT(relative_error(logits.to_floats(), golden.logits), 1e-4);
}

// Prompt tuning whose virtual tokens are the embeddings of the first two real
// tokens must reproduce the logits of the full sequence.
class CopyEmbeddingsPrompt : public PromptEmbeddingHook {
 public:
  CopyEmbeddingsPrompt(Tensor table, std::vector<int32_t> tokens) : table_(table), tokens_(tokens) {}
  int64_t num_virtual_tokens() const override { return static_cast<int64_t>(tokens_.size()); }
  void forward(Context& context, Tensor& embeddings) override {
    Tensor ids = Tensor::from_ints({num_virtual_tokens()}, tokens_);
    ops::embedding_forward(context, ids, table_, embeddings);
  }
  void backward(Context& context, const Tensor& dembeddings) override {}

 private:
  Tensor table_;
  std::vector<int32_t> tokens_;
};

TEST_P(LlamaGoldenTest, PromptTuningHookPrependsEmbeddings) {
  Golden golden = read_golden(GetParam());
  auto model = LlamaModel::load(*context_, testdata(GetParam()));
  const int64_t t = golden.input_ids.size(1), v = golden.vocab;
  const int32_t* ids = golden.input_ids.data<int32_t>();
  CopyEmbeddingsPrompt prompt(model->parameters().get("model.embed_tokens.weight").value, {ids[0], ids[1]});
  model->set_prompt_embedding_hook(&prompt);
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, t - 2}, std::vector<int32_t>(ids + 2, ids + t));
  Tensor logits;
  model->forward(*context_, batch, &logits);
  EXPECT_EQ(logits.shape(), (Shape{1, t, v}));
  std::vector<float> first(golden.logits.begin(), golden.logits.begin() + t * v);
  EXPECT_LT(relative_error(logits.to_floats(), first), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, LlamaGoldenTest, ::testing::Values("tiny_llama", "tiny_qwen2"));

TEST(LlamaModel, Bf16ComputeStaysCloseToReference) {
  auto context = Context::cpu(0, 2);
  Golden golden = read_golden("tiny_qwen2");  // stored in bf16, so loading is exact
  LlamaOptions options;
  options.compute_dtype = DType::kBF16;
  auto model = LlamaModel::load(*context, testdata("tiny_qwen2"), options);
  EXPECT_EQ(model->parameters().get("model.norm.weight").value.dtype(), DType::kBF16);
  Batch batch;
  batch.input_ids = golden.input_ids;
  Tensor logits;
  model->forward(*context, batch, &logits);
  // bf16 keeps 8 significant bits: a few percent of the largest logit after
  // two blocks of rounding.
  EXPECT_LT(relative_error(logits.to_floats(), golden.logits), 5e-2);
}

class LlamaCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() /
                 ("llmft_llama_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  std::string load_error(const fs::path& directory) {
    try {
      LlamaModel::load(*context_, directory);
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      return error.what();
    }
    ADD_FAILURE() << "loading " << directory << " did not fail";
    return "";
  }

  // A copy of tiny_llama whose tensors are edited by `edit`.
  fs::path edited_copy(const std::function<void(std::vector<NamedTensor>&)>& edit) {
    fs::create_directories(directory_);
    fs::copy_file(testdata("tiny_llama") / "config.json", directory_ / "config.json");
    auto model = LlamaModel::load(*context_, testdata("tiny_llama"));
    std::vector<NamedTensor> tensors = model->state_dict();
    edit(tensors);
    write_safetensors(directory_ / "model.safetensors", tensors);
    return directory_;
  }

  std::unique_ptr<Context> context_ = Context::cpu(0, 2);
  fs::path directory_;
};

TEST_F(LlamaCheckpointTest, SaveLoadRoundTripShardedAndBf16) {
  Golden golden = read_golden("tiny_llama");
  auto model = LlamaModel::load(*context_, testdata("tiny_llama"));
  model->save_pretrained(directory_ / "f32", std::nullopt, /*max_shard_bytes=*/100'000);
  EXPECT_TRUE(fs::exists(directory_ / "f32" / "model.safetensors.index.json"));
  auto reloaded = LlamaModel::load(*context_, directory_ / "f32");
  for (const Parameter* parameter : model->parameters().all())
    EXPECT_EQ(reloaded->parameters().get(parameter->name).value.to_floats(), parameter->value.to_floats())
        << parameter->name;

  model->save_pretrained(directory_ / "bf16", DType::kBF16);
  EXPECT_EQ(ModelConfig::load(directory_ / "bf16").torch_dtype, "bfloat16");
  SafetensorsCheckpoint saved = SafetensorsCheckpoint::open(directory_ / "bf16");
  EXPECT_EQ(saved.entry("model.layers.1.mlp.down_proj.weight").dtype_name, "BF16");
}

TEST_F(LlamaCheckpointTest, MissingTensorNamesDirectoryTensorAndShape) {
  fs::path directory = edited_copy([](std::vector<NamedTensor>& tensors) {
    std::erase_if(tensors, [](const NamedTensor& t) { return t.name == "model.layers.1.self_attn.k_proj.weight"; });
  });
  EXPECT_EQ(load_error(directory), directory.string() +
                                       ": missing tensor 'model.layers.1.self_attn.k_proj.weight' (expected shape "
                                       "[32, 64] for LlamaForCausalLM)");
}

TEST_F(LlamaCheckpointTest, MisShapedTensorNamesFileAndShapes) {
  fs::path directory = edited_copy([](std::vector<NamedTensor>& tensors) {
    for (NamedTensor& t : tensors)
      if (t.name == "model.norm.weight") t.tensor = Tensor::zeros_cpu({65}, DType::kF32);
  });
  EXPECT_EQ(load_error(directory), (directory / "model.safetensors").string() +
                                       ": tensor 'model.norm.weight': expected shape [64], found [65]");
}

TEST_F(LlamaCheckpointTest, UnexpectedTensorIsRejected) {
  fs::path directory = edited_copy([](std::vector<NamedTensor>& tensors) {
    tensors.push_back({"model.layers.2.mlp.up_proj.weight", Tensor::zeros_cpu({2}, DType::kF32)});
  });
  EXPECT_EQ(load_error(directory), (directory / "model.safetensors").string() +
                                       ": unexpected tensor 'model.layers.2.mlp.up_proj.weight' (not a parameter "
                                       "of LlamaForCausalLM with this config.json)");
}

TEST_F(LlamaCheckpointTest, MissingDirectoryOrWeights) {
  EXPECT_NE(load_error(directory_ / "nope").find("not a model directory"), std::string::npos);
  fs::create_directories(directory_);
  fs::copy_file(testdata("tiny_llama") / "config.json", directory_ / "config.json");
  EXPECT_NE(load_error(directory_).find("no model.safetensors or model.safetensors.index.json"), std::string::npos);
}

TEST(LlamaModel, BadBatchIsRejected) {
  auto context = Context::cpu(0, 2);
  auto model = LlamaModel::load(*context, testdata("tiny_llama"));
  Batch batch;
  batch.input_ids = Tensor::from_ints({1, 3}, std::vector<int32_t>{1, 2, 3});
  batch.targets = Tensor::from_ints({3}, std::vector<int32_t>{1, 2, 3});
  EXPECT_THROW(model->forward(*context, batch), Error);
  batch.targets = Tensor();
  batch.input_ids = Tensor::from_floats({1, 3}, std::vector<float>{1, 2, 3});
  EXPECT_THROW(model->forward(*context, batch), Error);
}

}  // namespace
}  // namespace llmft
