// Tokens/s of complete CPU training steps — what the trainer does per
// optimizer step: gradient zeroing, forward_backward, AdamW step — for the
// configurations issues 7 and 8 compare with PyTorch 2 + PEFT (bench/peft_peer.py,
// run side by side by bench/run_cpu_peers.sh):
//
//   small-lora    Llama hidden 256, intermediate 768, 4 layers, 8 / 4 KV heads,
//                 vocab 4096, untied head, random init; LoRA r 8, alpha 16,
//                 dropout 0 on q, k, v, o, gate, up, down ("all-linear")
//   small-full    the same model, every parameter trained (full fine-tuning)
//   smollm2-lora  SmolLM2-135M (a converted HF directory, --model DIR) with the
//                 same LoRA config
//
// Token ids are SplitMix64(i) mod vocab for i = 0, 1, ... over B x (T + 1)
// positions, sequence s taking positions s(T+1) .. s(T+1)+T; inputs are the
// first T, targets the last T. peft_peer.py computes the same ids.
//
// FLOPs per step, stated so they can be checked (PaLM / llm.c convention,
// as bench/train_step_bench.cc): with N the weights that take part in a matmul
// (q, k, v, o, gate, up, down of every layer and the LM head),
//   full fine-tuning: 6 N + 12 L T d_attn                       per token
//   LoRA:             4 N + 6 N_lora + 12 L T d_attn            per token
// 2 FLOPs per multiply-add × (forward, input gradient[, weight gradient]): a
// frozen weight needs no weight gradient, so the base costs 4 N; N_lora =
// Σ r (in + out) over the adapted modules, all three products. The attention
// term counts QKᵀ and PV over the full T×T square (forward 4 T d_attn, backward
// 8 T d_attn), about twice what a causal kernel does. Norms, RoPE, SwiGLU,
// softmax, cross-entropy and AdamW are not counted.
//
// usage: lora_train_bench --config small-lora|small-full|smollm2-lora
//                         [--model DIR] [--batch 4] [--seq 256] [--warmup 2] [--steps 10]
//                         [--lm-head-chunk-rows N]   (0: LlamaOptions' default)
// Prints a table, then one machine-readable "RESULT ..." line for the script.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "kernels/cpu/packed_gemm.h"
#include "model/llama.h"
#include "optim/adamw.h"
#include "peft/lora.h"

