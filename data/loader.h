// Sharded, shuffling, resumable training-data loader over TFRecord shards of
// token tf.Examples (data/example.h).
//
// Shards. Input is a glob (`data/train-*-of-00008.tfrecord`) or a list. Files
// named `<prefix>-NNNNN-of-MMMMM<suffix>` (TensorFlow's `%s-%05d-of-%05d`,
// zero-based) must form one complete set: a missing shard, an index >= the
// total, mixed totals or a stray file that is not part of the set are errors
// naming the file. Files not named as shards are read in sorted order.
//
// Index pass. At construction every rank reads every shard once (CRCs on)
// and records each record's token count. Corruption is therefore reported
// before training starts; with skip_corrupt_records the bad records are
// counted (corrupt_records_skipped()) and left out identically on all ranks.
//
// Data parallelism: records are dealt round-robin. Each epoch has one global
// order: the shards in that epoch's shuffled order (same on every rank), the
// valid records of each shard in file order. Valid record g goes to rank
// g % dp_size, so ranks never share a record within an epoch. Every rank
// reads every shard but decodes only its own records.
//
// Equal steps: from the index each rank computes, without communicating,
// how many complete batches every rank's share of the epoch fills, and all
// ranks stop the epoch after the minimum of those (steps_per_epoch()). The
// tail beyond it (at most a few batches' worth on the largest rank, plus the
// partial row and batch) is dropped for that epoch; the next epoch deals
// afresh with a new shard order. Best-fit rows depend on the order the
// shuffle buffer yields, which depends only on the token counts and the
// (seed, epoch, rank) stream, so each rank replays every rank's shuffle and
// packing from the index to count its rows.
//
// Shuffling: per epoch, the shard order is a Philox-seeded Fisher-Yates
// permutation (seed, epoch); each rank then passes its records through a
// shuffle buffer of `shuffle_buffer` documents seeded by (seed, epoch, rank):
// fill the buffer, emit a uniformly chosen document, refill (tf.data's
// shuffle). A buffer of 0 or 1 keeps the dealt order.
//
// Batches are int32 [batch_size, seq_len] host tensors:
//   input_ids     token ids
//   targets       the next token's label, or -100 (no loss): the next token
//                 belongs to another document, is padding, or is a prompt
//                 token (loss_mask 0 / labels -100: loss on completions only)
//   position_ids  position within the current document segment
//   doc_start     row index of the first token of the current segment, so
//                 attention for row position t spans [doc_start[t], t] and
//                 never crosses documents
// Documents are each followed by eos_id when append_eos. Three layouts:
//   PACKED (default, kPacked): best-fit decreasing (data/packing.h) over
//     windows of `pack_window` documents drawn from the shuffle buffer: whole
//     documents share rows, each a segment starting at position 0, the rest
//     of a row is padding. With shuffling on, a window's rows are emitted in
//     a shuffled order (the rows best fit makes first hold the longest
//     documents). A document longer than seq_len is truncated, split into
//     seq_len pieces (each its own segment) or dropped (`long_documents`).
//   PACKED_CONTIGUOUS (kPackedContiguous): documents concatenated and cut
//     into rows of seq_len tokens, the pre-training layout. A document cut by
//     a row boundary continues in the next row as a new segment (positions
//     restart at 0 there; the target of a row's last token is still the
//     document's next token). `long_documents` does not apply.
//   PADDED (kPadded): one document (or piece, see `long_documents`) per row.
// Padding is pad_id with target -100, position 0 and doc_start = own index.
// A truncated document's or a piece's last token keeps the document's next
// token as its target, as in PACKED_CONTIGUOUS.
//
// Partial batches: with drop_remainder (training) an epoch ends at the last
// batch every rank fills (above). Without it (evaluation) every rank yields
// the most batches any rank's share fills, the last partial row and batch
// padded, and ranks whose share ended yield rows of padding, so every token
// of the split is seen exactly once and the ranks still take equal steps.
//
// Labels: with a `labels` feature the label of token k is labels[k]; with a
// `loss_mask` feature it is input_ids[k] where the mask is 1 and -100 where
// it is 0; otherwise input_ids[k]. The appended EOS is labelled eos_id unless
// the document's last token is unlabelled (-100).
//
// Resume: state() is the position after the last batch returned by next()
// (epoch, step, shard cursor and reader position, records dealt, shuffle
// buffer contents, shuffle RNG position, the partly consumed document of
// the contiguous packer, and the rows best fit planned but not yet emitted). Buffered documents are stored as record references (shard,
// byte offset, record index) and re-read on restore, so the state stays
// small. A loader built with the same options and that state yields exactly
// the batches the original would have yielded next.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "data/example.h"
#include "data/file_system.h"
#include "data/packing.h"
#include "data/tfrecord.h"

