// tests/capi/test_capi.cpp — libresunetpp's C API (include/resunetpp/resunetpp.h) through the
// shared library: versions and options, loading (files, memory, a PyTorch-style state_dict),
// results equal to `resunetpp predict` and to the Predictor path bit for bit, batches, strides,
// concurrent use, and bad input of every kind returning a status with a useful message.
// The engine is linked as well, only to write checkpoints and compute reference results.
//   ctest --test-dir build -R CApi
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "model/image_io.h"
#include "model/inference.h"
#include "runtime/executor_cuda.h"
#include "resunetpp/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/fileio.h"
#include "runtime/safetensors.h"
#include "tests/capi/fixture.h"

using namespace rpp;
using capi_fixture::test_image;

namespace {

std::string tmp_root() { return "/tmp/rpp_test_capi_" + std::to_string(getpid()); }

std::string tmp_path(const std::string& name) {
  make_dirs(tmp_root());
  return tmp_root() + "/" + name;
}

class ScratchCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_root(), ec);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

// The fixture checkpoint (written once per process) and its bytes.
const std::string& tiny_path() {
  static const std::string path = [] {
    const std::string p = tmp_path("tiny.safetensors");
    capi_fixture::write_tiny_checkpoint(p, 5);
    return p;
  }();
  return path;
}

struct ModelDeleter {
  void operator()(rpp_model* m) const { rpp_model_destroy(m); }
};
using ModelPtr = std::unique_ptr<rpp_model, ModelDeleter>;

rpp_model_options default_options() {
  rpp_model_options o;
  EXPECT_EQ(rpp_model_options_init(&o, RPP_API_VERSION), RPP_STATUS_OK) << rpp_last_error();
  return o;
}

ModelPtr load(const std::string& path, const rpp_model_options* o = nullptr) {
  rpp_model* m = nullptr;
  const rpp_status s = rpp_model_create_from_file(path.c_str(), o, &m);
  EXPECT_EQ(s, RPP_STATUS_OK) << rpp_last_error();
  return ModelPtr(m);
}

rpp_image view(const Image& img, size_t stride = 0) {
  return rpp_image{img.px.data(), int32_t(img.w), int32_t(img.h), stride};
}

// What `resunetpp predict` computes for one image (tools/cli/cmd_predict.cpp), through the engine.
struct Reference {
  std::vector<float> prob;  // at the image's size
  std::vector<uint8_t> mask;
};
Reference reference(Predictor& p, const Image& img, bool tta = false, double threshold = 0.5) {
  const size_t plane = size_t(p.size()) * size_t(p.size());
  const std::vector<float> lg = p.predict_logits(img, tta);
  const std::vector<float> prob = probabilities_from_logits(lg.data(), plane);
  Reference r;
  r.prob = resize_map_bilinear(prob.data(), p.size(), p.size(), img.w, img.h);
  r.mask = binary_mask(r.prob.data(), img.w, img.h, threshold).px;
  return r;
}

struct Output {
  std::vector<float> prob;
  std::vector<uint8_t> mask;
};
Output segment(rpp_model* m, const Image& img) {
  Output o;
  o.prob.assign(size_t(img.w) * size_t(img.h), -1.f);
  o.mask.assign(size_t(img.w) * size_t(img.h), 7);
  const rpp_image v = view(img);
  EXPECT_EQ(rpp_segment(m, &v, o.prob.data(), o.mask.data()), RPP_STATUS_OK) << rpp_last_error();
  return o;
}

bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

size_t count_nonzero(const std::vector<uint8_t>& v) {
  size_t n = 0;
  for (uint8_t x : v) n += x != 0;
  return n;
}

std::vector<Image> sample_images() {
  return {test_image(48, 40, 11), test_image(1, 1, 12), test_image(97, 31, 13), test_image(20, 150, 14),
          test_image(32, 32, 15), test_image(300, 7, 16)};
}

// The status and message of a creation from bytes.
std::pair<rpp_status, std::string> create_from_bytes(const std::string& bytes, const rpp_model_options* o = nullptr) {
  rpp_model* m = reinterpret_cast<rpp_model*>(&m);  // must be reset to NULL on failure
  const rpp_status s = rpp_model_create_from_memory(bytes.data(), bytes.size(), o, &m);
  const std::string msg = rpp_last_error();
  if (s != RPP_STATUS_OK) {
    EXPECT_EQ(m, nullptr);
  }
  rpp_model_destroy(s == RPP_STATUS_OK ? m : nullptr);
  return {s, msg};
}

std::pair<rpp_status, std::string> create_from_file(const std::string& path, const rpp_model_options* o = nullptr) {
  rpp_model* m = reinterpret_cast<rpp_model*>(&m);
  const rpp_status s = rpp_model_create_from_file(path.c_str(), o, &m);
  const std::string msg = rpp_last_error();
  if (s != RPP_STATUS_OK) {
    EXPECT_EQ(m, nullptr);
  }
  rpp_model_destroy(s == RPP_STATUS_OK ? m : nullptr);
  return {s, msg};
}

}  // namespace

// ---- versions, statuses, options ----------------------------------------------------------------

