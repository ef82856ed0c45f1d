// Data-parallel training steps of the small Llama under mpirun, the llmft
// side of bench/run_dp_peers.sh (the peer: bench/ddp_peer.py, PyTorch DDP
// over gloo). Each rank trains on its own B x T tokens per step (global batch
// world x B rows) exactly as the trainer does with data parallelism: zero the
// gradients (which live in flat buckets, parallel/gradient_buckets.h),
// forward_backward with the loss scaled by 1 / world (the mean over the
// global batch, as DDP's gradient averaging), each bucket's all-reduce
// started as the backward completes it, wait for the rest, AdamW.
//
//   small-lora  Llama hidden 256, intermediate 768, 4 layers, 8 / 4 KV heads,
//               vocab 4096, untied head; LoRA r 8, alpha 16 on all linears
//   small-full  the same model, every parameter trained
//
// Token ids: rank r at step s (warm-up steps counted) takes row b from
// positions p .. p + T of SplitMix64(p) mod vocab, p = ((s·world + r)·B + b)
// ·(T + 1) (bench_util.h splitmix_batch; ddp_peer.py does the same).
//
// Figures: step time (median, best) on rank 0, tokens/s per rank and for the
// job, bytes all-reduced per step, and the overlap: comm_ms is the sum of the
// bucket all-reduces' own durations (measured on the MPI thread), exposed_ms
// the time the step waited for them after its backward; hidden_fraction =
// 1 - exposed / comm, the share of communication that ran behind compute.
//
// With --tp T (world = dp x T) the model is split in Megatron's layout
// (model/llama.h) and the tensor-parallel all-reduces (two per block in the
// forward and two in the backward, plus LoRA's small ones) are timed as the
// model waits for them: tp_ms per step and its share of the step, the figure
// a GPU run with NCCL must report at tp 2, 4 and 8.
//
// usage: mpirun -np N dp_train_bench --config small-lora|small-full [--batch 4] [--seq 256]
//                                    [--warmup 2] [--steps 10] [--threads 1] [--bucket-mb 25] [--tp 1]
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "model/llama.h"
#include "optim/adamw.h"
#include "parallel/gradient_buckets.h"
#include "parallel/parallel_context.h"
#include "peft/lora.h"

namespace {

struct Options {
  std::string config;
  int64_t batch = 4;
  int64_t seq = 256;
  int warmup = 2;
  int steps = 10;
  int threads = 1;
  double bucket_mb = 25.0;
  int64_t tp = 1;
};

// Forwards every collective to `inner`, timing the blocking calls the model
// makes (it waits on each at once): the tensor-parallel share of a step.
class TimedCommunicator final : public llmft::parallel::Communicator {
 public:
  explicit TimedCommunicator(llmft::parallel::Communicator& inner) : inner_(inner) {}
  int rank() const override { return inner_.rank(); }
  int size() const override { return inner_.size(); }
  bool device_memory() const override { return inner_.device_memory(); }
  std::unique_ptr<llmft::parallel::Work> all_reduce_async(llmft::Tensor& tensor, llmft::parallel::ReduceOp op,
                                                          std::string_view what) override {
    return timed([&] { return inner_.all_reduce_async(tensor, op, what); });
  }
  std::unique_ptr<llmft::parallel::Work> reduce_scatter_async(const llmft::Tensor& input, llmft::Tensor& output,
                                                              llmft::parallel::ReduceOp op,
                                                              std::string_view what) override {
    return timed([&] { return inner_.reduce_scatter_async(input, output, op, what); });
  }
  std::unique_ptr<llmft::parallel::Work> all_gather_async(const llmft::Tensor& input, llmft::Tensor& output,
                                                          std::string_view what) override {
    return timed([&] { return inner_.all_gather_async(input, output, what); });
  }
  std::unique_ptr<llmft::parallel::Work> broadcast_async(llmft::Tensor& tensor, int root,
                                                         std::string_view what) override {
    return timed([&] { return inner_.broadcast_async(tensor, root, what); });
  }
  std::unique_ptr<llmft::parallel::Work> barrier_async(std::string_view what) override {
    return timed([&] { return inner_.barrier_async(what); });
  }
  std::unique_ptr<llmft::parallel::Communicator> split(int color, int key) override {
    return inner_.split(color, key);
  }
  double take_seconds() { return std::exchange(seconds_, 0.0); }

 private:
  template <typename Start>
  std::unique_ptr<llmft::parallel::Work> timed(Start start) {
    const auto begin = llmft::bench::Clock::now();
    start()->wait();
    seconds_ += llmft::bench::seconds_since(begin);
    return std::make_unique<llmft::parallel::CompletedWork>();
  }
  llmft::parallel::Communicator& inner_;
  double seconds_ = 0.0;
};

[[noreturn]] void usage(const std::string& problem) {
  std::fprintf(stderr,
               "dp_train_bench: %s\nusage: mpirun -np N dp_train_bench --config small-lora|small-full [--batch 4] "
               "[--seq 256] [--warmup 2] [--steps 10] [--threads 1] [--bucket-mb 25] [--tp 1]\n",
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
      return llmft::bench::parse_number("dp_train_bench", flag, value, minimum, integer);
    };
    if (flag == "--config") options.config = value;
    else if (flag == "--batch") options.batch = static_cast<int64_t>(number(1, true));
    else if (flag == "--seq") options.seq = static_cast<int64_t>(number(1, true));
    else if (flag == "--warmup") options.warmup = static_cast<int>(number(0, true));
    else if (flag == "--steps") options.steps = static_cast<int>(number(1, true));
    else if (flag == "--threads") options.threads = static_cast<int>(number(1, true));
    else if (flag == "--bucket-mb") options.bucket_mb = number(1e-6, false);
    else if (flag == "--tp") options.tp = static_cast<int64_t>(number(1, true));
    else usage("unknown flag " + flag);
  }
  if (options.config != "small-lora" && options.config != "small-full")
    usage("--config must be small-lora or small-full, found '" + options.config + "'");
  return options;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options options = parse(argc, argv);
  auto grid = llmft::parallel::ParallelContext::from_launcher(options.tp);
  llmft::parallel::Communicator& dp = grid->dp();
  const int world = dp.size(), rank = dp.rank();
  const bool lora = options.config == "small-lora";
  TimedCommunicator tensor_parallel(grid->tp());

