// GGUF -> Hugging Face conversion on a tiny synthetic llama GGUF written by the
// test: tensor names and shapes, the q/k RoPE row un-permutation against
// hand-built permuted matrices, config.json, tokenizer.json and
// tokenizer_config.json, the written directory, and clear errors for files
// that are not convertible llama models.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/context.h"
#include "core/error.h"
#include "model/gguf_convert.h"
#include "model/gguf_reader.h"
#include "model/llama.h"
#include "model/model_config.h"
#include "model/safetensors.h"
#include "tests/gguf/gguf_test_writer.h"

namespace llmft::gguf {
namespace {

using namespace llmft::gguf::testing;

// A tiny llama: hidden 8, 2 heads of 4 (1 KV head), FFN 12, 2 layers, 10 tokens.
constexpr int64_t kHidden = 8, kHeads = 2, kKvHeads = 1, kHeadDim = 4, kFfn = 12, kLayers = 2, kVocab = 10;

struct TinySpec {
  std::string architecture = "llama";
  bool untied = false;             // write output.weight
  std::string skip_tensor;         // GGUF name to leave out
  std::string extra_tensor;        // GGUF name of an extra [8] F32 tensor
  std::string tokenizer_model = "gpt2";
  std::vector<std::string> merges = {"a b", "Ġ ab"};
  uint32_t bos_id = 1;
};

// Deterministic weights per HF tensor name: value k/16 for k = hash-seeded integers
// in [-16, 16], exactly representable in bf16 too.
std::vector<float> weights_for(const std::string& hf_name, size_t count) {
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(hf_name)));
  std::uniform_int_distribution<int> k(-16, 16);
  std::vector<float> values(count);
  for (float& v : values) v = static_cast<float>(k(rng)) / 16.0f;
  return values;
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& values) {
  std::vector<uint8_t> bytes(values.size() * 4);
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

// llama.cpp's LlamaModel.permute, written as loops: of each head's rows, HF
// row p*(d/2) + i goes to GGUF row 2i + p (the two halves are interleaved).
std::vector<float> permute_like_llama_cpp(const std::vector<float>& hf, int64_t rows, int64_t columns, int64_t heads) {
  std::vector<float> gguf(hf.size());
  const int64_t d = rows / heads;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t i = 0; i < d / 2; ++i)
        for (int64_t c = 0; c < columns; ++c)
          gguf[(h * d + 2 * i + p) * columns + c] = hf[(h * d + p * (d / 2) + i) * columns + c];
  return gguf;
}

struct HfTensorSpec {
  std::string gguf;
  std::string hf;
  int64_t rows, columns;  // columns 0: a vector
};

std::vector<HfTensorSpec> tiny_tensors(bool untied) {
  std::vector<HfTensorSpec> specs = {{"token_embd.weight", "model.embed_tokens.weight", kVocab, kHidden}};
  for (int layer = 0; layer < kLayers; ++layer) {
    const std::string g = "blk." + std::to_string(layer) + ".";
    const std::string h = "model.layers." + std::to_string(layer) + ".";
    specs.push_back({g + "attn_norm.weight", h + "input_layernorm.weight", kHidden, 0});
    specs.push_back({g + "attn_q.weight", h + "self_attn.q_proj.weight", kHeads * kHeadDim, kHidden});
    specs.push_back({g + "attn_k.weight", h + "self_attn.k_proj.weight", kKvHeads * kHeadDim, kHidden});
    specs.push_back({g + "attn_v.weight", h + "self_attn.v_proj.weight", kKvHeads * kHeadDim, kHidden});
    specs.push_back({g + "attn_output.weight", h + "self_attn.o_proj.weight", kHidden, kHeads * kHeadDim});
    specs.push_back({g + "ffn_norm.weight", h + "post_attention_layernorm.weight", kHidden, 0});
    specs.push_back({g + "ffn_gate.weight", h + "mlp.gate_proj.weight", kFfn, kHidden});
    specs.push_back({g + "ffn_up.weight", h + "mlp.up_proj.weight", kFfn, kHidden});
    specs.push_back({g + "ffn_down.weight", h + "mlp.down_proj.weight", kHidden, kFfn});
  }
  specs.push_back({"output_norm.weight", "model.norm.weight", kHidden, 0});
  if (untied) specs.push_back({"output.weight", "lm_head.weight", kVocab, kHidden});
  return specs;
}

const std::vector<std::string> kTokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b",
                                          "ab",            "Ġ",            "Ġab",        "<think>", "x y"};
