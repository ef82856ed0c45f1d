// Prefill and decode speed of generate() on a model directory (not a test:
// built beside them, run by hand). Generation ignores EOS so every run decodes
// the same number of tokens; the prompt is synthetic ids, since speed does not
// depend on which tokens they are. Prints each repetition, the best and the
// median, and the machine's load average, since the decode rate of a 2-core
// machine depends on what else runs on it.
//
//   decode_timing --model DIR [--threads N] [--prompt-tokens 42] [--new-tokens 64]
//                 [--repeat 5] [--dtype f32|bf16]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/generation.h"

namespace {

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_directory, dtype_name = "f32";
  int threads = 0;
  int64_t prompt_tokens = 42, new_tokens = 64, repeat = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model_directory = value;
    else if (flag == "--threads")
      threads = std::atoi(value.c_str());
    else if (flag == "--prompt-tokens")
      prompt_tokens = std::atoll(value.c_str());
    else if (flag == "--new-tokens")
      new_tokens = std::atoll(value.c_str());
    else if (flag == "--repeat")
      repeat = std::atoll(value.c_str());
    else if (flag == "--dtype")
      dtype_name = value;
    else {
      std::fprintf(stderr, "decode_timing: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (model_directory.empty() || prompt_tokens < 1 || new_tokens < 2 || repeat < 1 ||
      (dtype_name != "f32" && dtype_name != "bf16")) {
    std::fprintf(stderr,
                 "usage: decode_timing --model DIR [--threads N] [--prompt-tokens N>=1] [--new-tokens N>=2] "
                 "[--repeat N>=1] [--dtype f32|bf16]\n");
    return 2;
  }
  try {
    auto context = llmft::Context::cpu(0, threads);
    llmft::LlamaOptions options;
    options.compute_dtype = dtype_name == "bf16" ? llmft::DType::kBF16 : llmft::DType::kF32;
    auto model = llmft::LlamaModel::load(*context, model_directory, options);
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < prompt_tokens; ++i)
      prompt.push_back(static_cast<int32_t>((i * 7919 + 13) % model->config().vocab_size));
    llmft::GenerationOptions generation;
    generation.max_new_tokens = new_tokens;  // no stop ids: always new_tokens tokens
    std::vector<double> prefill_rates, decode_rates;
    std::printf("%s, %s, threads %d, %lld prompt tokens, %lld new tokens; load average before: %s\n",
                model_directory.c_str(), dtype_name.c_str(), threads, static_cast<long long>(prompt_tokens),
                static_cast<long long>(new_tokens), load_average().c_str());
    for (int64_t run = 0; run < repeat; ++run) {
      const llmft::GenerationResult result = llmft::generate(*context, *model, prompt, generation);
      prefill_rates.push_back(static_cast<double>(prompt_tokens) / result.prefill_seconds);
      decode_rates.push_back(static_cast<double>(result.decode_steps()) / result.decode_seconds);
      std::printf("  run %lld: prefill %.1f tokens/s (%.3f s), decode %.1f tokens/s (%.3f s for %lld tokens)\n",
                  static_cast<long long>(run), prefill_rates.back(), result.prefill_seconds, decode_rates.back(),
                  result.decode_seconds, static_cast<long long>(result.decode_steps()));
    }
    std::printf("prefill tokens/s: best %.1f, median %.1f; decode tokens/s: best %.1f, median %.1f; load after: %s\n",
                *std::max_element(prefill_rates.begin(), prefill_rates.end()), median(prefill_rates),
                *std::max_element(decode_rates.begin(), decode_rates.end()), median(decode_rates),
                load_average().c_str());
  } catch (const llmft::Error& error) {
    std::fprintf(stderr, "decode_timing: %s\n", error.what());
    return error.kind() == llmft::ErrorKind::kBadInput ? 2 : 1;
  }
  return 0;
}
