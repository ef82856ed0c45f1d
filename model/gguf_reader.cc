// GGUF parsing with every read bounded by the file (see gguf_reader.h).
#include "model/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "core/error.h"

namespace llmft::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;
constexpr uint64_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr uint32_t kMaxDims = 4;            // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;         // llama.cpp writes none; bounds recursion on hostile files
// Smallest possible encodings, used to bound counts before looping over them.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                 // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;  // empty name, 1 dim, type, offset

uint64_t scalar_size(ValueType type) {
  switch (type) {
    case ValueType::kUint8: case ValueType::kInt8: case ValueType::kBool: return 1;
    case ValueType::kUint16: case ValueType::kInt16: return 2;
    case ValueType::kUint32: case ValueType::kInt32: case ValueType::kFloat32: return 4;
    case ValueType::kUint64: case ValueType::kInt64: case ValueType::kFloat64: return 8;
    case ValueType::kString: return 8;       // the length prefix at least
    case ValueType::kArray: return 4 + 8;    // element type and count at least
  }
  return 1;
}

// Reads little-endian values from the mapped bytes; every read is checked
// against the end of the file and a failure names what was being read.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> bytes, const std::string& path) : bytes_(bytes), path_(path) {}

  uint64_t position() const { return position_; }
  uint64_t remaining() const { return bytes_.size() - position_; }

  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + position_, sizeof(T));  // host is little-endian (x86-64, aarch64)
    position_ += sizeof(T);
    return value;
  }

  std::string read_string(const std::string& what) {
    const uint64_t length = read<uint64_t>(str_cat(what, " (string length)"));
    if (length > remaining())
      throw_bad_input(path_, ": ", what, ": string length ", length, " at offset ", position_ - 8,
                      " exceeds the ", remaining(), " bytes left in the file");
    std::string value(reinterpret_cast<const char*>(bytes_.data() + position_), length);
    position_ += length;
    return value;
  }

 private:
  void need(uint64_t count, const std::string& what) {
    if (count > remaining())
      throw_bad_input(path_, ": truncated: ", what, " needs ", count, " bytes at offset ", position_, ", the file has ",
                      remaining(), " left");
  }

  std::span<const uint8_t> bytes_;
  const std::string& path_;
  uint64_t position_ = 0;
};

bool known_value_type(uint32_t raw) { return raw <= static_cast<uint32_t>(ValueType::kFloat64); }

Value read_value(Cursor& cursor, ValueType type, const std::string& what, const std::string& path, int depth) {
  Value value;
  value.type = type;
  switch (type) {
    case ValueType::kUint8: value.u = cursor.read<uint8_t>(what); break;
    case ValueType::kUint16: value.u = cursor.read<uint16_t>(what); break;
    case ValueType::kUint32: value.u = cursor.read<uint32_t>(what); break;
    case ValueType::kUint64: value.u = cursor.read<uint64_t>(what); break;
    case ValueType::kInt8: value.i = cursor.read<int8_t>(what); break;
    case ValueType::kInt16: value.i = cursor.read<int16_t>(what); break;
    case ValueType::kInt32: value.i = cursor.read<int32_t>(what); break;
    case ValueType::kInt64: value.i = cursor.read<int64_t>(what); break;
    case ValueType::kFloat32: value.f = cursor.read<float>(what); break;
    case ValueType::kFloat64: value.f = cursor.read<double>(what); break;
    case ValueType::kBool: {
      const uint8_t raw = cursor.read<uint8_t>(what);
      if (raw > 1) throw_bad_input(path, ": ", what, ": bool must be 0 or 1, found ", static_cast<int>(raw));
      value.b = raw != 0;
      break;
    }
    case ValueType::kString: value.s = cursor.read_string(what); break;
    case ValueType::kArray: {
      if (depth >= kMaxArrayNesting)
        throw_bad_input(path, ": ", what, ": arrays nested deeper than ", kMaxArrayNesting, " levels");
      const uint32_t raw_element_type = cursor.read<uint32_t>(str_cat(what, " (array element type)"));
      if (!known_value_type(raw_element_type))
        throw_bad_input(path, ": ", what, ": unknown array element type ", raw_element_type, " (expected 0..12)");
      value.element_type = static_cast<ValueType>(raw_element_type);
      const uint64_t count = cursor.read<uint64_t>(str_cat(what, " (array length)"));
      const uint64_t element_bytes = scalar_size(value.element_type);
      if (count > cursor.remaining() / element_bytes)
        throw_bad_input(path, ": ", what, ": array length ", count, " of ", value_type_name(value.element_type),
                        " cannot fit in the ", cursor.remaining(), " bytes left in the file");
      value.elements.reserve(count);
      for (uint64_t index = 0; index < count; ++index)
        value.elements.push_back(read_value(cursor, value.element_type, what, path, depth + 1));
      break;
    }
  }
  return value;
}

