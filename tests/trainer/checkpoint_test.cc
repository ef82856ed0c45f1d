// Checkpoint directories: round trip, retention, "latest", validation errors,
// injected failures at each step of a write, and SIGKILL of a child process
// in the middle of a write (issue 8: the previous checkpoint stays loadable).
//
// References are independent of the code under test: tensors are compared
// byte-for-byte with the bytes the test put in, and the on-disk layout is
// inspected with std::filesystem, not with the checkpoint's own listing.
#include "trainer/checkpoint.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "tests/test_util.h"

namespace llmft::trainer {
namespace {

using ::llmft::testing::bad_input_message;

namespace fs = std::filesystem;

// ---- Fixtures and helpers
// ---------------------------------------------------------

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    run_dir_ = fs::temp_directory_path() / str_cat("llmft-ckpt-", ::getpid(), "-", info->name());
    fs::remove_all(run_dir_);
  }
  void TearDown() override { fs::remove_all(run_dir_); }
  fs::path run_dir_;
};

// Tensors whose bit patterns a lossy path would change: -0, a NaN payload,
// a subnormal, the largest finite values; step-dependent so two checkpoints
// differ.
struct Tensors {
  std::vector<NamedTensor> trainable;
  std::vector<NamedTensor> optimizer;
};

Tensor f32_from_bits(const Shape& shape, uint32_t seed) {
  Tensor tensor = Tensor::empty_cpu(shape, DType::kF32);
  auto* bits = static_cast<uint32_t*>(tensor.raw_data());
  const uint32_t specials[] = {0x80000000u, 0x7fc01234u, 0x00000001u, 0x7f7fffffu, 0xff7fffffu};
  for (int64_t i = 0; i < tensor.numel(); ++i)
    bits[i] = i < 5 ? specials[i] ^ (seed & 1) : static_cast<uint32_t>(i) * 2654435761u + seed;
  return tensor;
}

Tensor bf16_from_bits(const Shape& shape, uint16_t seed) {
  Tensor tensor = Tensor::empty_cpu(shape, DType::kBF16);
  auto* bits = static_cast<uint16_t*>(tensor.raw_data());
  const uint16_t specials[] = {0x8000u, 0x7fc1u, 0x0001u, 0x7f7fu};
  for (int64_t i = 0; i < tensor.numel(); ++i) bits[i] = i < 4 ? specials[i] : static_cast<uint16_t>(i * 40503u + seed);
  return tensor;
}

Tensors make_tensors(uint32_t seed, int64_t big_rows = 4) {
  Tensors tensors;
  tensors.trainable.push_back({"layers.0.q_proj.lora_A", bf16_from_bits({4, 16}, static_cast<uint16_t>(seed))});
  tensors.trainable.push_back({"layers.0.q_proj.lora_B", f32_from_bits({16, 4}, seed)});
  tensors.trainable.push_back({"big", f32_from_bits({big_rows, 1024}, seed + 7)});
  tensors.optimizer.push_back({"layers.0.q_proj.lora_A.exp_avg", f32_from_bits({4, 16}, seed + 1)});
  tensors.optimizer.push_back({"layers.0.q_proj.lora_A.exp_avg_sq", f32_from_bits({4, 16}, seed + 2)});
  tensors.optimizer.push_back({"layers.0.q_proj.lora_A.master", f32_from_bits({4, 16}, seed + 3)});
  return tensors;
}

// Empty tensors of the same names/shapes/dtypes, to load into.
std::vector<NamedTensor> empty_like(const std::vector<NamedTensor>& tensors) {
  std::vector<NamedTensor> result;
  for (const NamedTensor& named : tensors)
    result.push_back({named.name, Tensor::zeros_cpu(named.tensor.shape(), named.tensor.dtype())});
  return result;
}

void expect_same_bytes(const std::vector<NamedTensor>& expected, const std::vector<NamedTensor>& found) {
  ASSERT_EQ(expected.size(), found.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    ASSERT_EQ(expected[i].tensor.nbytes(), found[i].tensor.nbytes()) << expected[i].name;
    EXPECT_EQ(0, std::memcmp(expected[i].tensor.raw_data(), found[i].tensor.raw_data(), expected[i].tensor.nbytes()))
        << expected[i].name;
  }
}

