// model/metrics.h — segmentation metrics of the polyp class from a confusion count.
// Empty-mask rule: when ground truth and prediction are both empty (tp + fp + fn == 0) an image
// scores 1 on Dice, IoU, precision, recall and F2 (a correct "no polyp"); when only one of them
// is empty the ratio's numerator is 0 and it scores 0.
#pragma once
#include <cstdint>

namespace rpp {

struct Confusion {
  int64_t tp = 0, fp = 0, fn = 0, tn = 0;
  Confusion& operator+=(const Confusion& o) {
    tp += o.tp; fp += o.fp; fn += o.fn; tn += o.tn;
    return *this;
  }
};

// Prediction = (logit >= 0), i.e. sigmoid(logit) >= 0.5; truth = (mask >= 0.5).
Confusion confusion_from_logits(const float* logits, const float* mask, int64_t n);

double dice(const Confusion& c);
double iou(const Confusion& c);
double precision(const Confusion& c);
double recall(const Confusion& c);
double f2(const Confusion& c);
double accuracy(const Confusion& c);

}  // namespace rpp
