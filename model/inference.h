// model/inference.h — running a trained ResUNet++ on images: the Predictor (checkpoint ->
// inference graph -> logits or probabilities, with optional flip test-time augmentation), the
// resampling of probability maps back to an image's own size, native-resolution confusion counts,
// and a non-throwing listing of image folders and datasets. Shared by `resunetpp eval`,
// `resunetpp predict` and `resunetpp check-data`; exercised by tests/test_predict.cpp.
//
// Preprocessing is the training pipeline's (model/dataset.cpp load_dataset): RGB, bilinear resize
// with half-pixel centres to size x size, byte / 255, no mean or std normalisation.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/image_io.h"
#include "model/metrics.h"
#include "model/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/executor.h"

namespace rpp {

// What a checkpoint without metadata (e.g. a PyTorch state_dict saved with safetensors) is
// assumed to be: filters 16,32,64,128,256 at 256 x 256.
constexpr int kDefaultModelSize = 256;

struct CheckpointModel {
  ModelConfig config;
  int size = kDefaultModelSize;
  bool filters_from_metadata = false, size_from_metadata = false;
};

// The value of `key` in `md`, "" if absent.
std::string metadata_get(const Metadata& md, const std::string& key);

// The model a checkpoint's metadata describes: "filters" (five comma-separated positive integers)
// and "size" (the training resolution). Absent keys give the defaults above. rpp::Error starting
// with `label` for a malformed value.
CheckpointModel model_from_metadata(const Metadata& md, const std::string& label);

// Which flip a test-time-augmentation pass applies (to the input, and back to the output).
enum class Flip { None, Horizontal, Vertical };

// Copies one (h, w, c) image from src to dst flipped; src and dst must not overlap.
void flip_image(const float* src, float* dst, int h, int w, int c, Flip flip);

// The numerically stable logistic function, in double.
double sigmoid(double x);

// Owns an inference graph (running BatchNorm statistics), its parameters and an executor on
// `device` ("cpu", "cuda", "cuda:N"; runtime/executor.h). Not copyable or movable (the executor
// holds pointers into the graph and the store).
class Predictor {
 public:
  // Reads `checkpoint` once: the model's filters come from its metadata, and the resolution too
  // unless `size` > 0 overrides it (a positive multiple of 8). `batch` images run per forward
  // pass. rpp::Error naming the file for an unreadable, truncated or mismatched checkpoint.
  explicit Predictor(const std::string& checkpoint, int size = 0, int batch = 1, const std::string& device = "cpu",
                     const ExecOptions& options = ExecOptions());
  // A model with zeroed parameters (tests, or load them yourself): e.g. init_params(graph(),
  // store(), seed) or load_checkpoint(path, graph(), store(), false).
  Predictor(const ModelConfig& cfg, int size, int batch, const std::string& device = "cpu",
            const ExecOptions& options = ExecOptions());
  ~Predictor();
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;

  int size() const { return size_; }
  int batch() const { return batch_; }
  const ModelConfig& config() const { return cfg_; }
  const Graph& graph() const { return mg_.graph; }
  // Mutable access marks the parameters as changed: the next run uploads them to the device
  // (nothing to do on the CPU, whose executor works on the store itself).
  ParamStore& store() {
    params_changed_ = true;
    return store_;
  }
  const Metadata& metadata() const { return metadata_; }  // empty for the tests' constructor
  const std::string& source() const { return source_; }   // the checkpoint path, or ""

  // The model input for one image (any size; 1 or 3 channels, grey is replicated): (size, size, 3)
  // floats, exactly what load_dataset produces for the same file.
  std::vector<float> preprocess(const Image& img) const;

  // Logits (n, size, size) for n preprocessed images (n, size, size, 3), run in batches of
  // batch() (the last one padded). With `tta`, each image also runs flipped horizontally and
  // vertically, each output is flipped back, and the result is the logit of the mean of the three
  // sigmoid probabilities, log(sum p_k / sum (1 - p_k)), computed stably in double; so
  // sigmoid(result) is the averaged probability and result >= 0 exactly when it is >= 0.5.
  void logits(const float* images, int n, bool tta, float* out);
  std::vector<float> logits(const std::vector<float>& images, int n, bool tta);

  // One image end to end: preprocess, run, return logits at (size, size).
  std::vector<float> predict_logits(const Image& img, bool tta);

  // For callers that drive the executor themselves (the C API's device-pointer calls): the
  // executor with the parameters uploaded, and the graph's image input (batch, size, size, 3)
  // and logits output (batch, size, size, 1) tensors.
  Executor& ready_executor();
  int image_tensor() const { return mg_.image; }
  int logits_tensor() const { return mg_.logits; }

 private:
  void build(const std::string& device, const ExecOptions& options);
  // Runs one padded batch; its logits end up in logits_.
  void run_variant(const float* images, int start, int count, Flip flip);

  ModelConfig cfg_;
  int size_ = 0, batch_ = 1;
  Metadata metadata_;
  std::string source_;
  ModelGraph mg_;
  ParamStore store_;
  std::unique_ptr<Executor> exec_;
  bool params_changed_ = false;
  std::vector<float> logits_;  // (batch, size, size, 1) of the last run, on the host
};

// sigmoid of each logit, as float.
std::vector<float> probabilities_from_logits(const float* logits, size_t n);

// Bilinear resize of a one-channel float map (row-major in_h x in_w) with half-pixel centres,
// the same taps as resize_bilinear (align_corners=false, borders clamped) but without rounding.
// Same size returns a copy. rpp::Error for non-positive sizes.
std::vector<float> resize_map_bilinear(const float* src, int in_w, int in_h, int out_w, int out_h);

// A 0/255 one-channel mask: 255 where prob >= threshold.
Image binary_mask(const float* prob, int w, int h, double threshold);

// Counts of the polyp class between a predicted and a true one-channel mask of the same size,
// each pixel polyp when >= 128. rpp::Error for different sizes or channel counts.
Confusion confusion_from_masks(const Image& pred, const Image& truth);

// Native-resolution counts: the probability map at model resolution (size x size) upsampled
// bilinearly to the true mask's size, thresholded (p >= threshold), against truth >= 128.
Confusion native_confusion(const float* prob, int size, const Image& truth, double threshold = 0.5);

// IoU of the background class (the same empty rule: no background in truth and prediction
// scores 1), and mIoU = mean of the background IoU and the polyp IoU.
double background_iou(const Confusion& c);
double mean_iou(const Confusion& c);

// True for names ending in .png, .jpg, .jpeg or .bmp (any case).
bool has_image_extension(const std::string& path);

// The files directly inside `dir` (hidden files skipped), sorted by name: those with an image
// extension are returned; the names of other regular files go to `others` (may be null).
// rpp::Error naming `dir` when it is missing, not a folder or cannot be listed.
std::vector<std::string> list_image_files(const std::string& dir, std::vector<std::string>* others = nullptr);

// A dataset folder listed without stopping at the first problem (scan_dataset throws instead).
struct DatasetListing {
  std::vector<Sample> pairs;                    // sorted by stem
  std::vector<std::string> images_without_mask; // image paths
  std::vector<std::string> masks_without_image; // mask paths
  std::vector<std::string> duplicates;          // "<path> and <path> share the stem '<stem>'"
  std::vector<std::string> other_files;         // paths without an image extension
  std::vector<std::string> fatal;               // missing or unlistable folder: nothing else is valid
};
DatasetListing list_dataset(const std::string& dir);

}  // namespace rpp
