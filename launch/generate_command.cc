// `llmft generate`: text from a model directory with the KV cache
// (model/generation.h). --chat renders the model's own chat template
// (data/chat_template.h, the renderer the chat-data builder uses too) with the
// generation prompt, so the model sees the format it was tuned on, and stops
// at its EOS or end-of-turn token.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

#include "core/context.h"
#include "core/dtype.h"
#include "core/error.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "launch/commands.h"
#include "model/generation.h"
#include "model/llama.h"

namespace llmft::launch {
namespace {

constexpr const char* kUsage =
    "usage: llmft generate --model DIR (--prompt TEXT | --chat TEXT [--system TEXT] | --messages FILE.json)\n"
    "                      [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S]\n"
    "                      [--dtype f32|bf16] [--device cpu|cuda[:N]] [--threads N] [--chat-template FILE]\n"
    "                      [--print-ids] [--render-only] [--no-generation-prompt] [--special-tokens-in-content]\n"
    "  --prompt: plain text (BOS added as the tokenizer config says). --chat: one user turn through the\n"
    "  model's chat template; --messages: a JSON list of {\"role\", \"content\"} (or {\"messages\": [...]}).\n"
    "  Temperature 0 (the default) is greedy; decoding runs one row at a time, so on a busy machine\n"
    "  --threads 1 can be several times faster than the default. --render-only prints the rendered\n"
    "  template instead of generating; --print-ids prints token ids (of the rendering, or of the\n"
    "  completion) instead of text. Special-token text inside message contents stays text unless\n"
    "  --special-tokens-in-content.\n";

struct GenerateArgs {
  std::string model;
  std::optional<std::string> prompt, chat, system, messages_file, chat_template_file;
  int64_t max_new_tokens = 256;
  SamplingOptions sampling;
  DType dtype = DType::kF32;
  int64_t threads = 0;   // 0: the CPU backend's default
  int cuda_device = -1;  // -1: the CPU
  bool print_ids = false;
  bool render_only = false;
  bool generation_prompt = true;
  bool special_tokens_in_content = false;
};

int64_t parse_integer(std::string_view option, const std::string& text) {
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0') throw_bad_input("generate: ", option, ": expected an integer, found '", text, "'");
  return value;
}

float parse_number(std::string_view option, const std::string& text) {
  char* end = nullptr;
  const float value = std::strtof(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw_bad_input("generate: ", option, ": expected a number, found '", text, "'");
  return value;
}

GenerateArgs parse_args(std::span<char*> args) {
  GenerateArgs parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw_bad_input("generate: ", arg, " needs a value");
      return args[++i];
    };
    if (arg == "--model") parsed.model = value();
    else if (arg == "--prompt") parsed.prompt = value();
    else if (arg == "--chat") parsed.chat = value();
    else if (arg == "--system") parsed.system = value();
    else if (arg == "--messages") parsed.messages_file = value();
    else if (arg == "--chat-template") parsed.chat_template_file = value();
    else if (arg == "--max-new-tokens") parsed.max_new_tokens = parse_integer(arg, value());
    else if (arg == "--temperature") parsed.sampling.temperature = parse_number(arg, value());
    else if (arg == "--top-k") parsed.sampling.top_k = parse_integer(arg, value());
    else if (arg == "--top-p") parsed.sampling.top_p = parse_number(arg, value());
    else if (arg == "--seed") parsed.sampling.seed = static_cast<uint64_t>(parse_integer(arg, value()));
    else if (arg == "--threads") parsed.threads = parse_integer(arg, value());
    else if (arg == "--device") {
      const std::string text = value();
      if (text == "cpu") parsed.cuda_device = -1;
      else if (text == "cuda") parsed.cuda_device = 0;
      else if (text.starts_with("cuda:")) parsed.cuda_device = static_cast<int>(parse_integer(arg, text.substr(5)));
      else throw_bad_input("generate: --device: expected cpu, cuda or cuda:N, found '", text, "'");
      if (parsed.cuda_device < -1) throw_bad_input("generate: --device: negative CUDA device in '", text, "'");
    } else if (arg == "--print-ids") parsed.print_ids = true;
    else if (arg == "--render-only") parsed.render_only = true;
    else if (arg == "--no-generation-prompt") parsed.generation_prompt = false;
    else if (arg == "--special-tokens-in-content") parsed.special_tokens_in_content = true;
    else if (arg == "--dtype") {
      const std::string text = value();
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
  const int inputs = parsed.prompt.has_value() + parsed.chat.has_value() + parsed.messages_file.has_value();
  if (inputs != 1)
    throw_bad_input("generate: give exactly one of --prompt, --chat or --messages; see llmft generate --help");
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

nlohmann::ordered_json read_messages(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_bad_input(path, ": cannot open the messages file");
  nlohmann::ordered_json json = nlohmann::ordered_json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) throw_bad_input(path, ": not valid JSON");
  if (json.is_object() && json.contains("messages")) json = json["messages"];
  if (!json.is_array() || json.empty())
    throw_bad_input(path, ": expected a non-empty list of {\"role\", \"content\"} (or {\"messages\": [...]})");
  for (size_t i = 0; i < json.size(); ++i)
    if (!json[i].is_object() || !json[i].contains("role") || !json[i]["role"].is_string())
      throw_bad_input(path, ": message ", i, ": expected an object with a string \"role\"");
  return json;
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

}  // namespace

int run_generate(std::span<char*> args) {
  const GenerateArgs parsed = parse_args(args);
  const std::filesystem::path model_directory = parsed.model;
  if (!std::filesystem::is_directory(model_directory))
    throw_bad_input(parsed.model, ": not a model directory (expected config.json, model.safetensors, tokenizer files)");
  std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(model_directory);

  std::vector<int32_t> prompt_ids;
  if (parsed.prompt) {
    prompt_ids = tokenizer->encode_with_special_tokens(*parsed.prompt);
  } else {
    ChatTemplateInputs inputs;
    if (parsed.messages_file) {
      inputs.messages = read_messages(*parsed.messages_file);
    } else {
      if (parsed.system) inputs.messages.push_back({{"role", "system"}, {"content", *parsed.system}});
      inputs.messages.push_back({{"role", "user"}, {"content", *parsed.chat}});
    }
    ModelChatTemplate model_template = [&] {
      if (!parsed.chat_template_file) return load_chat_template(model_directory);
      ModelChatTemplate from_model_config = [&]() -> ModelChatTemplate {
        try {
          return load_chat_template(model_directory);  // for its bos/eos text
        } catch (const Error&) { return {ChatTemplate("", "(none)"), "", ""}; }
      }();
      std::ifstream in(*parsed.chat_template_file, std::ios::binary);
      if (!in) throw_bad_input(*parsed.chat_template_file, ": cannot open the chat template");
      std::string source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      return ModelChatTemplate{ChatTemplate(std::move(source), *parsed.chat_template_file), from_model_config.bos_token,
                               from_model_config.eos_token};
    }();
    inputs.bos_token = model_template.bos_token;
    inputs.eos_token = model_template.eos_token;
    inputs.add_generation_prompt = parsed.generation_prompt;
    const RenderedChat rendered = model_template.chat_template.render(inputs);
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
  if (prompt_ids.empty()) throw_bad_input("generate: the prompt is empty after tokenization");

  std::unique_ptr<Context> context = parsed.cuda_device >= 0
                                         ? Context::cuda(parsed.cuda_device, parsed.sampling.seed)
                                         : Context::cpu(parsed.sampling.seed, static_cast<int>(parsed.threads));
  LlamaOptions options;
  options.compute_dtype = parsed.dtype;
  const auto load_start = std::chrono::steady_clock::now();
  std::unique_ptr<LlamaModel> model = LlamaModel::load(*context, model_directory, options);
  if (model->config().vocab_size < tokenizer->vocab_size())
    throw_bad_input(parsed.model, ": the tokenizer has ", tokenizer->vocab_size(),
                    " ids but config.json vocab_size is ", model->config().vocab_size);

  GenerationOptions generation;
  generation.max_new_tokens = parsed.max_new_tokens;
  generation.sampling = parsed.sampling;
  generation.stop_ids = stop_token_ids(model_directory, *tokenizer);

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
  std::fprintf(stderr, "generate: %zu prompt tokens, %zu new tokens (%s) in %.2f s (%.1f tokens/s; load %.2f s)\n",
               prompt_ids.size(), result.tokens.size(), result.stopped ? "stopped at EOS" : "max-new-tokens", seconds,
               seconds > 0 ? static_cast<double>(result.tokens.size()) / seconds : 0.0,
               std::chrono::duration<double>(start - load_start).count());
  return 0;
}

}  // namespace llmft::launch
