// model/dataset.h — finding, splitting and loading a Kvasir-SEG style data set.
// Layout: <dir>/images/<stem>.<ext> and <dir>/masks/<stem>.<ext>, ext one of png/jpg/jpeg/bmp
// (any case). Images and masks are paired by stem, never by listing order. The loaded set is held
// in memory, already resized to the training size. Exercised by tests/test_data.cpp.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rpp {

struct Sample {
  std::string stem, image_path, mask_path;
};

// Every image/mask pair under dir, sorted by stem (byte order). rpp::Error naming the folder for:
// a missing folder, a missing images/ or masks/ subfolder, no images, two files with one stem in
// one subfolder, and images without masks or masks without images (count plus the first stems).
std::vector<Sample> scan_dataset(const std::string& dir);

struct SplitFractions {
  double train = 0.8, val = 0.1, test = 0.1;
};

// Seeded split: shuffle (Fisher-Yates, rpp::Rng(seed, stream "split")), then the first
// round(n * train) go to train, the next round(n * val) to val, the rest to test (fractions are
// normalised by their sum). With n >= 3 every non-zero fraction gets at least one sample. Each
// output is sorted by stem; any output pointer may be null. Depends only on the set of stems and
// the seed, not on the order of `all`.
void split_seeded(const std::vector<Sample>& all, uint64_t seed, SplitFractions fractions,
                  std::vector<Sample>* train, std::vector<Sample>* val, std::vector<Sample>* test);

// A split list: one stem per line (a file name with an image extension is also accepted),
// surrounding whitespace and blank lines ignored. The samples of `all` it names, in file order.
// rpp::Error naming the file and line for an unknown or repeated stem.
std::vector<Sample> read_split_file(const std::string& path, const std::vector<Sample>& all);

// Writes the stems of `samples`, one per line, crash-safely (temp file, fsync, rename).
void write_split_file(const std::string& path, const std::vector<Sample>& samples);

// A data set decoded and resized to size x size, held in memory.
struct LoadedDataset {
  int size = 0;
  int n = 0;
  std::vector<float> images;  // (n, size, size, 3), byte / 255
  std::vector<float> masks;   // (n, size, size, 1), 0 or 1
  std::vector<std::string> stems;
  std::vector<int> orig_w, orig_h;  // size of each file before resizing
};

// Decodes every sample (image as RGB, mask as grey), checks that image and mask have the same
// size (rpp::Error naming both files and sizes), resizes images bilinearly and masks by nearest
// neighbour, and binarises masks at 128 (>= 128 is polyp). Decoding runs on the CPU thread pool;
// on failure the error of the first failing sample (in input order) is thrown.
LoadedDataset load_dataset(const std::vector<Sample>& samples, int size);

// Copies samples indices[0..count) into images_out (count, size, size, 3) and masks_out
// (count, size, size, 1); masks_out may be null. rpp::Error for an index out of range.
void gather_batch(const LoadedDataset& ds, const int* indices, int count, float* images_out,
                  float* masks_out);

}  // namespace rpp
