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
#include "core/json_depth.h"
#include "core/philox.h"
#include "data/example.h"
#include "data/tfrecord.h"

namespace llmft::data {
namespace {

using json = nlohmann::ordered_json;

constexpr size_t kBadRecordsKept = 5;

// {"text"} and {"prompt", "completion"} records; `format` says which forms
// are allowed (kTextOrPromptCompletion: either).
TokenizedRecord tokenize_plain_record(const Tokenizer& tokenizer, const json& record, InputFormat format) {
  auto string_field = [&](const char* key) {
    const json& value = record.at(key);
    if (!value.is_string()) throw_bad_input("\"", key, "\": expected a string, found ", value.type_name());
    return value.get<std::string>();
  };
  const char* expected = format == InputFormat::kText ? "(expected {\"text\"})"
                         : format == InputFormat::kPromptCompletion
                             ? "(expected {\"prompt\", \"completion\"})"
                             : "(expected {\"text\"} or {\"prompt\", \"completion\"})";
  bool has_text = record.contains("text");
  bool has_prompt = record.contains("prompt"), has_completion = record.contains("completion");
  for (auto it = record.begin(); it != record.end(); ++it) {
    bool known = (it.key() == "text" && format != InputFormat::kPromptCompletion) ||
                 ((it.key() == "prompt" || it.key() == "completion") && format != InputFormat::kText);
    if (!known) throw_bad_input("unexpected key \"", it.key(), "\" ", expected);
  }
  if (has_text && (has_prompt || has_completion))
    throw_bad_input("mixes \"text\" with \"prompt\"/\"completion\" ", expected);
  if (!has_text && !(has_prompt && has_completion))
    throw_bad_input("missing ",
                    has_prompt                               ? "\"completion\""
                    : has_completion                         ? "\"prompt\""
                    : format == InputFormat::kPromptCompletion ? "\"prompt\""
                                                               : "\"text\"",
                    " ", expected);

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

// The format a record's keys show, or kAuto when they show none.
InputFormat detect_format(const json& record) {
  if (record.contains("messages")) return InputFormat::kMessages;
  if (record.contains("conversations")) return InputFormat::kShareGpt;
  if (record.contains("instruction")) return InputFormat::kAlpaca;
  if (record.contains("text") || record.contains("prompt") || record.contains("completion"))
    return InputFormat::kTextOrPromptCompletion;
  return InputFormat::kAuto;
}

std::string key_list(const json& record) {
  std::string keys;
  for (auto it = record.begin(); it != record.end(); ++it)
    keys += str_cat(keys.empty() ? "" : ", ", "\"", it.key(), "\"");
  return keys.empty() ? "none" : keys;
}

// Rejects keys of `object` outside `allowed`; `where` prefixes the message.
void check_keys(const json& object, std::initializer_list<std::string_view> allowed, const std::string& where,
                const char* expected) {
  for (auto it = object.begin(); it != object.end(); ++it)
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end())
      throw_bad_input(where, where.empty() ? "" : ": ", "unexpected key \"", it.key(), "\" ", expected);
}

// object[key] as a string; `path` names the object in errors ("messages[2]", or "" for the record).
std::string required_string(const json& object, const char* key, const std::string& path, const char* expected) {
  if (!object.contains(key)) throw_bad_input(path, path.empty() ? "" : ": ", "missing \"", key, "\" ", expected);
  const json& value = object.at(key);
  if (!value.is_string())
    throw_bad_input(path, path.empty() ? "" : ".", key, ": expected a string, found ", value.type_name());
  return value.get<std::string>();
}

// Text of a token id for messages: "<|im_end|>" or "\n".
std::string token_for_message(const Tokenizer& tokenizer, int32_t id) {
  return json(tokenizer.decode(std::vector<int32_t>{id})).dump(-1, ' ', false, json::error_handler_t::replace);
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

// Ids that close an assistant turn: EOS, the template's eos_token, and the
// caller's end-of-turn tokens (each must be a single token).
std::vector<int32_t> end_of_turn_ids(const Tokenizer& tokenizer, const ModelChatTemplate& chat_template,
                                     const ChatMaskOptions& options) {
  std::vector<int32_t> ids;
  if (tokenizer.eos_id()) ids.push_back(*tokenizer.eos_id());
  if (!chat_template.eos_token.empty()) {
    std::vector<int32_t> eos = tokenizer.encode(chat_template.eos_token);
    if (eos.size() == 1) ids.push_back(eos[0]);
  }
  for (const std::string& token : options.end_of_turn_tokens) {
    std::vector<int32_t> encoded = tokenizer.encode(token);
    if (encoded.size() != 1)
      throw_bad_input("--end-of-turn ", dump_json(json(token)), ": expected one token of ", tokenizer.description(),
                      ", found ", encoded.size(), " ids");
    ids.push_back(encoded[0]);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

bool is_whitespace(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

}  // namespace

std::optional<InputFormat> parse_input_format(std::string_view name) {
  for (InputFormat format : {InputFormat::kAuto, InputFormat::kText, InputFormat::kPromptCompletion,
                             InputFormat::kMessages, InputFormat::kShareGpt, InputFormat::kAlpaca})
    if (input_format_name(format) == name) return format;
  return std::nullopt;
}

std::string_view input_format_name(InputFormat format) {
  switch (format) {
    case InputFormat::kAuto: return "auto";
    case InputFormat::kText: return "text";
    case InputFormat::kPromptCompletion: return "prompt-completion";
    case InputFormat::kTextOrPromptCompletion: return "text/prompt-completion";
    case InputFormat::kMessages: return "messages";
    case InputFormat::kShareGpt: return "sharegpt";
    case InputFormat::kAlpaca: return "alpaca";
  }
  return "?";
}

bool is_chat_format(InputFormat format) {
  return format == InputFormat::kMessages || format == InputFormat::kShareGpt || format == InputFormat::kAlpaca;
}

InputFormat detect_input_format(std::string_view line) {
  json record;
  try {
    record = parse_json<json>(line, "", /*allow_exceptions=*/false);
  } catch (const Error&) {
    return InputFormat::kAuto;  // nested too deep: RecordTokenizer::tokenize says so with the line
  }
  if (record.is_discarded() || !record.is_object()) return InputFormat::kAuto;
  return detect_format(record);
}

std::optional<TrainOn> parse_train_on(std::string_view name) {
  if (name == "assistant") return TrainOn::kAssistant;
  if (name == "last") return TrainOn::kLast;
  if (name == "all") return TrainOn::kAll;
  return std::nullopt;
}

json conversation_messages(const json& record, InputFormat format, TrainOn train_on) {
  json messages = json::array();
  std::vector<std::string> content_paths;  // where each message's content came from, for errors
  auto add = [&](const char* role, std::string content, std::string path) {
    messages.push_back({{"role", role}, {"content", std::move(content)}});
    content_paths.push_back(std::move(path));
  };
  std::string list_key;
  if (format == InputFormat::kMessages || format == InputFormat::kShareGpt) {
    const bool sharegpt = format == InputFormat::kShareGpt;
    list_key = sharegpt ? "conversations" : "messages";
    const char* role_key = sharegpt ? "from" : "role";
    const char* content_key = sharegpt ? "value" : "content";
    const char* expected = sharegpt ? "(expected {\"conversations\": [{\"from\", \"value\"}, ...]})"
                                    : "(expected {\"messages\": [{\"role\", \"content\"}, ...]})";
    check_keys(record, {list_key}, "", expected);
    if (!record.contains(list_key)) throw_bad_input("missing \"", list_key, "\" ", expected);
    const json& list = record.at(list_key);
    if (!list.is_array()) throw_bad_input(list_key, ": expected an array, found ", list.type_name());
    if (list.empty()) throw_bad_input(list_key, ": empty conversation");
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string path = str_cat(list_key, "[", i, "]");
      const json& turn = list[i];
      if (!turn.is_object()) throw_bad_input(path, ": expected an object, found ", turn.type_name());
      check_keys(turn, {role_key, content_key}, path, expected);
      const std::string role = required_string(turn, role_key, path, expected);
      std::string content = required_string(turn, content_key, path, expected);
      const char* mapped = nullptr;
      if (role == "system") mapped = "system";
      else if (role == "user" || (sharegpt && role == "human")) mapped = "user";
      else if (role == "assistant" || (sharegpt && role == "gpt")) mapped = "assistant";
      else
        throw_bad_input(path, ".", role_key, ": unknown role ", json(role).dump(),
                        sharegpt ? " (expected system, human, gpt, user or assistant)"
                                 : " (expected system, user or assistant)");
      add(mapped, std::move(content), path + "." + content_key);
    }
  } else if (format == InputFormat::kAlpaca) {
    list_key = "output";
    const char* expected = "(expected {\"instruction\", \"input\", \"output\"})";
    check_keys(record, {"instruction", "input", "output"}, "", expected);
    std::string user = required_string(record, "instruction", "", expected);
    if (record.contains("input")) {
      std::string input = required_string(record, "input", "", expected);
      if (!input.empty()) user += "\n\n" + input;  // Alpaca's layout: instruction, blank line, input
    }
    std::string output = required_string(record, "output", "", expected);
    add("user", std::move(user), "instruction");
    add("assistant", std::move(output), "output");
  } else {
    throw_bad_input("not a conversation format: ", input_format_name(format));
  }

  bool has_assistant = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i]["role"] != "assistant") continue;
    has_assistant = true;
    if (messages[i]["content"].get_ref<const std::string&>().empty())
      throw_bad_input(content_paths[i], ": empty assistant message (nothing to train on but the end-of-turn token)");
  }
  if (!has_assistant && train_on != TrainOn::kAll)
    throw_bad_input(list_key, ": no assistant message to train on (--train-on all trains on every token)");
  return messages;
}

TokenizedRecord tokenize_conversation(const Tokenizer& tokenizer, const ModelChatTemplate& chat_template,
                                      const json& messages, const ChatMaskOptions& options) {
  ChatTemplateInputs inputs;
  inputs.messages = messages;
  inputs.add_generation_prompt = false;  // training text ends with the last message's own end of turn
  inputs.bos_token = chat_template.bos_token;
  inputs.eos_token = chat_template.eos_token;
  const RenderedChat rendered = chat_template.chat_template.render(inputs);
  const std::string& origin = chat_template.chat_template.origin();
  const std::vector<int32_t> ids = encode_chat(tokenizer, rendered, options.special_tokens_in_content);
  if (ids.empty()) throw_bad_input(origin, ": renders the conversation as no tokens");

  TokenizedRecord out;
  out.input_ids.assign(ids.begin(), ids.end());
  out.loss_mask.assign(ids.size(), options.train_on == TrainOn::kAll ? 1 : 0);
  if (options.train_on == TrainOn::kAll) return out;

  const std::string& text = rendered.text;
  const std::vector<size_t> offsets = tokenizer.token_offsets(text, ids);
  const std::vector<int32_t> end_of_turn = end_of_turn_ids(tokenizer, chat_template, options);
  std::vector<size_t> trained;
  for (size_t i = 0; i < messages.size(); ++i)
    if (messages[i].value("role", "") == "assistant") trained.push_back(i);
  if (options.train_on == TrainOn::kLast && !trained.empty()) trained.erase(trained.begin(), trained.end() - 1);

  for (size_t message : trained) {
    std::vector<ContentSpan> spans;
    for (const ContentSpan& span : rendered.content_spans)
      if (span.from_content && span.message == static_cast<int64_t>(message)) spans.push_back(span);
    if (spans.empty())
      throw_bad_input(origin, ": does not render the content of messages[", message, "], which is to be trained on");
    // A token is trained when any of its bytes is inside the content, as
    // transformers' return_assistant_tokens_mask does (char_to_token of the
    // span's first and last characters): a template's space glued to the
    // answer's first word (" Hello") must not leave that word untrained. A
    // token of no bytes (a Metaspace "▁" prefix) counts where it stands.
    for (size_t i = 0; i < ids.size(); ++i) {
      const size_t token_begin = offsets[i], token_end = i + 1 < ids.size() ? offsets[i + 1] : text.size();
      for (const ContentSpan& span : spans) {
        bool overlaps = token_end > token_begin ? token_begin < span.end && token_end > span.begin
                                                : token_begin >= span.begin && token_begin < span.end;
        if (overlaps) out.loss_mask[i] = 1;
      }
    }

    // The end-of-turn token after the content, with only whitespace between.
    const size_t content_end = spans.back().end;
    size_t next_data = text.size();  // where the next message's text starts
    for (const ContentSpan& span : rendered.content_spans)
      if (span.begin >= content_end) {
        next_data = span.begin;
        break;
      }
    const size_t first = static_cast<size_t>(std::lower_bound(offsets.begin(), offsets.end(), content_end) -
                                             offsets.begin());
    size_t closing = first;
    bool closed = false;
    for (; closing < ids.size() && offsets[closing] < next_data; ++closing) {
      if (std::find(end_of_turn.begin(), end_of_turn.end(), ids[closing]) != end_of_turn.end()) {
        closed = true;
        break;
      }
      const size_t token_end = closing + 1 < ids.size() ? offsets[closing + 1] : text.size();
      if (!is_whitespace(std::string_view(text).substr(offsets[closing], token_end - offsets[closing]))) break;
    }
    if (!closed) {
      std::string names;
      for (int32_t id : end_of_turn) names += str_cat(names.empty() ? "" : ", ", token_for_message(tokenizer, id));
      throw_bad_input(origin, ": messages[", message, "] (assistant) is not closed by an end-of-turn token (",
                      names.empty() ? "none known: the tokenizer has no EOS" : names,
                      ") right after its content; found ",
                      json(text.substr(content_end, 40)).dump(-1, ' ', false, json::error_handler_t::replace),
                      ": a model trained on it would not learn to stop (--end-of-turn TOKEN names the template's)");
    }
    for (size_t i = first; i <= closing; ++i) out.loss_mask[i] = 1;
  }
  return out;
}

RecordTokenizer::RecordTokenizer(const Tokenizer& tokenizer, const DatasetBuildOptions& options)
    : tokenizer_(tokenizer), options_(options), format_(options.format) {}

TokenizedRecord RecordTokenizer::tokenize(std::string_view line) {
  json record;
  try {
    record = parse_json<json>(line, "");  // the caller prefixes file and line
  } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
    throw_bad_input("not valid JSON: ", error.what());
  }
  if (!record.is_object()) throw_bad_input("expected a JSON object, found ", record.type_name());
  if (format_ == InputFormat::kAuto) {
    InputFormat detected = detect_format(record);
    if (detected == InputFormat::kAuto)
      throw_bad_input("cannot tell the input format from keys ", key_list(record),
                      " (expected {\"text\"}, {\"prompt\", \"completion\"}, {\"messages\"}, {\"conversations\"} or "
                      "{\"instruction\", \"input\", \"output\"}; --format names it)");
    format_ = detected;
  }
  if (!is_chat_format(format_)) return tokenize_plain_record(tokenizer_, record, format_);
  if (!options_.chat_template)
    throw Error(ErrorKind::kBadInput,
                str_cat("--format ", input_format_name(format_), " needs a chat template: give --tokenizer a model "
                        "directory whose tokenizer_config.json has a chat_template, or --chat-template FILE"));
  json messages = conversation_messages(record, format_, options_.chat.train_on);
  return tokenize_conversation(tokenizer_, *options_.chat_template, messages, options_.chat);
}

