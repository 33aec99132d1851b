// tests/test_trainer.cpp — the trainer's run control on a tiny network: exact resume, Ctrl-C
// style interruption, divergence handling, plateau schedule, early stopping, initial weights,
// gradient clipping and the background loader's determinism.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "model/augment.h"
#include "model/loader.h"
#include "model/synth.h"
#include "model/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/fileio.h"
#include "runtime/json.h"
#include "runtime/safetensors.h"

using namespace rpp;

namespace {

class TrainerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = "/tmp/rpp_test_trainer_" + std::to_string(getpid());
    generate_synthetic_dataset(data_, 30, 16, 4);  // 24 train, 3 val, 3 test
  }
  static void TearDownTestSuite() { std::system(("rm -rf " + data_).c_str()); }
  std::string run_dir(const std::string& name) {
    std::string d = data_ + "_run_" + name;
    std::system(("rm -rf " + d).c_str());
    return d;
  }
  TrainOptions base() const {
    TrainOptions o;
    o.data_dir = data_;
    o.model.filters = {8, 8, 16, 16, 32};
    o.size = 16;
    o.batch = 4;  // 6 steps per epoch
    o.epochs = 3;
    o.seed = 21;
    o.augment = "light";
    return o;
  }
  static std::string data_;
};
std::string TrainerTest::data_;

bool same_checkpoint_data(const std::string& a, const std::string& b) {
  StFile fa = read_safetensors(a), fb = read_safetensors(b);
  if (fa.tensors.size() != fb.tensors.size()) return false;
  for (size_t i = 0; i < fa.tensors.size(); ++i)
    if (fa.tensors[i].name != fb.tensors[i].name || fa.tensors[i].bytes != fb.tensors[i].bytes) return false;
  return true;
}

}  // namespace

TEST_F(TrainerTest, ResumeContinuesExactly) {
  for (OptimizerKind k : {OptimizerKind::Adam, OptimizerKind::Nadam, OptimizerKind::SGD}) {
    // N steps straight.
    TrainOptions o = base();
    o.optimizer = k;
    o.lr = k == OptimizerKind::SGD ? 0.05 : 2e-3;
    o.schedule = "cosine";
    o.out_dir = run_dir("straight");
    std::ostringstream l1;
    TrainResult straight = train_model(o, l1);
    ASSERT_EQ(straight.step_losses.size(), 18u);
    // The same run stopped inside epoch 2 (step 9 of 18), then resumed.
    TrainOptions a = o;
    a.out_dir = run_dir("split");
    a.max_steps = 9;
    std::ostringstream l2;
    TrainResult first = train_model(a, l2);
    ASSERT_EQ(first.step_losses.size(), 9u);
    ASSERT_EQ(first.steps, 9);
    TrainOptions b = o;
    b.out_dir = a.out_dir;
    b.resume = true;
    std::ostringstream l3;
    TrainResult second = train_model(b, l3);
    ASSERT_EQ(second.step_losses.size(), 9u) << l3.str();
    std::vector<double> joined = first.step_losses;
    joined.insert(joined.end(), second.step_losses.begin(), second.step_losses.end());
    EXPECT_EQ(joined, straight.step_losses) << optimizer_name(k);
    // Same final model and optimiser state, bit for bit, and the same epoch records.
    EXPECT_TRUE(same_checkpoint_data(o.out_dir + "/checkpoint_last.safetensors",
                                     b.out_dir + "/checkpoint_last.safetensors"))
        << optimizer_name(k);
    ASSERT_EQ(second.epochs.size(), 3u);
    for (size_t e = 0; e < 3; ++e) {
      EXPECT_EQ(second.epochs[e].train_loss, straight.epochs[e].train_loss) << e;
      EXPECT_EQ(second.epochs[e].val_dice, straight.epochs[e].val_dice) << e;
    }
    EXPECT_EQ(read_file(o.out_dir + "/log.csv").size() > 0, true);
  }
}

