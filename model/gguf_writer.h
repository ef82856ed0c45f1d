// GGUF writer: the container of gguf_reader.h, written.
//
// Layout (llama.cpp ggml/include/gguf.h, gguf-py/gguf/gguf_writer.py): "GGUF",
// u32 version 3, u64 tensor count, u64 metadata count, the metadata, the tensor
// infos (name, dims with ne[0] fastest, type, offset from the data section),
// zero padding to the alignment (general.alignment, default 32), then each
// tensor's data, each padded with zeros to the alignment (the last one too,
// as gguf-py does).
//
// Metadata and tensor infos are collected first; write() then streams the
// file through a sink, asking for one tensor's bytes at a time, so memory holds
// one tensor, never the model.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/gguf_dequantize.h"

namespace llmft::gguf {

class GgufWriter {
 public:
  // Receives the file's bytes in order.
  using Sink = std::function<void(const void* data, size_t bytes)>;
  // Fills `out` (exactly the tensor's byte size) with tensor `index`'s data.
  using TensorBytes = std::function<void(size_t index, std::span<uint8_t> out)>;

  void add_string(const std::string& key, const std::string& value);
  void add_u32(const std::string& key, uint32_t value);
  void add_i32(const std::string& key, int32_t value);
  void add_f32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& values);
  void add_f32_array(const std::string& key, const std::vector<float>& values);

  // `shape` row-major (HF order); stored reversed as ne. The row length must
  // be a multiple of the type's block size.
  void add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type);

  size_t tensor_count() const { return tensors_.size(); }
  uint64_t tensor_byte_size(size_t index) const { return tensors_[index].byte_size; }
  // The size of the whole file write() produces.
  uint64_t file_size() const;

  void write(const Sink& sink, const TensorBytes& tensor_bytes) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    GgmlType type;
    uint64_t byte_size;
    uint64_t offset;
  };
  void begin_key(const std::string& key, uint32_t type);
  std::vector<uint8_t> header() const;

  std::vector<uint8_t> metadata_;
  uint64_t metadata_count_ = 0;
  std::vector<Tensor> tensors_;
  uint64_t data_size_ = 0;  // padded
};

}  // namespace llmft::gguf