const std::string kFingerprint = "sha256:abcdef0123456789-model-llama-peft-lora-r8";

CheckpointState make_state(int64_t step) {
  CheckpointState state;
  state.step = step;
  state.schedule_position = step * 2 + 1;
  state.loss_scale = 65536.0 / 3.0;  // not a short decimal: the JSON text must round-trip it exactly
  state.loss_scale_good_steps = 17 + step;
  state.data_loader_states = {R"({"shard": 3, "offset": 12345, "epoch": 1, "note": "quote \" and\nnewline"})",
                              R"({"shard": 4, "offset": 7})"};
  state.rng["dropout"] = {0xfedcba9876543210ull, 1000 + static_cast<uint64_t>(step)};
  state.rng["shuffle"] = {42, 7};
  state.fingerprint = kFingerprint;
  return state;
}

// Loads `directory` (or "latest") and checks it is exactly what
// make_state/make_tensors(seed) wrote.
void expect_checkpoint(const fs::path& run_dir, const std::string& where, int64_t step, uint32_t seed,
                       int64_t big_rows = 4) {
  CheckpointReader reader = CheckpointReader::open(where, run_dir, kFingerprint);
  EXPECT_EQ(reader.directory(), run_dir / str_cat("step-", step));
  const CheckpointState expected = make_state(step);
  const CheckpointState& found = reader.state();
  EXPECT_EQ(found.step, expected.step);
  EXPECT_EQ(found.schedule_position, expected.schedule_position);
  EXPECT_EQ(found.loss_scale, expected.loss_scale);
  EXPECT_EQ(found.loss_scale_good_steps, expected.loss_scale_good_steps);
  EXPECT_EQ(found.data_loader_states, expected.data_loader_states);
  ASSERT_EQ(found.rng.size(), 2u);
  EXPECT_EQ(found.rng.at("dropout").seed, 0xfedcba9876543210ull);
  EXPECT_EQ(found.rng.at("dropout").position, 1000 + static_cast<uint64_t>(step));
  EXPECT_EQ(found.rng.at("shuffle").seed, 42u);
  EXPECT_EQ(found.rng.at("shuffle").position, 7u);
  EXPECT_EQ(found.fingerprint, kFingerprint);
  Tensors written = make_tensors(seed, big_rows);
  std::vector<NamedTensor> trainable = empty_like(written.trainable);
  std::vector<NamedTensor> optimizer = empty_like(written.optimizer);
  reader.load_trainable(trainable);
  reader.load_optimizer(optimizer);
  expect_same_bytes(written.trainable, trainable);
  expect_same_bytes(written.optimizer, optimizer);
}

fs::path write_checkpoint(const fs::path& run_dir, int64_t step, uint32_t seed, int keep = 3,
                          FileOps& ops = local_file_ops(), int64_t big_rows = 4) {
  CheckpointWriter writer(run_dir, keep, ops);
  Tensors tensors = make_tensors(seed, big_rows);
  return writer.write(make_state(step), tensors.trainable, tensors.optimizer);
}

// Names in `directory`, as the file system lists them.
std::vector<std::string> entries(const fs::path& directory) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Forwards to the real file operations; calls `hook(operation, path)` before
// each, which may throw (an injected failure) or block (a point to kill at).
class HookedFileOps : public FileOps {
 public:
  using Hook = std::function<void(const std::string& operation, const std::string& path)>;
  explicit HookedFileOps(Hook hook) : hook_(std::move(hook)) {}

  std::unique_ptr<CheckpointFile> create(const std::string& path) override {
    hook_("create", path);
    return std::make_unique<HookedFile>(local_file_ops().create(path), path, hook_);
  }
  std::string read(const std::string& path) override { return local_file_ops().read(path); }
  void make_directory(const std::string& path) override {
    hook_("make_directory", path);
    local_file_ops().make_directory(path);
  }
  void sync_directory(const std::string& path) override {
    hook_("sync_directory", path);
    local_file_ops().sync_directory(path);
  }
  void rename(const std::string& from, const std::string& to) override {
    hook_("rename", from + " -> " + to);
    local_file_ops().rename(from, to);
  }
  void remove_all(const std::string& path) override {
    hook_("remove_all", path);
    local_file_ops().remove_all(path);
  }
  std::vector<std::string> list(const std::string& directory) override { return local_file_ops().list(directory); }
  bool exists(const std::string& path) override { return local_file_ops().exists(path); }

