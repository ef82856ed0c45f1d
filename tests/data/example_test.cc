// tf.Example codec: bytes checked against a hand-encoded protobuf message
// (wire format worked out by hand from example.proto/feature.proto field
// numbers), round trips, and one test per validation error.
#include "data/example.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "proto/example.pb.h"
#include "tests/test_util.h"

namespace llmft::data {
namespace {

using ::llmft::testing::bad_input_message;

const RecordContext kContext{"train-00003-of-00008.tfrecord", 1207, 88231};

// Example{features(1): Features{feature(1): entry{key(1): "input_ids",
// value(2): Feature{int64_list(3): Int64List{value(1) packed: 1, 2, 300}}}}}.
// 300 is the varint ac 02.
const std::string kHandEncoded =
    std::string("\x0a\x17"               // Example.features, 23 bytes
                "\x0a\x15"               // Features.feature map entry, 21 bytes
                "\x0a\x09input_ids"      // entry key
                "\x12\x08"               // entry value: Feature, 8 bytes
                "\x1a\x06"               // Feature.int64_list, 6 bytes
                "\x0a\x04\x01\x02\xac\x02",  // Int64List.value packed, 4 bytes
                25);

TEST(Example, EncodesTheOfficialWireFormat) {
  TokenExample example;
  example.input_ids = {1, 2, 300};
  EXPECT_EQ(encode_example(example), kHandEncoded);
}

TEST(Example, EncodesFeaturesInKeyOrderWhateverTheInsertionOrder) {
  // Shards built twice from the same input must be byte-identical, so the
  // feature map is written sorted by key ("input_ids" < "loss_mask" < "zeta").
  std::string forward = encode_int64_features({{"input_ids", {1}}, {"loss_mask", {1}}, {"zeta", {2}}});
  std::string backward = encode_int64_features({{"zeta", {2}}, {"loss_mask", {1}}, {"input_ids", {1}}});
  EXPECT_EQ(forward, backward);
  size_t input_ids = forward.find("input_ids"), loss_mask = forward.find("loss_mask"), zeta = forward.find("zeta");
  EXPECT_LT(input_ids, loss_mask);
  EXPECT_LT(loss_mask, zeta);
}

TEST(Example, DecodesTheOfficialWireFormat) {
  TokenExample decoded = decode_example(kHandEncoded, {}, kContext);
  EXPECT_EQ(decoded.input_ids, (std::vector<int64_t>{1, 2, 300}));
  EXPECT_TRUE(decoded.labels.empty());
  EXPECT_TRUE(decoded.loss_mask.empty());
}

TEST(Example, RoundTripsLabelsLossMaskAndCustomNames) {
  TokenExample example;
  example.input_ids = {5, 6, 7, 8, 0, 127, 128, 1 << 20};
  example.labels = {-100, -100, 7, 8, 0, 127, 128, 1 << 20};
  example.loss_mask = {0, 0, 1, 1, 1, 1, 1, 1};
  EXPECT_EQ(decode_example(encode_example(example), {}, kContext), example);
  DecodeOptions custom;
  custom.names.input_ids = "tokens";
  custom.names.labels = "targets";
  custom.names.loss_mask = "completion";
  std::string bytes = encode_example(example, custom.names);
  EXPECT_EQ(decode_example(bytes, custom, kContext), example);
  // The generated classes see the configured names.
  tensorflow::Example proto;
  ASSERT_TRUE(proto.ParseFromString(bytes));
  EXPECT_EQ(proto.features().feature().at("tokens").int64_list().value_size(), 8);
  EXPECT_EQ(proto.features().feature().count("input_ids"), 0u);
}

TEST(Example, RejectsUndecodableBytes) {
  std::string message = bad_input_message([] { decode_example(std::string("\xff\xff\xff\xff", 4), {}, kContext); });
  EXPECT_EQ(message, "train-00003-of-00008.tfrecord: record 1207 at byte 88231: record of 4 bytes is not a valid "
                     "tensorflow.Example");
}

TEST(Example, RejectsAMissingFeatureAndListsThePresentOnes) {
  std::string bytes = encode_int64_features({{"tokens", {1, 2}}, {"mask", {1, 1}}});
  std::string message = bad_input_message([&] { decode_example(bytes, {}, kContext); });
  EXPECT_EQ(message, "train-00003-of-00008.tfrecord: record 1207 at byte 88231: missing feature 'input_ids' "
                     "(int64_list of token ids); features present: mask, tokens");
}

TEST(Example, RejectsAFeatureOfTheWrongKind) {
  tensorflow::Example proto;
  (*proto.mutable_features()->mutable_feature())["input_ids"].mutable_bytes_list()->add_value("hello");
  std::string message = bad_input_message([&] { decode_example(proto.SerializeAsString(), {}, kContext); });
  EXPECT_NE(message.find("feature 'input_ids' is a bytes_list, expected an int64_list"), std::string::npos);
}

TEST(Example, RejectsLabelsOfAnotherLength) {
  std::string bytes = encode_int64_features({{"input_ids", {1, 2, 3}}, {"labels", {1, 2}}});
  std::string message = bad_input_message([&] { decode_example(bytes, {}, kContext); });
  EXPECT_NE(message.find("feature 'labels' has 2 values, expected 3 (one per 'input_ids' token)"),
            std::string::npos);
}

TEST(Example, RejectsTokenIdsOutsideTheVocabulary) {
  DecodeOptions options;
  options.vocab_size = 50;
  std::string bytes = encode_int64_features({{"input_ids", {1, 49, 50}}});
  EXPECT_EQ(bad_input_message([&] { decode_example(bytes, options, kContext); }),
            "train-00003-of-00008.tfrecord: record 1207 at byte 88231: feature 'input_ids' position 2: token id 50 "
            "is outside the vocabulary [0, 50)");
  std::string negative = encode_int64_features({{"input_ids", {-1}}});
  EXPECT_NE(bad_input_message([&] { decode_example(negative, options, kContext); }).find("token id -1"),
            std::string::npos);
  // -100 is allowed in labels only.
  std::string labels = encode_int64_features({{"input_ids", {1, 2}}, {"labels", {-100, 2}}});
  EXPECT_EQ(decode_example(labels, options, kContext).labels, (std::vector<int64_t>{-100, 2}));
  std::string bad_labels = encode_int64_features({{"input_ids", {1, 2}}, {"labels", {-100, 77}}});
  EXPECT_NE(bad_input_message([&] { decode_example(bad_labels, options, kContext); })
                .find("feature 'labels' position 1: token id 77"),
            std::string::npos);
}

TEST(Example, RejectsALossMaskValueOtherThanZeroOrOne) {
  std::string bytes = encode_int64_features({{"input_ids", {1, 2}}, {"loss_mask", {0, 2}}});
  EXPECT_NE(bad_input_message([&] { decode_example(bytes, {}, kContext); })
                .find("feature 'loss_mask' position 1: value 2, expected 0 (prompt) or 1 (completion)"),
            std::string::npos);
}

TEST(Example, CountsInputIds) {
  EXPECT_EQ(count_input_ids(kHandEncoded, {}, kContext), 3u);
}

}  // namespace
}  // namespace llmft::data
