// `llmft data build`: JSONL documents -> tokenized tf.Example records in
// TFRecord shards that the loader (data/loader.h) reads.
//
// Input, one JSON object per line (blank lines are skipped). The format is
// detected per file from the first non-blank record's keys, or given with
// `format` (`--format`):
//   {"text": "..."}                          text: loss on every token
//   {"prompt": "...", "completion": "..."}   prompt-completion: loss only on the completion
//     Detected, these two may be mixed line by line (either form per line);
//     named with --format, every line must be of that form.
//   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//                                            messages (OpenAI chat format), multi-turn
//   {"conversations": [{"from": "system"|"human"|"gpt"|"user"|"assistant", "value": "..."}, ...]}
//                                            sharegpt: human -> user, gpt -> assistant
//   {"instruction": "...", "input": "...", "output": "..."}
//                                            alpaca: one user turn, instruction + "\n\n" + input
//                                            ("input" may be absent or empty: then the
//                                            instruction alone), and one assistant turn, output
// Any other key, a wrong type, an unknown role, an empty conversation, an
// empty assistant message, (unless train_on is kAll) a conversation with no
// assistant message, JSON nested deeper than kMaxJsonDepth (core/json_depth.h),
// or a render that passes the template's ChatTemplateLimits is a bad record:
// one line "<file>:<line>: <field>: ...".
//
// Tokens of a record:
//   text:        prefix_ids + encode(text) + suffix_ids    (BOS/EOS as the tokenizer config says)
//   prompt/completion: prefix_ids + encode(prompt) | encode(completion) + suffix_ids [+ EOS]
//     The two are encoded separately so the loss-mask boundary falls exactly
//     between them; EOS is appended (unless the suffix already ends with it)
//     and trained on, so the model learns to stop.
//   conversations (messages, sharegpt, alpaca): the model's chat template
//     (tokenizer_config.json's chat_template, or --chat-template) renders the
//     messages with no generation prompt, by the renderer `llmft generate
//     --chat` uses (data/chat_template.h), so training and inference see the
//     same text; encode_chat() tokenizes the whole rendering as transformers'
//     apply_chat_template does (no ids added around it: the template writes
//     its own BOS), except that special-token text inside message content
//     stays text unless special_tokens_in_content.
//     Loss mask, from token byte offsets (Tokenizer::token_offsets) against
//     the byte spans the renderer records for each message's content — never
//     by searching for the response text, which would also match an earlier
//     copy of it in a user turn:
//       kAssistant (default): the tokens of every assistant message's content;
//       kLast: those of the last assistant message only;
//       kAll: every token.
//     A token belongs to a span when any of its bytes lies inside it, as in
//     transformers' return_assistant_tokens_mask: a token straddling either
//     edge of an assistant content is trained, so the first word of an answer
//     glued to the template's space (" Hello") is learned too.
//     End of turn: with kAssistant/kLast, each trained assistant message's
//     closing end-of-turn token is trained too, so the model learns to stop:
//     the tokens from the end of its content up to and including the first
//     end-of-turn token, which must follow with only whitespace between
//     (ChatML/SmolLM2/Qwen "<|im_end|>", Llama-3 "<|eot_id|>", Mistral "</s>",
//     Llama-2 " </s>"). What the template writes after that token (ChatML's
//     "\n") is not trained. End-of-turn tokens: the tokenizer's EOS, the
//     template's eos_token, and end_of_turn_tokens. A template that does not
//     close assistant turns this way is a bad record naming what follows the
//     content: a model trained on it would never learn to stop.
// Features: input_ids and loss_mask (int64 lists, data/example.h).
//
// Truncation (seq_len > 0): a longer record keeps its first seq_len tokens
// (Hugging Face's default truncation side). The choice keeps the prompt and
// the start of the answer; the loader packs or pads to seq_len anyway. A
// record whose trained tokens are cut away entirely would train on nothing,
// so it is dropped. Both are counted in the summary.
//
// Output: <output>-NNNNN-of-MMMMM.tfrecord (TensorFlow's shard naming), train
// records dealt round-robin in input order, and with val_fraction > 0
// <output>-val-00000-of-00001.tfrecord holding exactly round(val_fraction *
// records) records chosen by a Philox stream seeded with `seed` (Floyd's
// sampling), so a given input, seed and shard count always gives the same
// files. Files are written as *.partial and renamed when all succeeded; on an
// error (a bad record, a full disk) the *.partial files are removed and the
// shards of an earlier build under the same prefix are left as they were.
// With compression kGzip/kZlib (`--compression gzip|zlib`) the whole files
// are compressed and named *.tfrecord.gz / *.tfrecord.zlib, the extensions
// the reader's kAuto recognises (data/tfrecord.h); TensorFlow reads them with
// TFRecordDataset(compression_type="GZIP" / "ZLIB").
// With one shard, the glob <output>-*-of-00001.tfrecord also matches the
// validation file; point the loader at <output>-[0-9]*-of-00001.tfrecord.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat_template.h"
#include "data/tfrecord.h"
#include "data/tokenizer.h"

