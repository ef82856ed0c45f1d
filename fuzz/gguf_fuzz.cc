// libFuzzer target for the GGUF reader (model/gguf_reader.h): any byte string,
// opened as a .gguf file, must either be rejected with llmft::Error or give a
// header, metadata and tensor table whose every tensor lies inside the file at
// an aligned offset, and whose small tensors dequantize to the right count.
// The typed getters the converter uses are called on every key.
// Built and run by fuzz/run_fuzz.sh (ctest fuzz.gguf_fuzz).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "fuzz/fuzz_util.h"
#include "model/gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmft;
  const std::filesystem::path path = fuzz::scratch_directory() / "input.gguf";
  fuzz::write_file(path, std::string_view(reinterpret_cast<const char*>(data), size));
  try {
    const gguf::GgufFile file = gguf::GgufFile::open(path);
    LLMFT_FUZZ_EXPECT(file.data_offset() <= file.file_size());
    LLMFT_FUZZ_EXPECT(file.alignment() > 0 && file.data_offset() % file.alignment() == 0);
    for (const gguf::MetadataEntry& entry : file.metadata()) {
      LLMFT_FUZZ_EXPECT(file.find(entry.key) != nullptr);
      // Each getter either returns the value or says why not.
      try { (void)file.get_string(entry.key); } catch (const Error&) {}
      try { (void)file.get_uint(entry.key); } catch (const Error&) {}
      try { (void)file.get_int(entry.key); } catch (const Error&) {}
      try { (void)file.get_float(entry.key); } catch (const Error&) {}
      try { (void)file.get_bool(entry.key); } catch (const Error&) {}
      try { (void)file.get_string_array(entry.key); } catch (const Error&) {}
      try { (void)file.get_int_array(entry.key); } catch (const Error&) {}
    }
    for (const gguf::TensorInfo& tensor : file.tensors()) {
      LLMFT_FUZZ_EXPECT(file.find_tensor(tensor.name) != nullptr);
      LLMFT_FUZZ_EXPECT(tensor.offset % file.alignment() == 0);
      LLMFT_FUZZ_EXPECT(tensor.offset <= file.file_size() - file.data_offset());
      LLMFT_FUZZ_EXPECT(tensor.byte_size <= file.file_size() - file.data_offset() - tensor.offset);
      const std::span<const uint8_t> bytes = file.tensor_bytes(tensor);
      LLMFT_FUZZ_EXPECT(bytes.size() == tensor.byte_size);
      uint64_t numel = 1;
      for (int64_t extent : tensor.shape()) numel *= static_cast<uint64_t>(extent);
      LLMFT_FUZZ_EXPECT(numel == tensor.numel);
      if (tensor.numel <= (1 << 16)) {
        try {
          LLMFT_FUZZ_EXPECT(file.dequantize(tensor).size() == tensor.numel);
        } catch (const Error&) {
        }
      }
    }
  } catch (const Error&) {
  }
  return 0;
}
