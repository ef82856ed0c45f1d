#include "data/loader.h"

#include <algorithm>
#include <climits>
#include <deque>
#include <span>
#include <limits>
#include <map>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"
#include "core/philox.h"

namespace llmft::data {

// ------------------------------------------------------------ shard sets ---

namespace {

struct ShardName {
  std::string prefix;  // everything before "-NNNNN-of-MMMMM"
  std::string suffix;  // everything after it (extension)
  uint64_t index = 0;
  uint64_t total = 0;
  int index_digits = 5;
  int total_digits = 5;
};

std::optional<ShardName> parse_shard_name(const std::string& path) {
  static const std::regex kShard(R"(^(.*)-([0-9]{5,})-of-([0-9]{5,})([^/]*)$)");
  std::smatch match;
  if (!std::regex_match(path, match, kShard)) return std::nullopt;
  ShardName name;
  name.prefix = match[1];
  name.index = std::stoull(match[2]);
  name.total = std::stoull(match[3]);
  name.index_digits = static_cast<int>(match[2].length());
  name.total_digits = static_cast<int>(match[3].length());
  name.suffix = match[4];
  return name;
}

std::string shard_path(const ShardName& like, uint64_t index) {
  char digits[32], total[32];
  std::snprintf(digits, sizeof(digits), "%0*llu", like.index_digits, static_cast<unsigned long long>(index));
  std::snprintf(total, sizeof(total), "%0*llu", like.total_digits, static_cast<unsigned long long>(like.total));
  return str_cat(like.prefix, "-", digits, "-of-", total, like.suffix);
}

}  // namespace

std::vector<std::string> validate_shard_set(std::vector<std::string> files) {
  if (files.empty()) throw_bad_input("data: no input files given");
  std::vector<std::optional<ShardName>> names;
  for (const auto& file : files) names.push_back(parse_shard_name(file));
  auto first_named = std::find_if(names.begin(), names.end(), [](const auto& name) { return name.has_value(); });
  if (first_named == names.end()) {
    std::sort(files.begin(), files.end());
    for (size_t i = 1; i < files.size(); ++i)
      if (files[i] == files[i - 1]) throw_bad_input(files[i], ": listed twice in the data files");
    return files;
  }
  const ShardName& reference = **first_named;
  const std::string reference_path = files[static_cast<size_t>(first_named - names.begin())];
  std::map<uint64_t, std::string> by_index;  // a map: the total comes from a file name and may be huge
  for (size_t i = 0; i < files.size(); ++i) {
    if (!names[i])
      throw_bad_input(files[i], ": not part of the shard set ", shard_path(reference, 0), " ... (every file must be "
                      "named <prefix>-NNNNN-of-", reference.total, reference.suffix, ")");
    const ShardName& name = *names[i];
    if (name.prefix != reference.prefix || name.suffix != reference.suffix)
      throw_bad_input(files[i], ": belongs to another shard set than ", reference_path);
    if (name.total != reference.total)
      throw_bad_input(files[i], ": mixed shard totals: this file says ", name.total, " shards, ", reference_path,
                      " says ", reference.total);
    if (name.index >= name.total)
      throw_bad_input(files[i], ": extra shard: index ", name.index, " is not below the total of ", name.total,
                      " (shards are numbered from 0)");
    if (by_index.count(name.index))
      throw_bad_input(files[i], ": shard ", name.index, " appears twice (also ", by_index[name.index], ")");
    by_index[name.index] = files[i];
  }
  // Every index below the total is present once, so the map is 0 .. total-1 when complete.
  uint64_t expected_index = 0;
  for (const auto& [index, file] : by_index) {
    if (index != expected_index) break;
    ++expected_index;
  }
  if (expected_index != reference.total)
    throw_bad_input("missing shard ", shard_path(reference, expected_index), " (found ", files.size(), " of ",
                    reference.total, " shards of ", shard_path(reference, 0), ")");
  std::vector<std::string> in_order;
  for (auto& [index, file] : by_index) in_order.push_back(std::move(file));
  return in_order;
}

std::vector<std::string> expand_shard_pattern(const std::string& pattern, FileSystem& file_system) {
  std::vector<std::string> files = file_system.glob(pattern);
  if (files.empty()) throw_bad_input(pattern, ": no files match this data pattern");
  return validate_shard_set(std::move(files));
}

// -------------------------------------------------------------- pipeline ---

const char* batch_mode_name(BatchMode mode) {
  switch (mode) {
    case BatchMode::kPacked:
      return "packed";
    case BatchMode::kPackedContiguous:
      return "packed_contiguous";
    case BatchMode::kPadded:
      return "padded";
  }
  return "?";
}

std::string long_documents_report(const DataStats& stats, const LoaderOptions& options) {
  if (stats.long_records == 0 || options.mode == BatchMode::kPackedContiguous) return "";
  std::string report = str_cat(stats.long_records, " of ", stats.records, " records are longer than seq_len ",
                               options.seq_len, " (longest ", stats.longest, " tokens): ");
  switch (options.long_documents) {
    case LongDocuments::kTruncate:
      return str_cat(report, "truncated, ", stats.tokens_beyond_seq_len, " tokens left out");
    case LongDocuments::kSplit:
      return str_cat(report, "split into pieces of seq_len tokens");
    case LongDocuments::kDrop:
      return str_cat(report, "dropped");
  }
  return report;
}

namespace {

// SplitMix64 (Steele, Lea, Flood, "Fast Splittable Pseudorandom Number
// Generators", 2014): turns (seed, epoch, rank, stream) into unrelated Philox
// keys, so each epoch and rank has its own reproducible stream.
uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t stream_seed(uint64_t seed, uint64_t epoch, uint64_t rank, uint64_t stream) {
  return splitmix64(splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ rank) ^ stream);
}
constexpr uint64_t kShardOrderStream = 1;
constexpr uint64_t kShuffleStream = 2;

struct Document {
  RecordRef ref;
  std::vector<int32_t> tokens;  // input ids, EOS appended when configured
  std::vector<int32_t> labels;  // label of each token (see loader.h), -100 = no loss
};

// tf.data's shuffle buffer: fill up to `capacity` from `next`, emit a
// uniformly chosen item. The loader runs it on documents and, to count rows
// without reading them, on token counts: the same draws either way.
template <class Item, class Next>
std::optional<Item> draw_shuffled(std::vector<Item>& buffer, size_t capacity, PhiloxGenerator& random, Next&& next) {
  while (buffer.size() < capacity) {
    std::optional<Item> item = next();
    if (!item) break;
    buffer.push_back(std::move(*item));
  }
  if (buffer.empty()) return std::nullopt;
  const uint64_t pick = random.next_below(buffer.size());
  std::swap(buffer[pick], buffer.back());
  Item item = std::move(buffer.back());
  buffer.pop_back();
  return item;
}

// Best-fit rows of one window's pieces, in the order they are emitted.
std::vector<std::vector<size_t>> plan_window_rows(std::span<const int64_t> lengths, int64_t seq_len, bool shuffle,
                                                  PhiloxGenerator& random) {
  std::vector<std::vector<size_t>> rows = best_fit_decreasing(lengths, seq_len);
  if (shuffle)  // Fisher-Yates
    for (size_t i = rows.size(); i > 1; --i) std::swap(rows[i - 1], rows[random.next_below(i)]);
  return rows;
}

}  // namespace

