// What rar_generate writes, with the Python CLI's rules (docs/RELIABILITY.md, rar_deploy/files.py): PNGs through
// libpng, tokens as .npy, samples.json listing every file; every output under a temporary name swapped in
// complete, all outputs of a run together or none; an existing output replaced only with --force, only when
// rar-generate wrote it and only when it holds nothing else; never an input; one writer per target; a path
// given through a link names its target.
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace rar::tools {

// One line for the user, exit status 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Kind { kSamplesFolder, kNumpyFile };

struct Output {
  std::filesystem::path path;  // as the user named it, for messages
  std::string option;          // --out, --save-tokens
  Kind kind;
  bool force = false;
  std::vector<std::filesystem::path> inputs;
  std::filesystem::path Target() const;  // where it is written: absolute, links followed
  void Check() const;                    // before any work: not an input, replaceable, writable
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

// A temporary file or folder beside an output's target; removed when destroyed (an error, or after a commit,
// when it holds the replaced output), so that no `.partial` outlives the run.
class Temporary {
 public:
  Temporary(const Output& output);
  ~Temporary();
  Temporary(const Temporary&) = delete;
  Temporary& operator=(const Temporary&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

bool Overlap(const std::filesystem::path& a, const std::filesystem::path& b);  // one path, or one inside the other

// Publishes every temporary at its output together: if one cannot be published, the ones before are put back.
// SIGINT, SIGTERM and SIGHUP are held back meanwhile (and take effect right after).
void PublishAll(const std::vector<const Temporary*>& temporaries, const std::vector<const Output*>& outputs);

// A write that failed with errno `error` (what the Write* functions throw).
struct WriteFailure : std::runtime_error {
  explicit WriteFailure(int error);
  int error;
};

// A failed write (errno) as the line Python's files.write_error gives.
[[noreturn]] void WriteFailed(int error, const std::vector<const Output*>& outputs);

void WritePng(const std::filesystem::path& path, const uint8_t* rgb, int64_t height, int64_t width, int64_t channels);
void WriteNpy(const std::filesystem::path& path, const std::vector<int64_t>& values, int64_t rows, int64_t columns);
void WriteText(const std::filesystem::path& path, const std::string& text);

// The files rar-generate listed in a samples folder (samples.json "files"); empty if the folder is not ours.
std::vector<std::string> SamplesFiles(const std::filesystem::path& folder, bool& ours);

}  // namespace rar::tools
