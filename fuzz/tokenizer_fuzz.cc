// libFuzzer target for tokenizer.json loading and encoding
// (data/bpe_tokenizer.h). Two kinds of input:
//   - with a NUL byte: tokenizer.json up to it, the text to encode after it
//     (and after a second NUL, tokenizer_config.json). Loading must succeed
//     or raise llmft::Error; encoding must give ids inside the vocabulary that
//     decode without error.
//   - without: text for the SmolLM2 tokenizer (tests/testdata/tokenizer/smollm2,
//     a byte-level BPE without normalizer), where more is promised: encode and
//     encode_ordinary of valid UTF-8 decode back to the same bytes, and
//     token_offsets places every token inside the text, in order. (Only for
//     texts of bytes the vocabulary has a token for: SmolLM2 lacks some
//     control bytes, e.g. 0x04, which tokenizers then drops, and so does llmft.)
// Built and run by fuzz/run_fuzz.sh (ctest fuzz.tokenizer_fuzz).
#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/bpe_tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace {

using namespace llmft;

void check_ids(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) LLMFT_FUZZ_EXPECT(id >= 0 && id < tokenizer.vocab_size());
}

const BpeTokenizer& smollm2() {
  static const std::unique_ptr<BpeTokenizer> tokenizer =
      load_bpe_tokenizer(LLMFT_SOURCE_DIR "/tests/testdata/tokenizer/smollm2/tokenizer.json");
  return *tokenizer;
}

void encode_with_loaded(std::string_view tokenizer_json, std::string_view text, std::string_view config_json) {
  nlohmann::json parsed = parse_json(tokenizer_json, "fuzz/tokenizer.json", /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return;
  nlohmann::json config;
  if (!config_json.empty()) {
    config = parse_json(config_json, "fuzz/tokenizer_config.json", /*allow_exceptions=*/false);
    if (config.is_discarded()) return;
  }
  const BpeTokenizer tokenizer(parsed, config, "fuzz/tokenizer.json");
  for (bool ordinary : {false, true}) {
    try {
      std::vector<int32_t> ids = ordinary ? tokenizer.encode_ordinary(text) : tokenizer.encode(text);
      check_ids(tokenizer, ids);
      (void)tokenizer.decode(ids);
      (void)tokenizer.decode(ids, /*skip_special_tokens=*/true);
      try {
        std::vector<size_t> offsets = tokenizer.token_offsets(text, ids);
        for (size_t offset : offsets) LLMFT_FUZZ_EXPECT(offset <= text.size());
      } catch (const Error&) {
        // Normalizers and unknown tokens may make the ids not spell the text.
      }
      check_ids(tokenizer, tokenizer.encode_with_special_tokens(text));
    } catch (const Error&) {
    }
  }
  for (int32_t id = 0; id < std::min(tokenizer.vocab_size(), 64); ++id) {
    (void)tokenizer.id_to_piece(id);
    (void)tokenizer.token_text_bytes(id);
  }
}

// Bytes that have a token of their own (the byte-level alphabet's symbol).
const std::array<bool, 256>& bytes_with_a_token() {
  static const std::array<bool, 256> covered = [] {
    std::array<bool, 256> bytes{};
    const BpeTokenizer& tokenizer = smollm2();
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
      const std::string text = tokenizer.token_text_bytes(id);
      if (text.size() == 1) bytes[static_cast<uint8_t>(text[0])] = true;
    }
    return bytes;
  }();
  return covered;
}

void encode_with_smollm2(std::string_view text) {
  const BpeTokenizer& tokenizer = smollm2();
  bool covered = true;
  for (char byte : text) covered = covered && bytes_with_a_token()[static_cast<uint8_t>(byte)];
  for (bool ordinary : {false, true}) {
    std::vector<int32_t> ids;
    try {
      ids = ordinary ? tokenizer.encode_ordinary(text) : tokenizer.encode(text);
    } catch (const Error&) {
      return;  // not UTF-8
    }
    check_ids(tokenizer, ids);
    if (!covered) continue;
    LLMFT_FUZZ_EXPECT(tokenizer.decode(ids) == text);
    const std::vector<size_t> offsets = tokenizer.token_offsets(text, ids);
    LLMFT_FUZZ_EXPECT(offsets.size() == ids.size());
    for (size_t i = 0; i < offsets.size(); ++i)
      LLMFT_FUZZ_EXPECT(offsets[i] < text.size() && (i == 0 || offsets[i] > offsets[i - 1]));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)bytes_with_a_token();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  if (nul == std::string_view::npos) {
    encode_with_smollm2(input);
    return 0;
  }
  std::string_view rest = input.substr(nul + 1);
  const size_t second = rest.find('\0');
  const std::string_view config = second == std::string_view::npos ? std::string_view() : rest.substr(second + 1);
  try {
    encode_with_loaded(input.substr(0, nul), rest.substr(0, second), config);
  } catch (const Error&) {
  }
  return 0;
}
