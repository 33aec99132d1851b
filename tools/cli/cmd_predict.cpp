// tools/cli/cmd_predict.cpp — `resunetpp predict`: masks, overlays and optional logits for images.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>

#include "model/image_io.h"
#include "model/inference.h"
#include "model/npy.h"
#include "model/overlay.h"
#include "runtime/fileio.h"
#include "runtime/executor.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {

int cmd_predict(int argc, char** argv) {
  std::string checkpoint, input, out;
  int size = 0;
  double threshold = 0.5;
  bool tta = false, want_logits = false;
  Flags f("predict",
          "Segment images with a checkpoint. For each image (one file, or every .png/.jpg/.jpeg/.bmp\n"
          "directly inside a folder) writes OUT/masks/STEM.png (0/255 grey at the image's original size),\n"
          "OUT/overlays/STEM.png (the image with the polyp tinted green and outlined in yellow) and, with\n"
          "--logits, OUT/logits/STEM.npy (float32 logits at the model resolution, shape (size, size)).\n"
          "Preprocessing is training's: bilinear resize to size x size, byte / 255. The probability map is\n"
          "upsampled bilinearly to the original size and thresholded (p >= threshold). Filters and size\n"
          "come from the checkpoint's metadata (without metadata: 16,32,64,128,256 at 256). With --tta the\n"
          "logits are those of the averaged probability. Images that cannot be read are reported and\n"
          "skipped; the exit code is then 1.");
  f.add("checkpoint", &checkpoint, "checkpoint (.safetensors)", "FILE");
  f.add("input", &input, "an image file, or a folder of images", "FILE|DIR");
  f.add("out", &out, "output folder (created)", "DIR");
  f.add("size", &size, "model resolution, a multiple of 8 (0: the checkpoint's training size)");
  f.add("threshold", &threshold, "probability threshold of the masks and overlays");
  f.add("tta", &tta, "average the probabilities of the image and its horizontal and vertical flips");
  std::string device = "auto";
  f.add("device", &device, "auto (cuda:0 when this build has CUDA and a GPU is visible, else cpu), cpu, cuda or cuda:N; the CUDA path is new and not yet verified on a GPU", "DEV");
  std::string precision_arg = "fp32";
  f.add("precision", &precision_arg,
        "fp32, or bf16 (cuda only: activations stored in bf16, convolutions on bf16 tensor cores, fp32 "
        "arithmetic; not yet verified on a GPU)",
        "NAME");
  f.add("logits", &want_logits, "also write the logits as OUT/logits/STEM.npy");
  f.require("checkpoint");
  f.require("input");
  f.require("out");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  device = resolve_device(device);
  if (!(threshold > 0.0 && threshold < 1.0)) fail("--threshold must be between 0 and 1 (exclusive), got ", threshold);
  if (size != 0 && (size < 8 || size % 8 != 0)) fail("--size must be a positive multiple of 8, got ", size);

  std::vector<std::string> files, others;
  if (is_directory(input)) {
    files = list_image_files(input, &others);
    if (files.empty())
      fail("--input folder '", input, "' holds no .png, .jpg, .jpeg or .bmp images",
           others.empty() ? "" : " (only other files, e.g. '" + others[0] + "')");
    for (const std::string& o : others) std::cout << "skipping '" << o << "': not a .png/.jpg/.jpeg/.bmp file\n";
  } else if (file_exists(input)) {
    files.push_back(input);
  } else {
    fail("--input '", input, "' does not exist");
  }
  std::map<std::string, std::string> stems;
  for (const std::string& p : files) {
    const std::string stem = std::filesystem::path(p).stem().string();
    auto [it, inserted] = stems.emplace(stem, p);
    if (!inserted)
      fail("'", it->second, "' and '", p, "' share the stem '", stem, "', so their outputs would collide");
  }

  ExecOptions eo;
  eo.precision = parse_precision(precision_arg);
  Predictor pred(checkpoint, size, 1, device, eo);  // before creating --out: a bad checkpoint leaves nothing behind
  const std::string mask_dir = out + "/masks", overlay_dir = out + "/overlays", logit_dir = out + "/logits";
  try {
    make_dirs(mask_dir);
    make_dirs(overlay_dir);
    if (want_logits) make_dirs(logit_dir);
  } catch (const Error& e) {
    fail("--out '", out, "' cannot be written: ", e.what());
  }
  size = pred.size();
  const size_t plane = size_t(size) * size_t(size);
  const size_t total = files.size();
  std::cout << "predicting " << total << " image" << (total == 1 ? "" : "s") << " at " << size << "x" << size
            << (tta ? " with flip TTA" : "") << ", threshold " << threshold << " -> " << out << "\n";
  std::vector<std::string> failed;
  size_t done = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < total; ++i) {
    const std::string& path = files[i];
    const std::string stem = std::filesystem::path(path).stem().string();
    Image img;
    try {
      img = load_image(path, 3);
    } catch (const Error& e) {
      std::cout << std::flush;
      std::cerr << "[" << i + 1 << "/" << total << "] resunetpp predict: error: " << e.what() << " (skipped)\n";
      failed.push_back(path);
      continue;
    }
    const std::vector<float> lg = pred.predict_logits(img, tta);
    const std::vector<float> prob = probabilities_from_logits(lg.data(), plane);
    const std::vector<float> up = resize_map_bilinear(prob.data(), size, size, img.w, img.h);
    const Image mask = binary_mask(up.data(), img.w, img.h, threshold);
    save_png(mask_dir + "/" + stem + ".png", mask);
    save_png(overlay_dir + "/" + stem + ".png", draw_overlay(img, mask));
    if (want_logits) write_npy_f32(logit_dir + "/" + stem + ".npy", lg.data(), {size, size});
    size_t fg = 0;
    for (uint8_t v : mask.px) fg += v != 0;
    ++done;
    std::cout << "[" << i + 1 << "/" << total << "] " << path << "  " << img.w << "x" << img.h << "  polyp "
              << std::fixed << std::setprecision(1) << 100.0 * double(fg) / double(mask.px.size()) << "%\n"
              << std::flush;
    std::cout.unsetf(std::ios::fixed);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "predicted " << done << " image" << (done == 1 ? "" : "s") << " in " << std::fixed
            << std::setprecision(2) << s << " s (" << std::setprecision(1) << (s > 0 ? double(done) / s : 0.0)
            << " images/s); masks in " << mask_dir << ", overlays in " << overlay_dir
            << (want_logits ? ", logits in " + logit_dir : std::string()) << "\n";
  if (!failed.empty()) {
    std::cerr << "resunetpp predict: " << failed.size() << " of " << total << " input file"
              << (total == 1 ? "" : "s") << " could not be read:";
    for (const std::string& p : failed) std::cerr << " '" << p << "'";
    std::cerr << "\n";
    return 1;
  }
  return 0;
}

}  // namespace rpp::cli
