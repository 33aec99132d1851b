// runtime/fileio.h — whole-file reads, crash-safe writes, durable appends, directories (POSIX).
//
// write_file_atomic is how checkpoints, config.json and summary.json reach the disk: a crash or a
// full disk at any moment leaves either the old file or the new one, never a torn mix. Every
// failure is an rpp::Error naming the path and the system's reason (strerror).
//
// Exercised by tests/test_runtime_safetensors.cpp.
#pragma once
#include <cstddef>
#include <string>

#include "runtime/error.h"

namespace rpp {

// Writes `size` bytes to `path + ".tmp.<pid>"` in the same directory, fsyncs it, renames it over
// `path` and fsyncs the directory. On failure the temp file is removed and an existing file at
// `path` is left untouched. Not meant for two threads of one process writing the same path at once.
void write_file_atomic(const std::string& path, const void* data, size_t size);
void write_file_atomic(const std::string& path, const std::string& contents);

// The whole file. Throws rpp::Error("cannot read <path>: <strerror>").
std::string read_file(const std::string& path);

bool file_exists(const std::string& path);   // anything exists at path (follows symlinks)
bool is_directory(const std::string& path);  // path exists and is a directory

// mkdir -p: creates `dir` and missing parents (mode 0755 before umask). Existing directories are
// fine; a component that exists but is not a directory is an error naming it.
void make_dirs(const std::string& dir);

// Appends `line` plus '\n' (unless it already ends in one) to `path`, creating it if needed, and
// fsyncs before returning. Opens and closes the file each call; for many lines use AppendFile.
void append_line_durable(const std::string& path, const std::string& line);

// An append-only file kept open (log.jsonl, log.csv): each append_line() is one write() of the
// whole line followed by fsync, so a crash loses at most the line being written.
class AppendFile {
 public:
  AppendFile() = default;
  explicit AppendFile(const std::string& path);  // creates the file if missing; throws on failure
  ~AppendFile();
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  AppendFile(AppendFile&& o) noexcept;
  AppendFile& operator=(AppendFile&& o) noexcept;

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  void append_line(const std::string& line);
  void close();  // throws if closing reports an error; the destructor closes silently

 private:
  std::string path_;
  int fd_ = -1;
};

}  // namespace rpp
