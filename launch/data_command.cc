// `llmft data build ...` and `llmft data inspect FILE ...`: JSONL to tokenized
// TFRecord shards (data/dataset_builder.h), and records back to text.
#include <algorithm>
#include <cctype>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>
#include <vector>

#include "core/error.h"
#include "data/chat_template.h"
#include "data/dataset_builder.h"
#include "data/example.h"
#include "data/loader.h"
#include "data/tfrecord.h"
#include "data/tokenizer.h"
#include "launch/commands.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  llmft data build --input train.jsonl --tokenizer DIR_OR_FILE --output data/train --shards N\n"
    "                   [--seq-len N] [--val-fraction F] [--seed S] [--skip-bad-records]\n"
    "                   [--compression none|gzip|zlib]\n"
    "                   [--format text|prompt-completion|messages|sharegpt|alpaca] [--chat-template FILE]\n"
    "                   [--train-on assistant|last|all] [--special-tokens-in-content] [--end-of-turn TOKEN]\n"
    "                   [--template-limits output_mb=N,loop_iterations=N,range=N,built_mb=N,depth=N]\n"
    "      JSONL lines -> tf.Example records (input_ids, loss_mask) in <output>-NNNNN-of-MMMMM.tfrecord\n"
    "      and, with --val-fraction, <output>-val-00000-of-00001.tfrecord. The format is detected from\n"
    "      the first record's keys unless --format names it: {\"text\"}, {\"prompt\", \"completion\"},\n"
    "      {\"messages\": [{\"role\", \"content\"}]}, {\"conversations\": [{\"from\", \"value\"}]} (ShareGPT),\n"
    "      {\"instruction\", \"input\", \"output\"} (Alpaca). Conversations are rendered with the chat\n"
    "      template of --tokenizer DIR's tokenizer_config.json (or --chat-template FILE), as `llmft\n"
    "      generate --chat` renders them, and trained on every assistant message with its closing\n"
    "      end-of-turn token (--train-on assistant), the last one (last), or every token (all).\n"
    "      Records longer than --seq-len keep their first seq-len tokens. --compression gzip|zlib\n"
    "      compresses whole files, named *.tfrecord.gz|.zlib.\n"
    "      A template's render is bounded (an error names the template line and the limit): a\n"
    "      conversation of at most output_mb=16 MiB, loop_iterations=10000000 per render, range()\n"
    "      and built lists of range=100000 items, built_mb=1024 MiB of strings built or copied, and\n"
    "      depth=200 levels of nesting; --template-limits raises any of them (built_mb follows\n"
    "      output_mb unless given). A JSON record nested deeper than 512 levels is a bad record.\n"
    "  llmft data inspect FILE [--limit N | --records N] [--tokenizer DIR_OR_FILE] [--json | --show-mask]\n"
    "      prints records (ids, loss mask, and text when a tokenizer is given); --limit 0 prints all\n"
    "      (default 10). A .gz/.zlib file is read as GZIP/ZLIB. --json prints one JSON object per\n"
    "      record and nothing else: {\"record\", \"offset\", \"input_ids\"[, \"loss_mask\"][, \"labels\"][, \"text\"]}.\n"
    "      --show-mask prints each record's tokens (text with --tokenizer, ids otherwise) with the\n"
    "      trained ones highlighted: coloured on a terminal, [[between brackets]] otherwise.\n"
    "  llmft data inspect FILE_OR_GLOB --seq-len N [--long-documents truncate|split|drop] [--pack-window N]\n"
    "      lays every record of the shards out in rows of N tokens as training would with each batch_mode\n"
    "      and prints, per mode, the rows and the share of row positions holding real tokens (the rest is\n"
    "      padding), the records PACKED_CONTIGUOUS cuts across rows, and those longer than N.\n";

