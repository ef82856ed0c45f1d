#include "data/sentencepiece_tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/sentencepiece_shim.h"
#include "data/tokenizer_unicode.h"

namespace llmft {
namespace {

constexpr const char* kShimName = "libllmft_sentencepiece_shim.so";

void append_to_string(void* context, const char* data, size_t size) {
  static_cast<std::string*>(context)->append(data, size);
}

// Where the shim may be: the build tree (compiled in), next to the running
// binary, or in ../lib from it (an installed layout).
std::vector<std::filesystem::path> shim_candidates() {
  std::vector<std::filesystem::path> candidates;
#ifdef LLMFT_SENTENCEPIECE_SHIM
  candidates.emplace_back(LLMFT_SENTENCEPIECE_SHIM);
#endif
  std::error_code error;
  std::filesystem::path executable = std::filesystem::read_symlink("/proc/self/exe", error);
  if (!error) {
    candidates.push_back(executable.parent_path() / kShimName);
    candidates.push_back(executable.parent_path().parent_path() / "lib" / kShimName);
  }
  return candidates;
}

// Loaded once per process and never unloaded: the library handle is process
// state by nature (dlopen reference counts it anyway).
const LlmftSentencePieceApi& sentencepiece_api() {
  static const LlmftSentencePieceApi* api = [] {
    std::string failures;
    for (const std::filesystem::path& candidate : shim_candidates()) {
      std::error_code error;
      if (!std::filesystem::exists(candidate, error)) continue;
      void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (!handle) {
        failures += str_cat("; ", candidate.string(), ": ", dlerror());
        continue;
      }
      auto entry = reinterpret_cast<const LlmftSentencePieceApi* (*)()>(dlsym(handle, "llmft_sentencepiece_api"));
      if (!entry) {
        failures += str_cat("; ", candidate.string(), ": no llmft_sentencepiece_api symbol");
        continue;
      }
      return entry();
    }
    throw_runtime("sentencepiece support library ", kShimName, " could not be loaded",
                  failures.empty() ? " (not found next to the llmft binary or in the build tree)" : failures);
  }();
  return *api;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_path)
    : source_(model_path.string()), api_(&sentencepiece_api()) {
  std::string error;
  processor_ = api_->load(source_.c_str(), append_to_string, &error);
  if (!processor_) throw_bad_input(source_, ": not a sentencepiece model: ", error);
  if (int32_t bos = api_->bos_id(processor_); bos >= 0) bos_id_ = bos;
  if (int32_t eos = api_->eos_id(processor_); eos >= 0) eos_id_ = eos;

  bool add_bos = true, add_eos = false;
  std::filesystem::path config_path = model_path.parent_path() / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    std::ifstream in(config_path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    nlohmann::json config = parse_json(buffer.str(), config_path.string(), /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) throw_bad_input(config_path.string(), ": not a JSON object");
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

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (processor_) api_->destroy(processor_);
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  if (auto bad = unicode::find_invalid_utf8(text)) throw_bad_input("text is not valid UTF-8 at byte ", *bad);
  std::string id_bytes, error;
  if (api_->encode(processor_, text.data(), text.size(), append_to_string, &id_bytes, append_to_string, &error) != 0)
    throw_runtime(source_, ": sentencepiece encode failed: ", error);
  std::vector<int32_t> ids(id_bytes.size() / sizeof(int32_t));
  std::memcpy(ids.data(), id_bytes.data(), ids.size() * sizeof(int32_t));
  return ids;
}

std::string SentencePieceTokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  for (int32_t id : ids)
    if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
  std::string text, error;
  if (api_->decode(processor_, ids.data(), ids.size(), append_to_string, &text, append_to_string, &error) != 0)
    throw_runtime(source_, ": sentencepiece decode failed: ", error);
  return text;
}

int32_t SentencePieceTokenizer::vocab_size() const { return api_->piece_size(processor_); }

std::string SentencePieceTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) throw_bad_input(source_, ": token id ", id, " outside [0, ", vocab_size(), ")");
  std::string piece;
  api_->id_to_piece(processor_, id, append_to_string, &piece);
  return piece;
}

std::string SentencePieceTokenizer::description() const {
  return str_cat(source_, " (sentencepiece, ", vocab_size(), " ids)");
}

std::unique_ptr<SentencePieceTokenizer> load_sentencepiece_tokenizer(const std::filesystem::path& model_path) {
  return std::make_unique<SentencePieceTokenizer>(model_path);
}

}  // namespace llmft
