// capi/resunetpp_capi.cpp — libresunetpp: the C API of include/resunetpp/resunetpp.h over the
// engine's Predictor (model/inference.h).
//
// Every entry point runs its body inside `guarded`, which turns each exception into a status and
// the calling thread's last-error message, so nothing propagates into C callers. The segmentation
// path calls the same functions, in the same order, as `resunetpp predict`
// (tools/cli/cmd_predict.cpp): Predictor::preprocess -> Predictor::logits ->
// probabilities_from_logits -> resize_map_bilinear -> binary_mask, so masks are identical by
// construction. A model keeps its weights once (immutable after creation) and a pool of
// execution contexts (a Predictor each: graph, executor arena, weight copy; with batch > 1 a
// second, batch-1 Predictor for single-image calls); a call borrows one for its whole duration,
// creating it on demand up to max_contexts.
//
// Exercised by tests/capi/test_capi.cpp (GoogleTest), tests/capi_c_test.c (plain C) and the
// installed-package consumer in tests/consumer/.
#include "resunetpp/resunetpp.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "model/image_io.h"
#include "model/inference.h"
#include "model/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/error.h"
#include "runtime/executor_cpu.h"
#include "runtime/executor_cuda.h"
#include "runtime/fileio.h"
#include "runtime/planner.h"
#include "runtime/safetensors.h"

#ifndef RESUNETPP_VERSION
#define RESUNETPP_VERSION "unknown"
#endif

#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)
#include <cuda_runtime_api.h>

#include "kernels/cuda/image_ops.cuh"
#define RPP_BACKENDS_ ", cpu, cuda"
#else
#define RPP_BACKENDS_ ", cpu"
#endif

#define RPP_STR2_(x) #x
#define RPP_STR_(x) RPP_STR2_(x)