class LoaderPipeline {
 public:
  LoaderPipeline(LoaderOptions options, FileSystem& file_system)
      : options_(std::move(options)), file_system_(file_system) {
    validate_options();
    files_ = options_.pattern.empty() ? validate_shard_set(options_.files)
                                      : expand_shard_pattern(options_.pattern, file_system_);
    decode_options_.names = options_.names;
    decode_options_.vocab_size = options_.vocab_size;
    build_index();
    start_epoch(0);
  }

  const LoaderOptions& options() const { return options_; }
  const std::vector<std::string>& files() const { return files_; }
  uint64_t corrupt_records_skipped() const { return corrupt_records_skipped_; }
  const DataStats& stats() const { return stats_; }

  // Steps of `epoch`, or of its records from dealt index `first_record` on
  // (a position merged from another layout, RedealPosition).
  int64_t steps_per_epoch(int64_t epoch, uint64_t first_record = 0) const {
    const std::vector<uint32_t> order = shard_order(epoch);
    const uint64_t batch = static_cast<uint64_t>(options_.batch_size);
    uint64_t steps = options_.drop_remainder ? std::numeric_limits<uint64_t>::max() : 0;
    for (int rank = 0; rank < options_.dp_size; ++rank) {
      const uint64_t rows = rows_of_rank(epoch, order, rank, first_record);
      steps = options_.drop_remainder ? std::min(steps, rows / batch) : std::max(steps, (rows + batch - 1) / batch);
    }
    return static_cast<int64_t>(steps);
  }

  // The next batch, or nullopt after the last epoch.
  std::optional<Batch> produce() {
    while (step_ >= epoch_steps_) {
      if (options_.num_epochs > 0 && epoch_ + 1 >= options_.num_epochs) return std::nullopt;
      start_epoch(epoch_ + 1);
    }
    const int64_t rows = options_.batch_size, columns = options_.seq_len;
    Batch batch;
    batch.input_ids = Tensor::empty_cpu({rows, columns}, DType::kI32);
    batch.targets = Tensor::empty_cpu({rows, columns}, DType::kI32);
    batch.position_ids = Tensor::empty_cpu({rows, columns}, DType::kI32);
    batch.doc_start = Tensor::empty_cpu({rows, columns}, DType::kI32);
    batch.epoch = epoch_;
    batch.step_in_epoch = step_;
    for (int64_t row = 0; row < rows; ++row) {
      Row out{batch.input_ids.data<int32_t>() + row * columns, batch.targets.data<int32_t>() + row * columns,
              batch.position_ids.data<int32_t>() + row * columns, batch.doc_start.data<int32_t>() + row * columns};
      const int64_t before = batch.real_tokens;
      if (options_.mode == BatchMode::kPackedContiguous)
        fill_contiguous_row(out, batch);
      else
        fill_planned_row(out, batch);
      if (batch.real_tokens > before) ++batch.rows_with_tokens;
    }
    ++step_;
    return batch;
  }

  LoaderState snapshot() const {
    LoaderState state;
    state.epoch = epoch_;
    state.step_in_epoch = step_;
    state.shard_cursor = shard_cursor_;
    state.reader_position = reader_ ? reader_->position() : reader_position_;
    state.records_dealt = records_dealt_;
    for (const Document& document : buffer_) state.shuffle_buffer.push_back(document.ref);
    state.shuffle_rng_position = shuffle_rng_.position();
    if (current_ && current_token_ < current_->tokens.size()) {
      state.current_document = current_->ref;
      state.current_token = current_token_;
    }
    for (const PlannedRow& row : pending_rows_) {
      std::vector<PieceRef>& pieces = state.pending_rows.emplace_back();
      for (const Piece& piece : row) pieces.push_back({piece.document->ref, piece.begin, piece.end});
    }
    return state;
  }