namespace {

using llmft::bench::Clock;
using llmft::bench::seconds_since;
using llmft::bench::sgemm_gflops;

struct Options {
  std::string config;
  std::string model_dir;
  int64_t batch = 4;
  int64_t seq = 256;
  int warmup = 2;
  int steps = 10;
  int64_t lm_head_chunk_rows = 0;  // 0: the model's default (LlamaOptions)
  std::string recompute = "none";   // activation checkpointing of every block: none, selective, full
  std::string dtype = "f32";        // compute dtype: f32, or bf16 (bf16 weights and activations, fp32 masters)
  std::string weights_dtype;        // the base's storage (model.weights_dtype); empty: the compute dtype
};

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "lora_train_bench: %s\nusage: lora_train_bench --config small-lora|small-full|smollm2-lora "
               "[--model DIR] [--batch 4] [--seq 256] [--warmup 2] [--steps 10] [--lm-head-chunk-rows 0]\n"
               "       [--recompute none|selective|full] [--dtype f32|bf16] [--weights-dtype f32|bf16]\n",
               problem.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage("flag " + flag + " needs a value");
    const std::string value = argv[++i];
    const auto number = [&](double minimum, bool integer) {
      return llmft::bench::parse_number("lora_train_bench", flag, value, minimum, integer);
    };
    if (flag == "--config") options.config = value;
    else if (flag == "--model") options.model_dir = value;
    else if (flag == "--batch") options.batch = static_cast<int64_t>(number(1, true));
    else if (flag == "--seq") options.seq = static_cast<int64_t>(number(1, true));
    else if (flag == "--warmup") options.warmup = static_cast<int>(number(0, true));
    else if (flag == "--steps") options.steps = static_cast<int>(number(1, true));
    else if (flag == "--lm-head-chunk-rows") options.lm_head_chunk_rows = static_cast<int64_t>(number(0, true));
    else if (flag == "--recompute") options.recompute = value;
    else if (flag == "--dtype") options.dtype = value;
    else if (flag == "--weights-dtype") options.weights_dtype = value;
    else usage("unknown flag " + flag);
  }
  if (options.config != "small-lora" && options.config != "small-full" && options.config != "smollm2-lora")
    usage("--config must be small-lora, small-full or smollm2-lora, found '" + options.config + "'");
  if (options.config == "smollm2-lora" && options.model_dir.empty()) usage("smollm2-lora needs --model DIR");
  if (options.recompute != "none" && options.recompute != "selective" && options.recompute != "full")
    usage("--recompute must be none, selective or full, found '" + options.recompute + "'");
  if (options.dtype != "f32" && options.dtype != "bf16") usage("--dtype must be f32 or bf16, found '" + options.dtype + "'");
  if (options.weights_dtype.empty()) options.weights_dtype = options.dtype;
  if (options.weights_dtype != "f32" && options.weights_dtype != "bf16")
    usage("--weights-dtype must be f32 or bf16, found '" + options.weights_dtype + "'");
  return options;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options options = parse(argc, argv);
  const bool lora = options.config != "small-full";
  auto context = llmft::Context::cpu(/*seed=*/0);

  llmft::LlamaOptions model_options;
  model_options.lm_head_chunk_rows = options.lm_head_chunk_rows;
  // bf16: as a run with precision.compute_dtype BFLOAT16 (trainer/training_setup.cc):
  // bf16 weights and activations, f32 gradients, AdamW's fp32 masters.
  model_options.compute_dtype = options.dtype == "bf16" ? llmft::DType::kBF16 : llmft::DType::kF32;
  model_options.weights_dtype = options.weights_dtype == "bf16" ? llmft::DType::kBF16 : llmft::DType::kF32;
  model_options.grad_dtype = llmft::DType::kF32;
  std::unique_ptr<llmft::LlamaModel> model;
  if (options.config == "smollm2-lora") {
    model = llmft::LlamaModel::load(*context, options.model_dir, model_options);
  } else {
    const llmft::ModelConfig config = llmft::bench::small_llama_config("lora_train_bench");
    model = std::make_unique<llmft::LlamaModel>(*context, config, model_options);
    model->init_random(*context, /*seed=*/1);
  }
  const llmft::ModelConfig& config = model->config();
  if (options.recompute != "none")
    model->set_activation_policy(options.recompute == "full" ? llmft::ActivationPolicy::kRecompute
                                                             : llmft::ActivationPolicy::kSelective);

  std::unique_ptr<llmft::LoraModel> lora_model;
  llmft::ParameterRegistry* trainable = &model->parameters();
  if (lora) {
    llmft::LoraSettings lora_config;
    lora_config.r = 8;
    lora_config.alpha = 16.0f;
    lora_config.dropout = 0.0f;
    lora_config.target_modules = {"all-linear"};
    lora_model = std::make_unique<llmft::LoraModel>(*context, *model, lora_config);
    trainable = &lora_model->parameters();
  } else {
    model->parameters().allocate_grads(*context, llmft::DType::kF32);
  }
  // torch.optim.AdamW's defaults (weight decay 0.01 on every parameter), as peft_peer.py.
  llmft::optim::AdamW optimizer(*context, trainable->all(), llmft::optim::AdamWConfig{});
  const float learning_rate = 1e-4f;

  const int64_t batch_size = options.batch, seq_len = options.seq, tokens = batch_size * seq_len;
  const llmft::Batch batch = llmft::bench::splitmix_batch(batch_size, seq_len, config.vocab_size);

  // FLOPs per step (see the header comment).
  const double q = static_cast<double>(config.q_size()), layers = static_cast<double>(config.num_hidden_layers);
  const double matmul_params = llmft::bench::matmul_weight_count(config);
  double lora_params = 0.0;
  if (lora_model)
    for (const llmft::Parameter* parameter : lora_model->parameters().all())
      lora_params += static_cast<double>(parameter->value.numel());
  const double attention_flops = 12.0 * layers * static_cast<double>(seq_len) * q * static_cast<double>(tokens);
  const double matmul_flops = lora ? (4.0 * matmul_params + 6.0 * lora_params) * static_cast<double>(tokens)
                                   : 6.0 * matmul_params * static_cast<double>(tokens);
  const double step_flops = matmul_flops + attention_flops;

  const int threads = omp_get_max_threads();
  const double sgemm_before = sgemm_gflops(1024, threads, /*repeats=*/20);

  // One training step as the trainer runs it: zero, forward+backward, update.
  double loss = 0.0, first_loss = 0.0;
  auto train_step = [&] {
    trainable->zero_grads(*context);
    loss = model->forward_backward(*context, batch).loss;
    optimizer.step(learning_rate);
  };
  for (int step = 0; step < options.warmup; ++step) {
    train_step();
    if (step == 0) first_loss = loss;
  }
  std::vector<double> times;
  // Activation memory: the allocator's peak during a step above what stays
  // allocated between steps (weights, gradients, optimizer state).
  size_t step_peak_bytes = 0;
  for (int step = 0; step < options.steps; ++step) {
    const size_t resident = context->allocator().bytes_in_use();
    context->allocator().reset_peak();
    Clock::time_point start = Clock::now();
    train_step();
    times.push_back(seconds_since(start));
    step_peak_bytes = std::max(step_peak_bytes, context->allocator().peak_bytes_in_use() - resident);
    if (options.warmup == 0 && step == 0) first_loss = loss;
  }
  const double sgemm_after = sgemm_gflops(1024, threads, /*repeats=*/20);
  const double ceiling = std::max(sgemm_before, sgemm_after);

  const auto [best, median] = llmft::bench::best_and_median(times);
  const double tokens_best = static_cast<double>(tokens) / best, tokens_median = static_cast<double>(tokens) / median;

  std::printf("lora_train_bench %s: hidden %lld, intermediate %lld, %lld layers, %lld/%lld heads, vocab %lld, %s; "
              "batch %lld x seq %lld; %d warm-up + %d timed steps; %d threads\n",
              options.config.c_str(), static_cast<long long>(config.hidden_size),
              static_cast<long long>(config.intermediate_size), static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.num_attention_heads), static_cast<long long>(config.num_key_value_heads),
              static_cast<long long>(config.vocab_size), config.tie_word_embeddings ? "tied head" : "untied head",
              static_cast<long long>(batch_size), static_cast<long long>(seq_len), options.warmup, options.steps,
              threads);
  // OPENBLAS_CORETYPE decides which kernels run (run_cpu_peers.sh --openblas-detect).
  std::printf("OpenBLAS kernels: %s (OPENBLAS_CORETYPE=%s)\n", openblas_get_corename(),
              std::getenv("OPENBLAS_CORETYPE") != nullptr ? std::getenv("OPENBLAS_CORETYPE") : "<unset>");
  std::printf("matmul parameters N %.3fM, trainable %.3fM%s; FLOPs per step %.2f GFLOP (%s %.2f + attention %.2f)\n",
              matmul_params / 1e6, static_cast<double>(trainable->num_elements(true)) / 1e6,
              lora ? " (LoRA r 8, alpha 16, all-linear)" : " (full fine-tuning)", step_flops / 1e9,
              lora ? "4N + 6N_lora per token" : "6N per token", matmul_flops / 1e9, attention_flops / 1e9);
  std::printf("step times (s):");
  for (double time : times) std::printf(" %.3f", time);
  std::printf("\n%-32s %10s %10s %12s %12s %10s %10s\n", "", "best s", "median s", "tokens/s", "tokens/s med",
              "GFLOP/s", "vs SGEMM");
  std::printf("%-32s %10s %10s %12s %12s %10.1f %10.2f\n", "OpenBLAS SGEMM 1024^3 (ceiling)", "-", "-", "-", "-",
              ceiling, 1.0);
  const double gflops = step_flops / best / 1e9;
  std::printf("%-32s %10.3f %10.3f %12.0f %12.0f %10.1f %10.2f\n", "llmft train step (zero+fb+AdamW)", best, median,
              tokens_best, tokens_median, gflops, gflops / ceiling);
  std::printf("loss: first step %.4f, last step %.4f (ln V = %.4f); SGEMM before / after %.1f / %.1f GFLOP/s\n",
              first_loss, loss, std::log(static_cast<double>(config.vocab_size)), sgemm_before, sgemm_after);
  std::printf("activation checkpointing %s: peak memory of a step above the resident weights, gradients and "
              "optimizer state %.1f MiB\n",
              options.recompute.c_str(), static_cast<double>(step_peak_bytes) / (1 << 20));
  double weight_bytes = 0.0;
  for (const llmft::Parameter* parameter : model->parameters().all())
    weight_bytes += static_cast<double>(parameter->value.nbytes());
  std::printf("base model parameters stored in %s: %.1f MiB\n", options.weights_dtype.c_str(), weight_bytes / (1 << 20));
  std::printf("RESULT side=llmft config=%s dtype=%s tokens_per_s_best=%.1f tokens_per_s_median=%.1f step_s_best=%.4f "
              "gflops=%.1f sgemm_gflops=%.1f loss_first=%.4f loss_last=%.4f openblas=%s recompute=%s "
              "step_peak_mib=%.1f weights_dtype=%s weights_mib=%.1f gemm_path=%s\n",
              options.config.c_str(), options.dtype.c_str(), tokens_best, tokens_median, best, gflops, ceiling, first_loss, loss,
              openblas_get_corename(), options.recompute.c_str(), static_cast<double>(step_peak_bytes) / (1 << 20),
              options.weights_dtype.c_str(), weight_bytes / (1 << 20),
              llmft::cpu::cpu_gemm_path_name(
                  llmft::cpu::cpu_gemm_path(model_options.compute_dtype,
                                            model_options.weights_dtype.value_or(model_options.compute_dtype))));
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "lora_train_bench: %s\n", error.what());
  return 1;
}