namespace {

constexpr int kMaxImageSide = 16384;  // the same limit as the image decoder's
constexpr int kMaxBatch = 4096;
constexpr const char* kNoCuda =
    "this libresunetpp was built without CUDA and cuDNN: it runs on the CPU only (use device \"cpu\")";

// ---- errors --------------------------------------------------------------------------------

// An error with its status, thrown by the C API's own checks.
class ApiError : public std::runtime_error {
 public:
  ApiError(rpp_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
  rpp_status status;
};

template <class... Args>
[[noreturn]] void api_fail(rpp_status s, const Args&... args) {
  std::ostringstream os;
  rpp::detail::append(os, args...);
  throw ApiError(s, os.str());
}

// The calling thread's last message. If storing a message fails (no memory), a static text
// stands in for it.
thread_local std::string t_error;
thread_local const char* t_error_static = nullptr;

void set_error(const char* fn, const char* msg) noexcept {
  try {
    t_error.assign(fn);
    t_error.append(": ");
    t_error.append(msg);
    t_error_static = nullptr;
  } catch (...) {
    t_error_static = "out of memory while recording an error message";
  }
}

void clear_error() noexcept {
  t_error.clear();  // keeps capacity: never throws
  t_error_static = nullptr;
}

// Runs body() (returning nothing) and converts every exception to a status. `fallback` is the
// status of an rpp::Error that no stage classified (an unexpected engine failure).
template <class F>
rpp_status guarded(const char* fn, F&& body, rpp_status fallback = RPP_STATUS_INTERNAL) noexcept {
  clear_error();
  try {
    body();
    return RPP_STATUS_OK;
  } catch (const ApiError& e) {
    set_error(fn, e.what());
    return e.status;
  } catch (const std::bad_alloc&) {
    set_error(fn, "out of memory");
    return RPP_STATUS_OUT_OF_MEMORY;
  } catch (const std::length_error& e) {
    set_error(fn, (std::string("out of memory (") + e.what() + ")").c_str());
    return RPP_STATUS_OUT_OF_MEMORY;
  } catch (const rpp::Error& e) {
    set_error(fn, e.what());
    return fallback;
  } catch (const std::exception& e) {
    set_error(fn, (std::string("internal error: ") + e.what()).c_str());
    return RPP_STATUS_INTERNAL;
  } catch (...) {
    set_error(fn, "internal error: unknown exception");
    return RPP_STATUS_INTERNAL;
  }
}

// Runs f() and rethrows an rpp::Error from it as an ApiError with status s.
template <class F>
auto stage(rpp_status s, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const rpp::Error& e) {
    throw ApiError(s, e.what());
  }
}

std::string version_text(uint32_t v) {
  return std::to_string(v >> 16) + "." + std::to_string(v & 0xFFFFu);
}

// ---- options -------------------------------------------------------------------------------

struct Settings {
  int input_size = 0, batch = 1, max_contexts = 0;
  bool tta = false;
  double threshold = 0.5;
  std::string device = "cpu";  // "cpu" or "cuda:N"
  bool bf16 = false;           // bf16 activations (CUDA only)
  void* stream = nullptr;      // cudaStream_t default of the _device calls
};

void check_api_version(uint32_t v) {
  if (v == 0)
    api_fail(RPP_STATUS_INVALID_ARGUMENT,
             "the options were not initialised (api_version is 0): call rpp_model_options_init(&options, "
             "RPP_API_VERSION) first");
  if ((v >> 16) != RPP_API_VERSION_MAJOR || (v & 0xFFFFu) > RPP_API_VERSION_MINOR)
    api_fail(RPP_STATUS_UNSUPPORTED, "this program was built against the resunetpp C API ", version_text(v),
             " but the library loaded (libresunetpp ", RESUNETPP_VERSION, ") implements API ",
             version_text(RPP_API_VERSION),
             "; it serves programs built against API ", RPP_API_VERSION_MAJOR, ".0 to ", version_text(RPP_API_VERSION),
             ": install a libresunetpp that implements API ", version_text(v), " or later (same major version)");
}

bool is_cuda_device(const std::string& d) {
  if (d == "cuda") return true;
  if (d.rfind("cuda:", 0) != 0 || d.size() == 5 || d.size() > 8) return false;
  return std::all_of(d.begin() + 5, d.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Settings settings_from(const rpp_model_options* o) {
  Settings s;
  if (!o) return s;
  check_api_version(o->api_version);
  // Every field below exists since API 1.0; a field added in 1.x is read only when
  // (o->api_version & 0xFFFF) >= x, so an older caller's smaller struct is never over-read.
  const std::string device = o->device ? o->device : "cpu";
  if (is_cuda_device(device)) {
    if (!rpp::kHaveCudaExecutor) api_fail(RPP_STATUS_UNSUPPORTED, "device '", device, "': ", kNoCuda);
    const int index = rpp::parse_device(device).index, count = rpp::cuda_executor_device_count();
    if (index >= count)
      api_fail(RPP_STATUS_UNSUPPORTED, "device '", device, "': ",
               count == 0 ? std::string("no usable CUDA device is visible")
                          : "this machine has " + std::to_string(count) + " CUDA device(s)");
    s.device = "cuda:" + std::to_string(index);
  } else if (device != "cpu") {
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "device must be \"cpu\" or \"cuda:N\", got '", device, "'");
  }
  s.stream = o->cuda_stream;
  const std::string precision = o->precision ? o->precision : "fp32";
  if (precision == "bf16" && !is_cuda_device(device))
    api_fail(RPP_STATUS_UNSUPPORTED, "precision 'bf16' needs a CUDA device (the CPU backend runs fp32 only)");
  s.bf16 = precision == "bf16";
  if (precision != "fp32" && precision != "bf16")
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "precision must be \"fp32\" or \"bf16\", got '", precision, "'");
  if (o->input_size != 0 && (o->input_size < 8 || o->input_size > kMaxImageSide || o->input_size % 8 != 0))
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "input_size must be 0 (the checkpoint's size) or a multiple of 8 in [8, ",
             kMaxImageSide, "], got ", o->input_size);
  if (o->batch < 1 || o->batch > kMaxBatch)
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "batch must be in [1, ", kMaxBatch, "], got ", o->batch);
  if (o->tta != 0 && o->tta != 1) api_fail(RPP_STATUS_INVALID_ARGUMENT, "tta must be 0 or 1, got ", o->tta);
  if (o->max_contexts < 0)
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "max_contexts must be >= 0 (0: no limit), got ", o->max_contexts);
  if (!(o->threshold > 0.0 && o->threshold < 1.0))
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "threshold must be strictly between 0 and 1, got ", o->threshold);
  s.input_size = o->input_size;
  s.batch = o->batch;
  s.tta = o->tta == 1;
  s.max_contexts = o->max_contexts;
  s.threshold = o->threshold;
  return s;
}

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return b;
}