TEST(CApiVersion, QueriesAgreeWithTheHeader) {
  EXPECT_EQ(rpp_api_version(), RPP_API_VERSION);
  EXPECT_EQ(RPP_API_VERSION, (uint32_t(RPP_API_VERSION_MAJOR) << 16) | RPP_API_VERSION_MINOR);
  const std::string v = rpp_version();
  EXPECT_TRUE(has(v, "resunetpp ") && has(v, "C API " + std::to_string(RPP_API_VERSION_MAJOR) + "." +
                                               std::to_string(RPP_API_VERSION_MINOR)))
      << v;
  EXPECT_STREQ(rpp_status_name(RPP_STATUS_OK), "RPP_STATUS_OK");
  EXPECT_STREQ(rpp_status_name(RPP_STATUS_BAD_CHECKPOINT), "RPP_STATUS_BAD_CHECKPOINT");
  EXPECT_STREQ(rpp_status_name(RPP_STATUS_INTERNAL), "RPP_STATUS_INTERNAL");
  EXPECT_STREQ(rpp_status_name(static_cast<rpp_status>(99)), "RPP_STATUS_UNKNOWN");
}

TEST(CApiVersion, OptionsDefaults) {
  rpp_model_options o;
  std::memset(&o, 0xAB, sizeof o);
  ASSERT_EQ(rpp_model_options_init(&o, RPP_API_VERSION), RPP_STATUS_OK);
  EXPECT_STREQ(rpp_last_error(), "");
  EXPECT_EQ(o.api_version, RPP_API_VERSION);
  EXPECT_STREQ(o.device, "cpu");
  EXPECT_STREQ(o.precision, "fp32");
  EXPECT_EQ(o.input_size, 0);
  EXPECT_EQ(o.batch, 1);
  EXPECT_EQ(o.tta, 0);
  EXPECT_EQ(o.max_contexts, 0);
  EXPECT_EQ(o.threshold, 0.5);
  EXPECT_EQ(o.cuda_stream, nullptr);
  EXPECT_EQ(rpp_model_options_init(nullptr, RPP_API_VERSION), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "options is NULL"));
}

TEST(CApiVersion, ProgramsBuiltAgainstANewerOrOtherMajorHeaderAreRefused) {
  rpp_model_options o;
  const uint32_t newer_minor = RPP_MAKE_API_VERSION(RPP_API_VERSION_MAJOR, RPP_API_VERSION_MINOR + 1);
  EXPECT_EQ(rpp_model_options_init(&o, newer_minor), RPP_STATUS_UNSUPPORTED);
  const std::string e = rpp_last_error();
  EXPECT_TRUE(has(e, "built against the resunetpp C API " + std::to_string(RPP_API_VERSION_MAJOR) + "." +
                         std::to_string(RPP_API_VERSION_MINOR + 1)))
      << e;
  EXPECT_TRUE(has(e, "install a libresunetpp")) << e;
  EXPECT_EQ(rpp_model_options_init(&o, RPP_MAKE_API_VERSION(RPP_API_VERSION_MAJOR + 1, 0)), RPP_STATUS_UNSUPPORTED);
  EXPECT_EQ(rpp_model_options_init(&o, RPP_MAKE_API_VERSION(0, 9)), RPP_STATUS_UNSUPPORTED);
  EXPECT_EQ(rpp_model_options_init(&o, 0), RPP_STATUS_INVALID_ARGUMENT);
  // The same check guards creation, for options filled in by hand.
  o = default_options();
  o.api_version = newer_minor;
  EXPECT_EQ(create_from_file(tiny_path(), &o).first, RPP_STATUS_UNSUPPORTED);
  rpp_model_options zero;
  std::memset(&zero, 0, sizeof zero);
  const auto [s, msg] = create_from_file(tiny_path(), &zero);
  EXPECT_EQ(s, RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(msg, "rpp_model_options_init")) << msg;
}

TEST(CApiVersion, OutputSizes) {
  size_t pb = 0, mb = 0;
  ASSERT_EQ(rpp_output_size(97, 31, &pb, &mb), RPP_STATUS_OK);
  EXPECT_EQ(pb, 97u * 31u * sizeof(float));
  EXPECT_EQ(mb, 97u * 31u);
  EXPECT_EQ(rpp_output_size(16384, 16384, nullptr, &mb), RPP_STATUS_OK);
  EXPECT_EQ(mb, 16384u * 16384u);
  for (auto [w, h] : std::vector<std::pair<int, int>>{{0, 5}, {5, 0}, {-1, 5}, {16385, 1}, {1, 1 << 30}}) {
    EXPECT_EQ(rpp_output_size(w, h, &pb, &mb), RPP_STATUS_INVALID_ARGUMENT) << w << "x" << h;
    EXPECT_TRUE(has(rpp_last_error(), "[1, 16384]")) << rpp_last_error();
  }
}

TEST(CApiVersion, LastErrorIsPerThreadAndClearedBySuccess) {
  EXPECT_EQ(rpp_segment(nullptr, nullptr, nullptr, nullptr), RPP_STATUS_INVALID_ARGUMENT);
  const std::string here = rpp_last_error();
  EXPECT_TRUE(has(here, "rpp_segment: model is NULL")) << here;
  std::string there = "unset";
  std::thread([&] { there = rpp_last_error(); }).join();
  EXPECT_EQ(there, "");
  std::thread([&] {
    rpp_model_options o;
    rpp_model_options_init(&o, 0);
    there = rpp_last_error();
  }).join();
  EXPECT_TRUE(has(there, "api_version is 0")) << there;
  EXPECT_EQ(rpp_last_error(), here);  // untouched by the other thread
  size_t n = 0;
  EXPECT_EQ(rpp_output_size(2, 2, &n, nullptr), RPP_STATUS_OK);
  EXPECT_STREQ(rpp_last_error(), "");
}