// --no-recompute keeps the SE outputs for backward instead of remaking them: less work, more
// memory, the same training to the bit.
TEST_F(TrainerTest, RecomputeChangesMemoryNotResults) {
  TrainOptions a = base();
  a.epochs = 1;
  a.out_dir = run_dir("recompute");
  TrainOptions b = a;
  b.out_dir = run_dir("no_recompute");
  b.recompute = false;
  std::ostringstream la, lb;
  const TrainResult ra = train_model(a, la), rb = train_model(b, lb);
  ASSERT_EQ(ra.step_losses.size(), 6u);
  EXPECT_EQ(ra.step_losses, rb.step_losses);
  EXPECT_TRUE(same_checkpoint_data(a.out_dir + "/checkpoint_last.safetensors", b.out_dir + "/checkpoint_last.safetensors"));
  // The log's plan line: "training plan arena X MiB".
  auto arena = [](const std::string& log) {
    const size_t at = log.find("training plan arena ");
    return at == std::string::npos ? -1.0 : std::atof(log.c_str() + at + 20);
  };
  EXPECT_GT(arena(la.str()), 0) << la.str();
  EXPECT_LT(arena(la.str()), arena(lb.str())) << la.str() << lb.str();
}

TEST_F(TrainerTest, ResumeRefusesChangedSettings) {
  TrainOptions o = base();
  o.out_dir = run_dir("changed");
  o.max_steps = 3;
  std::ostringstream l;
  train_model(o, l);
  o.max_steps = 0;
  o.resume = true;
  o.batch = 6;
  try {
    train_model(o, l);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, StopFlagSavesAResumableCheckpoint) {
  TrainOptions o = base();
  o.out_dir = run_dir("stop");
  std::atomic<bool> stop{false};
  o.stop = &stop;
  std::ostringstream l;
  int calls = 0;
  TrainResult r = train_model(o, l, [&](int, int64_t, int64_t, double, double) {
    if (++calls == 4) stop = true;  // as if Ctrl-C came during step 4
  });
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(r.steps, 4);
  StFile f = read_safetensors(o.out_dir + "/checkpoint_last.safetensors");
  EXPECT_EQ(f.metadata_value("step"), "4");
  EXPECT_EQ(f.metadata_value("next_step_in_epoch"), "4");
  json::Value s = json::parse(read_file(o.out_dir + "/summary.json"), "summary.json");
  EXPECT_TRUE(s["interrupted"].as_bool());
}

TEST_F(TrainerTest, DivergenceStopsAndKeepsTheLastGoodCheckpoint) {
  TrainOptions o = base();
  o.out_dir = run_dir("nan");
  o.epochs = 1;
  std::ostringstream l;
  train_model(o, l);
  const std::string before = read_file(o.out_dir + "/checkpoint_last.safetensors");
  // Continue with an absurd learning rate: the weights blow up and the loss stops being finite.
  TrainOptions bad = o;
  bad.epochs = 4;
  bad.lr = 1e30;
  bad.optimizer = OptimizerKind::SGD;
  bad.weights = o.out_dir + "/checkpoint_last.safetensors";
  bad.out_dir = o.out_dir;
  bad.overwrite = true;
  try {
    train_model(bad, l);
    FAIL() << "expected divergence to be reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("diverged"), std::string::npos) << msg;
    EXPECT_NE(msg.find("checkpoint_last"), std::string::npos) << msg;
  }
  // The run folder still holds a readable checkpoint (the divergent run never reached an epoch end).
  EXPECT_NO_THROW(read_safetensors(o.out_dir + "/checkpoint_last.safetensors"));
}

// Steps with a non-finite loss are skipped with a message, do not count as optimiser steps, and
// a run stopped and resumed around them continues bit for bit.
TEST_F(TrainerTest, NonFiniteStepsAreSkippedAndResumeStaysExact) {
  TrainOptions o = base();
  o.optimizer = OptimizerKind::Adam;
  o.lr = 2e-3;
  o.nonfinite_steps = {3, 8, 9};
  o.out_dir = run_dir("skip_straight");
  std::ostringstream l1;
  TrainResult straight = train_model(o, l1);
  ASSERT_EQ(straight.step_losses.size(), 18u);
  for (size_t i = 0; i < 18; ++i) {
    const bool bad = i == 2 || i == 7 || i == 8;
    EXPECT_EQ(std::isfinite(straight.step_losses[i]), !bad) << "step " << i + 1 << ": " << straight.step_losses[i];
  }
  EXPECT_NE(l1.str().find("step 3 (step 3 of epoch 1): the loss is nan"), std::string::npos) << l1.str();
  EXPECT_NE(l1.str().find("update skipped (2 in a row, 3 in all)"), std::string::npos) << l1.str();
  ASSERT_EQ(straight.epochs.size(), 3u);
  EXPECT_EQ(straight.epochs[0].skipped_steps, 1);
  EXPECT_EQ(straight.epochs[1].skipped_steps, 2);
  EXPECT_EQ(straight.epochs[2].skipped_steps, 0);
  for (const EpochRecord& r : straight.epochs) EXPECT_TRUE(std::isfinite(r.train_loss)) << r.epoch;
  StFile f = read_safetensors(o.out_dir + "/checkpoint_last.safetensors");
  EXPECT_EQ(f.metadata_value("step"), "18");
  EXPECT_EQ(f.metadata_value("optimizer_steps"), "15");
  EXPECT_EQ(f.metadata_value("skipped_steps"), "3");
  EXPECT_NE(read_file(o.out_dir + "/log.jsonl").find("\"skipped_steps\":2"), std::string::npos);

  // Stopped between the two consecutive bad steps (after step 8), then resumed.
  TrainOptions a = o;
  a.out_dir = run_dir("skip_split");
  a.max_steps = 8;
  std::ostringstream l2;
  TrainResult first = train_model(a, l2);
  ASSERT_EQ(first.steps, 8);
  StFile fa = read_safetensors(a.out_dir + "/checkpoint_last.safetensors");
  EXPECT_EQ(fa.metadata_value("consecutive_skipped_steps"), "1");
  TrainOptions b = o;
  b.out_dir = a.out_dir;
  b.resume = true;
  std::ostringstream l3;
  TrainResult second = train_model(b, l3);
  std::vector<double> joined = first.step_losses;
  joined.insert(joined.end(), second.step_losses.begin(), second.step_losses.end());
  ASSERT_EQ(joined.size(), straight.step_losses.size());
  for (size_t i = 0; i < joined.size(); ++i)  // NaN never equals NaN: compare the bits
    EXPECT_EQ(std::memcmp(&joined[i], &straight.step_losses[i], sizeof(double)), 0) << "step " << i + 1;
  EXPECT_NE(l3.str().find("update skipped (2 in a row, 3 in all)"), std::string::npos) << l3.str();
  EXPECT_TRUE(same_checkpoint_data(o.out_dir + "/checkpoint_last.safetensors",
                                   b.out_dir + "/checkpoint_last.safetensors"));
}

TEST_F(TrainerTest, TooManySkippedStepsInARowStopTheRun) {
  TrainOptions o = base();
  o.epochs = 1;
  o.max_skipped_steps = 1;
  o.nonfinite_steps = {2, 4};  // never two in a row: the run finishes
  std::ostringstream l1;
  TrainResult r = train_model(o, l1);
  EXPECT_EQ(r.steps, 6);
  o.nonfinite_steps = {2, 3};
  std::ostringstream l2;
  try {
    train_model(o, l2);
    FAIL() << "expected the second skipped step in a row to stop the run";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("diverged: 2 steps in a row up to step 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--max-skipped-steps 1"), std::string::npos) << msg;
  }
}

