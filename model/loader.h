// model/loader.h — background batch assembly: gathers (and augments) the batches of one epoch on
// a separate thread while the trainer runs the previous step. The batch contents depend only on
// the epoch's order, the seed and the batch index, never on timing.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "model/augment.h"
#include "model/dataset.h"

namespace rpp {

class BatchLoader {
 public:
  // Batches first..last-1 of an epoch whose sample order is `order` (batch b holds
  // order[b*batch .. b*batch+batch-1]). `aug` may be null (no augmentation). `depth` batches are
  // prepared ahead.
  BatchLoader(const LoadedDataset& ds, const std::vector<int>& order, int batch, int64_t first, int64_t last,
              const AugmentConfig* aug, uint64_t seed, int epoch, int depth = 2);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Copies the next batch into images (batch, S, S, 3) and masks (batch, S, S, 1); blocks until
  // it is ready. Returns false when all batches have been handed out. Rethrows a loader error.
  bool next(float* images, float* masks);
  // Seconds the loader thread spent assembling, and images assembled (for images/s).
  double busy_seconds() const;
  int64_t images_done() const;

 private:
  void produce();
  const LoadedDataset& ds_;
  const std::vector<int>& order_;
  const int batch_;
  const int64_t first_, last_;
  const AugmentConfig* aug_;
  const uint64_t seed_;
  const int epoch_, depth_;
  const size_t img_floats_, mask_floats_;
  std::vector<std::vector<float>> img_slots_, mask_slots_;
  std::vector<int64_t> slot_batch_;  // which batch a slot holds, -1 when free
  int64_t next_to_take_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::exception_ptr error_;
  double busy_ = 0;
  int64_t images_ = 0;
  std::thread thread_;
};

// Seed of the augmentation of sample `position` (0-based within the epoch) of `epoch`.
uint64_t augment_stream(int epoch, int64_t position);

}  // namespace rpp
