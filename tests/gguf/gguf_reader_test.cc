// The GGUF container: metadata of every value type, tensor geometry, and
// rejection of truncated, corrupted and lying files, each with its own
// one-line error naming the file and the key or tensor, never a crash.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/gguf_reader.h"
#include "tests/gguf/gguf_test_writer.h"

namespace llmft::gguf {
namespace {

using namespace llmft::gguf::testing;

GgufBuilder two_tensor_file() {
  GgufBuilder builder;
  builder.add("general.architecture", string_value("llama"));
  builder.add("llama.block_count", u32_value(1));
  builder.add("tokenizer.ggml.tokens", string_array({"a", "b", "c"}));
  // 64 Q8_0 weights (2 blocks, 68 bytes: padded to 96) then 8 F32 weights.
  builder.add_tensor({"blk.0.attn_q.weight", {32, 2}, 8, std::vector<uint8_t>(68, 0)});
  builder.add_tensor({"output_norm.weight", {8}, 0, std::vector<uint8_t>(32, 0)});
  return builder;
}

// Opens `bytes` and expects kBadInput whose message contains the file name and `expected`.
void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& expected) {
  ScratchDir scratch;
  const auto path = scratch.write("bad.gguf", bytes);
  try {
    GgufFile::open(path);
    ADD_FAILURE() << "accepted a file that should fail with: " << expected;
  } catch (const Error& error) {
    const std::string message = error.what();
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput) << message;
    EXPECT_NE(message.find(path.string()), std::string::npos) << message;
    EXPECT_NE(message.find(expected), std::string::npos) << "expected '" << expected << "' in: " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "one line: " << message;
  }
}

