#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/json_depth.h"

namespace llmft {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

// safetensors/src/tensor.rs: MAX_HEADER_SIZE.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeName {
  const char* name;
  std::optional<DType> dtype;
  size_t bytes;
};
// Every dtype the safetensors format defines (safetensors/src/tensor.rs Dtype);
// the ones without an llmft DType are recognised so the error can say
// "not supported" instead of "unknown".
const DTypeName kDTypeNames[] = {
    {"F32", DType::kF32, 4},        {"BF16", DType::kBF16, 2},        {"F16", DType::kF16, 2},
    {"I32", DType::kI32, 4},        {"I64", DType::kI64, 8},          {"F64", std::nullopt, 8},
    {"I8", std::nullopt, 1},        {"U8", std::nullopt, 1},          {"I16", std::nullopt, 2},
    {"U16", std::nullopt, 2},       {"U32", std::nullopt, 4},         {"U64", std::nullopt, 8},
    {"BOOL", std::nullopt, 1},      {"F8_E4M3", std::nullopt, 1},     {"F8_E5M2", std::nullopt, 1},
    {"F8_E8M0", std::nullopt, 1},   {"C64", std::nullopt, 8},
};

const DTypeName* find_dtype(const std::string& name) {
  for (const DTypeName& entry : kDTypeNames)
    if (name == entry.name) return &entry;
  return nullptr;
}

const char* safetensors_name(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  return "?";
}

std::string describe(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return str_cat(value.type_name(), " ", text);
}

std::string errno_text() { return std::strerror(errno); }

// Writes a file under a temporary name and renames it into place on commit();
// destroyed without commit() it removes the temporary file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::filesystem::path& path) : path_(path) {
    temp_path_ = path;
    temp_path_ += str_cat(".tmp.", ::getpid());
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw_runtime(temp_path_.string(), ": cannot create: ", errno_text());
  }
  ~AtomicFileWriter() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) std::filesystem::remove(temp_path_, ignored_);
  }
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t bytes) {
    const char* cursor = static_cast<const char*>(data);
    while (bytes > 0) {
      ssize_t written = ::write(fd_, cursor, bytes);
      if (written < 0) {
        if (errno == EINTR) continue;
        throw_runtime(temp_path_.string(), ": write failed: ", errno_text());
      }
      cursor += written;
      bytes -= static_cast<size_t>(written);
    }
  }

  void commit() {
    if (::fsync(fd_) != 0) throw_runtime(temp_path_.string(), ": fsync failed: ", errno_text());
    if (::close(fd_) != 0) throw_runtime(temp_path_.string(), ": close failed: ", errno_text());
    fd_ = -1;
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0)
      throw_runtime(path_.string(), ": cannot rename ", temp_path_.string(), " into place: ", errno_text());
    committed_ = true;
    // The rename is durable only once the directory entry is on disk.
    std::filesystem::path directory = path_.parent_path().empty() ? "." : path_.parent_path();
    int directory_fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (directory_fd >= 0) {
      ::fsync(directory_fd);
      ::close(directory_fd);
    }
  }

 private:
  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  bool committed_ = false;
  std::error_code ignored_;
};

}  // namespace

void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

// ---- Reader -------------------------------------------------------------------

