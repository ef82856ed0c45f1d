// libFuzzer target for reading a checkpoint (trainer/checkpoint.h): the input
// is a step directory's state.json, beside the trainable.safetensors and
// optimizer.safetensors that llmft's CheckpointWriter wrote at start-up.
// Opening "latest", then loading the weights, the optimizer state and the fp32
// masters into the model's tensors, must succeed or raise llmft::Error; what
// opens must hold every field state.json promises.
// The seed is the state.json the writer made (LLMFT_FUZZ_SEED_DIR: where
// fuzz/run_fuzz.sh wants it copied), so the corpus follows the format.
// Built and run by fuzz/run_fuzz.sh (ctest fuzz.checkpoint_fuzz).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz/fuzz_util.h"
#include "trainer/checkpoint.h"

namespace {

using namespace llmft;
using namespace llmft::trainer;

constexpr const char* kFingerprint = "fuzz-model: 2 layers, LoRA r=2";

struct Model {
  std::vector<NamedTensor> trainable;
  std::vector<NamedTensor> optimizer;
};

Model make_model(DType trainable_dtype) {
  const std::vector<float> values = {0.5f, -1.25f, 3.0f, 0.0f};
  Model model;
  model.trainable = {{"layers.0.lora_a", Tensor::from_floats({2, 2}, values, trainable_dtype)},
                     {"layers.1.lora_b", Tensor::from_floats({4}, values, trainable_dtype)}};
  for (const NamedTensor& named : model.trainable) {
    model.optimizer.push_back({named.name + ".exp_avg", Tensor::from_floats(named.tensor.shape(), values)});
    model.optimizer.push_back({named.name + ".exp_avg_sq", Tensor::from_floats(named.tensor.shape(), values)});
    if (trainable_dtype != DType::kF32)
      model.optimizer.push_back({named.name + ".master", Tensor::from_floats(named.tensor.shape(), values)});
  }
  return model;
}

const std::filesystem::path& run_directory() {
  static const std::filesystem::path directory = [] {
    std::filesystem::path path = fuzz::scratch_directory() / "run";
    CheckpointState state;
    state.step = 7;
    state.schedule_position = 7;
    state.loss_scale = 65536.0;
    state.loss_scale_good_steps = 3;
    state.data_loader_states = {"epoch=0 record=12", "epoch=0 record=13"};
    state.rng = {{"dropout", {42, 1024}}, {"shuffle", {43, 7}}};
    state.fingerprint = kFingerprint;
    Model model = make_model(DType::kBF16);
    CheckpointWriter(path, 1).write(state, model.trainable, model.optimizer);
    if (const char* seed_directory = std::getenv("LLMFT_FUZZ_SEED_DIR"))
      std::filesystem::copy_file(path / "step-7" / "state.json",
                                 std::filesystem::path(seed_directory) / "writer_state.json",
                                 std::filesystem::copy_options::overwrite_existing);
    return path;
  }();
  return directory;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)run_directory();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::filesystem::path& run_dir = run_directory();
  fuzz::write_file(run_dir / "step-7" / "state.json", std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const CheckpointReader reader = CheckpointReader::open("latest", run_dir, kFingerprint);
    LLMFT_FUZZ_EXPECT(reader.state().fingerprint == kFingerprint);
    LLMFT_FUZZ_EXPECT(!reader.state().data_loader_states.empty());
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      Model model = make_model(dtype);
      try {
        reader.load_trainable(model.trainable);
        reader.load_optimizer(model.optimizer);
      } catch (const Error&) {
      }
    }
    Model fp32 = make_model(DType::kF32);
    reader.load_fp32_weights(fp32.trainable);
  } catch (const Error&) {
  }
  return 0;
}