TEST(GgufReader, ReadsMetadataOfEveryValueType) {
  GgufBuilder builder;
  builder.add("u8", u8_value(200));
  builder.add("i8", i8_value(-100));
  builder.add("u16", u16_value(60000));
  builder.add("i16", i16_value(-30000));
  builder.add("u32", u32_value(4000000000u));
  builder.add("i32", i32_value(-2000000000));
  builder.add("f32", f32_value(0.1f));
  builder.add("bool.true", bool_value(true));
  builder.add("bool.false", bool_value(false));
  builder.add("string", string_value("héllo ✓ <|im_start|>"));
  builder.add("u64", u64_value(18000000000000000000ull));
  builder.add("i64", i64_value(-9000000000000000000ll));
  builder.add("f64", f64_value(1e-300));
  builder.add("empty.string", string_value(""));
  builder.add("array.i32", i32_array({1, -2, 3}));
  builder.add("array.string", string_array({"Ġ t", "", "x"}));
  builder.add("array.empty", array_value(6, {}));
  builder.add("array.nested", array_value(9, {i32_array({7, 8}), string_array({"deep"})}));
  ScratchDir scratch;
  GgufFile file = GgufFile::open(scratch.write("meta.gguf", builder.build().bytes));

  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 32u);
  EXPECT_EQ(file.metadata().size(), 18u);
  EXPECT_EQ(file.metadata()[0].key, "u8");  // file order kept
  EXPECT_EQ(file.get_uint("u8"), 200u);
  EXPECT_EQ(file.get_int("i8"), -100);
  EXPECT_EQ(file.get_uint("u16"), 60000u);
  EXPECT_EQ(file.get_int("i16"), -30000);
  EXPECT_EQ(file.get_uint("u32"), 4000000000u);
  EXPECT_EQ(file.get_int("i32"), -2000000000);
  EXPECT_EQ(file.get("f32").type, ValueType::kFloat32);
  EXPECT_EQ(file.get_float("f32"), static_cast<double>(0.1f));  // widened exactly
  EXPECT_TRUE(file.get_bool("bool.true"));
  EXPECT_FALSE(file.get_bool("bool.false"));
  EXPECT_EQ(file.get_string("string"), "héllo ✓ <|im_start|>");
  EXPECT_EQ(file.get_uint("u64"), 18000000000000000000ull);
  EXPECT_EQ(file.get_int("i64"), -9000000000000000000ll);
  EXPECT_EQ(file.get_float("f64"), 1e-300);
  EXPECT_EQ(file.get_string("empty.string"), "");
  EXPECT_EQ(file.get_int_array("array.i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(file.get_string_array("array.string"), (std::vector<std::string>{"Ġ t", "", "x"}));
  EXPECT_EQ(file.get("array.empty").element_type, ValueType::kFloat32);
  EXPECT_TRUE(file.get("array.empty").elements.empty());
  const Value& nested = file.get("array.nested");
  ASSERT_EQ(nested.element_type, ValueType::kArray);
  ASSERT_EQ(nested.elements.size(), 2u);
  EXPECT_EQ(nested.elements[0].element_type, ValueType::kInt32);
  EXPECT_EQ(nested.elements[0].elements[1].i, 8);
  EXPECT_EQ(nested.elements[1].elements[0].s, "deep");
  EXPECT_EQ(file.get_float("u32"), 4000000000.0);  // integers read as floats where a float is wanted
  EXPECT_EQ(file.find("absent"), nullptr);
  EXPECT_TRUE(file.tensors().empty());
}

TEST(GgufReader, TypedAccessNamesTheKeyOnMismatch) {
  GgufBuilder builder;
  builder.add("name", string_value("x"));
  builder.add("negative", i32_value(-1));
  ScratchDir scratch;
  const auto path = scratch.write("typed.gguf", builder.build().bytes);
  GgufFile file = GgufFile::open(path);
  auto message_of = [](auto&& call) -> std::string {
    try {
      call();
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      return error.what();
    }
    return "no error";
  };
  EXPECT_EQ(message_of([&] { file.get_uint("name"); }),
            path.string() + ": metadata key 'name': expected an integer, found string");
  EXPECT_EQ(message_of([&] { file.get_uint("negative"); }),
            path.string() + ": metadata key 'negative': expected a non-negative integer, found -1");
  EXPECT_EQ(message_of([&] { file.get_string("missing"); }), path.string() + ": metadata key 'missing' is missing");
  EXPECT_EQ(message_of([&] { file.get_string_array("name"); }),
            path.string() + ": metadata key 'name': expected an array of strings, found string");
  EXPECT_EQ(message_of([&] { file.tensor("nope"); }), path.string() + ": tensor 'nope' is missing");
}

TEST(GgufReader, TensorGeometryAndData) {
  GgufBuilder builder = two_tensor_file();
  GgufImage image = builder.build();
  ScratchDir scratch;
  GgufFile file = GgufFile::open(scratch.write("ok.gguf", image.bytes));
  ASSERT_EQ(file.tensors().size(), 2u);
  const TensorInfo& q = file.tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.ne, (std::vector<uint64_t>{32, 2}));
  EXPECT_EQ(q.shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(q.type, GgmlType::kQ8_0);
  EXPECT_EQ(q.byte_size, 68u);
  EXPECT_EQ(q.offset, 0u);
  const TensorInfo& norm = file.tensor("output_norm.weight");
  EXPECT_EQ(norm.offset, 96u);
  EXPECT_EQ(file.data_offset(), image.at.at("data"));
  EXPECT_EQ(file.tensor_bytes(norm).data(), file.tensor_bytes(q).data() + 96);
}

TEST(GgufReader, HonoursGeneralAlignment) {
  GgufBuilder builder;
  builder.alignment = 64;
  builder.add("general.alignment", u32_value(64));
  builder.add_tensor({"a", {4}, 0, std::vector<uint8_t>(16, 0)});
  builder.add_tensor({"b", {4}, 0, std::vector<uint8_t>(16, 0)});
  ScratchDir scratch;
  GgufFile file = GgufFile::open(scratch.write("align.gguf", builder.build().bytes));
  EXPECT_EQ(file.alignment(), 64u);
  EXPECT_EQ(file.data_offset() % 64, 0u);
  EXPECT_EQ(file.tensor("b").offset, 64u);
}

TEST(GgufReader, AcceptsVersion2) {
  GgufBuilder builder = two_tensor_file();
  builder.version = 2;
  ScratchDir scratch;
  EXPECT_EQ(GgufFile::open(scratch.write("v2.gguf", builder.build().bytes)).version(), 2u);
}

// --- Corrupted and lying files ----------------------------------------------

TEST(GgufReaderRejects, BadMagic) {
  GgufImage image = two_tensor_file().build();
  std::memcpy(image.bytes.data(), "GGML", 4);
  expect_rejected(image.bytes, "not a GGUF file: magic is 'GGML', expected 'GGUF'");
  std::memcpy(image.bytes.data(), "FUGG", 4);
  expect_rejected(image.bytes, "magic is 'FUGG', expected 'GGUF' (a big-endian GGUF file, not supported)");
  std::memcpy(image.bytes.data(), "\x00\x01GG", 4);
  expect_rejected(image.bytes, "magic is '\\x00\\x01GG'");
}

TEST(GgufReaderRejects, UnsupportedVersion) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint32_t>("version", 7);
  expect_rejected(image.bytes, "GGUF version 7 is not supported (expected 2 or 3)");
  image.poke<uint32_t>("version", 1);
  expect_rejected(image.bytes, "GGUF version 1 is not supported");
  image.poke<uint32_t>("version", 0x03000000);  // version 3 written big-endian
  expect_rejected(image.bytes, "GGUF version 50331648 is not supported (expected 2 or 3); a big-endian file?");
}

