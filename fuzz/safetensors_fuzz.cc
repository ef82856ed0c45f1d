// libFuzzer target for the safetensors reader (model/safetensors.h): any byte
// string, opened as a .safetensors file, must either be rejected with
// llmft::Error or give entries that tile the data area inside the file, whose
// tensors can be read and converted. An input that is a JSON object is also
// tried as model.safetensors.index.json beside two valid shards, for the
// sharded checkpoint's weight_map checks.
// Built and run by fuzz/run_fuzz.sh (ctest fuzz.safetensors_fuzz).
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

namespace {

using namespace llmft;

void read_file(const std::filesystem::path& path, uint64_t file_bytes) {
  try {
    SafetensorsFile file = SafetensorsFile::open(path);
    uint64_t covered = 0;
    for (const SafetensorsEntry& entry : file.entries()) {
      // Every range lies in the file, the ranges tile the data area in order.
      LLMFT_FUZZ_EXPECT(entry.begin == covered && entry.begin <= entry.end);
      LLMFT_FUZZ_EXPECT(entry.end <= file_bytes);
      covered = entry.end;
      for (int64_t extent : entry.shape) LLMFT_FUZZ_EXPECT(extent >= 0);
      LLMFT_FUZZ_EXPECT(file.contains(entry.name));
      try {
        Tensor tensor = file.tensor(entry.name);
        LLMFT_FUZZ_EXPECT(static_cast<uint64_t>(tensor.nbytes()) == entry.end - entry.begin);
        if (tensor.numel() <= (1 << 16)) {
          Tensor as_f32 = file.tensor_as(entry.name, is_floating(tensor.dtype()) ? DType::kF32 : DType::kI64);
          LLMFT_FUZZ_EXPECT(as_f32.numel() == tensor.numel());
        }
      } catch (const Error&) {
      }
    }
  } catch (const Error&) {
  }
}

// Two shards of one tensor each, written by llmft's own writer once.
const std::filesystem::path& sharded_directory() {
  static const std::filesystem::path directory = [] {
    std::filesystem::path path = fuzz::scratch_directory() / "sharded";
    std::filesystem::create_directories(path);
    std::vector<float> values = {1.0f, 2.0f, 3.0f, 4.0f};
    NamedTensor a{"model.a", Tensor::from_floats({2, 2}, values, DType::kF32)};
    NamedTensor b{"model.b", Tensor::from_floats({4}, values, DType::kBF16)};
    write_safetensors(path / "model-00001-of-00002.safetensors", std::span(&a, 1));
    write_safetensors(path / "model-00002-of-00002.safetensors", std::span(&b, 1));
    return path;
  }();
  return directory;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const std::filesystem::path path = fuzz::scratch_directory() / "input.safetensors";
  fuzz::write_file(path, bytes);
  read_file(path, size);

  if (size > 0 && data[0] == '{') {
    const std::filesystem::path& directory = sharded_directory();
    fuzz::write_file(directory / "model.safetensors.index.json", bytes);
    try {
      SafetensorsCheckpoint checkpoint = SafetensorsCheckpoint::open(directory);
      for (const std::string& name : checkpoint.tensor_names()) {
        LLMFT_FUZZ_EXPECT(checkpoint.contains(name));
        (void)checkpoint.tensor_as(name, DType::kF32);
      }
    } catch (const Error&) {
    }
  }
  return 0;
}
