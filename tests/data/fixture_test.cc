// Files written by an independent writer (tests/testdata/data/make_fixtures.py:
// TensorFlow's schema compiled by protoc for Python, its own bitwise CRC32C,
// Python's gzip) read back exactly.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "data/example.h"
#include "data/loader.h"
#include "data/tfrecord.h"

namespace llmft::data {
namespace {

const std::string kFixtureDir = std::string(LLMFT_SOURCE_DIR) + "/tests/testdata/data/";

nlohmann::json load_manifest() {
  std::ifstream in(kFixtureDir + "fixtures.json");
  return nlohmann::json::parse(in);
}

TEST(IndependentFixtures, EveryRecordDecodesExactly) {
  nlohmann::json manifest = load_manifest();
  ASSERT_EQ(manifest["files"].size(), 3u);
  for (const auto& [name, records] : manifest["files"].items()) {
    RecordReader reader(kFixtureDir + name);
    std::string_view bytes;
    size_t index = 0;
    while (reader.read(bytes)) {
      ASSERT_LT(index, records.size()) << name;
      TokenExample example = decode_example(bytes, {}, {name, index, reader.last_record_position().offset});
      const auto& expected = records[index];
      EXPECT_EQ(example.input_ids, expected["input_ids"].get<std::vector<int64_t>>()) << name << " record " << index;
      EXPECT_EQ(example.labels, expected.value("labels", std::vector<int64_t>{})) << name << " record " << index;
      EXPECT_EQ(example.loss_mask, expected.value("loss_mask", std::vector<int64_t>{}))
          << name << " record " << index;
      ++index;
    }
    EXPECT_EQ(index, records.size()) << name;
  }
}

TEST(IndependentFixtures, LoaderReadsTheShardSet) {
  LoaderOptions options;
  options.pattern = kFixtureDir + "fixture-*-of-00002.tfrecord";
  options.mode = BatchMode::kPadded;
  options.batch_size = 1;
  options.seq_len = 4;
  options.eos_id = 2;
  options.shuffle_buffer = 0;
  options.shuffle_shards = false;
  options.num_epochs = 1;
  Loader loader(options);
  std::vector<int32_t> first_tokens;
  while (auto batch = loader.next()) first_tokens.push_back(batch->input_ids.data<int32_t>()[0]);
  // Six documents; the empty one is just its EOS.
  EXPECT_EQ(first_tokens, (std::vector<int32_t>{1, 128000, 2, 5, 2147483647, 1000}));
}

}  // namespace
}  // namespace llmft::data
