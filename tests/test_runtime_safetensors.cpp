// tests/test_runtime_safetensors.cpp — runtime/safetensors and runtime/fileio: bit-exact round
// trips, PyTorch-layout files, every validation error, truncation and corruption fuzzing, and
// crash-safe writes.
//   ./build/test_runtime_safetensors
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "runtime/fileio.h"
#include "runtime/safetensors.h"

namespace rpp {
namespace {

using Bytes = std::vector<uint8_t>;

// A fresh directory under $TMPDIR (or /tmp), removed with its files at the end of the test.
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/rpp_st_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
    path_ = buf.data();
  }
  ~TempDir() {
    for (auto& name : list()) {
      std::string p = path_ + "/" + name;
      if (unlink(p.c_str()) != 0) rmdir(p.c_str());
    }
    rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> list() const {
    std::vector<std::string> out;
    if (DIR* d = opendir(path_.c_str())) {
      while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") out.push_back(n);
      }
      closedir(d);
    }
    return out;
  }

 private:
  std::string path_;
};

// The 8-byte little-endian length `n` followed by `rest`.
Bytes raw_length_then(uint64_t n, const std::string& rest) {
  std::string s;
  for (int i = 0; i < 8; ++i) s += char(uint8_t(n >> (8 * i)));
  s += rest;
  return Bytes(s.begin(), s.end());
}

// The header text padded with spaces to a multiple of `pad`, its length, then the data.
Bytes build_file(const std::string& header, const Bytes& data, size_t pad = 8) {
  std::string h = header;
  while (pad > 1 && h.size() % pad != 0) h += ' ';
  h.append(data.begin(), data.end());
  return raw_length_then(h.size() - data.size(), h);
}

// Parses from a heap copy of exactly the given size, so ASan sees any over-read.
StFile parse_exact(const Bytes& b, const std::string& label = "bad.safetensors") {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[b.size() ? b.size() : 1]);
  if (!b.empty()) std::memcpy(copy.get(), b.data(), b.size());
  return parse_safetensors(copy.get(), b.size(), label);
}

std::string parse_error(const Bytes& b) {
  try {
    parse_exact(b);
  } catch (const rpp::Error& e) {
    return e.what();
  }
  return "<no error>";
}

#define EXPECT_ST_ERROR(bytes, phrase)                                                         \
  do {                                                                                         \
    std::string msg_ = parse_error(bytes);                                                     \
    EXPECT_EQ(msg_.rfind("bad.safetensors: ", 0), 0u) << msg_;                                 \
    EXPECT_NE(msg_.find(phrase), std::string::npos) << "message: " << msg_ << "\nwanted: " << (phrase); \
  } while (0)

// A single-tensor header around `entry` (the JSON object of tensor "x"), with `data` after it.
Bytes one_tensor(const std::string& entry, const Bytes& data) {
  return build_file("{\"x\":" + entry + "}", data);
}

Bytes zeros(size_t n) { return Bytes(n, 0); }