std::string shape_string(const std::vector<uint64_t>& ne) {
  std::string text = "[";
  for (size_t axis = 0; axis < ne.size(); ++axis) text += str_cat(axis ? ", " : "", ne[axis]);
  return text + "]";
}

uint64_t pad_to(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

class Mapping {
 public:
  Mapping(void* data, size_t size) : data_(data), size_(size) {}
  ~Mapping() { munmap(data_, size_); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

 private:
  void* data_;
  size_t size_;
};

}  // namespace

const char* value_type_name(ValueType type) {
  switch (type) {
    case ValueType::kUint8: return "uint8";
    case ValueType::kInt8: return "int8";
    case ValueType::kUint16: return "uint16";
    case ValueType::kInt16: return "int16";
    case ValueType::kUint32: return "uint32";
    case ValueType::kInt32: return "int32";
    case ValueType::kFloat32: return "float32";
    case ValueType::kBool: return "bool";
    case ValueType::kString: return "string";
    case ValueType::kArray: return "array";
    case ValueType::kUint64: return "uint64";
    case ValueType::kInt64: return "int64";
    case ValueType::kFloat64: return "float64";
  }
  return "unknown";
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::kUint8: case ValueType::kUint16: case ValueType::kUint32: case ValueType::kUint64:
    case ValueType::kInt8: case ValueType::kInt16: case ValueType::kInt32: case ValueType::kInt64: return true;
    default: return false;
  }
}

std::vector<int64_t> TensorInfo::shape() const {
  return std::vector<int64_t>(ne.rbegin(), ne.rend());
}

