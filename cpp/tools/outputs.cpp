#include "outputs.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <png.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

namespace rar::tools {
namespace fs = std::filesystem;

namespace {

constexpr size_t kNameMax = 255;  // bytes in one file name
constexpr const char* kTokensMark = "# rar-deploy tokens";
constexpr size_t kShown = 5;

// Absolute, links resolved as far as the path exists, no trailing separator ("out/" is "out"), as Python's
// os.path.realpath: a relative path, "." or a link must not hide what is written.
fs::path Resolved(const fs::path& path) {
  const fs::path resolved = fs::weakly_canonical(fs::absolute(path));
  return resolved.has_filename() || resolved == resolved.root_path() ? resolved : resolved.parent_path();
}

bool Inside(const fs::path& path, const fs::path& folder) {  // or the same path
  const fs::path p = Resolved(path), f = Resolved(folder);
  return std::mismatch(f.begin(), f.end(), p.begin(), p.end()).first == f.end();
}

bool Exists(const fs::path& path) {
  std::error_code error;
  return fs::exists(fs::symlink_status(path, error));
}

bool EmptyTarget(const fs::path& path) {
  std::error_code error;
  return !Exists(path) || (fs::is_directory(fs::symlink_status(path, error)) && fs::is_empty(path, error));
}

std::string Sha256Hex(const std::string& text) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  static const char* digits = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += {digits[digest[i] >> 4], digits[digest[i] & 15]};
  return hex;
}

// `.<name>.`, shortened with a hash of the whole name where the name leaves no room for a suffix (Python's
// files._stem, byte for byte, so that either runtime recognises the other's leftovers).
std::string Stem(const fs::path& target) {
  const std::string name = target.filename().string();
  if (name.size() <= kNameMax - 32) return "." + name + ".";
  return "." + name.substr(0, 160) + "~" + Sha256Hex(name).substr(0, 12) + ".";
}

std::string Named(const std::vector<std::string>& names) {
  std::string text;
  for (size_t i = 0; i < std::min(names.size(), kShown); ++i) text += (i ? ", " : "") + names[i];
  if (names.size() > kShown) text += " and " + std::to_string(names.size() - kShown) + " more";
  return text;
}

bool NumpyOurs(const fs::path& path) {  // a .npy whose header ends with the tokens mark
  std::ifstream stream(path, std::ios::binary);
  char magic[8] = {};
  stream.read(magic, 8);
  if (!fs::is_regular_file(path) || std::string(magic, 6) != "\x93NUMPY") return false;
  unsigned char length[2] = {};
  stream.read(reinterpret_cast<char*>(length), 2);
  std::string header(static_cast<size_t>(length[0] | (length[1] << 8)), '\0');
  stream.read(header.data(), static_cast<std::streamsize>(header.size()));
  if (!stream) return false;
  header.erase(header.find_last_not_of(" \n") + 1);
  const std::string mark = kTokensMark;
  return header.size() >= mark.size() && header.compare(header.size() - mark.size(), mark.size(), mark) == 0;
}

// What a samples folder holds beyond the files rar-generate wrote (a foreign folder is named once).
std::vector<std::string> Foreign(const fs::path& folder, const std::vector<std::string>& written) {
  const std::set<std::string> files(written.begin(), written.end());
  std::set<std::string> ancestors;
  for (const std::string& name : written) {
    for (fs::path parent = fs::path(name).parent_path(); !parent.empty(); parent = parent.parent_path()) {
      ancestors.insert(parent.string());
    }
  }
  std::vector<std::string> found;
  std::error_code error;
  for (auto it = fs::recursive_directory_iterator(folder, error); it != fs::recursive_directory_iterator();
       it.increment(error)) {
    const std::string relative = fs::relative(it->path(), folder).string();
    if (it->is_directory() && !it->is_symlink()) {
      if (!ancestors.count(relative)) {
        found.push_back(relative + "/");
        it.disable_recursion_pending();
      }
    } else if (!files.count(relative)) {
      found.push_back(relative);
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

// Is the existing target the owner's, and what of it did the owner not write (folders)?
bool Ours(const Output& output, const fs::path& target, std::vector<std::string>* foreign) {
  if (output.kind == Kind::kNumpyFile) return NumpyOurs(target);
  bool ours = false;
  const std::vector<std::string> written = SamplesFiles(target, ours);
  if (ours && foreign != nullptr) *foreign = Foreign(target, written);
  return ours;
}

int RenameExchange(const fs::path& a, const fs::path& b) {
  return renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE);
}

volatile std::sig_atomic_t held_signal = 0;
extern "C" void HoldSignal(int signum) { held_signal = signum; }

// SIGINT, SIGTERM and SIGHUP recorded instead of acted on while outputs are swapped in, then re-raised. A handler,
// not a signal mask, because any thread (ONNX Runtime's) may take a process signal.
class SignalsHeld {
 public:
  SignalsHeld() {
    struct sigaction hold {};
    hold.sa_handler = HoldSignal;
    sigemptyset(&hold.sa_mask);
    for (size_t i = 0; i < 3; ++i) sigaction(kSignals[i], &hold, &previous_[i]);
  }
  ~SignalsHeld() {
    for (size_t i = 0; i < 3; ++i) sigaction(kSignals[i], &previous_[i], nullptr);
    if (held_signal != 0) std::raise(held_signal);
  }

 private:
  static constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};
  struct sigaction previous_[3];
};

}  // namespace

fs::path Output::Target() const { return Resolved(path); }

void Output::Check() const {
  const std::string name = fs::absolute(path).filename().string();
  if (name.size() > kNameMax) {
    throw UsageError("the name " + name.substr(0, 40) + "... is " + std::to_string(name.size()) + " bytes long, more "
                     "than a file name may have (255): choose a shorter one");
  }
  for (const fs::path& input : inputs) {
    if (Inside(input, path) || Inside(path, input)) {
      throw UsageError(option + " " + path.string() + " is, contains or lies inside the input " + input.string() +
                       ": choose another " + option);
    }
  }
  const fs::path target = Target();
  std::error_code cwd_error;
  if (Inside(fs::current_path(cwd_error), target) && !cwd_error) {
    throw UsageError(option + " " + path.string() + " is (or holds) the folder you are in: the output is swapped in "
                     "as a complete new folder, which would leave you in a deleted one; run from outside it (cd ..) "
                     "and give its name");
  }
  const bool folder = kind == Kind::kSamplesFolder;
  if (Exists(target) && fs::is_directory(target) != folder) {
    throw UsageError(option + " " + path.string() + " is " + (folder ? "a file" : "a folder") + ": give " +
                     (folder ? "a folder" : "a file") + " name for " + option);
  }
  if (EmptyTarget(target)) {
    fs::path ancestor = target.parent_path();
    while (!fs::exists(ancestor)) ancestor = ancestor.parent_path();
    if (!fs::is_directory(ancestor) || access(ancestor.c_str(), W_OK | X_OK) != 0) {
      throw UsageError("cannot write to " + path.parent_path().string() + ": " + ancestor.string() +
                       " is not a writable folder");
    }
    return;
  }
  if (!force) {
    throw UsageError(option + " " + path.string() + " exists" + (folder ? " and is not empty" : "") +
                     ": choose another " + option + " or pass --force");
  }
  std::vector<std::string> foreign;
  if (!Ours(*this, target, &foreign)) {
    throw UsageError(option + " " + path.string() + " was not written by rar-generate: --force replaces only "
                     "rar-generate's own outputs; remove it yourself or choose another " + option);
  }
  if (!foreign.empty()) {
    throw UsageError(option + " " + path.string() + " holds " + Named(foreign) + ", which rar-generate did not "
                     "write: --force replaces only what it wrote; move them out or choose another " + option);
  }
}

bool Overlap(const fs::path& a, const fs::path& b) { return Inside(a, b) || Inside(b, a); }

Lock::Lock(const fs::path& target) : path_(target.parent_path() / (Stem(target) + "lock")) {
  std::error_code error;
  fs::create_directories(target.parent_path(), error);
  if (error) throw UsageError("cannot write to " + target.parent_path().string() + ": " + error.message());
  fd_ = open(path_.c_str(), O_RDWR | O_CREAT, 0644);
  if (fd_ < 0) throw UsageError("cannot write to " + target.parent_path().string() + ": " + std::strerror(errno));
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    close(fd_);
    fd_ = -1;
    throw UsageError(target.string() + " is being written by another process: wait for it to finish or choose "
                     "another output");
  }
}

