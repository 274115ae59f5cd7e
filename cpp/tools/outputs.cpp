#include "outputs.hpp"

#include <fcntl.h>
#include <png.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

namespace rar::tools {
namespace fs = std::filesystem;

namespace {

// Absolute, links resolved as far as the path exists, no trailing separator ("out/" is "out"), as Python's
// Path.resolve: a relative path and a trailing slash must not hide that two paths meet.
fs::path Resolved(const fs::path& path) {
  const fs::path resolved = fs::weakly_canonical(fs::absolute(path));
  return resolved.has_filename() || resolved == resolved.root_path() ? resolved : resolved.parent_path();
}

bool Inside(const fs::path& path, const fs::path& folder) {  // or the same path
  const fs::path p = Resolved(path), f = Resolved(folder);
  return std::mismatch(f.begin(), f.end(), p.begin(), p.end()).first == f.end();
}

bool Owned(const Output& output) {
  if (output.kind == Kind::kNumpyFile) {
    std::ifstream stream(output.path, std::ios::binary);
    char magic[6] = {};
    stream.read(magic, 6);
    return fs::is_regular_file(output.path) && std::string(magic, 6) == "\x93NUMPY";
  }
  try {
    std::ifstream stream(output.path / "samples.json");
    return nlohmann::json::parse(stream).value("schema", "") == "rar-deploy/samples";
  } catch (const std::exception&) {
    return false;
  }
}

bool EmptyTarget(const fs::path& path) {
  std::error_code error;
  return !fs::exists(fs::symlink_status(path, error)) ||
         (fs::is_directory(fs::symlink_status(path, error)) && fs::is_empty(path, error));
}

}  // namespace

void Output::Check() const {
  for (const fs::path& input : inputs) {
    if (fs::weakly_canonical(path) == fs::weakly_canonical(input) || Inside(input, path) || Inside(path, input)) {
      throw UsageError(option + " " + path.string() + " is, contains or lies inside the input " + input.string() +
                       ": choose another " + option);
    }
  }
  if (EmptyTarget(path)) {
    fs::path ancestor = path.parent_path().empty() ? fs::path(".") : path.parent_path();
    while (!fs::exists(ancestor)) ancestor = ancestor.parent_path();
    if (!fs::is_directory(ancestor) || access(ancestor.c_str(), W_OK | X_OK) != 0) {
      throw UsageError("cannot write to " + path.parent_path().string() + ": " + ancestor.string() +
                       " is not a writable folder");
    }
    return;
  }
  if (!force) throw UsageError(option + " " + path.string() + " exists: choose another " + option + " or pass --force");
  if (!Owned(*this)) {
    throw UsageError(option + " " + path.string() + " was not written by rar-generate: --force replaces only "
                     "rar-generate's own outputs; remove it yourself or choose another " + option);
  }
}

bool Overlap(const fs::path& a, const fs::path& b) { return Inside(a, b) || Inside(b, a); }

Lock::Lock(const fs::path& target) : path_(target.parent_path() / ("." + target.filename().string() + ".lock")) {
  fs::create_directories(target.parent_path().empty() ? fs::path(".") : target.parent_path());
  fd_ = open(path_.c_str(), O_RDWR | O_CREAT, 0644);
  if (fd_ < 0) throw UsageError("cannot write to " + target.parent_path().string());
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

fs::path TemporaryBeside(const fs::path& target, bool directory) {
  std::random_device random;
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz0123456789_";
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = "." + target.filename().string() + ".";
    for (int i = 0; i < 8; ++i) name += alphabet[random() % alphabet.size()];
    const fs::path candidate = target.parent_path() / (name + ".partial");
    if (directory ? fs::create_directory(candidate) : !fs::exists(candidate)) return candidate;
  }
  throw UsageError("cannot create a temporary name beside " + target.string());
}

void Publish(const fs::path& temporary, const Output& output) {
  if (EmptyTarget(output.path)) {
    if (fs::is_directory(temporary) ? rename(temporary.c_str(), output.path.c_str()) == 0
                                    : link(temporary.c_str(), output.path.c_str()) == 0) {
      if (!fs::is_directory(temporary)) fs::remove(temporary);
      return;
    }
  }
  if (!(output.force && Owned(output))) {
    fs::remove_all(temporary);
    throw UsageError(output.path.string() + " appeared while this command ran and was left untouched; nothing was "
                     "written: choose another " + output.option);
  }
  if (!fs::is_directory(temporary)) {
    fs::rename(temporary, output.path);
    return;
  }
  if (renameat2(AT_FDCWD, temporary.c_str(), AT_FDCWD, output.path.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(temporary);  // now the old output
    return;
  }
  const fs::path aside = TemporaryBeside(output.path, false).replace_extension(".replaced");
  fs::rename(output.path, aside);
  fs::rename(temporary, output.path);
  fs::remove_all(aside);
}

void WritePng(const fs::path& path, const uint8_t* rgb, int64_t height, int64_t width, int64_t channels) {
  FILE* file = fopen(path.c_str(), "wb");
  if (file == nullptr) throw UsageError("cannot write " + path.string());
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (png == nullptr || info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fclose(file);
    throw UsageError("libpng failed to write " + path.string());
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
  fclose(file);
}

void WriteNpy(const fs::path& path, const std::vector<int64_t>& values, int64_t rows, int64_t columns) {
  // the .npy format 1.0: magic, version, header length, a dict padded with spaces to 64 bytes, the data
  std::string header = "{'descr': '<i8', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(columns) + "), }";
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream stream(path, std::ios::binary);
  const uint16_t length = static_cast<uint16_t>(header.size());
  stream.write("\x93NUMPY\x01\x00", 8);
  stream.put(static_cast<char>(length & 0xff)).put(static_cast<char>(length >> 8));
  stream << header;
  stream.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * 8));
  if (!stream) throw UsageError("cannot write " + path.string());
}

}  // namespace rar::tools
