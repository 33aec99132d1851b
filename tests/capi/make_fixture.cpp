// tests/capi/make_fixture.cpp — writes the material of the C-language and installed-package tests
// of the C API (tests/capi/run_c_test.cmake, tests/capi/run_consumer_test.cmake), which cannot
// build a checkpoint themselves:
//   rpp_capi_fixture DIR   ->  DIR/tiny.safetensors (filters 8,8,16,16,32 at 32x32, with the
//                              trainer's metadata) and DIR/images/{a,b,c,d}.png (various sizes)
#include <cstdio>
#include <exception>
#include <string>

#include "model/image_io.h"
#include "runtime/fileio.h"
#include "tests/capi/fixture.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = argv[1];
    rpp::make_dirs(dir + "/images");
    capi_fixture::write_tiny_checkpoint(dir + "/tiny.safetensors", 5);
    struct {
      const char* stem;
      int w, h;
    } const images[] = {{"a", 48, 40}, {"b", 1, 1}, {"c", 97, 31}, {"d", 20, 150}};
    uint64_t seed = 100;
    for (const auto& im : images)
      rpp::save_png(dir + "/images/" + im.stem + ".png", capi_fixture::test_image(im.w, im.h, seed++));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rpp_capi_fixture: %s\n", e.what());
    return 1;
  }
}
