// A small random Llama directory with a real tokenizer file, for the tests
// that run `llmft generate` through the binary (tests/model/generate_e2e_test,
// tests/quickstart/quickstart_e2e_test): the tiny_llama config with its vocab
// resized to tests/testdata/tokenizer/metaspace, weights drawn with a large
// stddev so logits are peaked and greedy decoding has no near ties. Callers
// add generation_config.json / tokenizer_config.json as their test needs.
// Needs LLMFT_SOURCE_DIR and links llmft_model + llmft_tokenizer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>

#include "core/context.h"
#include "data/tokenizer.h"
#include "model/llama.h"

namespace llmft::testing {

inline void write_tiny_chat_model(const std::filesystem::path& directory, uint64_t seed) {
  const std::filesystem::path source = std::filesystem::path(LLMFT_SOURCE_DIR) / "tests/testdata";
  std::filesystem::copy_file(source / "tokenizer/metaspace/tokenizer.json", directory / "tokenizer.json");
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(directory / "tokenizer.json");
  ModelConfig config = ModelConfig::load(source / "model/tiny_llama/config.json");
  config.vocab_size = tokenizer->vocab_size();
  auto context = Context::cpu(0, 2);
  LlamaModel model(*context, config);
  model.init_random(*context, seed, /*stddev=*/0.3f);
  model.save_pretrained(directory);
}

}  // namespace llmft::testing
