// Writes TFRecord files with llmft's writer (plain, gzip, zlib) and, next to
// each, the JSON list of records it meant to write, for
// tests/testdata/data/make_fixtures.py --verify to decode independently.
// Usage: data_write_for_python OUTPUT_DIR
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/example.h"
#include "data/tfrecord.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  using llmft::data::TokenExample;
  std::vector<TokenExample> records(5);
  records[0].input_ids = {1, 15043, 29892, 3186, 29991, 2};
  records[1].input_ids = {128000, 9906, 11, 1917, 0, 128001};
  records[1].loss_mask = {0, 0, 0, 1, 1, 1};
  records[2].input_ids = {};
  records[3].input_ids = {5, 6, 7, 8};
  records[3].labels = {-100, -100, 7, 8};
  for (int64_t id = 0; id < 5000; id += 7) records[4].input_ids.push_back(id * 431 % 2147483647);
  nlohmann::json expected = nlohmann::json::array();
  for (const auto& record : records) {
    nlohmann::json entry;
    entry["input_ids"] = record.input_ids;
    if (!record.labels.empty()) entry["labels"] = record.labels;
    if (!record.loss_mask.empty()) entry["loss_mask"] = record.loss_mask;
    expected.push_back(entry);
  }
  const std::string dir = argv[1];
  for (const char* name : {"ours.tfrecord", "ours.tfrecord.gz", "ours.tfrecord.zlib"}) {
    llmft::data::RecordWriter writer(dir + "/" + name);
    for (const auto& record : records) writer.write(llmft::data::encode_example(record));
    writer.close();
    std::ofstream(dir + "/" + name + ".json") << expected.dump() << "\n";
  }
  return 0;
}
