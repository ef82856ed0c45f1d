// The C interface of libllmft_sentencepiece_shim.so, the only code that calls
// libsentencepiece directly.
//
// Why a separately loaded library: Debian's libsentencepiece.so.0 (0.1.97)
// carries its own copy of protobuf-lite and exports those symbols. In a process
// that also links the system libprotobuf (llmft_proto, for tf.Example), the
// dynamic linker binds libprotobuf's own calls to sentencepiece's older copy and
// the process crashes during static initialisation (seen as a SIGSEGV in
// DescriptorPool::InternalAddGeneratedFile -> MergeFromImpl in
// libsentencepiece.so.0). Loading the shim with dlopen(RTLD_LOCAL |
// RTLD_DEEPBIND) keeps sentencepiece's symbols out of the global scope and
// makes sentencepiece bind to its own copy first, so the two never mix.
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// Receives bytes produced by the shim (text, an int32 array, an error message).
typedef void (*LlmftSpmSink)(void* context, const char* data, size_t size);

struct LlmftSentencePieceApi {
  // A processor for the model file at `path`, or null with the reason sent to `error`.
  void* (*load)(const char* path, LlmftSpmSink error, void* error_context);
  void (*destroy)(void* processor);
  // 0 on success (ids sent to `ids` as int32 bytes), else nonzero with the reason sent to `error`.
  int (*encode)(void* processor, const char* text, size_t size, LlmftSpmSink ids, void* ids_context,
                LlmftSpmSink error, void* error_context);
  int (*decode)(void* processor, const int32_t* ids, size_t count, LlmftSpmSink text, void* text_context,
                LlmftSpmSink error, void* error_context);
  int32_t (*piece_size)(void* processor);
  int32_t (*bos_id)(void* processor);  // -1 when the model has none
  int32_t (*eos_id)(void* processor);
  void (*id_to_piece)(void* processor, int32_t id, LlmftSpmSink piece, void* piece_context);
};

// The shim's one exported symbol.
const LlmftSentencePieceApi* llmft_sentencepiece_api();
}