TEST(GgufReaderRejects, TensorCountTooLarge) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor_count", 1ull << 40);
  expect_rejected(image.bytes, "tensor count 1099511627776 is too large for a file of");
}

TEST(GgufReaderRejects, MetadataCountTooLarge) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("kv_count", ~0ull);
  expect_rejected(image.bytes, "metadata count 18446744073709551615 is too large");
}

TEST(GgufReaderRejects, MoreTensorsThanDescribed) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor_count", 3);  // the third "tensor info" is tensor data
  ScratchDir scratch;
  EXPECT_THROW(GgufFile::open(scratch.write("three.gguf", image.bytes)), Error);
}

TEST(GgufReaderRejects, KeyLengthPastTheEnd) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("kv.llama.block_count.key_length", 1ull << 50);
  expect_rejected(image.bytes, "metadata entry 1 key: string length 1125899906842624 at offset");
}

TEST(GgufReaderRejects, StringValueLengthPastTheEnd) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("kv.general.architecture.value", 1ull << 33);
  expect_rejected(image.bytes, "metadata key 'general.architecture': string length 8589934592");
}

TEST(GgufReaderRejects, ArrayLengthPastTheEnd) {
  GgufImage image = two_tensor_file().build();
  // The array's payload: u32 element type, then u64 count.
  const size_t count_at = image.at.at("kv.tokenizer.ggml.tokens.value") + 4;
  uint64_t huge = 1ull << 61;
  std::memcpy(image.bytes.data() + count_at, &huge, 8);
  expect_rejected(image.bytes, "metadata key 'tokenizer.ggml.tokens': array length 2305843009213693952 of string cannot fit");
}

TEST(GgufReaderRejects, UnknownValueType) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint32_t>("kv.llama.block_count.type", 13);
  expect_rejected(image.bytes, "metadata key 'llama.block_count': unknown value type 13 (expected 0..12)");
}

TEST(GgufReaderRejects, BoolThatIsNeitherZeroNorOne) {
  GgufBuilder builder;
  builder.add("flag", scalar_value<uint8_t>(7, 2));
  expect_rejected(builder.build().bytes, "metadata key 'flag': bool must be 0 or 1, found 2");
}