 private:
  class HookedFile : public CheckpointFile {
   public:
    HookedFile(std::unique_ptr<CheckpointFile> file, std::string path, Hook& hook)
        : file_(std::move(file)), path_(std::move(path)), hook_(hook) {}
    void append(const void* data, size_t bytes) override {
      hook_("append", path_);
      file_->append(data, bytes);
    }
    void sync() override {
      hook_("sync", path_);
      file_->sync();
    }
    void close() override {
      hook_("close", path_);
      file_->close();
    }

   private:
    std::unique_ptr<CheckpointFile> file_;
    std::string path_;
    Hook& hook_;
  };
  Hook hook_;
};

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- Round trip, retention, latest
// --------------------------------------------------

TEST_F(CheckpointTest, RoundTripIsBitExactForTensorsAndState) {
  fs::path written = write_checkpoint(run_dir_, 10, 1);
  EXPECT_EQ(written, run_dir_ / "step-10");
  EXPECT_EQ(entries(written),
            (std::vector<std::string>{"optimizer.safetensors", "state.json", "trainable.safetensors"}));
  EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-10"});  // no temp directory left behind
  expect_checkpoint(run_dir_, "latest", 10, 1);
  expect_checkpoint(run_dir_, (run_dir_ / "step-10").string(), 10, 1);
}

TEST_F(CheckpointTest, KeepsOnlyTheLastKAndNoLeftovers) {
  for (int64_t step = 1; step <= 5; ++step) write_checkpoint(run_dir_, step * 100, static_cast<uint32_t>(step), 2);
  EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{"step-400", "step-500"}));
  expect_checkpoint(run_dir_, (run_dir_ / "step-400").string(), 400, 4);
  expect_checkpoint(run_dir_, "latest", 500, 5);
}

TEST_F(CheckpointTest, PruningNeverRemovesTheCheckpointJustWritten) {
  write_checkpoint(run_dir_, 600, 6, 2);
  write_checkpoint(run_dir_, 700, 7, 2);
  write_checkpoint(run_dir_, 510, 5, 2);  // a run resumed from an older step: its newest state is 510
  EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{"step-510", "step-700"}));
  expect_checkpoint(run_dir_, (run_dir_ / "step-510").string(), 510, 5);
  write_checkpoint(run_dir_, 520, 8, 1);
  EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-520"});
}

TEST_F(CheckpointTest, LatestIsTheLargestStepNumericallyAndIgnoresOtherNames) {
  EXPECT_EQ(latest_checkpoint(run_dir_), std::nullopt);
  EXPECT_EQ(bad_input_message([&] { CheckpointReader::open("latest", run_dir_, kFingerprint); }),
            run_dir_.string() + ": no checkpoint (step-<N> directory) to resume from");
  write_checkpoint(run_dir_, 9, 9, 5);
  write_checkpoint(run_dir_, 10, 10, 5);  // "step-10" < "step-9" as text
  write_checkpoint(run_dir_, 2, 2, 5);    // written last, but not the latest step
  fs::create_directories(run_dir_ / ".step-11.tmp-999999");
  fs::create_directories(run_dir_ / "step-abc");
  fs::create_directories(run_dir_ / "step-12x");
  EXPECT_EQ(latest_checkpoint(run_dir_), run_dir_ / "step-10");
  expect_checkpoint(run_dir_, "latest", 10, 10);
}

TEST_F(CheckpointTest, RewritingAStepReplacesIt) {
  write_checkpoint(run_dir_, 3, 1);
  write_checkpoint(run_dir_, 3, 2);
  EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-3"});
  expect_checkpoint(run_dir_, "latest", 3, 2);
}

