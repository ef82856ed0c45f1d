// Tokens/s and MFU of complete LoRA training steps on a GPU — what the trainer
// does per optimizer step: gradient zeroing, forward_backward, AdamW on the
// device — for a TinyLlama-1.1B shape, next to the PyTorch + PEFT peer
// (bench/peft_peer.py --device cuda; both run by bench/run_gpu_peers.sh).
//
//   tinyllama-1.1b  hidden 2048, intermediate 5632, 22 layers, 32 / 4 KV heads
//                   (head_dim 64), vocab 32000, untied head, rope_theta 10000,
//                   random init (the weights' values do not change the work);
//                   bf16 weights and activations, fp32 gradients of the LoRA
//                   parameters, fp32 AdamW state; LoRA r 8, alpha 16, dropout 0
//                   on q, k, v, o, gate, up, down ("all-linear"); seq 2048
//   tiny            hidden 64, intermediate 160, 2 layers, 4 / 2 KV heads,
//                   vocab 512: the CPU smoke test (ctest bench.gpu_lora_bench_smoke)
//                   that keeps this program compiling and running in CI
//
// FLOPs per step, stated so they can be checked (PaLM appendix B / llm.c
// convention, as bench/lora_train_bench.cc but with causal attention):
//   per token: 4 N + 6 N_lora + 6 L T d_attn
// N: the weights that take part in a matmul (q, k, v, o, gate, up, down of
// every layer and the LM head; the embedding is a lookup). A frozen weight
// costs 2 FLOPs per multiply-add in the forward and again for the input
// gradient, no weight gradient: 4 N. N_lora = sum of r (in + out) over the
// adapted modules: forward, input and weight gradients, 6 N_lora. Attention:
// QK^T and PV are 4 T d_attn per token per layer over the full T x T square
// in the forward and twice that in the backward, 12 L T d_attn; a causal
// kernel does half the square, so 12 L T d_attn / 2 = 6 L T d_attn
// (d_attn = heads x head_dim). Recomputed forwards (--recompute) are not
// counted: MFU stays "useful work / peak", as in the PaLM paper. Norms, RoPE,
// SwiGLU, softmax, cross-entropy and AdamW are not counted.
// MFU = FLOPs per step / step time / peak; the default peak is the H100 SXM's
// dense bf16 tensor-core rate, 989 TFLOP/s (NVIDIA H100 datasheet; the PCIe
// card is 756: pass --peak-tflops).
//
// usage: gpu_lora_bench [--config tinyllama-1.1b|tiny] [--device cuda|cpu]
//                       [--dtype bf16|f16|f32] [--batch 8] [--seq 2048]
//                       [--warmup 2] [--steps 10] [--recompute] [--peak-tflops 989]
// Prints a table, then one machine-readable "RESULT ..." line for the script.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/philox.h"
#include "model/llama.h"
#include "optim/adamw.h"
#include "peft/lora.h"

namespace {

using llmft::bench::Clock;
using llmft::bench::seconds_since;

struct Options {
  std::string config = "tinyllama-1.1b";
  std::string device = "cuda";
  std::string dtype = "bf16";
  int64_t batch = 8;
  int64_t seq = 2048;
  int warmup = 2;
  int steps = 10;
  bool recompute = false;
  double peak_tflops = 989.0;
};

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "gpu_lora_bench: %s\nusage: gpu_lora_bench [--config tinyllama-1.1b|tiny] [--device cuda|cpu] "
               "[--dtype bf16|f16|f32] [--batch 8] [--seq 2048] [--warmup 2] [--steps 10] [--recompute] "
               "[--peak-tflops 989]\n",
               problem.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--recompute") {
      options.recompute = true;
      continue;
    }
    if (i + 1 >= argc) usage("flag " + flag + " needs a value");
    const std::string value = argv[++i];
    const auto number = [&](double minimum, bool integer) {
      return llmft::bench::parse_number("gpu_lora_bench", flag, value, minimum, integer);
    };
    if (flag == "--config") options.config = value;
    else if (flag == "--device") options.device = value;
    else if (flag == "--dtype") options.dtype = value;
    else if (flag == "--batch") options.batch = static_cast<int64_t>(number(1, true));
    else if (flag == "--seq") options.seq = static_cast<int64_t>(number(1, true));
    else if (flag == "--warmup") options.warmup = static_cast<int>(number(0, true));
    else if (flag == "--steps") options.steps = static_cast<int>(number(1, true));
    else if (flag == "--peak-tflops") options.peak_tflops = number(1e-9, false);
    else usage("unknown flag " + flag);
  }
  if (options.config != "tinyllama-1.1b" && options.config != "tiny")
    usage("--config must be tinyllama-1.1b or tiny, found '" + options.config + "'");
  if (options.device != "cuda" && options.device != "cpu")
    usage("--device must be cuda or cpu, found '" + options.device + "'");
  if (options.dtype != "bf16" && options.dtype != "f16" && options.dtype != "f32")
    usage("--dtype must be bf16, f16 or f32, found '" + options.dtype + "'");
  return options;
}

