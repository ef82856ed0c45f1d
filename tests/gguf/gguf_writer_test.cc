// GGUF writing: the container (read back by llmft's validating reader, whose
// agreement with gguf-py is tests/interop/test_gguf_dequant.py), the
// quantizers' error bounds (their bit-identity with gguf-py's is
// tests/interop/test_gguf_export.py), the q/k permutation and the name table.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "model/gguf_convert.h"
#include "model/gguf_names.h"
#include "model/gguf_quantize.h"
#include "model/gguf_reader.h"
#include "model/gguf_writer.h"

namespace llmft::gguf {
namespace {

std::filesystem::path temp_path(const std::string& name) {
  return std::filesystem::temp_directory_path() / ("llmft_gguf_writer_" + std::to_string(::getpid()) + "_" + name);
}

std::vector<float> random_values(size_t count, uint32_t seed) {
  std::mt19937 generator(seed);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(count);
  for (float& value : values) value = normal(generator);
  return values;
}

TEST(GgufWriter, ContainerReadsBackThroughTheReader) {
  GgufWriter writer;
  writer.add_string("general.architecture", "llama");
  writer.add_u32("llama.block_count", 30);
  writer.add_f32("llama.rope.freq_base", 100000.0f);
  writer.add_bool("tokenizer.ggml.add_bos_token", true);
  writer.add_string_array("tokenizer.ggml.tokens", {"a", "Ġb", ""});
  writer.add_i32_array("tokenizer.ggml.token_type", {1, 3, -2});
  const std::vector<float> matrix = random_values(3 * 64, 1);
  const std::vector<float> vector = random_values(5, 2);
  writer.add_tensor("blk.0.attn_q.weight", {3, 64}, GgmlType::kQ8_0);
  writer.add_tensor("blk.0.attn_norm.weight", {5}, GgmlType::kF32);
  const std::filesystem::path path = temp_path("container.gguf");
  {
    std::ofstream out(path, std::ios::binary);
    writer.write([&](const void* data, size_t bytes) { out.write(static_cast<const char*>(data), bytes); },
                 [&](size_t index, std::span<uint8_t> bytes) {
                   quantize_row(index == 0 ? GgmlType::kQ8_0 : GgmlType::kF32, index == 0 ? matrix : vector, bytes);
                 });
  }
  EXPECT_EQ(std::filesystem::file_size(path), writer.file_size());
  const GgufFile file = GgufFile::open(path);  // validates offsets, alignment and the trailing padding
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 32u);
  EXPECT_EQ(file.get_string("general.architecture"), "llama");
  EXPECT_EQ(file.get_uint("llama.block_count"), 30u);
  EXPECT_EQ(file.get_float("llama.rope.freq_base"), 100000.0);
  EXPECT_TRUE(file.get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(file.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"a", "Ġb", ""}));
  EXPECT_EQ(file.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 3, -2}));
  const TensorInfo& q = file.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.ne, (std::vector<uint64_t>{64, 3}));  // ne[0] is the row length
  EXPECT_EQ(q.type, GgmlType::kQ8_0);
  EXPECT_EQ(file.dequantize(file.tensor("blk.0.attn_norm.weight")), vector);
  std::filesystem::remove(path);
}