TEST_F(CheckpointTest, AFailedReplacementPutsThePreviousStepBack) {
  write_checkpoint(run_dir_, 3, 1);
  HookedFileOps faulty([&](const std::string& operation, const std::string& path) {
    if (operation == "rename" && contains(path, ".tmp-")) throw_runtime(path, ": injected rename failure");
  });
  EXPECT_THROW(write_checkpoint(run_dir_, 3, 2, 3, faulty), Error);
  EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-3"});
  expect_checkpoint(run_dir_, "latest", 3, 1);
}

// ---- Validation errors
// ----------------------------------------------------------------

TEST_F(CheckpointTest, RefusesACheckpointOfAnotherModelOrPeftConfig) {
  write_checkpoint(run_dir_, 1000, 1);
  std::string message = bad_input_message([&] { CheckpointReader::open("latest", run_dir_, "def987"); });
  EXPECT_EQ(message, (run_dir_ / "step-1000").string() +
                         ": checkpoint was written for a different model/PEFT "
                         "config (fingerprint sha256:abcde… vs "
                         "def987)");
}

TEST_F(CheckpointTest, MissingOrCorruptStateJsonIsAClearError) {
  const fs::path dir = write_checkpoint(run_dir_, 5, 1);
  const std::string state = (dir / "state.json").string();
  std::ifstream in(state);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto rewrite = [&](const std::string& text) { std::ofstream(state, std::ios::trunc) << text; };
  auto open = [&] { CheckpointReader::open(dir.string(), run_dir_, kFingerprint); };

  rewrite("{\"step\": 5,");
  EXPECT_TRUE(contains(bad_input_message(open), state + ": not valid JSON: ")) << bad_input_message(open);
  rewrite("[1, 2]");
  EXPECT_EQ(bad_input_message(open), state + ": expected a JSON object, found array");

  nlohmann::json root = nlohmann::json::parse(good);
  root["format_version"] = 99;
  rewrite(root.dump());
  EXPECT_EQ(bad_input_message(open), state + ": format_version 99 is not supported (this llmft reads version 1)");

  root = nlohmann::json::parse(good);
  root.erase("schedule_position");
  rewrite(root.dump());
  EXPECT_EQ(bad_input_message(open), state + ": missing field 'schedule_position'");

  root = nlohmann::json::parse(good);
  root["rng"]["dropout"]["position"] = -1;
  rewrite(root.dump());
  EXPECT_EQ(bad_input_message(open), state +
                                ": field 'rng.dropout.position' must be a "
                                "non-negative integer, found -1");

  root = nlohmann::json::parse(good);
  root["loss_scaler"]["scale"] = "big";
  rewrite(root.dump());
  EXPECT_EQ(bad_input_message(open), state + ": field 'loss_scaler.scale' must be a number, found \"big\"");

  fs::remove(state);
  EXPECT_EQ(bad_input_message(open), state + ": missing (not a complete llmft checkpoint)");
  EXPECT_EQ(bad_input_message([&] { CheckpointReader::open((run_dir_ / "step-77").string(), run_dir_, kFingerprint); }),
            (run_dir_ / "step-77").string() + ": checkpoint directory does not exist");
}

TEST_F(CheckpointTest, MissingOrTruncatedTensorFileIsAClearError) {
  const fs::path dir = write_checkpoint(run_dir_, 5, 1);
  const fs::path optimizer = dir / "optimizer.safetensors";
  const uint64_t size = fs::file_size(optimizer);
  fs::resize_file(optimizer, size - 10);
  auto open = [&] { CheckpointReader::open(dir.string(), run_dir_, kFingerprint); };
  EXPECT_EQ(bad_input_message(open), str_cat(optimizer.string(), ": ", size - 10, " bytes, but state.json records ", size,
                                    " (truncated or replaced)"));
  fs::remove(dir / "trainable.safetensors");
  EXPECT_TRUE(contains(bad_input_message(open), (dir / "trainable.safetensors").string() + ": missing from the checkpoint"));
}