// The model's graph, after refusing (before allocating anything) a model whose first context
// plus the kept weights would not fit in the machine's physical memory, e.g. metadata asking for
// 16384 x 16384: zero-filling such buffers would get the process killed instead of failing.
rpp::ModelGraph plan_model(const rpp::ModelConfig& cfg, int size, int batch, const std::string& label) {
  rpp::ModelGraph mg;
  try {
    mg = rpp::build_resunetpp(cfg, batch, size, size, /*training=*/false);
  } catch (const rpp::Error& e) {
    api_fail(RPP_STATUS_BAD_CHECKPOINT, label, ": cannot build the model its metadata describes: ", e.what());
  }
  const rpp::Plan plan = rpp::make_plan(mg.graph, rpp::PlanMode::BestFit, rpp::cpu_workspace_bytes);
  const double need = double(plan.arena_bytes) + double(plan.workspace_bytes) + 2.0 * double(plan.persistent_bytes);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0 && need > double(pages) * double(page))
    api_fail(RPP_STATUS_OUT_OF_MEMORY, label, ": the model (filters ", cfg.filters[0], ",", cfg.filters[1], ",",
             cfg.filters[2], ",", cfg.filters[3], ",", cfg.filters[4], " at ", size, "x", size, ", batch ", batch,
             ") needs ", gib(need), " but this machine has ", gib(double(pages) * double(page)),
             " of memory (lower input_size or batch)");
  return mg;
}

// ---- images --------------------------------------------------------------------------------

// Checks a descriptor; `what` names it in messages ("image" or "images[3]").
void check_image(const rpp_image* im, const std::string& what) {
  if (!im) api_fail(RPP_STATUS_INVALID_ARGUMENT, what, " is NULL");
  if (!im->data) api_fail(RPP_STATUS_INVALID_ARGUMENT, what, ".data is NULL");
  if (im->width < 1 || im->width > kMaxImageSide || im->height < 1 || im->height > kMaxImageSide)
    api_fail(RPP_STATUS_INVALID_ARGUMENT, what, " is ", im->width, "x", im->height, ": width and height must be in [1, ",
             kMaxImageSide, "]");
  const size_t row = size_t(im->width) * 3;
  if (im->stride != 0 && im->stride < row)
    api_fail(RPP_STATUS_INVALID_ARGUMENT, what, ".stride is ", im->stride, " bytes, less than one row of ", im->width,
             " RGB pixels (", row, " bytes; 0 means exactly that)");
  if (im->stride > size_t(std::numeric_limits<std::ptrdiff_t>::max()) / size_t(im->height))
    api_fail(RPP_STATUS_INVALID_ARGUMENT, what, ".stride ", im->stride, " is too large for ", im->height, " rows");
}

rpp::Image to_image(const rpp_image& im) {
  rpp::Image img;
  img.w = im.width;
  img.h = im.height;
  img.c = 3;
  const size_t row = size_t(im.width) * 3, stride = im.stride ? im.stride : row;
  img.px.resize(row * size_t(im.height));
  for (size_t y = 0; y < size_t(im.height); ++y) std::memcpy(img.px.data() + y * row, im.data + y * stride, row);
  return img;
}