TEST(GgufReaderRejects, ArraysNestedTooDeep) {
  EncodedValue value = i32_array({1});
  for (int depth = 0; depth < 12; ++depth) value = array_value(9, {value});
  GgufBuilder builder;
  builder.add("deep", value);
  expect_rejected(builder.build().bytes, "metadata key 'deep': arrays nested deeper than 8 levels");
}

TEST(GgufReaderRejects, DuplicateKeyAndDuplicateTensor) {
  GgufBuilder keys;
  keys.add("general.name", string_value("a"));
  keys.add("general.name", string_value("b"));
  expect_rejected(keys.build().bytes, "metadata key 'general.name' appears twice");
  GgufBuilder tensors;
  tensors.add_tensor({"w", {4}, 0, std::vector<uint8_t>(16)});
  tensors.add_tensor({"w", {4}, 0, std::vector<uint8_t>(16)});
  expect_rejected(tensors.build().bytes, "tensor 'w' appears twice");
}

TEST(GgufReaderRejects, BadAlignment) {
  GgufBuilder odd;
  odd.add("general.alignment", u32_value(48));
  expect_rejected(odd.build().bytes, "metadata key 'general.alignment': expected a power of two, found 48");
  GgufBuilder wrong_type;
  wrong_type.add("general.alignment", u64_value(32));
  expect_rejected(wrong_type.build().bytes, "metadata key 'general.alignment': expected uint32, found uint64");
}

TEST(GgufReaderRejects, TooManyOrZeroDimensions) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint32_t>("tensor.output_norm.weight.n_dims", 5);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': 5 dimensions, expected 1 to 4");
  image = two_tensor_file().build();
  image.poke<uint32_t>("tensor.output_norm.weight.n_dims", 0);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': 0 dimensions, expected 1 to 4");
}

TEST(GgufReaderRejects, EmptyOrHugeShape) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor.output_norm.weight.ne0", 0);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': shape [0] is empty or too large");
  image = two_tensor_file().build();
  image.poke<uint64_t>("tensor.blk.0.attn_q.weight.ne0", 1ull << 62);
  expect_rejected(image.bytes, "tensor 'blk.0.attn_q.weight': shape [4611686018427387904, 2] is empty or too large");
}

TEST(GgufReaderRejects, UnknownTensorType) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint32_t>("tensor.output_norm.weight.type", 4);  // Q4_2, removed from ggml
  expect_rejected(image.bytes, "tensor 'output_norm.weight': unknown GGML type 4");
}

TEST(GgufReaderRejects, RowNotAMultipleOfTheBlockSize) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor.blk.0.attn_q.weight.ne0", 48);
  expect_rejected(image.bytes,
                  "tensor 'blk.0.attn_q.weight': rows of 48 elements are not a multiple of the Q8_0 block size 32");
}

TEST(GgufReaderRejects, MisalignedOffset) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor.output_norm.weight.offset", 100);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': data offset 100 is not a multiple of the alignment 32");
}

TEST(GgufReaderRejects, OffsetPastTheEnd) {
  GgufImage image = two_tensor_file().build();
  image.poke<uint64_t>("tensor.output_norm.weight.offset", 1ull << 40);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': data [");
  expect_rejected(image.bytes, "ends past the end of the file");
  image.poke<uint64_t>("tensor.output_norm.weight.offset", ~0ull << 5);  // would wrap around in unchecked arithmetic
  expect_rejected(image.bytes, "ends past the end of the file");
}

// Three tensors, the last one (256 bytes) large enough that a lie about an
// earlier one stays inside the file.
GgufBuilder three_tensor_file() {
  GgufBuilder builder = two_tensor_file();
  builder.add_tensor({"output.weight", {64}, 0, std::vector<uint8_t>(256, 0)});
  return builder;
}