TEST_F(TrainerTest, PlateauCutsTheLearningRate) {
  TrainOptions o;
  o.plateau_patience = 2;
  o.plateau_factor = 0.1;
  o.min_lr = 1e-5;
  PlateauState p;
  p.lr = 1e-3;
  EXPECT_FALSE(p.update(0.5, o));
  EXPECT_FALSE(p.update(0.6, o));   // better
  EXPECT_FALSE(p.update(0.6, o));   // 1 bad
  EXPECT_FALSE(p.update(0.59, o));  // 2 bad
  EXPECT_TRUE(p.update(0.55, o));   // 3 bad > patience: cut
  EXPECT_NEAR(p.lr, 1e-4, 1e-18);
  EXPECT_EQ(p.bad_epochs, 0);
  for (int i = 0; i < 3; ++i) p.update(0.1, o);
  EXPECT_NEAR(p.lr, 1e-5, 1e-18);  // floored at min_lr
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(p.update(0.1, o));
  EXPECT_NEAR(p.lr, 1e-5, 1e-18);
}

TEST_F(TrainerTest, EarlyStopping) {
  TrainOptions o = base();
  o.epochs = 30;
  o.early_stop = 1;
  o.lr = 1e-9;  // nothing improves after the first epoch... almost surely
  o.augment = "none";
  std::ostringstream l;
  TrainResult r = train_model(o, l);
  EXPECT_TRUE(r.early_stopped) << l.str();
  EXPECT_LT(r.epochs.size(), 30u);
  const size_t n = r.epochs.size();
  ASSERT_GE(n, 2u);
  EXPECT_FALSE(r.epochs[n - 1].best);
}

