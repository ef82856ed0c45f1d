// safetensors: each malformed header is rejected with one line naming the file
// and the tensor; written files read back bit-exactly (also bf16/f16), in the
// byte layout of the format spec; sharded checkpoints round-trip.
#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace llmft {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() /
                 ("llmft_safetensors_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(directory_);
    fs::create_directories(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  // Writes a file with a hand-made header (and its declared size, unless
  // `declared_header_size` overrides it) followed by `data_bytes` zero bytes.
  fs::path write_raw(const std::string& header, size_t data_bytes, uint64_t declared_header_size = UINT64_MAX) {
    fs::path path = directory_ / "model.safetensors";
    std::ofstream out(path, std::ios::binary);
    uint64_t size = declared_header_size == UINT64_MAX ? header.size() : declared_header_size;
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>(size >> (8 * i)));
    out << header;
    out << std::string(data_bytes, '\0');
    return path;
  }

  // The message of the error opening `path` throws (fails the test if none).
  std::string open_error(const fs::path& path) {
    try {
      SafetensorsFile::open(path);
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      return error.what();
    }
    ADD_FAILURE() << "opening " << path << " did not fail";
    return "";
  }

  fs::path directory_;
};

#define EXPECT_CONTAINS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

TEST_F(SafetensorsTest, RejectsHeaderSizeAboveLimit) {
  fs::path path = write_raw("{}", 0, 200'000'000);
  EXPECT_CONTAINS(open_error(path), path.string() + ": header size 200000000 exceeds the 100000000-byte limit");
}

TEST_F(SafetensorsTest, RejectsHeaderSizePastEndOfFile) {
  fs::path path = write_raw("{}", 0, 4096);
  EXPECT_CONTAINS(open_error(path), path.string() + ": header size 4096 runs past the end of the file (10 bytes)");
}

TEST_F(SafetensorsTest, RejectsFileShorterThanHeaderSize) {
  fs::path path = directory_ / "short.safetensors";
  std::ofstream(path) << "abc";
  EXPECT_CONTAINS(open_error(path), path.string() + ": file is 3 bytes, too short for the 8-byte header size");
}

TEST_F(SafetensorsTest, RejectsMissingFileAndDirectory) {
  EXPECT_CONTAINS(open_error(directory_ / "absent.safetensors"), "absent.safetensors: cannot open safetensors file");
  fs::create_directories(directory_ / "dir.safetensors");
  EXPECT_CONTAINS(open_error(directory_ / "dir.safetensors"), "dir.safetensors: not a regular file");
}

TEST_F(SafetensorsTest, RejectsBadJson) {
  fs::path path = write_raw(R"({"w": {"dtype": "F32", )", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": header is not valid JSON");
}

TEST_F(SafetensorsTest, RejectsUnknownDtype) {
  fs::path path = write_raw(R"({"layer.w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}})", 2);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensor 'layer.w': unknown dtype 'Q7'");
}

TEST_F(SafetensorsTest, RejectsShapeThatDoesNotMatchByteRange) {
  fs::path path = write_raw(R"({"layer.w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 20);
  EXPECT_CONTAINS(open_error(path), path.string() +
                                        ": tensor 'layer.w': shape [2, 3] of F32 needs 24 bytes but data_offsets "
                                        "[0, 20] span 20");
}

TEST_F(SafetensorsTest, RejectsRangePastEndOfData) {
  fs::path path = write_raw(R"({"layer.w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  EXPECT_CONTAINS(open_error(path),
                  path.string() + ": tensor 'layer.w': data_offsets [0, 16] run past the end of the data area (8 bytes)");
}

TEST_F(SafetensorsTest, RejectsOverlappingRanges) {
  fs::path path = write_raw(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      12);
  EXPECT_CONTAINS(open_error(path),
                  path.string() + ": tensor 'b': data_offsets [4, 12] overlap the previous tensor 'a' ending at 8");
}

TEST_F(SafetensorsTest, RejectsGapBetweenTensors) {
  fs::path path = write_raw(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
      20);
  EXPECT_CONTAINS(open_error(path),
                  path.string() + ": tensor 'b': data_offsets [12, 20] leave a gap after the previous tensor 'a' ending at 8");
}

TEST_F(SafetensorsTest, RejectsTrailingBytesAfterLastTensor) {
  fs::path path = write_raw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 12);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensors cover 8 bytes of the 12-byte data area (last tensor 'a')");
}

