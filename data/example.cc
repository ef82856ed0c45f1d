#include "data/example.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <algorithm>

#include "core/error.h"
#include "proto/example.pb.h"

namespace llmft::data {
namespace {

std::string where(const RecordContext& context) {
  return str_cat(context.file, ": record ", context.record_index, " at byte ", context.offset);
}

const char* kind_name(const tensorflow::Feature& feature) {
  switch (feature.kind_case()) {
    case tensorflow::Feature::kBytesList: return "bytes_list";
    case tensorflow::Feature::kFloatList: return "float_list";
    case tensorflow::Feature::kInt64List: return "int64_list";
    default: return "no value";
  }
}

void add_int64_feature(tensorflow::Features& features, const std::string& name, const std::vector<int64_t>& values) {
  auto* list = (*features.mutable_feature())[name].mutable_int64_list();
  list->mutable_value()->Assign(values.begin(), values.end());
}

// The int64 list of feature `name`, or null when absent (and not required).
const google::protobuf::RepeatedField<int64_t>* find_int64(const tensorflow::Example& example,
                                                           const std::string& name, bool required,
                                                           const RecordContext& context) {
  const auto& features = example.features().feature();
  auto found = features.find(name);
  if (found == features.end()) {
    if (!required) return nullptr;
    std::vector<std::string> names;  // sorted: protobuf map order is unspecified
    for (const auto& [key, value] : features) names.push_back(key);
    std::sort(names.begin(), names.end());
    std::string present;
    for (const auto& key : names) present += (present.empty() ? "" : ", ") + key;
    throw_bad_input(where(context), ": missing feature '", name, "' (int64_list of token ids); features present: ",
                    present.empty() ? "none" : present);
  }
  if (found->second.kind_case() == tensorflow::Feature::KIND_NOT_SET) {
    // A Feature with no list set holds no values (how some writers store an empty list).
    static const google::protobuf::RepeatedField<int64_t> kNoValues;
    return &kNoValues;
  }
  if (found->second.kind_case() != tensorflow::Feature::kInt64List)
    throw_bad_input(where(context), ": feature '", name, "' is a ", kind_name(found->second),
                    ", expected an int64_list");
  return &found->second.int64_list().value();
}

void check_same_length(const google::protobuf::RepeatedField<int64_t>* values, size_t expected,
                       const std::string& name, const std::string& input_name, const RecordContext& context) {
  if (values && static_cast<size_t>(values->size()) != expected)
    throw_bad_input(where(context), ": feature '", name, "' has ", values->size(), " values, expected ", expected,
                    " (one per '", input_name, "' token)");
}

void check_token_ids(const google::protobuf::RepeatedField<int64_t>& ids, const std::string& name,
                     int64_t vocab_size, bool allow_ignore_index, const RecordContext& context) {
  if (vocab_size <= 0) return;
  for (int i = 0; i < ids.size(); ++i) {
    int64_t id = ids[i];
    if (allow_ignore_index && id == kIgnoreIndex) continue;
    if (id < 0 || id >= vocab_size)
      throw_bad_input(where(context), ": feature '", name, "' position ", i, ": token id ", id,
                      " is outside the vocabulary [0, ", vocab_size, ")");
  }
}

struct ParsedRecord {
  tensorflow::Example example;
  const google::protobuf::RepeatedField<int64_t>* input_ids = nullptr;
  const google::protobuf::RepeatedField<int64_t>* labels = nullptr;
  const google::protobuf::RepeatedField<int64_t>* loss_mask = nullptr;
};

void parse_and_validate(std::string_view bytes, const DecodeOptions& options, const RecordContext& context,
                        ParsedRecord& parsed) {
  if (!parsed.example.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    throw_bad_input(where(context), ": record of ", bytes.size(), " bytes is not a valid tensorflow.Example");
  const ExampleFeatureNames& names = options.names;
  parsed.input_ids = find_int64(parsed.example, names.input_ids, true, context);
  parsed.labels = find_int64(parsed.example, names.labels, false, context);
  parsed.loss_mask = find_int64(parsed.example, names.loss_mask, false, context);
  size_t count = static_cast<size_t>(parsed.input_ids->size());
  check_same_length(parsed.labels, count, names.labels, names.input_ids, context);
  check_same_length(parsed.loss_mask, count, names.loss_mask, names.input_ids, context);
  check_token_ids(*parsed.input_ids, names.input_ids, options.vocab_size, false, context);
  if (parsed.labels) check_token_ids(*parsed.labels, names.labels, options.vocab_size, true, context);
  if (parsed.loss_mask) {
    for (int i = 0; i < parsed.loss_mask->size(); ++i) {
      int64_t flag = (*parsed.loss_mask)[i];
      if (flag != 0 && flag != 1)
        throw_bad_input(where(context), ": feature '", names.loss_mask, "' position ", i, ": value ", flag,
                        ", expected 0 (prompt) or 1 (completion)");
    }
  }
}

// Serialises with map entries sorted by key: the default protobuf map order
// varies between runs, and shards must be byte-identical for a given seed.
std::string serialize_deterministically(const tensorflow::Example& proto) {
  std::string bytes;
  google::protobuf::io::StringOutputStream stream(&bytes);
  google::protobuf::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  proto.SerializeToCodedStream(&coded);
  coded.Trim();
  return bytes;
}

}  // namespace

std::string encode_example(const TokenExample& example, const ExampleFeatureNames& names) {
  tensorflow::Example proto;
  auto* features = proto.mutable_features();
  add_int64_feature(*features, names.input_ids, example.input_ids);
  if (!example.labels.empty()) add_int64_feature(*features, names.labels, example.labels);
  if (!example.loss_mask.empty()) add_int64_feature(*features, names.loss_mask, example.loss_mask);
  return serialize_deterministically(proto);
}

std::string encode_int64_features(const std::vector<std::pair<std::string, std::vector<int64_t>>>& features) {
  tensorflow::Example proto;
  for (const auto& [name, values] : features) add_int64_feature(*proto.mutable_features(), name, values);
  return serialize_deterministically(proto);
}

TokenExample decode_example(std::string_view bytes, const DecodeOptions& options, const RecordContext& context) {
  ParsedRecord parsed;
  parse_and_validate(bytes, options, context, parsed);
  TokenExample example;
  example.input_ids.assign(parsed.input_ids->begin(), parsed.input_ids->end());
  if (parsed.labels) example.labels.assign(parsed.labels->begin(), parsed.labels->end());
  if (parsed.loss_mask) example.loss_mask.assign(parsed.loss_mask->begin(), parsed.loss_mask->end());
  return example;
}

size_t count_input_ids(std::string_view bytes, const DecodeOptions& options, const RecordContext& context) {
  ParsedRecord parsed;
  parse_and_validate(bytes, options, context, parsed);
  return static_cast<size_t>(parsed.input_ids->size());
}

}  // namespace llmft::data