  // A position merged from another layout: the epoch's stream from dealt
  // record `position.records` on, nothing buffered, a fresh shuffle stream.
  void restore_redealt(const RedealPosition& position) {
    if (position.epoch < 0 || (options_.num_epochs > 0 && position.epoch >= options_.num_epochs))
      throw_bad_input("loader state: epoch ", position.epoch, " is outside the configured ", options_.num_epochs,
                      " epochs");
    if (position.files != files_ || position.seed != options_.seed || position.shuffle_shards != options_.shuffle_shards)
      throw_bad_input("loader state: saved with other files, seed or shard shuffling than this loader has (",
                      files_.size(), " file(s) from ", files_.front(), ", seed ", options_.seed,
                      "); resume with the data of the run that saved it");
    start_epoch(position.epoch);
    // Find the shard and record index of the epoch's valid record number
    // `records` (the index counts every record; negative entries are left out).
    uint64_t before = 0;
    shard_cursor_ = order_.size();
    for (size_t cursor = 0; cursor < order_.size(); ++cursor) {
      const std::vector<int32_t>& counts = index_[order_[cursor]];
      uint64_t valid = 0;
      for (int32_t tokens : counts) valid += tokens >= 0 ? 1 : 0;
      if (before + valid <= position.records) {
        before += valid;
        continue;
      }
      shard_cursor_ = cursor;
      uint64_t target = 0;  // record index of the wanted record in this shard
      for (uint64_t seen = 0;; ++target)
        if (counts[target] >= 0 && seen++ == position.records - before) break;
      reader_position_ = {};
      if (target > 0) {
        // Byte offsets are not indexed: read up to the wanted record.
        RecordReader reader(files_[order_[cursor]], options_.reader, file_system_);
        std::string_view bytes;
        while (reader.read(bytes) && reader.last_record_position().record_index + 1 < target) {
        }
        reader_position_ = reader.position();
      }
      break;
    }
    records_dealt_ = position.records;
    step_ = position.step_in_epoch;
    epoch_steps_ = step_ + steps_per_epoch(position.epoch, position.records);
  }

  void restore(const LoaderState& state) {
    if (state.epoch < 0 || (options_.num_epochs > 0 && state.epoch >= options_.num_epochs))
      throw_bad_input("loader state: epoch ", state.epoch, " is outside the configured ", options_.num_epochs,
                      " epochs");
    start_epoch(state.epoch);
    if (state.step_in_epoch < 0 || state.step_in_epoch > epoch_steps_)
      throw_bad_input("loader state: step ", state.step_in_epoch, " is outside epoch ", state.epoch, " of ",
                      epoch_steps_, " steps");
    if (state.shard_cursor > order_.size())
      throw_bad_input("loader state: shard cursor ", state.shard_cursor, " exceeds the ", order_.size(), " shards");
    step_ = state.step_in_epoch;
    shard_cursor_ = state.shard_cursor;
    reader_position_ = state.reader_position;
    records_dealt_ = state.records_dealt;
    shuffle_rng_ = PhiloxGenerator(shuffle_rng_.seed(), state.shuffle_rng_position);
    // Re-read the referenced documents shard by shard, in file order, with
    // one small reader open at a time (a buffer may reference many shards).
    std::vector<RecordRef> wanted = state.shuffle_buffer;
    if (state.current_document) wanted.push_back(*state.current_document);
    for (const std::vector<PieceRef>& row : state.pending_rows)
      for (const PieceRef& piece : row) wanted.push_back(piece.record);
    for (const RecordRef& ref : wanted)
      if (ref.shard >= files_.size())
        throw_bad_input("loader state: record reference to shard ", ref.shard, " of ", files_.size());
    std::sort(wanted.begin(), wanted.end(), [](const RecordRef& a, const RecordRef& b) {
      return a.shard != b.shard ? a.shard < b.shard : a.offset < b.offset;
    });
    RecordReaderOptions small = options_.reader;
    small.buffer_bytes = 64 << 10;
    small.read_ahead_chunks = 0;
    std::map<std::pair<uint32_t, uint64_t>, std::shared_ptr<const Document>> loaded;  // (shard, offset) -> document
    std::unique_ptr<RecordReader> reader;
    uint32_t reader_shard = UINT32_MAX;
    for (const RecordRef& ref : wanted) {
      if (loaded.count({ref.shard, ref.offset})) continue;
      if (reader_shard != ref.shard) {
        reader = std::make_unique<RecordReader>(files_[ref.shard], small, file_system_);
        reader_shard = ref.shard;
      }
      reader->seek({ref.offset, ref.record_index});
      std::string_view bytes;
      if (!reader->read(bytes) || reader->last_record_position() != RecordPosition{ref.offset, ref.record_index})
        throw_bad_input(files_[ref.shard], ": record ", ref.record_index, " at byte ", ref.offset,
                        ": the loader state refers to this record, but it is not there (were the shards rewritten?)");
      loaded.emplace(std::make_pair(ref.shard, ref.offset),
                     std::make_shared<const Document>(make_document(ref, bytes)));
    }
    reader.reset();
    auto reload = [&](const RecordRef& ref) { return loaded.at({ref.shard, ref.offset}); };
    for (const RecordRef& ref : state.shuffle_buffer) buffer_.push_back(*reload(ref));
    if (state.current_document) {
      current_ = *reload(*state.current_document);
      current_token_ = state.current_token;
      if (current_token_ > current_->tokens.size())
        throw_bad_input("loader state: token ", current_token_, " is beyond the document's ", current_->tokens.size());
    }
    for (const std::vector<PieceRef>& refs : state.pending_rows) {
      PlannedRow& row = pending_rows_.emplace_back();
      uint64_t used = 0;
      for (const PieceRef& ref : refs) {
        std::shared_ptr<const Document> document = reload(ref.record);
        if (ref.begin >= ref.end || ref.end > document->tokens.size() || ref.end - ref.begin > static_cast<uint64_t>(options_.seq_len) - used)
          throw_bad_input("loader state: planned piece [", ref.begin, ", ", ref.end, ") of ",
                          files_[ref.record.shard], " record ", ref.record.record_index, " (",
                          document->tokens.size(), " tokens) does not fit a row of ", options_.seq_len);
        used += ref.end - ref.begin;
        row.push_back({std::move(document), ref.begin, ref.end});
      }
    }
  }