// ---- loading --------------------------------------------------------------------------------

TEST(CApiCreate, FromFileAndFromMemoryGiveTheSameModel) {
  ModelPtr a = load(tiny_path());
  ASSERT_TRUE(a);
  int32_t size = 0, f[5] = {};
  ASSERT_EQ(rpp_model_input_size(a.get(), &size), RPP_STATUS_OK);
  EXPECT_EQ(size, 32);
  ASSERT_EQ(rpp_model_filters(a.get(), f), RPP_STATUS_OK);
  EXPECT_EQ(std::vector<int>(f, f + 5), (std::vector<int>{8, 8, 16, 16, 32}));

  std::string bytes = read_file(tiny_path());
  rpp_model* raw = nullptr;
  ASSERT_EQ(rpp_model_create_from_memory(bytes.data(), bytes.size(), nullptr, &raw), RPP_STATUS_OK) << rpp_last_error();
  ModelPtr b(raw);
  bytes.assign(bytes.size(), '\0');  // the library keeps no reference to the caller's bytes
  for (const Image& img : sample_images()) {
    const Output x = segment(a.get(), img), y = segment(b.get(), img);
    EXPECT_TRUE(same_floats(x.prob, y.prob));
    EXPECT_EQ(x.mask, y.mask);
  }
  rpp_model_destroy(nullptr);
}

TEST(CApiCreate, InputSizeOverridesTheCheckpoint) {
  rpp_model_options o = default_options();
  o.input_size = 24;
  ModelPtr m = load(tiny_path(), &o);
  int32_t size = 0;
  ASSERT_EQ(rpp_model_input_size(m.get(), &size), RPP_STATUS_OK);
  EXPECT_EQ(size, 24);
  Predictor p(tiny_path(), 24, 1);
  const Image img = test_image(50, 30, 3);
  const Output out = segment(m.get(), img);
  const Reference r = reference(p, img);
  EXPECT_TRUE(same_floats(out.prob, r.prob));
  EXPECT_EQ(out.mask, r.mask);
}

TEST(CApiCreate, LoadsAPyTorchStateDictOfTheDefaultNetwork) {
  // Default filters (16..256) with no metadata, no checksum and tensors in another order: what
  // safetensors.torch.save_file(model.state_dict()) writes. Run at 32x32 to stay quick.
  Predictor src(ModelConfig{}, 32, 1);
  init_params(src.graph(), src.store(), 21);
  const std::string torch = capi_fixture::torch_state_dict(src.graph(), src.store());
  EXPECT_TRUE(parse_safetensors(reinterpret_cast<const uint8_t*>(torch.data()), torch.size(), "t").metadata.empty());
  rpp_model_options o = default_options();
  o.input_size = 32;
  rpp_model* raw = nullptr;
  ASSERT_EQ(rpp_model_create_from_memory(torch.data(), torch.size(), &o, &raw), RPP_STATUS_OK) << rpp_last_error();
  ModelPtr m(raw);
  int32_t f[5] = {};
  ASSERT_EQ(rpp_model_filters(m.get(), f), RPP_STATUS_OK);
  EXPECT_EQ(std::vector<int>(f, f + 5), (std::vector<int>{16, 32, 64, 128, 256}));
  for (const Image& img : {test_image(40, 33, 1), test_image(64, 64, 2)}) {
    const Output out = segment(m.get(), img);
    const Reference r = reference(src, img);
    EXPECT_TRUE(same_floats(out.prob, r.prob));
    EXPECT_EQ(out.mask, r.mask);
  }
  // A tensor missing from the state_dict is named in the error.
  const std::string missing = capi_fixture::torch_state_dict(src.graph(), src.store(), {"c3.attn.net.0.weight"});
  const auto [s, msg] = create_from_bytes(missing, &o);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT);
  EXPECT_TRUE(has(msg, "c3.attn.net.0.weight") && has(msg, "<memory>")) << msg;
}

TEST(CApiCreate, FileErrorsAreIoErrorsNamingThePath) {
  const std::string missing = tmp_path("does_not_exist.safetensors");
  auto [s, msg] = create_from_file(missing);
  EXPECT_EQ(s, RPP_STATUS_IO_ERROR);
  EXPECT_TRUE(has(msg, "rpp_model_create_from_file") && has(msg, missing)) << msg;
  std::tie(s, msg) = create_from_file(tmp_root());  // a folder
  EXPECT_EQ(s, RPP_STATUS_IO_ERROR) << msg;
  EXPECT_TRUE(has(msg, tmp_root())) << msg;
}

