// What rar_generate writes, with the Python CLI's rules (docs/RELIABILITY.md): PNGs through libpng, tokens
// as .npy, samples.json; every output under a temporary name swapped in complete; an existing output
// replaced only with --force and only when rar-generate wrote it; never an input; one writer per target.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace rar::tools {

// One line for the user, exit status 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Kind { kSamplesFolder, kNumpyFile };

struct Output {
  std::filesystem::path path;
  std::string option;  // --out, --save-tokens
  Kind kind;
  bool force = false;
  std::vector<std::filesystem::path> inputs;
  void Check() const;  // before any work: not an input, replaceable, writable
};

// Holds `.<name>.lock` beside a target for its lifetime; a second writer fails at once.
class Lock {
 public:
  explicit Lock(const std::filesystem::path& target);
  ~Lock();
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;

 private:
  std::filesystem::path path_;
  int fd_ = -1;
};

bool Overlap(const std::filesystem::path& a, const std::filesystem::path& b);  // one path, or one inside the other
std::filesystem::path TemporaryBeside(const std::filesystem::path& target, bool directory);
void Publish(const std::filesystem::path& temporary, const Output& output);  // re-checks, then swaps in

void WritePng(const std::filesystem::path& path, const uint8_t* rgb, int64_t height, int64_t width, int64_t channels);
void WriteNpy(const std::filesystem::path& path, const std::vector<int64_t>& values, int64_t rows, int64_t columns);

}  // namespace rar::tools