 private:
  struct Row {
    int32_t* input_ids;
    int32_t* targets;
    int32_t* position_ids;
    int32_t* doc_start;
  };
  // Tokens [begin, end) of a document, placed as one segment of a row.
  struct Piece {
    std::shared_ptr<const Document> document;
    uint64_t begin = 0;
    uint64_t end = 0;
  };
  using PlannedRow = std::vector<Piece>;

  void validate_options() const {
    const LoaderOptions& o = options_;
    if (o.batch_size <= 0) throw_bad_input("data.batch_size must be > 0, got ", o.batch_size);
    if (o.seq_len <= 0 || o.seq_len > INT32_MAX) throw_bad_input("data.seq_len must be in [1, 2^31), got ", o.seq_len);
    if (o.dp_size < 1) throw_bad_input("data-parallel size must be >= 1, got ", o.dp_size);
    if (o.dp_rank < 0 || o.dp_rank >= o.dp_size)
      throw_bad_input("data-parallel rank ", o.dp_rank, " is outside [0, ", o.dp_size, ")");
    if (o.pack_window < 1) throw_bad_input("data.pack_window must be >= 1, got ", o.pack_window);
    auto check_id = [&](const char* field, int64_t id) {
      if (id < 0 || id > INT32_MAX || (o.vocab_size > 0 && id >= o.vocab_size))
        throw_bad_input("data.", field, " = ", id, " is not a token id in [0, ",
                        o.vocab_size > 0 ? o.vocab_size : int64_t{INT32_MAX} + 1, ")");
    };
    if (o.append_eos) check_id("eos_id", o.eos_id);
    if (o.mode != BatchMode::kPackedContiguous || !o.drop_remainder) check_id("pad_id", o.pad_id);
  }

  std::vector<uint32_t> shard_order(int64_t epoch) const {
    std::vector<uint32_t> order(files_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
    if (options_.shuffle_shards) {
      // Fisher-Yates; the same permutation on every rank.
      PhiloxGenerator random(stream_seed(options_.seed, static_cast<uint64_t>(epoch), 0, kShardOrderStream));
      for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[random.next_below(i)]);
    }
    return order;
  }

  bool shuffling() const { return options_.shuffle_buffer > 1; }

  // Rows `rank`'s share of epoch `epoch` fills (with drop_remainder, only
  // complete rows of the contiguous layout count), replayed from the index.
  uint64_t rows_of_rank(int64_t epoch, const std::vector<uint32_t>& order, int rank, uint64_t first_record = 0) const {
    const uint64_t ranks = static_cast<uint64_t>(options_.dp_size);
    const uint64_t seq_len = static_cast<uint64_t>(options_.seq_len);
    std::vector<int64_t> lengths;  // this rank's documents in dealt order
    uint64_t dealt = 0;
    for (uint32_t shard : order)
      for (int32_t tokens : index_[shard]) {
        if (tokens < 0) continue;
        const uint64_t index = dealt++;
        if (index >= first_record && index % ranks == static_cast<uint64_t>(rank)) lengths.push_back(tokens);
      }
    uint64_t rows = 0;
    switch (options_.mode) {
      case BatchMode::kPackedContiguous: {
        uint64_t tokens = 0;
        for (int64_t length : lengths) tokens += static_cast<uint64_t>(length);
        return options_.drop_remainder ? tokens / seq_len : (tokens + seq_len - 1) / seq_len;
      }
      case BatchMode::kPadded:
        for (int64_t length : lengths)
          rows += document_pieces(length, options_.seq_len, options_.long_documents).size();
        return rows;
      case BatchMode::kPacked: {
        PhiloxGenerator random(stream_seed(options_.seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(rank),
                                           kShuffleStream));
        std::vector<int64_t> buffer;
        size_t next = 0;
        auto next_dealt_length = [&]() -> std::optional<int64_t> {
          if (next == lengths.size()) return std::nullopt;
          return lengths[next++];
        };
        while (true) {
          std::vector<int64_t> pieces;
          size_t drawn = 0;
          for (; drawn < options_.pack_window; ++drawn) {
            std::optional<int64_t> length = draw_shuffled(buffer, shuffle_capacity(), random, next_dealt_length);
            if (!length) break;
            for (const auto& [begin, end] : document_pieces(*length, options_.seq_len, options_.long_documents))
              pieces.push_back(end - begin);
          }
          if (drawn == 0) return rows;
          rows += plan_window_rows(pieces, options_.seq_len, shuffling(), random).size();
        }
      }
    }
    return rows;
  }

  size_t shuffle_capacity() const { return std::max<size_t>(options_.shuffle_buffer, 1); }

