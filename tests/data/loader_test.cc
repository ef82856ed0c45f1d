// The sharded loader: shard-set validation, rank disjointness and equal step
// counts, best-fit packing, contiguous packing and padding against
// hand-computed rows, long documents, the document-boundary invariant of
// packed rows, evaluation's nothing-dropped epochs, prefetch error
// propagation, and exact resume under two data-parallel ranks.
#include "data/loader.h"

#include <gtest/gtest.h>

#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/example.h"
#include "data/packing.h"
#include "data/tfrecord.h"
#include "tests/data/test_util.h"
#include "tests/test_util.h"

namespace llmft::data {
namespace {

using ::llmft::testing::bad_input_message;

using testing::read_bytes;
using testing::TempDir;
using testing::write_bytes;

void touch(const std::string& path) { write_bytes(path, ""); }

// Writes shards `<dir>/train-0000i-of-0000n.tfrecord`; document d of the
// whole set has length lengths[d] and tokens 1000 * (d + 1) + k, so every
// token names its document and position.
std::string write_documents(const TempDir& dir, const std::vector<std::vector<int>>& lengths_per_shard,
                            const std::string& extension = ".tfrecord") {
  int document = 0;
  const size_t shards = lengths_per_shard.size();
  for (size_t shard = 0; shard < shards; ++shard) {
    char name[64];
    std::snprintf(name, sizeof(name), "train-%05zu-of-%05zu", shard, shards);
    RecordWriter writer(dir.file(name + extension));
    for (int length : lengths_per_shard[shard]) {
      TokenExample example;
      for (int k = 0; k < length; ++k) example.input_ids.push_back(1000 * (document + 1) + k);
      writer.write(encode_example(example));
      ++document;
    }
    writer.close();
  }
  return dir.file("train-*-of-" + std::string(5 - std::to_string(shards).size(), '0') + std::to_string(shards) +
                  extension);
}

std::vector<int32_t> row_of(const Tensor& tensor, int64_t row) {
  const int64_t columns = tensor.size(1);
  const int32_t* data = tensor.data<int32_t>() + row * columns;
  return std::vector<int32_t>(data, data + columns);
}

std::vector<std::vector<int32_t>> flatten(const Batch& batch) {
  std::vector<std::vector<int32_t>> rows;
  for (const Tensor* tensor : {&batch.input_ids, &batch.targets, &batch.position_ids, &batch.doc_start})
    for (int64_t row = 0; row < tensor->size(0); ++row) rows.push_back(row_of(*tensor, row));
  return rows;
}

// ---------------------------------------------------------- shard sets ---

TEST(ShardSet, AcceptsACompleteSetInShardOrder) {
  TempDir dir;
  for (int i : {2, 0, 1}) touch(dir.file("train-0000" + std::to_string(i) + "-of-00003.tfrecord"));
  auto files = expand_shard_pattern(dir.file("train-*-of-00003.tfrecord"), local_file_system());
  ASSERT_EQ(files.size(), 3u);
  EXPECT_EQ(files[0], dir.file("train-00000-of-00003.tfrecord"));
  EXPECT_EQ(files[2], dir.file("train-00002-of-00003.tfrecord"));
}

TEST(ShardSet, NamesTheMissingShard) {
  TempDir dir;
  for (int i : {0, 1, 3}) touch(dir.file("train-0000" + std::to_string(i) + "-of-00004.tfrecord"));
  EXPECT_EQ(bad_input_message([&] { expand_shard_pattern(dir.file("train-*.tfrecord"), local_file_system()); }),
            "missing shard " + dir.file("train-00002-of-00004.tfrecord") + " (found 3 of 4 shards of " +
                dir.file("train-00000-of-00004.tfrecord") + ")");
}

TEST(ShardSet, AHugeTotalIsAMissingShardNotAnAllocation) {
  TempDir dir;
  touch(dir.file("train-00000-of-99999999.tfrecord"));
  EXPECT_EQ(bad_input_message([&] { expand_shard_pattern(dir.file("train-*.tfrecord"), local_file_system()); }),
            "missing shard " + dir.file("train-00001-of-99999999.tfrecord") + " (found 1 of 99999999 shards of " +
                dir.file("train-00000-of-99999999.tfrecord") + ")");
}

TEST(ShardSet, RejectsAnExtraShard) {
  TempDir dir;
  for (int i : {0, 1, 2}) touch(dir.file("train-0000" + std::to_string(i) + "-of-00002.tfrecord"));
  EXPECT_EQ(bad_input_message([&] { expand_shard_pattern(dir.file("train-*.tfrecord"), local_file_system()); }),
            dir.file("train-00002-of-00002.tfrecord") +
                ": extra shard: index 2 is not below the total of 2 (shards are numbered from 0)");
}

TEST(ShardSet, RejectsMixedTotals) {
  TempDir dir;
  touch(dir.file("train-00000-of-00002.tfrecord"));
  touch(dir.file("train-00001-of-00002.tfrecord"));
  touch(dir.file("train-00000-of-00003.tfrecord"));
  std::string message = bad_input_message([&] { expand_shard_pattern(dir.file("train-*"), local_file_system()); });
  EXPECT_NE(message.find("mixed shard totals"), std::string::npos) << message;
}

TEST(ShardSet, RejectsAStrayFileAndAnEmptyPattern) {
  TempDir dir;
  touch(dir.file("train-00000-of-00001.tfrecord"));
  touch(dir.file("train-extra.tfrecord"));
  std::string message =
      bad_input_message([&] { expand_shard_pattern(dir.file("train-*.tfrecord"), local_file_system()); });
  EXPECT_NE(message.find(dir.file("train-extra.tfrecord") + ": not part of the shard set"), std::string::npos)
      << message;
  EXPECT_EQ(bad_input_message([&] { expand_shard_pattern(dir.file("nothing-*"), local_file_system()); }),
            dir.file("nothing-*") + ": no files match this data pattern");
}

TEST(ShardSet, AcceptsAPlainListSortedAndRejectsDuplicates) {
  EXPECT_EQ(validate_shard_set({"b.tfrecord", "a.tfrecord"}), (std::vector<std::string>{"a.tfrecord", "b.tfrecord"}));
  EXPECT_EQ(bad_input_message([] { validate_shard_set({"a.tfrecord", "a.tfrecord"}); }),
            "a.tfrecord: listed twice in the data files");
}

// ------------------------------------------------------------- packing ---

// Hand-computed: eos 7, seq_len 6, batch 2, no shuffling, one rank.
// Document A: prompt 11 12 | completion 13 (loss_mask 0 0 1)
// Document B: 21 22 23 24 25 (no mask: loss everywhere)
// Stream: 11 12 13 7 | 21 22 23 24 25 7
// Row 0: inputs 11 12 13 7 21 22; labels of the stream: A = -100 -100 13 7,
//        B = 21 22 23 24 25 7. Targets = label of the next token when it is in
//        the same document: 12→-100, 13 (is 13's label), 7, then EOS→-100
//        (next token starts B), 21→22, 22→23 (next row, same document).
// Row 1: 23 24 25 7 | then the stream ends... so a 2-row batch needs more:
//        Document C: 31 32 (labels feature: -100 32) follows.
TEST(LoaderContiguous, MatchesAHandComputedBatch) {
  TempDir dir;
  {
    RecordWriter writer(dir.file("train-00000-of-00001.tfrecord"));
    TokenExample a;
    a.input_ids = {11, 12, 13};
    a.loss_mask = {0, 0, 1};
    writer.write(encode_example(a));
    TokenExample b;
    b.input_ids = {21, 22, 23, 24, 25};
    writer.write(encode_example(b));
    TokenExample c;
    c.input_ids = {31, 32};
    c.labels = {-100, 32};
    writer.write(encode_example(c));
  }
  LoaderOptions options;
  options.files = {dir.file("train-00000-of-00001.tfrecord")};
  options.mode = BatchMode::kPackedContiguous;
  options.batch_size = 2;
  options.seq_len = 6;
  options.eos_id = 7;
  options.shuffle_buffer = 0;
  options.shuffle_shards = false;
  options.num_epochs = 1;
  Loader loader(options);
  // 3 + 1 + 5 + 1 + 2 + 1 = 13 tokens: 2 rows of 6, one batch.
  EXPECT_EQ(loader.steps_per_epoch(0), 1);
  std::optional<Batch> batch = loader.next();
  ASSERT_TRUE(batch);
  EXPECT_EQ(batch->input_ids.shape(), (Shape{2, 6}));
  EXPECT_EQ(batch->input_ids.dtype(), DType::kI32);
  EXPECT_EQ(row_of(batch->input_ids, 0), (std::vector<int32_t>{11, 12, 13, 7, 21, 22}));
  EXPECT_EQ(row_of(batch->targets, 0), (std::vector<int32_t>{-100, 13, 7, -100, 22, 23}));
  EXPECT_EQ(row_of(batch->position_ids, 0), (std::vector<int32_t>{0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(row_of(batch->doc_start, 0), (std::vector<int32_t>{0, 0, 0, 0, 4, 4}));
  // Row 1: B continues as a new segment (positions restart), then C + EOS.
  // C's labels are -100 32, so the target of 31 is 32 and of 32 is EOS's
  // label, 7 (its last token is labelled); EOS's target is -100.
  EXPECT_EQ(row_of(batch->input_ids, 1), (std::vector<int32_t>{23, 24, 25, 7, 31, 32}));
  EXPECT_EQ(row_of(batch->targets, 1), (std::vector<int32_t>{24, 25, 7, -100, 32, 7}));
  EXPECT_EQ(row_of(batch->position_ids, 1), (std::vector<int32_t>{0, 1, 2, 3, 0, 1}));
  EXPECT_EQ(row_of(batch->doc_start, 1), (std::vector<int32_t>{0, 0, 0, 0, 4, 4}));
  EXPECT_FALSE(loader.next());  // the remaining EOS does not fill a row
  EXPECT_FALSE(loader.next());
}

TEST(LoaderPacking, PromptOnlyDocumentHasNoLossAndNoTrainedEos) {
  TempDir dir;
  {
    RecordWriter writer(dir.file("train-00000-of-00001.tfrecord"));
    TokenExample prompt_only;
    prompt_only.input_ids = {11, 12, 13};
    prompt_only.loss_mask = {0, 0, 0};
    writer.write(encode_example(prompt_only));
  }
  LoaderOptions options;
  options.files = {dir.file("train-00000-of-00001.tfrecord")};
  options.batch_size = 1;
  options.seq_len = 4;
  options.eos_id = 7;
  options.prefetch_batches = 0;
  Loader loader(options);
  auto batch = loader.next();
  ASSERT_TRUE(batch);
  EXPECT_EQ(row_of(batch->input_ids, 0), (std::vector<int32_t>{11, 12, 13, 7}));
  EXPECT_EQ(row_of(batch->targets, 0), (std::vector<int32_t>{-100, -100, -100, -100}));
}

TEST(LoaderPadding, OneDocumentPerRowPaddedAndTruncated) {
  TempDir dir;
  {
    RecordWriter writer(dir.file("train-00000-of-00001.tfrecord"));
    TokenExample a;
    a.input_ids = {11, 12};
    a.loss_mask = {0, 1};
    writer.write(encode_example(a));
    TokenExample b;
    b.input_ids = {21, 22, 23, 24, 25, 26};
    writer.write(encode_example(b));
  }
  LoaderOptions options;
  options.files = {dir.file("train-00000-of-00001.tfrecord")};
  options.mode = BatchMode::kPadded;
  options.batch_size = 2;
  options.seq_len = 5;
  options.eos_id = 7;
  options.pad_id = 0;
  options.shuffle_buffer = 0;
  Loader loader(options);
  auto batch = loader.next();
  ASSERT_TRUE(batch);
  EXPECT_EQ(row_of(batch->input_ids, 0), (std::vector<int32_t>{11, 12, 7, 0, 0}));
  EXPECT_EQ(row_of(batch->targets, 0), (std::vector<int32_t>{12, 7, -100, -100, -100}));
  EXPECT_EQ(row_of(batch->position_ids, 0), (std::vector<int32_t>{0, 1, 2, 0, 0}));
  EXPECT_EQ(row_of(batch->doc_start, 0), (std::vector<int32_t>{0, 0, 0, 3, 4}));
  // Truncated to 5 tokens; the last target is still the document's next token.
  EXPECT_EQ(row_of(batch->input_ids, 1), (std::vector<int32_t>{21, 22, 23, 24, 25}));
  EXPECT_EQ(row_of(batch->targets, 1), (std::vector<int32_t>{22, 23, 24, 25, 26}));
  EXPECT_EQ(row_of(batch->position_ids, 1), (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(row_of(batch->doc_start, 1), (std::vector<int32_t>{0, 0, 0, 0, 0}));
}

// ------------------------------------------------------ best-fit packing ---

// Hand-computed: eos 7, seq_len 8, batch 2, no shuffling, one window.
// Documents with their EOS: A 11 12 13 7 (loss_mask 0 0 1: labels -100 -100
// 13 7), B 21 22 23 24 25 7, C 31 32 7 (labels -100 32 7), D 41 7.
// Best fit decreasing places B (6) in row 0 (2 free), A (4) in a new row 1
// (4 free), C (3) in row 1, the tightest fit (1 free), D (2) in row 0 (full).
TEST(LoaderBestFit, MatchesAHandComputedBatch) {
  TempDir dir;
  {
    RecordWriter writer(dir.file("train-00000-of-00001.tfrecord"));
    TokenExample a;
    a.input_ids = {11, 12, 13};
    a.loss_mask = {0, 0, 1};
    writer.write(encode_example(a));
    TokenExample b;
    b.input_ids = {21, 22, 23, 24, 25};
    writer.write(encode_example(b));
    TokenExample c;
    c.input_ids = {31, 32};
    c.labels = {-100, 32};
    writer.write(encode_example(c));
    TokenExample d;
    d.input_ids = {41};
    writer.write(encode_example(d));
  }
  LoaderOptions options;
  options.files = {dir.file("train-00000-of-00001.tfrecord")};
  options.batch_size = 2;
  options.seq_len = 8;
  options.eos_id = 7;
  options.pad_id = 0;
  options.shuffle_buffer = 0;
  options.shuffle_shards = false;
  options.num_epochs = 1;
  Loader loader(options);
  EXPECT_EQ(loader.steps_per_epoch(0), 1);
  std::optional<Batch> batch = loader.next();
  ASSERT_TRUE(batch);
  EXPECT_EQ(row_of(batch->input_ids, 0), (std::vector<int32_t>{21, 22, 23, 24, 25, 7, 41, 7}));
  EXPECT_EQ(row_of(batch->targets, 0), (std::vector<int32_t>{22, 23, 24, 25, 7, -100, 7, -100}));
  EXPECT_EQ(row_of(batch->position_ids, 0), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 0, 1}));
  EXPECT_EQ(row_of(batch->doc_start, 0), (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 6, 6}));
  EXPECT_EQ(row_of(batch->input_ids, 1), (std::vector<int32_t>{11, 12, 13, 7, 31, 32, 7, 0}));
  EXPECT_EQ(row_of(batch->targets, 1), (std::vector<int32_t>{-100, 13, 7, -100, 32, 7, -100, -100}));
  EXPECT_EQ(row_of(batch->position_ids, 1), (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 0}));
  EXPECT_EQ(row_of(batch->doc_start, 1), (std::vector<int32_t>{0, 0, 0, 0, 4, 4, 4, 7}));
  EXPECT_EQ(batch->real_tokens, 15);
  EXPECT_EQ(batch->records, 4);
  EXPECT_EQ(batch->rows_with_tokens, 2);
  EXPECT_FALSE(loader.next());
}

TEST(BestFitDecreasing, PlacesEachItemInTheTightestRowLongestFirst) {
  // Capacity 10. Sorted: 7 (0), 6 (3), 5 (1), 4 (4), 3 (2), 3 (5), 2 (6).
  // 7 -> row 0 (3 free); 6 -> row 1 (4 free); 5 -> row 2 (5 free);
  // 4 -> row 1 (exact); 3 -> row 0 (exact); 3 -> row 2 (2 free); 2 -> row 2.
  const std::vector<int64_t> lengths = {7, 5, 3, 6, 4, 3, 2};
  EXPECT_EQ(best_fit_decreasing(lengths, 10),
            (std::vector<std::vector<size_t>>{{0, 2}, {3, 4}, {1, 5, 6}}));
  EXPECT_TRUE(best_fit_decreasing(std::vector<int64_t>{}, 4).empty());
}

// seq_len 4, no EOS: X = 1000..1005 (6 tokens), Y = 2000 2001.
TEST(LoaderBestFit, LongDocumentsAreTruncatedSplitOrDroppedAndCounted) {
  TempDir dir;
  LoaderOptions options;
  options.pattern = write_documents(dir, {{6, 2}});
  options.append_eos = false;
  options.seq_len = 4;
  options.batch_size = 1;
  options.shuffle_buffer = 0;
  options.num_epochs = 1;
  auto rows = [&](LongDocuments policy, BatchMode mode) {
    options.long_documents = policy;
    options.mode = mode;
    Loader loader(options);
    EXPECT_EQ(loader.stats().records, 2u);
    EXPECT_EQ(loader.stats().long_records, 1u);
    EXPECT_EQ(loader.stats().tokens_beyond_seq_len, 2u);
    std::vector<std::vector<int32_t>> out;
    while (auto batch = loader.next()) {
      out.push_back(row_of(batch->input_ids, 0));
      out.push_back(row_of(batch->targets, 0));
      out.push_back(row_of(batch->position_ids, 0));
    }
    return out;
  };
  using Rows = std::vector<std::vector<int32_t>>;
  // Truncated: the last kept token's target is still the document's next token.
  const Rows truncated = {{1000, 1001, 1002, 1003}, {1001, 1002, 1003, 1004}, {0, 1, 2, 3},
                          {2000, 2001, 0, 0},       {2001, -100, -100, -100}, {0, 1, 0, 0}};
  EXPECT_EQ(rows(LongDocuments::kTruncate, BatchMode::kPacked), truncated);
  EXPECT_EQ(rows(LongDocuments::kTruncate, BatchMode::kPadded), truncated);
  // Split: X's second piece (2 tokens) and Y share a row, each its own segment.
  EXPECT_EQ(rows(LongDocuments::kSplit, BatchMode::kPacked),
            (Rows{{1000, 1001, 1002, 1003}, {1001, 1002, 1003, 1004}, {0, 1, 2, 3},
                  {1004, 1005, 2000, 2001}, {1005, -100, 2001, -100}, {0, 1, 0, 1}}));
  EXPECT_EQ(rows(LongDocuments::kSplit, BatchMode::kPadded),
            (Rows{{1000, 1001, 1002, 1003}, {1001, 1002, 1003, 1004}, {0, 1, 2, 3},
                  {1004, 1005, 0, 0}, {1005, -100, -100, -100}, {0, 1, 0, 0},
                  {2000, 2001, 0, 0}, {2001, -100, -100, -100}, {0, 1, 0, 0}}));
  EXPECT_EQ(rows(LongDocuments::kDrop, BatchMode::kPacked),
            (Rows{{2000, 2001, 0, 0}, {2001, -100, -100, -100}, {0, 1, 0, 0}}));

  DataStats stats;
  stats.records = 1500;
  stats.long_records = 12;
  stats.longest = 143;
  stats.tokens_beyond_seq_len = 345;
  options.seq_len = 80;
  options.mode = BatchMode::kPacked;
  options.long_documents = LongDocuments::kTruncate;
  EXPECT_EQ(long_documents_report(stats, options),
            "12 of 1500 records are longer than seq_len 80 (longest 143 tokens): truncated, 345 tokens left out");
  options.long_documents = LongDocuments::kDrop;
  EXPECT_EQ(long_documents_report(stats, options),
            "12 of 1500 records are longer than seq_len 80 (longest 143 tokens): dropped");
  stats.long_records = 0;
  EXPECT_EQ(long_documents_report(stats, options), "");
}

// The documents of write_documents (token 1000 * (d + 1) + k, EOS 1), checked
// position by position from the tokens alone: a trained position t must lie
// in a segment [doc_start[t], t] that begins at its document's first token
// and holds that document's tokens in order (no token of another document
// before it in its attention span, none of its own document missing), with
// position_ids counting from 0 and the target the document's next token.
struct BoundaryCheck {
  std::vector<int> lengths;                // per document, without EOS
  int64_t violations = 0;
  std::map<int, int64_t> trained;          // document -> trained positions seen
  std::string first_violation;

  void check(const Batch& batch) {
    const int64_t rows = batch.input_ids.size(0), columns = batch.input_ids.size(1);
    for (int64_t row = 0; row < rows; ++row) {
      const std::vector<int32_t> ids = row_of(batch.input_ids, row), targets = row_of(batch.targets, row),
                                 positions = row_of(batch.position_ids, row), starts = row_of(batch.doc_start, row);
      for (int64_t t = 0; t < columns; ++t) {
        if (targets[t] < 0) continue;
        const int64_t start = starts[t];
        const int32_t first = start >= 0 && start <= t ? ids[start] : -1;
        const int document = first / 1000 - 1;
        bool ok = first >= 1000 && first % 1000 == 0 && document < static_cast<int>(lengths.size()) &&
                  positions[t] == t - start;
        for (int64_t j = 0; ok && j <= t - start; ++j)
          ok = j < lengths[document] ? ids[start + j] == 1000 * (document + 1) + j : ids[start + j] == 1;
        const int64_t k = t - start;  // the token's index in its document
        if (ok) ok = targets[t] == (k + 1 < lengths[document] ? 1000 * (document + 1) + k + 1 : 1);
        if (!ok) {
          if (violations++ == 0)
            first_violation = str_cat("row ", row, " position ", t, ": token ", ids[t], " segment from ", start);
          continue;
        }
        ++trained[document];
      }
    }
  }
};

std::vector<int> all_lengths(const std::vector<std::vector<int>>& per_shard) {
  std::vector<int> lengths;
  for (const auto& shard : per_shard) lengths.insert(lengths.end(), shard.begin(), shard.end());
  return lengths;
}

// Shuffled, three uneven shards, dp 1 and 2, two epochs of training batches
// and one evaluation epoch (nothing dropped): no trained token is separated
// from its document's beginning or sees another document, and evaluation
// trains every token of every document exactly once over the ranks. Control:
// the contiguous layout over the same data breaks the rule.
class LoaderBoundaries : public ::testing::TestWithParam<int> {};

TEST_P(LoaderBoundaries, NoTrainedTokenIsCutFromItsDocumentOrSeesAnother) {
  const int ranks = GetParam();
  TempDir dir;
  std::vector<std::vector<int>> lengths(3);
  for (int d = 0; d < 61; ++d) lengths[d % 5 == 0 ? 0 : d % 3 == 0 ? 1 : 2].push_back(1 + (d * 7) % 15);
  LoaderOptions options;
  options.pattern = write_documents(dir, lengths);
  options.eos_id = 1;
  options.seq_len = 16;  // the longest document with its EOS fills a row
  options.batch_size = 2;
  options.dp_size = ranks;
  options.shuffle_buffer = 7;
  options.pack_window = 9;
  options.seed = 3;
  options.num_epochs = 2;
  BoundaryCheck training{all_lengths(lengths)};
  for (int rank = 0; rank < ranks; ++rank) {
    options.dp_rank = rank;
    Loader loader(options);
    std::map<int64_t, std::set<int>> seen_per_epoch;
    while (auto batch = loader.next()) {
      BoundaryCheck one{training.lengths};
      one.check(*batch);
      training.check(*batch);
      for (const auto& [document, count] : one.trained) {
        EXPECT_TRUE(seen_per_epoch[batch->epoch].insert(document).second)
            << "document " << document << " twice in epoch " << batch->epoch;
      }
    }
  }
  EXPECT_EQ(training.violations, 0) << training.first_violation;
  EXPECT_GT(training.trained.size(), 50u);

  options.num_epochs = 1;
  options.drop_remainder = false;
  BoundaryCheck evaluation{training.lengths};
  int64_t steps = -1;
  for (int rank = 0; rank < ranks; ++rank) {
    options.dp_rank = rank;
    Loader loader(options);
    int64_t rank_steps = 0;
    while (auto batch = loader.next()) {
      evaluation.check(*batch);
      ++rank_steps;
    }
    if (steps >= 0) EXPECT_EQ(rank_steps, steps) << "rank " << rank;
    steps = rank_steps;
  }
  EXPECT_EQ(evaluation.violations, 0) << evaluation.first_violation;
  ASSERT_EQ(evaluation.trained.size(), evaluation.lengths.size());
  for (const auto& [document, count] : evaluation.trained)
    EXPECT_EQ(count, evaluation.lengths[document]) << "document " << document;

  options.mode = BatchMode::kPackedContiguous;
  options.dp_rank = 0;
  BoundaryCheck contiguous{training.lengths};
  Loader control(options);
  while (auto batch = control.next()) contiguous.check(*batch);
  EXPECT_GT(contiguous.violations, 0) << "the contiguous layout cuts documents; the check should see it";
}

INSTANTIATE_TEST_SUITE_P(OneAndTwoRanks, LoaderBoundaries, ::testing::Values(1, 2));

// Without drop_remainder (evaluation) every rank takes the same number of
// steps, the most any rank's share needs, and every token of every document
// arrives exactly once over the ranks, in each layout.
class LoaderNoDrop : public ::testing::TestWithParam<std::tuple<int, BatchMode>> {};

TEST_P(LoaderNoDrop, EveryTokenArrivesOnceAndRanksTakeEqualSteps) {
  const auto [ranks, mode] = GetParam();
  TempDir dir;
  std::vector<std::vector<int>> lengths = {{3, 9, 4, 12, 5, 7, 2}, {15, 1}, {6, 6, 8, 3, 10, 4, 2, 9, 5, 7, 1}, {13}};
  LoaderOptions options;
  options.pattern = write_documents(dir, lengths);
  options.dp_size = ranks;
  options.batch_size = 3;
  options.seq_len = 16;
  options.eos_id = 1;
  options.mode = mode;
  options.shuffle_buffer = 4;
  options.seed = 11;
  options.num_epochs = 1;
  options.drop_remainder = false;
  std::multiset<int32_t> seen;
  int64_t steps = -1, real_tokens = 0, records = 0;
  for (int rank = 0; rank < ranks; ++rank) {
    options.dp_rank = rank;
    Loader loader(options);
    int64_t rank_steps = 0;
    while (auto batch = loader.next()) {
      ++rank_steps;
      real_tokens += batch->real_tokens;
      records += batch->records;
      const int32_t* ids = batch->input_ids.data<int32_t>();
      for (int64_t i = 0; i < batch->input_ids.numel(); ++i)
        if (ids[i] >= 1000) seen.insert(ids[i]);
    }
    EXPECT_EQ(rank_steps, loader.steps_per_epoch(0)) << "rank " << rank;
    if (steps >= 0) EXPECT_EQ(rank_steps, steps) << "rank " << rank;
    steps = rank_steps;
  }
  std::multiset<int32_t> expected;
  int64_t tokens = 0;
  const std::vector<int> flat = all_lengths(lengths);
  for (size_t d = 0; d < flat.size(); ++d) {
    for (int k = 0; k < flat[d]; ++k) expected.insert(static_cast<int32_t>(1000 * (d + 1) + k));
    tokens += flat[d] + 1;
  }
  EXPECT_EQ(seen, expected);
  EXPECT_EQ(real_tokens, tokens);
  EXPECT_EQ(records, static_cast<int64_t>(flat.size()));
}

INSTANTIATE_TEST_SUITE_P(RanksAndModes, LoaderNoDrop,
                         ::testing::Combine(::testing::Values(1, 2, 3),
                                            ::testing::Values(BatchMode::kPacked, BatchMode::kPackedContiguous,
                                                              BatchMode::kPadded)));

// --------------------------------------------------- data parallelism ---

// Every token tells its document (token / 1000 - 1); collects which
// documents each rank saw in epoch 0 and how many steps it yielded.
struct RankView {
  std::set<int> documents;
  int64_t steps = 0;
};

RankView run_epoch(LoaderOptions options, int rank) {
  options.dp_rank = rank;
  options.num_epochs = 1;
  Loader loader(options);
  RankView view;
  while (auto batch = loader.next()) {
    ++view.steps;
    const int32_t* ids = batch->input_ids.data<int32_t>();
    for (int64_t i = 0; i < batch->input_ids.numel(); ++i)
      if (ids[i] >= 1000) view.documents.insert(ids[i] / 1000 - 1);
  }
  EXPECT_EQ(view.steps, loader.steps_per_epoch(0));
  return view;
}

class LoaderRanks : public ::testing::TestWithParam<std::tuple<int, BatchMode>> {};

TEST_P(LoaderRanks, RanksSeeDisjointRecordsAndEqualStepCounts) {
  const auto [ranks, mode] = GetParam();
  TempDir dir;
  // Uneven shards: 7, 2, 11 and 1 documents of assorted lengths (21 total).
  std::vector<std::vector<int>> lengths = {{3, 9, 4, 12, 5, 7, 2}, {15, 1}, {6, 6, 8, 3, 10, 4, 2, 9, 5, 7, 1}, {13}};
  LoaderOptions options;
  options.pattern = write_documents(dir, lengths);
  options.dp_size = ranks;
  options.batch_size = 2;
  options.seq_len = 8;
  options.eos_id = 1;
  options.mode = mode;
  options.shuffle_buffer = 4;
  options.seed = 11;
  std::vector<RankView> views;
  for (int rank = 0; rank < ranks; ++rank) views.push_back(run_epoch(options, rank));
  for (int a = 0; a < ranks; ++a) {
    EXPECT_GT(views[a].steps, 0);
    EXPECT_EQ(views[a].steps, views[0].steps) << "rank " << a;
    for (int b = a + 1; b < ranks; ++b)
      for (int document : views[a].documents)
        EXPECT_EQ(views[b].documents.count(document), 0u) << "document " << document << " on ranks " << a << ", " << b;
  }
}

INSTANTIATE_TEST_SUITE_P(TwoAndThreeRanks, LoaderRanks,
                         ::testing::Combine(::testing::Values(2, 3),
                                            ::testing::Values(BatchMode::kPacked, BatchMode::kPackedContiguous,
                                                              BatchMode::kPadded)));

// With one rank and no shuffling, contiguous packing sees every token of
// every document in order (the dropped tail aside).
TEST(LoaderContiguous, OneRankUnshuffledReadsTheStreamInOrder) {
  TempDir dir;
  LoaderOptions options;
  options.mode = BatchMode::kPackedContiguous;
  options.pattern = write_documents(dir, {{3, 4}, {5}});
  options.batch_size = 1;
  options.seq_len = 5;
  options.eos_id = 1;
  options.shuffle_buffer = 0;
  options.shuffle_shards = false;
  options.num_epochs = 1;
  Loader loader(options);
  std::vector<int32_t> stream;
  while (auto batch = loader.next()) {
    auto row = row_of(batch->input_ids, 0);
    stream.insert(stream.end(), row.begin(), row.end());
  }
  // 3+1 + 4+1 + 5+1 = 15 tokens: three rows of 5.
  EXPECT_EQ(stream, (std::vector<int32_t>{1000, 1001, 1002, 1, 2000, 2001, 2002, 2003, 1, 3000, 3001, 3002, 3003,
                                          3004, 1}));
}

// ---------------------------------------------------------------- errors ---

TEST(LoaderErrors, CorruptRecordIsReportedWithItsFileAtConstruction) {
  TempDir dir;
  std::string pattern = write_documents(dir, {{3, 4, 5}});
  std::string path = dir.file("train-00000-of-00001.tfrecord");
  std::string bytes = read_bytes(path);
  bytes[bytes.size() - 1] ^= 0x01;  // last record's data CRC
  write_bytes(path, bytes);
  LoaderOptions options;
  options.pattern = pattern;
  options.eos_id = 1;
  options.seq_len = 2;
  options.batch_size = 1;
  std::string message = bad_input_message([&] { Loader loader(options); });
  EXPECT_NE(message.find(path + ": record 2 at byte "), std::string::npos) << message;
  EXPECT_NE(message.find("data CRC mismatch"), std::string::npos) << message;
  // Skipping: the loader counts it and reads the rest.
  options.reader.skip_corrupt_records = true;
  Loader loader(options);
  EXPECT_EQ(loader.corrupt_records_skipped(), 1u);
  EXPECT_TRUE(loader.next());
}

TEST(LoaderErrors, TokenIdOutsideTheVocabularyNamesRecordAndPosition) {
  TempDir dir;
  std::string pattern = write_documents(dir, {{3, 4}});
  LoaderOptions options;
  options.pattern = pattern;
  options.eos_id = 1;
  options.vocab_size = 2002;
  options.seq_len = 2;
  options.batch_size = 1;
  std::string message = bad_input_message([&] { Loader loader(options); });
  // Record 0 (ids 1000..1002, two varint bytes each) is a 27-byte Example,
  // framed in 43 bytes; record 1 holds 2000..2003.
  EXPECT_NE(message.find(dir.file("train-00000-of-00001.tfrecord") + ": record 1 at byte 43: feature 'input_ids' "
                                                                     "position 2: token id 2002 is outside the "
                                                                     "vocabulary [0, 2002)"),
            std::string::npos)
      << message;
  options.reader.skip_corrupt_records = true;
  Loader skipping(options);
  EXPECT_EQ(skipping.corrupt_records_skipped(), 1u);
}

TEST(LoaderErrors, MissingFeatureAndBadOptionsAreReported) {
  TempDir dir;
  {
    RecordWriter writer(dir.file("train-00000-of-00001.tfrecord"));
    writer.write(encode_int64_features({{"tokens", {1, 2, 3}}}));
  }
  LoaderOptions options;
  options.files = {dir.file("train-00000-of-00001.tfrecord")};
  options.eos_id = 1;
  std::string message = bad_input_message([&] { Loader loader(options); });
  EXPECT_NE(message.find(": record 0 at byte 0: missing feature 'input_ids'"), std::string::npos) << message;
  options.names.input_ids = "tokens";
  options.batch_size = 0;
  EXPECT_EQ(bad_input_message([&] { Loader loader(options); }), "data.batch_size must be > 0, got 0");
  options.batch_size = 1;
  options.eos_id = -1;
  EXPECT_NE(bad_input_message([&] { Loader loader(options); }).find("data.eos_id = -1 is not a token id"),
            std::string::npos);
  options.eos_id = 1;
  options.seq_len = 100;
  options.batch_size = 2;  // one document makes one row
  EXPECT_NE(bad_input_message([&] { Loader loader(options); }).find("do not hold one step of 2 rows of 100 tokens"),
            std::string::npos);
  options.batch_size = 1;
  options.pack_window = 0;
  EXPECT_EQ(bad_input_message([&] { Loader loader(options); }), "data.pack_window must be >= 1, got 0");
}

// A fault injected in the middle of an epoch surfaces from next() on the
// consumer's thread with the file's name.
TEST(LoaderErrors, WorkerErrorsAreRethrownToTheConsumer) {
  TempDir dir;
  std::string pattern = write_documents(dir, {{30, 30, 30, 30, 30, 30, 30, 30}});
  testing::FaultyFileSystem faulty;
  faulty.max_chunk = 64;
  LoaderOptions options;
  options.pattern = pattern;
  options.num_epochs = 1;
  options.eos_id = 1;
  options.seq_len = 31;
  options.batch_size = 1;
  options.shuffle_buffer = 0;
  options.reader.buffer_bytes = 64;
  options.prefetch_batches = 2;
  // The index pass opens the shard once and reads it whole; the epoch pass
  // opens it again, and that file fails after its first 128 bytes (two reads).
  faulty.healthy_opens = 1;
  faulty.fail_after = 100;
  Loader loader(options, faulty);
  try {
    while (loader.next()) {
    }
    FAIL() << "expected the injected failure";
  } catch (const Error& error) {
    EXPECT_EQ(error.kind(), ErrorKind::kRuntime);
    EXPECT_NE(std::string(error.what()).find("train-00000-of-00001.tfrecord: injected read failure"),
              std::string::npos)
        << error.what();
  }
}

TEST(LoaderErrors, StateOfAnotherConfigurationIsRejected) {
  TempDir dir;
  LoaderOptions options;
  options.pattern = write_documents(dir, {{5, 5, 5, 5}});
  options.eos_id = 1;
  options.seq_len = 4;
  options.batch_size = 1;
  options.dp_size = 2;
  std::string state;
  {
    Loader loader(options);
    loader.next();
    state = loader.state();
  }
  options.dp_rank = 1;
  EXPECT_EQ(bad_input_message([&] { Loader loader(options, state); }),
            "loader state: dp_rank is 0 but this loader has 1; resume with the options of the run that saved the "
            "state");
  options.dp_rank = 0;
  EXPECT_NE(bad_input_message([&] { Loader loader(options, "{not json"); }).find("loader state: not valid JSON"),
            std::string::npos);
}

// ---------------------------------------------------------------- resume ---

// Resuming at another data-parallel size (RedealPosition): dp 2 x batch 3
// and dp 3 x batch 2 both take 6 padded rows per step, i.e. records
// 6s .. 6s + 5 (no shuffle buffer), so after 2 steps the merged position of
// the dp 2 ranks is where an uninterrupted dp 3 run stands: its later
// batches, across an epoch boundary and shards, are the uninterrupted ones.
TEST(LoaderRedeal, MergedStatesOfTwoRanksContinueAsAThreeRankRun) {
  TempDir dir;
  LoaderOptions options;
  options.pattern = write_documents(dir, {{3, 4, 2, 5, 3, 4, 2, 3, 4}, {5, 3, 4, 2, 3, 3, 4, 2}, {4, 4, 3, 2, 3}});
  options.eos_id = 1;
  options.seq_len = 8;
  options.mode = BatchMode::kPadded;
  options.shuffle_buffer = 0;
  options.seed = 3;
  auto loader_options = [&](int rank, int size, int64_t batch) {
    LoaderOptions o = options;
    o.dp_rank = rank;
    o.dp_size = size;
    o.batch_size = batch;
    return o;
  };
  std::vector<std::string> states;
  for (int rank = 0; rank < 2; ++rank) {
    Loader loader(loader_options(rank, 2, 3));
    loader.next();
    loader.next();
    states.push_back(loader.state());
  }
  const RedealPosition position = merge_loader_states(states, "state.json");
  EXPECT_EQ(position.epoch, 0);
  EXPECT_EQ(position.step_in_epoch, 2);
  EXPECT_EQ(position.records, 12u);
  EXPECT_EQ(position.read_ahead, 0u);
  for (int rank = 0; rank < 3; ++rank) {
    Loader uninterrupted(loader_options(rank, 3, 2));
    uninterrupted.next();
    uninterrupted.next();
    Loader continued(loader_options(rank, 3, 2), position);
    for (int step = 0; step < 6; ++step) {  // past the epoch's 3 steps
      const std::optional<Batch> want = uninterrupted.next(), got = continued.next();
      ASSERT_TRUE(want && got);
      EXPECT_EQ(flatten(*got), flatten(*want)) << "rank " << rank << ", step " << step + 2;
      EXPECT_EQ(got->epoch, want->epoch);
      EXPECT_EQ(got->step_in_epoch, want->step_in_epoch);
    }
  }
  // States of other data, and unreadable ones, are one-line errors.
  EXPECT_EQ(bad_input_message([&] {
              LoaderOptions other = loader_options(0, 3, 2);
              other.seed = 4;
              Loader loader(other, position);
            }).find("loader state: saved with other files, seed or shard shuffling"),
            0u);
  EXPECT_EQ(bad_input_message([&] { merge_loader_states({states[0], "{"}, "ckpt/state.json"); })
                .find("ckpt/state.json: the loader state of data-parallel rank 1 is not valid"),
            0u);
  // With a shuffle buffer the documents read ahead are counted (not replayed):
  // a buffer of 4 refilled before each of a batch's 3 draws holds 3 after it.
  options.shuffle_buffer = 4;
  std::vector<std::string> shuffled;
  for (int rank = 0; rank < 2; ++rank) {
    Loader loader(loader_options(rank, 2, 3));
    loader.next();
    shuffled.push_back(loader.state());
  }
  EXPECT_EQ(merge_loader_states(shuffled, "state.json").read_ahead, 6u);
}

// Stops each rank of a 2-rank setup mid-epoch (mid-shard, with documents in
// the shuffle buffer and a partly packed document or planned best-fit rows),
// restores a new loader from its state, and compares every later batch,
// across an epoch boundary, with an uninterrupted loader.
class LoaderResume : public ::testing::TestWithParam<std::tuple<std::string, size_t, BatchMode>> {};

TEST_P(LoaderResume, RestoredLoaderYieldsExactlyTheRemainingBatches) {
  const auto [extension, prefetch, mode] = GetParam();
  TempDir dir;
  std::vector<std::vector<int>> lengths;
  for (int shard = 0; shard < 3; ++shard) {
    std::vector<int> shard_lengths;
    for (int d = 0; d < 12 + 3 * shard; ++d) shard_lengths.push_back(3 + (d * 7 + shard * 5) % 17);
    lengths.push_back(shard_lengths);
  }
  LoaderOptions options;
  options.pattern = write_documents(dir, lengths, extension);
  options.dp_size = 2;
  options.batch_size = 2;
  options.seq_len = 10;
  options.eos_id = 1;
  options.shuffle_buffer = 5;
  options.seed = 1234;
  options.num_epochs = 3;
  options.prefetch_batches = prefetch;
  options.reader.buffer_bytes = 128;  // many refills, so positions fall mid-buffer
  options.mode = mode;
  options.pack_window = 6;  // several best-fit windows per epoch
  options.long_documents = LongDocuments::kSplit;  // lengths reach 19 > seq_len: pieces of one document

  for (int rank = 0; rank < 2; ++rank) {
    options.dp_rank = rank;
    std::vector<std::vector<std::vector<int32_t>>> uninterrupted;
    {
      Loader loader(options);
      while (auto batch = loader.next()) uninterrupted.push_back(flatten(*batch));
    }
    const int64_t steps = static_cast<int64_t>(uninterrupted.size());
    ASSERT_GT(steps, 6) << "rank " << rank;
    const int64_t first_epoch = Loader(options).steps_per_epoch(0);
    // Mid-epoch stops, and one exactly at the end of epoch 0.
    for (int64_t stop : {int64_t{1}, int64_t{3}, steps / 2, first_epoch, steps - 1}) {
      Loader first(options);
      for (int64_t i = 0; i < stop; ++i) ASSERT_TRUE(first.next());
      const std::string state = first.state();
      nlohmann::json json = nlohmann::json::parse(state);
      if (stop == 3) {
        // Mid-epoch, mid-shard, with a non-empty shuffle buffer and a partly
        // packed document (contiguous) or rows planned but not yet emitted.
        EXPECT_EQ(json["epoch"], 0);
        EXPECT_GT(json["reader_record_index"].get<uint64_t>(), 0u) << state;
        EXPECT_FALSE(json["shuffle_buffer_records"].empty()) << state;
        if (mode == BatchMode::kPackedContiguous) EXPECT_FALSE(json["current_document"].is_null()) << state;
        if (mode == BatchMode::kPacked) EXPECT_FALSE(json["pending_rows"].empty()) << state;
      }
      Loader resumed(options, state);
      EXPECT_EQ(resumed.state(), state);
      for (int64_t i = stop; i < steps; ++i) {
        auto batch = resumed.next();
        ASSERT_TRUE(batch) << "rank " << rank << " stop " << stop << " step " << i;
        ASSERT_EQ(flatten(*batch), uninterrupted[static_cast<size_t>(i)])
            << "rank " << rank << " stop " << stop << " step " << i;
      }
      EXPECT_FALSE(resumed.next());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    PlainGzipPrefetch, LoaderResume,
    ::testing::Values(std::make_tuple(std::string(".tfrecord"), size_t{0}, BatchMode::kPacked),
                      std::make_tuple(std::string(".tfrecord"), size_t{3}, BatchMode::kPacked),
                      std::make_tuple(std::string(".tfrecord.gz"), size_t{2}, BatchMode::kPacked),
                      std::make_tuple(std::string(".tfrecord"), size_t{0}, BatchMode::kPackedContiguous),
                      std::make_tuple(std::string(".tfrecord"), size_t{3}, BatchMode::kPackedContiguous),
                      std::make_tuple(std::string(".tfrecord.gz"), size_t{2}, BatchMode::kPackedContiguous),
                      std::make_tuple(std::string(".tfrecord"), size_t{2}, BatchMode::kPadded)));

// A state saved before best-fit packing existed (the contiguous packer's, with
// "mode": "packed" and none of the newer fields) resumes with
// PACKED_CONTIGUOUS, and is refused with the reason by PACKED.
TEST(LoaderResumeCompatibility, OldContiguousStateResumesWithPackedContiguousOnly) {
  TempDir dir;
  LoaderOptions options;
  options.pattern = write_documents(dir, {{5, 9, 3, 7, 4, 8, 6, 2, 5, 7}});
  options.mode = BatchMode::kPackedContiguous;
  options.eos_id = 1;
  options.seq_len = 6;
  options.batch_size = 1;
  options.shuffle_buffer = 3;
  options.num_epochs = 1;
  std::vector<std::vector<std::vector<int32_t>>> uninterrupted;
  {
    Loader loader(options);
    while (auto batch = loader.next()) uninterrupted.push_back(flatten(*batch));
  }
  Loader first(options);
  for (int i = 0; i < 3; ++i) first.next();
  nlohmann::json old_state = nlohmann::json::parse(first.state());
  ASSERT_EQ(old_state["mode"], "packed");
  for (const char* newer : {"long_documents", "pack_window", "drop_remainder", "pending_rows"}) old_state.erase(newer);
  Loader resumed(options, old_state.dump());
  for (size_t i = 3; i < uninterrupted.size(); ++i) {
    auto batch = resumed.next();
    ASSERT_TRUE(batch);
    EXPECT_EQ(flatten(*batch), uninterrupted[i]) << "step " << i;
  }
  options.mode = BatchMode::kPacked;
  EXPECT_EQ(bad_input_message([&] { Loader loader(options, old_state.dump()); }),
            "loader state: saved by the contiguous packer (batch_mode PACKED before best-fit packing became the "
            "default); resume it with data.batch_mode: PACKED_CONTIGUOUS");
}

TEST(LoaderShuffle, EpochsDifferAndSeedsReproduce) {
  TempDir dir;
  LoaderOptions options;
  options.pattern = write_documents(dir, {{4, 4, 4, 4, 4, 4}, {4, 4, 4, 4, 4, 4}});
  options.batch_size = 1;
  options.seq_len = 5;
  options.eos_id = 1;
  options.shuffle_buffer = 4;
  options.seed = 5;
  options.num_epochs = 2;
  auto first_tokens = [&](uint64_t seed) {
    options.seed = seed;
    Loader loader(options);
    std::vector<int32_t> firsts;
    while (auto batch = loader.next()) firsts.push_back(batch->input_ids.data<int32_t>()[0]);
    return firsts;
  };
  auto run = first_tokens(5);
  ASSERT_EQ(run.size(), 24u);
  EXPECT_EQ(first_tokens(5), run);
  EXPECT_NE(first_tokens(6), run);
  EXPECT_NE(std::vector<int32_t>(run.begin(), run.begin() + 12), std::vector<int32_t>(run.begin() + 12, run.end()));
  std::vector<int32_t> epoch0(run.begin(), run.begin() + 12);
  std::sort(epoch0.begin(), epoch0.end());
  for (int d = 0; d < 12; ++d) EXPECT_EQ(epoch0[d], 1000 * (d + 1)) << "each document once per epoch";
}

}  // namespace
}  // namespace llmft::data