GgufFile GgufFile::open(const std::filesystem::path& path) {
  GgufFile file;
  file.path_ = path.string();
  const int fd = ::open(file.path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_bad_input(file.path_, ": cannot open: ", std::strerror(errno));
  struct stat status {};
  if (fstat(fd, &status) != 0 || !S_ISREG(status.st_mode)) {
    ::close(fd);
    throw_bad_input(file.path_, ": not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(status.st_size);
  if (size < kHeaderBytes) {
    ::close(fd);
    throw_bad_input(file.path_, ": truncated: ", size, " bytes, a GGUF header needs ", kHeaderBytes);
  }
  void* data = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (data == MAP_FAILED) throw_runtime(file.path_, ": mmap failed: ", std::strerror(errno));
  file.mapping_ = std::make_shared<Mapping>(data, size);
  file.bytes_ = std::span<const uint8_t>(static_cast<const uint8_t*>(data), size);
  file.parse();
  return file;
}

void GgufFile::parse() {
  Cursor cursor(bytes_, path_);
  const uint32_t magic = cursor.read<uint32_t>("magic");
  if (magic != kMagic) {
    std::string shown;
    for (int index = 0; index < 4; ++index) {
      const char c = static_cast<char>(bytes_[index]);
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", static_cast<unsigned>(static_cast<uint8_t>(c)));
      shown += (c >= 0x20 && c < 0x7f) ? std::string(1, c) : std::string(escaped);
    }
    throw_bad_input(path_, ": not a GGUF file: magic is '", shown, "', expected 'GGUF'",
                    shown == "FUGG" ? " (a big-endian GGUF file, not supported)" : "");
  }
  version_ = cursor.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    throw_bad_input(path_, ": GGUF version ", version_, " is not supported (expected 2 or 3)",
                    version_ == 0x02000000u || version_ == 0x03000000u ? "; a big-endian file?" : "");
  const uint64_t tensor_count = cursor.read<uint64_t>("tensor count");
  const uint64_t kv_count = cursor.read<uint64_t>("metadata count");
  if (kv_count > cursor.remaining() / kMinKvBytes)
    throw_bad_input(path_, ": metadata count ", kv_count, " is too large for a file of ", bytes_.size(), " bytes");
  if (tensor_count > cursor.remaining() / kMinTensorInfoBytes)
    throw_bad_input(path_, ": tensor count ", tensor_count, " is too large for a file of ", bytes_.size(), " bytes");

  std::set<std::string, std::less<>> keys;
  metadata_.reserve(kv_count);
  for (uint64_t index = 0; index < kv_count; ++index) {
    std::string key = cursor.read_string(str_cat("metadata entry ", index, " key"));
    const std::string what = str_cat("metadata key '", key, "'");
    if (!keys.insert(key).second) throw_bad_input(path_, ": ", what, " appears twice");
    const uint32_t raw_type = cursor.read<uint32_t>(str_cat(what, " (value type)"));
    if (!known_value_type(raw_type))
      throw_bad_input(path_, ": ", what, ": unknown value type ", raw_type, " (expected 0..12)");
    Value value = read_value(cursor, static_cast<ValueType>(raw_type), what, path_, 0);
    metadata_.push_back({std::move(key), std::move(value)});
  }

  if (const Value* alignment = find("general.alignment")) {
    if (alignment->type != ValueType::kUint32)
      throw_bad_input(path_, ": metadata key 'general.alignment': expected uint32, found ",
                      value_type_name(alignment->type));
    if (alignment->u == 0 || (alignment->u & (alignment->u - 1)) != 0)
      throw_bad_input(path_, ": metadata key 'general.alignment': expected a power of two, found ", alignment->u);
    alignment_ = alignment->u;
  } else {
    alignment_ = kDefaultAlignment;
  }

  std::set<std::string, std::less<>> names;
  tensors_.reserve(tensor_count);
  for (uint64_t index = 0; index < tensor_count; ++index) {
    TensorInfo tensor;
    tensor.name = cursor.read_string(str_cat("tensor ", index, " name"));
    const std::string what = str_cat("tensor '", tensor.name, "'");
    if (!names.insert(tensor.name).second) throw_bad_input(path_, ": ", what, " appears twice");
    const uint32_t dims = cursor.read<uint32_t>(str_cat(what, " (dimension count)"));
    if (dims == 0 || dims > kMaxDims)
      throw_bad_input(path_, ": ", what, ": ", dims, " dimensions, expected 1 to ", kMaxDims);
    for (uint32_t axis = 0; axis < dims; ++axis)
      tensor.ne.push_back(cursor.read<uint64_t>(str_cat(what, " (dimension ", axis, ")")));
    const uint32_t raw_type = cursor.read<uint32_t>(str_cat(what, " (type)"));
    tensor.offset = cursor.read<uint64_t>(str_cat(what, " (data offset)"));

    const std::optional<GgmlTypeTraits> traits = ggml_type_traits(raw_type);
    if (!traits) throw_bad_input(path_, ": ", what, ": unknown GGML type ", raw_type);
    tensor.type = traits->type;
    // Element count, bounded by the file (no block type stores more than 32
    // elements per byte) so the products below cannot overflow.
    const uint64_t max_elements = bytes_.size() * 32;
    tensor.numel = 1;
    for (uint64_t extent : tensor.ne) {
      if (extent == 0 || extent > max_elements || tensor.numel > max_elements / extent)
        throw_bad_input(path_, ": ", what, ": shape ", shape_string(tensor.ne), " is empty or too large for a file of ",
                        bytes_.size(), " bytes");
      tensor.numel *= extent;
    }
    if (tensor.ne[0] % traits->block_size != 0)
      throw_bad_input(path_, ": ", what, ": rows of ", tensor.ne[0], " elements are not a multiple of the ",
                      traits->name, " block size ", traits->block_size);
    tensor.byte_size = tensor.numel / traits->block_size * traits->type_size;
    tensors_.push_back(std::move(tensor));
  }
  data_offset_ = pad_to(cursor.position(), alignment_);

  // Tensor data: each tensor aligned, inside the file, and exactly where the
  // previous one ends (padded to the alignment), which is how llama.cpp's and
  // gguf-py's writers lay it out and what llama.cpp's gguf_init_from_reader
  // checks ("tensor '%s' has offset %, expected %"). A type or shape that does
  // not match the stored bytes breaks this chain.
  uint64_t expected_offset = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& tensor : tensors_) {
    const std::string what = str_cat("tensor '", tensor.name, "'");
    if (tensor.offset % alignment_ != 0)
      throw_bad_input(path_, ": ", what, ": data offset ", tensor.offset, " is not a multiple of the alignment ",
                      alignment_);
    if (tensor.offset > bytes_.size() || data_offset_ > bytes_.size() - tensor.offset ||
        tensor.byte_size > bytes_.size() - data_offset_ - tensor.offset)
      throw_bad_input(path_, ": ", what, ": data [", data_offset_ + tensor.offset, ", ",
                      data_offset_ + tensor.offset + tensor.byte_size, ") of ", ggml_type_name(static_cast<uint32_t>(tensor.type)),
                      " ", shape_string(tensor.ne), " ends past the end of the file (", bytes_.size(), " bytes)");
    if (tensor.offset != expected_offset)
      throw_bad_input(path_, ": ", what, ": data offset ", tensor.offset, ", expected ", expected_offset,
                      previous ? str_cat(" (the end of '", previous->name, "', ", ggml_type_name(static_cast<uint32_t>(previous->type)), " ",
                                         shape_string(previous->ne), ", padded to ", alignment_, ")")
                               : std::string(" (the first tensor starts the data section)"),
                      ": a type or shape does not match the stored data");
    expected_offset = pad_to(tensor.offset + tensor.byte_size, alignment_);
    previous = &tensor;
  }
  // Stricter than gguf_init (which ignores what follows the data): writers pad
  // after every tensor, the last one too, so bytes beyond that padding mean the
  // last tensor's type or shape understates its data.
  if (previous != nullptr && bytes_.size() > data_offset_ + expected_offset)
    throw_bad_input(path_, ": ", bytes_.size() - data_offset_ - expected_offset, " bytes after the last tensor '",
                    previous->name, "' (", ggml_type_name(static_cast<uint32_t>(previous->type)), " ", shape_string(previous->ne),
                    "): a type or shape does not match the stored data");
}

const Value* GgufFile::find(std::string_view key) const {
  for (const MetadataEntry& entry : metadata_)
    if (entry.key == key) return &entry.value;
  return nullptr;
}

const Value& GgufFile::get(std::string_view key) const {
  const Value* value = find(key);
  if (value == nullptr) throw_bad_input(path_, ": metadata key '", key, "' is missing");
  return *value;
}

std::string GgufFile::get_string(std::string_view key) const {
  const Value& value = get(key);
  if (value.type != ValueType::kString)
    throw_bad_input(path_, ": metadata key '", key, "': expected string, found ", value_type_name(value.type));
  return value.s;
}

namespace {

// Integer value as int64 when it fits; `what` names it in errors.
int64_t integer_of(const Value& value, const std::string& path, std::string_view what) {
  if (!value.is_integer())
    throw_bad_input(path, ": ", what, ": expected an integer, found ", value_type_name(value.type));
  switch (value.type) {
    case ValueType::kUint8: case ValueType::kUint16: case ValueType::kUint32: case ValueType::kUint64:
      if (value.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw_bad_input(path, ": ", what, ": value ", value.u, " does not fit in int64");
      return static_cast<int64_t>(value.u);
    default: return value.i;
  }
}

}  // namespace

int64_t GgufFile::get_int(std::string_view key) const {
  return integer_of(get(key), path_, str_cat("metadata key '", key, "'"));
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  const Value& value = get(key);
  if (value.type == ValueType::kUint64) return value.u;
  const int64_t result = integer_of(value, path_, str_cat("metadata key '", key, "'"));
  if (result < 0) throw_bad_input(path_, ": metadata key '", key, "': expected a non-negative integer, found ", result);
  return static_cast<uint64_t>(result);
}

double GgufFile::get_float(std::string_view key) const {
  const Value& value = get(key);
  if (value.is_float()) return value.f;
  return static_cast<double>(integer_of(value, path_, str_cat("metadata key '", key, "'")));
}

bool GgufFile::get_bool(std::string_view key) const {
  const Value& value = get(key);
  if (value.type != ValueType::kBool)
    throw_bad_input(path_, ": metadata key '", key, "': expected bool, found ", value_type_name(value.type));
  return value.b;
}

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const Value& value = get(key);
  if (value.type != ValueType::kArray || value.element_type != ValueType::kString)
    throw_bad_input(path_, ": metadata key '", key, "': expected an array of strings, found ",
                    value_type_name(value.type),
                    value.type == ValueType::kArray ? str_cat(" of ", value_type_name(value.element_type)) : "");
  std::vector<std::string> result;
  result.reserve(value.elements.size());
  for (const Value& element : value.elements) result.push_back(element.s);
  return result;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const Value& value = get(key);
  if (value.type != ValueType::kArray)
    throw_bad_input(path_, ": metadata key '", key, "': expected an array of integers, found ",
                    value_type_name(value.type));
  std::vector<int64_t> result;
  result.reserve(value.elements.size());
  const std::string what = str_cat("metadata key '", key, "'");
  for (const Value& element : value.elements) result.push_back(integer_of(element, path_, what));
  return result;
}

const TensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const TensorInfo& tensor : tensors_)
    if (tensor.name == name) return &tensor;
  return nullptr;
}

const TensorInfo& GgufFile::tensor(std::string_view name) const {
  const TensorInfo* tensor = find_tensor(name);
  if (tensor == nullptr) throw_bad_input(path_, ": tensor '", name, "' is missing");
  return *tensor;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const TensorInfo& tensor) const {
  return bytes_.subspan(data_offset_ + tensor.offset, tensor.byte_size);
}

std::vector<float> GgufFile::dequantize(const TensorInfo& tensor) const {
  const std::optional<GgmlTypeTraits> traits = ggml_type_traits(static_cast<uint32_t>(tensor.type));
  if (!traits || !traits->can_dequantize)
    throw_bad_input(path_, ": tensor '", tensor.name, "': type ", ggml_type_name(static_cast<uint32_t>(tensor.type)),
                    " cannot be dequantized (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)");
  std::vector<float> values(tensor.numel);
  dequantize_row(tensor.type, tensor_bytes(tensor), values);
  return values;
}

}  // namespace llmft::gguf