  void build_index() {
    index_.resize(files_.size());
    for (size_t shard = 0; shard < files_.size(); ++shard) {
      RecordReader reader(files_[shard], options_.reader, file_system_);
      std::vector<int32_t>& counts = index_[shard];
      std::string_view bytes;
      while (reader.read(bytes)) {
        RecordPosition at = reader.last_record_position();
        counts.resize(at.record_index + 1, -1);  // records the reader skipped stay -1
        try {
          Document document = make_document({static_cast<uint32_t>(shard), at.offset, at.record_index}, bytes);
          const int64_t length = static_cast<int64_t>(document.tokens.size());
          counts[at.record_index] = static_cast<int32_t>(length);
          ++stats_.records;
          stats_.tokens += static_cast<uint64_t>(length);
          stats_.longest = std::max(stats_.longest, length);
          if (length > options_.seq_len) {
            ++stats_.long_records;
            stats_.tokens_beyond_seq_len += static_cast<uint64_t>(length - options_.seq_len);
          }
        } catch (const Error& error) {
          if (!options_.reader.skip_corrupt_records || error.kind() != ErrorKind::kBadInput) throw;
          ++corrupt_records_skipped_;
        }
      }
      corrupt_records_skipped_ += reader.corrupt_records_skipped();
    }
  }

  Document make_document(const RecordRef& ref, std::string_view bytes) const {
    RecordContext context{files_[ref.shard], ref.record_index, ref.offset};
    TokenExample example = decode_example(bytes, decode_options_, context);
    const size_t count = example.input_ids.size();
    const bool masked = !example.labels.empty() || !example.loss_mask.empty();
    if (count > static_cast<size_t>(INT32_MAX) - 1)
      throw_bad_input(context.file, ": record ", ref.record_index, " at byte ", ref.offset, ": ", count,
                      " tokens in one document");
    Document document;
    document.ref = ref;
    const size_t total = count + (options_.append_eos ? 1 : 0);
    document.tokens.resize(total);
    document.labels.resize(total);
    for (size_t k = 0; k < count; ++k) {
      int64_t id = example.input_ids[k];
      if (id < 0 || id > INT32_MAX)
        throw_bad_input(context.file, ": record ", ref.record_index, " at byte ", ref.offset, ": feature '",
                        options_.names.input_ids, "' position ", k, ": token id ", id, " is not in [0, 2^31)");
      int64_t label = !example.labels.empty() ? example.labels[k]
                      : !example.loss_mask.empty() ? (example.loss_mask[k] ? id : kIgnoreIndex)
                                                   : id;
      if (label != kIgnoreIndex && (label < 0 || label > INT32_MAX))
        throw_bad_input(context.file, ": record ", ref.record_index, " at byte ", ref.offset, ": feature '",
                        options_.names.labels, "' position ", k, ": label ", label, " is not -100 or in [0, 2^31)");
      document.tokens[k] = static_cast<int32_t>(id);
      document.labels[k] = static_cast<int32_t>(label);
    }
    if (options_.append_eos) {
      document.tokens[count] = static_cast<int32_t>(options_.eos_id);
      bool last_unlabelled = masked && count > 0 && document.labels[count - 1] == kIgnoreIndex;
      document.labels[count] = last_unlabelled ? static_cast<int32_t>(kIgnoreIndex)
                                               : static_cast<int32_t>(options_.eos_id);
    }
    return document;
  }

  void start_epoch(int64_t epoch) {
    epoch_ = epoch;
    step_ = 0;
    order_ = shard_order(epoch);
    epoch_steps_ = steps_per_epoch(epoch);
    if (epoch_steps_ == 0)
      throw_bad_input("data: the ", files_.size(), " shard(s) (", files_.front(), " ...) do not hold one step of ",
                      options_.batch_size, " rows of ", options_.seq_len, " tokens for each of ", options_.dp_size,
                      " data-parallel ranks in epoch ", epoch, " (", corrupt_records_skipped_,
                      " corrupt records skipped", stats_.long_records > 0 && options_.long_documents == LongDocuments::kDrop
                          ? str_cat(", ", stats_.long_records, " longer than seq_len dropped")
                          : std::string(),
                      ")");
    shard_cursor_ = 0;
    reader_.reset();
    reader_position_ = {};
    records_dealt_ = 0;
    buffer_.clear();
    shuffle_rng_ = PhiloxGenerator(
        stream_seed(options_.seed, static_cast<uint64_t>(epoch), static_cast<uint64_t>(options_.dp_rank), kShuffleStream));
    current_.reset();
    current_token_ = 0;
    pending_rows_.clear();
  }

  // This rank's next record of the epoch in dealt order, or nullopt when the
  // epoch's input is exhausted.
  std::optional<Document> next_dealt() {
    const uint64_t ranks = static_cast<uint64_t>(options_.dp_size);
    const uint64_t rank = static_cast<uint64_t>(options_.dp_rank);
    while (shard_cursor_ < order_.size()) {
      const uint32_t shard = order_[shard_cursor_];
      if (!reader_) {
        reader_ = std::make_unique<RecordReader>(files_[shard], options_.reader, file_system_);
        if (reader_position_ != RecordPosition{}) reader_->seek(reader_position_);
      }
      std::string_view bytes;
      if (!reader_->read(bytes)) {
        ++shard_cursor_;
        reader_.reset();
        reader_position_ = {};
        continue;
      }
      const RecordPosition at = reader_->last_record_position();
      const std::vector<int32_t>& counts = index_[shard];
      if (at.record_index >= counts.size() || counts[at.record_index] < 0) continue;  // left out by the index
      if (records_dealt_++ % ranks != rank) continue;  // another rank's record
      return make_document({shard, at.offset, at.record_index}, bytes);
    }
    return std::nullopt;
  }

  std::optional<Document> next_shuffled() {
    return draw_shuffled(buffer_, shuffle_capacity(), shuffle_rng_, [this] { return next_dealt(); });
  }

  [[noreturn]] void throw_ran_out() const {
    throw_bad_input("data: epoch ", epoch_, " ran out of records at step ", step_, " of ", epoch_steps_, " on rank ",
                    options_.dp_rank, "; were the shards (", files_.front(), " ...) changed while training?");
  }

