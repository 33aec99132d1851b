// tests/gpu/test_image_ops_gpu.cpp — the device pre- and post-processing of the C API's
// device-pointer calls (kernels/cuda/image_ops.cuh) against the host path they must reproduce:
// Predictor::preprocess (bilinear resize to the model size, rounding to bytes, / 255) and
// probabilities_from_logits -> resize_map_bilinear -> binary_mask. The model input must be the
// same bits; probabilities within 1e-6 (the sigmoid's exp may differ in the last bit); masks the
// same except where a probability is within 1e-6 of the threshold.
// Runs on a GPU, and on the CPU emulator (tests/emu) in builds without CUDA.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/image_ops.cuh"
#include "model/image_io.h"
#include "model/inference.h"
#include "runtime/rng.h"

using namespace rpp;
using namespace rpp::gputest;

namespace {

Image random_image(int w, int h, uint64_t seed) {
  Image img;
  img.w = w;
  img.h = h;
  img.c = 3;
  img.px.resize(size_t(w) * size_t(h) * 3);
  Rng r(seed);
  for (uint8_t& p : img.px) p = uint8_t(r.next_u32() & 0xFF);
  return img;
}

}  // namespace

TEST(GpuImageOps, ModelInputEqualsThePredictorsPreprocessing) {
  REQUIRE_GPU();
  const int size = 32;
  Predictor p(ModelConfig{{8, 8, 16, 16, 32}, 3}, size, 1, "cpu");
  const std::pair<int, int> sizes[] = {{32, 32}, {45, 29}, {100, 64}, {7, 90}, {1, 1}, {333, 17}};
  int k = 0;
  for (auto [w, h] : sizes) {
    SCOPED_TRACE(std::to_string(w) + "x" + std::to_string(h));
    const Image img = random_image(w, h, uint64_t(100 + k++));
    const std::vector<float> want = p.preprocess(img);
    // The device image has a padded row stride, as a caller's frame buffer may.
    const size_t stride = size_t(w) * 3 + 5;
    std::vector<uint8_t> padded(stride * size_t(h), 0xEE);
    for (int y = 0; y < h; ++y)
      std::memcpy(padded.data() + size_t(y) * stride, img.px.data() + size_t(y) * size_t(w) * 3, size_t(w) * 3);
    DevBuf dimg(padded.size());
    dimg.upload(padded.data(), padded.size());
    DevFloats dout(want.size());
    Stream st;
    dout.poison();
    cuda::rgb8_to_model_input(static_cast<const uint8_t*>(dimg.data()), w, h, stride, size, dout.p(), st);
    st.sync();
    EXPECT_TRUE(same_bits(dout.get(), want)) << "model input differs from Predictor::preprocess";
    expect_guards({&dimg, &dout});
  }
}

TEST(GpuImageOps, OutputsEqualTheHostPostprocessing) {
  REQUIRE_GPU();
  const int size = 32;
  const std::pair<int, int> sizes[] = {{32, 32}, {45, 29}, {100, 64}, {7, 90}, {1, 1}};
  for (auto [w, h] : sizes) {
    SCOPED_TRACE(std::to_string(w) + "x" + std::to_string(h));
    const Floats logits = normal(size_t(size) * size, 0.f, 3.f);
    const std::vector<float> prob = probabilities_from_logits(logits.data(), logits.size());
    const std::vector<float> want = resize_map_bilinear(prob.data(), size, size, w, h);
    const Image mask = binary_mask(want.data(), w, h, 0.5);
    DevFloats dl(logits), dp(size_t(w) * size_t(h));
    DevBuf dm(size_t(w) * size_t(h));
    Stream st;
    dp.poison();
    cuda::logits_to_outputs(dl.p(), size, w, h, 0.5, dp.p(), static_cast<uint8_t*>(dm.data()), st);
    st.sync();
    const Floats got = dp.get();
    std::vector<uint8_t> got_mask(size_t(w) * size_t(h));
    dm.download(got_mask.data(), got_mask.size());
    size_t bad = 0, flips = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (!(std::fabs(double(got[i]) - double(want[i])) <= 1e-6)) ++bad;
      if (got_mask[i] != mask.px[i] && std::fabs(double(want[i]) - 0.5) > 1e-6) ++flips;
    }
    EXPECT_EQ(bad, 0u) << "probabilities";
    EXPECT_EQ(flips, 0u) << "mask";
    // Only the probability: the mask buffer stays untouched.
    std::vector<uint8_t> fill(got_mask.size(), 7);
    dm.upload(fill.data(), fill.size());
    cuda::logits_to_outputs(dl.p(), size, w, h, 0.5, dp.p(), nullptr, st);
    st.sync();
    dm.download(got_mask.data(), got_mask.size());
    EXPECT_EQ(got_mask, fill);
    expect_guards({&dl, &dp, &dm});
  }
}