TEST(CApiCreate, NullAndEmptyArguments) {
  rpp_model* m = reinterpret_cast<rpp_model*>(&m);
  EXPECT_EQ(rpp_model_create_from_file(nullptr, nullptr, &m), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(m, nullptr);
  EXPECT_TRUE(has(rpp_last_error(), "path is NULL"));
  EXPECT_EQ(rpp_model_create_from_file("", nullptr, &m), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_model_create_from_file(tiny_path().c_str(), nullptr, nullptr), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "model (the output pointer) is NULL"));
  const std::string bytes = read_file(tiny_path());
  EXPECT_EQ(rpp_model_create_from_memory(nullptr, 10, nullptr, &m), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "data is NULL"));
  EXPECT_EQ(rpp_model_create_from_memory(bytes.data(), 0, nullptr, &m), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "size is 0"));
  EXPECT_EQ(rpp_model_create_from_memory(bytes.data(), bytes.size(), nullptr, nullptr), RPP_STATUS_INVALID_ARGUMENT);
  int32_t size = 0, f[5];
  EXPECT_EQ(rpp_model_input_size(nullptr, &size), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_model_filters(nullptr, f), RPP_STATUS_INVALID_ARGUMENT);
  ModelPtr model = load(tiny_path());
  EXPECT_EQ(rpp_model_input_size(model.get(), nullptr), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_model_filters(model.get(), nullptr), RPP_STATUS_INVALID_ARGUMENT);
}

TEST(CApiCreate, CorruptAndTruncatedCheckpointsAreRefused) {
  const std::string bytes = read_file(tiny_path());
  // Every truncation, from empty to one byte short.
  const size_t n = bytes.size();
  for (size_t len : {size_t(1), size_t(7), size_t(8), size_t(9), size_t(64), n / 4, n / 2, n - 100, n - 1}) {
    const auto [s, msg] = create_from_bytes(bytes.substr(0, len));
    EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << len << ": " << msg;
    EXPECT_TRUE(has(msg, "<memory>")) << msg;
  }
  const std::string cut = tmp_path("cut.safetensors");
  write_file_atomic(cut, bytes.substr(0, n / 2));
  auto [s, msg] = create_from_file(cut);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT);
  EXPECT_TRUE(has(msg, cut)) << msg;
  const std::string empty = tmp_path("empty.safetensors");
  write_file_atomic(empty, std::string());
  std::tie(s, msg) = create_from_file(empty);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << msg;
  // Not safetensors at all, and a flipped bit in the data (caught by the checksum), and flipped
  // bytes all over the header: errors, never a crash.
  std::tie(s, msg) = create_from_bytes(std::string(4096, 'x'));
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << msg;
  std::string flipped = bytes;
  flipped[n - 5] = char(flipped[n - 5] ^ 0x10);
  std::tie(s, msg) = create_from_bytes(flipped);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT);
  EXPECT_TRUE(has(msg, "checksum")) << msg;
  uint64_t header = 0;
  for (int i = 0; i < 8; ++i) header |= uint64_t(uint8_t(bytes[size_t(i)])) << (8 * i);
  // (A flip inside a free-form metadata string such as "model" still loads: that is fine.)
  int refused = 0;
  for (size_t pos = 0; pos < 8 + header; pos += 37) {
    std::string b = bytes;
    b[pos] = char(b[pos] ^ 0x5A);
    const auto [st, m] = create_from_bytes(b);
    EXPECT_TRUE(st == RPP_STATUS_OK || st == RPP_STATUS_BAD_CHECKPOINT) << "byte " << pos << ": " << m;
    if (st != RPP_STATUS_OK) {
      EXPECT_TRUE(has(m, "<memory>")) << m;
    }
    refused += st != RPP_STATUS_OK;
  }
  EXPECT_GT(refused, 0);
}

TEST(CApiCreate, CheckpointsOfAnotherArchitectureAreRefused) {
  Predictor src(capi_fixture::tiny_config(), 16, 1);
  init_params(src.graph(), src.store(), 4);
  // Metadata that says other filters than the tensors have.
  const std::string other = tmp_path("other.safetensors");
  save_checkpoint(other, src.graph(), src.store(), false, {{"filters", "8,8,16,16,64"}, {"size", "16"}});
  auto [s, msg] = create_from_file(other);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT);
  EXPECT_TRUE(has(msg, other) && has(msg, "does not match")) << msg;
  // No metadata: taken for the default network, which these tensors are not.
  const std::string bare = tmp_path("bare.safetensors");
  save_checkpoint(bare, src.graph(), src.store(), false, {});
  std::tie(s, msg) = create_from_file(bare);
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << msg;
  // Malformed metadata, and filters the network cannot have.
  for (const char* f : {"8,8,16,16", "8,8,16,16,x", "8,8,16,16,30", "0,8,16,16,32"}) {
    const std::string p = tmp_path("badmeta.safetensors");
    save_checkpoint(p, src.graph(), src.store(), false, {{"filters", f}, {"size", "16"}});
    std::tie(s, msg) = create_from_file(p);
    EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << f << ": " << msg;
    EXPECT_TRUE(has(msg, p)) << msg;
  }
  for (const char* sz : {"20", "-8", "abc", "0"}) {
    const std::string p = tmp_path("badsize.safetensors");
    save_checkpoint(p, src.graph(), src.store(), false, {{"filters", "8,8,16,16,32"}, {"size", sz}});
    std::tie(s, msg) = create_from_file(p);
    EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT) << sz << ": " << msg;
    EXPECT_TRUE(has(msg, "size")) << msg;
  }
  // A tensor missing from a resunetpp checkpoint.
  const std::string full = read_file(tiny_path());
  StFile f = parse_safetensors(reinterpret_cast<const uint8_t*>(full.data()), full.size(), "tiny");
  std::vector<StTensorView> views;
  for (const StTensor& t : f.tensors)
    if (t.name != "output.bias") views.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  const std::vector<uint8_t> cut = serialize_safetensors(views, f.metadata);
  std::tie(s, msg) = create_from_bytes(std::string(cut.begin(), cut.end()));
  EXPECT_EQ(s, RPP_STATUS_BAD_CHECKPOINT);
  EXPECT_TRUE(has(msg, "output.bias")) << msg;
}