TEST_F(CheckpointTest, LoadChecksNamesDtypesAndShapes) {
  const fs::path dir = write_checkpoint(run_dir_, 5, 1);
  CheckpointReader reader = CheckpointReader::open("latest", run_dir_, kFingerprint);
  const std::string file = (dir / "trainable.safetensors").string();
  Tensors written = make_tensors(1);

  std::vector<NamedTensor> into = empty_like(written.trainable);
  into[1].tensor = Tensor::zeros_cpu({4, 16}, DType::kF32);
  EXPECT_EQ(bad_input_message([&] { reader.load_trainable(into); }),
            file +
                ": tensor 'layers.0.q_proj.lora_B': expected f32[4, 16], "
                "found f32[16, 4]");
  into = empty_like(written.trainable);
  into[0].tensor = Tensor::zeros_cpu({4, 16}, DType::kF32);
  EXPECT_EQ(bad_input_message([&] { reader.load_trainable(into); }),
            file +
                ": tensor 'layers.0.q_proj.lora_A': expected f32[4, 16], "
                "found bf16[4, 16]");
  into = empty_like(written.trainable);
  into[2].name = "other";
  EXPECT_EQ(bad_input_message([&] { reader.load_trainable(into); }),
            file + ": holds tensor 'big' that the model being resumed does not have");
  into = empty_like(written.trainable);
  into.push_back({"extra", Tensor::zeros_cpu({2}, DType::kF32)});
  EXPECT_EQ(bad_input_message([&] { reader.load_trainable(into); }), file + ": no tensor 'extra' (expected f32[2])");
}

// ---- Injected failures
// ------------------------------------------------------------------

// Each step of a write fails in turn; the previous checkpoint must stay the
// latest, load bit-exactly, and no step-2 (whole or half) may appear, except
// when the failure comes after the commit rename (then step-2 is complete).
TEST_F(CheckpointTest, AFailureAtAnyStepLeavesThePreviousCheckpointIntact) {
  struct Fault {
    std::string operation;
    std::string path_part;
    int occurrence;  // fail the n-th matching call (1-based)
    bool after_commit;
  };
  const std::vector<Fault> faults = {
      {"make_directory", ".step-2.tmp-", 1, false},
      {"create", "trainable.safetensors", 1, false},
      {"append", "trainable.safetensors", 3, false},  // halfway through the file
      {"sync", "trainable.safetensors", 1, false},
      {"close", "trainable.safetensors", 1, false},
      {"append", "optimizer.safetensors", 1, false},
      {"sync", "optimizer.safetensors", 1, false},
      {"create", "state.json", 1, false},
      {"sync", "state.json", 1, false},
      {"sync_directory", ".step-2.tmp-", 1, false},
      {"rename", ".step-2.tmp-", 1, false},
      {"sync_directory", "", 2, true},  // the run directory, after the rename
  };
  for (const Fault& fault : faults) {
    SCOPED_TRACE(str_cat(fault.operation, " of '", fault.path_part, "' #", fault.occurrence));
    fs::remove_all(run_dir_);
    write_checkpoint(run_dir_, 1, 1, 3, local_file_ops(),
                     1024);  // 4 MiB: several appends per file
    int matches = 0;
    HookedFileOps faulty([&](const std::string& operation, const std::string& path) {
      if (operation == fault.operation && contains(path, fault.path_part) && ++matches == fault.occurrence)
        throw_runtime(path, ": injected ", operation, " failure");
    });
    try {
      write_checkpoint(run_dir_, 2, 2, 3, faulty, 1024);
      ADD_FAILURE() << "the injected failure did not surface";
    } catch (const Error& error) {
      EXPECT_TRUE(contains(error.what(), "injected " + fault.operation + " failure")) << error.what();
    }
    EXPECT_EQ(matches >= fault.occurrence, true);
    if (fault.after_commit) {
      EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{"step-1", "step-2"}));
      expect_checkpoint(run_dir_, "latest", 2, 2, 1024);
    } else {
      EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-1"});  // temp directory removed too
      expect_checkpoint(run_dir_, "latest", 1, 1, 1024);
    }
    expect_checkpoint(run_dir_, (run_dir_ / "step-1").string(), 1, 1, 1024);
    // The next (healthy) write succeeds.
    write_checkpoint(run_dir_, 3, 3, 3, local_file_ops(), 1024);
    expect_checkpoint(run_dir_, "latest", 3, 3, 1024);
  }
}