nlohmann::json model_json(const Options& options) {
  if (options.config == "tiny") {
    return {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 64},       {"intermediate_size", 160},
            {"num_hidden_layers", 2},                {"num_attention_heads", 4}, {"num_key_value_heads", 2},
            {"vocab_size", 512},                     {"rms_norm_eps", 1e-5},     {"rope_theta", 10000.0},
            {"max_position_embeddings", std::max<int64_t>(options.seq, 64)}};
  }
  // TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json.
  return {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 2048},      {"intermediate_size", 5632},
          {"num_hidden_layers", 22},               {"num_attention_heads", 32}, {"num_key_value_heads", 4},
          {"vocab_size", 32000},                   {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
          {"tie_word_embeddings", false},          {"max_position_embeddings", std::max<int64_t>(options.seq, 2048)}};
}

// Normal(0, 0.02) weights and unit norms, like LlamaModel::init_random, but a
// 1M-value random block is tiled over each large tensor: drawing 1.1e9
// normals on one host thread would take longer than the benchmark itself.
void init_weights_quickly(llmft::LlamaModel& model) {
  constexpr int64_t kBlock = int64_t{1} << 20;
  llmft::PhiloxGenerator generator(1);
  std::vector<float> block(kBlock);
  for (float& value : block) value = 0.02f * generator.next_normal();
  for (llmft::Parameter* parameter : model.parameters().all()) {
    const int64_t n = parameter->value.numel();
    std::vector<float> values(static_cast<size_t>(n));
    const bool is_norm = parameter->name.ends_with("norm.weight");
    for (int64_t i = 0; i < n; ++i) values[static_cast<size_t>(i)] = is_norm ? 1.0f : block[static_cast<size_t>(i % kBlock)];
    parameter->value.copy_from(llmft::Tensor::from_floats(parameter->value.shape(), values, parameter->value.dtype()));
  }
}

}  // namespace

