/* tests/consumer/consumer.c — a program outside the resunetpp tree that uses only the installed
 * package: the header <resunetpp/resunetpp.h> and libresunetpp. Built by tests/consumer's
 * CMakeLists.txt (find_package) and Makefile (pkg-config) against a temporary install, by the
 * capi_consumer_* CTest tests.
 *
 *   consumer CHECKPOINT   ->  prints the library version and a digest of the mask of a made-up
 *                             image; exit status 0 on success
 */
#include <stdio.h>
#include <stdlib.h>

#include <resunetpp/resunetpp.h>

#define W 64
#define H 48

int main(int argc, char** argv) {
  static uint8_t pixels[H][W][3];
  static uint8_t mask[H][W];
  rpp_model_options opts;
  rpp_model* model = NULL;
  rpp_image image;
  unsigned long polyp = 0, digest = 5381;
  int x, y;

  if (argc != 2) {
    fprintf(stderr, "usage: %s CHECKPOINT\n", argv[0]);
    return 2;
  }
  if (rpp_api_version() != RPP_API_VERSION) {
    fprintf(stderr, "consumer: header API %u, library API %u\n", (unsigned)RPP_API_VERSION, (unsigned)rpp_api_version());
    return 1;
  }
  for (y = 0; y < H; ++y)
    for (x = 0; x < W; ++x) {
      const int dx = x - 40, dy = y - 20, in_disc = dx * dx + dy * dy < 150;
      pixels[y][x][0] = (uint8_t)(in_disc ? 230 : 120 + x);
      pixels[y][x][1] = (uint8_t)(in_disc ? 90 : 40 + y);
      pixels[y][x][2] = (uint8_t)(60 + (x * y) % 50);
    }
  image.data = &pixels[0][0][0];
  image.width = W;
  image.height = H;
  image.stride = 0;
  if (rpp_model_options_init(&opts, RPP_API_VERSION) != RPP_STATUS_OK ||
      rpp_model_create_from_file(argv[1], &opts, &model) != RPP_STATUS_OK ||
      rpp_segment(model, &image, NULL, &mask[0][0]) != RPP_STATUS_OK) {
    fprintf(stderr, "consumer: %s\n", rpp_last_error());
    rpp_model_destroy(model);
    return 1;
  }
  for (y = 0; y < H; ++y)
    for (x = 0; x < W; ++x) {
      polyp += mask[y][x] != 0;
      digest = digest * 33u + mask[y][x];
    }
  rpp_model_destroy(model);
  printf("library: %s\n", rpp_version());
  printf("mask: %lu of %d pixels polyp, digest %lx\n", polyp, W * H, digest & 0xFFFFFFFFul);
  return 0;
}
