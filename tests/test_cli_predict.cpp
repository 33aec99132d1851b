// tests/test_cli_predict.cpp — `resunetpp eval`, `predict` and `check-data` as a user runs them:
// a tiny synthetic set and a one-epoch model, then the files each command writes, checked by
// decoding them, and the errors each bad input gets (non-zero exit, the offending path named).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "model/image_io.h"
#include "model/npy.h"
#include "runtime/fileio.h"
#include "runtime/json.h"

#include "tests/run_command.h"

using namespace rpp;

namespace {

using CliResult = testing_util::CommandResult;

CliResult cli(const std::string& args) {
  return testing_util::run_command(std::string(RESUNETPP_CLI) + " " + args);
}

void sh(const std::string& cmd) { ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd; }

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> v;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

std::vector<std::string> split_csv(const std::string& line) {
  std::vector<std::string> v;
  std::istringstream in(line);
  for (std::string f; std::getline(in, f, ',');) v.push_back(f);
  return v;
}

// The line of `out` that mentions `path`, or "".
std::string line_naming(const std::string& out, const std::string& path) {
  for (const std::string& l : lines_of(out))
    if (has(l, path)) return l;
  return "";
}

Image grey(int w, int h, uint8_t v) {
  Image m;
  m.w = w;
  m.h = h;
  m.c = 1;
  m.px.assign(size_t(w) * size_t(h), v);
  return m;
}

class CliPredict : public ::testing::Test {
 protected:
  static std::string root, data, run_dir, ckpt;

  static void SetUpTestSuite() {
    root = "/tmp/rpp_test_cli_predict_" + std::to_string(getpid());
    data = root + "/data";
    run_dir = root + "/run";
    ckpt = run_dir + "/checkpoint_best.safetensors";
    std::system(("rm -rf " + root).c_str());
    make_dirs(root);
    CliResult r = cli("synth --out " + data + " --count 12 --size 32 --seed 4");
    ASSERT_EQ(r.code, 0) << r.out;
    r = cli("train --data " + data + " --out " + run_dir +
            " --size 32 --batch 4 --epochs 1 --filters 8,8,16,16,32 --seed 2");
    ASSERT_EQ(r.code, 0) << r.out;
    ASSERT_TRUE(file_exists(ckpt)) << r.out;
  }
  static void TearDownTestSuite() { std::system(("rm -rf " + root).c_str()); }
  void SetUp() override {
    if (!file_exists(ckpt)) GTEST_SKIP() << "setup failed: no checkpoint";
  }
};

std::string CliPredict::root, CliPredict::data, CliPredict::run_dir, CliPredict::ckpt;

}  // namespace

TEST(CliPredictHelp, CommandsAndFlagsAreListed) {
  CliResult r = cli("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "predict") && has(r.out, "check-data")) << r.out;
  r = cli("predict --help");
  EXPECT_EQ(r.code, 0);
  for (const char* f : {"--checkpoint", "--input", "--out", "--size", "--threshold", "--tta", "--logits"})
    EXPECT_TRUE(has(r.out, f)) << f << "\n" << r.out;
  r = cli("eval --help");
  EXPECT_EQ(r.code, 0);
  for (const char* f : {"--split", "--split-dir", "--batch", "--tta", "--native", "--out", "metrics.json"})
    EXPECT_TRUE(has(r.out, f)) << f << "\n" << r.out;
  r = cli("check-data --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(has(r.out, "--max-nonbinary")) << r.out;
  r = cli("check-data");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "needs a dataset folder")) << r.out;
}