TEST(CApiCreate, AModelTooLargeForTheMachineIsRefusedBeforeAllocating) {
  Predictor src(capi_fixture::tiny_config(), 16, 1);
  const std::string p = tmp_path("huge.safetensors");
  save_checkpoint(p, src.graph(), src.store(), false, {{"filters", "4096,4096,4096,4096,4096"}, {"size", "16384"}});
  const auto [s, msg] = create_from_file(p);
  EXPECT_EQ(s, RPP_STATUS_OUT_OF_MEMORY);
  EXPECT_TRUE(has(msg, "needs") && has(msg, "GiB") && has(msg, p)) << msg;
}

TEST(CApiCreate, BadOptions) {
  struct Case {
    const char* what;
    void (*set)(rpp_model_options&);
    rpp_status want;
    const char* says;
  };
  const Case cases[] = {
      {"device tpu", [](rpp_model_options& o) { o.device = "tpu"; }, RPP_STATUS_INVALID_ARGUMENT, "device must be"},
      // Refused here only without a usable device (see the loop): CUDA-less build or no GPU.
      {"device cuda:0", [](rpp_model_options& o) { o.device = "cuda:0"; }, RPP_STATUS_UNSUPPORTED,
       "device 'cuda:0': "},
      {"device cuda", [](rpp_model_options& o) { o.device = "cuda"; }, RPP_STATUS_UNSUPPORTED, "device 'cuda': "},
      {"device cuda:x", [](rpp_model_options& o) { o.device = "cuda:x"; }, RPP_STATUS_INVALID_ARGUMENT, "device"},
      {"bf16", [](rpp_model_options& o) { o.precision = "bf16"; }, RPP_STATUS_UNSUPPORTED, "bf16"},
      {"fp16", [](rpp_model_options& o) { o.precision = "fp16"; }, RPP_STATUS_INVALID_ARGUMENT, "precision"},
      {"size 20", [](rpp_model_options& o) { o.input_size = 20; }, RPP_STATUS_INVALID_ARGUMENT, "input_size"},
      {"size -8", [](rpp_model_options& o) { o.input_size = -8; }, RPP_STATUS_INVALID_ARGUMENT, "input_size"},
      {"size big", [](rpp_model_options& o) { o.input_size = 16392; }, RPP_STATUS_INVALID_ARGUMENT, "input_size"},
      {"batch 0", [](rpp_model_options& o) { o.batch = 0; }, RPP_STATUS_INVALID_ARGUMENT, "batch"},
      {"batch big", [](rpp_model_options& o) { o.batch = 5000; }, RPP_STATUS_INVALID_ARGUMENT, "batch"},
      {"tta 2", [](rpp_model_options& o) { o.tta = 2; }, RPP_STATUS_INVALID_ARGUMENT, "tta"},
      {"contexts", [](rpp_model_options& o) { o.max_contexts = -1; }, RPP_STATUS_INVALID_ARGUMENT, "max_contexts"},
      {"threshold 0", [](rpp_model_options& o) { o.threshold = 0; }, RPP_STATUS_INVALID_ARGUMENT, "threshold"},
      {"threshold 1", [](rpp_model_options& o) { o.threshold = 1; }, RPP_STATUS_INVALID_ARGUMENT, "threshold"},
      {"threshold nan", [](rpp_model_options& o) { o.threshold = std::nan(""); }, RPP_STATUS_INVALID_ARGUMENT,
       "threshold"},
  };
  const std::string bytes = read_file(tiny_path());
  const bool gpu = rpp::kHaveCudaExecutor && rpp::cuda_executor_device_count() > 0;
  for (const Case& c : cases) {
    if (gpu && std::string(c.what).rfind("device cuda", 0) == 0 && std::string(c.what) != "device cuda:x") continue;
    rpp_model_options o = default_options();
    c.set(o);
    auto [s, msg] = create_from_file(tiny_path(), &o);
    EXPECT_EQ(s, c.want) << c.what << ": " << msg;
    EXPECT_TRUE(has(msg, c.says)) << c.what << ": " << msg;
    // Option errors come first, even for a file that does not exist.
    std::tie(s, msg) = create_from_file(tmp_path("nope.safetensors"), &o);
    EXPECT_EQ(s, c.want) << c.what << ": " << msg;
    std::tie(s, msg) = create_from_bytes(bytes, &o);
    EXPECT_EQ(s, c.want) << c.what << ": " << msg;
  }
  // NULL device and precision mean the defaults; a CUDA stream is ignored on the CPU.
  rpp_model_options o = default_options();
  o.device = nullptr;
  o.precision = nullptr;
  o.cuda_stream = &o;
  EXPECT_EQ(create_from_file(tiny_path(), &o).first, RPP_STATUS_OK);
}

