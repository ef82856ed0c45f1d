// What a training run's memory holds, by category (core/allocator.h
// MemoryCategory), predicted from the model's config.json and the run
// configuration without loading anything: `llmft inspect MODEL_DIR --config
// run.pbtxt` prints it, and tests hold it within 10% of the allocator's
// measured per-category peaks (tests/trainer/memory_estimate_test.cc).
//
// The activation figure follows LlamaModel's allocations (model/llama.h,
// llama_block.cc): what each block keeps for the backward under its
// activation policy, the LM head's chunk and the loss buffers, and the
// transient peak of the last block's backward (its recomputation and its
// input-gradient buffers), which is where the step's peak lies. Workspace is
// the CPU backend's 16-bit GEMM scratch (0 for fp32 runs): the packed GEMM's
// panels and f32 outputs, or fp32 copies of the operands where 16-bit
// operands are widened for OpenBLAS; the CUDA backend has none but the cast
// weight of mixed storage.
#pragma once

#include <array>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "model/model_config.h"
#include "config/train_options.h"

namespace llmft::trainer {

struct MemoryEstimate {
  std::array<double, kNumMemoryCategories> bytes{};  // indexed by MemoryCategory
  // Every category's peak added up: an upper bound of the run's peak (the
  // categories peak at different moments only for workspace).
  double total() const;
  double of(MemoryCategory category) const { return bytes[static_cast<size_t>(category)]; }
};

// For one rank of a run with `options` on a model of `config`: tensor
// parallelism (options.tp) splits the block linears, ZeRO-1 divides the
// optimizer state (and fp32 masters) by the data-parallel size `dp`. The
// packed GEMM's panels are per CPU thread: `cpu_threads` the rank's OpenMP
// threads (0: this process's).
MemoryEstimate estimate_training_memory(const ModelConfig& config, const config::TrainOptions& options, int dp,
                                        int cpu_threads = 0);

}  // namespace llmft::trainer