template <class T>
Bytes as_bytes(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(Safetensors, RoundTripIsBitExact) {
  TempDir dir;
  float nan_payload;
  uint32_t bits = 0x7fc12345u;
  std::memcpy(&nan_payload, &bits, 4);
  std::vector<float> f32 = {1.5f, -0.0f, std::numeric_limits<float>::denorm_min(),
                            std::numeric_limits<float>::infinity(), nan_payload, 3.14159265f};
  std::vector<int64_t> i64 = {INT64_MIN, -1, 0, INT64_MAX};
  std::vector<double> f64_scalar = {-1e-300};
  std::vector<uint16_t> bf16 = {0x3f80, 0xc000, 0x7f80};
  std::vector<uint16_t> f16 = {0x3c00, 0xfbff};
  std::vector<StTensorView> views = {
      {"zeta.weight", DType::F32, {2, 3}, f32.data()},
      {"alpha.num_batches_tracked", DType::I64, {4}, i64.data()},
      {"scalar", DType::F64, {}, f64_scalar.data()},
      {"empty", DType::F32, {0, 5}, nullptr},
      {"half.b", DType::BF16, {3}, bf16.data()},
      {"half.f", DType::F16, {1, 2}, f16.data()},
  };
  const std::string path = dir.file("ckpt.safetensors");
  write_safetensors(path, views, {{"step", "42"}, {"format", "ignored"}});

  std::string raw = read_file(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(raw[size_t(i)])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "header must be padded so the data starts 8-byte aligned";

  StFile f = read_safetensors(path);
  ASSERT_EQ(f.tensors.size(), views.size());
  for (size_t i = 0; i < views.size(); ++i) {
    const StTensor& t = f.tensors[i];
    EXPECT_EQ(t.name, views[i].name);  // header order = given order
    EXPECT_EQ(t.dtype, views[i].dtype);
    EXPECT_EQ(t.shape, views[i].shape);
    size_t nbytes = size_t(numel(views[i].shape)) * dtype_size(views[i].dtype);
    ASSERT_EQ(t.bytes.size(), nbytes) << t.name;
    if (nbytes) {
      EXPECT_EQ(std::memcmp(t.bytes.data(), views[i].data, nbytes), 0) << t.name;
    }
  }
  EXPECT_EQ(f.find("scalar")->shape, Shape{});
  EXPECT_EQ(f.find("scalar")->bytes.size(), 8u);
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_EQ(f.metadata_value("step"), "42");
  EXPECT_EQ(f.metadata_value("format"), "resunetpp-safetensors");
  EXPECT_EQ(f.metadata_value("format_version"), "1");
  EXPECT_EQ(f.metadata_value("checksum").rfind("fnv1a64:", 0), 0u);
  EXPECT_EQ(f.metadata_value("checksum").size(), 8u + 16u);
  EXPECT_EQ(f.metadata_value("absent"), "");
  EXPECT_EQ(f.metadata.front().first, "step");

  // The same bytes in memory, and writing twice is deterministic.
  Bytes mem = serialize_safetensors(views, {{"step", "42"}});
  EXPECT_EQ(std::string(mem.begin(), mem.end()), raw);
  StFile g = parse_safetensors(mem.data(), mem.size(), "<memory>");
  EXPECT_EQ(g.tensors.size(), views.size());
}

TEST(Safetensors, ChecksumIsFnv1a64OfTheData) {
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64_string("foobar", 6), "fnv1a64:85944171f73967e8");
  std::vector<float> v = {1, 2, 3};
  Bytes mem = serialize_safetensors({{"v", DType::F32, {3}, v.data()}}, {});
  StFile f = parse_exact(mem);
  EXPECT_EQ(f.metadata_value("checksum"), fnv1a64_string(v.data(), 12));
}

TEST(Safetensors, NoTensorsIsValid) {
  Bytes mem = serialize_safetensors({}, {{"note", "empty"}});
  StFile f = parse_exact(mem);
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.metadata_value("note"), "empty");
}

TEST(Safetensors, SerializeRejectsBadInput) {
  float x = 0;
  EXPECT_THROW(serialize_safetensors({{"a", DType::F32, {1}, &x}, {"a", DType::F32, {1}, &x}}, {}), Error);
  EXPECT_THROW(serialize_safetensors({{"__metadata__", DType::F32, {1}, &x}}, {}), Error);
  EXPECT_THROW(serialize_safetensors({{"a", DType::F32, {-1}, &x}}, {}), Error);
  EXPECT_THROW(serialize_safetensors({{"a", DType::F32, {2}, nullptr}}, {}), Error);
}

// The byte layout Python's safetensors produces for a PyTorch state_dict: no checksum, metadata
// {"format": "pt"}, offsets not in name order, header padded with spaces.
TEST(Safetensors, LoadsPyTorchLayout) {
  std::vector<float> w = {0.5f, -1.25f, 2.0f, 8.0f};  // "c1.c1.0.weight" [2, 2] at [8, 24)
  std::vector<int64_t> nbt = {17};                    // "c2.c1.0.num_batches_tracked" at [0, 8)
  std::vector<float> b = {-3.0f};                     // "a.bias" [1] at [24, 28)
  Bytes data = as_bytes(nbt);
  Bytes wb = as_bytes(w), bb = as_bytes(b);
  data.insert(data.end(), wb.begin(), wb.end());
  data.insert(data.end(), bb.begin(), bb.end());
  std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a.bias\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[24,28]},"
      "\"c1.c1.0.weight\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]},"
      "\"c2.c1.0.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}";
  for (size_t pad : {size_t(1), size_t(8)}) {
    StFile f = parse_exact(build_file(header, data, pad), "model.safetensors");
    ASSERT_EQ(f.tensors.size(), 3u);
    EXPECT_EQ(f.metadata_value("format"), "pt");
    EXPECT_EQ(f.metadata_value("checksum"), "");
    const StTensor* t = f.find("c1.c1.0.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->shape, (Shape{2, 2}));
    EXPECT_EQ(std::memcmp(t->bytes.data(), w.data(), 16), 0);
    const StTensor* n = f.find("c2.c1.0.num_batches_tracked");
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->dtype, DType::I64);
    int64_t v;
    std::memcpy(&v, n->bytes.data(), 8);
    EXPECT_EQ(v, 17);
    EXPECT_EQ(std::memcmp(f.find("a.bias")->bytes.data(), b.data(), 4), 0);
  }
  // Without any __metadata__, with whitespace-formatted JSON.
  StFile g = parse_exact(build_file("{ \"t\" : { \"dtype\" : \"F32\", \"shape\" : [ 1 ], "
                                    "\"data_offsets\" : [ 0, 4 ] } }\n",
                                    bb));
  EXPECT_TRUE(g.metadata.empty());
  ASSERT_EQ(g.tensors.size(), 1u);
}

