// `llmft data build`: JSONL documents -> tokenized tf.Example records in
// TFRecord shards that the loader (data/loader.h) reads.
//
// Input, one JSON object per line (blank lines are skipped):
//   {"text": "..."}                          loss on every token
//   {"prompt": "...", "completion": "..."}   loss only on the completion
// Any other key, or a mix of the two forms, is a bad record.
//
// Tokens of a record:
//   text:        prefix_ids + encode(text) + suffix_ids    (BOS/EOS as the tokenizer config says)
//   prompt/completion: prefix_ids + encode(prompt) | encode(completion) + suffix_ids [+ EOS]
//     The two are encoded separately so the loss-mask boundary falls exactly
//     between them; EOS is appended (unless the suffix already ends with it)
//     and trained on, so the model learns to stop.
// Features: input_ids and loss_mask (int64 lists, data/example.h).
//
// Truncation (seq_len > 0): a longer record keeps its first seq_len tokens
// (Hugging Face's default truncation side). The choice keeps the prompt and
// the start of the answer; the loader packs or pads to seq_len anyway. A
// prompt/completion record whose completion is cut away entirely would train
// on nothing, so it is dropped. Both are counted in the summary.
//
// Output: <output>-NNNNN-of-MMMMM.tfrecord (TensorFlow's shard naming), train
// records dealt round-robin in input order, and with val_fraction > 0
// <output>-val-00000-of-00001.tfrecord holding exactly round(val_fraction *
// records) records chosen by a Philox stream seeded with `seed` (Floyd's
// sampling), so a given input, seed and shard count always gives the same
// files. Files are written as *.partial and renamed when all succeeded; on an
// error no shard set is left behind.
// With compression kGzip/kZlib (`--compression gzip|zlib`) the whole files
// are compressed and named *.tfrecord.gz / *.tfrecord.zlib, the extensions
// the reader's kAuto recognises (data/tfrecord.h); TensorFlow reads them with
// TFRecordDataset(compression_type="GZIP" / "ZLIB").
// With one shard, the glob <output>-*-of-00001.tfrecord also matches the
// validation file; point the loader at <output>-[0-9]*-of-00001.tfrecord.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data/tfrecord.h"
#include "data/tokenizer.h"

namespace llmft::data {

struct DatasetBuildOptions {
  std::string input_path;     // JSONL
  std::string output_prefix;  // "data/train" -> data/train-00000-of-00008.tfrecord
  int64_t shards = 1;
  int64_t seq_len = 0;        // 0: no truncation
  double val_fraction = 0.0;  // in [0, 1)
  uint64_t seed = 0;
  bool skip_bad_records = false;  // count and skip instead of failing on the first
  Compression compression = Compression::kNone;  // kNone, kGzip or kZlib (kAuto means kNone)
};

struct ShardSummary {
  std::string path;
  uint64_t records = 0;
  uint64_t tokens = 0;
  uint64_t loss_tokens = 0;
};

struct DatasetBuildSummary {
  std::vector<ShardSummary> train_shards;
  std::optional<ShardSummary> validation;
  uint64_t lines = 0;                // lines read, blank ones included
  uint64_t records_written = 0;
  uint64_t bad_records_skipped = 0;  // only with skip_bad_records
  std::vector<std::string> first_bad_records;  // messages of the first few skipped
  uint64_t truncated_records = 0;    // cut to seq_len
  uint64_t dropped_no_loss = 0;      // completion cut away entirely
};

struct DatasetBuildProgress {
  uint64_t lines = 0;
  uint64_t records_read = 0;   // non-blank lines
  uint64_t total_records = 0;  // non-blank lines in the file
  uint64_t records_written = 0;
  uint64_t tokens = 0;
  uint64_t input_bytes = 0;
  double seconds = 0.0;
};

// Builds the shards. Throws llmft::Error (kBadInput) naming "<input>:<line>"
// for a bad record unless skip_bad_records, and for bad options.
// `progress` (optional) is called about once a second and once at the end.
DatasetBuildSummary build_dataset(const Tokenizer& tokenizer, const DatasetBuildOptions& options,
                                  const std::function<void(const DatasetBuildProgress&)>& progress = {});

// TensorFlow's shard name: "<prefix>-00003-of-00008.tfrecord", with ".gz" or
// ".zlib" appended for a compressed shard.
std::string shard_file_name(const std::string& prefix, int64_t index, int64_t count,
                            Compression compression = Compression::kNone);

}  // namespace llmft::data