const std::vector<int32_t> kTokenTypes = {3, 3, 3, 1, 1, 1, 1, 1, 4, 1};

GgufBuilder tiny_llama(const TinySpec& spec = {}) {
  GgufBuilder builder;
  builder.add("general.architecture", string_value(spec.architecture));
  builder.add("general.name", string_value("tiny"));
  builder.add("llama.block_count", u32_value(kLayers));
  builder.add("llama.context_length", u32_value(256));
  builder.add("llama.embedding_length", u32_value(kHidden));
  builder.add("llama.feed_forward_length", u32_value(kFfn));
  builder.add("llama.attention.head_count", u32_value(kHeads));
  builder.add("llama.attention.head_count_kv", u32_value(kKvHeads));
  builder.add("llama.rope.freq_base", f32_value(100000.0f));
  builder.add("llama.attention.layer_norm_rms_epsilon", f32_value(1e-5f));
  builder.add("llama.rope.dimension_count", u32_value(kHeadDim));
  builder.add("llama.vocab_size", u32_value(kVocab));
  builder.add("tokenizer.ggml.model", string_value(spec.tokenizer_model));
  builder.add("tokenizer.ggml.pre", string_value("smollm"));
  builder.add("tokenizer.ggml.tokens", string_array(kTokens));
  builder.add("tokenizer.ggml.token_type", i32_array(kTokenTypes));
  builder.add("tokenizer.ggml.merges", string_array(spec.merges));
  builder.add("tokenizer.ggml.bos_token_id", u32_value(spec.bos_id));
  builder.add("tokenizer.ggml.eos_token_id", u32_value(2));
  builder.add("tokenizer.ggml.unknown_token_id", u32_value(0));
  builder.add("tokenizer.ggml.padding_token_id", u32_value(2));
  builder.add("tokenizer.ggml.add_bos_token", bool_value(false));
  builder.add("tokenizer.chat_template", string_value("{% for m in messages %}{{ m['content'] }}{% endfor %}"));
  for (const HfTensorSpec& t : tiny_tensors(spec.untied)) {
    if (t.gguf == spec.skip_tensor) continue;
    const size_t count = static_cast<size_t>(t.rows * (t.columns ? t.columns : 1));
    std::vector<float> values = weights_for(t.hf, count);
    if (t.gguf.find("attn_q") != std::string::npos) values = permute_like_llama_cpp(values, t.rows, t.columns, kHeads);
    if (t.gguf.find("attn_k") != std::string::npos) values = permute_like_llama_cpp(values, t.rows, t.columns, kKvHeads);
    std::vector<uint64_t> ne = t.columns ? std::vector<uint64_t>{static_cast<uint64_t>(t.columns), static_cast<uint64_t>(t.rows)}
                                         : std::vector<uint64_t>{static_cast<uint64_t>(t.rows)};
    builder.add_tensor({t.gguf, ne, 0, f32_bytes(values)});
  }
  if (!spec.extra_tensor.empty()) builder.add_tensor({spec.extra_tensor, {8}, 0, std::vector<uint8_t>(32)});
  return builder;
}

GgufFile open_tiny(const ScratchDir& scratch, const TinySpec& spec = {}) {
  return GgufFile::open(scratch.write("tiny.gguf", tiny_llama(spec).build().bytes));
}

std::string conversion_error(const TinySpec& spec) {
  ScratchDir scratch;
  try {
    convert_gguf(open_tiny(scratch, spec));
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput) << error.what();
    return error.what();
  }
  return "no error";
}

const NamedTensor& find(const HfModel& model, const std::string& name) {
  for (const NamedTensor& tensor : model.tensors)
    if (tensor.name == name) return tensor;
  throw std::runtime_error("no tensor " + name);
}

