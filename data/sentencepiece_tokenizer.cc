#include "data/sentencepiece_tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer_unicode.h"

namespace llmft {

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_path)
    : source_(model_path.string()), processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (auto status = processor_->Load(source_); !status.ok())
    throw_bad_input(source_, ": not a sentencepiece model: ", status.ToString());
  if (processor_->bos_id() >= 0) bos_id_ = processor_->bos_id();
  if (processor_->eos_id() >= 0) eos_id_ = processor_->eos_id();

  bool add_bos = true, add_eos = false;
  std::filesystem::path config_path = model_path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    std::ifstream in(config_path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    nlohmann::json config = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object())
      throw_bad_input(config_path.string(), ": not a JSON object");
    for (auto [key, flag] : {std::pair{"add_bos_token", &add_bos}, std::pair{"add_eos_token", &add_eos}}) {
      if (!config.contains(key) || config[key].is_null()) continue;
      if (!config[key].is_boolean()) throw_bad_input(config_path.string(), ": ", key, ": expected true or false");
      *flag = config[key].get<bool>();
    }
  }
  if (add_bos) {
    if (!bos_id_) throw_bad_input(source_, ": the model has no BOS piece but BOS is to be added (add_bos_token)");
    prefix_ids_.push_back(*bos_id_);
  }
  if (add_eos) {
    if (!eos_id_) throw_bad_input(source_, ": the model has no EOS piece but EOS is to be added (add_eos_token)");
    suffix_ids_.push_back(*eos_id_);
  }
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  if (auto bad = unicode::find_invalid_utf8(text)) throw_bad_input("text is not valid UTF-8 at byte ", *bad);
  std::vector<int> ids;
  if (auto status = processor_->Encode(text, &ids); !status.ok())
    throw_runtime(source_, ": sentencepiece encode failed: ", status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<int> piece_ids;
  piece_ids.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
    piece_ids.push_back(id);
  }
  std::string text;
  if (auto status = processor_->Decode(piece_ids, &text); !status.ok())
    throw_runtime(source_, ": sentencepiece decode failed: ", status.ToString());
  return text;
}

int32_t SentencePieceTokenizer::vocab_size() const { return processor_->GetPieceSize(); }

std::string SentencePieceTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
  return processor_->IdToPiece(id);
}

std::string SentencePieceTokenizer::description() const {
  return str_cat(source_, " (sentencepiece, ", vocab_size(), " ids)");
}

std::unique_ptr<SentencePieceTokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace llmft
