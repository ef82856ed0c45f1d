// tf.Example encode/decode for token records, with the official schema
// (proto/example.proto, proto/feature.proto: package `tensorflow`, TF's field
// numbers), so files written by TensorFlow read here and ours read there.
//
// A token record is an Example with int64_list features:
//   input_ids  the document's token ids (required)
//   labels     optional, same length: the id to predict at each position, or
//              -100 where no loss is taken (Hugging Face convention)
//   loss_mask  optional, same length: 1 where the token is a completion token
//              (loss taken), 0 for prompt tokens
// Feature names are configurable (ExampleFeatureNames).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmft::data {

constexpr int64_t kIgnoreIndex = -100;  // PyTorch's CrossEntropyLoss ignore_index

struct ExampleFeatureNames {
  std::string input_ids = "input_ids";
  std::string labels = "labels";
  std::string loss_mask = "loss_mask";
};

struct TokenExample {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;     // empty when the record has none
  std::vector<int64_t> loss_mask;  // empty when the record has none
  bool operator==(const TokenExample&) const = default;
};

// Where a record came from, for error messages: "<file>: record <i> at byte <o>".
struct RecordContext {
  std::string_view file;
  uint64_t record_index = 0;
  uint64_t offset = 0;
};

// Serialised tensorflow.Example with the non-empty fields as int64 features.
std::string encode_example(const TokenExample& example, const ExampleFeatureNames& names = {});

// Any set of named int64 lists (for builders that store extra features).
std::string encode_int64_features(const std::vector<std::pair<std::string, std::vector<int64_t>>>& features);

struct DecodeOptions {
  ExampleFeatureNames names;
  // When > 0, every input id (and every label other than -100) must be in
  // [0, vocab_size).
  int64_t vocab_size = 0;
};

// Parses and validates a token record. Throws llmft::Error (kBadInput) naming
// the file, record, offset and feature: undecodable bytes, a missing
// input_ids feature (listing the features present), a feature of the wrong
// kind, labels/loss_mask of another length, a loss_mask value other than 0/1,
// or a token id outside the vocabulary.
TokenExample decode_example(std::string_view bytes, const DecodeOptions& options, const RecordContext& context);

// Only the number of input ids (validated like decode_example), for indexing.
size_t count_input_ids(std::string_view bytes, const DecodeOptions& options, const RecordContext& context);

}  // namespace llmft::data