// Checks a batch call's arguments; nothing runs unless all are valid.
void check_batch(const rpp_model* model, const rpp_image* images, size_t count, float* const* probabilities,
                 uint8_t* const* masks) {
  if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model is NULL");
  if (count == 0) return;
  if (!images) api_fail(RPP_STATUS_INVALID_ARGUMENT, "images is NULL but count is ", count);
  if (count > size_t(std::numeric_limits<int32_t>::max()))
    api_fail(RPP_STATUS_INVALID_ARGUMENT, "count ", count, " is too large");
  for (size_t i = 0; i < count; ++i) {
    const std::string what = "images[" + std::to_string(i) + "]";
    check_image(&images[i], what);
    if (!(probabilities && probabilities[i]) && !(masks && masks[i]))
      api_fail(RPP_STATUS_INVALID_ARGUMENT, "no output for ", what,
               ": give a probability buffer, a mask buffer or both");
  }
}

}  // namespace

// ---- the model -------------------------------------------------------------------------------

// An execution context: a Predictor of the model's batch size and, when that is larger than 1, a
// Predictor of batch 1 for calls with a single image (which would otherwise run a whole padded
// batch: its cost, and other bits than `resunetpp predict`).
struct RppContext {
  std::unique_ptr<rpp::Predictor> batch, single;
  rpp::Predictor& for_count(size_t count) { return count == 1 && single ? *single : *batch; }
};

struct rpp_model {
  rpp::ModelConfig cfg;
  int size = 0;
  Settings settings;
  rpp::ParamStore weights;  // the loaded tensors; never modified after creation

  std::mutex mu;
  std::condition_variable freed;
  std::vector<std::unique_ptr<RppContext>> idle;  // guarded by mu
  int contexts = 0;                               // created, idle or in use; guarded by mu

  std::unique_ptr<RppContext> make_context() const {
    auto c = std::make_unique<RppContext>();
    c->batch = make_predictor(settings.batch);
    if (settings.batch > 1) c->single = make_predictor(1);
    return c;
  }

 private:
  // A Predictor holding a copy of the weights. Written in place: the executor keeps pointers to
  // the store's tensors.
  std::unique_ptr<rpp::Predictor> make_predictor(int batch) const {
    rpp::ExecOptions eo;
    eo.precision = settings.bf16 ? rpp::Precision::Bf16 : rpp::Precision::F32;
    auto p = std::make_unique<rpp::Predictor>(cfg, size, batch, settings.device, eo);
    for (const std::string& name : weights.names()) {
      const rpp::Tensor& src = weights.get(name);
      rpp::Tensor& dst = p->store().get(name);
      if (dst.nbytes() != src.nbytes()) rpp::fail("context tensor ", name, " has a different size");
      std::memcpy(dst.raw(), src.raw(), src.nbytes());
    }
    return p;
  }
};