TEST_F(CliPredict, EvalWritesMetricsJsonAndPerImageCsv) {
  const std::string out = root + "/eval_all";
  CliResult r = cli("eval --checkpoint " + ckpt + " --data " + data + " --split all --out " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "miou (mean of background and polyp IoU)")) << r.out;
  EXPECT_TRUE(has(r.out, "empty-mask rule: an image whose ground truth and prediction are both empty scores 1"))
      << r.out;
  const json::Value j = json::parse(read_file(out + "/metrics.json"), "metrics.json");
  EXPECT_EQ(j["images"].as_int(), 12);
  EXPECT_EQ(j["size"].as_int(), 32);
  EXPECT_EQ(j["resolution"].as_string(), "model");
  EXPECT_FALSE(j["tta"].as_bool());
  for (const char* k : {"dice", "iou", "precision", "recall", "f2", "accuracy", "miou"}) {
    for (const char* agg : {"mean_per_image", "pooled"}) {
      const double v = j[agg][k].as_double();
      EXPECT_GE(v, 0.0) << agg << "." << k;
      EXPECT_LE(v, 1.0) << agg << "." << k;
    }
  }
  EXPECT_EQ(j["miou_definition"].as_string(), "miou (mean of background and polyp IoU)");
  EXPECT_TRUE(has(j["empty_mask_rule"].as_string(), "both empty scores 1"));
  // Pooled metrics are those of the pooled counts, which cover every pixel once.
  const json::Value& c = j["pooled_confusion"];
  const double tp = double(c["tp"].as_int()), fp = double(c["fp"].as_int()), fn = double(c["fn"].as_int()),
               tn = double(c["tn"].as_int());
  EXPECT_EQ(tp + fp + fn + tn, 12.0 * 32 * 32);
  if (tp + fp + fn > 0) {
    EXPECT_NEAR(j["pooled"]["dice"].as_double(), 2 * tp / (2 * tp + fp + fn), 1e-12);
  }

  const std::vector<std::string> rows = lines_of(read_file(out + "/per_image.csv"));
  ASSERT_EQ(rows.size(), 13u);
  EXPECT_EQ(rows[0], "stem,dice,iou,precision,recall,f2,accuracy,tp,fp,fn,tn");
  double dice_sum = 0;
  for (size_t i = 1; i < rows.size(); ++i) {
    const std::vector<std::string> f = split_csv(rows[i]);
    ASSERT_EQ(f.size(), 11u) << rows[i];
    char stem[32];
    std::snprintf(stem, sizeof stem, "synth_%05zu", i - 1);
    EXPECT_EQ(f[0], stem) << rows[i];
    EXPECT_EQ(std::atoll(f[7].c_str()) + std::atoll(f[8].c_str()) + std::atoll(f[9].c_str()) +
                  std::atoll(f[10].c_str()),
              32 * 32);
    dice_sum += std::atof(f[1].c_str());
  }
  EXPECT_NEAR(dice_sum / 12, j["mean_per_image"]["dice"].as_double(), 1e-5);

  // The default split is the held-out test split stored in the checkpoint: one row per image.
  r = cli("eval --checkpoint " + ckpt + " --data " + data + " --out " + root + "/eval_test");
  ASSERT_EQ(r.code, 0) << r.out;
  const json::Value t = json::parse(read_file(root + "/eval_test/metrics.json"), "metrics.json");
  EXPECT_EQ(t["split"].as_string(), "test");
  EXPECT_GE(t["images"].as_int(), 1);
  EXPECT_EQ(int64_t(lines_of(read_file(root + "/eval_test/per_image.csv")).size()), t["images"].as_int() + 1);
}

TEST_F(CliPredict, EvalOutAsJsonFileKeepsTheOldConvention) {
  const std::string out = root + "/old/eval.json";
  CliResult r = cli("eval --checkpoint " + ckpt + " --data " + data + " --split all --out " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  const json::Value j = json::parse(read_file(out), "eval.json");
  EXPECT_EQ(j["images"].as_int(), 12);
  EXPECT_TRUE(file_exists(root + "/old/eval_per_image.csv"));
}

TEST_F(CliPredict, EvalTtaAndNativeResolution) {
  CliResult r = cli("eval --checkpoint " + ckpt + " --data " + data + " --split all --tta --out " + root + "/eval_tta");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "flip TTA")) << r.out;
  EXPECT_TRUE(json::parse(read_file(root + "/eval_tta/metrics.json"), "m")["tta"].as_bool());
  // At 16x16 with --native, counts are over the original 32x32 masks; without it, over 16x16.
  for (bool native : {false, true}) {
    const std::string out = root + (native ? "/eval_native" : "/eval_16");
    r = cli("eval --checkpoint " + ckpt + " --data " + data + " --split all --size 16 --batch 5 --out " + out +
            (native ? " --native" : ""));
    ASSERT_EQ(r.code, 0) << r.out;
    const json::Value j = json::parse(read_file(out + "/metrics.json"), "m");
    EXPECT_EQ(j["resolution"].as_string(), native ? "native" : "model");
    EXPECT_EQ(j["size"].as_int(), 16);
    const json::Value& c = j["pooled_confusion"];
    EXPECT_EQ(c["tp"].as_int() + c["fp"].as_int() + c["fn"].as_int() + c["tn"].as_int(),
              12 * (native ? 32 * 32 : 16 * 16));
  }
}