namespace llmft::data {

// kAuto: detected from the file's first record. kTextOrPromptCompletion is
// what detection picks for {"text"} or {"prompt", "completion"}: either form per line.
enum class InputFormat { kAuto, kText, kPromptCompletion, kTextOrPromptCompletion, kMessages, kShareGpt, kAlpaca };
// "text", "prompt-completion", "messages", "sharegpt", "alpaca" (the --format
// names); nullopt for anything else. kAuto is "auto".
std::optional<InputFormat> parse_input_format(std::string_view name);
std::string_view input_format_name(InputFormat format);
bool is_chat_format(InputFormat format);
// The format one JSONL line shows by its keys; kAuto when it shows none or is not a JSON object.
InputFormat detect_input_format(std::string_view line);

// Which tokens of a conversation the loss sees (see the top of this file).
enum class TrainOn { kAssistant, kLast, kAll };
std::optional<TrainOn> parse_train_on(std::string_view name);  // "assistant", "last", "all"

struct ChatMaskOptions {
  TrainOn train_on = TrainOn::kAssistant;
  bool special_tokens_in_content = false;  // encode_chat(): special-token text in content becomes control tokens
  std::vector<std::string> end_of_turn_tokens;  // token texts that close an assistant turn, besides EOS
};

struct DatasetBuildOptions {
  std::string input_path;     // JSONL
  std::string output_prefix;  // "data/train" -> data/train-00000-of-00008.tfrecord
  int64_t shards = 1;
  int64_t seq_len = 0;        // 0: no truncation
  double val_fraction = 0.0;  // in [0, 1)
  uint64_t seed = 0;
  bool skip_bad_records = false;  // count and skip instead of failing on the first
  Compression compression = Compression::kNone;  // kNone, kGzip or kZlib (kAuto means kNone)
  InputFormat format = InputFormat::kAuto;
  // Conversations only: the template that renders them (required for them)
  // and how their loss mask is made.
  const ModelChatTemplate* chat_template = nullptr;
  ChatMaskOptions chat;
  // Where the shards are written (the input is read with std::ifstream);
  // null: local_file_system(). Tests pass one that fails a write, as a full
  // disk does.
  FileSystem* file_system = nullptr;
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
  uint64_t dropped_no_loss = 0;      // every trained token cut away
  InputFormat format = InputFormat::kAuto;  // the format read (detected or given)
  uint64_t format_line = 0;                 // the line it was detected from (0: given)
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

// One record's tokens.
struct TokenizedRecord {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> loss_mask;
};

// A conversation record (messages, sharegpt or alpaca) as validated
// [{"role": "system"|"user"|"assistant", "content": string}, ...]. Throws
// kBadInput naming the field ("messages[2].role: unknown role \"bot\" ...").
nlohmann::ordered_json conversation_messages(const nlohmann::ordered_json& record, InputFormat format,
                                             TrainOn train_on = TrainOn::kAssistant);

// Renders, tokenizes and masks validated messages (see the top of this file).
// Throws kBadInput for a template error or a template that does not close an
// assistant turn with an end-of-turn token.
TokenizedRecord tokenize_conversation(const Tokenizer& tokenizer, const ModelChatTemplate& chat_template,
                                      const nlohmann::ordered_json& messages, const ChatMaskOptions& options);

// JSONL lines -> tokens, with the format detected from the first record that
// shows one when options.format is kAuto. Throws kBadInput without the
// "<file>:<line>: " prefix, which the caller adds.
class RecordTokenizer {
 public:
  RecordTokenizer(const Tokenizer& tokenizer, const DatasetBuildOptions& options);
  TokenizedRecord tokenize(std::string_view line);
  InputFormat format() const { return format_; }  // kAuto until detected

 private:
  const Tokenizer& tokenizer_;
  const DatasetBuildOptions& options_;
  InputFormat format_;
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
