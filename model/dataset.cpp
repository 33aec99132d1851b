// model/dataset.cpp — scan (pair by stem), seeded split, split files, in-memory loading.
#include "model/dataset.h"
#include "runtime/fileio.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <system_error>
#include <unordered_map>

#include "kernels/cpu/parallel.h"
#include "model/image_io.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace fs = std::filesystem;

namespace rpp {
namespace {

// Rng stream for the split, so that the same seed used for initialisation or augmentation does
// not produce correlated draws.
constexpr uint64_t kSplitStream = 0x53504C4954ull;  // "SPLIT"

std::string lower(std::string s) {
  for (char& ch : s)
    if (ch >= 'A' && ch <= 'Z') ch = char(ch - 'A' + 'a');
  return s;
}

bool is_image_ext(const std::string& ext) {
  const std::string e = lower(ext);
  return e == ".png" || e == ".jpg" || e == ".jpeg" || e == ".bmp";
}

// stem -> path for the image files directly inside `sub` (hidden files skipped).
std::map<std::string, std::string> list_images(const std::string& dir, const std::string& sub) {
  const std::string path = dir + "/" + sub;
  std::error_code ec;
  if (!fs::is_directory(path, ec))
    fail("dataset folder '", dir, "' has no ", sub, "/ subfolder (expected '", path, "')");
  std::map<std::string, std::string> out;
  fs::directory_iterator it(path, ec), end;
  if (ec) fail("cannot list '", path, "': ", ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) fail("cannot list '", path, "': ", ec.message());
    const fs::path& p = it->path();
    const std::string name = p.filename().string();
    if (name.empty() || name[0] == '.') continue;
    const std::string ext = lower(p.extension().string());
    if (ext == ".tif" || ext == ".tiff")
      fail("'", p.string(), "' is a TIFF image, which resunetpp does not read (CVC-ClinicDB ships TIFF). ",
           "Convert the dataset to PNG first, e.g. with ImageMagick: cd '", path,
           "' && mogrify -format png *.tif && rm *.tif (and the same in the other subfolder)");
    if (!is_image_ext(ext)) continue;
    std::error_code ec2;
    if (!it->is_regular_file(ec2)) continue;
    const std::string stem = p.stem().string();
    auto [pos, inserted] = out.emplace(stem, p.string());
    if (!inserted) {
      std::string a = fs::path(pos->second).filename().string(), b = name;
      if (b < a) std::swap(a, b);
      fail("dataset folder '", dir, "': ", sub, "/ holds two files with the stem '", stem, "' (", a,
           " and ", b, ")");
    }
  }
  if (ec) fail("cannot list '", path, "': ", ec.message());
  return out;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string stem_list(const std::vector<std::string>& stems) {
  std::ostringstream os;
  const size_t shown = std::min<size_t>(stems.size(), 5);
  for (size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << stems[i];
  if (stems.size() > shown) os << ", ... (" << stems.size() - shown << " more)";
  return os.str();
}

}  // namespace

std::vector<Sample> scan_dataset(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) fail("dataset folder '", dir, "' does not exist");
  if (!fs::is_directory(dir, ec)) fail("dataset folder '", dir, "' is not a folder");
  const auto images = list_images(dir, "images");
  const auto masks = list_images(dir, "masks");
  if (images.empty())
    fail("dataset folder '", dir, "' has no images (.png, .jpg, .jpeg or .bmp) in '", dir,
         "/images'");
  std::vector<std::string> no_mask, no_image;
  for (const auto& [stem, path] : images)
    if (!masks.count(stem)) no_mask.push_back(stem);
  for (const auto& [stem, path] : masks)
    if (!images.count(stem)) no_image.push_back(stem);
  if (!no_mask.empty() || !no_image.empty()) {
    std::ostringstream os;
    os << "dataset folder '" << dir << "': images and masks do not pair up by name:";
    if (!no_mask.empty())
      os << " " << no_mask.size() << " image(s) without a mask in masks/: " << stem_list(no_mask)
         << ";";
    if (!no_image.empty())
      os << " " << no_image.size() << " mask(s) without an image in images/: "
         << stem_list(no_image) << ";";
    std::string msg = os.str();
    msg.pop_back();
    throw Error(msg);
  }
  std::vector<Sample> out;
  out.reserve(images.size());
  for (const auto& [stem, path] : images) out.push_back({stem, path, masks.at(stem)});
  return out;  // std::map iterates in byte order of the stems
}

void split_seeded(const std::vector<Sample>& all, uint64_t seed, SplitFractions fr,
                  std::vector<Sample>* train, std::vector<Sample>* val, std::vector<Sample>* test) {
  const double f[3] = {fr.train, fr.val, fr.test};
  for (double v : f)
    if (!(v >= 0.0) || !std::isfinite(v))
      fail("split fractions must be finite and >= 0, got train=", fr.train, " val=", fr.val,
           " test=", fr.test);
  const double sum = f[0] + f[1] + f[2];
  if (!(sum > 0.0)) fail("split fractions must not all be zero");

  std::vector<Sample> order = all;
  std::sort(order.begin(), order.end(),
            [](const Sample& a, const Sample& b) { return a.stem < b.stem; });
  Rng rng(seed, kSplitStream);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(uint32_t(i))]);

  const int64_t n = int64_t(order.size());
  int64_t cnt[3];
  cnt[1] = std::llround(double(n) * f[1] / sum);
  cnt[2] = std::llround(double(n) * f[2] / sum);
  if (cnt[1] + cnt[2] > n) cnt[2] = n - cnt[1];
  cnt[0] = n - cnt[1] - cnt[2];
  if (f[0] == 0.0 && cnt[0] > 0) {  // rounding left samples for a split that asked for none
    cnt[f[1] >= f[2] ? 1 : 2] += cnt[0];
    cnt[0] = 0;
  }
  if (n >= 3) {
    for (int k = 0; k < 3; ++k) {
      if (f[k] == 0.0 || cnt[k] > 0) continue;
      int big = 0;
      for (int j = 1; j < 3; ++j)
        if (cnt[j] > cnt[big]) big = j;
      --cnt[big];
      ++cnt[k];
    }
  }
  std::vector<Sample>* outs[3] = {train, val, test};
  int64_t at = 0;
  for (int k = 0; k < 3; ++k) {
    if (outs[k]) {
      outs[k]->assign(order.begin() + at, order.begin() + at + cnt[k]);
      std::sort(outs[k]->begin(), outs[k]->end(),
                [](const Sample& a, const Sample& b) { return a.stem < b.stem; });
    }
    at += cnt[k];
  }
}