std::string shard_file_name(const std::string& prefix, int64_t index, int64_t count, Compression compression) {
  char digits[32];
  std::snprintf(digits, sizeof(digits), "-%05lld-of-%05lld.tfrecord", static_cast<long long>(index),
                static_cast<long long>(count));
  const char* extension = compression == Compression::kGzip ? ".gz" : compression == Compression::kZlib ? ".zlib" : "";
  return prefix + digits + extension;
}

DatasetBuildSummary build_dataset(const Tokenizer& tokenizer, const DatasetBuildOptions& options,
                                  const std::function<void(const DatasetBuildProgress&)>& progress) {
  if (options.shards < 1 || options.shards > 99999)
    throw_bad_input("--shards: expected 1..99999, found ", options.shards);
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
  FileSystem& file_system = options.file_system != nullptr ? *options.file_system : local_file_system();
  auto open = [compression, &file_system](ShardOutput& shard, std::string path) {
    shard.summary.path = std::move(path);
    RecordWriterOptions writer_options;
    writer_options.compression = compression;
    shard.writer = std::make_unique<RecordWriter>(shard.summary.path + ".partial", writer_options, file_system);
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

    RecordTokenizer record_tokenizer(tokenizer, options);
    summary.format = options.format;
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
        record = record_tokenizer.tokenize(line);
      } catch (const Error& error) {
        if (error.kind() != ErrorKind::kBadInput) throw;
        std::string message = str_cat(options.input_path, ":", summary.lines, ": ", error.what());
        // A conversation file without a chat template is not one bad record but a bad command.
        bool file_level = is_chat_format(record_tokenizer.format()) && !options.chat_template;
        if (!options.skip_bad_records || file_level) throw Error(ErrorKind::kBadInput, message);
        ++summary.bad_records_skipped;
        if (summary.first_bad_records.size() < kBadRecordsKept) summary.first_bad_records.push_back(message);
        continue;
      }
      if (summary.format != record_tokenizer.format()) {
        summary.format = record_tokenizer.format();
        summary.format_line = summary.lines;
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
