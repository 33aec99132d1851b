// runtime/fileio.cpp — POSIX file helpers (see fileio.h). Linux is the target.
#include "runtime/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

namespace rpp {

namespace {

std::string errno_str(int err) { return std::strerror(err); }

// The directory holding `path` ("." when it has no slash).
std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes all of [data, data+size) to fd, retrying short writes and EINTR. Returns 0 or an errno.
int write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    size -= size_t(n);
  }
  return 0;
}

int fsync_retry(int fd) {
  for (;;) {
    if (::fsync(fd) == 0) return 0;
    if (errno != EINTR) return errno;
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const void* data, size_t size) {
  if (path.empty()) fail("cannot write a file with an empty path");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;
    fail("cannot write ", path, ": cannot create temporary file ", tmp, ": ", errno_str(err));
  }
  const char* step = "write";
  int err = write_all(fd, data, size);
  if (err == 0) {
    step = "fsync";
    err = fsync_retry(fd);
  }
  if (::close(fd) != 0 && err == 0) {
    step = "close";
    err = errno;
  }
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) {
    step = "rename";
    err = errno;
  }
  if (err != 0) {
    ::unlink(tmp.c_str());
    fail("cannot write ", path, ": ", step, " failed: ", errno_str(err));
  }
  // Make the rename itself durable. Some file systems cannot fsync a directory (EINVAL); the
  // data is already in place there and nothing more can be done.
  const std::string dir = parent_dir(path);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    int e = errno;
    fail("wrote ", path, " but cannot open its directory ", dir, " to sync it: ", errno_str(e));
  }
  int e = fsync_retry(dfd);
  ::close(dfd);
  if (e != 0 && e != EINVAL && e != ENOTSUP && e != EROFS)
    fail("wrote ", path, " but cannot sync its directory ", dir, ": ", errno_str(e));
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  write_file_atomic(path, contents.data(), contents.size());
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    fail("cannot read ", path, ": ", errno_str(err));
  }
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      fail("cannot read ", path, ": ", errno_str(err));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
  }
  ::close(fd);
  return out;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void make_dirs(const std::string& dir) {
  if (dir.empty()) fail("cannot create a directory with an empty path");
  size_t pos = 0;
  for (;;) {
    size_t slash = dir.find('/', pos);
    std::string prefix = dir.substr(0, slash);
    pos = slash == std::string::npos ? dir.size() : slash + 1;
    if (!prefix.empty() && prefix != "." && prefix != "..") {
      if (::mkdir(prefix.c_str(), 0755) != 0) {
        int err = errno;
        if (err != EEXIST) fail("cannot create directory ", dir, ": ", prefix, ": ", errno_str(err));
        if (!is_directory(prefix))
          fail("cannot create directory ", dir, ": ", prefix, " exists and is not a directory");
      }
    }
    if (slash == std::string::npos) break;
  }
}

void append_line_durable(const std::string& path, const std::string& line) {
  AppendFile f(path);
  f.append_line(line);
  f.close();
}

AppendFile::AppendFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int err = errno;
    fail("cannot open ", path, " for appending: ", errno_str(err));
  }
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

AppendFile::AppendFile(AppendFile&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }

AppendFile& AppendFile::operator=(AppendFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void AppendFile::append_line(const std::string& line) {
  if (fd_ < 0) fail("cannot append to ", path_.empty() ? "<no file>" : path_.c_str(), ": file is not open");
  std::string buf = line;
  if (buf.empty() || buf.back() != '\n') buf += '\n';
  int err = write_all(fd_, buf.data(), buf.size());
  if (err == 0) err = fsync_retry(fd_);
  if (err != 0) fail("cannot append to ", path_, ": ", errno_str(err));
}

void AppendFile::close() {
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int err = errno;
    fail("cannot close ", path_, ": ", errno_str(err));
  }
}

}  // namespace rpp