std::vector<Sample> read_split_file(const std::string& path, const std::vector<Sample>& all) {
  const std::string bytes = read_file(path);
  std::unordered_map<std::string, size_t> by_stem;
  for (size_t i = 0; i < all.size(); ++i) by_stem.emplace(all[i].stem, i);
  std::unordered_map<std::string, int> seen;  // stem -> line
  std::vector<Sample> out;
  std::istringstream in(bytes);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::string name = trim(line);
    if (name.empty()) continue;
    auto it = by_stem.find(name);
    if (it == by_stem.end()) {
      const fs::path p(name);
      if (is_image_ext(p.extension().string())) it = by_stem.find(p.stem().string());
    }
    if (it == by_stem.end())
      fail(path, ":", lineno, ": unknown sample '", name, "' (no image/mask pair with that stem)");
    const std::string& stem = all[it->second].stem;
    auto [pos, inserted] = seen.emplace(stem, lineno);
    if (!inserted)
      fail(path, ":", lineno, ": sample '", stem, "' is listed twice (first on line ", pos->second,
           ")");
    out.push_back(all[it->second]);
  }
  return out;
}

void write_split_file(const std::string& path, const std::vector<Sample>& samples) {
  std::string text;
  for (const Sample& s : samples) {
    text += s.stem;
    text += '\n';
  }
  write_file_atomic(path, text);
}

LoadedDataset load_dataset(const std::vector<Sample>& samples, int size) {
  if (size < 1) fail("load_dataset: size must be positive, got ", size);
  LoadedDataset ds;
  ds.size = size;
  ds.n = int(samples.size());
  const size_t plane = size_t(size) * size_t(size);
  ds.images.assign(samples.size() * plane * 3, 0.f);
  ds.masks.assign(samples.size() * plane, 0.f);
  ds.stems.resize(samples.size());
  ds.orig_w.assign(samples.size(), 0);
  ds.orig_h.assign(samples.size(), 0);

  std::mutex mu;
  size_t err_index = samples.size();
  std::string err;
  // Workers must not throw through the pool: keep the first failure in input order.
  cpu::parallel_for(int64_t(samples.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Sample& s = samples[size_t(i)];
      try {
        Image img = load_image(s.image_path, 3);
        Image mask = load_image(s.mask_path, 1);
        if (img.w != mask.w || img.h != mask.h)
          fail("image '", s.image_path, "' is ", img.w, "x", img.h, " but its mask '", s.mask_path,
               "' is ", mask.w, "x", mask.h);
        ds.stems[size_t(i)] = s.stem;
        ds.orig_w[size_t(i)] = img.w;
        ds.orig_h[size_t(i)] = img.h;
        img = resize_bilinear(img, size, size);
        mask = resize_nearest(mask, size, size);
        float* io = ds.images.data() + size_t(i) * plane * 3;
        for (size_t k = 0; k < plane * 3; ++k) io[k] = float(img.px[k]) / 255.f;
        float* mo = ds.masks.data() + size_t(i) * plane;
        for (size_t k = 0; k < plane; ++k) mo[k] = mask.px[k] >= 128 ? 1.f : 0.f;
      } catch (const std::exception& ex) {
        std::lock_guard<std::mutex> lk(mu);
        if (size_t(i) < err_index) {
          err_index = size_t(i);
          err = ex.what();
        }
        return;
      }
    }
  });
  if (err_index < samples.size()) throw Error(err);
  return ds;
}

void gather_batch(const LoadedDataset& ds, const int* indices, int count, float* images_out,
                  float* masks_out) {
  const size_t plane = size_t(ds.size) * size_t(ds.size);
  for (int k = 0; k < count; ++k) {
    const int i = indices[k];
    if (i < 0 || i >= ds.n)
      fail("gather_batch: index ", i, " at batch position ", k, " is outside the data set of ", ds.n,
           " samples");
    std::memcpy(images_out + size_t(k) * plane * 3, ds.images.data() + size_t(i) * plane * 3,
                plane * 3 * sizeof(float));
    if (masks_out)
      std::memcpy(masks_out + size_t(k) * plane, ds.masks.data() + size_t(i) * plane,
                  plane * sizeof(float));
  }
}

}  // namespace rpp