TEST_F(CheckpointTest, AFailedCleanupStillReportsTheWriteErrorAndTheNextWriterCleansUp) {
  write_checkpoint(run_dir_, 1, 1);
  HookedFileOps faulty([&](const std::string& operation, const std::string& path) {
    if ((operation == "sync" && contains(path, "optimizer")) || operation == "remove_all")
      throw_runtime(path, ": injected ", operation, " failure");
  });
  try {
    write_checkpoint(run_dir_, 2, 2, 3, faulty);
    ADD_FAILURE() << "no error";
  } catch (const Error& error) {
    EXPECT_TRUE(contains(error.what(), "injected sync failure")) << error.what();
  }
  EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{str_cat(".step-2.tmp-", ::getpid()), "step-1"}));
  expect_checkpoint(run_dir_, "latest", 1, 1);
  write_checkpoint(run_dir_, 3, 3);
  EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{"step-1", "step-3"}));
}

// ---- SIGKILL in the middle of a write
// ---------------------------------------------------

// Forks a child that writes step-2 through `ops_for_child`'s hook; the hook
// writes one byte to `pipe` at the chosen point (and may then block there).
// The parent waits for that byte, optionally sleeps, and sends SIGKILL.
pid_t start_child_writer(const fs::path& run_dir, int pipe_write_end,
                         const std::function<void(const std::string&, const std::string&)>& hook, int64_t big_rows,
                         int keep = 3) {
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  // Child: never return into gtest.
  try {
    HookedFileOps ops(hook);
    write_checkpoint(run_dir, 2, 2, keep, ops, big_rows);
  } catch (...) {
    ::_exit(2);
  }
  ::_exit(0);  // finished before the kill arrived
}

void kill_child_when_signalled(pid_t child, int pipe_read_end, std::chrono::microseconds delay) {
  char byte = 0;
  ASSERT_EQ(::read(pipe_read_end, &byte, 1), 1) << "the child exited before reaching the kill point";
  if (delay.count() > 0) std::this_thread::sleep_for(delay);
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;
}

// Deterministic kill points: the child blocks at the point until killed.
TEST_F(CheckpointTest, KillDuringAWriteLeavesThePreviousCheckpointLoadable) {
  struct Point {
    std::string operation;
    std::string path_part;
    int occurrence;
    bool committed;  // the kill comes after the rename: step-2 is complete
  };
  const std::vector<Point> points = {
      {"append", "trainable.safetensors", 2, false},  // after the first bytes of the first file
      {"append", "optimizer.safetensors", 2, false},
      {"sync", "state.json", 1, false},
      {"sync_directory", ".step-2.tmp-", 1, false},
      {"rename", ".step-2.tmp-", 1, false},
      {"sync_directory", "", 2, true},  // after the rename, before the run directory's fsync
  };
  for (const Point& point : points) {
    SCOPED_TRACE(str_cat("kill at ", point.operation, " of '", point.path_part, "' #", point.occurrence));
    fs::remove_all(run_dir_);
    write_checkpoint(run_dir_, 1, 1, 3, local_file_ops(), 512);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    int matches = 0;
    pid_t child = start_child_writer(
        run_dir_, fds[1],
        [&](const std::string& operation, const std::string& path) {
          if (operation == point.operation && contains(path, point.path_part) && ++matches == point.occurrence) {
            char byte = 'w';
            (void)!::write(fds[1], &byte, 1);
            for (;;) ::pause();
          }
        },
        512);
    ::close(fds[1]);
    kill_child_when_signalled(child, fds[0], std::chrono::microseconds(0));
    ::close(fds[0]);

    std::vector<std::string> names = entries(run_dir_);
    const std::string stale = str_cat(".step-2.tmp-", child);
    if (point.committed) {
      EXPECT_EQ(names, (std::vector<std::string>{"step-1", "step-2"}));
      expect_checkpoint(run_dir_, "latest", 2, 2, 512);
    } else {
      // The kill landed mid-write: the child's temp directory is still there.
      EXPECT_EQ(names, (std::vector<std::string>{stale, "step-1"}));
      EXPECT_EQ(latest_checkpoint(run_dir_), run_dir_ / "step-1");
      expect_checkpoint(run_dir_, "latest", 1, 1, 512);
    }
    expect_checkpoint(run_dir_, (run_dir_ / "step-1").string(), 1, 1, 512);
    // The next writer ignores and removes the stale directory.
    write_checkpoint(run_dir_, 3, 3, 3, local_file_ops(), 512);
    names = entries(run_dir_);
    EXPECT_EQ(names, point.committed ? (std::vector<std::string>{"step-1", "step-2", "step-3"})
                                     : (std::vector<std::string>{"step-1", "step-3"}));
    expect_checkpoint(run_dir_, "latest", 3, 3, 512);
    expect_checkpoint(run_dir_, (run_dir_ / "step-1").string(), 1, 1, 512);
  }
}

