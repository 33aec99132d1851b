// model/inference.cpp — Predictor, TTA, probability resampling, native metrics, folder listings.
#include "model/inference.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>

#include "runtime/error.h"
#include "runtime/fileio.h"
#include "runtime/fusion.h"
#include "runtime/safetensors.h"

namespace fs = std::filesystem;

namespace rpp {

std::string metadata_get(const Metadata& md, const std::string& key) {
  for (const auto& [k, v] : md)
    if (k == key) return v;
  return "";
}

namespace {

// A positive decimal integer (the whole string), or -1.
long parse_positive(const std::string& s) {
  if (s.empty() || s.size() > 9) return -1;
  long v = 0;
  for (char ch : s) {
    if (ch < '0' || ch > '9') return -1;
    v = v * 10 + (ch - '0');
  }
  return v > 0 ? v : -1;
}

void check_size(int size, const std::string& what) {
  if (size < 8 || size % 8 != 0 || size > 16384)
    fail(what, ": the model resolution must be a positive multiple of 8 (at most 16384), got ", size);
}

}  // namespace

CheckpointModel model_from_metadata(const Metadata& md, const std::string& label) {
  CheckpointModel m;
  const std::string fl = metadata_get(md, "filters");
  if (!fl.empty()) {
    m.config.filters = parse_filters(fl, label + ": metadata 'filters'");
    m.filters_from_metadata = true;
  }
  const std::string sz = metadata_get(md, "size");
  if (!sz.empty()) {
    const long x = parse_positive(sz);
    if (x < 0) fail(label, ": metadata 'size' must be a positive integer, got '", sz, "'");
    m.size = int(x);
    m.size_from_metadata = true;
  }
  return m;
}

void flip_image(const float* src, float* dst, int h, int w, int c, Flip flip) {
  const size_t row = size_t(w) * size_t(c);
  for (int y = 0; y < h; ++y) {
    const int sy = flip == Flip::Vertical ? h - 1 - y : y;
    const float* s = src + size_t(sy) * row;
    float* d = dst + size_t(y) * row;
    if (flip != Flip::Horizontal) {
      std::memcpy(d, s, row * sizeof(float));
      continue;
    }
    for (int x = 0; x < w; ++x)
      std::memcpy(d + size_t(x) * size_t(c), s + size_t(w - 1 - x) * size_t(c), size_t(c) * sizeof(float));
  }
}

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// ---------------------------------------------------------------------------------------------

Predictor::Predictor(const std::string& checkpoint, int size, int batch, const std::string& device,
                     const ExecOptions& options)
    : batch_(batch), source_(checkpoint) {
  if (batch < 1) fail("batch size must be at least 1, got ", batch);
  const std::string bytes = read_file(checkpoint);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  StFile f = parse_safetensors(data, bytes.size(), checkpoint);
  metadata_ = f.metadata;
  CheckpointModel m = model_from_metadata(metadata_, checkpoint);
  cfg_ = m.config;
  size_ = size > 0 ? size : m.size;
  check_size(size_, size > 0 ? "--size" : checkpoint + " (metadata 'size')");
  f = StFile();  // the file is parsed again by the loader; free this copy first
  build(device, options);
  load_checkpoint_from_memory(data, bytes.size(), checkpoint, mg_.graph, store_, false);
  params_changed_ = true;
}

Predictor::Predictor(const ModelConfig& cfg, int size, int batch, const std::string& device,
                     const ExecOptions& options)
    : cfg_(cfg), size_(size), batch_(batch) {
  if (batch < 1) fail("batch size must be at least 1, got ", batch);
  check_size(size, "Predictor");
  build(device, options);
}

Predictor::~Predictor() = default;

void Predictor::build(const std::string& device, const ExecOptions& options) {
  mg_ = build_resunetpp(config_for_device(cfg_, device), batch_, size_, size_, /*training=*/false);
  // make_executor refuses bf16 on the CPU, naming the precision.
  if (options.precision == Precision::Bf16) store_activations_in_bf16(mg_.graph);
  exec_ = make_executor(mg_.graph, store_, device, options);
  logits_.resize(size_t(batch_) * size_t(size_) * size_t(size_));
}

std::vector<float> Predictor::preprocess(const Image& img) const {
  if (img.c != 1 && img.c != 3) fail("preprocess: expected a grey or RGB image, got ", img.c, " channels");
  const Image r = resize_bilinear(img, size_, size_);
  const size_t plane = size_t(size_) * size_t(size_);
  std::vector<float> out(plane * 3);
  for (size_t i = 0; i < plane; ++i)
    for (size_t ch = 0; ch < 3; ++ch)
      out[i * 3 + ch] = float(r.px[img.c == 3 ? i * 3 + ch : i]) / 255.f;
  return out;
}

Executor& Predictor::ready_executor() {
  if (params_changed_) {
    exec_->upload_params();
    params_changed_ = false;
  }
  return *exec_;
}

void Predictor::run_variant(const float* images, int start, int count, Flip flip) {
  const size_t per = size_t(size_) * size_t(size_) * 3;
  Executor& ex = ready_executor();
  float* in = ex.input_buffer(mg_.image);
  for (int i = 0; i < batch_; ++i) {
    const float* src = images + size_t(start + (i < count ? i : 0)) * per;  // pad with a repeat
    flip_image(src, in + size_t(i) * per, size_, size_, 3, flip);
  }
  ex.set_input(mg_.image, in);
  ex.run();
  ex.read_output(mg_.logits, logits_.data());
}

void Predictor::logits(const float* images, int n, bool tta, float* out) {
  if (n < 0) fail("Predictor::logits: negative image count ", n);
  const size_t plane = size_t(size_) * size_t(size_);
  std::vector<double> psum, qsum;
  std::vector<float> back(plane);
  for (int start = 0; start < n; start += batch_) {
    const int count = std::min(batch_, n - start);
    if (!tta) {
      run_variant(images, start, count, Flip::None);
      const float* lg = logits_.data();
      std::copy(lg, lg + size_t(count) * plane, out + size_t(start) * plane);
      continue;
    }
    psum.assign(size_t(count) * plane, 0.0);
    qsum.assign(size_t(count) * plane, 0.0);
    for (Flip f : {Flip::None, Flip::Horizontal, Flip::Vertical}) {
      run_variant(images, start, count, f);
      const float* lg = logits_.data();
      for (int i = 0; i < count; ++i) {
        flip_image(lg + size_t(i) * plane, back.data(), size_, size_, 1, f);
        double* p = psum.data() + size_t(i) * plane;
        double* q = qsum.data() + size_t(i) * plane;
        for (size_t k = 0; k < plane; ++k) {
          p[k] += sigmoid(double(back[k]));
          q[k] += sigmoid(-double(back[k]));
        }
      }
    }
    float* o = out + size_t(start) * plane;
    for (size_t k = 0; k < size_t(count) * plane; ++k) o[k] = float(std::log(psum[k]) - std::log(qsum[k]));
  }
}

std::vector<float> Predictor::logits(const std::vector<float>& images, int n, bool tta) {
  const size_t plane = size_t(size_) * size_t(size_);
  if (n < 0 || images.size() != size_t(n) * plane * 3)
    fail("Predictor::logits: ", images.size(), " floats do not hold ", n, " images of ", size_, "x", size_, "x3");
  std::vector<float> out(size_t(n) * plane);
  logits(images.data(), n, tta, out.data());
  return out;
}

std::vector<float> Predictor::predict_logits(const Image& img, bool tta) {
  const std::vector<float> x = preprocess(img);
  return logits(x, 1, tta);
}

// ---------------------------------------------------------------------------------------------

std::vector<float> probabilities_from_logits(const float* logits, size_t n) {
  std::vector<float> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = float(sigmoid(double(logits[i])));
  return p;
}

std::vector<float> resize_map_bilinear(const float* src, int in_w, int in_h, int out_w, int out_h) {
  if (in_w <= 0 || in_h <= 0 || out_w <= 0 || out_h <= 0)
    fail("resize_map_bilinear: sizes must be positive, got ", in_w, "x", in_h, " -> ", out_w, "x", out_h);
  if (in_w == out_w && in_h == out_h) return std::vector<float>(src, src + size_t(in_w) * size_t(in_h));
  const std::vector<BilinearTap> tx = bilinear_taps(in_w, out_w), ty = bilinear_taps(in_h, out_h);
  std::vector<float> out(size_t(out_w) * size_t(out_h));
  for (int y = 0; y < out_h; ++y) {
    const BilinearTap& ry = ty[size_t(y)];
    const float* r0 = src + size_t(ry.i0) * size_t(in_w);
    const float* r1 = src + size_t(ry.i1) * size_t(in_w);
    const float ly = ry.l, hy = 1.f - ly;
    float* o = out.data() + size_t(y) * size_t(out_w);
    for (int x = 0; x < out_w; ++x) {
      const BilinearTap& rx = tx[size_t(x)];
      const float lx = rx.l, hx = 1.f - lx;
      o[x] = hy * (hx * r0[rx.i0] + lx * r0[rx.i1]) + ly * (hx * r1[rx.i0] + lx * r1[rx.i1]);
    }
  }
  return out;
}

Image binary_mask(const float* prob, int w, int h, double threshold) {
  if (w <= 0 || h <= 0) fail("binary_mask: size must be positive, got ", w, "x", h);
  Image m;
  m.w = w;
  m.h = h;
  m.c = 1;
  m.px.resize(size_t(w) * size_t(h));
  for (size_t i = 0; i < m.px.size(); ++i) m.px[i] = double(prob[i]) >= threshold ? 255 : 0;
  return m;
}

Confusion confusion_from_masks(const Image& pred, const Image& truth) {
  if (pred.c != 1 || truth.c != 1) fail("confusion_from_masks: masks must have one channel");
  if (pred.w != truth.w || pred.h != truth.h)
    fail("confusion_from_masks: prediction is ", pred.w, "x", pred.h, " but the truth is ", truth.w, "x", truth.h);
  Confusion c;
  for (size_t i = 0; i < truth.px.size(); ++i) {
    const bool p = pred.px[i] >= 128, t = truth.px[i] >= 128;
    c.tp += p && t;
    c.fp += p && !t;
    c.fn += !p && t;
    c.tn += !p && !t;
  }
  return c;
}

Confusion native_confusion(const float* prob, int size, const Image& truth, double threshold) {
  const std::vector<float> up = resize_map_bilinear(prob, size, size, truth.w, truth.h);
  return confusion_from_masks(binary_mask(up.data(), truth.w, truth.h, threshold), truth);
}

double background_iou(const Confusion& c) {
  Confusion bg;
  bg.tp = c.tn;
  bg.tn = c.tp;
  bg.fp = c.fn;
  bg.fn = c.fp;
  return iou(bg);
}

double mean_iou(const Confusion& c) { return 0.5 * (background_iou(c) + iou(c)); }

// ---------------------------------------------------------------------------------------------

bool has_image_extension(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  for (char& ch : e)
    if (ch >= 'A' && ch <= 'Z') ch = char(ch - 'A' + 'a');
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp";
}

std::vector<std::string> list_image_files(const std::string& dir, std::vector<std::string>* others) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail("'", dir, "' does not exist");
  if (!fs::is_directory(dir, ec)) fail("'", dir, "' is not a folder");
  std::vector<std::string> images, rest;
  fs::directory_iterator it(dir, ec), end;
  if (ec) fail("cannot list '", dir, "': ", ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) fail("cannot list '", dir, "': ", ec.message());
    const std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code ec2;
    if (it->is_directory(ec2)) continue;
    (has_image_extension(name) ? images : rest).push_back(it->path().string());
  }
  if (ec) fail("cannot list '", dir, "': ", ec.message());
  std::sort(images.begin(), images.end());
  std::sort(rest.begin(), rest.end());
  if (others) *others = std::move(rest);
  return images;
}