Lock::~Lock() {
  if (fd_ >= 0) {
    unlink(path_.c_str());
    close(fd_);
  }
}

Temporary::Temporary(const Output& output) {
  const fs::path target = output.Target();
  std::random_device random;
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_";
  for (int attempt = 0; attempt < 100 && path_.empty(); ++attempt) {
    std::string name = Stem(target);
    for (int i = 0; i < 8; ++i) name += alphabet[random() % alphabet.size()];
    const fs::path candidate = target.parent_path() / (name + ".partial");
    if (output.kind == Kind::kSamplesFolder ? mkdir(candidate.c_str(), 0777) == 0
                                            : [&] {
                                                const int fd = open(candidate.c_str(), O_CREAT | O_EXCL | O_WRONLY,
                                                                    0666);
                                                return fd >= 0 && close(fd) == 0;
                                              }()) {
      path_ = candidate;
    } else if (errno != EEXIST) {
      throw UsageError("cannot write to " + output.path.parent_path().string() + ": " + std::strerror(errno));
    }
  }
  if (path_.empty()) throw UsageError("cannot create a temporary name beside " + target.string());
}

Temporary::~Temporary() {
  std::error_code error;
  fs::remove_all(path_, error);
}

void PublishAll(const std::vector<const Temporary*>& temporaries, const std::vector<const Output*>& outputs) {
  SignalsHeld held;
  std::vector<std::function<void()>> undo;
  try {
    for (size_t i = 0; i < outputs.size(); ++i) {
      const Output& output = *outputs[i];
      const fs::path temporary = temporaries[i]->path(), target = output.Target();
      const bool folder = output.kind == Kind::kSamplesFolder;
      if (EmptyTarget(target) &&
          (folder ? rename(temporary.c_str(), target.c_str()) == 0 : link(temporary.c_str(), target.c_str()) == 0)) {
        undo.push_back(folder ? std::function<void()>([=] { rename(target.c_str(), temporary.c_str()); })
                              : std::function<void()>([=] { unlink(target.c_str()); }));
        continue;
      }
      if (!(output.force && Ours(output, target, nullptr))) {
        throw UsageError(output.path.string() + " appeared while this command ran and was left untouched; nothing "
                         "was written: choose another " + output.option);
      }
      if (RenameExchange(temporary, target) != 0) {
        if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) WriteFailed(errno, outputs);
        throw UsageError("cannot replace " + output.path.string() + " atomically on this file system: remove it "
                         "yourself or choose another " + output.option);
      }
      std::vector<std::string> foreign;  // the old output, now at the temporary's name
      if (!Ours(output, temporary, &foreign) || !foreign.empty()) {
        RenameExchange(temporary, target);
        throw UsageError(output.path.string() + " changed while this command ran" +
                         (foreign.empty() ? "" : " (it now holds " + Named(foreign) + ", which rar-generate did "
                                                 "not write)") + " and was left untouched; nothing was written");
      }
      undo.push_back([=] { RenameExchange(temporary, target); });
    }
  } catch (...) {
    for (auto step = undo.rbegin(); step != undo.rend(); ++step) (*step)();
    throw;
  }
}

