// `llmft generate`: text from a model directory with the KV cache
// (model/generation.h). --chat renders the model's own chat template
// (data/chat_template.h, the renderer the chat-data builder uses too) with the
// generation prompt, so the model sees the format it was tuned on, and stops
// at its EOS or end-of-turn token. --batch FILE.jsonl scores held-out
// conversations by exact match (launch/exact_match.h) and counts how many
// generations stopped at end-of-turn by themselves.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/json_depth.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "launch/cli_args.h"
#include "launch/commands.h"
#include "launch/exact_match.h"
#include "model/generation.h"
#include "model/llama.h"
#include "peft/adapter_io.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft generate --model DIR [--adapter DIR] (--prompt TEXT | --chat TEXT [--system TEXT] | --messages FILE.json |\n"
    "                                    --batch FILE.jsonl [--batch-output FILE.jsonl] [--show N])\n"
    "                      [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                      [--dtype f32|bf16] [--device cpu|cuda[:N]] [--threads N] [--chat-template FILE]\n"
    "                      [--print-ids] [--render-only] [--no-generation-prompt] [--special-tokens-in-content]\n"
    "                      [--template-limits output_mb=N,loop_iterations=N,range=N,built_mb=N,depth=N]\n"
    "  --adapter: a Hugging Face PEFT adapter directory (LORA, PROMPT_TUNING, P_TUNING, PREFIX_TUNING) or an\n"
    "  AdapterHub bottleneck adapter, applied to the model (llmft export --adapter writes them; PEFT- and\n"
    "  AdapterHub-made ones load too).\n"
    "  --prompt: plain text (BOS added as the tokenizer config says). --chat: one user turn through the\n"
    "  model's chat template; --messages: a JSON list of {\"role\", \"content\"} (or {\"messages\": [...]}).\n"
    "  Temperature 0 (the default) is greedy. On a machine whose cores are busy with other work,\n"
    "  --threads 1 can make the prompt's prefill faster than the default. --render-only prints the rendered\n"
    "  template instead of generating; --print-ids prints token ids (of the rendering, or of the\n"
    "  completion) instead of text. Special-token text inside message contents stays text unless\n"
    "  --special-tokens-in-content. The chat template's render is bounded (output_mb=16 MiB,\n"
    "  loop_iterations=10000000, range=100000 items, built_mb=1024 MiB built or copied, depth=200\n"
    "  levels); --template-limits raises any of them (built_mb follows output_mb unless given).\n"
    "  --batch: one conversation per line, {\"messages\": [...], \"expected\": \"...\"}; each is rendered with\n"
    "  the generation prompt and decoded (greedy by default), --show N of them (default 3) are printed with\n"
    "  their expected answer, then `exact_match K/N = P%` (a generation matches when it equals \"expected\"\n"
    "  after trimming leading and trailing whitespace from both; nothing else is normalised) and\n"
    "  `stopped_by_itself S/N = P%` (generations that ended at EOS/end-of-turn before --max-new-tokens).\n"
    "  --batch-output writes every generation as JSONL: {\"prompt\" (the last user message), \"expected\",\n"
    "  \"generated\", \"exact\", \"stopped\", \"new_tokens\", \"prompt_ids\" (the rendered conversation),\n"
    "  \"generated_ids\" (the stop token included when one ended it)}.\n";

struct GenerateArgs {
  std::string model;
  std::optional<std::string> adapter;
  std::optional<std::string> prompt, chat, system, messages_file, chat_template_file;
  std::optional<std::string> batch_file, batch_output_file;
  int64_t show = 3;  // --batch: generations printed beside their expected answer
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  DType dtype = DType::kF32;
  int64_t threads = 0;   // 0: the CPU backend's default
  int cuda_device = -1;  // -1: the CPU
  bool print_ids = false;
  bool render_only = false;
  bool generation_prompt = true;
  bool special_tokens_in_content = false;
  ChatTemplateLimits template_limits;
};