DatasetListing list_dataset(const std::string& dir) {
  DatasetListing L;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    L.fatal.push_back(fs::exists(dir, ec) ? "'" + dir + "' is not a folder" : "'" + dir + "' does not exist");
    return L;
  }
  std::map<std::string, std::string> by_stem[2];
  const char* subs[2] = {"images", "masks"};
  for (int k = 0; k < 2; ++k) {
    const std::string sub = dir + "/" + subs[k];
    if (!fs::is_directory(sub, ec)) {
      L.fatal.push_back("dataset folder '" + dir + "' has no " + subs[k] + "/ subfolder (expected '" + sub + "')");
      continue;
    }
    std::vector<std::string> others, files;
    try {
      files = list_image_files(sub, &others);
    } catch (const Error& e) {
      L.fatal.push_back(e.what());
      continue;
    }
    L.other_files.insert(L.other_files.end(), others.begin(), others.end());
    for (const std::string& p : files) {
      const std::string stem = fs::path(p).stem().string();
      auto [pos, inserted] = by_stem[k].emplace(stem, p);
      if (!inserted) L.duplicates.push_back(pos->second + " and " + p + " share the stem '" + stem + "'");
    }
  }
  if (!L.fatal.empty()) return L;
  for (const auto& [stem, path] : by_stem[0]) {
    auto m = by_stem[1].find(stem);
    if (m == by_stem[1].end())
      L.images_without_mask.push_back(path);
    else
      L.pairs.push_back({stem, path, m->second});
  }
  for (const auto& [stem, path] : by_stem[1])
    if (!by_stem[0].count(stem)) L.masks_without_image.push_back(path);
  return L;
}

}  // namespace rpp