namespace {

// A context borrowed from a model for one call; returned on destruction.
class Lease {
 public:
  explicit Lease(rpp_model& m) : m_(m) {
    std::unique_lock<std::mutex> lk(m_.mu);
    m_.freed.wait(lk, [&] {
      return !m_.idle.empty() || m_.settings.max_contexts == 0 || m_.contexts < m_.settings.max_contexts;
    });
    if (!m_.idle.empty()) {
      p_ = std::move(m_.idle.back());
      m_.idle.pop_back();
      return;
    }
    // Room to return every context without allocating (~Lease must not throw), then build the
    // new one outside the lock.
    m_.idle.reserve(size_t(m_.contexts) + 1);
    ++m_.contexts;
    lk.unlock();
    try {
      p_ = m_.make_context();
    } catch (...) {
      lk.lock();
      --m_.contexts;
      lk.unlock();
      m_.freed.notify_one();
      throw;
    }
  }
  ~Lease() {
    {
      std::lock_guard<std::mutex> lk(m_.mu);
      m_.idle.push_back(std::move(p_));
    }
    m_.freed.notify_one();
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  RppContext& operator*() { return *p_; }

 private:
  rpp_model& m_;
  std::unique_ptr<RppContext> p_;
};

void create_model(const uint8_t* data, size_t n, const std::string& label, const rpp_model_options* options,
                  rpp_model** out) {
  const Settings s = settings_from(options);
  rpp::CheckpointModel cm = stage(RPP_STATUS_BAD_CHECKPOINT, [&] {
    const rpp::StFile f = rpp::parse_safetensors(data, n, label);
    return rpp::model_from_metadata(f.metadata, label);
  });
  const int size = s.input_size > 0 ? s.input_size : cm.size;
  if (size < 8 || size > kMaxImageSide || size % 8 != 0)
    api_fail(RPP_STATUS_BAD_CHECKPOINT, label, ": metadata 'size' is ", size, ", not a multiple of 8 in [8, ",
             kMaxImageSide, "] (set input_size to override it)");
  // The weights are read and checked against the graph before any context (and its arena)
  // exists, so a mismatched checkpoint fails fast and small.
  const rpp::ModelGraph mg = plan_model(cm.config, size, s.batch, label);
  auto model = std::make_unique<rpp_model>();
  model->cfg = cm.config;
  model->size = size;
  model->settings = s;
  stage(RPP_STATUS_BAD_CHECKPOINT, [&] {
    rpp::load_checkpoint_from_memory(data, n, label, mg.graph, model->weights, /*optimizer=*/false);
  });
  model->idle.push_back(model->make_context());
  model->contexts = 1;
  *out = model.release();
}

// The segmentation of images[0..count) by one context, batch by batch (see the file comment).
void run_batch(rpp_model& m, const rpp_image* images, size_t count, float* const* probabilities,
               uint8_t* const* masks) {
  if (count == 0) return;
  Lease lease(m);
  rpp::Predictor& p = (*lease).for_count(count);
  const int size = m.size;
  const size_t plane = size_t(size) * size_t(size), per = plane * 3;
  const size_t batch = size_t(p.batch());
  std::vector<float> x, lg;
  for (size_t start = 0; start < count; start += batch) {
    const size_t k = std::min(batch, count - start);
    x.resize(k * per);
    lg.resize(k * plane);
    for (size_t i = 0; i < k; ++i) {
      const std::vector<float> in = p.preprocess(to_image(images[start + i]));
      std::copy(in.begin(), in.end(), x.begin() + std::ptrdiff_t(i * per));
    }
    p.logits(x.data(), int(k), m.settings.tta, lg.data());
    for (size_t i = 0; i < k; ++i) {
      const size_t j = start + i;
      const rpp_image& im = images[j];
      const std::vector<float> prob = rpp::probabilities_from_logits(lg.data() + i * plane, plane);
      const std::vector<float> up = rpp::resize_map_bilinear(prob.data(), size, size, im.width, im.height);
      if (probabilities && probabilities[j]) std::memcpy(probabilities[j], up.data(), up.size() * sizeof(float));
      if (masks && masks[j]) {
        const rpp::Image mk = rpp::binary_mask(up.data(), im.width, im.height, m.settings.threshold);
        std::memcpy(masks[j], mk.px.data(), mk.px.size());
      }
    }
  }
}

// The device-pointer path: every step queued on the context's executor stream, joined with the
// caller's stream by events on both sides, so the host never waits. Same arithmetic as run_batch
// (kernels/cuda/image_ops.cuh). The context goes back to the pool while its work may still be
// queued: the next call on it queues behind that work on the same stream.
void run_batch_device(rpp_model& m, const rpp_image* images, size_t count, float* const* probabilities,
                      uint8_t* const* masks, void* stream) {
  if (count == 0) return;
  if (m.settings.device == "cpu")
    api_fail(RPP_STATUS_UNSUPPORTED, "the _device calls need a model created with device \"cuda:N\"; this one runs on "
             "the CPU (use rpp_segment with host memory)");
  if (m.settings.tta)
    api_fail(RPP_STATUS_UNSUPPORTED, "tta is not available in the _device calls yet (use rpp_segment, or tta = 0)");
#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)
  Lease lease(m);
  rpp::Predictor& p = (*lease).for_count(count);
  auto* ex = dynamic_cast<rpp::CudaExecutor*>(&p.ready_executor());
  if (!ex) api_fail(RPP_STATUS_INTERNAL, "the model's context has no CUDA executor");
  void* caller = stream ? stream : m.settings.stream;
  const cudaStream_t s = static_cast<cudaStream_t>(ex->stream());
  const int size = m.size;
  const size_t plane = size_t(size) * size_t(size), per = plane * 3;
  const size_t batch = size_t(p.batch());
  auto* in = static_cast<float*>(ex->device_tensor(p.image_tensor()));
  auto* lg = static_cast<const float*>(ex->device_tensor(p.logits_tensor()));
  ex->wait_for(caller);
  for (size_t start = 0; start < count; start += batch) {
    const size_t k = std::min(batch, count - start);
    for (size_t i = 0; i < k; ++i) {
      const rpp_image& im = images[start + i];
      rpp::cuda::rgb8_to_model_input(im.data, im.width, im.height, im.stride ? im.stride : size_t(im.width) * 3, size,
                                     in + i * per, s);
    }
    ex->run();
    for (size_t i = 0; i < k; ++i) {
      const size_t j = start + i;
      rpp::cuda::logits_to_outputs(lg + i * plane, size, images[j].width, images[j].height, m.settings.threshold,
                                   probabilities ? probabilities[j] : nullptr, masks ? masks[j] : nullptr, s);
    }
  }
  ex->signal_to(caller);
#else
  (void)images;
  (void)probabilities;
  (void)masks;
  (void)stream;
  api_fail(RPP_STATUS_UNSUPPORTED, kNoCuda);
#endif
}

}  // namespace

// ---- the C entry points ----------------------------------------------------------------------

extern "C" {

RPP_API const char* rpp_version(void) {
  return "resunetpp " RESUNETPP_VERSION " (C API " RPP_STR_(RPP_API_VERSION_MAJOR) "." RPP_STR_(
      RPP_API_VERSION_MINOR) RPP_BACKENDS_ ")";
}

RPP_API uint32_t rpp_api_version(void) { return RPP_API_VERSION; }

RPP_API const char* rpp_status_name(rpp_status status) {
  switch (status) {
    case RPP_STATUS_OK: return "RPP_STATUS_OK";
    case RPP_STATUS_INVALID_ARGUMENT: return "RPP_STATUS_INVALID_ARGUMENT";
    case RPP_STATUS_IO_ERROR: return "RPP_STATUS_IO_ERROR";
    case RPP_STATUS_BAD_CHECKPOINT: return "RPP_STATUS_BAD_CHECKPOINT";
    case RPP_STATUS_UNSUPPORTED: return "RPP_STATUS_UNSUPPORTED";
    case RPP_STATUS_OUT_OF_MEMORY: return "RPP_STATUS_OUT_OF_MEMORY";
    case RPP_STATUS_INTERNAL: return "RPP_STATUS_INTERNAL";
  }
  return "RPP_STATUS_UNKNOWN";
}

RPP_API const char* rpp_last_error(void) { return t_error_static ? t_error_static : t_error.c_str(); }

RPP_API rpp_status rpp_model_options_init(rpp_model_options* options, uint32_t api_version) {
  return guarded("rpp_model_options_init", [&] {
    if (!options) api_fail(RPP_STATUS_INVALID_ARGUMENT, "options is NULL");
    if (api_version == 0)
      api_fail(RPP_STATUS_INVALID_ARGUMENT, "api_version is 0: pass RPP_API_VERSION");
    check_api_version(api_version);
    // Writes only the fields of the caller's version of the struct (all of them, in API 1.0).
    options->api_version = api_version;
    options->device = "cpu";
    options->precision = "fp32";
    options->input_size = 0;
    options->batch = 1;
    options->tta = 0;
    options->max_contexts = 0;
    options->threshold = 0.5;
    options->cuda_stream = nullptr;
  });
}

RPP_API rpp_status rpp_model_create_from_file(const char* path, const rpp_model_options* options, rpp_model** model) {
  if (model) *model = nullptr;
  return guarded("rpp_model_create_from_file", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model (the output pointer) is NULL");
    if (!path) api_fail(RPP_STATUS_INVALID_ARGUMENT, "path is NULL");
    if (!*path) api_fail(RPP_STATUS_INVALID_ARGUMENT, "path is empty");
    settings_from(options);  // option errors before file errors
    const std::string bytes = stage(RPP_STATUS_IO_ERROR, [&] { return rpp::read_file(path); });
    create_model(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path, options, model);
  });
}

RPP_API rpp_status rpp_model_create_from_memory(const void* data, size_t size, const rpp_model_options* options,
                                                rpp_model** model) {
  if (model) *model = nullptr;
  return guarded("rpp_model_create_from_memory", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model (the output pointer) is NULL");
    if (!data) api_fail(RPP_STATUS_INVALID_ARGUMENT, "data is NULL");
    if (size == 0) api_fail(RPP_STATUS_INVALID_ARGUMENT, "size is 0");
    create_model(static_cast<const uint8_t*>(data), size, "<memory>", options, model);
  });
}

