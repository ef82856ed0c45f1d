#include "config/train_config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <regex>
#include <string_view>
#include <type_traits>

#include "core/error.h"

namespace llmft::config {
namespace {

namespace pb = google::protobuf;

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the closest field name within a third of the
// name's length (at least 2 edits), or "" when nothing is that close.
std::string did_you_mean(const pb::Descriptor& message, std::string_view name) {
  const pb::FieldDescriptor* best = nullptr;
  size_t best_distance = std::max<size_t>(2, name.size() / 3) + 1;
  for (int i = 0; i < message.field_count(); ++i) {
    size_t distance = edit_distance(name, message.field(i)->name());
    if (distance < best_distance) {
      best = message.field(i);
      best_distance = distance;
    }
  }
  return best ? str_cat(" (did you mean '", best->name(), "'?)") : std::string();
}

std::string unknown_field_message(const pb::Descriptor& message, std::string_view name) {
  return str_cat("unknown field '", name, "' in ", message.full_name(), did_you_mean(message, name));
}

std::string enum_choices(const pb::EnumDescriptor& type);

// Keeps the first error with its position; TextFormat's line and column are
// zero-based, editors' are one-based. TextFormat reports the position after
// the offending name, so for errors quoting a name the column is moved back to
// where that name starts. Its unknown-field and unknown-enum-value messages
// are rewritten into llmft's form with a suggestion or the choices.
class FirstErrorCollector : public pb::io::ErrorCollector {
 public:
  explicit FirstErrorCollector(std::string_view text) : text_(text) {}

  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!first_error_.empty()) return;
    static const std::regex kNoSuchField(R"re(Message type "([\w.]+)" has no field named "(\w+)"\.?)re");
    static const std::regex kUnknownEnum(R"re(Unknown enumeration value of "(\w+)" for field "(\w+)"\.?)re");
    static const std::regex kQuotedName(R"re("(\w+)")re");
    std::smatch match;
    std::string text = message;
    std::string quoted_name;
    if (std::regex_match(message, match, kNoSuchField)) {
      quoted_name = match[2].str();
      const pb::Descriptor* type = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(match[1].str());
      if (type) text = unknown_field_message(*type, quoted_name);
    } else if (std::regex_match(message, match, kUnknownEnum)) {
      quoted_name = match[1].str();
      text = str_cat("field '", match[2].str(), "': unknown value '", quoted_name, "'");
      if (const pb::EnumDescriptor* type = enum_type_of_field(match[2].str()))
        text += str_cat(", expected one of ", enum_choices(*type));
    } else if (std::regex_search(message, match, kQuotedName)) {
      quoted_name = match[1].str();
    }
    if (!quoted_name.empty()) column = start_of_name_before(line, column, quoted_name);
    first_error_ = str_cat(line + 1, ":", column + 1, ": ", text);
  }
  void AddWarning(int, pb::io::ColumnNumber, const std::string&) override {}
  const std::string& first_error() const { return first_error_; }

 private:
  // The enum type of the llmft.proto field called `name` (field names of enum
  // type are unique across the file: kind, batch_mode, *_dtype).
  static const pb::EnumDescriptor* enum_type_of_field(const std::string& name) {
    const pb::FileDescriptor& file = *TrainConfig::descriptor()->file();
    for (int m = 0; m < file.message_type_count(); ++m)
      if (const pb::FieldDescriptor* field = file.message_type(m)->FindFieldByName(name))
        if (field->enum_type()) return field->enum_type();
    return nullptr;
  }
  // The zero-based column where the last `name` on `line` at or before `column`
  // starts.
  pb::io::ColumnNumber start_of_name_before(int line, pb::io::ColumnNumber column, const std::string& name) const {
    size_t line_start = 0;
    for (int i = 0; i < line && line_start != std::string_view::npos; ++i) {
      line_start = text_.find('\n', line_start);
      if (line_start != std::string_view::npos) ++line_start;
    }
    if (line_start == std::string_view::npos) return column;
    const std::string_view line_text = text_.substr(line_start, text_.find('\n', line_start) - line_start);
    // Tabs count as 8 columns in protobuf's tokenizer; only plain spaces are
    // mapped back exactly.
    const size_t at = line_text.rfind(name, static_cast<size_t>(column));
    return at == std::string_view::npos ? column : static_cast<pb::io::ColumnNumber>(at);
  }

  std::string_view text_;
  std::string first_error_;
};

