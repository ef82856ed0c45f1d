// safetensors files in and out, single and sharded.
//
// Format (huggingface/safetensors docs/source/index.mdx; validation rules from
// safetensors/src/tensor.rs): an 8-byte little-endian header size N, N bytes
// of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, optional
// "__metadata__": {string: string}}, then the data area. Offsets are relative
// to the data area; the tensors cover it contiguously, in order, with no holes
// and no overlap.
//
// The reader memory-maps the file and validates every header entry before any
// tensor is handed out; each violation is one llmft::Error (kBadInput) naming
// the file and the tensor. Tensors are borrowed views of the mapping (the
// mapping lives as long as any view of it).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace llmft {

// Writes `bytes` to a temp file beside `path`, fsyncs it, renames it over
// `path` and fsyncs the directory: readers see the old file or the whole new
// one, never half of it.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;     // as in the file: "F32", "BF16", "F8_E4M3", ...
  std::optional<DType> dtype;  // empty for recognised dtypes llmft cannot compute with
  Shape shape;
  uint64_t begin = 0;  // byte offsets in the data area
  uint64_t end = 0;
};

class SafetensorsFile {
 public:
  // Maps and validates the file; throws llmft::Error (kBadInput) naming the
  // file and tensor for any malformed header.
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::string& path() const { return path_; }
  // Entries in data-area order.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  // Throws kBadInput "<file>: no tensor '<name>'" when absent.
  const SafetensorsEntry& entry(const std::string& name) const;

  // The tensor as stored: a borrowed host view of the mapping (copied only if
  // the file leaves it misaligned for its dtype). Throws kBadInput for dtypes
  // llmft does not support (F64, I8, U8, BOOL, F8_*, ...), naming the tensor.
  Tensor tensor(const std::string& name) const;
  // The tensor converted to `dtype` (floats with round-to-nearest-even; a
  // float tensor cannot become an integer one and vice versa).
  Tensor tensor_as(const std::string& name, DType dtype) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  const uint8_t* data_area_ = nullptr;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;  // any device; f32/bf16/f16/i32/i64
};

// Writes one safetensors file atomically. Tensors are laid out in a fixed
// order (larger element size first, then by name: the order of the Rust
// implementation's serialize) so the same tensors always give the same bytes;
// the header is padded with spaces to a multiple of 8 bytes so every tensor
// starts 8-byte aligned. Duplicate names are an error.
void write_safetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// The exact bytes write_safetensors writes, handed to `sink` in pieces (the
// header, then each tensor's data) instead of to a file, so a caller with its
// own file layer (trainer/checkpoint.h: fault injection, chunked writes) can
// write them. `name` only labels errors. Returns the total byte count.
uint64_t serialize_safetensors(const std::string& name, std::span<const NamedTensor> tensors,
                               const std::map<std::string, std::string>& metadata,
                               const std::function<void(const void* data, size_t bytes)>& sink);

// A Hugging Face checkpoint directory: model.safetensors, or the shards listed
// by model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map":
// {tensor: file}}). Opening checks that every shard exists and holds every
// tensor the index maps to it.
class SafetensorsCheckpoint {
 public:
  static SafetensorsCheckpoint open(const std::filesystem::path& directory);

  const std::string& directory() const { return directory_; }
  std::vector<std::string> tensor_names() const;  // sorted
  bool contains(const std::string& name) const { return file_of_.count(name) != 0; }
  // The file holding `name`; kBadInput naming the directory when absent.
  const SafetensorsFile& file_of(const std::string& name) const;
  const SafetensorsEntry& entry(const std::string& name) const { return file_of(name).entry(name); }
  Tensor tensor(const std::string& name) const { return file_of(name).tensor(name); }
  Tensor tensor_as(const std::string& name, DType dtype) const { return file_of(name).tensor_as(name, dtype); }

 private:
  std::string directory_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
};

// Default shard size, as transformers' save_pretrained(max_shard_size="5GB").
constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ull;

// Writes `tensors` into `directory` as model.safetensors, or, when they exceed
// `max_shard_bytes`, as model-00001-of-0000N.safetensors shards (tensors kept
// in the given order, a new shard started when the next tensor would overflow
// the current one) plus model.safetensors.index.json.
void write_safetensors_checkpoint(const std::filesystem::path& directory, std::span<const NamedTensor> tensors,
                                  uint64_t max_shard_bytes = kDefaultMaxShardBytes);

}  // namespace llmft
