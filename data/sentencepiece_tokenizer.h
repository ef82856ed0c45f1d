// sentencepiece .model files (Llama-2, Mistral, T5 style), through
// libsentencepiece, which runs inside libllmft_sentencepiece_shim.so loaded on
// first use (data/sentencepiece_shim.h says why). BOS/EOS: add_bos_token / add_eos_token from a
// tokenizer_config.json next to the model when present; otherwise BOS is added
// and EOS is not, the default of transformers' LlamaTokenizer.
// Text such as "<s>" inside the input is encoded as text: sentencepiece does not
// match control symbols in its input.
#pragma once

#include <filesystem>
#include <memory>

#include "data/tokenizer.h"

struct LlmftSentencePieceApi;

namespace llmft {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::filesystem::path& model_path);
  ~SentencePieceTokenizer() override;
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int32_t> encode(std::string_view text) const override;
  // Control symbols (BOS/EOS) decode to nothing, whatever skip_special_tokens says.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const override;
  int32_t vocab_size() const override;
  std::string id_to_piece(int32_t id) const override;
  std::string description() const override;

 private:
  std::string source_;
  const LlmftSentencePieceApi* api_;
  void* processor_ = nullptr;  // owned; released with api_->destroy
};

std::unique_ptr<SentencePieceTokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& model_path);

}  // namespace llmft