RPP_API void rpp_model_destroy(rpp_model* model) {
  // Destructors of the engine's types do not throw; delete of NULL is a no-op.
  delete model;
}

RPP_API rpp_status rpp_model_input_size(const rpp_model* model, int32_t* size) {
  return guarded("rpp_model_input_size", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model is NULL");
    if (!size) api_fail(RPP_STATUS_INVALID_ARGUMENT, "size is NULL");
    *size = model->size;
  });
}

RPP_API rpp_status rpp_model_filters(const rpp_model* model, int32_t filters[5]) {
  return guarded("rpp_model_filters", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model is NULL");
    if (!filters) api_fail(RPP_STATUS_INVALID_ARGUMENT, "filters is NULL");
    for (size_t i = 0; i < 5; ++i) filters[i] = model->cfg.filters[i];
  });
}

RPP_API rpp_status rpp_output_size(int32_t width, int32_t height, size_t* probability_bytes, size_t* mask_bytes) {
  return guarded("rpp_output_size", [&] {
    if (width < 1 || width > kMaxImageSide || height < 1 || height > kMaxImageSide)
      api_fail(RPP_STATUS_INVALID_ARGUMENT, "the image is ", width, "x", height, ": width and height must be in [1, ",
               kMaxImageSide, "]");
    const size_t n = size_t(width) * size_t(height);
    if (probability_bytes) *probability_bytes = n * sizeof(float);
    if (mask_bytes) *mask_bytes = n;
  });
}