namespace llmft::data {

// Expands a glob and validates the shard set (see above); returns the files
// in shard order. Throws llmft::Error (kBadInput) naming the problem file.
std::vector<std::string> expand_shard_pattern(const std::string& pattern, FileSystem& file_system);
// Validates an explicit list the same way; returns it in shard order.
std::vector<std::string> validate_shard_set(std::vector<std::string> files);

enum class BatchMode { kPacked, kPackedContiguous, kPadded };
// "packed", "packed_contiguous", "padded" (messages and `llmft data inspect`).
const char* batch_mode_name(BatchMode mode);

struct LoaderOptions {
  std::string pattern;             // glob of shards; or, when empty, `files`
  std::vector<std::string> files;
  int64_t batch_size = 8;          // rows per rank per step
  int64_t seq_len = 1024;          // tokens per row
  BatchMode mode = BatchMode::kPacked;
  LongDocuments long_documents = LongDocuments::kTruncate;  // kPacked and kPadded
  size_t pack_window = 1024;       // documents per best-fit window (kPacked), >= 1
  bool drop_remainder = true;      // false: pad the last row and batch instead (see above)
  int64_t eos_id = -1;             // document separator; required when append_eos
  bool append_eos = true;
  int64_t pad_id = 0;              // padding (not used by kPackedContiguous with drop_remainder)
  int64_t vocab_size = 0;          // > 0: token ids must lie in [0, vocab_size)
  int dp_rank = 0;
  int dp_size = 1;
  uint64_t seed = 0;
  bool shuffle_shards = true;
  size_t shuffle_buffer = 1024;    // documents; 0 or 1 disables record shuffling
  int64_t num_epochs = 0;          // 0: repeat forever
  size_t prefetch_batches = 2;     // bounded queue of the background thread; 0: no thread
  ExampleFeatureNames names;
  RecordReaderOptions reader;      // CRC checks, skip_corrupt_records, compression
};

struct Batch {
  Tensor input_ids;     // i32 [B, T]
  Tensor targets;       // i32 [B, T], -100 = no loss
  Tensor position_ids;  // i32 [B, T]
  Tensor doc_start;     // i32 [B, T]
  int64_t epoch = 0;
  int64_t step_in_epoch = 0;  // 0-based index of this batch within its epoch
  // What the batch holds (this rank): positions holding a document's token
  // (the rest is padding), records whose first token is in it, and rows with
  // at least one token.
  int64_t real_tokens = 0;
  int64_t records = 0;
  int64_t rows_with_tokens = 0;
};

// The split as the index pass saw it (every rank sees the same): valid
// records of one epoch and their tokens (appended EOS included), the longest,
// and how many are longer than seq_len with the tokens beyond seq_len.
struct DataStats {
  uint64_t records = 0;
  uint64_t tokens = 0;
  int64_t longest = 0;
  uint64_t long_records = 0;
  uint64_t tokens_beyond_seq_len = 0;
};
// "12 of 1,500 records are longer than seq_len 80: truncated (1,234 tokens
// left out)", or empty when none is (or the layout cuts them anyway).
std::string long_documents_report(const DataStats& stats, const LoaderOptions& options);

// A record by location: shard (index into files()), byte offset, record index.
struct RecordRef {
  uint32_t shard = 0;
  uint64_t offset = 0;
  uint64_t record_index = 0;
  bool operator==(const RecordRef&) const = default;
};

// A planned row's piece of a document: tokens [begin, end) of a record.
struct PieceRef {
  RecordRef record;
  uint64_t begin = 0;
  uint64_t end = 0;
  bool operator==(const PieceRef&) const = default;
};

struct LoaderState {
  int64_t epoch = 0;
  int64_t step_in_epoch = 0;
  uint64_t shard_cursor = 0;        // position in this epoch's shard order
  RecordPosition reader_position;   // next record to read in that shard
  uint64_t records_dealt = 0;       // valid records of this epoch passed so far (all ranks)
  std::vector<RecordRef> shuffle_buffer;
  uint64_t shuffle_rng_position = 0;
  std::optional<RecordRef> current_document;  // partly packed document
  uint64_t current_token = 0;                 // its next unconsumed token
  std::vector<std::vector<PieceRef>> pending_rows;  // planned rows not yet emitted, in order
  bool operator==(const LoaderState&) const = default;
};

class LoaderPipeline;

// Where a run saved at another data-parallel size goes on (Megatron's
// consumed-samples rule applied to the record stream): the saved ranks'
// positions merge into the furthest one of the epoch's dealt order (record g
// of the epoch went to rank g % dp), and every rank of the new size deals on
// from there. Exact when the saved ranks had read nothing ahead of what they
// had trained on (no shuffle buffer, no planned rows pending: padded rows, or
// packing windows that end at the checkpoint); otherwise the documents they
// held read ahead (at most shuffle_buffer + pack_window per saved rank) are
// not replayed.
struct RedealPosition {
  int64_t epoch = 0;
  int64_t step_in_epoch = 0;  // optimizer steps of the epoch taken (the same on every saved rank)
  uint64_t records = 0;       // valid records of the epoch already dealt
  size_t read_ahead = 0;      // documents held in shuffle buffers and planned rows (not replayed)
  // What the order of records depends on: the new loader must have the same.
  std::vector<std::string> files;
  uint64_t seed = 0;
  bool shuffle_shards = true;
};
// Merges the states of a checkpoint's data-parallel ranks (each made by
// Loader::state()). kBadInput naming `source` for an unreadable state or
// states of different files or seeds.
RedealPosition merge_loader_states(const std::vector<std::string>& states, const std::string& source);

class Loader {
 public:
  explicit Loader(LoaderOptions options, FileSystem& file_system = local_file_system());
  // Starts this rank (options.dp_rank of options.dp_size) at a merged
  // position of another layout (see RedealPosition); the files, seed and
  // shard shuffling must be the ones the position was saved with.
  Loader(LoaderOptions options, const RedealPosition& position, FileSystem& file_system = local_file_system());
  // Resumes from a string made by state(); the options must match those of
  // the loader that made it (checked: files, ranks, seed, shapes, mode).
  Loader(LoaderOptions options, const std::string& state, FileSystem& file_system = local_file_system());
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch, or nullopt after num_epochs epochs. Errors of the
  // background thread are rethrown here, unchanged (llmft::Error with file
  // and record).
  std::optional<Batch> next();
  // Serialised (JSON) position after the last batch next() returned.
  std::string state() const;

  int64_t steps_per_epoch(int64_t epoch) const;
  uint64_t corrupt_records_skipped() const;
  const DataStats& stats() const;
  const LoaderOptions& options() const;
  const std::vector<std::string>& files() const;

 private:
  struct Item {
    std::optional<Batch> batch;
    LoaderState state;
    std::exception_ptr error;
  };
  void start_worker();
  void run_worker();

  std::unique_ptr<LoaderPipeline> pipeline_;
  LoaderState consumer_state_;
  bool finished_ = false;

  size_t queue_capacity_ = 0;
  std::thread worker_;
  mutable std::mutex mutex_;
  std::condition_variable queue_changed_;
  std::deque<Item> queue_;
  bool stopping_ = false;
};

}  // namespace llmft::data