TEST(Safetensors, RejectsBadFraming) {
  EXPECT_ST_ERROR(Bytes{}, "too short");
  EXPECT_ST_ERROR(Bytes(7, 0), "too short");
  EXPECT_ST_ERROR(raw_length_then(0, "{}"), "header length is 0");
  EXPECT_ST_ERROR(raw_length_then(100000001, "{}"), "exceeds the limit");
  EXPECT_ST_ERROR(raw_length_then(UINT64_MAX, "{}"), "exceeds the limit");
  EXPECT_ST_ERROR(raw_length_then(16, "{}      "), "extends beyond the end of the file");
  EXPECT_ST_ERROR(raw_length_then(4, "{\"a\""), "invalid JSON at byte");
  EXPECT_ST_ERROR(build_file("{\"x\":1,}", {}), "invalid JSON at byte");
  EXPECT_ST_ERROR(build_file("[1]", {}), "header is a JSON array, expected an object");
  EXPECT_ST_ERROR(build_file("\"s\"", {}), "expected an object");
}

TEST(Safetensors, RejectsBadEntries) {
  EXPECT_ST_ERROR(build_file("{\"x\":3}", {}), "entry 'x' is a JSON number, expected an object");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}", zeros(1)),
                  "dtype 'U8' of tensor 'x' is not supported");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}", zeros(4)),
                  "dtype 'f32' of tensor 'x' is not supported");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}", zeros(4)),
                  "dtype is not a string");
  EXPECT_ST_ERROR(one_tensor("{\"shape\":[1],\"data_offsets\":[0,4]}", zeros(4)), "tensor 'x' has no dtype");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"data_offsets\":[0,4]}", zeros(4)), "tensor 'x' has no shape");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[1]}", zeros(4)), "tensor 'x' has no data_offsets");
  for (const char* shape : {"1", "\"2\"", "[-1]", "[1.5]", "[null]", "[[1]]", "{}"})
    EXPECT_ST_ERROR(one_tensor(std::string("{\"dtype\":\"F32\",\"shape\":") + shape + ",\"data_offsets\":[0,4]}",
                               zeros(4)),
                    "shape must be an array of non-negative integers");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}",
                             zeros(4)),
                  "numel overflows");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,4]}",
                             zeros(4)),
                  "numel overflows");
  for (const char* off : {"[0]", "[0,4,8]", "[-1,3]", "[0,4.5]", "[\"0\",\"4\"]", "{}", "4", "[0,null]"})
    EXPECT_ST_ERROR(one_tensor(std::string("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":") + off + "}",
                               zeros(4)),
                    "data_offsets must be two non-negative integers");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}", zeros(4)),
                  "data_offsets begin 4 is after end 0");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,12]}", zeros(12)),
                  "tensor 'x': data_offsets span 12 bytes but F32 [2, 3] needs 24");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", zeros(4)),
                  "extend beyond the end of the file");
  EXPECT_ST_ERROR(one_tensor("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,"
                             "9223372036854775804]}",
                             zeros(4)),
                  "extend beyond the end of the file");
  EXPECT_ST_ERROR(build_file("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                             "\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                             zeros(8)),
                  "duplicate key 'x'");
}

