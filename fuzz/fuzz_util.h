// Helpers the fuzz targets share: a scratch directory of their own for the
// parsers that read files by path (safetensors and GGUF memory-map them), and
// the checks a target makes beyond "no crash".
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace llmft::fuzz {

// A directory for this process, removed at exit. Under /dev/shm when it
// exists: the fuzzers write their input to a file on every run, and tmpfs keeps
// that off the disk.
inline const std::filesystem::path& scratch_directory() {
  static const std::filesystem::path directory = [] {
    std::filesystem::path root = std::filesystem::exists("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
    std::filesystem::path path = root / ("llmft-fuzz-" + std::to_string(::getpid()));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
    std::atexit([] { std::filesystem::remove_all(scratch_directory()); });
    return path;
  }();
  return directory;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A property the parser promises failed: report it and abort, so libFuzzer
// keeps the input as a crash.
[[noreturn]] inline void property_failed(const char* what) {
  std::fprintf(stderr, "fuzz property failed: %s\n", what);
  std::abort();
}
#define LLMFT_FUZZ_EXPECT(condition) \
  ((condition) ? void(0) : ::llmft::fuzz::property_failed(#condition " (" __FILE__ ":" LLMFT_FUZZ_STR(__LINE__) ")"))
#define LLMFT_FUZZ_STR(x) LLMFT_FUZZ_STR2(x)
#define LLMFT_FUZZ_STR2(x) #x

}  // namespace llmft::fuzz