RPP_API rpp_status rpp_segment(rpp_model* model, const rpp_image* image, float* probability, uint8_t* mask) {
  return guarded("rpp_segment", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model is NULL");
    check_image(image, "image");
    if (!probability && !mask)
      api_fail(RPP_STATUS_INVALID_ARGUMENT, "probability and mask are both NULL: give at least one output buffer");
    run_batch(*model, image, 1, &probability, &mask);
  });
}

RPP_API rpp_status rpp_segment_batch(rpp_model* model, const rpp_image* images, size_t count,
                                     float* const* probabilities, uint8_t* const* masks) {
  return guarded("rpp_segment_batch", [&] {
    check_batch(model, images, count, probabilities, masks);
    run_batch(*model, images, count, probabilities, masks);
  });
}

RPP_API rpp_status rpp_segment_device(rpp_model* model, const rpp_image* image, float* probability, uint8_t* mask,
                                      void* cuda_stream) {
  return guarded("rpp_segment_device", [&] {
    if (!model) api_fail(RPP_STATUS_INVALID_ARGUMENT, "model is NULL");
    check_image(image, "image");
    if (!probability && !mask)
      api_fail(RPP_STATUS_INVALID_ARGUMENT, "probability and mask are both NULL: give at least one output buffer");
    run_batch_device(*model, image, 1, &probability, &mask, cuda_stream);
  });
}

RPP_API rpp_status rpp_segment_batch_device(rpp_model* model, const rpp_image* images, size_t count,
                                            float* const* probabilities, uint8_t* const* masks, void* cuda_stream) {
  return guarded("rpp_segment_batch_device", [&] {
    check_batch(model, images, count, probabilities, masks);
    run_batch_device(*model, images, count, probabilities, masks, cuda_stream);
  });
}

}  // extern "C"
