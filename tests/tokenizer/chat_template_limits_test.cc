// A hostile chat template stops with one error line naming the template,
// line, column and limit, within a second of CPU and 100 MB of memory: each
// case renders in a child process held to those by RLIMIT_CPU and RLIMIT_AS,
// and the controls show the harness catching a render whose limit was raised
// out of the way. The real templates render unchanged, far inside the
// default limits, and a raised limit lets a large legitimate render through.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <string>

#include "core/error.h"
#include "data/chat_template.h"

namespace llmft {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM", "VmSize").
uint64_t status_bytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) return std::stoull(line.substr(prefix.size())) * 1024;  // kB
  return 0;
}

nlohmann::ordered_json conversation(int turns, size_t content_bytes = 12) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  for (int i = 0; i < turns; ++i) {
    std::string content = "turn " + std::to_string(i) + " ";
    content.resize(std::max(content.size(), content_bytes), 'w');
    messages.push_back({{"role", i % 2 == 0 ? "user" : "assistant"}, {"content", content}});
  }
  return messages;
}

struct Outcome {
  enum class Kind { kBadInput, kRendered, kOutOfMemory, kOutOfTime, kCrashed } kind = Kind::kCrashed;
  std::string message;  // the error, or the rendered text's size
  double cpu_seconds = 0;
  double peak_growth_mb = 0;  // the child's peak RSS above what it started with
};

const char* kind_name(Outcome::Kind kind) {
  switch (kind) {
    case Outcome::Kind::kBadInput: return "a kBadInput error";
    case Outcome::Kind::kRendered: return "a rendering";
    case Outcome::Kind::kOutOfMemory: return "out of memory";
    case Outcome::Kind::kOutOfTime: return "out of CPU time";
    case Outcome::Kind::kCrashed: return "a crash";
  }
  return "?";
}

