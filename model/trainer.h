// model/trainer.h — training and evaluation of ResUNet++ on a segmentation folder.
//
// The trainer builds two graphs over one ParamStore: a training graph (forward, loss, backward,
// gradient-norm clipping, optimiser update) and an inference graph (running BN statistics), each
// planned once and run by an executor that allocates nothing per step. Batches are assembled and
// augmented on a background thread (model/loader.h). A run folder receives config.json, log.csv,
// log.jsonl, curves.png, checkpoint_last/best.safetensors and summary.json, all written
// crash-safely; --resume continues a run exactly where checkpoint_last left it.
// Exercised by tests/test_train*.cpp and `resunetpp train`.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/metrics.h"
#include "model/resunetpp.h"
#include "runtime/executor.h"

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
  std::string schedule = "constant";  // constant | plateau | cosine
  int64_t warmup = 0;                  // steps of linear warmup from lr/warmup to lr
  double plateau_factor = 0.1;         // plateau: lr *= factor after `plateau_patience` epochs
  int plateau_patience = 5;            //   without a better validation Dice
  double min_lr = 1e-6;                //   but never below min_lr
  int early_stop = 0;                  // stop after this many epochs without a better val Dice (0: off)
  double clip_grad = 0;                // global gradient-norm limit (0: off)
  // A step with a non-finite loss or gradient norm is skipped (no update, logged); this many in a
  // row are tolerated, one more stops the run with an error (0: the first one stops it).
  int max_skipped_steps = 20;
  // Testing aid: the first image value of these global steps (1-based) is set to NaN, so that
  // the skip path runs. Not a command-line option.
  std::vector<int64_t> nonfinite_steps;
  OptimizerKind optimizer = OptimizerKind::Adam;
  double momentum = 0.9;   // SGD momentum
  double weight_decay = 0;
  LossKind loss = LossKind::BCEDice;
  std::string augment = "none";  // preset: none | light | paper
  std::string augment_set;       // overrides, e.g. "hflip=0.5,rotate=30"
  uint64_t seed = 1;
  bool shuffle = true;
  double val_fraction = 0.1, test_fraction = 0.1;  // used without split_dir
  // "cpu", "cuda" / "cuda:N" in a build with CUDA and cuDNN, or "auto" (runtime/executor.h:
  // resolve_device). The command line defaults to "auto"; the library to "cpu".
  std::string device = "cpu";
  std::string precision = "fp32";
  bool deterministic = true;  // CUDA: only deterministic cuDNN algorithms (exact --resume)
  bool allow_tf32 = false;    // CUDA: TF32 tensor-core convolutions (faster, ~1e-3 relative)
  // Backward remakes the SE outputs and the decoders' concatenations instead of keeping them
  // (runtime/autodiff.h BackwardOptions): at 256x256, batch 16 the fused fp32 training arena is
  // 2,118 MB instead of 2,823 MB (bf16: 1,418 instead of 1,665), for one more pass over those
  // tensors per step. Same results either way.
  bool recompute = true;
  // CUDA: convolution kernels: default | cudnn | handwritten | auto (runtime/executor.h KernelChoice;
  // default: cudnn in fp32, the hand-written BF16 tensor-core kernels in bf16)
  std::string kernels = "default";
  std::string weights;   // start from this checkpoint's model tensors (ours or PyTorch's)
  bool resume = false;   // continue the run in out_dir from checkpoint_last.safetensors
  bool overwrite = false;  // allow out_dir to hold an earlier run, which is replaced
  // Set asynchronously (Ctrl-C): the current step finishes, checkpoint_last is written, and
  // train_model returns with interrupted = true.
  const std::atomic<bool>* stop = nullptr;
};

struct EpochRecord {
  int epoch = 0;
  int64_t step = 0;
  double train_loss = 0, val_loss = 0, val_dice = 0, val_iou = 0;
  double lr = 0, seconds = 0, images_per_s = 0;
  int64_t skipped_steps = 0;  // steps of this epoch skipped for a non-finite loss or gradient
  bool best = false;
};

struct TrainResult {
  std::vector<EpochRecord> epochs;   // every epoch of the run, including those before a resume
  std::vector<double> step_losses;   // the losses of the steps run by this call, in order
  double best_dice = 0;
  int best_epoch = 0;
  double seconds = 0;
  int64_t steps = 0;                 // global step count at the end
  bool interrupted = false, early_stopped = false;
  double loader_images_per_s = 0;    // batch assembly rate of the background loader
};

struct EvalResult {
  double loss = 0;                  // mean over images of the training loss
  std::vector<Confusion> per_image; // in dataset order
  Confusion pooled;
  double mean_dice = 0, mean_iou = 0;
};

// Runs the inference graph over a loaded dataset in batches (the last batch padded), on the
// given device (runtime/executor.h). On a device with its own memory, call upload_params after
// the store's parameters or buffers changed (on the CPU it does nothing).
class Evaluator {
 public:
  Evaluator(const ModelConfig& cfg, int size, int batch, ParamStore& store, const std::string& device = "cpu",
            const ExecOptions& options = ExecOptions());
  void upload_params() { exec_->upload_params(); }
  EvalResult evaluate(const LoadedDataset& ds, LossKind loss);
  const Graph& graph() const { return mg_.graph; }

 private:
  template <class F> void for_batches(const LoadedDataset& ds, F&& f);
  ModelGraph mg_;
  std::unique_ptr<Executor> exec_;
  int batch_, size_;
  std::vector<float> logits_;  // (batch, size, size, 1): the last batch's logits on the host
};

// Learning rate of the step-based part of the schedule at 0-based step `step` of `total`:
// warmup, then constant or cosine (plateau changes are applied per epoch on top of `base`).
double scheduled_lr(const TrainOptions& o, int64_t step, int64_t total, double base);
inline double scheduled_lr(const TrainOptions& o, int64_t step, int64_t total) {
  return scheduled_lr(o, step, total, o.lr);
}

// ReduceLROnPlateau on the validation Dice (mode max, relative threshold 1e-4, no cooldown).
struct PlateauState {
  double lr = 0, best = -1;
  int bad_epochs = 0;
  // Feeds one epoch's metric; returns true when the learning rate was reduced.
  bool update(double metric, const TrainOptions& o);
};

// Per-step progress callback: (epoch, step in epoch, steps per epoch, loss, images/s).
using ProgressFn = std::function<void(int, int64_t, int64_t, double, double)>;

TrainResult train_model(const TrainOptions& opt, std::ostream& log, const ProgressFn& progress = nullptr);

}  // namespace rpp
