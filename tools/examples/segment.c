/* tools/examples/segment.c — the smallest complete use of libresunetpp's C API: segments one image
 * file with a checkpoint and writes the 0/255 polyp mask as a PNG of the image's size.
 *
 *   segment CHECKPOINT IMAGE OUT_MASK.png
 *
 * The mask equals OUT/masks/STEM.png of `resunetpp predict --checkpoint CHECKPOINT --input IMAGE
 * --out OUT`. Image decoding and PNG writing use stb_image / stb_image_write, compiled into this
 * program; the library's own copy of stb is internal to it, so the two cannot clash.
 */
#include <stdio.h>
#include <stdlib.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include <resunetpp/resunetpp.h>

int main(int argc, char** argv) {
  rpp_model_options opts;
  rpp_model* model = NULL;
  rpp_image image;
  unsigned char* pixels = NULL;
  uint8_t* mask = NULL;
  int w, h, n, rc = 1;
  size_t mask_bytes, fg = 0, i;

  if (argc != 4) {
    fprintf(stderr, "usage: %s CHECKPOINT IMAGE OUT_MASK.png\n(%s)\n", argv[0], rpp_version());
    return 2;
  }
  if (rpp_model_options_init(&opts, RPP_API_VERSION) != RPP_STATUS_OK ||
      rpp_model_create_from_file(argv[1], &opts, &model) != RPP_STATUS_OK) {
    fprintf(stderr, "segment: %s\n", rpp_last_error());
    return 1;
  }
  pixels = stbi_load(argv[2], &w, &h, &n, 3); /* RGB, whatever the file holds */
  if (!pixels) {
    fprintf(stderr, "segment: cannot read %s: %s\n", argv[2], stbi_failure_reason());
    goto done;
  }
  image.data = pixels;
  image.width = w;
  image.height = h;
  image.stride = 0; /* packed rows: 3 * w bytes */
  if (rpp_output_size(w, h, NULL, &mask_bytes) != RPP_STATUS_OK) {
    fprintf(stderr, "segment: %s: %s\n", argv[2], rpp_last_error());
    goto done;
  }
  mask = (uint8_t*)malloc(mask_bytes);
  if (!mask) {
    fprintf(stderr, "segment: out of memory\n");
    goto done;
  }
  if (rpp_segment(model, &image, NULL, mask) != RPP_STATUS_OK) {
    fprintf(stderr, "segment: %s\n", rpp_last_error());
    goto done;
  }
  for (i = 0; i < mask_bytes; ++i) fg += mask[i] != 0;
  if (!stbi_write_png(argv[3], w, h, 1, mask, w)) {
    fprintf(stderr, "segment: cannot write %s\n", argv[3]);
    goto done;
  }
  printf("%s: %dx%d, polyp %.1f%% -> %s\n", argv[2], w, h, 100.0 * (double)fg / (double)mask_bytes, argv[3]);
  rc = 0;
done:
  free(mask);
  stbi_image_free(pixels);
  rpp_model_destroy(model);
  return rc;
}
