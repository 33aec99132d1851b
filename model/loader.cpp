// model/loader.cpp
#include "model/loader.h"

#include <chrono>
#include <cstring>

#include "runtime/rng.h"

namespace rpp {

uint64_t augment_stream(int epoch, int64_t position) { return (uint64_t(epoch) << 32) ^ uint64_t(position); }

BatchLoader::BatchLoader(const LoadedDataset& ds, const std::vector<int>& order, int batch, int64_t first,
                         int64_t last, const AugmentConfig* aug, uint64_t seed, int epoch, int depth)
    : ds_(ds),
      order_(order),
      batch_(batch),
      first_(first),
      last_(last),
      aug_(aug),
      seed_(seed),
      epoch_(epoch),
      depth_(depth < 1 ? 1 : depth),
      img_floats_(size_t(batch) * size_t(ds.size) * size_t(ds.size) * 3),
      mask_floats_(size_t(batch) * size_t(ds.size) * size_t(ds.size)),
      next_to_take_(first) {
  img_slots_.assign(size_t(depth_), std::vector<float>(img_floats_));
  mask_slots_.assign(size_t(depth_), std::vector<float>(mask_floats_));
  slot_batch_.assign(size_t(depth_), -1);
  thread_ = std::thread([this] { produce(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void BatchLoader::produce() {
  try {
    const int s = ds_.size;
    std::vector<float> scratch(augment_scratch_floats(s));
    for (int64_t b = first_; b < last_; ++b) {
      const size_t slot = size_t((b - first_) % depth_);
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || slot_batch_[slot] == -1; });
        if (stop_) return;
      }
      const auto t0 = std::chrono::steady_clock::now();
      float* img = img_slots_[slot].data();
      float* msk = mask_slots_[slot].data();
      gather_batch(ds_, order_.data() + b * batch_, batch_, img, msk);
      if (aug_) {
        for (int i = 0; i < batch_; ++i) {
          Rng rng(seed_ ^ 0x5bd1e9955bd1e995ull, augment_stream(epoch_, b * batch_ + i));
          augment_sample(*aug_, rng, s, img + size_t(i) * s * s * 3, msk + size_t(i) * s * s, scratch.data());
        }
      }
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      {
        std::lock_guard<std::mutex> lk(mu_);
        slot_batch_[slot] = b;
        busy_ += dt;
        images_ += batch_;
      }
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lk(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

bool BatchLoader::next(float* images, float* masks) {
  if (next_to_take_ >= last_) return false;
  const size_t slot = size_t((next_to_take_ - first_) % depth_);
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return error_ || slot_batch_[slot] == next_to_take_; });
  if (error_) std::rethrow_exception(error_);
  lk.unlock();
  std::memcpy(images, img_slots_[slot].data(), img_floats_ * sizeof(float));
  std::memcpy(masks, mask_slots_[slot].data(), mask_floats_ * sizeof(float));
  lk.lock();
  slot_batch_[slot] = -1;
  ++next_to_take_;
  lk.unlock();
  cv_.notify_all();
  return true;
}

double BatchLoader::busy_seconds() const {
  std::lock_guard<std::mutex> lk(mu_);
  return busy_;
}

int64_t BatchLoader::images_done() const {
  std::lock_guard<std::mutex> lk(mu_);
  return images_;
}

}  // namespace rpp
