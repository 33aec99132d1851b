// tools/cli/cmd_check_data.cpp — `resunetpp check-data DIR`: every problem of a dataset folder,
// each named with its file, instead of the loader's first error.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "kernels/cpu/parallel.h"
#include "model/image_io.h"
#include "model/inference.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {
namespace {

struct Issue {
  bool error;
  std::string path, what;
};

// One decode job: an image and/or a mask (either path may be empty for unpaired files).
struct Job {
  std::string image, mask;
};

struct JobResult {
  std::vector<Issue> issues;
  int w = 0, h = 0;
  bool decoded_pair = false, empty_mask = false;
};

std::string percent(double f) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f%%", 100.0 * f);
  return b;
}

JobResult check_job(const Job& j, double max_nonbinary) {
  JobResult r;
  Image img, mask;
  bool img_ok = false, mask_ok = false;
  if (!j.image.empty()) {
    try {
      img = load_image(j.image, 3);
      img_ok = true;
    } catch (const std::exception& e) {
      r.issues.push_back({true, j.image, std::string("unreadable image: ") + e.what()});
    }
  }
  if (!j.mask.empty()) {
    try {
      mask = load_image(j.mask, 1);
      mask_ok = true;
    } catch (const std::exception& e) {
      r.issues.push_back({true, j.mask, std::string("unreadable mask: ") + e.what()});
    }
  }
  if (img_ok) {
    r.w = img.w;
    r.h = img.h;
  }
  if (img_ok && mask_ok && (img.w != mask.w || img.h != mask.h)) {
    std::ostringstream os;
    os << "mask is " << mask.w << "x" << mask.h << " but its image '" << j.image << "' is " << img.w << "x"
       << img.h;
    r.issues.push_back({true, j.mask, os.str()});
  }
  r.decoded_pair = img_ok && mask_ok;
  if (mask_ok) {
    size_t grey = 0, fg = 0;
    uint8_t mx = 0;
    for (uint8_t v : mask.px) {
      grey += v > 10 && v < 245;
      fg += v >= 128;
      mx = std::max(mx, v);
    }
    const double frac = double(grey) / double(mask.px.size());
    if (grey > 0) {
      std::ostringstream os;
      os << "mask is not binary: " << grey << " of " << mask.px.size() << " pixels (" << percent(frac)
         << ") lie strictly between 10 and 245"
         << (frac > max_nonbinary ? " (more than the " + percent(max_nonbinary) + " allowed)"
                                  : " (within the " + percent(max_nonbinary) + " tolerated for JPEG noise)");
      r.issues.push_back({frac > max_nonbinary, j.mask, os.str()});
    }
    if (fg == 0) {
      r.empty_mask = true;
      if (mx >= 1 && mx <= 10) {
        std::ostringstream os;
        os << "mask values are all between 0 and " << int(mx)
           << ": it looks like a 0/1 label map, but masks are thresholded at 128, so it reads as empty "
              "(save masks as 0/255)";
        r.issues.push_back({true, j.mask, os.str()});
      } else {
        r.issues.push_back({false, j.mask, "empty mask: no pixel >= 128, the image counts as having no polyp"});
      }
    }
  }
  return r;
}

}  // namespace