// Parses and renders `source` (as "hostile.jinja") in a child process that
// may allocate `memory_bytes` more address space than it starts with and use
// `cpu_seconds` of CPU.
Outcome render_in_child(const std::string& source, const ChatTemplateLimits& limits = {},
                        uint64_t memory_bytes = 100 * kMiB, int cpu_seconds = 5) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) throw std::runtime_error("pipe failed");
  rusage before{};
  getrusage(RUSAGE_CHILDREN, &before);
  const pid_t child = fork();
  if (child == 0) {
    close(pipe_fds[0]);
    rlimit no_core{0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    rlimit cpu{static_cast<rlim_t>(cpu_seconds), static_cast<rlim_t>(cpu_seconds + 1)};
    setrlimit(RLIMIT_CPU, &cpu);
    rlimit address_space{};
    getrlimit(RLIMIT_AS, &address_space);
    address_space.rlim_cur = status_bytes("VmSize") + memory_bytes;
    setrlimit(RLIMIT_AS, &address_space);
    const uint64_t rss_before = status_bytes("VmRSS");
    std::string report;
    try {
      ChatTemplate chat_template(source, "hostile.jinja", limits);
      ChatTemplateInputs inputs;
      inputs.messages = conversation(3);
      inputs.add_generation_prompt = true;
      const RenderedChat rendered = chat_template.render(inputs);
      report = "R\n" + std::to_string(rendered.text.size()) + " bytes rendered";
    } catch (const Error& error) {
      report = std::string(error.kind() == ErrorKind::kBadInput ? "E" : "C") + "\n" + error.what();
    } catch (const std::bad_alloc&) {
      report = "M\nstd::bad_alloc";
    } catch (const std::exception& error) {
      report = std::string("C\n") + error.what();
    }
    const double growth_mb =
        static_cast<double>(status_bytes("VmHWM") - std::min(rss_before, status_bytes("VmHWM"))) / kMiB;
    report = std::to_string(growth_mb) + "\n" + report;
    (void)!write(pipe_fds[1], report.data(), report.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string report;
  char buffer[4096];
  for (ssize_t n; (n = read(pipe_fds[0], buffer, sizeof buffer)) > 0;) report.append(buffer, static_cast<size_t>(n));
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  rusage after{};
  getrusage(RUSAGE_CHILDREN, &after);
  Outcome outcome;
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  outcome.cpu_seconds = seconds(after.ru_utime) + seconds(after.ru_stime) - seconds(before.ru_utime) -
                        seconds(before.ru_stime);
  if (WIFSIGNALED(status)) {
    const int signal = WTERMSIG(status);
    outcome.kind = signal == SIGXCPU || signal == SIGKILL ? Outcome::Kind::kOutOfTime : Outcome::Kind::kCrashed;
    outcome.message = strsignal(signal);
    return outcome;
  }
  std::istringstream lines(report);
  std::string growth, kind;
  std::getline(lines, growth);
  std::getline(lines, kind);
  std::getline(lines, outcome.message, '\0');
  outcome.peak_growth_mb = growth.empty() ? 0 : std::stod(growth);
  outcome.kind = kind == "E"   ? Outcome::Kind::kBadInput
                 : kind == "R" ? Outcome::Kind::kRendered
                 : kind == "M" ? Outcome::Kind::kOutOfMemory
                               : Outcome::Kind::kCrashed;
  return outcome;
}

// The template stops with kBadInput naming hostile.jinja, `position` and
// `words`, on one line, under a second of CPU and 100 MB.
void expect_stopped(const std::string& name, const std::string& source, const std::string& position,
                    const std::string& words, const ChatTemplateLimits& limits = {}) {
  const Outcome outcome = render_in_child(source, limits);
  std::printf("[ limits ] %-34s %6.3f s CPU  %+7.1f MB  %s\n", name.c_str(), outcome.cpu_seconds,
              outcome.peak_growth_mb, outcome.message.c_str());
  ASSERT_EQ(outcome.kind, Outcome::Kind::kBadInput)
      << name << ": expected a kBadInput error, found " << kind_name(outcome.kind) << ": " << outcome.message;
  EXPECT_NE(outcome.message.find("hostile.jinja: " + position), std::string::npos) << outcome.message;
  EXPECT_NE(outcome.message.find(words), std::string::npos) << outcome.message;
  EXPECT_EQ(outcome.message.find('\n'), std::string::npos) << "not one line: " << outcome.message;
  EXPECT_LT(outcome.cpu_seconds, 1.0) << name;
  EXPECT_LT(outcome.peak_growth_mb, 100.0) << name;
}

std::string repeated(const std::string& piece, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += piece;
  return out;
}

// ---- Each limit, hit by a hostile template -------------------------------------------

// The template from the report: 10^8 iterations of ten bytes each grew a
// data build to 24 GB before the kernel killed it.
TEST(ChatTemplateLimits, TheReportedRangeLoopStopsAtRange) {
  expect_stopped("range(100000000) loop", R"({% for i in range(100000000) %}{{ "xxxxxxxxxx" }}{% endfor %})",
                 "line 1 column 13",
                 "range() would have 100000000 items, more than the limit of 100000, which Jinja's sandbox puts on "
                 "range() (--template-limits range=N raises it)");
}

TEST(ChatTemplateLimits, StringRepetitionIsCheckedBeforeAllocating) {
  expect_stopped("\"x\" * 1000000000", R"({{ "x" * 1000000000 }})", "line 1 column 8",
                 "a repeated string would be 1000000000 bytes, longer than the limit of 16 MiB "
                 "(--template-limits output_mb=N raises it)");
  expect_stopped("\"x\" * 10**18", R"({{ "xy" * 1000000000000000000 }})", "line 1 column 9",
                 "a repeated string would be");
}

TEST(ChatTemplateLimits, TheRenderedConversationIsBounded) {
  expect_stopped("100 MB of output", R"({% for i in range(100000) %}{{ "x" * 1000 }}{% endfor %})",
                 "line 1 column 29",
                 "the rendered conversation would be 16778000 bytes, longer than the limit of 16 MiB");
}

TEST(ChatTemplateLimits, DoublingAStringStopsBeforeItPassesTheBound) {
  expect_stopped("string doubling",
                 "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                 "{% endfor %}{{ ns.s }}",
                 "line 1 column 82", "a string would be 33554432 bytes, longer than the limit of 16 MiB");
}

TEST(ChatTemplateLimits, NestedLoopsShareOneIterationBudget) {
  expect_stopped("10^4 x 10^4 loops",
                 "{% set r = range(10000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
                 "line 1 column 43",
                 "this render passed the limit of 10000000 loop iterations (each statement and expression run "
                 "in a loop body counts as one) (--template-limits loop_iterations=N raises it)");
  expect_stopped("10^3 x 10^3 x 10^3 loops",
                 "{% set r = range(1000) %}{% for i in r %}{% for j in r %}{% for k in r %}{{ '' }}{% endfor %}"
                 "{% endfor %}{% endfor %}",
                 "line 1 column 74", "loop iterations");
}

TEST(ChatTemplateLimits, ListWorkCountsAsIterations) {
  // `in` over a list, and == between two lists that share their halves: 2^80
  // items to compare, which only the budget stops.
  expect_stopped("`in` a long list, repeatedly",
                 "{% set r = range(100000) %}{% for i in range(1000) %}{% if -1 in r %}{% endif %}{% endfor %}",
                 "line 1 column 63", "loop iterations");
  expect_stopped("== on shared halves",
                 "{% set ns = namespace(x=[1], y=[1]) %}{% for i in range(80) %}{% set ns.x = [ns.x, ns.x] %}"
                 "{% set ns.y = [ns.y, ns.y] %}{% endfor %}{{ ns.x == ns.y }}",
                 "line 1 column 141", "loop iterations");
  expect_stopped("printing shared halves",
                 "{% set ns = namespace(x=[1]) %}{% for i in range(80) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"
                 "{{ ns.x }}",
                 "line 1 column 97", "the rendered conversation would be");
}

TEST(ChatTemplateLimits, ListsTheTemplateBuildsAreBounded) {
  expect_stopped("list doubling",
                 "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}",
                 "line 1 column 75",
                 "a list concatenation would have 131072 items, more than the limit of 100000");
  expect_stopped("characters of 10 MB", "{% for c in 'x' * 10000000 %}{% endfor %}", "line 1 column 17",
                 "the characters of a string would have 10000000 items");
  expect_stopped("split into 8M words", "{{ ('x ' * 8000000).split() | length }}", "line 1 column 26",
                 "a split would have 100001 items");
}

TEST(ChatTemplateLimits, RegrowingAStringByCopyingCountsEveryCopy) {
  // Each iteration copies the whole string to add 1000 bytes: 10^5 of them
  // would copy 5 TB; the bytes-built budget stops it at 1 GiB.
  expect_stopped("quadratic regrowth",
                 "{% set ns = namespace(s='') %}{% for i in range(100000) %}{% set ns.s = ns.s ~ 'x' * 1000 %}"
                 "{% endfor %}",
                 "line 1 column",
                 "this render has built or copied more than 1024 MiB of strings and lists, the limit "
                 "(--template-limits built_mb=N raises it)");
}

TEST(ChatTemplateLimits, DeepNestingStopsTheParser) {
  const std::string words = "nested deeper than 200 levels of blocks, brackets and operators "
                            "(--template-limits depth=N raises it)";
  expect_stopped("100000 parentheses", "{{ " + repeated("(", 100000) + "1" + repeated(")", 100000) + " }}",
                 "line 1 column", words);
  expect_stopped("100000 brackets", "{{ " + repeated("[", 100000) + repeated("]", 100000) + " }}",
                 "line 1 column", words);
  expect_stopped("100000 ifs", repeated("{% if true %}", 100000) + "x" + repeated("{% endif %}", 100000),
                 "line 1 column 2594", words);  // the condition of the 200th if
  expect_stopped("100000 unary minuses", "{{ " + repeated("-", 100000) + "1 }}", "line 1 column", words);
  expect_stopped("100000 nots", "{{ " + repeated("not ", 100000) + "true }}", "line 1 column", words);
  expect_stopped("100000 calls", "{{ " + repeated("range(", 100000) + "1" + repeated(")", 100000) + " }}",
                 "line 1 column", words);
  // Chains that the parser builds in a loop, not by recursion: the tree's depth is counted too.
  expect_stopped("100000 additions", "{{ 1" + repeated(" + 1", 100000) + " }}", "line 1 column", words);
  expect_stopped("100000 attributes", "{{ messages" + repeated(".x", 100000) + " }}", "line 1 column", words);
  expect_stopped("100000 filters", "{{ 'a'" + repeated(" | trim", 100000) + " }}", "line 1 column", words);
  expect_stopped("100000 conditionals", "{{ 1" + repeated(" if true else 1", 100000) + " }}", "line 1 column",
                 words);
}

TEST(ChatTemplateLimits, ValuesCannotGrowDeeperThroughANamespace) {
  expect_stopped("[ns.x] 100000 times",
                 "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}",
                 "line 1 column 59", "a value nested deeper than 200 levels (--template-limits depth=N raises it)");
  // A namespace inside a container could contain itself.
  expect_stopped("namespace in itself", "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "line 1 column 27",
                 "a namespace() cannot be stored in a namespace()");
  expect_stopped("namespace in a list", "{% set ns = namespace() %}{% set ns.l = [ns] %}{{ ns }}", "line 1 column 42",
                 "a namespace() cannot be stored in a list");
}

TEST(ChatTemplateLimits, NumbersOutsideInt64AreErrorsNotUndefinedBehaviour) {
  expect_stopped("huge literal", "{{ 99999999999999999999 }}", "line 1 column 4", "out of the 64-bit range");
  expect_stopped("overflowing +", "{{ 9223372036854775807 + 1 }}", "line 1 column 24",
                 "integer result of '+' out of the 64-bit range");
  expect_stopped("overflowing *", "{{ 4294967296 * 4294967296 }}", "line 1 column 15", "out of the 64-bit range");
  EXPECT_EQ(render_in_child("{{ 1.0 / 10.0 ** 320 }}").kind, Outcome::Kind::kRendered);  // a subnormal prints
  expect_stopped("tojson indent 10^9", "{{ [[1]] | tojson(indent=1000000000) }}", "line 1 column 12",
                 "a tojson result would be");
}

// ---- Controls: the harness catches what the limits prevent ---------------------------------

TEST(ChatTemplateLimits, ControlWithTheOutputLimitRaisedTheRepetitionRunsOutOfMemory) {
  const ChatTemplateLimits raised = parse_chat_template_limits("output_mb=4096,built_mb=8192", "test");
  const Outcome outcome = render_in_child(R"({{ "x" * 1000000000 }})", raised);
  EXPECT_EQ(outcome.kind, Outcome::Kind::kOutOfMemory) << kind_name(outcome.kind) << ": " << outcome.message;
}

TEST(ChatTemplateLimits, ControlWithTheLoopLimitRaisedNestedLoopsRunOutOfTime) {
  const ChatTemplateLimits raised = parse_chat_template_limits("loop_iterations=1000000000000", "test");
  const Outcome outcome = render_in_child(
      "{% set r = range(10000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", raised, 100 * kMiB,
      /*cpu_seconds=*/1);
  EXPECT_EQ(outcome.kind, Outcome::Kind::kOutOfTime) << kind_name(outcome.kind) << ": " << outcome.message;
}

// ---- Raising a limit -------------------------------------------------------------------------

std::string render(const std::string& source, const ChatTemplateLimits& limits,
                   const nlohmann::ordered_json& messages = conversation(2)) {
  ChatTemplateInputs inputs;
  inputs.messages = messages;
  return ChatTemplate(source, "legit.jinja", limits).render(inputs).text;
}

TEST(ChatTemplateLimits, RaisedLimitsLetALargeLegitimateRenderThrough) {
  // range() of 200000 and 16 million loop iterations: refused by default, rendered when raised.
  const std::string counting = "{{ range(200000) | length }}";
  EXPECT_THROW(render(counting, {}), Error);
  EXPECT_EQ(render(counting, parse_chat_template_limits("range=200000", "test")), "200000");
  const std::string nested = "{% set ns = namespace(n=0) %}{% set r = range(4000) %}{% for i in r %}{% for j in r %}"
                             "{% endfor %}{% set ns.n = ns.n + r | length %}{% endfor %}{{ ns.n }}";
  EXPECT_THROW(render(nested, {}), Error);
  EXPECT_EQ(render(nested, parse_chat_template_limits("loop_iterations=20000000", "test")), "16000000");
  // A conversation longer than the output limit: here a 1 MiB limit and a 3 MB
  // conversation, so the test stays small; output_mb works the same from 16.
  ChatTemplateLimits small;
  small.max_output_bytes = 1 << 20;
  const std::string chatml =
      "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}";
  const nlohmann::ordered_json long_conversation = conversation(3, 1'000'000);
  try {
    render(chatml, small, long_conversation);
    FAIL() << "expected the output limit";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("legit.jinja: line 1 column 24: the rendered conversation would be"),
              std::string::npos)
        << error.what();
  }
  const std::string text = render(chatml, parse_chat_template_limits("output_mb=4", "test", small), long_conversation);
  // Each turn: <|im_start|> ROLE \n CONTENT <|im_end|> \n; roles user, assistant, user.
  EXPECT_EQ(text.size(), 3 * (12 + 1 + 1'000'000 + 10 + 1) + 4 + 9 + 4);
}

TEST(ChatTemplateLimits, ParsesTheFlag) {
  const ChatTemplateLimits limits =
      parse_chat_template_limits("output_mb=32,loop_iterations=5,range=7,built_mb=2048,depth=300", "--template-limits");
  EXPECT_EQ(limits.max_output_bytes, int64_t{32} << 20);
  EXPECT_EQ(limits.max_loop_iterations, 5);
  EXPECT_EQ(limits.max_range, 7);
  EXPECT_EQ(limits.max_bytes_built, int64_t{2048} << 20);
  EXPECT_EQ(limits.max_nesting_depth, 300);
  EXPECT_EQ(parse_chat_template_limits("range=9", "f").max_output_bytes, ChatTemplateLimits().max_output_bytes);
  EXPECT_EQ(ChatTemplateLimits().max_bytes_built, 64 * ChatTemplateLimits().max_output_bytes);
  EXPECT_EQ(parse_chat_template_limits("output_mb=32", "f").max_bytes_built, int64_t{2048} << 20);  // scaled with it
  for (const char* bad : {"", "range", "range=0", "range=-1", "range=1x", "speed=3", "output_mb=99999999", "depth=5000",
                          "range=1,"}) {
    try {
      parse_chat_template_limits(bad, "--template-limits");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& error) {
      EXPECT_EQ(error.kind(), ErrorKind::kBadInput);
      EXPECT_EQ(std::string(error.what()).rfind("--template-limits: ", 0), 0u) << error.what();
    }
  }
}

// ---- Real templates, far inside the limits ---------------------------------------------------

// Templates as their models' tokenizer_config.json carry them (Qwen2.5's also
// in tests/interop/test_chat_template.py, compared with transformers there).
const char* const kSmolLm2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const char* const kLlama3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const char* const kMistral =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const char* const kGemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";
const char* const kPhi3 =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
const char* const kQwen25 = R"({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)";

TEST(ChatTemplateLimits, RealTemplatesRenderShortConversationsAsTransformersDoes) {
  const nlohmann::ordered_json messages = {{{"role", "user"}, {"content", " Hi "}},
                                           {{"role", "assistant"}, {"content", "Hello!"}}};
  ChatTemplateInputs inputs;
  inputs.messages = messages;
  inputs.add_generation_prompt = true;
  inputs.bos_token = "<bos>";
  inputs.eos_token = "<eos>";
  EXPECT_EQ(ChatTemplate(kGemma, "gemma").render(inputs).text,
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>model\n");
  EXPECT_EQ(ChatTemplate(kPhi3, "phi3").render(inputs).text,
            "<|user|>\n Hi <|end|>\n<|assistant|>\nHello!<|end|>\n<|assistant|>\n");
  EXPECT_EQ(ChatTemplate(kQwen25, "qwen2.5").render(inputs).text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>assistant\n");
}

// A 2,000-turn, 2 MB conversation through every real template, under limits
// a quarter of the defaults or less (output 4 MiB, a million loop iterations,
// lists of 1,000, 128 MiB built, depth 20), renders exactly as under the
// defaults. (They need at most 72,000 iterations, 70 MiB built and depth 7.)
TEST(ChatTemplateLimits, RealTemplatesRenderLongConversationsFarInsideTheDefaults) {
  const ChatTemplateLimits tight =
      parse_chat_template_limits("output_mb=4,loop_iterations=1000000,range=1000,built_mb=128,depth=20", "test");
  ChatTemplateInputs inputs;
  inputs.messages = conversation(2000, 1000);
  inputs.bos_token = "<s>";
  inputs.eos_token = "</s>";
  for (const auto& [name, source] : {std::pair{"smollm2", kSmolLm2}, std::pair{"llama3", kLlama3},
                                     std::pair{"mistral", kMistral}, std::pair{"gemma", kGemma},
                                     std::pair{"phi3", kPhi3}, std::pair{"qwen2.5", kQwen25}}) {
    SCOPED_TRACE(name);
    const RenderedChat tight_rendering = ChatTemplate(source, name, tight).render(inputs);
    EXPECT_EQ(tight_rendering.text, ChatTemplate(source, name).render(inputs).text);
    EXPECT_GT(tight_rendering.text.size(), 2'000'000u);
  }
}

}  // namespace
}  // namespace llmft