void WriteFailed(int error, const std::vector<const Output*>& outputs) {
  static const std::map<int, std::string> fixes = {
      {ENOSPC, "free some space"}, {EDQUOT, "free some space or raise the quota"},
      {EFBIG, "raise the file-size limit (ulimit -f)"}, {EROFS, "choose a writable place"},
      {EIO, "check the storage"}};
  std::string where;
  for (const Output* output : outputs) where += (where.empty() ? "" : " and ") + output->option + " " +
                                                output->path.string();
  const auto fix = fixes.find(error);
  throw UsageError("cannot write " + where + ": " + std::strerror(error) + "; nothing was written, an earlier " +
                   "output is unchanged" + (fix == fixes.end() ? "" : ": " + fix->second + " and run again"));
}

WriteFailure::WriteFailure(int error) : std::runtime_error(std::strerror(error)), error(error) {}

void WritePng(const fs::path& path, const uint8_t* rgb, int64_t height, int64_t width, int64_t channels) {
  FILE* file = fopen(path.c_str(), "wb");
  if (file == nullptr) throw WriteFailure(errno);
  // errors jump back here silently (the caller reports them in one line); warnings are not ours to show
  png_structp png = png_create_write_struct(
      PNG_LIBPNG_VER_STRING, nullptr, [](png_structp failed, png_const_charp) { png_longjmp(failed, 1); },
      [](png_structp, png_const_charp) {});
  png_infop info = png_create_info_struct(png);
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    const int error = errno ? errno : EIO;
    png_destroy_write_struct(&png, &info);
    fclose(file);
    throw WriteFailure(error);
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
               channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int64_t row = 0; row < height; ++row) {
    png_write_row(png, const_cast<png_bytep>(rgb + row * width * channels));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  errno = 0;
  if (fflush(file) != 0 || ferror(file)) {
    const int error = errno ? errno : EIO;
    fclose(file);
    throw WriteFailure(error);
  }
  if (fclose(file) != 0) throw WriteFailure(errno);
}