TEST_F(CliPredict, PredictFolderWritesMasksOverlaysAndLogits) {
  const std::string in = root + "/pred_in", out = root + "/pred_out";
  make_dirs(in);
  sh("cp " + data + "/images/synth_00000.png " + data + "/images/synth_00001.png " + in + "/");
  // One image at another size and format-independent name case: outputs follow its own size.
  save_png(in + "/Odd.PNG", resize_bilinear(load_image(data + "/images/synth_00002.png", 3), 40, 24));
  write_file_atomic(in + "/readme.txt", "not an image");
  CliResult r = cli("predict --checkpoint " + ckpt + " --input " + in + " --out " + out + " --logits");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "[3/3]")) << r.out;
  EXPECT_TRUE(has(r.out, "images/s")) << r.out;
  EXPECT_TRUE(has(r.out, "readme.txt")) << r.out;  // reported as skipped
  struct Want {
    std::string stem;
    int w, h;
  };
  for (const Want& want : {Want{"synth_00000", 32, 32}, Want{"synth_00001", 32, 32}, Want{"Odd", 40, 24}}) {
    const Image mask = load_image(out + "/masks/" + want.stem + ".png", 1);
    EXPECT_EQ(mask.w, want.w) << want.stem;
    EXPECT_EQ(mask.h, want.h) << want.stem;
    for (uint8_t v : mask.px) ASSERT_TRUE(v == 0 || v == 255) << want.stem;
    const Image ov = load_image(out + "/overlays/" + want.stem + ".png", 3);
    ASSERT_EQ(ov.w, want.w);
    ASSERT_EQ(ov.h, want.h);
    // Outside the predicted mask the overlay is the original image.
    const std::string src = want.stem == "Odd" ? in + "/Odd.PNG" : in + "/" + want.stem + ".png";
    const Image img = load_image(src, 3);
    for (size_t i = 0; i < mask.px.size(); ++i) {
      if (mask.px[i] != 0) continue;
      for (size_t ch = 0; ch < 3; ++ch) ASSERT_EQ(ov.px[i * 3 + ch], img.px[i * 3 + ch]) << want.stem << " " << i;
    }
    const NpyArray lg = read_npy_f32(out + "/logits/" + want.stem + ".npy");
    EXPECT_EQ(lg.shape, (std::vector<int64_t>{32, 32})) << want.stem;
    ASSERT_EQ(lg.data.size(), 32u * 32u);
    if (want.w == 32 && want.h == 32) {  // no resampling: the mask is exactly logit >= 0
      for (size_t i = 0; i < lg.data.size(); ++i) ASSERT_EQ(mask.px[i] == 255, lg.data[i] >= 0.f) << i;
    }
  }
  EXPECT_FALSE(file_exists(out + "/masks/readme.png"));
}

TEST_F(CliPredict, PredictSingleFileWithTta) {
  const std::string out = root + "/pred_one";
  CliResult r = cli("predict --checkpoint " + ckpt + " --input " + data + "/images/synth_00005.png --out " + out +
              " --tta --threshold 0.4");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "[1/1]")) << r.out;
  const Image m = load_image(out + "/masks/synth_00005.png", 1);
  EXPECT_EQ(m.w, 32);
  EXPECT_TRUE(file_exists(out + "/overlays/synth_00005.png"));
  EXPECT_FALSE(file_exists(out + "/logits"));
}

TEST_F(CliPredict, BadInputsFailNamingThePath) {
  const std::string img = data + "/images/synth_00000.png";
  // Missing checkpoint.
  CliResult r = cli("predict --checkpoint " + root + "/nope.safetensors --input " + img + " --out " + root + "/x1");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, root + "/nope.safetensors")) << r.out;
  // Truncated checkpoint (half its bytes), for predict and eval.
  const std::string bytes = read_file(ckpt), cut = root + "/half.safetensors";
  write_file_atomic(cut, bytes.substr(0, bytes.size() / 2));
  r = cli("predict --checkpoint " + cut + " --input " + img + " --out " + root + "/x2");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, cut)) << r.out;
  r = cli("eval --checkpoint " + cut + " --data " + data);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, cut)) << r.out;
  // A non-image file given as --input.
  const std::string txt = root + "/notes.txt";
  write_file_atomic(txt, "hello, I am not an image\n");
  r = cli("predict --checkpoint " + ckpt + " --input " + txt + " --out " + root + "/x3");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(line_naming(r.out, txt), "not a PNG, JPEG or BMP")) << r.out;
  // A broken file inside a folder: named, the other images still written, exit 1.
  const std::string in = root + "/bad_in";
  make_dirs(in);
  sh("cp " + img + " " + in + "/good.png");
  write_file_atomic(in + "/broken.png", "garbage bytes");
  r = cli("predict --checkpoint " + ckpt + " --input " + in + " --out " + root + "/x4");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, in + "/broken.png")) << r.out;
  EXPECT_TRUE(file_exists(root + "/x4/masks/good.png"));
  // An --out under a regular file.
  r = cli("predict --checkpoint " + ckpt + " --input " + img + " --out " + txt + "/sub");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, txt)) << r.out;
  EXPECT_TRUE(has(r.out, "--out")) << r.out;
  r = cli("eval --checkpoint " + ckpt + " --data " + data + " --out " + txt + "/sub");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, txt)) << r.out;
  // A missing --input, and a bad threshold.
  r = cli("predict --checkpoint " + ckpt + " --input " + root + "/none --out " + root + "/x5");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, root + "/none")) << r.out;
  r = cli("predict --checkpoint " + ckpt + " --input " + img + " --out " + root + "/x6 --threshold 1.5");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "--threshold")) << r.out;
}