TEST_F(SafetensorsTest, RejectsNonStringMetadata) {
  fs::path path = write_raw(R"({"__metadata__": {"format": "pt", "step": 3}})", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": __metadata__: value of 'step': expected a string, found number 3");
}

TEST_F(SafetensorsTest, RejectsMalformedEntryFields) {
  fs::path path = write_raw(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}})", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensor 'w': field 'shape': expected a list of non-negative integers");
  path = write_raw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensor 'w': field 'data_offsets': expected [begin, end]");
  // A shape whose byte size overflows 64 bits must not wrap around to a small size.
  // (2^62 elements fit in int64; their 2^64 bytes do not.)
  path = write_raw(R"({"w": {"dtype": "F32", "shape": [2305843009213693952, 2], "data_offsets": [0, 0]}})", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensor 'w': shape [2305843009213693952, 2] of F32 needs more than 2^64");
  // Found by fuzz/safetensors_fuzz: a zero-element tensor with a dimension
  // of 2^63 (accepted, and negative as int64) and one whose element count
  // overflows before its zero dimension (accepted; safetensors rejects it).
  path = write_raw(R"({"w": {"dtype": "F32", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}})", 0);
  EXPECT_CONTAINS(open_error(path),
                  path.string() + ": tensor 'w': field 'shape': dimension 1 is 9223372036854775808, above 2^63-1");
  path = write_raw(
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4611686018427387904, 0], "data_offsets": [0, 0]}})", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": tensor 'w': field 'shape': array [4611686018427387904,"
                                                    "4611686018427387904,0] has more than 2^63-1 elements");
  // The control: a zero dimension first keeps the count at 0, as in safetensors.
  path = write_raw(R"({"w": {"dtype": "F32", "shape": [0, 4611686018427387904, 4], "data_offsets": [0, 0]}})", 0);
  EXPECT_EQ(SafetensorsFile::open(path).entry("w").shape, (Shape{0, 4611686018427387904, 4}));
}

// Found by fuzz/safetensors_fuzz: a number too large for a double (5e5555)
// is nlohmann's out_of_range, not a parse_error, and escaped the error
// contract (std::terminate).
TEST_F(SafetensorsTest, RejectsNumberOutOfRangeAsInvalidJson) {
  fs::path path = write_raw(R"({"__metadata__": {"format": "pt"}, "b": {"dtype": 5e5555}})", 0);
  EXPECT_CONTAINS(open_error(path), path.string() + ": header is not valid JSON: ");
  EXPECT_CONTAINS(open_error(path), "number overflow parsing '5e5555'");
}

TEST_F(SafetensorsTest, RecognisedButUnsupportedDtypeFailsOnlyWhenRequested) {
  fs::path path = write_raw(
      R"({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
      12);
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.tensor("b").to_floats(), std::vector<float>{0.0f});
  try {
    file.tensor("a");
    FAIL();
  } catch (const Error& error) {
    EXPECT_CONTAINS(error.what(), path.string() + ": tensor 'a': dtype F64 is not supported");
  }
  try {
    file.tensor("missing");
    FAIL();
  } catch (const Error& error) {
    EXPECT_CONTAINS(error.what(), path.string() + ": no tensor 'missing'");
  }
}

TEST_F(SafetensorsTest, WriterMatchesTheSpecByteLayout) {
  // Hand-computed expected bytes: tensors sorted wider dtype first then by
  // name; header padded with spaces to a multiple of 8.
  std::vector<NamedTensor> tensors = {
      {"b16", Tensor::from_floats({2}, std::vector<float>{1.0f, -2.0f}, DType::kBF16)},
      {"a32", Tensor::from_floats({1}, std::vector<float>{1.5f}, DType::kF32)},
  };
  fs::path path = directory_ / "out.safetensors";
  write_safetensors(path, tensors);
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a32":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("b16":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  std::string expected;
  for (int i = 0; i < 8; ++i) expected.push_back(static_cast<char>(header.size() >> (8 * i)));
  expected += header;
  expected += std::string("\x00\x00\xc0\x3f", 4);  // 1.5f little-endian
  expected += std::string("\x80\x3f\x00\xc0", 4);  // bf16 1.0 = 0x3f80, -2.0 = 0xc000
  EXPECT_EQ(bytes, expected);
  EXPECT_FALSE(fs::exists(path.string() + ".tmp." + std::to_string(::getpid())));
}

