// tests/test_train.cpp — training end to end on the CPU: a fixed seed trains the full ResUNet++
// to a high validation Dice on synthetic data, and the same seed gives the same losses twice.
// Labelled "slow" (see CMakeLists.txt): the sanitizer build skips it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "model/synth.h"
#include "model/trainer.h"

using namespace rpp;

namespace {

std::string synth_dir(int count, int size, uint64_t seed) {
  const std::string d = "/tmp/rpp_test_train_" + std::to_string(getpid()) + "_" + std::to_string(size) + "_" +
                        std::to_string(count);
  generate_synthetic_dataset(d, count, size, seed);
  return d;
}

double mean(const std::vector<double>& v, size_t b, size_t e) {
  double s = 0;
  for (size_t i = b; i < e; ++i) s += v[i];
  return s / double(e - b);
}

}  // namespace

TEST(Train, SameSeedSameLossesForEveryOptimizer) {
  const std::string data = synth_dir(24, 32, 2);
  for (OptimizerKind k : {OptimizerKind::SGD, OptimizerKind::Adam, OptimizerKind::AdamW, OptimizerKind::Nadam}) {
    TrainOptions o;
    o.data_dir = data;
    o.model.filters = {8, 8, 16, 16, 32};
    o.size = 32;
    o.batch = 4;
    o.epochs = 2;
    o.optimizer = k;
    o.weight_decay = 1e-4;
    o.lr = k == OptimizerKind::SGD ? 0.05 : 1e-3;
    o.seed = 9;
    std::ostringstream log1, log2;
    TrainResult a = train_model(o, log1), b = train_model(o, log2);
    ASSERT_EQ(a.step_losses.size(), size_t(a.steps)) << optimizer_name(k);
    ASSERT_GE(a.steps, 8) << optimizer_name(k);
    ASSERT_EQ(a.step_losses, b.step_losses) << optimizer_name(k);
    for (double l : a.step_losses) EXPECT_TRUE(std::isfinite(l));
    o.seed = 10;
    std::ostringstream log3;
    TrainResult c = train_model(o, log3);
    EXPECT_NE(a.step_losses, c.step_losses) << optimizer_name(k);
  }
  std::system(("rm -rf " + data).c_str());
}

TEST(Train, FullNetworkReachesHighDiceOnSyntheticData) {
  // The default ResUNet++ (4,062,993 parameters) at 32x32, a few hundred Adam steps.
  const std::string data = synth_dir(300, 32, 1);
  TrainOptions o;
  o.data_dir = data;
  o.size = 32;
  o.batch = 8;
  o.epochs = 14;
  o.lr = 2e-3;
  o.seed = 1;
  o.val_fraction = 0.1;
  o.test_fraction = 0.1;
  std::ostringstream log;
  TrainResult r = train_model(o, log);
  std::cout << log.str();
  ASSERT_GE(r.step_losses.size(), 300u);
  const size_t n = r.step_losses.size();
  EXPECT_LT(mean(r.step_losses, n - 20, n), 0.6 * mean(r.step_losses, 0, 20)) << log.str();
  EXPECT_GT(r.best_dice, 0.8) << log.str();
  std::system(("rm -rf " + data).c_str());
}