TEST_F(CliPredict, CheckDataOnACleanFolder) {
  CliResult r = cli("check-data " + data);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "checked 12 pairs")) << r.out;
  EXPECT_TRUE(has(r.out, "0 errors")) << r.out;
  r = cli("check-data --data " + data);  // the flag form
  EXPECT_EQ(r.code, 0) << r.out;
}

TEST_F(CliPredict, CheckDataListsEveryProblemWithItsFile) {
  const std::string d = root + "/messy";
  sh("cp -r " + data + " " + d);
  const std::string I = d + "/images/", M = d + "/masks/";
  sh("cp " + I + "synth_00000.png " + I + "extra.png");   // image without mask
  sh("cp " + M + "synth_00000.png " + M + "orphan.png");  // mask without image
  const std::string png = read_file(I + "synth_00001.png");
  write_file_atomic(I + "synth_00001.png", png.substr(0, png.size() / 2));  // corrupt (truncated) PNG
  write_file_atomic(M + "synth_00002.png", "");                             // zero-byte file
  save_png(M + "synth_00003.png", grey(16, 16, 255));                        // size mismatch
  Image ramp = grey(32, 32, 0);
  for (size_t i = 0; i < ramp.px.size(); ++i) ramp.px[i] = uint8_t(i % 256);
  save_png(M + "synth_00004.png", ramp);  // not binary: most pixels grey
  Image noisy = load_image(M + "synth_00005.png", 1);
  noisy.px[0] = 100;                      // one grey pixel in 1024: JPEG-like noise, a warning
  save_png(M + "synth_00005.png", noisy);
  save_png(M + "synth_00006.png", grey(32, 32, 0));  // empty mask: a warning
  CliResult r = cli("check-data " + d);
  EXPECT_EQ(r.code, 1) << r.out;
  auto expect_line = [&](const std::string& path, const std::string& kind, const std::string& what) {
    const std::string l = line_naming(r.out, path);
    EXPECT_TRUE(has(l, kind) && has(l, what)) << path << ": '" << l << "'\n" << r.out;
  };
  expect_line(I + "extra.png", "error", "image without a mask");
  expect_line(M + "orphan.png", "error", "mask without an image");
  expect_line(I + "synth_00001.png", "error", "corrupt or truncated PNG");
  expect_line(M + "synth_00002.png", "error", "empty (0 bytes)");
  expect_line(M + "synth_00003.png", "error", "mask is 16x16 but its image");
  expect_line(M + "synth_00004.png", "error", "not binary");
  expect_line(M + "synth_00005.png", "warning", "1 of 1024 pixels (0.10%)");
  expect_line(M + "synth_00006.png", "warning", "empty mask");
  EXPECT_TRUE(has(r.out, "6 errors, 2 warnings")) << r.out;
  // Warnings alone do not fail the check.
  const std::string w = root + "/warn_only";
  sh("cp -r " + data + " " + w);
  save_png(w + "/masks/synth_00006.png", grey(32, 32, 0));
  r = cli("check-data " + w);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "0 errors, 1 warning")) << r.out;
  // 0/1 label masks read as empty: an error that says so.
  save_png(w + "/masks/synth_00007.png", grey(32, 32, 1));
  r = cli("check-data " + w);
  EXPECT_EQ(r.code, 1) << r.out;
  expect_line(w + "/masks/synth_00007.png", "error", "0/1 label map");
  // A folder without masks/ is one clear error.
  r = cli("check-data " + d + "/images");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(has(r.out, "no masks/ subfolder")) << r.out;
}
