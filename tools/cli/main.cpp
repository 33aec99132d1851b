// tools/cli/main.cpp — `resunetpp`: summary, synth, train and eval.
// Run `resunetpp --help` or `resunetpp COMMAND --help` for the flags of each command.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "kernels/cpu/parallel.h"
#include "model/dataset.h"
#include "model/resunetpp.h"
#include "model/synth.h"
#include "model/trainer.h"
#include "runtime/autodiff.h"
#include "runtime/checkpoint.h"
#include "runtime/executor_cpu.h"
#include "runtime/fileio.h"
#include "runtime/json.h"
#include "runtime/safetensors.h"
#include "tools/cli/flags.h"

namespace rpp::cli {
namespace {

std::vector<int> parse_filters(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long x = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end) fail("--filters expects five comma-separated integers, got '", s, "'");
    v.push_back(int(x));
  }
  if (v.size() != 5) fail("--filters expects five comma-separated integers, got '", s, "'");
  return v;
}

std::string mib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / 1048576.0);
  return b;
}

std::string thousands(int64_t v) {
  std::string s = std::to_string(v), r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
int cmd_summary(int argc, char** argv) {
  int size = 256, batch = 16;
  std::string filters = "16,32,64,128,256";
  Flags f("summary", "Print the network's layers, parameter count, FLOPs and the memory plans\n"
                     "for training and inference at the given input size and batch.");
  f.add("size", &size, "input height and width (multiple of 8)");
  f.add("batch", &batch, "batch size of the plans");
  f.add("filters", &filters, "channel counts of stem, encoders and bridge", "LIST");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  ModelConfig cfg;
  cfg.filters = parse_filters(filters);
  ModelGraph train = build_resunetpp(cfg, batch, size, size, true);
  ModelGraph infer = build_resunetpp(cfg, batch, size, size, false);
  const int64_t fwd_flops = infer.graph.forward_flops();
  append_backward_and_update(train.graph, train.loss, OptimizerKind::Adam);

  std::cout << "ResUNet++  filters " << filters << "  input " << size << "x" << size << "x" << cfg.in_channels
            << "  batch " << batch << "\n\n";
  // One row per top-level module, in execution order.
  struct Row { std::string shape; int64_t params = 0, flops = 0; int nodes = 0; };
  std::vector<std::string> order;
  std::map<std::string, Row> rows;
  const Graph& g = infer.graph;
  for (const Node& n : g.nodes()) {
    const std::string mod = n.name.substr(0, n.name.find('.'));
    if (!rows.count(mod)) order.push_back(mod);
    Row& r = rows[mod];
    r.flops += n.flops;
    r.nodes++;
    if (!n.out.empty()) {
      Shape s = g.tensor(n.out[0]).shape;
      r.shape = shape_str(s);
    }
  }
  for (const TensorInfo& t : g.tensors())
    if (t.kind == TensorKind::Param) rows[t.name.substr(0, t.name.find('.'))].params += numel(t.shape);
  std::cout << std::left << std::setw(10) << "module" << std::setw(24) << "output (N,H,W,C)" << std::right
            << std::setw(12) << "params" << std::setw(16) << "GFLOP/image" << std::setw(8) << "ops" << "\n";
  for (const std::string& m : order) {
    const Row& r = rows[m];
    std::cout << std::left << std::setw(10) << m << std::setw(24) << r.shape << std::right << std::setw(12)
              << thousands(r.params) << std::setw(16) << std::fixed << std::setprecision(3)
              << double(r.flops) / batch / 1e9 << std::setw(8) << r.nodes << "\n";
  }
  std::cout.unsetf(std::ios::fixed);
  int64_t running = 0, counters = 0;
  for (const TensorInfo& t : g.tensors())
    if (t.kind == TensorKind::Buffer) (t.dtype == DType::I64 ? counters : running) += numel(t.shape);
  std::cout << "\nparameters: " << thousands(count_params(g)) << " trainable, " << thousands(running)
            << " BN running statistics, " << counters << " BN batch counters\n";
  std::cout << "forward: " << std::setprecision(4) << double(fwd_flops) / batch / 1e9
            << " GFLOP per image; training step: " << double(train.graph.forward_flops() + 0) / batch / 1e9
            << " GFLOP forward + backward ";
  int64_t bwd = 0;
  for (const Node& n : train.graph.nodes())
    if (n.op > OpKind::Loss) bwd += n.flops;
  std::cout << double(bwd) / batch / 1e9 << " = " << double(train.graph.forward_flops() + bwd) / batch / 1e9
            << " GFLOP per image (multiply-add = 2)\n\n";
  for (auto* mg : {&train, &infer}) {
    Plan p = make_plan(mg->graph, PlanMode::BestFit, cpu_workspace_bytes);
    const bool tr = mg == &train;
    std::cout << "plan (" << (tr ? "training, adam" : "inference") << ", batch " << batch << ", cpu): "
              << mg->graph.num_nodes() << " nodes, " << mg->graph.num_tensors() << " tensors\n"
              << "  arena " << mib(p.arena_bytes) << " (" << p.arena_bytes << " bytes) vs naive sum "
              << mib(p.naive_bytes) << " (" << p.naive_bytes << " bytes): " << std::setprecision(3)
              << 100.0 * (1.0 - double(p.arena_bytes) / double(p.naive_bytes)) << "% saved\n"
              << "  workspace " << mib(p.workspace_bytes) << ", parameters" << (tr ? " + optimiser state " : " ")
              << mib(p.persistent_bytes) << "\n";
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
int cmd_synth(int argc, char** argv) {
  std::string out;
  int count = 200, size = 256;
  uint64_t seed = 1;
  Flags f("synth", "Write a synthetic polyp-like dataset in the Kvasir-SEG layout:\n"
                   "OUT/images/synth_NNNNN.png (RGB) and OUT/masks/synth_NNNNN.png (0/255).");
  f.add("out", &out, "output folder (created)", "DIR");
  f.add("count", &count, "number of image/mask pairs");
  f.add("size", &size, "image height and width in pixels");
  f.add("seed", &seed, "random seed (same seed, same files)");
  f.require("out");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  if (count < 1) fail("--count must be at least 1, got ", count);
  if (size < 8 || size > 4096) fail("--size must be between 8 and 4096, got ", size);
  auto t0 = std::chrono::steady_clock::now();
  generate_synthetic_dataset(out, count, size, seed);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "wrote " << count << " synthetic " << size << "x" << size << " images and masks to " << out
            << " in " << std::setprecision(3) << s << " s\n";
  return 0;
}

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
int cmd_eval(int argc, char** argv) {
  std::string checkpoint, data, split = "test", split_dir, out;
  int size = 0, batch = 8;
  Flags f("eval", "Evaluate a checkpoint on a dataset split: Dice, IoU, precision, recall, F2 and\n"
                  "accuracy of the polyp class at threshold 0.5, averaged per image and pooled.\n"
                  "An image whose ground truth and prediction are both empty scores 1.");
  f.add("checkpoint", &checkpoint, "checkpoint (.safetensors)", "FILE");
  f.add("data", &data, "dataset folder with images/ and masks/", "DIR");
  f.add("split", &split, "train | val | test | all", "NAME");
  f.add("split-dir", &split_dir, "folder with <split>.txt; else the seeded split stored in the checkpoint", "DIR");
  f.add("size", &size, "evaluation resolution (0: the checkpoint's training size)");
  f.add("batch", &batch, "batch size");
  f.add("out", &out, "write the metrics as JSON to this file", "FILE");
  f.require("checkpoint");
  f.require("data");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  StFile meta_file = read_safetensors(checkpoint);
  ModelConfig cfg;
  if (auto fl = meta_file.metadata_value("filters"); !fl.empty()) cfg.filters = parse_filters(fl);
  if (size == 0) {
    const std::string s = meta_file.metadata_value("size");
    size = s.empty() ? 256 : std::atoi(s.c_str());
  }
  std::vector<Sample> all = scan_dataset(data), sel;
  if (split == "all") {
    sel = all;
  } else if (!split_dir.empty()) {
    sel = read_split_file(split_dir + "/" + split + ".txt", all);
  } else {
    SplitFractions fr;
    auto num = [&](const char* k, double d) {
      std::string v = meta_file.metadata_value(k);
      return v.empty() ? d : std::atof(v.c_str());
    };
    fr.val = num("val_fraction", 0.1);
    fr.test = num("test_fraction", 0.1);
    fr.train = 1 - fr.val - fr.test;
    std::vector<Sample> tr, va, te;
    split_seeded(all, uint64_t(num("seed", 1)), fr, &tr, &va, &te);
    if (split == "train") sel = tr;
    else if (split == "val") sel = va;
    else if (split == "test") sel = te;
    else fail("--split must be train, val, test or all, got '", split, "'");
  }
  if (sel.empty()) fail("split '", split, "' of ", data, " is empty");
  LoadedDataset ds = load_dataset(sel, size);
  ParamStore store;
  Evaluator ev(cfg, size, batch, store);
  load_checkpoint(checkpoint, ev.graph(), store, false);
  EvalResult r = ev.evaluate(ds, LossKind::BCEDice);
  double sums[6] = {0, 0, 0, 0, 0, 0};
  for (const Confusion& c : r.per_image) {
    sums[0] += dice(c); sums[1] += iou(c); sums[2] += precision(c);
    sums[3] += recall(c); sums[4] += f2(c); sums[5] += accuracy(c);
  }
  const char* names[6] = {"dice", "iou", "precision", "recall", "f2", "accuracy"};
  double (*fns[6])(const Confusion&) = {dice, iou, precision, recall, f2, accuracy};
  json::Value j = json::Value::object(), per = json::Value::object(), pooled = json::Value::object();
  std::cout << "evaluated " << ds.n << " images (" << split << ") at " << size << "x" << size << "\n"
            << std::left << std::setw(12) << "metric" << std::setw(12) << "per-image" << "pooled\n";
  for (int k = 0; k < 6; ++k) {
    const double m = sums[k] / ds.n, p = fns[k](r.pooled);
    per.set(names[k], m);
    pooled.set(names[k], p);
    std::cout << std::left << std::setw(12) << names[k] << std::setw(12) << std::fixed << std::setprecision(4) << m
              << p << "\n";
  }
  std::cout << "empty-mask rule: an image with empty ground truth and empty prediction scores 1\n";
  if (!out.empty()) {
    j.set("checkpoint", checkpoint);
    j.set("data", data);
    j.set("split", split);
    j.set("images", ds.n);
    j.set("size", size);
    j.set("mean_per_image", per);
    j.set("pooled", pooled);
    j.set("empty_mask_rule", "empty ground truth and empty prediction scores 1");
    write_file_atomic(out, json::dump(j, 2) + "\n");
  }
  return 0;
}

void usage(std::ostream& os) {
  os << "usage: resunetpp COMMAND [options]\n\n"
        "ResUNet++ polyp segmentation: training and evaluation engine.\n\n"
        "commands:\n"
        "  summary   layers, parameter count, FLOPs and memory plans\n"
        "  synth     write a synthetic polyp-like dataset (Kvasir-SEG layout)\n"
        "  train     train on a dataset folder\n"
        "  eval      evaluate a checkpoint on a dataset split\n\n"
        "Run 'resunetpp COMMAND --help' for the options of a command.\n";
}

}  // namespace
}  // namespace rpp::cli

int main(int argc, char** argv) {
  using namespace rpp::cli;
  if (argc < 2) {
    usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      usage(std::cout);
      return 0;
    }
    if (cmd == "summary") return cmd_summary(argc, argv);
    if (cmd == "synth") return cmd_synth(argc, argv);
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    std::cerr << "resunetpp: unknown command '" << cmd << "'\n\n";
    usage(std::cerr);
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "resunetpp " << cmd << ": error: " << e.what() << "\n";
    return 1;
  }
}