std::string lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string enum_choices(const pb::EnumDescriptor& type) {
  std::string out;
  for (int i = 0; i < type.value_count(); ++i) {
    if (type.value(i)->number() == 0) continue;  // *_UNSPECIFIED means "not written"
    out += str_cat(out.empty() ? "" : ", ", type.value(i)->name());
  }
  return out;
}

template <typename T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const char* begin = text.data();
  const char* end = begin + text.size();
  if (!text.empty() && text[0] == '+') ++begin;  // from_chars refuses a leading '+'
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc() || ptr != end || begin == end) return std::nullopt;
  return value;
}

// Sets one scalar (or appends to a repeated field) from `text`; on failure
// returns what the field expects ("a number").
std::optional<std::string> set_from_text(pb::Message& message, const pb::FieldDescriptor& field,
                                         std::string_view text) {
  const pb::Reflection& reflection = *message.GetReflection();
  const bool repeated = field.is_repeated();
  switch (field.cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32:
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      auto value = parse_number<int64_t>(text);
      if (!value || (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32 &&
                     (*value < std::numeric_limits<int32_t>::min() || *value > std::numeric_limits<int32_t>::max())))
        return std::string("an integer");
      if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_INT32) {
        repeated ? reflection.AddInt32(&message, &field, static_cast<int32_t>(*value))
                 : reflection.SetInt32(&message, &field, static_cast<int32_t>(*value));
      } else {
        repeated ? reflection.AddInt64(&message, &field, *value) : reflection.SetInt64(&message, &field, *value);
      }
      return std::nullopt;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32:
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      auto value = parse_number<uint64_t>(text);
      if (!value ||
          (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32 && *value > std::numeric_limits<uint32_t>::max()))
        return std::string("a non-negative integer");
      if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_UINT32) {
        repeated ? reflection.AddUInt32(&message, &field, static_cast<uint32_t>(*value))
                 : reflection.SetUInt32(&message, &field, static_cast<uint32_t>(*value));
      } else {
        repeated ? reflection.AddUInt64(&message, &field, *value) : reflection.SetUInt64(&message, &field, *value);
      }
      return std::nullopt;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      auto value = parse_number<double>(text);
      if (!value) return std::string("a number");
      if (field.cpp_type() == pb::FieldDescriptor::CPPTYPE_FLOAT) {
        const float narrowed = static_cast<float>(*value);
        repeated ? reflection.AddFloat(&message, &field, narrowed) : reflection.SetFloat(&message, &field, narrowed);
      } else {
        repeated ? reflection.AddDouble(&message, &field, *value) : reflection.SetDouble(&message, &field, *value);
      }
      return std::nullopt;
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      const std::string word = lower(text);
      bool value;
      if (word == "true" || word == "1") {
        value = true;
      } else if (word == "false" || word == "0") {
        value = false;
      } else {
        return std::string("true or false");
      }
      repeated ? reflection.AddBool(&message, &field, value) : reflection.SetBool(&message, &field, value);
      return std::nullopt;
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumDescriptor& type = *field.enum_type();
      const pb::EnumValueDescriptor* chosen = nullptr;
      for (int i = 0; i < type.value_count(); ++i)
        if (type.value(i)->number() != 0 && lower(type.value(i)->name()) == lower(text)) chosen = type.value(i);
      if (!chosen) return str_cat("one of ", enum_choices(type));
      repeated ? reflection.AddEnum(&message, &field, chosen) : reflection.SetEnum(&message, &field, chosen);
      return std::nullopt;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING:
      repeated ? reflection.AddString(&message, &field, std::string(text))
               : reflection.SetString(&message, &field, std::string(text));
      return std::nullopt;
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  return std::string("a field path ending at a scalar");
}