TEST(GgufReaderRejects, TypeThatDoesNotMatchTheData) {
  // Q8_0 -> F32: 64 weights now claim 256 bytes and run into the next tensor.
  GgufImage image = three_tensor_file().build();
  image.poke<uint32_t>("tensor.blk.0.attn_q.weight.type", 0);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': data offset 96, expected 256 (the end of "
                               "'blk.0.attn_q.weight', F32 [32, 2], padded to 32): a type or shape does not match");
  // Q8_0 -> Q4_0: smaller, so the next tensor's offset no longer follows.
  image = three_tensor_file().build();
  image.poke<uint32_t>("tensor.blk.0.attn_q.weight.type", 2);
  expect_rejected(image.bytes, "tensor 'output_norm.weight': data offset 96, expected 64");
}

TEST(GgufReaderRejects, ShapeThatDoesNotMatchTheData) {
  // The last tensor grows past the end of the file.
  GgufImage image = three_tensor_file().build();
  image.poke<uint64_t>("tensor.output.weight.ne0", 128);
  expect_rejected(image.bytes, "of F32 [128] ends past the end of the file");
  // The last tensor shrinks: its bytes no longer cover the file.
  image = three_tensor_file().build();
  image.poke<uint64_t>("tensor.output.weight.ne0", 8);
  expect_rejected(image.bytes, "224 bytes after the last tensor 'output.weight' (F32 [8]): a type or shape does not match");
  // A middle tensor's shape changes: the chain of offsets breaks.
  image = three_tensor_file().build();
  image.poke<uint64_t>("tensor.output_norm.weight.ne0", 16);
  expect_rejected(image.bytes, "tensor 'output.weight': data offset 128, expected 160");
}

TEST(GgufReaderRejects, EveryTruncation) {
  // Every prefix of a valid file is rejected with kBadInput (never a crash or a
  // read past the mapping); the header-level ones say "truncated".
  const std::vector<uint8_t> bytes = two_tensor_file().build().bytes;
  ScratchDir scratch;
  for (size_t length = 0; length < bytes.size(); ++length) {
    const auto path =
        scratch.write("cut.gguf", std::vector<uint8_t>(bytes.begin(), bytes.begin() + static_cast<long>(length)));
    try {
      GgufFile::open(path);
      ADD_FAILURE() << "accepted a file cut to " << length << " of " << bytes.size() << " bytes";
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput) << length << ": " << error.what();
      const std::string message = error.what();
      EXPECT_TRUE(message.find("truncated") != std::string::npos ||
                  message.find("past the end of the file") != std::string::npos ||
                  message.find("bytes left in the file") != std::string::npos ||
                  message.find("too large for a file") != std::string::npos)
          << length << ": " << message;
    }
  }
}

TEST(GgufReaderRejects, RandomCorruptionNeverCrashes) {
  // Random byte flips in the header region: each file either parses or is
  // rejected with llmft::Error; nothing else escapes and nothing crashes.
  const GgufImage image = two_tensor_file().build();
  const size_t header_end = image.at.at("data");
  std::mt19937 rng(11);
  std::uniform_int_distribution<size_t> position(0, header_end - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  ScratchDir scratch;
  int rejected = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<uint8_t> bytes = image.bytes;
    for (int flip = 0; flip < 1 + trial % 3; ++flip) bytes[position(rng)] = static_cast<uint8_t>(byte(rng));
    try {
      GgufFile file = GgufFile::open(scratch.write("fuzz.gguf", bytes));
      for (const TensorInfo& tensor : file.tensors()) {
        try {
          file.dequantize(tensor);
        } catch (const Error&) {
          ++rejected;  // a type without a dequantizer
        }
      }
    } catch (const Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 100);
}

TEST(GgufReaderRejects, MissingFileAndDirectory) {
  ScratchDir scratch;
  EXPECT_THROW(GgufFile::open(scratch.path() / "absent.gguf"), Error);
  try {
    GgufFile::open(scratch.path());
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("not a regular file"), std::string::npos);
  }
}

}  // namespace
}  // namespace llmft::gguf