// Largest |x - dequantize(quantize(x))| over a block, against what the format allows.
TEST(GgufQuantize, EveryTypeStaysWithinItsStepAndF32F16BF16AreExactRoundings) {
  const std::vector<float> values = random_values(32 * 64, 7);
  for (const char* name : {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}) {
    const GgmlType type = *parse_quantize_type(name);
    const GgmlTypeTraits traits = *ggml_type_traits(static_cast<uint32_t>(type));
    std::vector<uint8_t> bytes(values.size() / traits.block_size * traits.type_size);
    quantize_row(type, values, bytes);
    std::vector<float> back(values.size());
    dequantize_row(type, bytes, back);
    for (size_t block = 0; block < values.size() / 32; ++block) {
      float max = -1e30f, min = 1e30f, amax = 0.0f, worst = 0.0f;
      for (size_t i = block * 32; i < block * 32 + 32; ++i) {
        max = std::max(max, values[i]);
        min = std::min(min, values[i]);
        amax = std::max(amax, std::fabs(values[i]));
        worst = std::max(worst, std::fabs(values[i] - back[i]));
        float exact = back[i];
        if (type == GgmlType::kF32) exact = values[i];
        if (type == GgmlType::kF16) exact = f16_bits_to_float(float_to_f16_bits(values[i]));
        if (type == GgmlType::kBF16) exact = bf16_bits_to_float(float_to_bf16_bits(values[i]));
        ASSERT_EQ(back[i], exact) << name;
      }
      // Half a step, plus the f16 rounding of the scale (2^-11 relative) over the
      // block; Q4_0/Q5_0 clip their top value one step short.
      float allowed = 0.0f;
      if (type == GgmlType::kQ8_0) allowed = amax / 127 * 0.5f + amax * 1e-3f;
      if (type == GgmlType::kQ4_0) allowed = amax / 8 * 1.0f + amax * 1e-3f;
      if (type == GgmlType::kQ5_0) allowed = amax / 16 * 1.0f + amax * 1e-3f;
      if (type == GgmlType::kQ4_1) allowed = (max - min) / 15 * 0.5f + amax * 1e-3f;
      if (type == GgmlType::kQ5_1) allowed = (max - min) / 31 * 0.5f + amax * 1e-3f;
      if (traits.block_size == 32) {
        ASSERT_LE(worst, allowed) << name << " block " << block;
      }
    }
  }
  // A block of zeros: scale 0 and no division by it.
  std::vector<float> zeros(32, 0.0f);
  for (GgmlType type : {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    std::vector<uint8_t> bytes(ggml_type_traits(static_cast<uint32_t>(type))->type_size);
    quantize_row(type, zeros, bytes);
    std::vector<float> back(32);
    dequantize_row(type, bytes, back);
    EXPECT_EQ(back, zeros);
  }
}

TEST(GgufQuantize, TypeNames) {
  EXPECT_EQ(parse_quantize_type("Q8_0"), GgmlType::kQ8_0);
  EXPECT_EQ(parse_quantize_type("bf16"), GgmlType::kBF16);
  EXPECT_FALSE(parse_quantize_type("q4_k").has_value());  // k-quants are read, not written
  EXPECT_FALSE(can_quantize(GgmlType::kQ6_K));
}

TEST(GgufPermute, PermuteIsTheInverseOfUnpermuteAndPairsRopeDimensions) {
  // One head of 4 rows, 1 column: HF rows (0, 1 | 2, 3) rotate-half pairs (0, 2) and
  // (1, 3); llama.cpp wants each pair adjacent: 0, 2, 1, 3.
  EXPECT_EQ(permute_rope_rows(std::vector<float>{0, 1, 2, 3}, 4, 1, 1), (std::vector<float>{0, 2, 1, 3}));
  const std::vector<float> rows = random_values(24 * 5, 3);
  EXPECT_EQ(unpermute_rope_rows(permute_rope_rows(rows, 24, 5, 3), 24, 5, 3), rows);
  EXPECT_NE(permute_rope_rows(rows, 24, 5, 3), rows);  // control: it moves rows
}

TEST(GgufNames, BothDirectionsAgree) {
  for (const char* hf : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                         "model.layers.0.input_layernorm.weight", "model.layers.12.self_attn.q_proj.weight",
                         "model.layers.3.self_attn.k_proj.bias", "model.layers.29.mlp.down_proj.weight",
                         "model.layers.1.post_attention_layernorm.weight"}) {
    const std::string gguf = gguf_tensor_name(hf);
    EXPECT_FALSE(gguf.empty()) << hf;
    EXPECT_EQ(hf_tensor_name(gguf), hf);
  }
  EXPECT_EQ(gguf_tensor_name("model.layers.12.self_attn.q_proj.weight"), "blk.12.attn_q.weight");
  EXPECT_EQ(gguf_tensor_name("lm_head.weight"), "output.weight");
  EXPECT_EQ(gguf_tensor_name("model.layers.0.self_attn.rotary_emb.inv_freq"), "");
}

}  // namespace
}  // namespace llmft::gguf
