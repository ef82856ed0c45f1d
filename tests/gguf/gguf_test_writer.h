// A small GGUF writer for tests, written from the format description (llama.cpp
// ggml/include/gguf.h, gguf-py/gguf/gguf_writer.py), independent of the reader
// under test: little-endian header, metadata, tensor infos, data padded to the
// alignment after the tensor infos and after every tensor.
//
// It records where each field it wrote sits in the file so tests can corrupt
// exactly one of them.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

namespace llmft::gguf::testing {

class ByteWriter {
 public:
  template <typename T>
  void put(T value) {
    uint8_t raw[sizeof(T)];
    std::memcpy(raw, &value, sizeof(T));  // x86-64 / aarch64 hosts are little-endian like GGUF
    bytes.insert(bytes.end(), raw, raw + sizeof(T));
  }
  void put_string(const std::string& text) {
    put<uint64_t>(text.size());
    bytes.insert(bytes.end(), text.begin(), text.end());
  }
  void put_bytes(const std::vector<uint8_t>& more) { bytes.insert(bytes.end(), more.begin(), more.end()); }
  size_t size() const { return bytes.size(); }
  std::vector<uint8_t> bytes;
};

// Encoded metadata values: the type id then the payload.
struct EncodedValue {
  uint32_t type;
  std::vector<uint8_t> payload;
};

template <typename T>
EncodedValue scalar_value(uint32_t type, T value) {
  ByteWriter writer;
  writer.put<T>(value);
  return {type, writer.bytes};
}
inline EncodedValue u8_value(uint8_t v) { return scalar_value<uint8_t>(0, v); }
inline EncodedValue i8_value(int8_t v) { return scalar_value<int8_t>(1, v); }
inline EncodedValue u16_value(uint16_t v) { return scalar_value<uint16_t>(2, v); }
inline EncodedValue i16_value(int16_t v) { return scalar_value<int16_t>(3, v); }
inline EncodedValue u32_value(uint32_t v) { return scalar_value<uint32_t>(4, v); }
inline EncodedValue i32_value(int32_t v) { return scalar_value<int32_t>(5, v); }
inline EncodedValue f32_value(float v) { return scalar_value<float>(6, v); }
inline EncodedValue bool_value(bool v) { return scalar_value<uint8_t>(7, v ? 1 : 0); }
inline EncodedValue u64_value(uint64_t v) { return scalar_value<uint64_t>(10, v); }
inline EncodedValue i64_value(int64_t v) { return scalar_value<int64_t>(11, v); }
inline EncodedValue f64_value(double v) { return scalar_value<double>(12, v); }
inline EncodedValue string_value(const std::string& v) {
  ByteWriter writer;
  writer.put_string(v);
  return {8, writer.bytes};
}
// An array of values that all have `element_type` (their type ids are dropped).
inline EncodedValue array_value(uint32_t element_type, const std::vector<EncodedValue>& elements) {
  ByteWriter writer;
  writer.put<uint32_t>(element_type);
  writer.put<uint64_t>(elements.size());
  for (const EncodedValue& element : elements) writer.put_bytes(element.payload);
  return {9, writer.bytes};
}
inline EncodedValue string_array(const std::vector<std::string>& strings) {
  std::vector<EncodedValue> elements;
  for (const std::string& s : strings) elements.push_back(string_value(s));
  return array_value(8, elements);
}
inline EncodedValue i32_array(const std::vector<int32_t>& values) {
  std::vector<EncodedValue> elements;
  for (int32_t v : values) elements.push_back(i32_value(v));
  return array_value(5, elements);
}

struct TestTensor {
  std::string name;
  std::vector<uint64_t> ne;  // GGUF order, ne[0] fastest
  uint32_t type;
  std::vector<uint8_t> data;
};

struct GgufImage {
  std::vector<uint8_t> bytes;
  // Byte positions of fields: "version", "tensor_count", "kv_count", "kv.<key>.key_length",
  // "kv.<key>.type", "kv.<key>.value", "tensor.<name>.n_dims", "tensor.<name>.ne0",
  // "tensor.<name>.type", "tensor.<name>.offset", "data" (start of the data section).
  std::map<std::string, size_t> at;

  template <typename T>
  void poke(const std::string& field, T value) {
    std::memcpy(bytes.data() + at.at(field), &value, sizeof(T));
  }
  template <typename T>
  T peek(const std::string& field) const {
    T value;
    std::memcpy(&value, bytes.data() + at.at(field), sizeof(T));
    return value;
  }
};

class GgufBuilder {
 public:
  uint32_t version = 3;
  uint64_t alignment = 32;  // the padding used; write general.alignment yourself to change the reader's

  void add(const std::string& key, EncodedValue value) { metadata_.push_back({key, std::move(value)}); }
  void add_tensor(TestTensor tensor) { tensors_.push_back(std::move(tensor)); }

  GgufImage build() const {
    GgufImage image;
    ByteWriter out;
    out.put<uint32_t>(0x46554747);  // "GGUF"
    image.at["version"] = out.size();
    out.put<uint32_t>(version);
    image.at["tensor_count"] = out.size();
    out.put<uint64_t>(tensors_.size());
    image.at["kv_count"] = out.size();
    out.put<uint64_t>(metadata_.size());
    for (const auto& [key, value] : metadata_) {
      image.at["kv." + key + ".key_length"] = out.size();
      out.put_string(key);
      image.at["kv." + key + ".type"] = out.size();
      out.put<uint32_t>(value.type);
      image.at["kv." + key + ".value"] = out.size();
      out.put_bytes(value.payload);
    }
    uint64_t offset = 0;
    for (const TestTensor& tensor : tensors_) {
      out.put_string(tensor.name);
      image.at["tensor." + tensor.name + ".n_dims"] = out.size();
      out.put<uint32_t>(static_cast<uint32_t>(tensor.ne.size()));
      image.at["tensor." + tensor.name + ".ne0"] = out.size();
      for (uint64_t extent : tensor.ne) out.put<uint64_t>(extent);
      image.at["tensor." + tensor.name + ".type"] = out.size();
      out.put<uint32_t>(tensor.type);
      image.at["tensor." + tensor.name + ".offset"] = out.size();
      out.put<uint64_t>(offset);
      offset += padded(tensor.data.size());
    }
    out.bytes.resize(padded(out.size()), 0);
    image.at["data"] = out.size();
    for (const TestTensor& tensor : tensors_) {
      out.put_bytes(tensor.data);
      out.bytes.resize(padded(out.size()), 0);
    }
    image.bytes = std::move(out.bytes);
    return image;
  }

 private:
  uint64_t padded(uint64_t size) const { return (size + alignment - 1) / alignment * alignment; }

  std::vector<std::pair<std::string, EncodedValue>> metadata_;
  std::vector<TestTensor> tensors_;
};

// A scratch directory removed when the test ends.
class ScratchDir {
 public:
  ScratchDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("llmft-gguf-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    std::filesystem::path file = path_ / name;
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return file;
  }

 private:
  static int& counter() {
    static int value = 0;
    return value;
  }
  std::filesystem::path path_;
};

}  // namespace llmft::gguf::testing