float parse_number(std::string_view option, const std::string& text) {
  char* end = nullptr;
  const float value = std::strtof(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw_bad_input("generate: ", option, ": expected a number, found '", text, "'");
  return value;
}

GenerateArgs parse_args(std::span<char*> args) {
  GenerateArgs parsed;
  for (ArgCursor cursor("generate", args); cursor.next();) {
    const std::string_view arg = cursor.arg();
    if (arg == "--model") parsed.model = cursor.value();
    else if (arg == "--adapter") parsed.adapter = cursor.value();
    else if (arg == "--prompt") parsed.prompt = cursor.value();
    else if (arg == "--chat") parsed.chat = cursor.value();
    else if (arg == "--system") parsed.system = cursor.value();
    else if (arg == "--messages") parsed.messages_file = cursor.value();
    else if (arg == "--batch") parsed.batch_file = cursor.value();
    else if (arg == "--batch-output") parsed.batch_output_file = cursor.value();
    else if (arg == "--show") parsed.show = cursor.int_value();
    else if (arg == "--chat-template") parsed.chat_template_file = cursor.value();
    else if (arg == "--max-new-tokens") parsed.max_new_tokens = cursor.int_value();
    else if (arg == "--temperature") parsed.sampling.temperature = parse_number(arg, cursor.value());
    else if (arg == "--top-k") parsed.sampling.top_k = cursor.int_value();
    else if (arg == "--top-p") parsed.sampling.top_p = parse_number(arg, cursor.value());
    else if (arg == "--seed") parsed.sampling.seed = static_cast<uint64_t>(cursor.int_value());
    else if (arg == "--threads") parsed.threads = cursor.int_value();
    else if (arg == "--device") parsed.cuda_device = cursor.device_value();
    else if (arg == "--print-ids") parsed.print_ids = true;
    else if (arg == "--render-only") parsed.render_only = true;
    else if (arg == "--no-generation-prompt") parsed.generation_prompt = false;
    else if (arg == "--special-tokens-in-content") parsed.special_tokens_in_content = true;
    else if (arg == "--template-limits")
      parsed.template_limits = parse_chat_template_limits(cursor.value(), "generate: --template-limits");
    else if (arg == "--dtype") {
      const std::string text = cursor.value();
      std::optional<DType> dtype = parse_dtype(text);
      if (!dtype || (*dtype != DType::kF32 && *dtype != DType::kBF16))
        throw_bad_input("generate: --dtype: expected f32 or bf16, found '", text, "'");
      parsed.dtype = *dtype;
    } else if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      throw_bad_input("generate: unexpected argument '", arg, "'; see llmft generate --help");
    }
  }
  if (parsed.model.empty()) throw_bad_input("generate: --model DIR is required; see llmft generate --help");
  const int inputs = parsed.prompt.has_value() + parsed.chat.has_value() + parsed.messages_file.has_value() +
                     parsed.batch_file.has_value();
  if (inputs != 1)
    throw_bad_input("generate: give exactly one of --prompt, --chat or --messages, or --batch FILE; ",
                    "see llmft generate --help");
  if (parsed.batch_output_file && !parsed.batch_file) throw_bad_input("generate: --batch-output goes with --batch");
  if (parsed.batch_file && (parsed.render_only || parsed.print_ids))
    throw_bad_input("generate: --render-only and --print-ids do not go with --batch");
  if (parsed.show < 0) throw_bad_input("generate: --show: expected >= 0, found ", parsed.show);
  if (parsed.system && !parsed.chat) throw_bad_input("generate: --system goes with --chat");
  if (parsed.render_only && parsed.prompt)
    throw_bad_input("generate: --render-only renders a chat (--chat or --messages)");
  if (parsed.threads < 0 || parsed.threads > 4096)
    throw_bad_input("generate: --threads: expected 0 (default) to 4096, found ", parsed.threads);
  if (parsed.max_new_tokens < 0)
    throw_bad_input("generate: --max-new-tokens: expected >= 0, found ", parsed.max_new_tokens);
  Sampler check(parsed.sampling);  // range errors now, before loading anything
  return parsed;
}

// `where` names the file (and line) in errors.
void check_messages(const nlohmann::ordered_json& messages, const std::string& where) {
  if (!messages.is_array() || messages.empty())
    throw_bad_input(where, ": expected a non-empty list of {\"role\", \"content\"} (or {\"messages\": [...]})");
  for (size_t i = 0; i < messages.size(); ++i)
    if (!messages[i].is_object() || !messages[i].contains("role") || !messages[i]["role"].is_string())
      throw_bad_input(where, ": message ", i, ": expected an object with a string \"role\"");
}

