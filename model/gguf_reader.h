// GGUF reader: memory-maps a .gguf file and validates every length, count,
// offset and size against the file before anything is trusted.
//
// Format (llama.cpp ggml/include/gguf.h, gguf-py/gguf/gguf_reader.py), all
// little-endian:
//   "GGUF" | u32 version (2 or 3) | u64 tensor_count | u64 kv_count
//   kv_count × { string key | u32 value_type | value }
//   tensor_count × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (u32, default 32)
//   tensor data; each tensor at data_start + offset, offsets aligned.
// A string is u64 length + bytes (no terminator); an array is u32 element type +
// u64 count + elements (arrays may nest). ne[0] is the fastest-varying
// dimension, so the numpy/PyTorch shape is ne reversed.
//
// Every violation is an llmft::Error (kBadInput) on one line naming the file
// and the key or tensor: "m.gguf: tensor 'blk.0.attn_q.weight': data [..) ends
// past the end of the file (N bytes)".
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/gguf_dequantize.h"

namespace llmft::gguf {

// Metadata value types (gguf.h enum gguf_type).
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* value_type_name(ValueType type);  // "uint32", "array", ...

// One metadata value. Integers keep their sign in the member that fits
// (unsigned types in `u`, signed in `i`), floats are widened to double exactly.
struct Value {
  ValueType type = ValueType::kUint8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  bool b = false;
  std::string s;
  ValueType element_type = ValueType::kUint8;  // arrays only
  std::vector<Value> elements;                 // arrays only

  bool is_integer() const;
  bool is_float() const { return type == ValueType::kFloat32 || type == ValueType::kFloat64; }
};

struct MetadataEntry {
  std::string key;
  Value value;
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF dimension order: ne[0] fastest
  GgmlType type = GgmlType::kF32;
  uint64_t offset = 0;       // from the start of the data section
  uint64_t numel = 0;
  uint64_t byte_size = 0;    // numel / block_size * type_size

  // Row-major (numpy/PyTorch) shape: ne reversed.
  std::vector<int64_t> shape() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. Throws llmft::Error (kBadInput) naming the file
  // and the key or tensor at the first violation; kRuntime when it cannot be opened.
  static GgufFile open(const std::filesystem::path& path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // start of tensor data in the file
  uint64_t file_size() const { return bytes_.size(); }

  const std::vector<MetadataEntry>& metadata() const { return metadata_; }
  const Value* find(std::string_view key) const;  // null when absent
  // Typed access; each throws kBadInput "<file>: metadata key 'k': ..." when the
  // key is missing or holds another type (any integer type is accepted where
  // the value fits).
  const Value& get(std::string_view key) const;
  std::string get_string(std::string_view key) const;
  uint64_t get_uint(std::string_view key) const;
  int64_t get_int(std::string_view key) const;
  double get_float(std::string_view key) const;  // float32/float64 or any integer type
  bool get_bool(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;  // null when absent
  const TensorInfo& tensor(std::string_view name) const;       // throws kBadInput when absent
  std::span<const uint8_t> tensor_bytes(const TensorInfo& tensor) const;
  // All elements of `tensor` as f32 in row-major order of shape(); throws
  // kBadInput "<file>: tensor 'x': type Q2_K cannot be dequantized" when unsupported.
  std::vector<float> dequantize(const TensorInfo& tensor) const;

 private:
  GgufFile() = default;
  void parse();

  std::string path_;
  std::shared_ptr<const void> mapping_;  // keeps the mmap alive
  std::span<const uint8_t> bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<MetadataEntry> metadata_;
  std::vector<TensorInfo> tensors_;
};

}  // namespace llmft::gguf
