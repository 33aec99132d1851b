// tools/cli/cmd_eval.cpp — `resunetpp eval`: metrics of a checkpoint on a dataset split, per image
// and pooled, at the model's resolution or each image's own (--native), optionally with flip TTA.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "model/dataset.h"
#include "model/image_io.h"
#include "model/inference.h"
#include "model/metrics.h"
#include "runtime/fileio.h"
#include "runtime/json.h"
#include "runtime/executor.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {
namespace {

const char* kEmptyRule =
    "an image whose ground truth and prediction are both empty scores 1 on dice, iou, precision, recall "
    "and f2; if only one of them is empty it scores 0 (accuracy is always (tp + tn) / pixels; the "
    "background IoU inside miou follows the same rule for an image that is all polyp)";
const char* kMiouLabel = "miou (mean of background and polyp IoU)";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char ch : s) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
  return q + "\"";
}

std::string fmt6(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.6f", v);
  return b;
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  std::string checkpoint, data, split = "test", split_dir, out;
  int size = 0, batch = 8;
  bool tta = false, native = false;
  Flags f("eval",
          "Evaluate a checkpoint on a dataset split: Dice, IoU, precision, recall, F2 and accuracy of the\n"
          "polyp class at threshold 0.5, averaged per image and pooled over all pixels, and miou (mean of\n"
          "background and polyp IoU). Empty-mask rule: an image whose ground truth and prediction are\n"
          "both empty scores 1; if only one is empty it scores 0.\n"
          "Metrics are computed at the evaluation resolution (--size) unless --native is given, which\n"
          "upsamples each probability map bilinearly to the image's own size, thresholds it at 0.5 and\n"
          "compares it with the original mask thresholded at 128.\n"
          "--out DIR writes DIR/metrics.json and DIR/per_image.csv; --out FILE.json writes FILE.json and\n"
          "FILE_per_image.csv beside it. Without --out only the table is printed.");
  f.add("checkpoint", &checkpoint, "checkpoint (.safetensors)", "FILE");
  f.add("data", &data, "dataset folder with images/ and masks/", "DIR");
  f.add("split", &split, "test | val | train | all", "NAME");
  f.add("split-dir", &split_dir, "folder with <split>.txt; else the seeded split stored in the checkpoint", "DIR");
  f.add("size", &size, "evaluation resolution, a multiple of 8 (0: the checkpoint's training size)");
  f.add("batch", &batch, "images per forward pass");
  f.add("tta", &tta, "average the probabilities of the image and its horizontal and vertical flips");
  std::string device = "auto";
  f.add("device", &device, "auto (cuda:0 when this build has CUDA and a GPU is visible, else cpu), cpu, cuda or cuda:N; the CUDA path is new and not yet verified on a GPU", "DEV");
  std::string precision_arg = "fp32";
  f.add("precision", &precision_arg,
        "fp32, or bf16 (cuda only: activations stored in bf16, convolutions on bf16 tensor cores, fp32 "
        "arithmetic; not yet verified on a GPU)",
        "NAME");
  f.add("native", &native, "metrics at each image's original size instead of the evaluation resolution");
  f.add("out", &out, "output folder (metrics.json, per_image.csv) or a .json file path", "DIR|FILE");
  f.require("checkpoint");
  f.require("data");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  device = resolve_device(device);
  if (split != "test" && split != "val" && split != "train" && split != "all")
    fail("--split must be test, val, train or all, got '", split, "'");
  if (batch < 1) fail("--batch must be at least 1, got ", batch);
  if (size != 0 && (size < 8 || size % 8 != 0)) fail("--size must be a positive multiple of 8, got ", size);

  ExecOptions eo;
  eo.precision = parse_precision(precision_arg);
  Predictor pred(checkpoint, size, batch, device, eo);
  size = pred.size();
  // Output paths before the data, so that an unwritable --out fails before the long part.
  std::string json_path, csv_path;
  if (!out.empty()) {
    try {
      if (ends_with(out, ".json")) {
        json_path = out;
        csv_path = out.substr(0, out.size() - 5) + "_per_image.csv";
        const size_t slash = out.find_last_of('/');
        if (slash != std::string::npos && slash > 0) make_dirs(out.substr(0, slash));
      } else {
        make_dirs(out);
        json_path = out + "/metrics.json";
        csv_path = out + "/per_image.csv";
      }
    } catch (const Error& e) {
      fail("--out '", out, "' cannot be written: ", e.what());
    }
  }

  std::vector<Sample> all;
  try {
    all = scan_dataset(data);
  } catch (const Error& e) {
    fail(e.what(), " (run 'resunetpp check-data ", data, "' for a full report)");
  }
  std::vector<Sample> sel;
  if (split == "all") {
    sel = all;
  } else if (!split_dir.empty()) {
    sel = read_split_file(split_dir + "/" + split + ".txt", all);
  } else {
    auto num = [&](const char* k, double d) {
      const std::string v = metadata_get(pred.metadata(), k);
      return v.empty() ? d : std::atof(v.c_str());
    };
    SplitFractions fr;
    fr.val = num("val_fraction", 0.1);
    fr.test = num("test_fraction", 0.1);
    fr.train = 1 - fr.val - fr.test;
    std::vector<Sample> tr, va, te;
    split_seeded(all, uint64_t(num("seed", 1)), fr, &tr, &va, &te);
    sel = split == "train" ? tr : split == "val" ? va : te;
  }
  if (sel.empty()) fail("split '", split, "' of ", data, " is empty");

  const auto t0 = std::chrono::steady_clock::now();
  LoadedDataset ds = load_dataset(sel, size);
  const std::vector<float> logits = pred.logits(ds.images, ds.n, tta);
  const size_t plane = size_t(size) * size_t(size);
  std::vector<Confusion> per(size_t(ds.n));
  for (int i = 0; i < ds.n; ++i) {
    const float* lg = logits.data() + size_t(i) * plane;
    if (native) {
      const Image truth = load_image(sel[size_t(i)].mask_path, 1);
      const std::vector<float> prob = probabilities_from_logits(lg, plane);
      per[size_t(i)] = native_confusion(prob.data(), size, truth, 0.5);
    } else {
      per[size_t(i)] = confusion_from_logits(lg, ds.masks.data() + size_t(i) * plane, int64_t(plane));
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const char* names[7] = {"dice", "iou", "precision", "recall", "f2", "accuracy", "miou"};
  double (*fns[7])(const Confusion&) = {dice, iou, precision, recall, f2, accuracy, mean_iou};
  Confusion pooled;
  double sums[7] = {0, 0, 0, 0, 0, 0, 0};
  int empty_truth = 0;
  std::string csv = "stem,dice,iou,precision,recall,f2,accuracy,tp,fp,fn,tn\n";
  for (int i = 0; i < ds.n; ++i) {
    const Confusion& c = per[size_t(i)];
    pooled += c;
    if (c.tp + c.fn == 0) ++empty_truth;
    for (int k = 0; k < 7; ++k) sums[k] += fns[k](c);
    csv += csv_field(ds.stems[size_t(i)]);
    for (int k = 0; k < 6; ++k) csv += "," + fmt6(fns[k](c));
    csv += "," + std::to_string(c.tp) + "," + std::to_string(c.fp) + "," + std::to_string(c.fn) + "," +
           std::to_string(c.tn) + "\n";
  }

  json::Value mean = json::Value::object(), pool = json::Value::object(), conf = json::Value::object();
  const std::string where = native ? "native resolution (each image's own size)"
                                   : std::to_string(size) + "x" + std::to_string(size);
  std::cout << "evaluated " << ds.n << " images (split " << split << ") at " << where << (tta ? ", flip TTA" : "")
            << " in " << std::fixed << std::setprecision(2) << seconds << " s ("
            << std::setprecision(1) << (seconds > 0 ? ds.n / seconds : 0.0) << " images/s)\n"
            << std::left << std::setw(42) << "metric (threshold 0.5)" << std::setw(12) << "per-image"
            << "pooled\n";
  for (int k = 0; k < 7; ++k) {
    const double m = sums[k] / ds.n, p = fns[k](pooled);
    mean.set(names[k], m);
    pool.set(names[k], p);
    std::cout << std::left << std::setw(42) << (k == 6 ? kMiouLabel : names[k]) << std::setw(12) << std::fixed
              << std::setprecision(4) << m << p << "\n";
  }
  conf.set("tp", pooled.tp).set("fp", pooled.fp).set("fn", pooled.fn).set("tn", pooled.tn);
  std::cout << "empty-mask rule: " << kEmptyRule << "\n"
            << empty_truth << " of " << ds.n << " images have an empty ground truth\n";

  if (!json_path.empty()) {
    json::Value j = json::Value::object();
    j.set("checkpoint", checkpoint);
    j.set("data", data);
    j.set("split", split);
    j.set("images", ds.n);
    j.set("size", size);
    j.set("resolution", native ? "native" : "model");
    j.set("tta", tta);
    j.set("device", device);
    j.set("precision", precision_arg);
    j.set("threshold", 0.5);
    j.set("mean_per_image", mean);
    j.set("pooled", pool);
    j.set("pooled_confusion", conf);
    j.set("miou_definition", kMiouLabel);
    j.set("empty_mask_rule", kEmptyRule);
    j.set("empty_ground_truth_images", empty_truth);
    j.set("seconds", seconds);
    write_file_atomic(json_path, json::dump(j, 2) + "\n");
    write_file_atomic(csv_path, csv);
    std::cout << "wrote " << json_path << " and " << csv_path << "\n";
  }
  return 0;
}

}  // namespace rpp::cli
