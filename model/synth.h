// model/synth.h — a procedural stand-in for Kvasir-SEG: colonoscopy-like frames with polyps.
// Each frame: pinkish-red mucosa with low-frequency texture, haustral folds, thin vessels, an
// optional dark lumen, a vignette and specular glints; on it 1-2 polyps (smooth irregular
// blobs, radius 8-30% of the frame, dome-shaded, slightly paler or more saturated than the
// mucosa, with a rim shadow and their own glints). Colour ranges of polyp and background overlap,
// so no single colour threshold segments the frame; shape, shading and texture do.
// Exercised by tests/test_data.cpp and `resunetpp synth`.
#pragma once
#include <cstdint>
#include <string>

#include "model/image_io.h"
#include "runtime/rng.h"

namespace rpp {

// One size x size RGB frame; if `mask` is non-null it receives the size x size grey mask
// (255 polyp, 0 background). Deterministic for the generator's state.
Image synth_image(int size, Rng& rng, Image* mask);

// Frame `index` of the data set with seed `seed`: synth_image with Rng(seed, index), so any
// frame can be made on its own and the set does not depend on `count`.
Image synth_frame(int size, uint64_t seed, int index, Image* mask);

// Writes out_dir/images/synth_00000.png ... (RGB) and out_dir/masks/synth_00000.png ... (grey
// 0/255) in the Kvasir-SEG layout, creating the folders. Same seed, same bytes. Uses the CPU
// thread pool; each file is written crash-safely.
void generate_synthetic_dataset(const std::string& out_dir, int count, int size, uint64_t seed);

}  // namespace rpp
