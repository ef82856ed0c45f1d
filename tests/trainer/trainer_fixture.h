// Tiny training runs built inside the tests: a random Llama saved as a
// Hugging Face directory, TFRecord shards of token examples, and a run config.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/context.h"
#include "core/philox.h"
#include "data/example.h"
#include "data/tfrecord.h"
#include "model/llama.h"

namespace llmft::trainer_test {

// hidden 32, 2 layers, 4 heads / 2 KV heads, vocab 64: a full step takes
// milliseconds.
inline ModelConfig tiny_model_config() {
  ModelConfig config;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 8;
  config.vocab_size = 64;
  config.max_position_embeddings = 128;
  config.rms_norm_eps = 1e-5;
  config.bos_token_ids = {1};
  config.eos_token_ids = {2};
  return config;
}

// Random weights (seed) as a Hugging Face directory.
inline void write_tiny_model(const std::filesystem::path& directory, uint64_t seed = 7) {
  auto context = Context::cpu();
  LlamaModel model(*context, tiny_model_config());
  model.init_random(*context, seed, 0.2f);
  model.save_pretrained(directory);
}

// `documents` token lists with loss on every token, or loss masks when given.
inline void write_shard(const std::filesystem::path& path, const std::vector<data::TokenExample>& documents) {
  data::RecordWriter writer(path.string());
  for (const data::TokenExample& document : documents) writer.write(data::encode_example(document));
  writer.close();
}

// `count` documents of lengths 3..(3 + length_spread) with random ids in
// [3, vocab), every other one with a loss mask covering only its second half,
// so rows carry different numbers of trained tokens.
inline std::vector<data::TokenExample> random_documents(int count, uint64_t seed, int length_spread = 20) {
  PhiloxGenerator random(seed);
  std::vector<data::TokenExample> documents;
  for (int i = 0; i < count; ++i) {
    data::TokenExample document;
    const int length = 3 + static_cast<int>(random.next_below(static_cast<uint64_t>(length_spread)));
    for (int t = 0; t < length; ++t) document.input_ids.push_back(3 + static_cast<int64_t>(random.next_below(61)));
    if (i % 2 == 1) {
      for (int t = 0; t < length; ++t) document.loss_mask.push_back(t >= length / 2 ? 1 : 0);
    }
    documents.push_back(std::move(document));
  }
  return documents;
}

}  // namespace llmft::trainer_test