  // Plans the next rows into pending_rows_: one per piece (padded), or the
  // best-fit rows of the next window of documents (packed). False when this
  // rank's share of the epoch is exhausted.
  bool plan_rows() {
    while (pending_rows_.empty()) {
      if (options_.mode == BatchMode::kPadded) {
        std::optional<Document> document = next_shuffled();
        if (!document) return false;
        auto shared = std::make_shared<const Document>(std::move(*document));
        for (const auto& [begin, end] :
             document_pieces(static_cast<int64_t>(shared->tokens.size()), options_.seq_len, options_.long_documents))
          pending_rows_.push_back({Piece{shared, static_cast<uint64_t>(begin), static_cast<uint64_t>(end)}});
        continue;
      }
      std::vector<Piece> pieces;
      std::vector<int64_t> lengths;
      size_t drawn = 0;
      for (; drawn < options_.pack_window; ++drawn) {
        std::optional<Document> document = next_shuffled();
        if (!document) break;
        auto shared = std::make_shared<const Document>(std::move(*document));
        for (const auto& [begin, end] :
             document_pieces(static_cast<int64_t>(shared->tokens.size()), options_.seq_len, options_.long_documents)) {
          pieces.push_back({shared, static_cast<uint64_t>(begin), static_cast<uint64_t>(end)});
          lengths.push_back(end - begin);
        }
      }
      if (drawn == 0) return false;
      for (const std::vector<size_t>& items : plan_window_rows(lengths, options_.seq_len, shuffling(), shuffle_rng_)) {
        PlannedRow& row = pending_rows_.emplace_back();
        for (size_t item : items) row.push_back(pieces[item]);
      }
    }
    return true;
  }

  // Tokens [begin, end) of `document` at row columns [column, column + end - begin).
  static void write_segment(Row out, int64_t column, const Document& document, size_t begin, size_t end) {
    const size_t size = document.tokens.size();
    for (size_t k = begin; k < end; ++k, ++column) {
      out.input_ids[column] = document.tokens[k];
      out.targets[column] = k + 1 < size ? document.labels[k + 1] : static_cast<int32_t>(kIgnoreIndex);
      out.position_ids[column] = static_cast<int32_t>(k - begin);
      out.doc_start[column] = static_cast<int32_t>(column - static_cast<int64_t>(k - begin));
    }
  }

  void write_padding(Row out, int64_t from) const {
    for (int64_t t = from; t < options_.seq_len; ++t) {
      out.input_ids[t] = static_cast<int32_t>(options_.pad_id);
      out.targets[t] = static_cast<int32_t>(kIgnoreIndex);
      out.position_ids[t] = 0;
      out.doc_start[t] = static_cast<int32_t>(t);
    }
  }

  void fill_planned_row(Row out, Batch& batch) {
    if (!plan_rows()) {
      if (options_.drop_remainder) throw_ran_out();
      write_padding(out, 0);  // this rank's share ended before the others'
      return;
    }
    const PlannedRow row = std::move(pending_rows_.front());
    pending_rows_.pop_front();
    int64_t column = 0;
    for (const Piece& piece : row) {
      write_segment(out, column, *piece.document, piece.begin, piece.end);
      column += static_cast<int64_t>(piece.end - piece.begin);
      if (piece.begin == 0) ++batch.records;
    }
    batch.real_tokens += column;
    write_padding(out, column);
  }

  void fill_contiguous_row(Row out, Batch& batch) {
    const int64_t columns = options_.seq_len;
    int64_t column = 0;
    while (column < columns) {
      if (!current_ || current_token_ >= current_->tokens.size()) {
        std::optional<Document> document = next_shuffled();
        if (!document) {
          if (options_.drop_remainder) throw_ran_out();
          break;
        }
        current_ = std::move(*document);
        current_token_ = 0;
        continue;  // an empty document contributes nothing
      }
      const Document& document = *current_;
      const int64_t take =
          std::min<int64_t>(columns - column, static_cast<int64_t>(document.tokens.size() - current_token_));
      if (current_token_ == 0) ++batch.records;
      write_segment(out, column, document, current_token_, current_token_ + static_cast<size_t>(take));
      column += take;
      current_token_ += static_cast<size_t>(take);
    }
    batch.real_tokens += column;
    write_padding(out, column);
  }

  LoaderOptions options_;
  FileSystem& file_system_;
  std::vector<std::string> files_;
  DecodeOptions decode_options_;
  std::vector<std::vector<int32_t>> index_;  // per shard, per record: tokens incl. EOS (documents), -1 = left out
  uint64_t corrupt_records_skipped_ = 0;
  DataStats stats_;

  int64_t epoch_ = 0;
  int64_t step_ = 0;
  int64_t epoch_steps_ = 0;
  std::vector<uint32_t> order_;
  uint64_t shard_cursor_ = 0;
  std::unique_ptr<RecordReader> reader_;  // open on order_[shard_cursor_] once reading started
  RecordPosition reader_position_;        // where reader_ starts when opened
  uint64_t records_dealt_ = 0;
  std::vector<Document> buffer_;
  PhiloxGenerator shuffle_rng_;
  std::optional<Document> current_;  // kPackedContiguous: the document being cut into rows
  size_t current_token_ = 0;
  std::deque<PlannedRow> pending_rows_;  // kPacked, kPadded: rows planned, not yet emitted
};

// ------------------------------------------------------- state as JSON ---