TEST_F(SafetensorsTest, RoundTripAllDtypesAndConversion) {
  std::vector<float> values = {0.1f, -3.25f, 1e-3f, 65504.0f, 7.0f, -0.0f};
  std::vector<NamedTensor> tensors = {
      {"f32", Tensor::from_floats({2, 3}, values, DType::kF32)},
      {"bf16", Tensor::from_floats({3, 2}, values, DType::kBF16)},
      {"f16", Tensor::from_floats({6}, values, DType::kF16)},
      {"i32", Tensor::from_ints({3}, std::vector<int32_t>{-1, 7, 1 << 30})},
      {"empty", Tensor::from_floats({0, 4}, std::vector<float>{}, DType::kF32)},
  };
  fs::path path = directory_ / "all.safetensors";
  write_safetensors(path, tensors);
  SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  for (const NamedTensor& named : tensors) {
    Tensor read = file.tensor(named.name);
    EXPECT_EQ(read.dtype(), named.tensor.dtype()) << named.name;
    EXPECT_EQ(read.shape(), named.tensor.shape()) << named.name;
    ASSERT_EQ(read.nbytes(), named.tensor.nbytes());
    EXPECT_EQ(std::memcmp(read.raw_data(), named.tensor.raw_data(), read.nbytes()), 0) << named.name;
  }
  // bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even like the CPU/GPU casts.
  EXPECT_EQ(file.tensor_as("bf16", DType::kF32).to_floats(), tensors[1].tensor.to_floats());
  Tensor rounded = file.tensor_as("f32", DType::kBF16);
  EXPECT_EQ(rounded.dtype(), DType::kBF16);
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(rounded.data<bf16>()[i].bits, bf16(values[i]).bits);
  EXPECT_EQ(file.tensor_as("i32", DType::kI64).data<int64_t>()[2], 1 << 30);
  EXPECT_THROW(file.tensor_as("i32", DType::kF32), Error);

  // A view keeps the mapping alive after the file object is gone.
  Tensor view;
  {
    SafetensorsFile scoped = SafetensorsFile::open(path);
    view = scoped.tensor("f32");
  }
  EXPECT_EQ(view.to_floats(), values);
}