// A kill while pruning (keep 1): the old checkpoint is already renamed out of
// the step-* namespace or still whole, never half-deleted under its name.
TEST_F(CheckpointTest, KillWhilePruningLeavesOnlyWholeCheckpoints) {
  for (const std::string operation : {"rename", "remove_all"}) {
    SCOPED_TRACE("kill at " + operation + " of step-1 while pruning");
    fs::remove_all(run_dir_);
    write_checkpoint(run_dir_, 1, 1, 1);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_t child = start_child_writer(
        run_dir_, fds[1],
        [&](const std::string& op, const std::string& path) {
          if (op == operation && contains(path, "step-1")) {
            char byte = 'w';
            (void)!::write(fds[1], &byte, 1);
            for (;;) ::pause();
          }
        },
        4, 1);
    ::close(fds[1]);
    kill_child_when_signalled(child, fds[0], std::chrono::microseconds(0));
    ::close(fds[0]);
    const std::vector<std::string> expected = operation == "rename"
                                                  ? std::vector<std::string>{"step-1", "step-2"}
                                                  : std::vector<std::string>{str_cat(".step-1.old-", child), "step-2"};
    EXPECT_EQ(entries(run_dir_), expected);
    expect_checkpoint(run_dir_, "latest", 2, 2);
    write_checkpoint(run_dir_, 3, 3, 1);
    EXPECT_EQ(entries(run_dir_), std::vector<std::string>{"step-3"});
  }
}

// Free-running kills: the child writes a 32 MiB checkpoint with the real
// file operations, slowed by 1 ms per 1 MiB append, and is killed at a few
// delays after its first bytes. Whatever the kill interrupts, the previous
// checkpoint stays loadable and "latest" names a complete checkpoint.
TEST_F(CheckpointTest, KillAtArbitraryMomentsOfALargeWrite) {
  constexpr int64_t kBigRows = 8192;  // 8192 x 1024 f32 = 32 MiB
  for (int delay_ms : {0, 3, 9, 20}) {
    SCOPED_TRACE(str_cat("kill ", delay_ms, " ms after the first bytes"));
    fs::remove_all(run_dir_);
    write_checkpoint(run_dir_, 1, 1, 3, local_file_ops(), 4);
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    bool signalled = false;
    pid_t child = start_child_writer(
        run_dir_, fds[1],
        [&](const std::string& operation, const std::string&) {
          if (operation != "append") return;
          if (!signalled) {
            signalled = true;
            char byte = 'w';
            (void)!::write(fds[1], &byte, 1);
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        },
        kBigRows);
    ::close(fds[1]);
    kill_child_when_signalled(child, fds[0], std::chrono::milliseconds(delay_ms));
    ::close(fds[0]);

    expect_checkpoint(run_dir_, (run_dir_ / "step-1").string(), 1, 1, 4);
    std::optional<fs::path> latest = latest_checkpoint(run_dir_);
    ASSERT_TRUE(latest.has_value());
    if (*latest == run_dir_ / "step-1") {
      EXPECT_EQ(entries(run_dir_), (std::vector<std::string>{str_cat(".step-2.tmp-", child), "step-1"}));
    } else {
      expect_checkpoint(run_dir_, "latest", 2, 2,
                        kBigRows);  // the write won the race: complete
    }
    write_checkpoint(run_dir_, 3, 3, 3, local_file_ops(), 4);
    for (const std::string& name : entries(run_dir_)) EXPECT_EQ(name.rfind("step-", 0), 0u) << name;
    expect_checkpoint(run_dir_, "latest", 3, 3, 4);
  }
}

}  // namespace
}  // namespace llmft::trainer