namespace {

constexpr const char* kStateFormat = "llmft.data.LoaderState/1";

nlohmann::json ref_to_json(const RecordRef& ref) { return {ref.shard, ref.offset, ref.record_index}; }
RecordRef ref_from_json(const nlohmann::json& value) {
  return {value.at(0).get<uint32_t>(), value.at(1).get<uint64_t>(), value.at(2).get<uint64_t>()};
}

// The layout's name in the state. The contiguous layout keeps "packed", the
// name states carried when it was the only packed layout, so that a run
// saved then resumes with batch_mode PACKED_CONTIGUOUS.
const char* state_mode_name(BatchMode mode) {
  switch (mode) {
    case BatchMode::kPacked:
      return "packed_best_fit";
    case BatchMode::kPackedContiguous:
      return "packed";
    case BatchMode::kPadded:
      return "padded";
  }
  return "?";
}

std::string state_to_json(const LoaderState& state, const LoaderPipeline& pipeline) {
  const LoaderOptions& options = pipeline.options();
  nlohmann::json json;
  json["format"] = kStateFormat;
  // Identity of the data order: a state only applies to a loader with these.
  json["files"] = pipeline.files();
  json["dp_rank"] = options.dp_rank;
  json["dp_size"] = options.dp_size;
  json["seed"] = options.seed;
  json["batch_size"] = options.batch_size;
  json["seq_len"] = options.seq_len;
  json["mode"] = state_mode_name(options.mode);
  json["long_documents"] = long_documents_name(options.long_documents);
  json["pack_window"] = options.pack_window;
  json["drop_remainder"] = options.drop_remainder;
  json["shuffle_buffer"] = options.shuffle_buffer;
  json["shuffle_shards"] = options.shuffle_shards;
  // Position.
  json["epoch"] = state.epoch;
  json["step_in_epoch"] = state.step_in_epoch;
  json["shard_cursor"] = state.shard_cursor;
  json["reader_offset"] = state.reader_position.offset;
  json["reader_record_index"] = state.reader_position.record_index;
  json["records_dealt"] = state.records_dealt;
  json["shuffle_rng_position"] = state.shuffle_rng_position;
  nlohmann::json buffer = nlohmann::json::array();
  for (const RecordRef& ref : state.shuffle_buffer) buffer.push_back(ref_to_json(ref));
  json["shuffle_buffer_records"] = std::move(buffer);
  json["current_document"] = state.current_document ? ref_to_json(*state.current_document) : nlohmann::json();
  json["current_token"] = state.current_token;
  nlohmann::json rows = nlohmann::json::array();
  for (const std::vector<PieceRef>& row : state.pending_rows) {
    nlohmann::json pieces = nlohmann::json::array();
    for (const PieceRef& piece : row)
      pieces.push_back({piece.record.shard, piece.record.offset, piece.record.record_index, piece.begin, piece.end});
    rows.push_back(std::move(pieces));
  }
  json["pending_rows"] = std::move(rows);
  return dump_json(json);  // file names need not be UTF-8
}

LoaderState state_from_json(const std::string& text, const LoaderPipeline& pipeline) {
  nlohmann::json json;
  try {
    json = parse_json(text, "loader state");
  } catch (const std::exception& error) {
    throw_bad_input("loader state: not valid JSON: ", error.what());
  }
  try {
    if (json.value("format", "") != kStateFormat)
      throw_bad_input("loader state: format is '", json.value("format", ""), "', expected '", kStateFormat, "'");
    const LoaderOptions& options = pipeline.options();
    auto expect = [&](const char* field, const nlohmann::json& value) {
      // As saved: ill-formed UTF-8 in a file name was written as U+FFFD.
      const nlohmann::json configured = nlohmann::json::parse(dump_json(value));
      if (json.at(field) != configured)
        throw_bad_input("loader state: ", field, " is ", dump_json(json.at(field)), " but this loader has ",
                        dump_json(configured), "; resume with the options of the run that saved the state");
    };
    expect("files", pipeline.files());
    expect("dp_rank", options.dp_rank);
    expect("dp_size", options.dp_size);
    expect("seed", options.seed);
    expect("batch_size", options.batch_size);
    expect("seq_len", options.seq_len);
    if (options.mode == BatchMode::kPacked && json.at("mode") == "packed")
      throw_bad_input("loader state: saved by the contiguous packer (batch_mode PACKED before best-fit packing "
                      "became the default); resume it with data.batch_mode: PACKED_CONTIGUOUS");
    expect("mode", state_mode_name(options.mode));
    // States saved before these options existed hold their old behaviour.
    auto expect_or_default = [&](const char* field, const nlohmann::json& configured, const nlohmann::json& old) {
      if (!json.contains(field)) json[field] = old;
      expect(field, configured);
    };
    expect_or_default("long_documents", long_documents_name(options.long_documents), "truncate");
    expect_or_default("drop_remainder", options.drop_remainder, true);
    if (options.mode == BatchMode::kPacked) expect("pack_window", options.pack_window);
    expect("shuffle_buffer", options.shuffle_buffer);
    expect("shuffle_shards", options.shuffle_shards);
    LoaderState state;
    state.epoch = json.at("epoch").get<int64_t>();
    state.step_in_epoch = json.at("step_in_epoch").get<int64_t>();
    state.shard_cursor = json.at("shard_cursor").get<uint64_t>();
    state.reader_position = {json.at("reader_offset").get<uint64_t>(), json.at("reader_record_index").get<uint64_t>()};
    state.records_dealt = json.at("records_dealt").get<uint64_t>();
    state.shuffle_rng_position = json.at("shuffle_rng_position").get<uint64_t>();
    for (const auto& ref : json.at("shuffle_buffer_records")) state.shuffle_buffer.push_back(ref_from_json(ref));
    if (!json.at("current_document").is_null()) state.current_document = ref_from_json(json.at("current_document"));
    state.current_token = json.at("current_token").get<uint64_t>();
    if (json.contains("pending_rows"))
      for (const auto& row : json.at("pending_rows")) {
        std::vector<PieceRef>& pieces = state.pending_rows.emplace_back();
        for (const auto& piece : row)
          pieces.push_back({ref_from_json(piece), piece.at(3).get<uint64_t>(), piece.at(4).get<uint64_t>()});
      }
    return state;
  } catch (const nlohmann::json::exception& error) {
    throw_bad_input("loader state: missing or mistyped field: ", error.what());
  }
}

}  // namespace

