// The chat-template engine's public side (data/chat_template.h): parsing a
// template, rendering a conversation within ChatTemplateLimits, loading a
// model's template, and encoding a rendering. The engine itself is in
// chat_template_value.cc (values and the render budget),
// chat_template_parser.cc (lexer and parser) and chat_template_renderer.cc.
#include "data/chat_template.h"

#include <algorithm>
#include <charconv>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/chat_template_internal.h"

namespace llmft {

using chat_template_internal::from_json;
using chat_template_internal::List;
using chat_template_internal::MarkedText;
using chat_template_internal::RenderBudget;
using chat_template_internal::TemplateError;
using chat_template_internal::Value;

namespace {

// Jinja's lexer first normalizes newlines (\r\n and \r become \n) and, with
// keep_trailing_newline=False (transformers' setting), drops one newline at the
// very end of the template (jinja2/lexer.py, Lexer.tokeniter).
std::string normalize_newlines(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace

ChatTemplateLimits parse_chat_template_limits(const std::string& text, const std::string& flag,
                                              ChatTemplateLimits limits) {
  const char* const kKeys = "output_mb, loop_iterations, range, built_mb or depth";
  bool built_given = false, output_given = false;
  size_t at = 0;
  while (at <= text.size()) {
    const size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    at = comma + 1;
    const size_t equals = item.find('=');
    if (equals == std::string::npos)
      throw_bad_input(flag, ": expected KEY=N items separated by commas (", kKeys, "), found '", item, "'");
    const std::string key = item.substr(0, equals), number = item.substr(equals + 1);
    int64_t value = 0;
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
    if (error != std::errc() || end != number.data() + number.size() || value < 1)
      throw_bad_input(flag, ": ", key, ": expected a positive integer, found '", number, "'");
    // Sizes in MiB, at most 1 TiB, so the byte count stays far from overflowing.
    auto mebibytes = [&] {
      if (value > (int64_t{1} << 20))
        throw_bad_input(flag, ": ", key, ": expected at most 1048576 (1 TiB), found ", value);
      return value << 20;
    };
    if (key == "output_mb") {
      limits.max_output_bytes = mebibytes();
      output_given = true;
    } else if (key == "loop_iterations") {
      limits.max_loop_iterations = value;
    } else if (key == "range") {
      limits.max_range = value;
    } else if (key == "built_mb") {
      limits.max_bytes_built = mebibytes();
      built_given = true;
    } else if (key == "depth") {
      // Each level is some twenty stack frames of the parser: an 8 MiB stack
      // holds about 2000 in a release build, 700 with AddressSanitizer.
      if (value > 1000) throw_bad_input(flag, ": depth: expected at most 1000, found ", value);
      limits.max_nesting_depth = value;
    } else {
      throw_bad_input(flag, ": unknown key '", key, "' (expected ", kKeys, ")");
    }
  }
  // Real templates build and copy about 35 bytes per byte of output.
  if (output_given && !built_given) limits.max_bytes_built = 64 * limits.max_output_bytes;
  return limits;
}

ChatTemplate::ChatTemplate(std::string source, std::string origin, ChatTemplateLimits limits)
    : source_(normalize_newlines(source)), origin_(std::move(origin)), limits_(limits) {
  body_ = chat_template_internal::parse_template(source_, origin_, limits_);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

RenderedChat ChatTemplate::render(const ChatTemplateInputs& inputs) const {
  if (!inputs.messages.is_array()) throw_bad_input(origin_, ": messages must be a list");
  RenderBudget budget(limits_);
  // The inputs are the caller's (parsed no deeper than kMaxJsonDepth from a
  // file); the bound here only keeps the conversion's recursion finite.
  const int64_t input_depth = std::max<int64_t>(limits_.max_nesting_depth, kMaxJsonDepth);
  std::map<std::string, Value> globals;
  List messages;
  try {
    if (inputs.extra.is_object())
      for (const auto& [key, value] : inputs.extra.items())
        globals[key] = from_json(value, chat_template_internal::kFromOtherData, input_depth);
    for (size_t i = 0; i < inputs.messages.size(); ++i) {
      const nlohmann::ordered_json& message = inputs.messages[i];
      if (!message.is_object()) {
        messages.push_back(from_json(message, chat_template_internal::message_field_source(i), input_depth));
        continue;
      }
      // The content is told apart from the role and other fields for loss masks.
      chat_template_internal::Dict fields;
      for (const auto& [key, item] : message.items())
        fields.emplace_back(key, from_json(item,
                                           key == "content" ? chat_template_internal::message_content_source(i)
                                                            : chat_template_internal::message_field_source(i),
                                           input_depth));
      messages.push_back(Value::of_dict(std::move(fields)));
    }
  } catch (const TemplateError& error) { throw_bad_input(origin_, ": ", error.message); }
  globals["messages"] = Value::of_list(std::move(messages));
  globals["add_generation_prompt"] = Value::of_bool(inputs.add_generation_prompt);
  globals["bos_token"] = Value::of_string(inputs.bos_token);
  globals["eos_token"] = Value::of_string(inputs.eos_token);
  MarkedText out = chat_template_internal::render_template(body_, std::move(globals), source_, origin_, budget);

  RenderedChat rendered;
  rendered.text = std::move(out.text);
  for (size_t i = 0; i < out.from_data.size();) {
    const int32_t source = out.from_data[i];
    size_t j = i;
    while (j < out.from_data.size() && out.from_data[j] == source) ++j;
    if (source > 0) rendered.content_spans.push_back({i, j, source - 1, /*from_content=*/true});
    else if (source < chat_template_internal::kFromOtherData)
      rendered.content_spans.push_back({i, j, -source - 2, /*from_content=*/false});
    else if (source == chat_template_internal::kFromOtherData)
      rendered.content_spans.push_back({i, j, -1, /*from_content=*/false});
    i = j;
  }
  return rendered;
}

namespace {

// A token field of tokenizer_config.json: a string, or an AddedToken object {"content": ...}.
std::string token_text(const nlohmann::json& config, const char* field, const std::filesystem::path& file) {
  if (!config.contains(field) || config[field].is_null()) return "";
  const nlohmann::json& value = config[field];
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string())
    return value["content"].get<std::string>();
  throw_bad_input(file.string(), ": ", field, ": expected a string or {\"content\": string}, found ", value.dump());
}

}  // namespace

ModelChatTemplate load_chat_template(const std::filesystem::path& model_directory, const ChatTemplateLimits& limits) {
  const std::filesystem::path config_path = model_directory / "tokenizer_config.json";
  nlohmann::json config = nlohmann::json::object();
  if (std::filesystem::exists(config_path)) {
    std::ifstream in(config_path);
    config = parse_json(in, config_path.string(), /*allow_exceptions=*/false);
    if (config.is_discarded() || !config.is_object()) throw_bad_input(config_path.string(), ": not a JSON object");
  }
  std::string source, origin;
  const std::filesystem::path jinja_path = model_directory / "chat_template.jinja";
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    const nlohmann::json& field = config["chat_template"];
    origin = config_path.string() + ": chat_template";
    if (field.is_string()) {
      source = field.get<std::string>();
    } else if (field.is_array()) {
      for (const nlohmann::json& entry : field)
        if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
            entry["template"].is_string())
          source = entry["template"].get<std::string>();
      if (source.empty())
        throw_bad_input(origin, ": a list of templates without one named \"default\" with a string \"template\"");
    } else {
      throw_bad_input(origin, ": expected a string or a list of {name, template}, found ", field.dump());
    }
  } else if (std::filesystem::exists(jinja_path)) {
    std::ifstream in(jinja_path, std::ios::binary);
    source.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    origin = jinja_path.string();
  } else {
    throw_bad_input(config_path.string(), ": no chat_template (and no chat_template.jinja in ",
                    model_directory.string(), "): this model has no chat format (--chat-template FILE gives one; `generate --prompt` needs none)");
  }
  return ModelChatTemplate{ChatTemplate(std::move(source), std::move(origin), limits),
                           token_text(config, "bos_token", config_path), token_text(config, "eos_token", config_path)};
}

std::vector<int32_t> encode_chat(const Tokenizer& tokenizer, const RenderedChat& rendered,
                                 bool special_tokens_in_content) {
  // Content with no special-token text tokenizes the same either way; then
  // the whole text goes through at once, exactly as transformers does it
  // (cutting it at content boundaries could change the pre-tokenizer's pieces).
  bool content_has_control_text = false;
  if (!special_tokens_in_content) {
    for (const auto& [begin, end, message, from_content] : rendered.content_spans) {
      const std::string_view span(rendered.text.data() + begin, end - begin);
      if (tokenizer.encode(span) != tokenizer.encode_ordinary(span)) {
        content_has_control_text = true;
        break;
      }
    }
  }
  if (!content_has_control_text) return tokenizer.encode(rendered.text);
  std::vector<int32_t> ids;
  size_t at = 0;
  auto append = [&](std::vector<int32_t> part) { ids.insert(ids.end(), part.begin(), part.end()); };
  for (const auto& [begin, end, message, from_content] : rendered.content_spans) {
    if (begin > at) append(tokenizer.encode(std::string_view(rendered.text).substr(at, begin - at)));
    append(tokenizer.encode_ordinary(std::string_view(rendered.text).substr(begin, end - begin)));
    at = end;
  }
  if (at < rendered.text.size()) append(tokenizer.encode(std::string_view(rendered.text).substr(at)));
  return ids;
}

}  // namespace llmft