TEST_F(TrainerTest, InitialWeightsAreLoaded) {
  TrainOptions o = base();
  o.out_dir = run_dir("w1");
  o.epochs = 1;
  std::ostringstream l;
  train_model(o, l);
  // Training from those weights with lr ~ 0 keeps them: the first checkpoint equals the source
  // in every parameter that the optimiser could move.
  TrainOptions w = o;
  w.out_dir = run_dir("w2");
  w.weights = o.out_dir + "/checkpoint_best.safetensors";
  w.lr = 1e-30;
  w.optimizer = OptimizerKind::SGD;
  w.momentum = 0;
  train_model(w, l);
  StFile a = read_safetensors(w.weights), b = read_safetensors(w.out_dir + "/checkpoint_best.safetensors");
  EXPECT_EQ(a.find("d2.r1.c1.2.weight")->bytes, b.find("d2.r1.c1.2.weight")->bytes);
  // A checkpoint of another architecture is refused.
  TrainOptions bad = base();
  bad.model.filters = {16, 16, 16, 16, 32};
  bad.weights = w.weights;
  EXPECT_THROW(train_model(bad, l), Error);
}

TEST_F(TrainerTest, GradientClippingBoundsTheUpdate) {
  // With SGD (no momentum) one step moves the weights by lr * g; clipped, |delta| <= lr * limit.
  TrainOptions o = base();
  o.out_dir = run_dir("clip");
  o.optimizer = OptimizerKind::SGD;
  o.momentum = 0;
  o.lr = 1.0;
  o.clip_grad = 1e-3;
  o.max_steps = 1;
  o.augment = "none";
  std::ostringstream l;
  train_model(o, l);
  ParamStore init, after;
  ModelGraph mg = build_resunetpp(o.model, o.batch, o.size, o.size, true);
  init_params(mg.graph, init, o.seed);
  load_checkpoint(o.out_dir + "/checkpoint_last.safetensors", mg.graph, after, false);
  double sq = 0;
  for (const TensorInfo& t : mg.graph.tensors()) {
    if (t.kind != TensorKind::Param) continue;
    const float* a = init.get(t.name).f();
    const float* b = after.get(t.name).f();
    for (int64_t i = 0; i < numel(t.shape); ++i) sq += double(b[i] - a[i]) * double(b[i] - a[i]);
  }
  EXPECT_GT(std::sqrt(sq), 0.0);
  EXPECT_LE(std::sqrt(sq), 1e-3 * 1.001);
}

TEST_F(TrainerTest, LoaderIsDeterministicWithAugmentation) {
  std::vector<Sample> all = scan_dataset(data_);
  LoadedDataset ds = load_dataset(all, 16);
  std::vector<int> order(size_t(ds.n));
  for (int i = 0; i < ds.n; ++i) order[size_t(i)] = (i * 7) % ds.n;
  AugmentConfig aug = augment_preset("paper");
  const size_t img = 4 * 16 * 16 * 3, msk = 4 * 16 * 16;
  std::vector<float> a_img(img), a_msk(msk), b_img(img), b_msk(msk);
  BatchLoader a(ds, order, 4, 1, 5, &aug, 3, 2), b(ds, order, 4, 1, 5, &aug, 3, 2);
  int batches = 0;
  while (a.next(a_img.data(), a_msk.data())) {
    ASSERT_TRUE(b.next(b_img.data(), b_msk.data()));
    EXPECT_EQ(a_img, b_img);
    EXPECT_EQ(a_msk, b_msk);
    for (float m : a_msk) ASSERT_TRUE(m == 0.f || m == 1.f);
    ++batches;
  }
  EXPECT_EQ(batches, 4);
  EXPECT_FALSE(b.next(b_img.data(), b_msk.data()));
  // Without augmentation the batch is exactly the gathered samples.
  BatchLoader plain(ds, order, 4, 0, 1, nullptr, 3, 2);
  ASSERT_TRUE(plain.next(a_img.data(), a_msk.data()));
  std::vector<float> ref_img(img), ref_msk(msk);
  gather_batch(ds, order.data(), 4, ref_img.data(), ref_msk.data());
  EXPECT_EQ(a_img, ref_img);
  EXPECT_EQ(a_msk, ref_msk);
}