// Shortest text that reads back as the same value of the field's own type
// (1e-4, not 0.000100000; a float 1.1 as "1.1", not 1.100000023841858).
template <typename T>
std::string format_number(T value) {
  char buffer[64];
  auto [ptr, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return ec == std::errc() ? std::string(buffer, ptr) : std::to_string(value);
}

// Range checks; each failure is one line naming the source and field path.
// T is the field's type (float, double or int64_t), so values print as written.
class Validator {
 public:
  explicit Validator(const std::string& source_name) : source_name_(source_name) {}

  [[noreturn]] void fail(std::string_view path, std::string_view problem) const {
    throw_bad_input(source_name_, ": field '", path, "': ", problem);
  }
  // A value in an interval; `lower_open`/`upper_open` say whether the bound
  // itself is excluded. Non-finite values are always out of range.
  template <typename T>
  void in_range(std::string_view path, T value, T lo, bool lower_open, T hi, bool upper_open) const {
    const bool ok = finite(value) && (lower_open ? value > lo : value >= lo) && (upper_open ? value < hi : value <= hi);
    if (!ok)
      fail(path, str_cat(format_number(value), " out of range ", lower_open ? "(" : "[", format_number(lo), ", ",
                         format_number(hi), upper_open ? ")" : "]"));
  }
  template <typename T>
  void greater(std::string_view path, T value, T bound) const {
    if (!(finite(value) && value > bound))
      fail(path, str_cat(format_number(value), " out of range, expected > ", format_number(bound)));
  }
  template <typename T>
  void at_least(std::string_view path, T value, T bound) const {
    if (!(finite(value) && value >= bound))
      fail(path, str_cat(format_number(value), " out of range, expected >= ", format_number(bound)));
  }
  void non_empty(std::string_view path, const std::string& value, std::string_view what) const {
    if (value.empty()) fail(path, str_cat("empty, expected ", what));
  }
  void dtype_set(std::string_view path, DType dtype) const {
    if (dtype == DTYPE_UNSPECIFIED)
      fail(path, str_cat("DTYPE_UNSPECIFIED, expected one of ", enum_choices(*DType_descriptor())));
  }

 private:
  const std::string& source_name_;
};

// peft/lora.h's lora_target_module_names(); repeated here so this library
// stays below peft/ (launch/ parses, peft/ rechecks when it builds adapters).
constexpr std::string_view kLoraTargetModules[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};

}  // namespace

TrainConfig parse_train_config(const std::string& text, const std::string& source_name) {
  TrainConfig config;
  FirstErrorCollector errors(text);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &config)) {
    if (errors.first_error().empty()) throw_bad_input(source_name, ": not a valid llmft.TrainConfig");
    throw_bad_input(source_name, ":", errors.first_error());
  }
  return config;
}

void apply_override(TrainConfig& config, const std::string& assignment) {
  const std::string where = str_cat("--set ", assignment);
  const size_t equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0)
    throw_bad_input(where, ": expected field.path=value (e.g. --set optimizer.lr=1e-4)");
  const std::string path = assignment.substr(0, equals);
  const std::string_view value = std::string_view(assignment).substr(equals + 1);

  pb::Message* message = &config;
  std::string walked;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (name.empty()) throw_bad_input(where, ": empty field name in path '", path, "'");
    const pb::Descriptor& type = *message->GetDescriptor();
    const pb::FieldDescriptor* field = type.FindFieldByName(name);
    if (!field) throw_bad_input(where, ": ", unknown_field_message(type, name));
    walked += str_cat(walked.empty() ? "" : ".", name);
    const bool last = dot == std::string::npos;
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (last) {
        // An empty value selects an empty message: peft.none= (or
        // peft.none={}).
        if (!field->is_repeated() && (value.empty() || value == "{}")) {
          message->GetReflection()->MutableMessage(message, field);
          return;
        }
        throw_bad_input(where, ": field '", walked, "' is a message (", field->message_type()->full_name(),
                        "); set one of its fields, e.g. ", walked, ".", field->message_type()->field(0)->name(),
                        "=...");
      }
      if (field->is_repeated()) throw_bad_input(where, ": field '", walked, "' is a repeated message; edit the file");
      message = message->GetReflection()->MutableMessage(message, field);
      start = dot + 1;
      continue;
    }
    if (!last)
      throw_bad_input(where, ": field '", walked, "' is a ", field->type_name(), ", it has no field '",
                      path.substr(dot + 1), "'");
    if (field->is_repeated()) {
      message->GetReflection()->ClearField(message, field);
      size_t item_start = 0;
      while (!value.empty()) {
        const size_t comma = value.find(',', item_start);
        const std::string_view item =
            value.substr(item_start, comma == std::string_view::npos ? std::string_view::npos : comma - item_start);
        if (auto expected = set_from_text(*message, *field, item))
          throw_bad_input(where, ": field '", walked, "' expects a comma-separated list of ", *expected, ", got '",
                          item, "'");
        if (comma == std::string_view::npos) break;
        item_start = comma + 1;
      }
      return;
    }
    if (auto expected = set_from_text(*message, *field, value))
      throw_bad_input(where, ": field '", walked, "' expects ", *expected);
    return;
  }
}