TEST(Safetensors, RejectsNonContiguousOffsets) {
  auto two = [](const char* a_off, const char* b_off, size_t data) {
    return build_file(std::string("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":") + a_off +
                          "},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":" + b_off + "}}",
                      zeros(data));
  };
  EXPECT_NO_THROW(parse_exact(two("[4,8]", "[0,4]", 8)));
  EXPECT_ST_ERROR(two("[4,8]", "[8,12]", 12), "gap of 4 bytes at [0, 4) before tensor 'a'");
  EXPECT_ST_ERROR(two("[0,4]", "[8,12]", 12), "gap of 4 bytes at [4, 8) before tensor 'b'");
  EXPECT_ST_ERROR(two("[0,4]", "[2,6]", 8), "tensor 'b' [2, 6) overlaps tensor 'a' [0, 4)");
  EXPECT_ST_ERROR(two("[0,4]", "[0,4]", 8), "overlaps tensor");
  EXPECT_ST_ERROR(two("[0,4]", "[4,8]", 12), "4 trailing bytes");
  // Zero-size tensors may share an offset.
  EXPECT_NO_THROW(parse_exact(build_file(
      "{\"e1\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
      "\"e2\":{\"dtype\":\"I64\",\"shape\":[3,0],\"data_offsets\":[4,4]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
      zeros(4))));
}

TEST(Safetensors, RejectsBadMetadataAndChecksum) {
  const std::string t = ",\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  EXPECT_ST_ERROR(build_file("{\"__metadata__\":[]" + t, zeros(4)), "__metadata__ is a JSON array");
  EXPECT_ST_ERROR(build_file("{\"__metadata__\":{\"a\":1}" + t, zeros(4)),
                  "__metadata__ is not an object of strings: value of 'a' is a JSON number");
  EXPECT_ST_ERROR(build_file("{\"__metadata__\":{\"checksum\":\"md5:00\"}" + t, zeros(4)), "is not of the form");
  EXPECT_ST_ERROR(build_file("{\"__metadata__\":{\"checksum\":\"fnv1a64:zzzzzzzzzzzzzzzz\"}" + t, zeros(4)),
                  "is not of the form");

  std::vector<float> v = {1, 2, 3, 4};
  Bytes good = serialize_safetensors({{"v", DType::F32, {4}, v.data()}}, {});
  EXPECT_NO_THROW(parse_exact(good));
  for (size_t i = good.size() - 16; i < good.size(); ++i) {
    Bytes bad = good;
    bad[i] ^= 0x01;
    EXPECT_ST_ERROR(bad, "checksum mismatch: file is corrupt");
  }
}

TEST(Safetensors, ReadSafetensorsNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("broken.safetensors");
  write_file_atomic(path, std::string("\x05\x00\x00\x00\x00\x00\x00\x00{}", 10));
  try {
    read_safetensors(path);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("extends beyond the end of the file"), std::string::npos) << e.what();
  }
  try {
    read_safetensors(dir.file("missing.safetensors"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read " + dir.file("missing.safetensors")), std::string::npos)
        << e.what();
  }
}

Bytes small_valid_file() {
  std::vector<float> a = {1.0f, 2.0f, 3.0f};
  std::vector<int64_t> b = {7, 8};
  return serialize_safetensors({{"a.weight", DType::F32, {3}, a.data()}, {"b", DType::I64, {2}, b.data()}},
                               {{"k", "v"}});
}

TEST(Safetensors, EveryTruncationThrows) {
  Bytes full = small_valid_file();
  ASSERT_NO_THROW(parse_exact(full));
  for (size_t len = 0; len < full.size(); ++len) {
    Bytes prefix(full.begin(), full.begin() + long(len));
    EXPECT_THROW(parse_exact(prefix), Error) << "prefix of " << len << " bytes";
  }
}

TEST(Safetensors, RandomHeaderCorruptionNeverCrashes) {
  Bytes full = small_valid_file();
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(full[size_t(i)]) << (8 * i);
  std::mt19937 rng(12345);
  std::uniform_int_distribution<size_t> header_pos(0, size_t(8 + n - 1));
  std::uniform_int_distribution<size_t> any_pos(0, full.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255), count(1, 4);
  // Bytes that push the JSON parser into interesting states more often than random ones.
  const char interesting[] = "{}[]\",:0123456789-.eE\\u \x01\x7f\xc3\xff";
  int parsed = 0, rejected = 0;
  for (int trial = 0; trial < 600; ++trial) {
    Bytes b = full;
    int k = count(rng);
    for (int j = 0; j < k; ++j) {
      size_t pos = trial % 3 == 2 ? any_pos(rng) : header_pos(rng);
      b[pos] = trial % 2 ? uint8_t(byte(rng)) : uint8_t(interesting[size_t(byte(rng)) % (sizeof interesting - 1)]);
    }
    try {
      StFile f = parse_exact(b);
      for (auto& t : f.tensors) EXPECT_EQ(t.bytes.size(), size_t(numel(t.shape)) * dtype_size(t.dtype));
      ++parsed;
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("bad.safetensors: ", 0), 0u) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(parsed + rejected, 600);
}

// ---- fileio ----

TEST(FileIo, WriteAtomicReplacesAndLeavesNoTempFile) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  write_file_atomic(path, std::string("first"));
  EXPECT_EQ(read_file(path), "first");
  write_file_atomic(path, std::string("second, longer"));
  EXPECT_EQ(read_file(path), "second, longer");
  write_file_atomic(path, nullptr, 0);
  EXPECT_EQ(read_file(path), "");
  std::vector<std::string> names = dir.list();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0], "config.json");
}