// ---------------------------------------------------------------- Loader ---

Loader::Loader(LoaderOptions options, FileSystem& file_system)
    : pipeline_(std::make_unique<LoaderPipeline>(std::move(options), file_system)) {
  consumer_state_ = pipeline_->snapshot();
  start_worker();
}

Loader::Loader(LoaderOptions options, const RedealPosition& position, FileSystem& file_system)
    : pipeline_(std::make_unique<LoaderPipeline>(std::move(options), file_system)) {
  pipeline_->restore_redealt(position);
  consumer_state_ = pipeline_->snapshot();
  start_worker();
}

RedealPosition merge_loader_states(const std::vector<std::string>& states, const std::string& source) {
  RedealPosition merged;
  nlohmann::json first;
  std::vector<std::pair<int64_t, int64_t>> epoch_steps;  // (epoch, step_in_epoch) per rank
  for (size_t rank = 0; rank < states.size(); ++rank) {
    nlohmann::json json;
    try {
      json = parse_json(states[rank], "loader state");
      if (json.value("format", "") != kStateFormat) throw_bad_input("format '", json.value("format", ""), "'");
      if (rank == 0) first = json;
      for (const char* field : {"files", "seed", "shuffle_shards"})
        if (json.at(field) != first.at(field))
          throw_bad_input("field '", field, "' differs from data-parallel rank 0's (", first.at(field).dump(), ")");
      const int64_t epoch = json.at("epoch").get<int64_t>();
      const uint64_t records = json.at("records_dealt").get<uint64_t>();
      const int64_t step = json.at("step_in_epoch").get<int64_t>();
      if (rank == 0 || epoch > merged.epoch || (epoch == merged.epoch && records > merged.records)) {
        merged.epoch = epoch;
        merged.records = records;
      }
      epoch_steps.emplace_back(epoch, step);
      merged.read_ahead += json.at("shuffle_buffer_records").size();
      if (json.contains("pending_rows"))
        for (const auto& row : json.at("pending_rows")) merged.read_ahead += row.size();
    } catch (const Error& error) {
      throw_bad_input(source, ": the loader state of data-parallel rank ", rank, ": ", error.what());
    } catch (const std::exception& error) {
      throw_bad_input(source, ": the loader state of data-parallel rank ", rank, " is not valid: ", error.what());
    }
  }
  if (states.empty()) throw_bad_input(source, ": no loader state");
  for (const auto& [epoch, step] : epoch_steps)
    if (epoch == merged.epoch) merged.step_in_epoch = std::max(merged.step_in_epoch, step);
  merged.files = first.at("files").get<std::vector<std::string>>();
  merged.seed = first.at("seed").get<uint64_t>();
  merged.shuffle_shards = first.at("shuffle_shards").get<bool>();
  return merged;
}

Loader::Loader(LoaderOptions options, const std::string& state, FileSystem& file_system)
    : pipeline_(std::make_unique<LoaderPipeline>(std::move(options), file_system)) {
  pipeline_->restore(state_from_json(state, *pipeline_));
  consumer_state_ = pipeline_->snapshot();
  start_worker();
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  queue_changed_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Loader::start_worker() {
  queue_capacity_ = pipeline_->options().prefetch_batches;
  if (queue_capacity_ > 0) worker_ = std::thread([this] { run_worker(); });
}

void Loader::run_worker() {
  while (true) {
    Item item;
    try {
      item.batch = pipeline_->produce();
      item.state = pipeline_->snapshot();
    } catch (...) {
      item.error = std::current_exception();
    }
    const bool last = !item.batch.has_value();  // the end, or an error
    std::unique_lock<std::mutex> lock(mutex_);
    queue_changed_.wait(lock, [&] { return stopping_ || queue_.size() < queue_capacity_; });
    if (stopping_) return;
    queue_.push_back(std::move(item));
    lock.unlock();
    queue_changed_.notify_all();
    if (last) return;
  }
}

std::optional<Batch> Loader::next() {
  if (finished_) return std::nullopt;
  Item item;
  if (!worker_.joinable()) {
    try {
      item.batch = pipeline_->produce();
      item.state = pipeline_->snapshot();
    } catch (...) {
      finished_ = true;
      throw;
    }
  } else {
    std::unique_lock<std::mutex> lock(mutex_);
    queue_changed_.wait(lock, [&] { return !queue_.empty(); });
    item = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    queue_changed_.notify_all();
  }
  if (item.error) {
    finished_ = true;
    std::rethrow_exception(item.error);
  }
  if (!item.batch) {
    finished_ = true;
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  consumer_state_ = std::move(item.state);
  return std::move(item.batch);
}

std::string Loader::state() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return state_to_json(consumer_state_, *pipeline_);
}

int64_t Loader::steps_per_epoch(int64_t epoch) const { return pipeline_->steps_per_epoch(epoch); }
uint64_t Loader::corrupt_records_skipped() const { return pipeline_->corrupt_records_skipped(); }
const DataStats& Loader::stats() const { return pipeline_->stats(); }
const LoaderOptions& Loader::options() const { return pipeline_->options(); }
const std::vector<std::string>& Loader::files() const { return pipeline_->files(); }

}  // namespace llmft::data