void fill_train_config_defaults(TrainConfig& config) {
  ModelSource& model = *config.mutable_model();
  if (!model.has_hf_dir()) model.set_hf_dir("");
  if (!model.has_weights_dtype()) model.set_weights_dtype(FLOAT32);

  PeftConfig& peft = *config.mutable_peft();
  if (peft.method_case() == PeftConfig::METHOD_NOT_SET) peft.mutable_none();
  if (peft.has_lora()) {
    LoraConfig& lora = *peft.mutable_lora();
    if (!lora.has_r()) lora.set_r(8);
    if (!lora.has_alpha()) lora.set_alpha(16.0f);
    if (!lora.has_dropout()) lora.set_dropout(0.0f);
    if (!lora.has_use_rslora()) lora.set_use_rslora(false);
    if (lora.target_modules_size() == 0) {
      lora.add_target_modules("q_proj");
      lora.add_target_modules("v_proj");
    }
  }

  if (peft.has_prompt_tuning()) {
    PromptTuningConfig& prompt = *peft.mutable_prompt_tuning();
    if (!prompt.has_num_virtual_tokens()) prompt.set_num_virtual_tokens(20);
    if (!prompt.has_init() || prompt.init() == PromptTuningConfig::INIT_UNSPECIFIED)
      prompt.set_init(PromptTuningConfig::RANDOM);
    if (!prompt.has_init_text()) prompt.set_init_text("");
  }
  if (peft.has_p_tuning()) {
    PTuningConfig& p_tuning = *peft.mutable_p_tuning();
    if (!p_tuning.has_num_virtual_tokens()) p_tuning.set_num_virtual_tokens(20);
    if (!p_tuning.has_encoder_hidden_size()) p_tuning.set_encoder_hidden_size(0);
  }
  if (peft.has_bottleneck()) {
    BottleneckConfig& bottleneck = *peft.mutable_bottleneck();
    if (!bottleneck.has_placement() || bottleneck.placement() == BottleneckConfig::PLACEMENT_UNSPECIFIED)
      bottleneck.set_placement(BottleneckConfig::PFEIFFER);
    if (!bottleneck.has_bottleneck()) bottleneck.set_bottleneck(0);
    if (!bottleneck.has_reduction_factor()) bottleneck.set_reduction_factor(16);
    if (!bottleneck.has_non_linearity() || bottleneck.non_linearity() == BottleneckConfig::NON_LINEARITY_UNSPECIFIED)
      bottleneck.set_non_linearity(BottleneckConfig::RELU);
  }
  if (peft.has_prefix_tuning()) {
    PrefixTuningConfig& prefix = *peft.mutable_prefix_tuning();
    if (!prefix.has_num_virtual_tokens()) prefix.set_num_virtual_tokens(20);
    if (!prefix.has_prefix_projection()) prefix.set_prefix_projection(false);
    if (!prefix.has_encoder_hidden_size()) prefix.set_encoder_hidden_size(0);
  }

  DataConfig& data = *config.mutable_data();
  if (!data.has_seq_len()) data.set_seq_len(1024);
  if (!data.has_batch_size()) data.set_batch_size(8);
  if (!data.has_grad_accumulation_steps()) data.set_grad_accumulation_steps(1);
  if (!data.has_batch_mode()) data.set_batch_mode(PACKED);
  if (!data.has_shuffle_buffer()) data.set_shuffle_buffer(1024);
  if (!data.has_seed()) data.set_seed(0);
  if (!data.has_input_ids_feature()) data.set_input_ids_feature("input_ids");
  if (!data.has_labels_feature()) data.set_labels_feature("labels");
  if (!data.has_loss_mask_feature()) data.set_loss_mask_feature("loss_mask");
  if (!data.has_skip_corrupt_records()) data.set_skip_corrupt_records(false);
  if (!data.has_append_eos()) data.set_append_eos(false);
  if (!data.has_long_documents()) data.set_long_documents(TRUNCATE);
  if (!data.has_pack_window()) data.set_pack_window(1024);

  OptimizerConfig& optimizer = *config.mutable_optimizer();
  if (!optimizer.has_lr()) optimizer.set_lr(1e-4);
  if (!optimizer.has_weight_decay()) optimizer.set_weight_decay(0.01);
  if (!optimizer.has_beta1()) optimizer.set_beta1(0.9);
  if (!optimizer.has_beta2()) optimizer.set_beta2(0.999);
  if (!optimizer.has_eps()) optimizer.set_eps(1e-8);
  if (!optimizer.has_max_grad_norm()) optimizer.set_max_grad_norm(1.0);
  if (!optimizer.has_exclude_norms_and_biases_from_decay()) optimizer.set_exclude_norms_and_biases_from_decay(true);

  ScheduleConfig& schedule = *config.mutable_schedule();
  if (!schedule.has_kind()) schedule.set_kind(CONSTANT);
  if (!schedule.has_warmup_steps()) schedule.set_warmup_steps(0);
  if (!schedule.has_min_lr_ratio()) schedule.set_min_lr_ratio(0.0);
  if (!schedule.has_total_steps()) schedule.set_total_steps(1000);

  PrecisionConfig& precision = *config.mutable_precision();
  if (!precision.has_compute_dtype()) precision.set_compute_dtype(FLOAT32);
  if (!precision.has_init_scale()) precision.set_init_scale(65536.0f);
  if (!precision.has_growth_factor()) precision.set_growth_factor(2.0f);
  if (!precision.has_backoff_factor()) precision.set_backoff_factor(0.5f);
  if (!precision.has_growth_interval()) precision.set_growth_interval(2000);
  if (!precision.has_hysteresis()) precision.set_hysteresis(1);
  if (!precision.has_loss_scaling()) precision.set_loss_scaling(precision.compute_dtype() == FLOAT16);
  if (!precision.has_deterministic()) precision.set_deterministic(false);

  ParallelConfig& parallel = *config.mutable_parallel();
  // parallel.dp stays unset: it defaults to the launched world size / tp.
  if (!parallel.has_tp()) parallel.set_tp(1);
  if (!parallel.has_bucket_mb()) parallel.set_bucket_mb(25.0);
  if (!parallel.has_timeout_s()) parallel.set_timeout_s(600.0);

  MemoryConfig& memory = *config.mutable_memory();
  if (!memory.has_activation_checkpointing()) memory.set_activation_checkpointing(NONE);
  if (!memory.has_checkpoint_every_n_layers()) memory.set_checkpoint_every_n_layers(1);

  CheckpointConfig& checkpoint = *config.mutable_checkpoint();
  if (!checkpoint.has_dir()) checkpoint.set_dir("checkpoints");
  if (!checkpoint.has_every_n_steps()) checkpoint.set_every_n_steps(0);
  if (!checkpoint.has_keep_last()) checkpoint.set_keep_last(3);
  if (!checkpoint.has_resume()) checkpoint.set_resume("");

  LoggingConfig& logging = *config.mutable_logging();
  if (!logging.has_every_n_steps()) logging.set_every_n_steps(10);
  if (!logging.has_jsonl_path()) logging.set_jsonl_path("");
  if (!logging.has_tensorboard_dir()) logging.set_tensorboard_dir("");
  if (!logging.has_eval_every_n_steps()) logging.set_eval_every_n_steps(0);
}

