// Writes a tiny training run for the e2e tests (tests/launch/train_export_e2e.sh):
//   DIR/model/              random Llama (trainer_fixture.h) + tokenizer_config.json
//   DIR/data/train-0000{0,1}-of-00002.tfrecord, DIR/data/valid.tfrecord
// usage: llmft_make_tiny_run DIR
#include <cstdio>
#include <fstream>

#include "trainer_fixture.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  namespace fs = std::filesystem;
  using namespace llmft::trainer_test;
  const fs::path dir = argv[1];
  fs::create_directories(dir / "data");
  write_tiny_model(dir / "model");
  // A file copy_tokenizer_files must carry into a merged export.
  std::ofstream(dir / "model" / "tokenizer_config.json") << "{\"eos_token\": \"</s>\"}\n";
  const auto documents = random_documents(48, 11);
  write_shard(dir / "data" / "train-00000-of-00002.tfrecord", {documents.begin(), documents.begin() + 24});
  write_shard(dir / "data" / "train-00001-of-00002.tfrecord", {documents.begin() + 24, documents.end()});
  write_shard(dir / "data" / "valid.tfrecord", random_documents(8, 12));
  return 0;
}
