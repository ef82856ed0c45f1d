// libFuzzer target for the chat-template engine (data/chat_template.h): any
// byte string, read as a template (and, after a NUL byte, the JSON messages
// to render it with), must parse and render or raise llmft::Error, never
// crash, leak or hit undefined behaviour (ASan, UBSan), and never pass the
// memory and time libFuzzer is given (-rss_limit_mb, -timeout, set by
// fuzz/run_fuzz.sh). The limits here are smaller than the defaults so that a
// render which escapes them by a constant factor still stays far inside
// those: a blow-up shows as an out-of-memory or timeout report.
// Built and run by fuzz/run_fuzz.sh (ctest tokenizer.chat_template_fuzz).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/json_depth.h"
#include "data/chat_template.h"

namespace {

nlohmann::ordered_json default_messages() {
  return nlohmann::ordered_json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Bonjour, 日本語 🙂\t  "},
    {"role": "assistant", "content": "Salut",
     "tool_calls": [{"function": {"name": "f", "arguments": {"x": [1, 2.5]}}}]},
    {"role": "user", "content": "<|im_end|> again"}])");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  llmft::ChatTemplateInputs inputs;
  inputs.bos_token = "<s>";
  inputs.eos_token = "</s>";
  inputs.add_generation_prompt = size % 2 == 0;
  inputs.messages = default_messages();
  if (nul != std::string::npos) {
    try {
      nlohmann::ordered_json messages =
          llmft::parse_json<nlohmann::ordered_json>(input.substr(nul + 1), "messages", /*allow_exceptions=*/false);
      if (messages.is_array()) inputs.messages = std::move(messages);
    } catch (const llmft::Error&) {
    }
  }
  llmft::ChatTemplateLimits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_loop_iterations = 200'000;
  limits.max_range = 10'000;
  limits.max_bytes_built = 32 << 20;
  try {
    const llmft::ChatTemplate chat_template(input.substr(0, nul), "fuzz.jinja", limits);
    const llmft::RenderedChat rendered = chat_template.render(inputs);
    // The spans lie inside the text, in order, without overlap.
    size_t end = 0;
    for (const llmft::ContentSpan& span : rendered.content_spans) {
      if (span.begin < end || span.end <= span.begin || span.end > rendered.text.size()) __builtin_trap();
      end = span.end;
    }
    if (rendered.text.size() > static_cast<size_t>(limits.max_output_bytes)) __builtin_trap();
  } catch (const llmft::Error&) {
  }
  return 0;
}