void validate_train_config(const TrainConfig& config, const std::string& source_name) {
  const Validator check(source_name);

  check.non_empty("model.hf_dir", config.model().hf_dir(), "a Hugging Face model directory");
  check.dtype_set("model.weights_dtype", config.model().weights_dtype());

  if (config.peft().has_lora()) {
    const LoraConfig& lora = config.peft().lora();
    check.greater("peft.lora.r", lora.r(), int64_t{0});
    check.greater("peft.lora.alpha", lora.alpha(), 0.0f);
    check.in_range("peft.lora.dropout", lora.dropout(), 0.0f, false, 1.0f, true);
    for (const std::string& module : lora.target_modules()) {
      const bool known = std::find(std::begin(kLoraTargetModules), std::end(kLoraTargetModules), module) !=
                         std::end(kLoraTargetModules);
      if (module == "all-linear" && lora.target_modules_size() != 1)
        check.fail("peft.lora.target_modules", "'all-linear' must be the only entry");
      if (!known && module != "all-linear")
        check.fail("peft.lora.target_modules", str_cat("'", module,
                                                       "' is not a module name, expected q_proj, k_proj, "
                                                       "v_proj, o_proj, gate_proj, up_proj, "
                                                       "down_proj or all-linear"));
    }
  }

  if (config.peft().has_prompt_tuning()) {
    const PromptTuningConfig& prompt = config.peft().prompt_tuning();
    check.greater("peft.prompt_tuning.num_virtual_tokens", prompt.num_virtual_tokens(), int64_t{0});
    if (prompt.init() == PromptTuningConfig::TEXT && prompt.init_text().empty())
      check.fail("peft.prompt_tuning.init_text", "empty, expected the text whose embeddings start the prompt (init TEXT)");
    if (prompt.init() != PromptTuningConfig::TEXT && !prompt.init_text().empty())
      check.fail("peft.prompt_tuning.init_text", "set, but init is not TEXT (set init: TEXT or drop init_text)");
  }
  if (config.peft().has_p_tuning()) {
    check.greater("peft.p_tuning.num_virtual_tokens", config.peft().p_tuning().num_virtual_tokens(), int64_t{0});
    check.at_least("peft.p_tuning.encoder_hidden_size", config.peft().p_tuning().encoder_hidden_size(), int64_t{0});
  }
  if (config.peft().has_prefix_tuning()) {
    const PrefixTuningConfig& prefix = config.peft().prefix_tuning();
    check.greater("peft.prefix_tuning.num_virtual_tokens", prefix.num_virtual_tokens(), int64_t{0});
    check.at_least("peft.prefix_tuning.encoder_hidden_size", prefix.encoder_hidden_size(), int64_t{0});
  }
  if (config.peft().has_bottleneck()) {
    check.at_least("peft.bottleneck.bottleneck", config.peft().bottleneck().bottleneck(), int64_t{0});
    check.at_least("peft.bottleneck.reduction_factor", config.peft().bottleneck().reduction_factor(), int64_t{1});
  }
  const bool virtual_tokens = config.peft().has_prompt_tuning() || config.peft().has_p_tuning();
  if (virtual_tokens && config.data().batch_mode() != PADDED)
    check.fail("data.batch_mode",
               str_cat(BatchMode_Name(config.data().batch_mode()), ", expected PADDED with peft.",
                       config.peft().has_p_tuning() ? "p_tuning" : "prompt_tuning",
                       " (its virtual tokens go in front of each sequence, so a row holds one document)"));
  if (config.peft().has_prefix_tuning() && config.parallel().tp() > 1)
    check.fail("parallel.tp", str_cat(config.parallel().tp(), ", expected 1 with peft.prefix_tuning (prefix tuning "
                                                               "under tensor parallelism is not supported yet)"));

  const DataConfig& data = config.data();
  if (data.train_files_size() == 0) check.fail("data.train_files", "empty, expected at least one file or pattern");
  for (const std::string& file : data.train_files()) check.non_empty("data.train_files", file, "a file or pattern");
  for (const std::string& file : data.validation_files())
    check.non_empty("data.validation_files", file, "a file or pattern");
  check.greater("data.seq_len", data.seq_len(), int64_t{0});
  check.greater("data.batch_size", data.batch_size(), int64_t{0});
  check.greater("data.grad_accumulation_steps", data.grad_accumulation_steps(), int64_t{0});
  if (data.batch_mode() == BATCH_MODE_UNSPECIFIED)
    check.fail("data.batch_mode", "BATCH_MODE_UNSPECIFIED, expected PACKED, PADDED or PACKED_CONTIGUOUS");
  if (data.long_documents() == LONG_DOCUMENTS_UNSPECIFIED)
    check.fail("data.long_documents", "LONG_DOCUMENTS_UNSPECIFIED, expected TRUNCATE, SPLIT or DROP");
  check.at_least("data.pack_window", data.pack_window(), int64_t{1});
  check.at_least("data.shuffle_buffer", data.shuffle_buffer(), int64_t{0});
  check.non_empty("data.input_ids_feature", data.input_ids_feature(), "a tf.Example feature name");
  check.non_empty("data.labels_feature", data.labels_feature(), "a tf.Example feature name");
  check.non_empty("data.loss_mask_feature", data.loss_mask_feature(), "a tf.Example feature name");

  const OptimizerConfig& optimizer = config.optimizer();
  check.greater("optimizer.lr", optimizer.lr(), 0.0);
  check.at_least("optimizer.weight_decay", optimizer.weight_decay(), 0.0);
  check.in_range("optimizer.beta1", optimizer.beta1(), 0.0, false, 1.0, true);
  check.in_range("optimizer.beta2", optimizer.beta2(), 0.0, false, 1.0, true);
  check.greater("optimizer.eps", optimizer.eps(), 0.0);
  check.at_least("optimizer.max_grad_norm", optimizer.max_grad_norm(), 0.0);

  const ScheduleConfig& schedule = config.schedule();
  if (schedule.kind() == SCHEDULE_KIND_UNSPECIFIED)
    check.fail("schedule.kind", "SCHEDULE_KIND_UNSPECIFIED, expected CONSTANT, LINEAR or COSINE");
  check.at_least("schedule.warmup_steps", schedule.warmup_steps(), int64_t{0});
  check.in_range("schedule.min_lr_ratio", schedule.min_lr_ratio(), 0.0, false, 1.0, false);
  check.greater("schedule.total_steps", schedule.total_steps(), int64_t{0});
  if (schedule.kind() != CONSTANT && schedule.warmup_steps() >= schedule.total_steps())
    check.fail("schedule.warmup_steps",
               str_cat(schedule.warmup_steps(), " out of range, expected < schedule.total_steps (",
                       schedule.total_steps(), ") for a ", ScheduleKind_Name(schedule.kind()), " schedule"));

  const PrecisionConfig& precision = config.precision();
  check.dtype_set("precision.compute_dtype", precision.compute_dtype());
  check.greater("precision.init_scale", precision.init_scale(), 0.0f);
  check.greater("precision.growth_factor", precision.growth_factor(), 1.0f);
  check.in_range("precision.backoff_factor", precision.backoff_factor(), 0.0f, true, 1.0f, true);
  check.greater("precision.growth_interval", precision.growth_interval(), int64_t{0});
  check.greater("precision.hysteresis", precision.hysteresis(), int64_t{0});
  if (precision.compute_dtype() == FLOAT16 && !precision.loss_scaling())
    check.fail("precision.loss_scaling",
               "false with compute_dtype FLOAT16, expected true (f16 gradients underflow without loss scaling)");

  const ParallelConfig& parallel = config.parallel();
  if (parallel.has_dp()) check.at_least("parallel.dp", parallel.dp(), int64_t{1});
  check.greater("parallel.bucket_mb", parallel.bucket_mb(), 0.0);
  check.greater("parallel.timeout_s", parallel.timeout_s(), 0.0);
  check.at_least("parallel.tp", parallel.tp(), int64_t{1});

  const MemoryConfig& memory = config.memory();
  if (memory.activation_checkpointing() == ACTIVATION_CHECKPOINTING_UNSPECIFIED)
    check.fail("memory.activation_checkpointing", "ACTIVATION_CHECKPOINTING_UNSPECIFIED, expected NONE, FULL or SELECTIVE");
  check.at_least("memory.checkpoint_every_n_layers", memory.checkpoint_every_n_layers(), int64_t{1});

  const CheckpointConfig& checkpoint = config.checkpoint();
  check.non_empty("checkpoint.dir", checkpoint.dir(), "a directory");
  check.at_least("checkpoint.every_n_steps", checkpoint.every_n_steps(), int64_t{0});
  check.at_least("checkpoint.keep_last", checkpoint.keep_last(), int64_t{0});

  const LoggingConfig& logging = config.logging();
  check.at_least("logging.every_n_steps", logging.every_n_steps(), int64_t{0});
  check.at_least("logging.eval_every_n_steps", logging.eval_every_n_steps(), int64_t{0});
  if (logging.eval_every_n_steps() > 0 && data.validation_files_size() == 0)
    check.fail("logging.eval_every_n_steps",
               str_cat(logging.eval_every_n_steps(), " needs data.validation_files, which is empty"));
}

TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw_bad_input(path, ": cannot open: ", std::strerror(errno));
  std::string text;
  char buffer[1 << 16];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, read);
  const bool failed = std::ferror(file);
  std::fclose(file);
  if (failed) throw_bad_input(path, ": cannot read: ", std::strerror(errno));

  TrainConfig config = parse_train_config(text, path);
  for (const std::string& assignment : overrides) apply_override(config, assignment);
  fill_train_config_defaults(config);
  validate_train_config(config, path);
  return config;
}

std::string train_config_to_text(const TrainConfig& config) {
  std::string text;
  pb::TextFormat::PrintToString(config, &text);
  return text;
}

}  // namespace llmft::config
