// tools/cli/cmd_train.cpp — `resunetpp train`: the training command and its progress bar.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include <unistd.h>

#include "model/trainer.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {

int cmd_train(int argc, char** argv) {
  TrainOptions o;
  o.size = 256;
  o.batch = 8;
  o.epochs = 50;
  o.out_dir = "runs/train";
  std::string filters = "16,32,64,128,256", optimizer = "adam", loss = "bce+dice";
  Flags f("train", "Train ResUNet++ on a folder with images/ and masks/ (pairs matched by file stem).\n"
                   "Writes config.json, log.csv, log.jsonl, checkpoint_last.safetensors (with optimiser\n"
                   "state), checkpoint_best.safetensors (best validation Dice) and summary.json to --out.");
  f.add("data", &o.data_dir, "dataset folder", "DIR");
  f.add("split-dir", &o.split_dir, "folder with train.txt and val.txt (one stem per line); else a seeded split", "DIR");
  f.add("out", &o.out_dir, "run folder (created)", "DIR");
  f.add("size", &o.size, "training resolution (multiple of 8)");
  f.add("batch", &o.batch, "batch size");
  f.add("epochs", &o.epochs, "number of epochs");
  f.add("max-steps", &o.max_steps, "stop after this many steps (0: no limit)");
  f.add("lr", &o.lr, "learning rate");
  f.add("schedule", &o.schedule, "learning-rate schedule: constant | cosine", "NAME");
  f.add("warmup", &o.warmup, "steps of linear learning-rate warmup");
  f.add("optimizer", &optimizer, "sgd | adam | adamw | nadam", "NAME");
  f.add("momentum", &o.momentum, "SGD momentum");
  f.add("weight-decay", &o.weight_decay, "weight decay (L2; decoupled for adamw)");
  f.add("loss", &loss, "bce | dice | bce+dice", "NAME");
  f.add("seed", &o.seed, "seed of initialisation, split and shuffling");
  bool no_shuffle = false;
  f.add("no-shuffle", &no_shuffle, "keep the training order fixed");
  f.add("val-fraction", &o.val_fraction, "validation fraction of the seeded split");
  f.add("test-fraction", &o.test_fraction, "test fraction of the seeded split");
  f.add("filters", &filters, "channel counts of stem, encoders and bridge", "LIST");
  f.add("device", &o.device, "cpu (cuda comes with the CUDA backend)", "DEV");
  f.require("data");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  o.shuffle = !no_shuffle;
  o.model.filters = parse_filters(filters);
  const std::map<std::string, OptimizerKind> opts = {{"sgd", OptimizerKind::SGD}, {"adam", OptimizerKind::Adam},
                                                     {"adamw", OptimizerKind::AdamW}, {"nadam", OptimizerKind::Nadam}};
  const std::map<std::string, LossKind> losses = {{"bce", LossKind::BCE}, {"dice", LossKind::Dice},
                                                  {"bce+dice", LossKind::BCEDice}};
  if (!opts.count(optimizer)) fail("--optimizer must be sgd, adam, adamw or nadam, got '", optimizer, "'");
  if (!losses.count(loss)) fail("--loss must be bce, dice or bce+dice, got '", loss, "'");
  o.optimizer = opts.at(optimizer);
  o.loss = losses.at(loss);

  const bool tty = isatty(fileno(stderr));
  auto t_start = std::chrono::steady_clock::now();
  ProgressFn progress = [&](int epoch, int64_t s, int64_t per, double l, double ips) {
    if (!tty) return;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double total_steps = double(per) * o.epochs;
    const double done = double(epoch - 1) * per + double(s);
    const double eta = done > 0 ? el / done * (total_steps - done) : 0;
    const int width = 24, fill = int(width * double(s) / double(per));
    std::fprintf(stderr, "\repoch %d/%d [%s%s] %lld/%lld  loss %.4f  %.1f img/s  ETA %dm%02ds   ", epoch, o.epochs,
                 std::string(size_t(fill), '#').c_str(), std::string(size_t(width - fill), '.').c_str(),
                 (long long)s, (long long)per, l, ips, int(eta) / 60, int(eta) % 60);
    if (s == per) std::fprintf(stderr, "\r%*s\r", 100, "");
    std::fflush(stderr);
  };
  TrainResult r = train_model(o, std::cout, progress);
  std::cout << "done: " << r.steps << " steps in " << std::setprecision(4) << r.seconds
            << " s; best validation Dice " << r.best_dice << " at epoch " << r.best_epoch << "\n";
  if (!o.out_dir.empty()) std::cout << "run folder: " << o.out_dir << "\n";
  return 0;
}

}  // namespace rpp::cli