TEST_F(TrainerTest, AnExistingRunIsNotOverwrittenByAccident) {
  TrainOptions o = base();
  o.out_dir = run_dir("exists");
  o.epochs = 1;
  std::ostringstream l;
  train_model(o, l);
  const std::string before = read_file(o.out_dir + "/checkpoint_last.safetensors");
  try {
    train_model(o, l);
    FAIL() << "expected a refusal";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(o.out_dir + "/checkpoint_last.safetensors"), before);
  o.overwrite = true;
  EXPECT_NO_THROW(train_model(o, l));
}

TEST_F(TrainerTest, ResumingAFinishedOrEarlyStoppedRunDoesNothing) {
  for (bool early : {false, true}) {
    TrainOptions o = base();
    o.out_dir = run_dir(early ? "early_done" : "done");
    o.epochs = early ? 20 : 2;
    if (early) {
      o.early_stop = 1;
      o.lr = 1e-9;
      o.augment = "none";
    }
    std::ostringstream l;
    TrainResult first = train_model(o, l);
    if (early) {
      ASSERT_TRUE(first.early_stopped);
    }
    const std::string ckpt = read_file(o.out_dir + "/checkpoint_last.safetensors");
    const std::string log = read_file(o.out_dir + "/log.csv");
    o.resume = true;
    std::ostringstream l2;
    TrainResult again = train_model(o, l2);
    EXPECT_TRUE(again.step_losses.empty()) << l2.str();
    EXPECT_NE(l2.str().find("already finished"), std::string::npos) << l2.str();
    EXPECT_EQ(read_file(o.out_dir + "/checkpoint_last.safetensors"), ckpt);
    EXPECT_EQ(read_file(o.out_dir + "/log.csv"), log);
    EXPECT_EQ(again.epochs.size(), first.epochs.size());
  }
}

TEST_F(TrainerTest, DamagedRunPositionIsRefused) {
  TrainOptions o = base();
  o.out_dir = run_dir("damaged");
  o.max_steps = 3;
  std::ostringstream l;
  train_model(o, l);
  const std::string path = o.out_dir + "/checkpoint_last.safetensors";
  StFile f = read_safetensors(path);
  std::vector<StTensorView> views;
  for (const StTensor& t : f.tensors) views.push_back({t.name, t.dtype, t.shape, t.bytes.data()});
  auto meta = f.metadata;
  for (auto& [k, v] : meta)
    if (k == "next_step_in_epoch") v = "-100000000";
  write_safetensors(path, views, meta);
  o.max_steps = 0;
  o.resume = true;
  try {
    train_model(o, l);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not fit this run"), std::string::npos) << e.what();
  }
}

TEST_F(TrainerTest, StopAfterTheLastStepOfAnEpochResumesExactly) {
  TrainOptions o = base();
  o.out_dir = run_dir("edge_straight");
  o.epochs = 2;
  std::ostringstream l;
  TrainResult straight = train_model(o, l);
  TrainOptions a = o;
  a.out_dir = run_dir("edge_split");
  std::atomic<bool> stop{false};
  a.stop = &stop;
  int calls = 0;
  TrainResult first = train_model(a, l, [&](int, int64_t s, int64_t per, double, double) {
    if (++calls == 6) {
      EXPECT_EQ(s, per);  // the epoch's last step
      stop = true;
    }
  });
  EXPECT_TRUE(first.interrupted);
  EXPECT_TRUE(first.epochs.empty());  // stopped before validating epoch 1
  TrainOptions b = o;
  b.out_dir = a.out_dir;
  b.resume = true;
  TrainResult second = train_model(b, l);
  std::vector<double> joined = first.step_losses;
  joined.insert(joined.end(), second.step_losses.begin(), second.step_losses.end());
  EXPECT_EQ(joined, straight.step_losses);
  ASSERT_EQ(second.epochs.size(), 2u);
  EXPECT_EQ(second.epochs[0].val_dice, straight.epochs[0].val_dice);
  EXPECT_EQ(second.epochs[0].train_loss, straight.epochs[0].train_loss);
}

TEST_F(TrainerTest, SplitFilesThatOverlapAreRefused) {
  const std::string splits = run_dir("splits");
  make_dirs(splits);
  std::vector<Sample> all = scan_dataset(data_);
  write_split_file(splits + "/train.txt", std::vector<Sample>(all.begin(), all.begin() + 20));
  write_split_file(splits + "/val.txt", std::vector<Sample>(all.begin() + 18, all.end()));
  TrainOptions o = base();
  o.split_dir = splits;
  std::ostringstream l;
  try {
    train_model(o, l);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("in both train.txt and val.txt"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(all[18].stem), std::string::npos) << e.what();
  }
}
