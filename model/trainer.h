// model/trainer.h — training and evaluation of ResUNet++ on a segmentation folder.
//
// The trainer builds two graphs over one ParamStore: a training graph (forward, loss, backward,
// optimiser update) and an inference graph (running BN statistics), each planned once and run by
// an executor that allocates nothing per step. Exercised by tests/test_train.cpp and
// `resunetpp train`.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/metrics.h"
#include "model/resunetpp.h"
#include "runtime/executor_cpu.h"

namespace rpp {

struct TrainOptions {
  std::string data_dir;   // folder with images/ and masks/
  std::string split_dir;  // optional: train.txt, val.txt (test.txt) with one stem per line
  std::string out_dir;    // run folder (created); empty: nothing written
  ModelConfig model;
  int size = 64;           // training and evaluation resolution (multiple of 8)
  int batch = 8;
  int epochs = 20;
  int64_t max_steps = 0;   // 0: no limit
  double lr = 1e-3;
  std::string schedule = "constant";  // constant | cosine (to 0 over the run, after warmup)
  int64_t warmup = 0;                  // steps of linear warmup from lr/warmup to lr
  OptimizerKind optimizer = OptimizerKind::Adam;
  double momentum = 0.9;   // SGD momentum
  double weight_decay = 0;
  LossKind loss = LossKind::BCEDice;
  uint64_t seed = 1;
  bool shuffle = true;
  double val_fraction = 0.1, test_fraction = 0.1;  // used without split_dir
  std::string device = "cpu";
};

struct EpochRecord {
  int epoch = 0;
  int64_t step = 0;
  double train_loss = 0, val_loss = 0, val_dice = 0, val_iou = 0;
  double lr = 0, seconds = 0, images_per_s = 0;
  bool best = false;
};

struct TrainResult {
  std::vector<EpochRecord> epochs;
  std::vector<double> step_losses;  // every training step's loss, in order
  double best_dice = 0;
  int best_epoch = 0;
  double seconds = 0;
  int64_t steps = 0;
};

struct EvalResult {
  double loss = 0;                  // mean over images of the training loss
  std::vector<Confusion> per_image; // in dataset order
  Confusion pooled;
  double mean_dice = 0, mean_iou = 0;
};

// Runs the inference graph over a loaded dataset in batches (the last batch padded).
class Evaluator {
 public:
  Evaluator(const ModelConfig& cfg, int size, int batch, ParamStore& store);
  EvalResult evaluate(const LoadedDataset& ds, LossKind loss);
  // Logits (n, size, size, 1) for ds's images.
  std::vector<float> logits(const LoadedDataset& ds);
  const Graph& graph() const { return mg_.graph; }

 private:
  template <class F> void for_batches(const LoadedDataset& ds, F&& f);
  ModelGraph mg_;
  std::unique_ptr<CpuExecutor> exec_;
  int batch_, size_;
};

// Per-step progress callback: (epoch, step in epoch, steps per epoch, loss, images/s).
// Learning rate at 0-based step `step` of a run of `total` steps.
double scheduled_lr(const TrainOptions& o, int64_t step, int64_t total);

using ProgressFn = std::function<void(int, int64_t, int64_t, double, double)>;

TrainResult train_model(const TrainOptions& opt, std::ostream& log, const ProgressFn& progress = nullptr);

}  // namespace rpp
