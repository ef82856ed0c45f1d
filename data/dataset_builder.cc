#include "data/dataset_builder.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/philox.h"
#include "data/example.h"
#include "data/tfrecord.h"

namespace llmft::data {
namespace {

using nlohmann::json;

constexpr size_t kBadRecordsKept = 5;

struct TokenizedRecord {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> loss_mask;
};

// One JSONL line -> tokens, or a kBadInput error naming what is wrong with it
// (the caller adds "<file>:<line>").
TokenizedRecord tokenize_line(const Tokenizer& tokenizer, std::string_view line) {
  json record;
  try {
    record = json::parse(line);
  } catch (const json::parse_error& error) {
    throw_bad_input("not valid JSON: ", error.what());
  }
  if (!record.is_object()) throw_bad_input("expected a JSON object, found ", record.type_name());
  auto string_field = [&](const char* key) {
    const json& value = record[key];
    if (!value.is_string()) throw_bad_input("\"", key, "\": expected a string, found ", value.type_name());
    return value.get<std::string>();
  };
  bool has_text = record.contains("text");
  bool has_prompt = record.contains("prompt"), has_completion = record.contains("completion");
  for (auto it = record.begin(); it != record.end(); ++it) {
    if (it.key() != "text" && it.key() != "prompt" && it.key() != "completion")
      throw_bad_input("unexpected key \"", it.key(), "\" (expected {\"text\"} or {\"prompt\", \"completion\"})");
  }
  if (has_text && (has_prompt || has_completion))
    throw_bad_input("mixes \"text\" with \"prompt\"/\"completion\" (expected {\"text\"} or {\"prompt\", \"completion\"})");
  if (!has_text && !(has_prompt && has_completion))
    throw_bad_input("missing ", has_prompt ? "\"completion\"" : has_completion ? "\"prompt\"" : "\"text\"",
                    " (expected {\"text\"} or {\"prompt\", \"completion\"})");

  TokenizedRecord out;
  auto append = [&](const std::vector<int32_t>& ids, int64_t mask) {
    out.input_ids.insert(out.input_ids.end(), ids.begin(), ids.end());
    out.loss_mask.insert(out.loss_mask.end(), ids.size(), mask);
  };
  if (has_text) {
    append(tokenizer.encode_with_special_tokens(string_field("text")), 1);
  } else {
    std::optional<int32_t> eos = tokenizer.eos_id();
    if (!eos) throw_bad_input(tokenizer.description(), ": no EOS token to end completions with (set eos_token)");
    append(tokenizer.prefix_ids(), 0);
    append(tokenizer.encode(string_field("prompt")), 0);
    append(tokenizer.encode(string_field("completion")), 1);
    append(tokenizer.suffix_ids(), 1);
    if (tokenizer.suffix_ids().empty() || tokenizer.suffix_ids().back() != *eos) append({*eos}, 1);
  }
  if (out.input_ids.empty()) throw_bad_input("no tokens (empty text and no BOS/EOS)");
  return out;
}

// Non-blank lines of the input, for the exact validation-split size.
uint64_t count_records(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_bad_input(path, ": cannot open");
  uint64_t count = 0;
  std::string line;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t\r") != std::string::npos) ++count;
  return count;
}

// `count` distinct indices of [0, population) (Floyd's algorithm: uniform, O(count) memory).
std::unordered_set<uint64_t> sample_indices(uint64_t population, uint64_t count, uint64_t seed) {
  std::unordered_set<uint64_t> chosen;
  PhiloxGenerator generator(seed);
  for (uint64_t j = population - count; j < population; ++j) {
    uint64_t candidate = generator.next_below(j + 1);
    chosen.insert(chosen.contains(candidate) ? j : candidate);
  }
  return chosen;
}

// A shard being written under "<path>.partial".
struct ShardOutput {
  ShardSummary summary;
  std::unique_ptr<RecordWriter> writer;
};

}  // namespace

std::string shard_file_name(const std::string& prefix, int64_t index, int64_t count, Compression compression) {
  char digits[32];
  std::snprintf(digits, sizeof(digits), "-%05lld-of-%05lld.tfrecord", static_cast<long long>(index),
                static_cast<long long>(count));
  const char* extension = compression == Compression::kGzip ? ".gz" : compression == Compression::kZlib ? ".zlib" : "";
  return prefix + digits + extension;
}

DatasetBuildSummary build_dataset(const Tokenizer& tokenizer, const DatasetBuildOptions& options,
                                  const std::function<void(const DatasetBuildProgress&)>& progress) {
  if (options.shards < 1 || options.shards > 99999) throw_bad_input("--shards: expected 1..99999, found ", options.shards);
  if (options.seq_len < 0) throw_bad_input("--seq-len: expected >= 0, found ", options.seq_len);
  if (!(options.val_fraction >= 0.0 && options.val_fraction < 1.0))
    throw_bad_input("--val-fraction: expected a number in [0, 1), found ", options.val_fraction);
  if (options.output_prefix.empty()) throw_bad_input("--output: empty");

  uint64_t total_records = count_records(options.input_path);
  if (total_records == 0) throw_bad_input(options.input_path, ": no records (the file is empty)");
  uint64_t validation_count = 0;
  if (options.val_fraction > 0.0) {
    if (total_records < 2)
      throw_bad_input(options.input_path, ": --val-fraction needs at least 2 records, found ", total_records);
    // At least one validation record, and at least one left for training.
    validation_count = static_cast<uint64_t>(options.val_fraction * static_cast<double>(total_records) + 0.5);
    validation_count = std::clamp<uint64_t>(validation_count, 1, total_records - 1);
  }
  std::unordered_set<uint64_t> validation_indices = sample_indices(total_records, validation_count, options.seed);

  std::filesystem::path parent = std::filesystem::path(options.output_prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);

  DatasetBuildSummary summary;
  std::vector<ShardOutput> shards(static_cast<size_t>(options.shards));
  std::optional<ShardOutput> validation;
  // Compression is given explicitly: the ".partial" suffix hides the extension from kAuto.
  Compression compression = options.compression == Compression::kAuto ? Compression::kNone : options.compression;
  auto open = [compression](ShardOutput& shard, std::string path) {
    shard.summary.path = std::move(path);
    RecordWriterOptions writer_options;
    writer_options.compression = compression;
    shard.writer = std::make_unique<RecordWriter>(shard.summary.path + ".partial", writer_options);
  };
  auto remove_partials = [&] {
    std::error_code ignored;
    for (ShardOutput& shard : shards) {
      shard.writer.reset();
      if (!shard.summary.path.empty()) std::filesystem::remove(shard.summary.path + ".partial", ignored);
    }
    if (validation) {
      validation->writer.reset();
      std::filesystem::remove(validation->summary.path + ".partial", ignored);
    }
  };

  try {
    for (int64_t i = 0; i < options.shards; ++i)
      open(shards[static_cast<size_t>(i)], shard_file_name(options.output_prefix, i, options.shards, compression));
    if (validation_count > 0) {
      validation.emplace();
      open(*validation, shard_file_name(options.output_prefix + "-val", 0, 1, compression));
    }

    std::ifstream in(options.input_path, std::ios::binary);
    if (!in) throw_bad_input(options.input_path, ": cannot open");
    auto start = std::chrono::steady_clock::now();
    auto last_report = start;
    DatasetBuildProgress state;
    state.total_records = total_records;
    auto report = [&] {
      state.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (progress) progress(state);
    };

    uint64_t record_index = 0;  // among non-blank lines; selects the validation records
    uint64_t train_records = 0;
    std::string line;
    while (std::getline(in, line)) {
      ++summary.lines;
      state.lines = summary.lines;
      state.input_bytes += line.size() + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      bool to_validation = validation_indices.contains(record_index++);
      state.records_read = record_index;

      TokenizedRecord record;
      try {
        record = tokenize_line(tokenizer, line);
      } catch (const Error& error) {
        if (error.kind() != ErrorKind::kBadInput) throw;
        std::string message = str_cat(options.input_path, ":", summary.lines, ": ", error.what());
        if (!options.skip_bad_records) throw Error(ErrorKind::kBadInput, message);
        ++summary.bad_records_skipped;
        if (summary.first_bad_records.size() < kBadRecordsKept) summary.first_bad_records.push_back(message);
        continue;
      }
      if (options.seq_len > 0 && record.input_ids.size() > static_cast<size_t>(options.seq_len)) {
        record.input_ids.resize(static_cast<size_t>(options.seq_len));
        record.loss_mask.resize(static_cast<size_t>(options.seq_len));
        ++summary.truncated_records;
        if (std::find(record.loss_mask.begin(), record.loss_mask.end(), 1) == record.loss_mask.end()) {
          ++summary.dropped_no_loss;
          continue;
        }
      }

      ShardOutput& shard = to_validation ? *validation : shards[train_records++ % shards.size()];
      TokenExample example;
      example.input_ids = std::move(record.input_ids);
      example.loss_mask = std::move(record.loss_mask);
      shard.writer->write(encode_example(example));
      shard.summary.records += 1;
      shard.summary.tokens += example.input_ids.size();
      for (int64_t mask : example.loss_mask) shard.summary.loss_tokens += static_cast<uint64_t>(mask);
      ++summary.records_written;
      state.records_written = summary.records_written;
      state.tokens += example.input_ids.size();

      auto now = std::chrono::steady_clock::now();
      if (now - last_report >= std::chrono::seconds(1)) {
        last_report = now;
        report();
      }
    }
    if (in.bad()) throw_runtime(options.input_path, ": read error after line ", summary.lines);
    report();

    // Close everything, then rename: a failure leaves no half-written shard set.
    for (ShardOutput& shard : shards) shard.writer->close();
    if (validation) validation->writer->close();
    for (ShardOutput& shard : shards) {
      std::filesystem::rename(shard.summary.path + ".partial", shard.summary.path);
      summary.train_shards.push_back(shard.summary);
    }
    if (validation) {
      std::filesystem::rename(validation->summary.path + ".partial", validation->summary.path);
      summary.validation = validation->summary;
    }
  } catch (...) {
    remove_partials();
    throw;
  }
  return summary;
}

}  // namespace llmft::data