void WriteNpy(const fs::path& path, const std::vector<int64_t>& values, int64_t rows, int64_t columns) {
  // the .npy format 1.0: magic, version, header length, a dict (then the tokens mark, a comment Python's
  // literal reader skips) padded with spaces to 64 bytes, the data: Python's samples.TokensWriter, byte for byte
  std::string header = "{'descr': '<i8', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(columns) + "), } " + kTokensMark;
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string bytes = "\x93NUMPY\x01";
  bytes += '\0';
  bytes += static_cast<char>(header.size() & 0xff);
  bytes += static_cast<char>(header.size() >> 8);
  bytes += header;
  bytes.append(reinterpret_cast<const char*>(values.data()), values.size() * 8);
  WriteText(path, bytes);
}

void WriteText(const fs::path& path, const std::string& text) {
  FILE* file = fopen(path.c_str(), "wb");
  if (file == nullptr) throw WriteFailure(errno);
  errno = 0;
  const bool written = fwrite(text.data(), 1, text.size(), file) == text.size() && fflush(file) == 0;
  const int error = errno ? errno : EIO;
  if (fclose(file) != 0 || !written) throw WriteFailure(written ? (errno ? errno : EIO) : error);
}

std::vector<std::string> SamplesFiles(const fs::path& folder, bool& ours) {
  ours = false;
  try {
    std::ifstream stream(folder / "samples.json");
    const nlohmann::json samples = nlohmann::json::parse(stream);
    if (samples.value("schema", "") != "rar-deploy/samples") return {};
    std::vector<std::string> files;
    if (samples.contains("files")) {
      files = samples.at("files").get<std::vector<std::string>>();
    } else {  // written before "files" existed
      files = samples.at("images").get<std::vector<std::string>>();
      files.push_back("grid.png");
    }
    files.push_back("samples.json");
    ours = true;
    return files;
  } catch (const std::exception&) {
    return {};
  }
}

}  // namespace rar::tools