// "--name value" and "--name=value" options after the positional arguments' verb.
class Arguments {
 public:
  Arguments(std::span<char*> args, std::vector<std::string_view> flags) : flags_(std::move(flags)) {
    for (size_t i = 0; i < args.size(); ++i) {
      std::string_view arg = args[i];
      if (arg == "--help" || arg == "-h") {
        help_ = true;
        continue;
      }
      if (!arg.starts_with("--")) {
        positional_.emplace_back(arg);
        continue;
      }
      std::string name(arg.substr(2));
      if (std::find(flags_.begin(), flags_.end(), name) != flags_.end()) {
        values_.emplace_back(name, "true");
        continue;
      }
      if (size_t equals = name.find('='); equals != std::string::npos) {
        values_.emplace_back(name.substr(0, equals), name.substr(equals + 1));
        continue;
      }
      if (i + 1 >= args.size()) throw_bad_input("--", name, ": missing value\n", kUsage);
      values_.emplace_back(name, args[++i]);
    }
  }

  bool help() const { return help_; }
  const std::vector<std::string>& positional() const { return positional_; }

  // Rejects options outside `known`.
  void check_known(std::initializer_list<std::string_view> known) const {
    for (const auto& [name, value] : values_)
      if (std::find(known.begin(), known.end(), name) == known.end())
        throw_bad_input("unknown option --", name, "\n", kUsage);
  }
  const std::vector<std::pair<std::string, std::string>>& all() const { return values_; }
  std::optional<std::string> get(std::string_view name) const {
    std::optional<std::string> found;
    for (const auto& [key, value] : values_)
      if (key == name) found = value;
    return found;
  }
  std::string required(std::string_view name) const {
    auto value = get(name);
    if (!value) throw_bad_input("--", name, " is required\n", kUsage);
    return *value;
  }
  int64_t integer(std::string_view name, int64_t fallback) const {
    auto value = get(name);
    if (!value) return fallback;
    char* end = nullptr;
    long long parsed = std::strtoll(value->c_str(), &end, 10);
    if (value->empty() || *end != '\0') throw_bad_input("--", name, ": expected an integer, found \"", *value, "\"");
    return parsed;
  }
  double number(std::string_view name, double fallback) const {
    auto value = get(name);
    if (!value) return fallback;
    char* end = nullptr;
    double parsed = std::strtod(value->c_str(), &end);
    if (value->empty() || *end != '\0') throw_bad_input("--", name, ": expected a number, found \"", *value, "\"");
    return parsed;
  }

 private:
  std::vector<std::string_view> flags_;
  std::vector<std::string> positional_;
  std::vector<std::pair<std::string, std::string>> values_;
  bool help_ = false;
};

std::string human_count(uint64_t count) {
  if (count >= 10'000'000) return str_cat(count / 1'000'000, "M");
  if (count >= 10'000) return str_cat(count / 1'000, "k");
  return std::to_string(count);
}

// The chat template for conversation records: --chat-template FILE, or the
// tokenizer directory's own (tokenizer_config.json / chat_template.jinja).
// bos/eos text comes from the directory's tokenizer_config.json either way.
ModelChatTemplate load_data_chat_template(const std::string& tokenizer_path,
                                          const std::optional<std::string>& template_file,
                                          const ChatTemplateLimits& limits) {
  std::filesystem::path directory = tokenizer_path;
  if (!std::filesystem::is_directory(directory)) directory = directory.parent_path();
  if (!template_file) return load_chat_template(directory, limits);
  ModelChatTemplate from_directory = [&]() -> ModelChatTemplate {
    try {
      return load_chat_template(directory, limits);
    } catch (const Error&) {
      return {ChatTemplate("", "(none)"), "", ""};  // a template file needs no template in the directory
    }
  }();
  std::ifstream in(*template_file, std::ios::binary);
  if (!in) throw_bad_input(*template_file, ": cannot open the chat template");
  std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return ModelChatTemplate{ChatTemplate(std::move(source), *template_file, limits), from_directory.bos_token,
                           from_directory.eos_token};
}

// The format the builder will detect: that of the first line that shows one
// (lines before it are bad records; kAuto when none does).
data::InputFormat first_record_format(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    if (data::InputFormat format = data::detect_input_format(line); format != data::InputFormat::kAuto) return format;
  }
  return data::InputFormat::kAuto;
}