TEST(FileIo, WriteAtomicIntoMissingDirectoryFailsCleanly) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/ckpt.safetensors");
  try {
    write_file_atomic(path, std::string("data"));
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
  EXPECT_TRUE(dir.list().empty());
}

// A failing write (file size limit: the same path through the code as a full disk) must leave the
// old file intact and remove the temp file.
TEST(FileIo, FailedWriteKeepsOldContent) {
  TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  write_file_atomic(path, std::string("old content"));

  struct rlimit saved;
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = saved;
  lim.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
  std::string big(100000, 'x');
  std::string msg;
  try {
    write_file_atomic(path, big);
  } catch (const Error& e) {
    msg = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, old_handler);

  EXPECT_NE(msg.find("cannot write " + path), std::string::npos) << msg;
  EXPECT_NE(msg.find("too large"), std::string::npos) << msg;  // strerror(EFBIG)
  EXPECT_EQ(read_file(path), "old content");
  std::vector<std::string> names = dir.list();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0], "ckpt.bin");
}

TEST(FileIo, WriteOverADirectoryFailsAndKeepsIt) {
  TempDir dir;
  const std::string sub = dir.file("sub");
  make_dirs(sub + "/inner");
  EXPECT_THROW(write_file_atomic(sub, std::string("x")), Error);
  EXPECT_TRUE(is_directory(sub + "/inner"));
  std::vector<std::string> names = dir.list();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0], "sub");
  rmdir((sub + "/inner").c_str());
}

TEST(FileIo, ReadFileErrorsNameThePath) {
  TempDir dir;
  const std::string missing = dir.file("missing.bin");
  try {
    read_file(missing);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot read " + missing + ": No such file or directory");
  }
  EXPECT_THROW(read_file(dir.path()), Error);  // a directory
  EXPECT_FALSE(file_exists(missing));
  EXPECT_TRUE(file_exists(dir.path()));
}

TEST(FileIo, MakeDirsAndAppend) {
  TempDir dir;
  const std::string deep = dir.file("a/b/c");
  make_dirs(deep);
  make_dirs(deep + "/");  // already there: fine
  EXPECT_TRUE(is_directory(deep));
  const std::string log = deep + "/log.jsonl";
  append_line_durable(log, "{\"step\":1}");
  append_line_durable(log, "{\"step\":2}\n");
  {
    AppendFile f(log);
    f.append_line("{\"step\":3}");
    AppendFile g = std::move(f);
    EXPECT_FALSE(f.is_open());
    g.append_line("{\"step\":4}");
  }
  EXPECT_EQ(read_file(log), "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n{\"step\":4}\n");
  EXPECT_FALSE(is_directory(log));
  try {
    make_dirs(log + "/x");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(log + " exists and is not a directory"), std::string::npos) << e.what();
  }
  EXPECT_THROW(AppendFile(dir.file("no/such/log.csv")), Error);
  unlink(log.c_str());
  rmdir(deep.c_str());
  rmdir(dir.file("a/b").c_str());
  rmdir(dir.file("a").c_str());
}

}  // namespace
}  // namespace rpp
