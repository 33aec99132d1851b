// tests/test_metrics.cpp — segmentation metrics on hand-computed cases, the empty-mask rule, and
// the learning-rate schedule.
#include <gtest/gtest.h>

#include <cmath>

#include "model/metrics.h"
#include "model/trainer.h"

using namespace rpp;

TEST(Metrics, HandComputedConfusion) {
  // 8 pixels: logits >= 0 predict polyp.
  const float logits[8] = {2, 1, -1, 0.5f, -3, -0.1f, 0, -2};
  const float mask[8] = {1, 1, 1, 0, 0, 0, 1, 0};
  Confusion c = confusion_from_logits(logits, mask, 8);
  // predicted: 1 1 0 1 0 0 1 0 ; truth: 1 1 1 0 0 0 1 0
  EXPECT_EQ(c.tp, 3);
  EXPECT_EQ(c.fp, 1);
  EXPECT_EQ(c.fn, 1);
  EXPECT_EQ(c.tn, 3);
  EXPECT_DOUBLE_EQ(dice(c), 6.0 / 8.0);
  EXPECT_DOUBLE_EQ(iou(c), 3.0 / 5.0);
  EXPECT_DOUBLE_EQ(precision(c), 3.0 / 4.0);
  EXPECT_DOUBLE_EQ(recall(c), 3.0 / 4.0);
  EXPECT_DOUBLE_EQ(f2(c), 15.0 / (15.0 + 4.0 + 1.0));
  EXPECT_DOUBLE_EQ(accuracy(c), 6.0 / 8.0);
}

TEST(Metrics, EmptyMaskRule) {
  Confusion both_empty{0, 0, 0, 100};
  EXPECT_EQ(dice(both_empty), 1.0);
  EXPECT_EQ(iou(both_empty), 1.0);
  EXPECT_EQ(precision(both_empty), 1.0);
  EXPECT_EQ(recall(both_empty), 1.0);
  Confusion false_alarm{0, 5, 0, 95};  // empty truth, non-empty prediction
  EXPECT_EQ(dice(false_alarm), 0.0);
  EXPECT_EQ(iou(false_alarm), 0.0);
  EXPECT_EQ(precision(false_alarm), 0.0);
  Confusion missed{0, 0, 7, 93};  // polyp missed entirely
  EXPECT_EQ(dice(missed), 0.0);
  EXPECT_EQ(recall(missed), 0.0);
  EXPECT_EQ(precision(missed), 0.0);
}

TEST(Schedule, ConstantCosineAndWarmup) {
  TrainOptions o;
  o.lr = 0.01;
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 0, 100), 0.01);
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 99, 100), 0.01);
  o.schedule = "cosine";
  EXPECT_DOUBLE_EQ(scheduled_lr(o, 0, 100), 0.01);
  EXPECT_NEAR(scheduled_lr(o, 50, 100), 0.005, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 100, 100), 0.0, 1e-12);
  for (int s = 1; s < 100; ++s) EXPECT_LT(scheduled_lr(o, s, 100), scheduled_lr(o, s - 1, 100));
  o.warmup = 10;
  EXPECT_NEAR(scheduled_lr(o, 0, 100), 0.001, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 4, 100), 0.005, 1e-12);
  EXPECT_NEAR(scheduled_lr(o, 10, 100), 0.01, 1e-12);  // cosine starts after warmup
  EXPECT_NEAR(scheduled_lr(o, 55, 100), 0.005, 1e-12);
}