struct SafetensorsFile::Mapping {
  void* address = nullptr;
  size_t bytes = 0;
  ~Mapping() {
    if (address != nullptr) ::munmap(address, bytes);
  }
};

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& file_path) {
  SafetensorsFile file;
  file.path_ = file_path.string();
  const std::string& path = file.path_;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_bad_input(path, ": cannot open safetensors file: ", errno_text());
  struct stat status {};
  if (::fstat(fd, &status) != 0) {
    ::close(fd);
    throw_bad_input(path, ": cannot stat: ", errno_text());
  }
  if (!S_ISREG(status.st_mode)) {
    ::close(fd);
    throw_bad_input(path, ": not a regular file");
  }
  const uint64_t file_bytes = static_cast<uint64_t>(status.st_size);
  if (file_bytes < 8) {
    ::close(fd);
    throw_bad_input(path, ": file is ", file_bytes, " bytes, too short for the 8-byte header size");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->address = ::mmap(nullptr, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->address == MAP_FAILED) {
    mapping->address = nullptr;
    throw_runtime(path, ": mmap failed: ", errno_text());
  }
  mapping->bytes = file_bytes;
  const uint8_t* base = static_cast<const uint8_t*>(mapping->address);

  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | base[i];  // little-endian
  if (header_bytes > kMaxHeaderBytes)
    throw_bad_input(path, ": header size ", header_bytes, " exceeds the ", kMaxHeaderBytes, "-byte limit");
  if (header_bytes > file_bytes - 8)
    throw_bad_input(path, ": header size ", header_bytes, " runs past the end of the file (", file_bytes, " bytes)");
  const uint64_t data_bytes = file_bytes - 8 - header_bytes;

  std::string_view header_text(reinterpret_cast<const char*>(base + 8), header_bytes);
  json header;
  try {
    header = parse_json<json>(header_text, str_cat(path, ": header"));
  } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
    throw_bad_input(path, ": header is not valid JSON: ", error.what());
  }
  if (!header.is_object()) throw_bad_input(path, ": header is not a JSON object, found ", describe(header));

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object()) throw_bad_input(path, ": __metadata__: expected an object of strings, found ", describe(value));
      for (auto item = value.begin(); item != value.end(); ++item) {
        if (!item.value().is_string())
          throw_bad_input(path, ": __metadata__: value of '", item.key(), "': expected a string, found ",
                          describe(item.value()));
        file.metadata_[item.key()] = item.value().get<std::string>();
      }
      continue;
    }
    auto fail = [&](auto&&... parts) { throw_bad_input(path, ": tensor '", name, "': ", parts...); };
    if (!value.is_object()) fail("expected an object {dtype, shape, data_offsets}, found ", describe(value));
    SafetensorsEntry entry;
    entry.name = name;

    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end() || !dtype_it->is_string())
      fail("field 'dtype': expected a string, found ", dtype_it == value.end() ? "nothing" : describe(*dtype_it));
    entry.dtype_name = dtype_it->get<std::string>();
    const DTypeName* dtype = find_dtype(entry.dtype_name);
    if (dtype == nullptr) fail("unknown dtype '", entry.dtype_name, "'");
    entry.dtype = dtype->dtype;

    auto shape_it = value.find("shape");
    if (shape_it == value.end() || !shape_it->is_array())
      fail("field 'shape': expected a list of non-negative integers, found ",
           shape_it == value.end() ? "nothing" : describe(*shape_it));
    // numel * element size, guarded against overflow (a hostile header must
    // not wrap around to a small size).
    uint64_t expected_bytes = dtype->bytes;
    bool overflow = false;
    // Shapes are int64 here: each extent, and the element count multiplied
    // out in order (safetensors' own validation: try_fold with checked_mul),
    // must fit, or a zero-element tensor could carry a dimension of 2^63 that
    // turns negative, or [2^62, 2^62, 0] whose running product overflows.
    constexpr uint64_t kMaxExtent = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    uint64_t elements = 1;
    for (const json& extent : *shape_it) {
      if (!extent.is_number_unsigned())
        fail("field 'shape': expected a list of non-negative integers, found ", describe(*shape_it));
      uint64_t size = extent.get<uint64_t>();
      if (size > kMaxExtent)
        fail("field 'shape': dimension ", entry.shape.size(), " is ", size, ", above 2^63-1");
      if (size != 0 && elements > kMaxExtent / size)
        fail("field 'shape': ", describe(*shape_it), " has more than 2^63-1 elements");
      elements *= size;
      entry.shape.push_back(static_cast<int64_t>(size));
      if (size != 0 && expected_bytes > std::numeric_limits<uint64_t>::max() / size) overflow = true;
      else expected_bytes *= size;
    }

    auto offsets_it = value.find("data_offsets");
    if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned())
      fail("field 'data_offsets': expected [begin, end] (non-negative integers), found ",
           offsets_it == value.end() ? "nothing" : describe(*offsets_it));
    entry.begin = (*offsets_it)[0].get<uint64_t>();
    entry.end = (*offsets_it)[1].get<uint64_t>();
    if (entry.end < entry.begin) fail("data_offsets [", entry.begin, ", ", entry.end, "] end before they begin");
    if (overflow || expected_bytes != entry.end - entry.begin)
      fail("shape ", shape_to_string(entry.shape), " of ", entry.dtype_name, " needs ",
           overflow ? std::string("more than 2^64") : str_cat(expected_bytes), " bytes but data_offsets [",
           entry.begin, ", ", entry.end, "] span ", entry.end - entry.begin);
    if (entry.end > data_bytes)
      fail("data_offsets [", entry.begin, ", ", entry.end, "] run past the end of the data area (", data_bytes,
           " bytes)");
    file.entries_.push_back(std::move(entry));
  }

  // The tensors must tile the data area exactly: sorted by begin, each starts
  // where the previous one ended (safetensors/src/tensor.rs validate()).
  std::sort(file.entries_.begin(), file.entries_.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t covered = 0;
  std::string previous = "";
  for (const SafetensorsEntry& entry : file.entries_) {
    std::string after = previous.empty() ? std::string("the start of the data area")
                                         : str_cat("the previous tensor '", previous, "' ending at ", covered);
    if (entry.begin < covered)
      throw_bad_input(path, ": tensor '", entry.name, "': data_offsets [", entry.begin, ", ", entry.end,
                      "] overlap ", after);
    if (entry.begin > covered)
      throw_bad_input(path, ": tensor '", entry.name, "': data_offsets [", entry.begin, ", ", entry.end,
                      "] leave a gap after ", after);
    covered = entry.end;
    previous = entry.name;
  }
  if (covered != data_bytes)
    throw_bad_input(path, ": tensors cover ", covered, " bytes of the ", data_bytes, "-byte data area",
                    previous.empty() ? std::string() : str_cat(" (last tensor '", previous, "')"),
                    ": the file has trailing bytes");

  for (size_t i = 0; i < file.entries_.size(); ++i) file.index_[file.entries_[i].name] = i;
  file.data_area_ = base + 8 + header_bytes;
  file.mapping_ = std::move(mapping);
  return file;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw_bad_input(path_, ": no tensor '", name, "'");
  return entries_[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry& found = entry(name);
  if (!found.dtype)
    throw_bad_input(path_, ": tensor '", name, "': dtype ", found.dtype_name,
                    " is not supported (llmft reads F32, BF16, F16, I32, I64)");
  const uint8_t* address = data_area_ + found.begin;
  Tensor view = Tensor::borrow(const_cast<uint8_t*>(address), found.shape, *found.dtype, Device::cpu(), mapping_);
  // Files from writers that do not pad the header can leave data unaligned for
  // its element type; such tensors are copied rather than read misaligned.
  if (reinterpret_cast<uintptr_t>(address) % dtype_size(*found.dtype) != 0) return view.clone();
  return view;
}

Tensor SafetensorsFile::tensor_as(const std::string& name, DType dtype) const {
  Tensor stored = tensor(name);
  if (stored.dtype() == dtype) return stored;
  if (is_floating(stored.dtype()) != is_floating(dtype))
    throw_bad_input(path_, ": tensor '", name, "': cannot convert ", entry(name).dtype_name, " to ",
                    dtype_name(dtype));
  if (!is_floating(dtype)) {
    Tensor converted = Tensor::empty_cpu(stored.shape(), dtype);
    const int64_t count = stored.numel();
    if (dtype == DType::kI64) {
      const int32_t* source = stored.data<int32_t>();
      for (int64_t i = 0; i < count; ++i) converted.data<int64_t>()[i] = source[i];
    } else {
      const int64_t* source = stored.data<int64_t>();
      for (int64_t i = 0; i < count; ++i) {
        if (source[i] < std::numeric_limits<int32_t>::min() || source[i] > std::numeric_limits<int32_t>::max())
          throw_bad_input(path_, ": tensor '", name, "': element ", i, " (", source[i], ") does not fit in I32");
        converted.data<int32_t>()[i] = static_cast<int32_t>(source[i]);
      }
    }
    return converted;
  }
  std::vector<float> values = stored.to_floats();
  return Tensor::from_floats(stored.shape(), values, dtype);
}

// ---- Writer -------------------------------------------------------------------

uint64_t serialize_safetensors(const std::string& name, std::span<const NamedTensor> tensors,
                               const std::map<std::string, std::string>& metadata,
                               const std::function<void(const void* data, size_t bytes)>& sink) {
  std::vector<const NamedTensor*> order;
  std::set<std::string> names;
  for (const NamedTensor& named : tensors) {
    LLMFT_CHECK(named.tensor.defined(), name, ": tensor '", named.name, "' is undefined");
    if (named.name == "__metadata__" || !names.insert(named.name).second)
      throw_bad_input(name, ": tensor name '", named.name, "' is reserved or used twice");
    order.push_back(&named);
  }
  // The Rust implementation sorts by dtype (wider first, keeping alignment)
  // and then by name; element size stands in for its dtype order here.
  std::stable_sort(order.begin(), order.end(), [](const NamedTensor* a, const NamedTensor* b) {
    size_t size_a = dtype_size(a->tensor.dtype()), size_b = dtype_size(b->tensor.dtype());
    return size_a != size_b ? size_a > size_b : a->name < b->name;
  });

  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const NamedTensor* named : order) {
    uint64_t bytes = named->tensor.nbytes();
    header[named->name] = {{"dtype", safetensors_name(named->tensor.dtype())},
                           {"shape", named->tensor.shape()},
                           {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // so the data area starts 8-byte aligned

  uint8_t size_bytes[8];
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) size_bytes[i] = static_cast<uint8_t>(header_size >> (8 * i));
  sink(size_bytes, 8);
  sink(header_text.data(), header_text.size());
  for (const NamedTensor* named : order) {
    if (named->tensor.device().is_cpu()) {
      sink(named->tensor.raw_data(), named->tensor.nbytes());
    } else {
      Tensor host = named->tensor.to(default_host_allocator());
      sink(host.raw_data(), host.nbytes());
    }
  }
  return 8 + header_text.size() + offset;
}

void write_safetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                       const std::map<std::string, std::string>& metadata) {
  AtomicFileWriter writer(path);
  serialize_safetensors(path.string(), tensors, metadata,
                        [&](const void* data, size_t bytes) { writer.write(data, bytes); });
  writer.commit();
}

// ---- Sharded checkpoints --------------------------------------------------------

namespace {
constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open(const std::filesystem::path& directory) {
  SafetensorsCheckpoint checkpoint;
  checkpoint.directory_ = directory.string();
  const std::filesystem::path index_path = directory / kIndexFile;
  const std::filesystem::path single_path = directory / kSingleFile;

  if (!std::filesystem::exists(index_path)) {
    if (!std::filesystem::exists(single_path))
      throw_bad_input(directory.string(), ": no ", kSingleFile, " or ", kIndexFile, " in this directory");
    checkpoint.files_.push_back(SafetensorsFile::open(single_path));
    for (const SafetensorsEntry& entry : checkpoint.files_[0].entries()) checkpoint.file_of_[entry.name] = 0;
    return checkpoint;
  }

  const std::string index_name = index_path.string();
  std::ifstream in(index_path);
  if (!in) throw_bad_input(index_name, ": cannot open");
  json index;
  try {
    index = parse_json<json>(in, index_name);
  } catch (const json::exception& error) {  // parse_error, and out_of_range for a number like 1e999
    throw_bad_input(index_name, ": not valid JSON: ", error.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw_bad_input(index_name, ": field 'weight_map': expected an object {tensor: file}, found ",
                    index.is_object() && index.contains("weight_map") ? describe(index["weight_map"]) : "nothing");
  std::map<std::string, size_t> file_numbers;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    const std::string& tensor_name = it.key();
    if (!it.value().is_string())
      throw_bad_input(index_name, ": weight_map: tensor '", tensor_name, "': expected a file name, found ",
                      describe(it.value()));
    std::string file_name = it.value().get<std::string>();
    // Shard names are plain file names beside the index; anything else could
    // read outside the checkpoint directory.
    if (file_name.empty() || file_name.find('/') != std::string::npos || file_name == "." || file_name == "..")
      throw_bad_input(index_name, ": weight_map: tensor '", tensor_name, "': '", file_name,
                      "' is not a file name in this directory");
    auto known = file_numbers.find(file_name);
    if (known == file_numbers.end()) {
      std::filesystem::path shard_path = directory / file_name;
      // The error_code form: a name the file system rejects (longer than
      // NAME_MAX) is a bad index, not a std::filesystem_error escaping.
      std::error_code error;
      if (!std::filesystem::exists(shard_path, error))
        throw_bad_input(index_name, ": weight_map: tensor '", tensor_name, "' is in '", file_name,
                        error ? str_cat("', which cannot be opened: ", error.message()) : std::string("', which does not exist"));
      checkpoint.files_.push_back(SafetensorsFile::open(shard_path));
      known = file_numbers.emplace(file_name, checkpoint.files_.size() - 1).first;
    }
    if (!checkpoint.files_[known->second].contains(tensor_name))
      throw_bad_input(index_name, ": weight_map: tensor '", tensor_name, "' is not in ",
                      checkpoint.files_[known->second].path());
    checkpoint.file_of_[tensor_name] = known->second;
  }
  return checkpoint;
}

std::vector<std::string> SafetensorsCheckpoint::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [name, file] : file_of_) names.push_back(name);
  return names;
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = file_of_.find(name);
  if (it == file_of_.end()) throw_bad_input(directory_, ": the checkpoint has no tensor '", name, "'");
  return files_[it->second];
}

void write_safetensors_checkpoint(const std::filesystem::path& directory, std::span<const NamedTensor> tensors,
                                  uint64_t max_shard_bytes) {
  std::filesystem::create_directories(directory);
  std::vector<std::vector<NamedTensor>> shards(1);
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const NamedTensor& named : tensors) {
    uint64_t bytes = named.tensor.nbytes();
    // A tensor larger than the limit gets a shard of its own, as in
    // transformers' shard_checkpoint.
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(named);
    shard_bytes += bytes;
    total_bytes += bytes;
  }
  std::error_code ignored;
  if (shards.size() == 1) {
    write_safetensors(directory / kSingleFile, shards[0]);
    std::filesystem::remove(directory / kIndexFile, ignored);  // a stale index would shadow the new file
    return;
  }
  json weight_map = json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char file_name[64];
    std::snprintf(file_name, sizeof file_name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors(directory / file_name, shards[i]);
    for (const NamedTensor& named : shards[i]) weight_map[named.name] = file_name;
  }
  json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  // Written last: the index names shards that now exist.
  write_file_atomically(directory / kIndexFile, index.dump(2) + "\n");
  std::filesystem::remove(directory / kSingleFile, ignored);
}

}  // namespace llmft