int main(int argc, char** argv) try {
  const Options options = parse(argc, argv);
  std::unique_ptr<llmft::Context> context =
      options.device == "cuda" ? llmft::Context::cuda(0, /*seed=*/0) : llmft::Context::cpu(/*seed=*/0);
  const llmft::DType dtype = options.dtype == "bf16"  ? llmft::DType::kBF16
                             : options.dtype == "f16" ? llmft::DType::kF16
                                                      : llmft::DType::kF32;

  llmft::LlamaOptions model_options;
  model_options.compute_dtype = dtype;
  model_options.grad_dtype = llmft::DType::kF32;  // as the trainer (trainer/training_setup.cc)
  model_options.activation_policy =
      options.recompute ? llmft::ActivationPolicy::kRecompute : llmft::ActivationPolicy::kSaveAll;
  const llmft::ModelConfig config = llmft::ModelConfig::from_json(model_json(options), "gpu_lora_bench");
  const Clock::time_point setup_start = Clock::now();
  auto model = std::make_unique<llmft::LlamaModel>(*context, config, model_options);
  init_weights_quickly(*model);

  llmft::LoraSettings lora_config;
  lora_config.r = 8;
  lora_config.alpha = 16.0f;
  lora_config.dropout = 0.0f;
  lora_config.target_modules = {"all-linear"};
  llmft::LoraModel lora(*context, *model, lora_config);
  // torch.optim.AdamW's defaults (weight decay 0.01 on every parameter), as peft_peer.py.
  llmft::optim::AdamW optimizer(*context, lora.parameters().all(), llmft::optim::AdamWConfig{});
  const float learning_rate = 1e-4f;

  const int64_t batch_size = options.batch, seq_len = options.seq, tokens = batch_size * seq_len;
  llmft::Batch batch = llmft::bench::splitmix_batch(batch_size, seq_len, config.vocab_size);
  batch.input_ids = context->upload(batch.input_ids);
  batch.targets = context->upload(batch.targets);
  context->synchronize();
  const double setup_seconds = seconds_since(setup_start);

  // FLOPs per step (see the header comment).
  const double q = static_cast<double>(config.q_size()), layers = static_cast<double>(config.num_hidden_layers);
  const double matmul_params = llmft::bench::matmul_weight_count(config);
  double lora_params = 0.0;
  for (const llmft::Parameter* parameter : lora.parameters().all())
    lora_params += static_cast<double>(parameter->value.numel());
  const double token_count = static_cast<double>(tokens);
  const double attention_flops = 6.0 * layers * static_cast<double>(seq_len) * q * token_count;
  const double matmul_flops = (4.0 * matmul_params + 6.0 * lora_params) * token_count;
  const double step_flops = matmul_flops + attention_flops;

  // One training step as the trainer runs it: zero, forward+backward, update;
  // the stream is drained before the clock stops.
  double loss = 0.0, first_loss = NAN;
  auto train_step = [&] {
    lora.parameters().zero_grads(*context);
    loss = model->forward_backward(*context, batch).loss;
    optimizer.step(learning_rate);
    context->synchronize();
  };
  for (int step = 0; step < options.warmup; ++step) {
    train_step();
    if (step == 0) first_loss = loss;
  }
  std::vector<double> times;
  for (int step = 0; step < options.steps; ++step) {
    const Clock::time_point start = Clock::now();
    train_step();
    times.push_back(seconds_since(start));
    if (std::isnan(first_loss)) first_loss = loss;
  }
  const auto [best, median] = llmft::bench::best_and_median(times);
  const double tokens_best = token_count / best, tokens_median = token_count / median;
  const double peak = options.peak_tflops * 1e12;
  const double mfu_best = step_flops / best / peak, mfu_median = step_flops / median / peak;
  const double peak_gib = static_cast<double>(context->allocator().peak_bytes_in_use()) / (1024.0 * 1024 * 1024);

  std::printf("gpu_lora_bench %s on %s: hidden %lld, intermediate %lld, %lld layers, %lld/%lld heads, vocab %lld, %s; "
              "batch %lld x seq %lld; activations %s; %d warm-up + %d timed steps; setup %.1f s\n",
              options.config.c_str(), context->device().to_string().c_str(),
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.intermediate_size),
              static_cast<long long>(config.num_hidden_layers), static_cast<long long>(config.num_attention_heads),
              static_cast<long long>(config.num_key_value_heads), static_cast<long long>(config.vocab_size),
              options.dtype.c_str(), static_cast<long long>(batch_size), static_cast<long long>(seq_len),
              options.recompute ? "recomputed per block" : "all saved", options.warmup, options.steps,
              setup_seconds);
  std::printf("matmul parameters N %.1fM, LoRA %.3fM (r 8, alpha 16, all-linear); FLOPs per step %.4g GFLOP "
              "(4N + 6N_lora per token %.4g + causal attention 6 L T d_attn %.4g)\n",
              matmul_params / 1e6, lora_params / 1e6, step_flops / 1e9, matmul_flops / 1e9, attention_flops / 1e9);
  std::printf("step times (s):");
  for (double time : times) std::printf(" %.4f", time);
  std::printf("\n%-34s %10s %10s %12s %12s %8s %8s\n", "", "best s", "median s", "tokens/s", "tokens/s med", "MFU",
              "MFU med");
  std::printf("%-34s %10.4f %10.4f %12.0f %12.0f %7.1f%% %7.1f%%\n", "llmft LoRA step (zero+fb+AdamW)", best, median,
              tokens_best, tokens_median, 100.0 * mfu_best, 100.0 * mfu_median);
  std::printf("peak %.0f TFLOP/s; allocator peak %.2f GiB; loss first step %.4f, last step %.4f (ln V = %.4f)\n",
              options.peak_tflops, peak_gib, first_loss, loss, std::log(static_cast<double>(config.vocab_size)));
  std::printf("RESULT side=llmft config=%s device=%s dtype=%s batch=%lld seq=%lld recompute=%d tokens_per_s_best=%.1f "
              "tokens_per_s_median=%.1f step_s_best=%.4f mfu_best=%.4f mfu_median=%.4f peak_gib=%.2f "
              "loss_first=%.4f loss_last=%.4f\n",
              options.config.c_str(), options.device.c_str(), options.dtype.c_str(),
              static_cast<long long>(batch_size), static_cast<long long>(seq_len), options.recompute ? 1 : 0,
              tokens_best, tokens_median, best, mfu_best, mfu_median, peak_gib, first_loss, loss);
  if (!std::isfinite(loss)) {
    std::fprintf(stderr, "gpu_lora_bench: the loss is not finite (%f): the run is not a valid measurement\n", loss);
    return 1;
  }
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "gpu_lora_bench: %s\n", error.what());
  return 1;
}