int cmd_check_data(int argc, char** argv) {
  std::string data;
  double max_nonbinary = 0.05;
  Flags f("check-data",
          "resunetpp check-data DIR (or --data DIR): verify a dataset folder (images/ and masks/, paired\n"
          "by file stem) and list every problem with its file.\n"
          "Errors: a missing images/ or masks/ folder, two files with one stem, an image without a mask\n"
          "or a mask without an image, an unreadable, empty or corrupt file, a mask whose size differs\n"
          "from its image's, a mask with more than --max-nonbinary of its pixels strictly between 10 and\n"
          "245, and a mask whose values are all <= 10 but not all 0 (0/1 labels read as empty).\n"
          "Warnings: a non-binary fraction above 0 but within the limit (JPEG compression noise), an empty\n"
          "mask (no pixel >= 128), and files without a .png/.jpg/.jpeg/.bmp extension (ignored).\n"
          "Exit code 0 when there are no errors (warnings allowed), 1 otherwise.");
  f.add("data", &data, "dataset folder (may also be given as the first argument)", "DIR");
  f.add("max-nonbinary", &max_nonbinary, "largest tolerated fraction of mask pixels strictly between 10 and 245");
  int first = 2;
  if (argc > 2 && std::string(argv[2]).rfind("--", 0) != 0 && std::string(argv[2]) != "-h") {
    data = argv[2];
    first = 3;
  }
  if (!f.parse(argc, argv, first, std::cout)) return 0;
  if (data.empty()) fail("'check-data' needs a dataset folder: resunetpp check-data DIR (see --help)");
  if (!(max_nonbinary >= 0.0 && max_nonbinary <= 1.0))
    fail("--max-nonbinary must be between 0 and 1, got ", max_nonbinary);

  std::vector<Issue> issues;
  const DatasetListing L = list_dataset(data);
  for (const std::string& m : L.fatal) issues.push_back({true, data, m});
  for (const std::string& d : L.duplicates) issues.push_back({true, data, "two files with one stem: " + d});
  for (const std::string& p : L.images_without_mask) issues.push_back({true, p, "image without a mask in masks/"});
  for (const std::string& p : L.masks_without_image) issues.push_back({true, p, "mask without an image in images/"});
  for (const std::string& p : L.other_files)
    issues.push_back({false, p, "not a .png/.jpg/.jpeg/.bmp file: ignored by the loader"});

  std::vector<Job> jobs;
  for (const Sample& s : L.pairs) jobs.push_back({s.image_path, s.mask_path});
  for (const std::string& p : L.images_without_mask) jobs.push_back({p, ""});
  for (const std::string& p : L.masks_without_image) jobs.push_back({"", p});
  std::vector<JobResult> results(jobs.size());
  cpu::parallel_for(int64_t(jobs.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      try {
        results[size_t(i)] = check_job(jobs[size_t(i)], max_nonbinary);
      } catch (const std::exception& ex) {  // never throw through the pool
        results[size_t(i)].issues.push_back({true, jobs[size_t(i)].image + jobs[size_t(i)].mask, ex.what()});
      }
    }
  });

  int min_w = 0, min_h = 0, max_w = 0, max_h = 0, empty = 0, ok_pairs = 0;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const JobResult& r = results[i];
    issues.insert(issues.end(), r.issues.begin(), r.issues.end());
    if (r.decoded_pair) {
      ++ok_pairs;
      empty += r.empty_mask;
    }
    if (r.w > 0) {
      if (min_w == 0 || int64_t(r.w) * r.h < int64_t(min_w) * min_h) min_w = r.w, min_h = r.h;
      if (int64_t(r.w) * r.h > int64_t(max_w) * max_h) max_w = r.w, max_h = r.h;
    }
  }
  int errors = 0, warnings = 0;
  for (const Issue& is : issues) {
    (is.error ? errors : warnings)++;
    std::cout << (is.error ? "error:   " : "warning: ") << is.path << ": " << is.what << "\n";
  }
  if (min_w > 0)
    std::cout << "image sizes: smallest " << min_w << "x" << min_h << ", largest " << max_w << "x" << max_h << "\n";
  if (ok_pairs > 0) std::cout << empty << " of " << ok_pairs << " decoded masks are empty\n";
  std::cout << "checked " << L.pairs.size() << " pair" << (L.pairs.size() == 1 ? "" : "s") << " in " << data << ": "
            << errors << " error" << (errors == 1 ? "" : "s") << ", " << warnings << " warning"
            << (warnings == 1 ? "" : "s") << (errors ? " (FAILED)" : " (OK)") << "\n";
  return errors ? 1 : 0;
}

}  // namespace rpp::cli
