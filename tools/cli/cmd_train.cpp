// tools/cli/cmd_train.cpp — `resunetpp train`: flags, Ctrl-C handling and the progress bar.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <string>

#include "model/augment.h"
#include "model/trainer.h"
#include "runtime/executor.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_sigint(int) {
  g_stop.store(true);
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process at once
}
}  // namespace

int cmd_train(int argc, char** argv) {
  TrainOptions o;
  o.size = 256;
  o.batch = 8;
  o.epochs = 50;
  o.out_dir = "runs/train";
  std::string filters = "16,32,64,128,256", optimizer = "adam", loss = "bce+dice";
  Flags f("train",
          "Train ResUNet++ on a folder with images/ and masks/ (pairs matched by file stem).\n"
          "Writes config.json, log.csv, log.jsonl, curves.png, checkpoint_last.safetensors (model and\n"
          "optimiser state, enough to --resume), checkpoint_best.safetensors (best validation Dice) and\n"
          "summary.json to --out, each crash-safely. Ctrl-C finishes the current step, saves\n"
          "checkpoint_last and exits; --resume continues exactly where it stopped.");
  f.add("data", &o.data_dir, "dataset folder", "DIR");
  f.add("split-dir", &o.split_dir, "folder with train.txt and val.txt (one stem per line); else a seeded split", "DIR");
  f.add("out", &o.out_dir, "run folder (created)", "DIR");
  f.add("size", &o.size, "training resolution (multiple of 8)");
  f.add("batch", &o.batch, "batch size");
  f.add("epochs", &o.epochs, "number of epochs");
  f.add("max-steps", &o.max_steps, "stop after this many steps in all (0: no limit; the lr schedule still spans --epochs)");
  f.add("lr", &o.lr, "learning rate");
  f.add("schedule", &o.schedule, "constant | plateau | cosine", "NAME");
  f.add("warmup", &o.warmup, "steps of linear learning-rate warmup");
  f.add("plateau-factor", &o.plateau_factor, "plateau: multiply the lr by this");
  f.add("plateau-patience", &o.plateau_patience, "plateau: epochs without a better val Dice before cutting");
  f.add("min-lr", &o.min_lr, "plateau: lower bound of the lr");
  f.add("early-stop", &o.early_stop, "stop after this many epochs without a better val Dice (0: off)");
  f.add("clip-grad", &o.clip_grad, "clip the global gradient norm to this (0: off)");
  f.add("max-skipped-steps", &o.max_skipped_steps,
        "steps with a non-finite loss or gradient are skipped (no update); stop with an error after this many "
        "in a row (0: at the first)");
  f.add("optimizer", &optimizer, "sgd | adam | adamw | nadam", "NAME");
  f.add("momentum", &o.momentum, "SGD momentum");
  f.add("weight-decay", &o.weight_decay, "weight decay (L2; decoupled for adamw)");
  f.add("loss", &loss, "bce | dice | bce+dice", "NAME");
  f.add("augment", &o.augment, "augmentation preset: " + augment_preset_names(), "NAME");
  f.add("augment-set", &o.augment_set, "override augmentation switches, e.g. hflip=0.5,rotate=30", "LIST");
  f.add("seed", &o.seed, "seed of initialisation, split, shuffling and augmentation");
  bool no_shuffle = false;
  f.add("no-shuffle", &no_shuffle, "keep the training order fixed");
  f.add("val-fraction", &o.val_fraction, "validation fraction of the seeded split");
  f.add("test-fraction", &o.test_fraction, "test fraction of the seeded split");
  f.add("filters", &filters, "channel counts of stem, encoders and bridge", "LIST");
  f.add("weights", &o.weights, "start from this checkpoint's weights (resunetpp or PyTorch safetensors)", "FILE");
  f.add("resume", &o.resume, "continue the run in --out from its checkpoint_last");
  f.add("overwrite", &o.overwrite, "replace an earlier run in --out (without it, an existing run is refused)");
  o.device = "auto";
  f.add("device", &o.device, "auto (cuda:0 when this build has CUDA and a GPU is visible, else cpu), cpu, cuda or cuda:N; the CUDA path is new and not yet verified on a GPU", "DEV");
  f.add("precision", &o.precision,
        "fp32, or bf16 (CUDA only: activations saved in bf16 and bf16 tensor-core convolutions, gradients, "
        "weights, optimizer state and BN statistics in fp32; validation also in bf16)",
        "NAME");
  bool nondeterministic = false;
  f.add("nondeterministic", &nondeterministic,
        "cuda: allow cuDNN algorithms whose results vary between runs (--resume is then no longer exact)");
  f.add("kernels", &o.kernels,
        "cuda: convolutions (fused BN-ReLU-conv and plain, forward and backward): default (cudnn with "
        "--precision fp32, handwritten with bf16), cudnn (with bf16: each bf16 operand staged in fp32), "
        "handwritten (own kernels, on tensor cores with --allow-tf32 or bf16; not yet run on a GPU) or auto "
        "(the faster of the two per node kind and shape, timed at start-up)",
        "NAME");
  f.add("allow-tf32", &o.allow_tf32, "cuda: TF32 tensor-core convolutions (faster, about 1e-3 relative error)");
  bool no_recompute = false;
  f.add("no-recompute", &no_recompute,
        "keep the SE outputs and decoder concatenations for backward instead of recomputing them there "
        "(one pass over them less per step; for the CUDA graph at 256x256 a third more training memory in fp32, a sixth in "
        "bf16; same results)");
  f.require("data");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  o.device = resolve_device(o.device);  // config.json records the device actually used
  o.shuffle = !no_shuffle;
  o.recompute = !no_recompute;
  o.deterministic = !nondeterministic;
  o.model.filters = parse_filters(filters, "--filters");
  const std::map<std::string, OptimizerKind> opts = {{"sgd", OptimizerKind::SGD}, {"adam", OptimizerKind::Adam},
                                                     {"adamw", OptimizerKind::AdamW}, {"nadam", OptimizerKind::Nadam}};
  const std::map<std::string, LossKind> losses = {{"bce", LossKind::BCE}, {"dice", LossKind::Dice},
                                                  {"bce+dice", LossKind::BCEDice}};
  if (!opts.count(optimizer)) fail("--optimizer must be sgd, adam, adamw or nadam, got '", optimizer, "'");
  if (!losses.count(loss)) fail("--loss must be bce, dice or bce+dice, got '", loss, "'");
  o.optimizer = opts.at(optimizer);
  o.loss = losses.at(loss);
  o.stop = &g_stop;
  std::signal(SIGINT, on_sigint);

  const bool tty = isatty(fileno(stderr));
  const auto t_start = std::chrono::steady_clock::now();
  int64_t done = 0;
  ProgressFn progress = [&](int epoch, int64_t s, int64_t per, double l, double ips) {
    ++done;
    if (!tty) return;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    int64_t total = per * o.epochs;
    if (o.max_steps > 0) total = std::min<int64_t>(total, o.max_steps);  // where this run stops
    const double eta = el / double(done) * double(std::max<int64_t>(0, total - (int64_t(epoch - 1) * per + s)));
    const int width = 24, fill = int(width * double(s) / double(per));
    std::fprintf(stderr, "\repoch %d/%d [%s%s] %lld/%lld  loss %.4f  %.1f img/s  ETA %dm%02ds   ", epoch, o.epochs,
                 std::string(size_t(fill), '#').c_str(), std::string(size_t(width - fill), '.').c_str(),
                 (long long)s, (long long)per, l, ips, int(eta) / 60, int(eta) % 60);
    if (s == per) std::fprintf(stderr, "\r%*s\r", 100, "");
    std::fflush(stderr);
  };
  TrainResult r = train_model(o, std::cout, progress);
  std::signal(SIGINT, SIG_DFL);
  if (tty) std::fprintf(stderr, "\r%*s\r", 100, "");
  std::cout << (r.interrupted ? "stopped" : "done") << ": " << r.steps << " steps in " << std::setprecision(4)
            << r.seconds << " s; best validation Dice " << r.best_dice << " at epoch " << r.best_epoch
            << "; data loader " << std::setprecision(3) << r.loader_images_per_s << " img/s\n";
  if (!o.out_dir.empty()) std::cout << "run folder: " << o.out_dir << "\n";
  return r.interrupted ? 130 : 0;
}

}  // namespace rpp::cli