nlohmann::ordered_json read_messages(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_bad_input(path, ": cannot open the messages file");
  nlohmann::ordered_json json = parse_json<nlohmann::ordered_json>(in, path, /*allow_exceptions=*/false);
  if (json.is_discarded()) throw_bad_input(path, ": not valid JSON");
  if (json.is_object() && json.contains("messages")) json = json["messages"];
  check_messages(json, path);
  return json;
}

struct BatchItem {
  nlohmann::ordered_json messages;
  std::string expected;
  int64_t line = 0;  // 1-based line of the batch file
};

// Every line of a --batch file, checked before the model loads so a bad line
// costs no generation time.
std::vector<BatchItem> read_batch(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_bad_input(path, ": cannot open the batch file");
  std::vector<BatchItem> items;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (trim_ascii_whitespace(text).empty()) continue;
    const std::string where = str_cat(path, ": line ", line);
    nlohmann::ordered_json json = parse_json<nlohmann::ordered_json>(text, where, /*allow_exceptions=*/false);
    if (json.is_discarded() || !json.is_object())
      throw_bad_input(where, ": expected a JSON object {\"messages\": [...], \"expected\": \"...\"}");
    if (!json.contains("messages")) throw_bad_input(where, ": missing field \"messages\"");
    check_messages(json["messages"], where);
    if (!json.contains("expected") || !json["expected"].is_string())
      throw_bad_input(where, ": expected a string field \"expected\" (the answer to score against)");
    items.push_back({json["messages"], json["expected"].get<std::string>(), line});
  }
  if (items.empty()) throw_bad_input(path, ": no conversations (expected one JSON object per line)");
  return items;
}

// The content of the last user message: what a reader recognises a
// conversation by in printed and written results.
std::string last_user_content(const nlohmann::ordered_json& messages) {
  for (auto it = messages.rbegin(); it != messages.rend(); ++it)
    if ((*it)["role"] == "user" && it->contains("content") && (*it)["content"].is_string())
      return (*it)["content"].get<std::string>();
  return "";
}