// ---- results ----------------------------------------------------------------------------------

TEST(CApiSegment, MasksEqualResunetppPredictByteForByte) {
  const std::string dir = tmp_path("predict"), in = dir + "/images", out = dir + "/out";
  make_dirs(in);
  const std::vector<Image> images = sample_images();
  for (size_t i = 0; i < images.size(); ++i) save_png(in + "/img" + std::to_string(i) + ".png", images[i]);
  const std::string cmd = std::string(RESUNETPP_CLI) + " predict --checkpoint " + tiny_path() + " --input " + in +
                          " --out " + out + " > " + dir + "/log.txt 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file(dir + "/log.txt");

  ModelPtr m = load(tiny_path());
  Predictor p(tiny_path());
  size_t fg = 0, total = 0;
  for (size_t i = 0; i < images.size(); ++i) {
    // The image as predict read it (the PNG round trip is lossless).
    const Image img = load_image(in + "/img" + std::to_string(i) + ".png", 3);
    ASSERT_EQ(img.px, images[i].px);
    const Image cli = load_image(out + "/masks/img" + std::to_string(i) + ".png", 1);
    const Output o = segment(m.get(), img);
    ASSERT_EQ(cli.w, img.w);
    ASSERT_EQ(cli.h, img.h);
    EXPECT_EQ(o.mask, cli.px) << "image " << i;
    const Reference r = reference(p, img);
    EXPECT_TRUE(same_floats(o.prob, r.prob)) << "image " << i;
    fg += count_nonzero(o.mask);
    total += o.mask.size();
  }
  // The comparison means something only if the masks have both values.
  EXPECT_GT(fg, total / 10);
  EXPECT_LT(fg, total - total / 10);
}

TEST(CApiSegment, OutputsAreOptionalAndConsistent) {
  ModelPtr m = load(tiny_path());
  const Image img = test_image(61, 45, 9);
  const Output both = segment(m.get(), img);
  for (float v : both.prob) ASSERT_TRUE(v >= 0.f && v <= 1.f);
  for (size_t i = 0; i < both.mask.size(); ++i) ASSERT_EQ(both.mask[i], double(both.prob[i]) >= 0.5 ? 255 : 0);
  const rpp_image v = view(img);
  std::vector<float> prob(both.prob.size());
  std::vector<uint8_t> mask(both.mask.size());
  ASSERT_EQ(rpp_segment(m.get(), &v, prob.data(), nullptr), RPP_STATUS_OK);
  EXPECT_TRUE(same_floats(prob, both.prob));
  ASSERT_EQ(rpp_segment(m.get(), &v, nullptr, mask.data()), RPP_STATUS_OK);
  EXPECT_EQ(mask, both.mask);
}

TEST(CApiSegment, RowStrideIsHonoured) {
  ModelPtr m = load(tiny_path());
  const Image img = test_image(37, 23, 4);
  const size_t row = size_t(img.w) * 3, stride = row + 13;
  std::vector<uint8_t> padded(stride * size_t(img.h), 0xEE);  // junk in the padding
  for (int y = 0; y < img.h; ++y) std::memcpy(padded.data() + size_t(y) * stride, img.px.data() + size_t(y) * row, row);
  const rpp_image v{padded.data(), img.w, img.h, stride};
  std::vector<float> prob(size_t(img.w) * size_t(img.h));
  std::vector<uint8_t> mask(prob.size());
  ASSERT_EQ(rpp_segment(m.get(), &v, prob.data(), mask.data()), RPP_STATUS_OK) << rpp_last_error();
  const Output packed = segment(m.get(), img);
  EXPECT_TRUE(same_floats(prob, packed.prob));
  EXPECT_EQ(mask, packed.mask);
  const rpp_image exact{img.px.data(), img.w, img.h, row};  // stride == 3 * width
  ASSERT_EQ(rpp_segment(m.get(), &exact, prob.data(), mask.data()), RPP_STATUS_OK);
  EXPECT_TRUE(same_floats(prob, packed.prob));
}

TEST(CApiSegment, ThresholdAndTta) {
  rpp_model_options o = default_options();
  o.threshold = 0.3;
  o.tta = 1;
  ModelPtr m = load(tiny_path(), &o);
  Predictor p(tiny_path());
  const Image img = test_image(45, 52, 8);
  const Output out = segment(m.get(), img);
  const Reference r = reference(p, img, /*tta=*/true, 0.3);
  EXPECT_TRUE(same_floats(out.prob, r.prob));
  EXPECT_EQ(out.mask, r.mask);
}

