// model/metrics.cpp
#include "model/metrics.h"

namespace rpp {

Confusion confusion_from_logits(const float* logits, const float* mask, int64_t n) {
  Confusion c;
  for (int64_t i = 0; i < n; ++i) {
    const bool p = logits[i] >= 0.f, t = mask[i] >= 0.5f;
    c.tp += p && t;
    c.fp += p && !t;
    c.fn += !p && t;
    c.tn += !p && !t;
  }
  return c;
}

static double ratio(int64_t num, int64_t den, const Confusion& c) {
  if (c.tp + c.fp + c.fn == 0) return 1.0;  // empty truth and empty prediction
  return den == 0 ? 0.0 : double(num) / double(den);
}

double dice(const Confusion& c) { return ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, c); }
double iou(const Confusion& c) { return ratio(c.tp, c.tp + c.fp + c.fn, c); }
double precision(const Confusion& c) { return ratio(c.tp, c.tp + c.fp, c); }
double recall(const Confusion& c) { return ratio(c.tp, c.tp + c.fn, c); }
double f2(const Confusion& c) { return ratio(5 * c.tp, 5 * c.tp + 4 * c.fn + c.fp, c); }
double accuracy(const Confusion& c) {
  const int64_t all = c.tp + c.fp + c.fn + c.tn;
  return all == 0 ? 1.0 : double(c.tp + c.tn) / double(all);
}

}  // namespace rpp