// The token ids a model stops at: eos_token_id of generation_config.json and
// config.json, the tokenizer's EOS, and the end-of-turn tokens of the common
// chat formats when the vocabulary has them as single tokens.
std::vector<int32_t> stop_token_ids(const std::filesystem::path& model_directory, const Tokenizer& tokenizer) {
  std::vector<int32_t> ids = read_eos_token_ids(model_directory);
  auto add = [&](int32_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  if (tokenizer.eos_id()) add(*tokenizer.eos_id());
  for (const char* end_of_turn : {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"}) {
    const std::vector<int32_t> encoded = tokenizer.encode(end_of_turn);
    if (encoded.size() == 1 && tokenizer.decode(encoded) == end_of_turn) add(encoded[0]);
  }
  return ids;
}

std::string join_ids(std::span<const int32_t> ids) {
  std::string line;
  for (int32_t id : ids) line += str_cat(line.empty() ? "" : " ", id);
  return line;
}

// The chat template a run renders with: the model's own, or --chat-template
// FILE with the model's bos/eos text.
ModelChatTemplate load_template(const GenerateArgs& parsed, const std::filesystem::path& model_directory) {
  if (!parsed.chat_template_file) return load_chat_template(model_directory, parsed.template_limits);
  ModelChatTemplate from_model_config = [&]() -> ModelChatTemplate {
    try {
      return load_chat_template(model_directory, parsed.template_limits);  // for its bos/eos text
    } catch (const Error&) { return {ChatTemplate("", "(none)"), "", ""}; }
  }();
  std::ifstream in(*parsed.chat_template_file, std::ios::binary);
  if (!in) throw_bad_input(*parsed.chat_template_file, ": cannot open the chat template");
  std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return ModelChatTemplate{ChatTemplate(std::move(source), *parsed.chat_template_file, parsed.template_limits),
                           from_model_config.bos_token, from_model_config.eos_token};
}

RenderedChat render(const ModelChatTemplate& model_template, const nlohmann::ordered_json& messages,
                    bool generation_prompt) {
  ChatTemplateInputs inputs;
  inputs.messages = messages;
  inputs.bos_token = model_template.bos_token;
  inputs.eos_token = model_template.eos_token;
  inputs.add_generation_prompt = generation_prompt;
  return model_template.chat_template.render(inputs);
}

std::string percent(int64_t count, int64_t total) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f%%", total > 0 ? 100.0 * static_cast<double>(count) / total : 0.0);
  return text;
}

// --batch: every conversation generated in turn with the same options; exact
// match and self-stopping counted (see the usage text for the rules).
int run_batch(const GenerateArgs& parsed, const std::filesystem::path& model_directory, const Tokenizer& tokenizer,
              const ModelChatTemplate& model_template, const std::vector<BatchItem>& items, Context& context,
              LlamaModel& model, const GenerationOptions& generation) {
  std::optional<std::ofstream> output;
  if (parsed.batch_output_file) {
    output.emplace(*parsed.batch_output_file, std::ios::binary);
    if (!*output) throw_bad_input(*parsed.batch_output_file, ": cannot open for writing (--batch-output)");
  }
  int64_t exact = 0, stopped = 0, new_tokens = 0;
  // A progress line on a terminal only, rewritten in place and erased before
  // anything else is printed, so logs and pipes get just the results.
  const bool show_progress = isatty(fileno(stderr));
  auto erase_progress = [&] {
    if (show_progress) std::fputs("\r\033[K", stderr);
  };
  const auto start = std::chrono::steady_clock::now();
  for (size_t index = 0; index < items.size(); ++index) {
    const BatchItem& item = items[index];
    const std::vector<int32_t> prompt_ids = encode_chat(
        tokenizer, render(model_template, item.messages, parsed.generation_prompt), parsed.special_tokens_in_content);
    if (prompt_ids.empty())
      throw_bad_input(*parsed.batch_file, ": line ", item.line, ": the conversation is empty after tokenization");
    const GenerationResult result = generate(context, model, prompt_ids, generation);
    const std::string generated = tokenizer.decode(result.tokens, /*skip_special_tokens=*/true);
    const bool is_exact = exact_match(generated, item.expected);
    exact += is_exact;
    stopped += result.stopped;
    new_tokens += static_cast<int64_t>(result.tokens.size());
    if (static_cast<int64_t>(index) < parsed.show) {
      erase_progress();
      std::printf("[%zu] prompt:    %s\n", index + 1, last_user_content(item.messages).c_str());
      std::printf("    expected:  %s\n", item.expected.c_str());
      std::printf("    generated: %s\n", generated.c_str());
      std::printf("    %s, %s\n", is_exact ? "exact match" : "no match",
                  result.stopped ? "stopped by itself" : "cut at --max-new-tokens");
      std::fflush(stdout);
    }
    if (output) {
      nlohmann::ordered_json line = {{"prompt", last_user_content(item.messages)},
                                     {"expected", item.expected},
                                     {"generated", generated},
                                     {"exact", is_exact},
                                     {"stopped", result.stopped},
                                     {"new_tokens", result.tokens.size()},
                                     {"prompt_ids", prompt_ids},
                                     {"generated_ids", result.tokens}};
      *output << line.dump() << '\n';
    }
    if (show_progress) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      std::fprintf(stderr, "\rgenerate: %zu/%zu conversations, %lld exact so far, %.0f s", index + 1, items.size(),
                   static_cast<long long>(exact), seconds);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  erase_progress();
  if (output && !output->flush()) throw_runtime(*parsed.batch_output_file, ": write failed");
  const int64_t total = static_cast<int64_t>(items.size());
  std::printf("exact_match %lld/%lld = %s\n", static_cast<long long>(exact), static_cast<long long>(total),
              percent(exact, total).c_str());
  std::printf("stopped_by_itself %lld/%lld = %s\n", static_cast<long long>(stopped), static_cast<long long>(total),
              percent(stopped, total).c_str());
  std::fprintf(stderr, "generate: %lld conversations, %lld new tokens in %.1f s (%.1f tokens/s) from %s\n",
               static_cast<long long>(total), static_cast<long long>(new_tokens), seconds,
               seconds > 0 ? static_cast<double>(new_tokens) / seconds : 0.0, model_directory.c_str());
  return 0;
}

}  // namespace

int run_generate(std::span<char*> args) {
  const GenerateArgs parsed = parse_args(args);
  const std::filesystem::path model_directory = parsed.model;
  if (!std::filesystem::is_directory(model_directory))
    throw_bad_input(parsed.model, ": not a model directory (expected config.json, model.safetensors, tokenizer files)");
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(model_directory);

  std::vector<BatchItem> batch;
  std::optional<ModelChatTemplate> model_template;
  std::vector<int32_t> prompt_ids;
  if (parsed.batch_file) {
    batch = read_batch(*parsed.batch_file);
    model_template.emplace(load_template(parsed, model_directory));
  } else if (parsed.prompt) {
    prompt_ids = tokenizer->encode_with_special_tokens(*parsed.prompt);
  } else {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (parsed.messages_file) {
      messages = read_messages(*parsed.messages_file);
    } else {
      if (parsed.system) messages.push_back({{"role", "system"}, {"content", *parsed.system}});
      messages.push_back({{"role", "user"}, {"content", *parsed.chat}});
    }
    model_template.emplace(load_template(parsed, model_directory));
    const RenderedChat rendered = render(*model_template, messages, parsed.generation_prompt);
    if (parsed.render_only && !parsed.print_ids) {
      std::fwrite(rendered.text.data(), 1, rendered.text.size(), stdout);
      return 0;
    }
    prompt_ids = encode_chat(*tokenizer, rendered, parsed.special_tokens_in_content);
    if (parsed.render_only) {
      std::printf("%s\n", join_ids(prompt_ids).c_str());
      return 0;
    }
  }
  if (!parsed.batch_file && prompt_ids.empty()) throw_bad_input("generate: the prompt is empty after tokenization");

  std::unique_ptr<Context> context = parsed.cuda_device >= 0
                                         ? Context::cuda(parsed.cuda_device, parsed.sampling.seed)
                                         : Context::cpu(parsed.sampling.seed, static_cast<int>(parsed.threads));
  LlamaOptions options;
  options.compute_dtype = parsed.dtype;
  const auto load_start = std::chrono::steady_clock::now();
  std::unique_ptr<LlamaModel> model = LlamaModel::load(*context, model_directory, options);
  std::unique_ptr<PeftMethod> adapter;
  if (parsed.adapter) {
    adapter = load_peft_adapter(*context, *model, *parsed.adapter);
    adapter->set_training(false);
  }
  if (model->config().vocab_size < tokenizer->vocab_size())
    throw_bad_input(parsed.model, ": the tokenizer has ", tokenizer->vocab_size(),
                    " ids but config.json vocab_size is ", model->config().vocab_size);

  GenerationOptions generation;
  generation.max_new_tokens = parsed.max_new_tokens;
  generation.sampling = parsed.sampling;
  generation.stop_ids = stop_token_ids(model_directory, *tokenizer);
  if (parsed.batch_file)
    return run_batch(parsed, model_directory, *tokenizer, *model_template, batch, *context, *model, generation);

  // Streams text as tokens arrive; a token that ends inside a UTF-8 character
  // (decoded as U+FFFD) is held back until the character is complete.
  std::vector<int32_t> generated;
  size_t printed = 0;
  auto stream = [&](int32_t token) {
    generated.push_back(token);
    if (parsed.print_ids) return;
    const std::string text = tokenizer->decode(generated, /*skip_special_tokens=*/true);
    if (text.ends_with("\xEF\xBF\xBD") || text.size() <= printed) return;
    std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::fflush(stdout);
    printed = text.size();
  };
  const auto start = std::chrono::steady_clock::now();
  const GenerationResult result = generate(*context, *model, prompt_ids, generation, stream);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (parsed.print_ids) {
    std::printf("%s\n", join_ids(result.tokens).c_str());
  } else {
    const std::string text = tokenizer->decode(generated, /*skip_special_tokens=*/true);
    if (text.size() > printed) std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
    std::printf("\n");
  }
  std::fflush(stdout);  // the completion before the statistics line, also when stdout is a pipe
  const auto per_second = [](double count, double wall) { return wall > 0 ? count / wall : 0.0; };
  std::fprintf(stderr,
               "generate: %zu prompt tokens, %zu new tokens (%s) in %.2f s (%.1f tokens/s; prefill %.1f tokens/s, "
               "decode %.1f tokens/s; load %.2f s)\n",
               prompt_ids.size(), result.tokens.size(), result.stopped ? "stopped at EOS" : "max-new-tokens", seconds,
               per_second(static_cast<double>(result.tokens.size()), seconds),
               per_second(static_cast<double>(prompt_ids.size()), result.prefill_seconds),
               per_second(static_cast<double>(result.decode_steps()), result.decode_seconds),
               std::chrono::duration<double>(start - load_start).count());
  return 0;
}

}  // namespace llmft::launch