TEST(CApiSegment, BatchCallsEqualSingleCalls) {
  const std::vector<Image> images = sample_images();
  const size_t n = images.size();
  std::vector<rpp_image> views;
  for (const Image& img : images) views.push_back(view(img));
  for (int batch : {1, 4}) {
    rpp_model_options o = default_options();
    o.batch = batch;
    ModelPtr m = load(tiny_path(), &o);
    ModelPtr single = load(tiny_path());
    std::vector<std::vector<float>> probs(n);
    std::vector<std::vector<uint8_t>> masks(n);
    std::vector<float*> pp(n);
    std::vector<uint8_t*> mp(n);
    for (size_t i = 0; i < n; ++i) {
      probs[i].resize(size_t(images[i].w) * size_t(images[i].h));
      masks[i].resize(probs[i].size());
      pp[i] = probs[i].data();
      mp[i] = masks[i].data();
    }
    ASSERT_EQ(rpp_segment_batch(m.get(), views.data(), n, pp.data(), mp.data()), RPP_STATUS_OK) << rpp_last_error();
    for (size_t i = 0; i < n; ++i) {
      const Output one = segment(single.get(), images[i]);
      if (batch == 1) {
        EXPECT_TRUE(same_floats(probs[i], one.prob)) << i;
        EXPECT_EQ(masks[i], one.mask) << i;
        continue;
      }
      // Larger batches may move the last bits (see the header); masks differ at most where the
      // probability sits on the threshold.
      for (size_t k = 0; k < one.prob.size(); ++k) {
        ASSERT_NEAR(probs[i][k], one.prob[k], 1e-5) << i << " " << k;
        if (std::fabs(double(one.prob[k]) - 0.5) > 1e-5) {
          ASSERT_EQ(masks[i][k], one.mask[k]) << i << " " << k;
        }
      }
    }
    // Per-image NULL outputs, and whole NULL arrays.
    std::vector<uint8_t> before = masks[1];
    std::vector<uint8_t*> some = mp;
    some[1] = nullptr;
    std::fill(masks[1].begin(), masks[1].end(), uint8_t(3));
    ASSERT_EQ(rpp_segment_batch(m.get(), views.data(), n, pp.data(), some.data()), RPP_STATUS_OK);
    EXPECT_EQ(masks[1], std::vector<uint8_t>(masks[1].size(), 3));
    ASSERT_EQ(rpp_segment_batch(m.get(), views.data(), n, nullptr, mp.data()), RPP_STATUS_OK);
    EXPECT_EQ(masks[1], before);
    ASSERT_EQ(rpp_segment_batch(m.get(), views.data(), 0, nullptr, nullptr), RPP_STATUS_OK);
    ASSERT_EQ(rpp_segment_batch(m.get(), nullptr, 0, nullptr, nullptr), RPP_STATUS_OK);
  }
}

// A single image on a model with batch > 1 runs on its batch-1 context: the same bits as a
// batch-1 model (and so as `resunetpp predict`), not those of a padded batch.
TEST(CApiSegment, SingleImagesOnABatchModelRunOneImageAtATime) {
  const std::vector<Image> images = sample_images();
  rpp_model_options o = default_options();
  o.batch = 4;
  ModelPtr m = load(tiny_path(), &o);
  ModelPtr single = load(tiny_path());
  for (size_t i = 0; i < images.size(); ++i) {
    const Output one = segment(single.get(), images[i]);
    const Output got = segment(m.get(), images[i]);
    EXPECT_TRUE(same_floats(got.prob, one.prob)) << i;
    EXPECT_EQ(got.mask, one.mask) << i;
    std::vector<float> prob(one.prob.size());
    std::vector<uint8_t> mask(one.mask.size());
    float* pp = prob.data();
    uint8_t* mp = mask.data();
    const rpp_image v = view(images[i]);
    ASSERT_EQ(rpp_segment_batch(m.get(), &v, 1, &pp, &mp), RPP_STATUS_OK) << rpp_last_error();
    EXPECT_TRUE(same_floats(prob, one.prob)) << i;
    EXPECT_EQ(mask, one.mask) << i;
  }
}