  auto context = llmft::Context::cpu(/*seed=*/0, options.threads);
  const llmft::ModelConfig config = llmft::bench::small_llama_config("dp_train_bench");
  llmft::LlamaOptions model_options;
  if (options.tp > 1) model_options.tensor_parallel = &tensor_parallel;
  auto model = std::make_unique<llmft::LlamaModel>(*context, config, model_options);
  model->init_random(*context, /*seed=*/1);  // the same weights on every rank
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
  std::vector<llmft::Parameter*> parameters = trainable->all();
  std::unique_ptr<llmft::parallel::GradientBuckets> buckets;
  if (world > 1) {
    std::vector<int64_t> stages;
    for (llmft::Parameter* parameter : parameters) stages.push_back(model->gradient_stage(parameter->name));
    buckets = std::make_unique<llmft::parallel::GradientBuckets>(
        *context, dp, parameters, stages, static_cast<size_t>(options.bucket_mb * 1024 * 1024));
    model->set_gradient_stage_hook([&](int64_t stage) { buckets->stage_complete(stage); });
  }
  // torch.optim.AdamW's defaults (weight decay 0.01 on every parameter), as the peers.
  llmft::optim::AdamW optimizer(*context, parameters, llmft::optim::AdamWConfig{});
  const float learning_rate = 1e-4f;
  const int64_t tokens = options.batch * options.seq;

  double loss = 0.0;
  llmft::parallel::BucketStepStats stats;
  auto train_step = [&](int step) {
    const int64_t first = (static_cast<int64_t>(step) * world + rank) * options.batch * (options.seq + 1);
    const llmft::Batch batch = llmft::bench::splitmix_batch(options.batch, options.seq, config.vocab_size, first);
    trainable->zero_grads(*context);
    if (buckets) buckets->begin_reduction();
    loss = model->forward_backward(*context, batch, 1.0f / static_cast<float>(world)).loss;
    if (buckets) stats = buckets->finish();
    optimizer.step(learning_rate);
  };
  int step = 0;
  for (; step < options.warmup; ++step) train_step(step);
  std::vector<double> times;
  double comm_seconds = 0.0, exposed_seconds = 0.0;
  tensor_parallel.take_seconds();
  for (int timed = 0; timed < options.steps; ++timed, ++step) {
    const auto start = llmft::bench::Clock::now();
    train_step(step);
    times.push_back(llmft::bench::seconds_since(start));
    comm_seconds += stats.communication_seconds;
    exposed_seconds += stats.exposed_seconds;
  }
  const llmft::bench::BestMedian step_time = llmft::bench::best_and_median(times);
  int64_t trainable_bytes = 0;
  for (const llmft::Parameter* parameter : parameters) trainable_bytes += parameter->value.numel() * 4;
  const double comm_ms = 1e3 * comm_seconds / options.steps, exposed_ms = 1e3 * exposed_seconds / options.steps;
  const double tp_ms = 1e3 * tensor_parallel.take_seconds() / options.steps;
  if (grid->world_rank() == 0) {
    std::printf("dp_train_bench %s: dp %d x tp %lld, batch %lld x seq %lld per rank, %d thread(s) per rank, %lld bucket(s)\n",
                options.config.c_str(), world, static_cast<long long>(options.tp), static_cast<long long>(options.batch),
                static_cast<long long>(options.seq), options.threads,
                static_cast<long long>(buckets ? buckets->num_buckets() : 0));
    std::printf("  step ms: median %.1f, best %.1f; last loss %.4f\n", 1e3 * step_time.median, 1e3 * step_time.best,
                loss);
    std::printf("  all-reduce per step: %.1f ms of communication, %.1f ms exposed after the backward\n", comm_ms,
                exposed_ms);
    if (options.tp > 1)
      std::printf("  tensor-parallel all-reduces per step: %.1f ms, %.1f%% of the median step\n", tp_ms,
                  100.0 * tp_ms / (1e3 * step_time.median));
    std::printf(
        "RESULT side=llmft config=%s world=%d batch=%lld seq=%lld step_ms_median=%.2f step_ms_best=%.2f "
        "tokens_per_s_rank=%.1f tokens_per_s_job=%.1f allreduce_bytes=%lld comm_ms=%.2f exposed_comm_ms=%.2f "
        "hidden_fraction=%.3f tp=%lld tp_allreduce_ms=%.2f\n",
        options.config.c_str(), world, static_cast<long long>(options.batch), static_cast<long long>(options.seq),
        1e3 * step_time.median, 1e3 * step_time.best, tokens / step_time.median,
        world * tokens / step_time.median, static_cast<long long>(world > 1 ? trainable_bytes : 0), comm_ms,
        exposed_ms, llmft::parallel::hidden_fraction(comm_ms, exposed_ms), static_cast<long long>(options.tp), tp_ms);
  }
  return 0;
} catch (const llmft::Error& error) {
  std::fprintf(stderr, "dp_train_bench: %s\n", error.what());
  return error.exit_code();
}
