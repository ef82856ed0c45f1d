// GGUF container writer (see gguf_writer.h).
#include "model/gguf_writer.h"

#include <cstring>
#include <set>

#include "core/error.h"

namespace llmft::gguf {
namespace {

constexpr uint32_t kVersion = 3;
constexpr uint64_t kAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT; general.alignment is then left out
// gguf.h enum gguf_type.
constexpr uint32_t kTypeUint32 = 4, kTypeInt32 = 5, kTypeFloat32 = 6, kTypeBool = 7, kTypeString = 8, kTypeArray = 9;

uint64_t pad_to(uint64_t value) { return (value + kAlignment - 1) / kAlignment * kAlignment; }

template <typename T>
void put(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &value, sizeof(T));  // hosts are little-endian like GGUF (x86-64, aarch64)
}

void put_string(std::vector<uint8_t>& out, const std::string& text) {
  put<uint64_t>(out, text.size());
  out.insert(out.end(), text.begin(), text.end());
}

}  // namespace

void GgufWriter::begin_key(const std::string& key, uint32_t type) {
  put_string(metadata_, key);
  put<uint32_t>(metadata_, type);
  ++metadata_count_;
}

void GgufWriter::add_string(const std::string& key, const std::string& value) {
  begin_key(key, kTypeString);
  put_string(metadata_, value);
}
void GgufWriter::add_u32(const std::string& key, uint32_t value) {
  begin_key(key, kTypeUint32);
  put<uint32_t>(metadata_, value);
}
void GgufWriter::add_i32(const std::string& key, int32_t value) {
  begin_key(key, kTypeInt32);
  put<int32_t>(metadata_, value);
}
void GgufWriter::add_f32(const std::string& key, float value) {
  begin_key(key, kTypeFloat32);
  put<float>(metadata_, value);
}
void GgufWriter::add_bool(const std::string& key, bool value) {
  begin_key(key, kTypeBool);
  put<uint8_t>(metadata_, value ? 1 : 0);
}
void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  begin_key(key, kTypeArray);
  put<uint32_t>(metadata_, kTypeString);
  put<uint64_t>(metadata_, values.size());
  for (const std::string& value : values) put_string(metadata_, value);
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& values) {
  begin_key(key, kTypeArray);
  put<uint32_t>(metadata_, kTypeInt32);
  put<uint64_t>(metadata_, values.size());
  for (int32_t value : values) put<int32_t>(metadata_, value);
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& values) {
  begin_key(key, kTypeArray);
  put<uint32_t>(metadata_, kTypeFloat32);
  put<uint64_t>(metadata_, values.size());
  for (float value : values) put<float>(metadata_, value);
}

void GgufWriter::add_tensor(const std::string& name, const std::vector<int64_t>& shape, GgmlType type) {
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(static_cast<uint32_t>(type));
  LLMFT_CHECK(traits.has_value() && !shape.empty() && shape.size() <= 4, "GGUF tensor '", name, "': bad type or rank");
  for (const Tensor& tensor : tensors_) LLMFT_CHECK(tensor.name != name, "GGUF tensor '", name, "' added twice");
  Tensor tensor{name, {}, type, 0, data_size_};
  uint64_t numel = 1;
  for (auto axis = shape.rbegin(); axis != shape.rend(); ++axis) {
    LLMFT_CHECK(*axis > 0, "GGUF tensor '", name, "': empty dimension");
    tensor.ne.push_back(static_cast<uint64_t>(*axis));
    numel *= static_cast<uint64_t>(*axis);
  }
  LLMFT_CHECK(tensor.ne[0] % traits->block_size == 0, "GGUF tensor '", name, "': rows of ", tensor.ne[0],
              " elements are not a multiple of the ", traits->name, " block size");
  tensor.byte_size = numel / traits->block_size * traits->type_size;
  data_size_ += pad_to(tensor.byte_size);
  tensors_.push_back(std::move(tensor));
}

std::vector<uint8_t> GgufWriter::header() const {
  std::vector<uint8_t> out;
  put<uint32_t>(out, 0x46554747);  // "GGUF" as a little-endian u32
  put<uint32_t>(out, kVersion);
  put<uint64_t>(out, tensors_.size());
  put<uint64_t>(out, metadata_count_);
  out.insert(out.end(), metadata_.begin(), metadata_.end());
  for (const Tensor& tensor : tensors_) {
    put_string(out, tensor.name);
    put<uint32_t>(out, static_cast<uint32_t>(tensor.ne.size()));
    for (uint64_t extent : tensor.ne) put<uint64_t>(out, extent);
    put<uint32_t>(out, static_cast<uint32_t>(tensor.type));
    put<uint64_t>(out, tensor.offset);
  }
  out.resize(pad_to(out.size()), 0);
  return out;
}

uint64_t GgufWriter::file_size() const { return header().size() + data_size_; }

void GgufWriter::write(const Sink& sink, const TensorBytes& tensor_bytes) const {
  const std::vector<uint8_t> head = header();
  sink(head.data(), head.size());
  std::vector<uint8_t> buffer;
  for (size_t index = 0; index < tensors_.size(); ++index) {
    const Tensor& tensor = tensors_[index];
    buffer.assign(pad_to(tensor.byte_size), 0);
    tensor_bytes(index, std::span<uint8_t>(buffer.data(), tensor.byte_size));
    sink(buffer.data(), buffer.size());
  }
}

}  // namespace llmft::gguf