TEST_F(SafetensorsTest, FailedWriteLeavesThePreviousFileIntact) {
  // Fault injection: a file-size limit makes write() fail with EFBIG halfway
  // through the new file. The old file must survive untouched and no
  // temporary file may be left behind.
  fs::path path = directory_ / "model.safetensors";
  std::vector<NamedTensor> small = {{"w", Tensor::from_floats({2}, std::vector<float>{1.0f, 2.0f})}};
  write_safetensors(path, small);
  std::vector<NamedTensor> large = {{"w", Tensor::zeros_cpu({4096}, DType::kF32)}};

  struct rlimit saved_limit {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved_limit), 0);
  auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG instead of the default kill
  struct rlimit limit = saved_limit;
  limit.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  bool threw = false;
  try {
    write_safetensors(path, large);
  } catch (const Error& error) {
    threw = true;
    EXPECT_CONTAINS(error.what(), "write failed");
  }
  ::setrlimit(RLIMIT_FSIZE, &saved_limit);
  std::signal(SIGXFSZ, saved_handler);

  EXPECT_TRUE(threw);
  EXPECT_EQ(SafetensorsFile::open(path).tensor("w").to_floats(), (std::vector<float>{1.0f, 2.0f}));
  int files = 0;
  for (const auto& entry : fs::directory_iterator(directory_)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(SafetensorsTest, WriterRejectsDuplicateNames) {
  std::vector<NamedTensor> tensors = {{"w", Tensor::zeros_cpu({1}, DType::kF32)}, {"w", Tensor::zeros_cpu({1}, DType::kF32)}};
  EXPECT_THROW(write_safetensors(directory_ / "dup.safetensors", tensors), Error);
}

std::vector<NamedTensor> numbered_tensors(int count, int64_t elements) {
  std::vector<NamedTensor> tensors;
  for (int t = 0; t < count; ++t) {
    std::vector<float> values(static_cast<size_t>(elements));
    for (int64_t i = 0; i < elements; ++i) values[static_cast<size_t>(i)] = static_cast<float>(t * 1000 + i);
    tensors.push_back({"layers." + std::to_string(t) + ".weight", Tensor::from_floats({elements}, values)});
  }
  return tensors;
}

TEST_F(SafetensorsTest, ShardedCheckpointRoundTrip) {
  std::vector<NamedTensor> tensors = numbered_tensors(5, 100);  // 400 bytes each
  write_safetensors_checkpoint(directory_, tensors, /*max_shard_bytes=*/1000);  // two per shard -> 3 shards
  EXPECT_TRUE(fs::exists(directory_ / "model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(directory_ / "model-00003-of-00003.safetensors"));
  EXPECT_FALSE(fs::exists(directory_ / "model.safetensors"));
  std::ifstream index_in(directory_ / "model.safetensors.index.json");
  nlohmann::json index = nlohmann::json::parse(index_in);
  EXPECT_EQ(index["metadata"]["total_size"], 2000);
  EXPECT_EQ(index["weight_map"]["layers.4.weight"], "model-00003-of-00003.safetensors");

  SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory_);
  EXPECT_EQ(checkpoint.tensor_names().size(), 5u);
  for (const NamedTensor& named : tensors)
    EXPECT_EQ(checkpoint.tensor(named.name).to_floats(), named.tensor.to_floats()) << named.name;

  // Writing again below the threshold replaces the index with one file.
  write_safetensors_checkpoint(directory_, tensors);
  EXPECT_FALSE(fs::exists(directory_ / "model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsCheckpoint::open(directory_).tensor("layers.3.weight").to_floats(), tensors[3].tensor.to_floats());
}

TEST_F(SafetensorsTest, ShardedCheckpointErrors) {
  std::vector<NamedTensor> tensors = numbered_tensors(4, 100);
  write_safetensors_checkpoint(directory_, tensors, 1000);  // 2 shards
  fs::remove(directory_ / "model-00002-of-00002.safetensors");
  try {
    SafetensorsCheckpoint::open(directory_);
    FAIL();
  } catch (const Error& error) {
    EXPECT_CONTAINS(error.what(), "model.safetensors.index.json: weight_map: tensor 'layers.2.weight' is in "
                                  "'model-00002-of-00002.safetensors', which does not exist");
  }

  std::ofstream(directory_ / "model.safetensors.index.json")
      << R"({"weight_map": {"layers.0.weight": "model-00001-of-00002.safetensors", "ghost": "model-00001-of-00002.safetensors"}})";
  try {
    SafetensorsCheckpoint::open(directory_);
    FAIL();
  } catch (const Error& error) {
    EXPECT_CONTAINS(error.what(), "weight_map: tensor 'ghost' is not in ");
  }

  std::ofstream(directory_ / "model.safetensors.index.json") << R"({"weight_map": {"w": "../elsewhere.safetensors"}})";
  EXPECT_THROW(SafetensorsCheckpoint::open(directory_), Error);

  // Found by fuzz/safetensors_fuzz: a shard name longer than NAME_MAX made
  // std::filesystem::exists throw filesystem_error past the kBadInput contract.
  const std::string long_name(300, 'b');
  std::ofstream(directory_ / "model.safetensors.index.json") << R"({"weight_map": {"w": ")" << long_name << R"("}})";
  try {
    SafetensorsCheckpoint::open(directory_);
    FAIL();
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
    EXPECT_CONTAINS(error.what(), "model.safetensors.index.json: weight_map: tensor 'w' is in '" + long_name +
                                      "', which cannot be opened: File name too long");
  }

  fs::remove_all(directory_);
  fs::create_directories(directory_);
  try {
    SafetensorsCheckpoint::open(directory_);
    FAIL();
  } catch (const Error& error) {
    EXPECT_CONTAINS(error.what(), "no model.safetensors or model.safetensors.index.json");
  }
}

}  // namespace
}  // namespace llmft