TEST(GgufConvert, UnpermutesHandBuiltRows) {
  // One head of 4 rows: llama.cpp stores HF rows [r0 r1 r2 r3] as [r0 r2 r1 r3].
  EXPECT_EQ(unpermute_rope_rows(std::vector<float>{0, 2, 1, 3}, 4, 1, 1), (std::vector<float>{0, 1, 2, 3}));
  // Two heads of 4 rows, 2 columns.
  const std::vector<float> stored = {0, 0.5, 2, 2.5, 1, 1.5, 3, 3.5, 4, 4.5, 6, 6.5, 5, 5.5, 7, 7.5};
  EXPECT_EQ(unpermute_rope_rows(stored, 8, 2, 2),
            (std::vector<float>{0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5}));
  // One head of 8 rows: stored [r0 r4 r1 r5 r2 r6 r3 r7].
  EXPECT_EQ(unpermute_rope_rows(std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7}, 8, 1, 1),
            (std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(GgufConvert, TensorNames) {
  EXPECT_EQ(hf_tensor_name("token_embd.weight"), "model.embed_tokens.weight");
  EXPECT_EQ(hf_tensor_name("output.weight"), "lm_head.weight");
  EXPECT_EQ(hf_tensor_name("output_norm.weight"), "model.norm.weight");
  EXPECT_EQ(hf_tensor_name("blk.17.attn_output.weight"), "model.layers.17.self_attn.o_proj.weight");
  EXPECT_EQ(hf_tensor_name("blk.0.ffn_norm.weight"), "model.layers.0.post_attention_layernorm.weight");
  EXPECT_EQ(hf_tensor_name("blk.3.ffn_down.weight"), "model.layers.3.mlp.down_proj.weight");
  // The table is shared with the writer, which needs Qwen2's biases; the llama
  // converter refuses them (RejectsWhatItCannotConvert).
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q.bias"), "model.layers.3.self_attn.q_proj.bias");
  EXPECT_EQ(hf_tensor_name("blk.3.attn_q_norm.weight"), "");
  EXPECT_EQ(hf_tensor_name("rope_freqs.weight"), "");
}

TEST(GgufConvert, ByteLevelAlphabetAndShortestFloats) {
  EXPECT_EQ(byte_level_char(' '), U'Ġ');  // U+0120
  EXPECT_EQ(byte_level_char('\n'), U'Ċ');  // U+010A
  EXPECT_EQ(byte_level_char('a'), U'a');
  EXPECT_EQ(byte_level_char(0), char32_t{0x100});
  EXPECT_EQ(byte_level_char(0xAD), char32_t{0x143});  // soft hyphen, the last non-printable
  EXPECT_EQ(byte_level_char(0xFF), char32_t{0xFF});
  EXPECT_EQ(shortest_float32(static_cast<double>(1e-5f)), 1e-5);
  EXPECT_EQ(shortest_float32(static_cast<double>(1e-6f)), 1e-6);
  EXPECT_EQ(shortest_float32(100000.0), 100000.0);
}

TEST(GgufConvert, WeightsNamesShapesAndUnpermutedQK) {
  ScratchDir scratch;
  HfModel model = convert_gguf(open_tiny(scratch));
  const std::vector<HfTensorSpec> specs = tiny_tensors(false);
  ASSERT_EQ(model.tensors.size(), specs.size());
  for (const HfTensorSpec& spec : specs) {
    const NamedTensor& tensor = find(model, spec.hf);
    const Shape expected_shape = spec.columns ? Shape{spec.rows, spec.columns} : Shape{spec.rows};
    EXPECT_EQ(tensor.tensor.shape(), expected_shape) << spec.hf;
    EXPECT_EQ(tensor.tensor.dtype(), DType::kF32);
    const size_t count = static_cast<size_t>(spec.rows * (spec.columns ? spec.columns : 1));
    // The HF values the GGUF was made from, q/k included (the permutation undone).
    EXPECT_EQ(tensor.tensor.to_floats(), weights_for(spec.hf, count)) << spec.hf;
  }
  EXPECT_TRUE(model.notes.empty());
}

TEST(GgufConvert, Config) {
  ScratchDir scratch;
  HfModel model = convert_gguf(open_tiny(scratch));
  const auto& config = model.config;
  EXPECT_EQ(config["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(config["model_type"], "llama");
  EXPECT_EQ(config["hidden_size"], kHidden);
  EXPECT_EQ(config["intermediate_size"], kFfn);
  EXPECT_EQ(config["num_hidden_layers"], kLayers);
  EXPECT_EQ(config["num_attention_heads"], kHeads);
  EXPECT_EQ(config["num_key_value_heads"], kKvHeads);
  EXPECT_EQ(config["head_dim"], kHeadDim);
  EXPECT_EQ(config["max_position_embeddings"], 256);
  EXPECT_EQ(config["rms_norm_eps"], 1e-5);
  EXPECT_EQ(config["rope_theta"], 100000.0);
  EXPECT_EQ(config["vocab_size"], kVocab);
  EXPECT_EQ(config["tie_word_embeddings"], true);
  EXPECT_EQ(config["bos_token_id"], 1);
  EXPECT_EQ(config["eos_token_id"], 2);
  EXPECT_EQ(config["pad_token_id"], 2);
  EXPECT_EQ(config["torch_dtype"], "float32");
  EXPECT_EQ(config["hidden_act"], "silu");
  EXPECT_TRUE(config["rope_scaling"].is_null());
  EXPECT_EQ(model.generation_config["eos_token_id"], 2);
}

TEST(GgufConvert, UntiedHeadAndBf16) {
  ScratchDir scratch;
  TinySpec spec;
  spec.untied = true;
  HfModel model = convert_gguf(open_tiny(scratch, spec), {DType::kBF16});
  EXPECT_EQ(model.config["tie_word_embeddings"], false);
  EXPECT_EQ(model.config["torch_dtype"], "bfloat16");
  const NamedTensor& head = find(model, "lm_head.weight");
  EXPECT_EQ(head.tensor.dtype(), DType::kBF16);
  EXPECT_EQ(head.tensor.to_floats(), weights_for("lm_head.weight", kVocab * kHidden));  // k/16 is exact in bf16
}

TEST(GgufConvert, Tokenizer) {
  ScratchDir scratch;
  HfModel model = convert_gguf(open_tiny(scratch));
  const auto& tokenizer = model.tokenizer;
  const auto& bpe = tokenizer["model"];
  EXPECT_EQ(bpe["type"], "BPE");
  EXPECT_EQ(bpe["vocab"].size(), kTokens.size());
  EXPECT_EQ(bpe["vocab"]["Ġab"], 7);
  EXPECT_EQ(bpe["vocab"]["<|im_start|>"], 1);
  // "x y" holds a space, outside the byte alphabet: spelled byte by byte ("xĠy").
  EXPECT_EQ(bpe["vocab"]["xĠy"], 9);
  EXPECT_EQ(bpe["merges"], nlohmann::json::parse(R"([["a", "b"], ["Ġ", "ab"]])"));
  // Control tokens special, the user-defined one added but not special.
  const auto& added = tokenizer["added_tokens"];
  ASSERT_EQ(added.size(), 4u);
  EXPECT_EQ(added[0]["content"], "<|endoftext|>");
  EXPECT_EQ(added[0]["special"], true);
  EXPECT_EQ(added[2]["id"], 2);
  EXPECT_EQ(added[3]["content"], "<think>");
  EXPECT_EQ(added[3]["id"], 8);
  EXPECT_EQ(added[3]["special"], false);
  EXPECT_EQ(added[3]["normalized"], false);
  // smollm: llama.cpp's digit split, then the GPT-2 byte-level regex.
  EXPECT_EQ(tokenizer["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
  EXPECT_EQ(tokenizer["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(tokenizer["decoder"]["type"], "ByteLevel");

  const auto& config = model.tokenizer_config;
  EXPECT_EQ(config["bos_token"], "<|im_start|>");
  EXPECT_EQ(config["eos_token"], "<|im_end|>");
  EXPECT_EQ(config["pad_token"], "<|im_end|>");
  EXPECT_EQ(config["unk_token"], "<|endoftext|>");
  EXPECT_EQ(config["add_bos_token"], false);
  EXPECT_EQ(config["chat_template"], "{% for m in messages %}{{ m['content'] }}{% endfor %}");
  EXPECT_EQ(config["model_max_length"], 256);
}

TEST(GgufConvert, WritesADirectoryThatReadsBack) {
  ScratchDir scratch;
  HfModel model = convert_gguf(open_tiny(scratch));
  const auto out = scratch.path() / "hf";
  write_hf_directory(model, out);
  for (const char* name : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}) {
    std::ifstream in(out / name);
    ASSERT_TRUE(in.good()) << name;
    EXPECT_TRUE(nlohmann::json::accept(in)) << name;
  }
  std::ifstream config_in(out / "config.json");
  EXPECT_EQ(nlohmann::json::parse(config_in)["num_key_value_heads"], kKvHeads);
  SafetensorsFile weights = SafetensorsFile::open(out / "model.safetensors");
  EXPECT_EQ(weights.entries().size(), model.tensors.size());
  EXPECT_EQ(weights.tensor("model.layers.1.self_attn.k_proj.weight").to_floats(),
            weights_for("model.layers.1.self_attn.k_proj.weight", kKvHeads * kHeadDim * kHidden));
}

TEST(GgufConvert, RefusesToWriteBesideAShardedCheckpoint) {
  ScratchDir scratch;
  HfModel model = convert_gguf(open_tiny(scratch));
  const auto out = scratch.path() / "old";
  std::filesystem::create_directories(out);
  scratch.write("old/model.safetensors.index.json", std::vector<uint8_t>{'{', '}'});
  try {
    write_hf_directory(model, out);
    FAIL() << "wrote model.safetensors next to a shard index";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_NE(std::string(error.what()).find("holds a sharded checkpoint; convert into an empty directory"),
              std::string::npos);
  }
  EXPECT_FALSE(std::filesystem::exists(out / "model.safetensors"));
}

TEST(GgufConvert, RejectsWhatItCannotConvert) {
  TinySpec qwen;
  qwen.architecture = "qwen2";
  EXPECT_NE(conversion_error(qwen).find("metadata key 'general.architecture' is 'qwen2': llmft converts 'llama' GGUF "
                                        "files only"),
            std::string::npos);
  TinySpec missing;
  missing.skip_tensor = "blk.1.ffn_up.weight";
  EXPECT_NE(conversion_error(missing).find("no tensor for model.layers.1.mlp.up_proj.weight (shape [12, 8])"),
            std::string::npos);
  TinySpec extra;
  extra.extra_tensor = "blk.0.attn_q.bias";
  EXPECT_NE(conversion_error(extra).find("tensor 'blk.0.attn_q.bias' has no Hugging Face Llama counterpart"),
            std::string::npos);
  TinySpec beyond;
  beyond.extra_tensor = "blk.5.attn_norm.weight";
  EXPECT_NE(conversion_error(beyond).find("tensor 'blk.5.attn_norm.weight' is beyond the model described by the "
                                          "metadata (2 blocks)"),
            std::string::npos);
  TinySpec spm;
  spm.tokenizer_model = "llama";
  EXPECT_NE(conversion_error(spm).find("metadata key 'tokenizer.ggml.model': 'llama' is not supported"),
            std::string::npos);
  TinySpec bad_merge;
  bad_merge.merges = {"a b", "abc"};
  EXPECT_NE(conversion_error(bad_merge).find("merge 1 'abc' is not two tokens separated by one space"),
            std::string::npos);
  TinySpec bad_bos;
  bad_bos.bos_id = 99;
  EXPECT_NE(conversion_error(bad_bos).find("metadata key 'tokenizer.ggml.bos_token_id': token id 99 is outside the "
                                           "vocabulary of 10 tokens"),
            std::string::npos);
}

TEST(GgufConvert, RejectsAShapeThatContradictsTheMetadata) {
  // ffn_gate stored transposed: [8, 12] where the metadata makes it [12, 8].
  GgufBuilder builder = tiny_llama();
  ScratchDir scratch;
  GgufImage image = builder.build();
  image.poke<uint64_t>("tensor.blk.0.ffn_gate.weight.ne0", 12);  // ne = {12, 8}: same size, transposed
  image.at["ne1"] = image.at.at("tensor.blk.0.ffn_gate.weight.ne0") + 8;
  image.poke<uint64_t>("ne1", 8);
  try {
    convert_gguf(GgufFile::open(scratch.write("shape.gguf", image.bytes)));
    FAIL() << "converted a transposed ffn_gate";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("tensor 'blk.0.ffn_gate.weight': shape [8, 12] (as "
                                             "model.layers.0.mlp.gate_proj.weight), expected [12, 8]"),
              std::string::npos)
        << error.what();
  }
}

TEST(GgufConvert, LlmftLoadsTheDirectory) {
  // The model layer reads what the converter writes: config fields and every weight.
  ScratchDir scratch;
  TinySpec spec;
  spec.untied = true;
  HfModel model = convert_gguf(open_tiny(scratch, spec));
  write_hf_directory(model, scratch.path() / "hf");
  const ModelConfig config = ModelConfig::load(scratch.path() / "hf");
  EXPECT_EQ(config.hidden_size, kHidden);
  EXPECT_EQ(config.num_attention_heads, kHeads);
  EXPECT_EQ(config.num_key_value_heads, kKvHeads);
  EXPECT_EQ(config.head_dim, kHeadDim);
  EXPECT_EQ(config.intermediate_size, kFfn);
  EXPECT_EQ(config.vocab_size, kVocab);
  EXPECT_EQ(config.rope_theta, 100000.0);
  EXPECT_FALSE(config.tie_word_embeddings);
  std::unique_ptr<Context> context = Context::cpu();
  std::unique_ptr<LlamaModel> loaded = LlamaModel::load(*context, scratch.path() / "hf");
  std::vector<NamedTensor> state = loaded->state_dict(DType::kF32);
  ASSERT_EQ(state.size(), model.tensors.size());
  for (const NamedTensor& tensor : state)
    EXPECT_EQ(tensor.tensor.to_floats(), find(model, tensor.name).tensor.to_floats()) << tensor.name;
}

}  // namespace
}  // namespace llmft::gguf
