// The fixture of the trainer tests under mpirun (data and tensor
// parallelism): rank 0 writes a tiny model (4 heads, 2 KV heads, so tp 2
// divides it) and two shards of documents of exactly 8 tokens (half a row of
// seq_len 16, so packing never cuts one and every layout's batches hold the
// same documents, see dp_trainer_mpi_test.cc), and every rank reads them.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "../trainer/trainer_fixture.h"
#include "core/error.h"
#include "mpi_test_main.h"
#include "parallel/shard.h"
#include "trainer/trainer.h"

namespace llmft::trainer::mpi_testing {

namespace fs = std::filesystem;
using parallel::testing_support::mpi_grid;

// The trainable weights as full tensors (tensor-parallel slices gathered
// over `grid`'s tp group; collective), by name.
inline std::vector<NamedTensor> full_trainable(Trainer& trainer, parallel::ParallelContext* grid) {
  std::vector<NamedTensor> tensors;
  for (Parameter* parameter : trainer.model().trainable_parameters())
    tensors.push_back({parameter->name, grid != nullptr ? parallel::gather_shards(grid->tp(), parameter->value,
                                                                                  parameter->shard, "test gather")
                                                        : parameter->value});
  return tensors;
}

// FNV-1a 64 of the bytes of the given tensors, as hex.
inline std::string weights_hash(const std::vector<NamedTensor>& tensors) {
  uint64_t hash = 1469598103934665603ull;
  for (const NamedTensor& tensor : tensors) {
    const auto* bytes = static_cast<const uint8_t*>(tensor.tensor.raw_data());
    for (size_t i = 0; i < tensor.tensor.nbytes(); ++i) hash = (hash ^ bytes[i]) * 1099511628211ull;
  }
  return str_cat(std::hex, hash);
}

// The largest |a - b| over the elements of equally named tensors (all present).
inline double max_difference(const std::vector<NamedTensor>& expected, const std::vector<NamedTensor>& found) {
  EXPECT_EQ(expected.size(), found.size());
  double worst = 0.0;
  for (size_t t = 0; t < std::min(expected.size(), found.size()); ++t) {
    EXPECT_EQ(expected[t].name, found[t].name);
    const std::vector<float> a = expected[t].tensor.to_floats(), b = found[t].tensor.to_floats();
    EXPECT_EQ(a.size(), b.size()) << expected[t].name;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
      worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return worst;
}

class TrainerUnderMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    parallel::Communicator& world = mpi_grid()->world();
    // Rank 0 writes the model and the shards; every rank reads them.
    std::string root;
    if (world.rank() == 0) {
      const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
      root = (fs::temp_directory_path() / str_cat("llmft-dp-", ::getpid(), "-", info->name())).string();
      fs::remove_all(root);
      fs::create_directories(fs::path(root) / "data");
      trainer_test::write_tiny_model(fs::path(root) / "model");
      // Documents of exactly 8 tokens (half a row), every other one trained
      // on its second half only.
      std::vector<data::TokenExample> documents;
      for (data::TokenExample& document : trainer_test::random_documents(400, 21, 1)) {
        while (document.input_ids.size() < 8) document.input_ids.push_back(3 + document.input_ids.size());
        document.input_ids.resize(8);
        if (!document.loss_mask.empty()) document.loss_mask = {0, 0, 0, 0, 1, 1, 1, 1};
        documents.push_back(document);
      }
      trainer_test::write_shard(fs::path(root) / "data" / "train-00000-of-00002.tfrecord",
                                {documents.begin(), documents.begin() + 200});
      trainer_test::write_shard(fs::path(root) / "data" / "train-00001-of-00002.tfrecord",
                                {documents.begin() + 200, documents.end()});
    }
    root_ = world.all_gather_strings(root, "test root")[0];
    context_ = Context::cpu(0, 1);
  }
  void TearDown() override {
    mpi_grid()->world().barrier("test teardown");
    if (mpi_grid()->world_rank() == 0) fs::remove_all(root_);
  }

  config::TrainOptions options(bool lora, const std::string& run, int64_t batch_size) const {
    config::TrainOptions options;
    options.source = "test";
    options.hf_dir = (root_ / "model").string();
    options.peft = lora ? "lora" : "none";
    options.lora_r = 4;
    options.lora_alpha = 8.0f;
    options.lora_dropout = 0.0f;
    options.lora_target_modules = {"all-linear"};
    options.train_files = {(root_ / "data" / "train-*-of-00002.tfrecord").string()};
    options.seq_len = 16;
    options.batch_size = batch_size;
    options.grad_accumulation_steps = 2;
    options.packed = true;
    options.shuffle_buffer = 0;
    options.seed = 5;
    options.lr = lora ? 1e-2 : 1e-3;
    options.schedule_kind = "cosine";
    options.warmup_steps = 1;
    options.total_steps = 5;
    options.checkpoint_dir = (root_ / str_cat(run, "-rank", mpi_grid()->world_rank())).string();
    options.log_every_n_steps = 0;
    return options;
  }

  // Records each step's loss (and, with `grad_norms`, its pre-clip norm).
  TrainerHooks hooks(std::vector<double>* losses, parallel::ParallelContext* grid,
                     std::vector<double>* grad_norms = nullptr) const {
    TrainerHooks hooks;
    hooks.progress = nullptr;
    hooks.parallel = grid;
    hooks.on_step = [losses, grad_norms](const StepRecord& record) {
      if (losses) losses->push_back(record.loss);
      if (grad_norms) grad_norms->push_back(record.grad_norm);
    };
    return hooks;
  }

  fs::path root_;
  std::unique_ptr<Context> context_;
};

}  // namespace llmft::trainer::mpi_testing
