// libllmft_sentencepiece_shim.so: libsentencepiece behind a C table of
// functions (see data/sentencepiece_shim.h for why it is loaded on its own).
#include "data/sentencepiece_shim.h"

#include <sentencepiece_processor.h>

#include <string>
#include <vector>

namespace {

using sentencepiece::SentencePieceProcessor;

void send(LlmftSpmSink sink, void* context, const std::string& text) { sink(context, text.data(), text.size()); }

void* load(const char* path, LlmftSpmSink error, void* error_context) {
  auto* processor = new SentencePieceProcessor();
  if (auto status = processor->Load(path); !status.ok()) {
    send(error, error_context, status.ToString());
    delete processor;
    return nullptr;
  }
  return processor;
}

void destroy(void* processor) { delete static_cast<SentencePieceProcessor*>(processor); }

int encode(void* processor, const char* text, size_t size, LlmftSpmSink ids_sink, void* ids_context,
           LlmftSpmSink error, void* error_context) {
  std::vector<int> ids;
  if (auto status = static_cast<SentencePieceProcessor*>(processor)->Encode(std::string_view(text, size), &ids);
      !status.ok()) {
    send(error, error_context, status.ToString());
    return 1;
  }
  std::vector<int32_t> out(ids.begin(), ids.end());
  ids_sink(ids_context, reinterpret_cast<const char*>(out.data()), out.size() * sizeof(int32_t));
  return 0;
}

int decode(void* processor, const int32_t* ids, size_t count, LlmftSpmSink text_sink, void* text_context,
           LlmftSpmSink error, void* error_context) {
  std::vector<int> piece_ids(ids, ids + count);
  std::string text;
  if (auto status = static_cast<SentencePieceProcessor*>(processor)->Decode(piece_ids, &text); !status.ok()) {
    send(error, error_context, status.ToString());
    return 1;
  }
  send(text_sink, text_context, text);
  return 0;
}

int32_t piece_size(void* processor) { return static_cast<SentencePieceProcessor*>(processor)->GetPieceSize(); }
int32_t bos_id(void* processor) { return static_cast<SentencePieceProcessor*>(processor)->bos_id(); }
int32_t eos_id(void* processor) { return static_cast<SentencePieceProcessor*>(processor)->eos_id(); }

void id_to_piece(void* processor, int32_t id, LlmftSpmSink piece, void* piece_context) {
  send(piece, piece_context, static_cast<SentencePieceProcessor*>(processor)->IdToPiece(id));
}

constexpr LlmftSentencePieceApi kApi = {load, destroy, encode, decode, piece_size, bos_id, eos_id, id_to_piece};

}  // namespace

extern "C" __attribute__((visibility("default"))) const LlmftSentencePieceApi* llmft_sentencepiece_api() {
  return &kApi;
}