TEST(CApiSegment, BadImagesAndBuffersAreRefusedWithAMessage) {
  ModelPtr m = load(tiny_path());
  const Image img = test_image(20, 10, 2);
  std::vector<float> prob(200);
  std::vector<uint8_t> mask(200, 9);
  auto check = [&](const rpp_image* v, float* p, uint8_t* k, const char* says) {
    EXPECT_EQ(rpp_segment(m.get(), v, p, k), RPP_STATUS_INVALID_ARGUMENT) << says;
    const std::string e = rpp_last_error();
    EXPECT_TRUE(has(e, "rpp_segment: ") && has(e, says)) << e;
  };
  rpp_image v = view(img);
  check(nullptr, prob.data(), mask.data(), "image is NULL");
  check(&v, nullptr, nullptr, "both NULL");
  rpp_image bad = v;
  bad.data = nullptr;
  check(&bad, prob.data(), mask.data(), "image.data is NULL");
  for (auto [w, h] : std::vector<std::pair<int, int>>{{0, 10}, {20, 0}, {-3, 10}, {20, -1}, {100000, 10}, {20, 16385},
                                                      {std::numeric_limits<int32_t>::max(), 1}}) {
    bad = v;
    bad.width = w;
    bad.height = h;
    check(&bad, prob.data(), mask.data(), "width and height must be in [1, 16384]");
  }
  bad = v;
  bad.stride = 59;  // one byte short of a row
  check(&bad, prob.data(), mask.data(), "less than one row");
  bad.stride = std::numeric_limits<size_t>::max() / 2;
  check(&bad, prob.data(), mask.data(), "too large");
  EXPECT_EQ(rpp_segment(nullptr, &v, prob.data(), mask.data()), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(mask, std::vector<uint8_t>(200, 9));  // nothing written by any refused call

  // Batches are checked whole before anything runs.
  std::vector<rpp_image> views(4, v);
  std::vector<std::vector<uint8_t>> masks(4, std::vector<uint8_t>(200, 9));
  std::vector<uint8_t*> mp{masks[0].data(), masks[1].data(), masks[2].data(), masks[3].data()};
  views[2].stride = 1;
  EXPECT_EQ(rpp_segment_batch(m.get(), views.data(), 4, nullptr, mp.data()), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "images[2].stride")) << rpp_last_error();
  for (const auto& k : masks) EXPECT_EQ(k, std::vector<uint8_t>(200, 9));
  views[2] = v;
  mp[3] = nullptr;
  EXPECT_EQ(rpp_segment_batch(m.get(), views.data(), 4, nullptr, mp.data()), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "no output for images[3]")) << rpp_last_error();
  EXPECT_EQ(rpp_segment_batch(m.get(), nullptr, 2, nullptr, mp.data()), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(has(rpp_last_error(), "images is NULL")) << rpp_last_error();
  EXPECT_EQ(rpp_segment_batch(m.get(), views.data(), 2, nullptr, nullptr), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_segment_batch(nullptr, views.data(), 2, nullptr, mp.data()), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_segment_batch(m.get(), views.data(), size_t(1) << 40, nullptr, mp.data()),
            RPP_STATUS_INVALID_ARGUMENT);
  for (const auto& k : masks) EXPECT_EQ(k, std::vector<uint8_t>(200, 9));
  // The model still works after all that.
  EXPECT_EQ(rpp_segment(m.get(), &v, nullptr, mask.data()), RPP_STATUS_OK);
}

TEST(CApiSegment, DeviceCallsNeedACudaModel) {
  ModelPtr m = load(tiny_path());  // device "cpu"
  const Image img = test_image(20, 10, 2);
  rpp_image v = view(img);
  std::vector<uint8_t> mask(200);
  EXPECT_EQ(rpp_segment_device(m.get(), &v, nullptr, mask.data(), nullptr), RPP_STATUS_UNSUPPORTED);
  EXPECT_TRUE(has(rpp_last_error(), "need a model created with device \"cuda:N\"")) << rpp_last_error();
  uint8_t* mp[1] = {mask.data()};
  EXPECT_EQ(rpp_segment_batch_device(m.get(), &v, 1, nullptr, mp, nullptr), RPP_STATUS_UNSUPPORTED);
  EXPECT_TRUE(has(rpp_last_error(), "rpp_segment_batch_device: the _device calls need")) << rpp_last_error();
  // Arguments are still checked first.
  EXPECT_EQ(rpp_segment_device(nullptr, &v, nullptr, mask.data(), nullptr), RPP_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(rpp_segment_device(m.get(), &v, nullptr, nullptr, nullptr), RPP_STATUS_INVALID_ARGUMENT);
}

// ---- threads ----------------------------------------------------------------------------------

TEST(CApiThreads, ConcurrentCallsOnOneModelGiveTheSerialResults) {
  const std::vector<Image> images = sample_images();
  for (int max_contexts : {0, 2}) {
    rpp_model_options o = default_options();
    o.max_contexts = max_contexts;  // 2: callers beyond two wait for a context
    ModelPtr m = load(tiny_path(), &o);
    std::vector<Output> serial;
    for (const Image& img : images) serial.push_back(segment(m.get(), img));
    constexpr int kThreads = 6, kRounds = 3;
    std::atomic<int> mismatches{0}, failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (int r = 0; r < kRounds; ++r)
          for (size_t k = 0; k < images.size(); ++k) {
            const size_t i = (k + size_t(t)) % images.size();
            const Image& img = images[i];
            std::vector<float> prob(size_t(img.w) * size_t(img.h));
            std::vector<uint8_t> mask(prob.size());
            const rpp_image v = view(img);
            if (rpp_segment(m.get(), &v, prob.data(), mask.data()) != RPP_STATUS_OK) {
              ++failures;
              continue;
            }
            if (!same_floats(prob, serial[i].prob) || mask != serial[i].mask) ++mismatches;
          }
      });
    for (std::thread& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0) << "max_contexts " << max_contexts;
    EXPECT_EQ(mismatches.load(), 0) << "max_contexts " << max_contexts;
  }
}

TEST(CApiThreads, ModelsCanBeCreatedUsedAndDestroyedOnSeveralThreads) {
  const std::string bytes = read_file(tiny_path());
  const Image img = test_image(33, 17, 5);
  ModelPtr ref = load(tiny_path());
  const Output want = segment(ref.get(), img);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int r = 0; r < 2; ++r) {
        rpp_model* m = nullptr;
        if (rpp_model_create_from_memory(bytes.data(), bytes.size(), nullptr, &m) != RPP_STATUS_OK) {
          ++bad;
          continue;
        }
        std::vector<uint8_t> mask(size_t(img.w) * size_t(img.h));
        const rpp_image v = view(img);
        if (rpp_segment(m, &v, nullptr, mask.data()) != RPP_STATUS_OK || mask != want.mask) ++bad;
        rpp_model_destroy(m);
      }
    });
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}