int run_build(std::span<char*> args) {
  Arguments arguments(args, {"skip-bad-records", "special-tokens-in-content"});
  if (arguments.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  arguments.check_known({"input", "tokenizer", "output", "shards", "seq-len", "val-fraction", "seed",
                         "skip-bad-records", "compression", "format", "chat-template", "train-on",
                         "special-tokens-in-content", "end-of-turn", "template-limits"});
  if (!arguments.positional().empty())
    throw_bad_input("data build: unexpected argument \"", arguments.positional()[0], "\"\n", kUsage);
  data::DatasetBuildOptions options;
  options.input_path = arguments.required("input");
  std::string tokenizer_path = arguments.required("tokenizer");
  options.output_prefix = arguments.required("output");
  options.shards = arguments.integer("shards", 1);
  options.seq_len = arguments.integer("seq-len", 0);
  options.val_fraction = arguments.number("val-fraction", 0.0);
  options.seed = static_cast<uint64_t>(arguments.integer("seed", 0));
  options.skip_bad_records = arguments.get("skip-bad-records").has_value();
  std::string compression = arguments.get("compression").value_or("none");
  if (compression == "none") options.compression = data::Compression::kNone;
  else if (compression == "gzip") options.compression = data::Compression::kGzip;
  else if (compression == "zlib") options.compression = data::Compression::kZlib;
  else throw_bad_input("--compression: expected none, gzip or zlib, found \"", compression, "\"");
  if (auto format = arguments.get("format")) {
    auto parsed = data::parse_input_format(*format);
    if (!parsed) throw_bad_input("--format: expected text, prompt-completion, messages, sharegpt or alpaca, found \"",
                                 *format, "\"");
    options.format = *parsed;
  }
  std::string train_on = arguments.get("train-on").value_or("assistant");
  auto parsed_train_on = data::parse_train_on(train_on);
  if (!parsed_train_on) throw_bad_input("--train-on: expected assistant, last or all, found \"", train_on, "\"");
  options.chat.train_on = *parsed_train_on;
  options.chat.special_tokens_in_content = arguments.get("special-tokens-in-content").has_value();
  for (const auto& [name, value] : arguments.all())
    if (name == "end-of-turn") options.chat.end_of_turn_tokens.push_back(value);
  const std::optional<std::string> limits_text = arguments.get("template-limits");
  const ChatTemplateLimits template_limits =
      limits_text ? parse_chat_template_limits(*limits_text, "--template-limits") : ChatTemplateLimits{};

  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(tokenizer_path);
  std::fprintf(stderr, "tokenizer: %s\n", tokenizer->description().c_str());
  // The template is read only for conversations, so text data needs none.
  std::optional<ModelChatTemplate> chat_template;
  data::InputFormat expected_format =
      options.format == data::InputFormat::kAuto ? first_record_format(options.input_path) : options.format;
  if (data::is_chat_format(expected_format)) {
    chat_template.emplace(load_data_chat_template(tokenizer_path, arguments.get("chat-template"), template_limits));
    options.chat_template = &*chat_template;
    std::fprintf(stderr, "chat template: %s\n", chat_template->chat_template.origin().c_str());
  }
  bool progress_shown = false;
  auto progress = [&progress_shown](const data::DatasetBuildProgress& state) {
    progress_shown = true;
    double mb_per_second = state.seconds > 0 ? static_cast<double>(state.input_bytes) / 1e6 / state.seconds : 0.0;
    std::fprintf(stderr, "\rrecords read %llu/%llu  written %llu  tokens %s  %.1f MB/s  %.0f s   ",
                 static_cast<unsigned long long>(state.records_read),
                 static_cast<unsigned long long>(state.total_records),
                 static_cast<unsigned long long>(state.records_written), human_count(state.tokens).c_str(),
                 mb_per_second, state.seconds);
    std::fflush(stderr);
  };
  data::DatasetBuildSummary summary;
  try {
    summary = data::build_dataset(*tokenizer, options, progress);
  } catch (...) {
    // The progress line ends in "\r", not a newline: end it, so that the
    // error main() prints is a line of its own.
    if (progress_shown) std::fprintf(stderr, "\n");
    throw;
  }
  std::fprintf(stderr, "\n");

  size_t width = 5;
  for (const auto& shard : summary.train_shards) width = std::max(width, shard.path.size());
  if (summary.validation) width = std::max(width, summary.validation->path.size());
  auto row = [&](const std::string& name, uint64_t records, uint64_t tokens, uint64_t loss_tokens) {
    std::printf("%-*s  %10llu  %12llu  %12llu\n", static_cast<int>(width), name.c_str(),
                static_cast<unsigned long long>(records), static_cast<unsigned long long>(tokens),
                static_cast<unsigned long long>(loss_tokens));
  };
  std::printf("%-*s  %10s  %12s  %12s\n", static_cast<int>(width), "shard", "records", "tokens", "loss tokens");
  uint64_t records = 0, tokens = 0, loss_tokens = 0;
  for (const auto& shard : summary.train_shards) {
    row(shard.path, shard.records, shard.tokens, shard.loss_tokens);
    records += shard.records;
    tokens += shard.tokens;
    loss_tokens += shard.loss_tokens;
  }
  row("train total", records, tokens, loss_tokens);
  if (summary.validation) row(summary.validation->path, summary.validation->records, summary.validation->tokens,
                              summary.validation->loss_tokens);
  std::printf("lines read %llu, records written %llu, format %s", static_cast<unsigned long long>(summary.lines),
              static_cast<unsigned long long>(summary.records_written),
              std::string(data::input_format_name(summary.format)).c_str());
  if (summary.format_line > 0 && options.format == data::InputFormat::kAuto)
    std::printf(" (detected from line %llu)", static_cast<unsigned long long>(summary.format_line));
  if (data::is_chat_format(summary.format))
    std::printf(", trained on %s", train_on == "assistant" ? "every assistant turn"
                                   : train_on == "last"    ? "the last assistant turn"
                                                           : "every token");
  std::printf("\n");
  if (options.seq_len > 0)
    std::printf("truncated to --seq-len %lld (first tokens kept): %llu records; dropped with no trained tokens "
                "left: %llu\n",
                static_cast<long long>(options.seq_len), static_cast<unsigned long long>(summary.truncated_records),
                static_cast<unsigned long long>(summary.dropped_no_loss));
  if (summary.bad_records_skipped > 0) {
    std::printf("bad records skipped: %llu\n", static_cast<unsigned long long>(summary.bad_records_skipped));
    for (const std::string& message : summary.first_bad_records) std::printf("  %s\n", message.c_str());
  }
  for (const auto& shard : summary.train_shards)
    if (shard.records == 0)
      std::fprintf(stderr, "warning: %s has no records (more shards than records)\n", shard.path.c_str());
  return 0;
}

std::string quoted(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

std::string id_list(const std::vector<int64_t>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

// One record's tokens with the trained ones marked: runs of equal mask are
// decoded together (so a character split over tokens stays whole), trained
// runs wrapped in ANSI reverse-green on a terminal or in [[ ]] otherwise.
std::string masked_tokens(const data::TokenExample& example, const Tokenizer* tokenizer, bool colour) {
  const char* open = colour ? "\x1b[30;42m" : "[[";
  const char* close = colour ? "\x1b[0m" : "]]";
  std::string out;
  const std::vector<int64_t>& ids = example.input_ids;
  auto trained = [&](size_t i) {
    if (!example.loss_mask.empty()) return example.loss_mask[i] != 0;
    if (!example.labels.empty()) return example.labels[i] != -100;
    return true;  // no mask: the loader trains on every token
  };
  for (size_t begin = 0; begin < ids.size();) {
    size_t end = begin;
    while (end < ids.size() && trained(end) == trained(begin)) ++end;
    std::string run;
    if (tokenizer) {
      run = tokenizer->decode(std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(begin),
                                                   ids.begin() + static_cast<std::ptrdiff_t>(end)));
    } else {
      if (begin > 0) out += ' ';
      for (size_t i = begin; i < end; ++i) run += str_cat(i > begin ? " " : "", ids[i]);
    }
    out += trained(begin) ? open + run + close : run;
    begin = end;
  }
  return out;
}

// Each batch mode over every record of `pattern`, in file order, through the
// loader itself (one epoch, nothing dropped), so the figures are the rows
// training would get from these shards.
int print_packing_summary(const std::string& pattern, const Arguments& arguments) {
  const int64_t seq_len = arguments.integer("seq-len", 0);
  if (seq_len < 1 || seq_len > INT32_MAX) throw_bad_input("data inspect: --seq-len ", seq_len, ", expected in [1, 2^31)");
  const int64_t pack_window = arguments.integer("pack-window", 1024);
  if (pack_window < 1) throw_bad_input("data inspect: --pack-window ", pack_window, ", expected >= 1");
  const std::string policy_name = arguments.get("long-documents").value_or("truncate");
  const std::optional<data::LongDocuments> policy = data::parse_long_documents(policy_name);
  if (!policy) throw_bad_input("data inspect: --long-documents '", policy_name, "', expected truncate, split or drop");
  data::LoaderOptions options;
  if (pattern.find_first_of("*?[") == std::string::npos)
    options.files = {pattern};
  else
    options.pattern = pattern;
  options.batch_size = 1;
  options.seq_len = seq_len;
  options.append_eos = false;  // `data build` ends records with EOS where the template does
  options.pad_id = 0;
  options.shuffle_shards = false;
  options.shuffle_buffer = 0;
  options.num_epochs = 1;
  options.drop_remainder = false;
  options.long_documents = *policy;
  options.pack_window = static_cast<size_t>(pack_window);
  bool first = true;
  for (data::BatchMode mode : {data::BatchMode::kPacked, data::BatchMode::kPackedContiguous, data::BatchMode::kPadded}) {
    options.mode = mode;
    data::Loader loader(options);
    const data::DataStats& stats = loader.stats();
    if (first) {
      std::printf("%s: %llu records, %llu tokens (longest %lld) in rows of %lld tokens\n", pattern.c_str(),
                  static_cast<unsigned long long>(stats.records), static_cast<unsigned long long>(stats.tokens),
                  static_cast<long long>(stats.longest), static_cast<long long>(seq_len));
      first = false;
    }
    int64_t rows = 0, real_tokens = 0, continued_rows = 0;
    while (std::optional<data::Batch> batch = loader.next()) {
      rows += batch->rows_with_tokens;
      real_tokens += batch->real_tokens;
      // A row (batches of one) with more segments than records beginning in
      // it starts inside a record: one record cut across rows. (A continued
      // record's positions restart at 0, so they cannot tell.)
      const int32_t* starts = batch->doc_start.data<int32_t>();
      int64_t segments = 0;
      for (int64_t t = 0; t < batch->real_tokens; ++t) segments += starts[t] == t ? 1 : 0;
      if (segments > batch->records) ++continued_rows;
    }
    const double efficiency = rows > 0 ? static_cast<double>(real_tokens) / static_cast<double>(rows * seq_len) : 0.0;
    std::string mode_name = data::batch_mode_name(mode);
    for (char& c : mode_name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string note = mode == data::BatchMode::kPackedContiguous ? str_cat(continued_rows, " records cut across rows")
                                                                  : data::long_documents_report(stats, options);
    if (note.empty()) note = "no record cut";
    std::printf("  %-18s %10lld rows  packing %5.1f%% (row positions holding tokens)  %s\n", mode_name.c_str(),
                static_cast<long long>(rows), 100.0 * efficiency, note.c_str());
  }
  return 0;
}

int run_inspect_records(std::span<char*> args) {
  Arguments arguments(args, {"json", "show-mask"});
  if (arguments.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  arguments.check_known({"limit", "records", "tokenizer", "json", "show-mask", "seq-len", "long-documents",
                         "pack-window"});
  if (arguments.get("seq-len")) {
    if (arguments.positional().size() != 1) throw_bad_input("data inspect: expected one FILE or GLOB\n", kUsage);
    for (const char* other : {"limit", "records", "tokenizer", "json", "show-mask"})
      if (arguments.get(other)) throw_bad_input("data inspect: --", other, " does not go with --seq-len");
    return print_packing_summary(arguments.positional()[0], arguments);
  }
  for (const char* packing_only : {"long-documents", "pack-window"})
    if (arguments.get(packing_only)) throw_bad_input("data inspect: --", packing_only, " goes with --seq-len N");

  // Machine-readable output for scripts and the interop tests: JSON Lines only.
  bool json = arguments.get("json").has_value();
  bool show_mask = arguments.get("show-mask").has_value();
  if (json && show_mask) throw_bad_input("data inspect: --json and --show-mask exclude each other");
  if (arguments.positional().size() != 1) throw_bad_input("data inspect: expected one FILE\n", kUsage);
  const std::string& path = arguments.positional()[0];
  if (arguments.get("limit") && arguments.get("records"))
    throw_bad_input("data inspect: --limit and --records are the same option; give one");
  int64_t limit = arguments.integer("records", arguments.integer("limit", 10));
  if (limit < 0) throw_bad_input(arguments.get("records") ? "--records" : "--limit", ": expected >= 0, found ", limit);
  const bool colour = show_mask && isatty(fileno(stdout));
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto tokenizer_path = arguments.get("tokenizer")) tokenizer = load_tokenizer(*tokenizer_path);

  data::RecordReader reader(path);
  data::DecodeOptions decode_options;
  if (tokenizer) decode_options.vocab_size = tokenizer->vocab_size();
  std::string_view bytes;
  int64_t shown = 0;
  while (reader.read(bytes)) {
    if (limit > 0 && shown == limit) {
      if (!json) std::printf("(more records follow; --limit 0 prints all)\n");
      break;
    }
    data::RecordPosition position = reader.last_record_position();
    data::TokenExample example =
        data::decode_example(bytes, decode_options, {path, position.record_index, position.offset});
    if (json) {
      nlohmann::json object = {
          {"record", position.record_index}, {"offset", position.offset}, {"input_ids", example.input_ids}};
      if (!example.loss_mask.empty()) object["loss_mask"] = example.loss_mask;
      if (!example.labels.empty()) object["labels"] = example.labels;
      if (tokenizer)
        object["text"] = tokenizer->decode(std::vector<int32_t>(example.input_ids.begin(), example.input_ids.end()));
      std::printf("%s\n",
                  object.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace).c_str());
      ++shown;
      continue;
    }
    uint64_t loss_tokens = 0;
    for (int64_t mask : example.loss_mask) loss_tokens += static_cast<uint64_t>(mask);
    std::printf("record %llu (byte %llu): %zu tokens", static_cast<unsigned long long>(position.record_index),
                static_cast<unsigned long long>(position.offset), example.input_ids.size());
    if (!example.loss_mask.empty()) std::printf(", loss on %llu", static_cast<unsigned long long>(loss_tokens));
    if (show_mask) {
      std::printf("\n%s\n", masked_tokens(example, tokenizer.get(), colour).c_str());
      ++shown;
      continue;
    }
    std::printf("\n  input_ids: %s\n", id_list(example.input_ids).c_str());
    if (!example.loss_mask.empty()) std::printf("  loss_mask: %s\n", id_list(example.loss_mask).c_str());
    if (!example.labels.empty()) std::printf("  labels: %s\n", id_list(example.labels).c_str());
    if (tokenizer) {
      std::vector<int32_t> ids(example.input_ids.begin(), example.input_ids.end());
      std::printf("  text: %s\n", quoted(tokenizer->decode(ids)).c_str());
      // A prompt/completion record: zeros then ones.
      auto first_loss = std::find(example.loss_mask.begin(), example.loss_mask.end(), 1);
      size_t boundary = static_cast<size_t>(first_loss - example.loss_mask.begin());
      if (boundary > 0 && boundary < ids.size() &&
          std::find(first_loss, example.loss_mask.end(), 0) == example.loss_mask.end()) {
        std::span<const int32_t> all(ids);
        std::printf("  prompt: %s\n", quoted(tokenizer->decode(all.first(boundary))).c_str());
        std::printf("  completion: %s\n", quoted(tokenizer->decode(all.subspan(boundary))).c_str());
      }
    }
    ++shown;
  }
  if (!json) std::printf("%lld records shown from %s\n", static_cast<long long>(shown), path.c_str());
  return 0;
}

}  // namespace

int run_data(std::span<char*> args) {
  if (args.empty()) throw_bad_input("data: expected build or inspect\n", kUsage);
  std::string_view verb = args[0];
  if (verb == "build") return run_build(args.subspan(1));
  if (verb == "inspect") return run_inspect_records(args.subspan(1));
  if (verb == "--help" || verb == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  throw_bad_input("data: unknown verb \"", verb, "\" (expected build or inspect)\n", kUsage);
}

}  // namespace llmft::launch
