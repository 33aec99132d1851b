// tools/cli/cmd_eval.cpp — `resunetpp eval`: metrics of a checkpoint on a dataset split.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "model/dataset.h"
#include "model/trainer.h"
#include "runtime/checkpoint.h"
#include "runtime/fileio.h"
#include "runtime/json.h"
#include "runtime/safetensors.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {

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

}  // namespace rpp::cli
