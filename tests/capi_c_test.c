/* tests/capi_c_test.c — libresunetpp's C API used from plain C (C99), linked against the static
 * library: versions, options, loading, masks equal to `resunetpp predict`'s PNGs byte for byte
 * (packed and padded rows, single and batch calls), concurrent calls from POSIX threads, and
 * refused bad input. Exits non-zero on any failure.
 *
 *   capi_c_test CHECKPOINT IMAGES_DIR PREDICT_MASKS_DIR STEM...
 *   capi_c_test --compare-masks DIR_A DIR_B STEM...    (decoded DIR_A/STEM.png == DIR_B/STEM.png)
 *
 * tests/capi/run_c_test.cmake (the `capi_c_test` CTest test) makes the checkpoint and images with
 * rpp_capi_fixture, runs `resunetpp predict` and the example tools/examples/segment.c on them, then
 * runs this program in both modes.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STB_IMAGE_IMPLEMENTATION
#include <stb_image.h>

#include <resunetpp/resunetpp.h>

#define MAX_IMAGES 16
#define N_THREADS 4

static int failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
      ++failures;                                                                    \
    }                                                                                \
  } while (0)

#define CHECK_STATUS(call, want)                                                                   \
  do {                                                                                             \
    rpp_status got_ = (call);                                                                      \
    if (got_ != (want)) {                                                                          \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__, #call,      \
              rpp_status_name(got_), rpp_status_name(want), rpp_last_error());                     \
      ++failures;                                                                                  \
    }                                                                                              \
  } while (0)

typedef struct {
  unsigned char* rgb;      /* (h, w, 3) */
  unsigned char* expected; /* (h, w): the mask `resunetpp predict` wrote */
  int w, h;
} Sample;

static Sample samples[MAX_IMAGES];
static int n_samples = 0;
static rpp_model* shared_model = NULL;

static int contains(const char* s, const char* what) { return strstr(s, what) != NULL; }

static unsigned char* read_all(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  unsigned char* buf;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
    fclose(f);
    return NULL;
  }
  buf = (unsigned char*)malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *size = (size_t)n;
  return buf;
}

/* Segments sample s into a fresh mask with the given extra bytes per row; 1 if it equals the
 * expected mask. */
static int segment_matches(rpp_model* model, const Sample* s, size_t row_padding) {
  const size_t row = (size_t)s->w * 3, stride = row + row_padding;
  unsigned char* padded = (unsigned char*)malloc(stride * (size_t)s->h);
  uint8_t* mask = (uint8_t*)malloc((size_t)s->w * (size_t)s->h);
  rpp_image img;
  int y, ok = 0;
  if (padded && mask) {
    memset(padded, 0xCD, stride * (size_t)s->h);
    for (y = 0; y < s->h; ++y) memcpy(padded + (size_t)y * stride, s->rgb + (size_t)y * row, row);
    img.data = padded;
    img.width = s->w;
    img.height = s->h;
    img.stride = row_padding ? stride : 0;
    ok = rpp_segment(model, &img, NULL, mask) == RPP_STATUS_OK &&
         memcmp(mask, s->expected, (size_t)s->w * (size_t)s->h) == 0;
  }
  free(padded);
  free(mask);
  return ok;
}

static void* thread_main(void* arg) {
  int* mismatches = (int*)arg;
  int round, i;
  for (round = 0; round < 2; ++round)
    for (i = 0; i < n_samples; ++i)
      if (!segment_matches(shared_model, &samples[i], (size_t)(i % 3))) ++*mismatches;
  return NULL;
}

static void test_versions(void) {
  rpp_model_options o;
  CHECK(rpp_api_version() == RPP_API_VERSION);
  CHECK(contains(rpp_version(), "resunetpp"));
  CHECK(strcmp(rpp_status_name(RPP_STATUS_UNSUPPORTED), "RPP_STATUS_UNSUPPORTED") == 0);
  CHECK_STATUS(rpp_model_options_init(&o, RPP_API_VERSION), RPP_STATUS_OK);
  CHECK(strcmp(rpp_last_error(), "") == 0);
  CHECK(o.batch == 1 && o.threshold == 0.5 && o.input_size == 0 && strcmp(o.device, "cpu") == 0);
  CHECK_STATUS(rpp_model_options_init(&o, RPP_MAKE_API_VERSION(RPP_API_VERSION_MAJOR, RPP_API_VERSION_MINOR + 1)),
               RPP_STATUS_UNSUPPORTED);
  CHECK(contains(rpp_last_error(), "install a libresunetpp"));
  CHECK_STATUS(rpp_model_options_init(NULL, RPP_API_VERSION), RPP_STATUS_INVALID_ARGUMENT);
}

static void test_loading_errors(const char* checkpoint) {
  rpp_model_options o;
  rpp_model* m = NULL;
  size_t size = 0;
  unsigned char* bytes = read_all(checkpoint, &size);
  CHECK(bytes != NULL);
  CHECK_STATUS(rpp_model_create_from_file("/nonexistent/x.safetensors", NULL, &m), RPP_STATUS_IO_ERROR);
  CHECK(m == NULL && contains(rpp_last_error(), "/nonexistent/x.safetensors"));
  CHECK_STATUS(rpp_model_create_from_file(NULL, NULL, &m), RPP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(rpp_model_create_from_file(checkpoint, NULL, NULL), RPP_STATUS_INVALID_ARGUMENT);
  if (bytes) {
    CHECK_STATUS(rpp_model_create_from_memory(bytes, size / 2, NULL, &m), RPP_STATUS_BAD_CHECKPOINT);
    CHECK(m == NULL && contains(rpp_last_error(), "<memory>"));
    CHECK_STATUS(rpp_model_create_from_memory(bytes, size, NULL, &m), RPP_STATUS_OK);
    rpp_model_destroy(m);
    m = NULL;
  }
  CHECK_STATUS(rpp_model_options_init(&o, RPP_API_VERSION), RPP_STATUS_OK);
  o.device = "cuda:0";
  {
    /* Succeeds where the library has CUDA and a GPU is visible; refused clearly otherwise. */
    const rpp_status st = rpp_model_create_from_file(checkpoint, &o, &m);
    if (st == RPP_STATUS_OK) {
      rpp_model_destroy(m);
      m = NULL;
    } else {
      CHECK_STATUS(st, RPP_STATUS_UNSUPPORTED);
      CHECK(m == NULL && contains(rpp_last_error(), "device 'cuda:0': "));
    }
  }
  o.device = "cpu";
  o.input_size = 12;
  CHECK_STATUS(rpp_model_create_from_file(checkpoint, &o, &m), RPP_STATUS_INVALID_ARGUMENT);
  CHECK(contains(rpp_last_error(), "input_size"));
  rpp_model_destroy(NULL);
  free(bytes);
}

static void test_bad_calls(rpp_model* model) {
  uint8_t px[4 * 4 * 3], mask[16];
  rpp_image img;
  uint8_t* masks[1];
  memset(px, 100, sizeof px);
  img.data = px;
  img.width = 4;
  img.height = 4;
  img.stride = 0;
  masks[0] = mask;
  CHECK_STATUS(rpp_segment(NULL, &img, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(rpp_segment(model, NULL, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(rpp_segment(model, &img, NULL, NULL), RPP_STATUS_INVALID_ARGUMENT);
  img.stride = 11;
  CHECK_STATUS(rpp_segment(model, &img, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  CHECK(contains(rpp_last_error(), "stride"));
  img.stride = 0;
  img.width = 0;
  CHECK_STATUS(rpp_segment(model, &img, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  img.width = 1 << 20;
  CHECK_STATUS(rpp_segment(model, &img, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  img.width = 4;
  img.data = NULL;
  CHECK_STATUS(rpp_segment(model, &img, NULL, mask), RPP_STATUS_INVALID_ARGUMENT);
  img.data = px;
  CHECK_STATUS(rpp_segment_batch(model, NULL, 3, NULL, masks), RPP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(rpp_segment_batch(model, &img, 0, NULL, NULL), RPP_STATUS_OK);
  CHECK_STATUS(rpp_segment_device(model, &img, NULL, mask, NULL), RPP_STATUS_UNSUPPORTED);
  CHECK(contains(rpp_last_error(), "need a model created with device"));
  CHECK_STATUS(rpp_segment_batch_device(model, &img, 1, NULL, masks, NULL), RPP_STATUS_UNSUPPORTED);
  CHECK_STATUS(rpp_segment(model, &img, NULL, mask), RPP_STATUS_OK);
}

/* The second mode: 0 if every pair of one-channel PNGs decodes to the same pixels. */
static int compare_masks(int argc, char** argv) {
  char path[4096];
  int i, bad = 0;
  for (i = 4; i < argc; ++i) {
    int w1, h1, w2, h2, c;
    unsigned char *a, *b;
    snprintf(path, sizeof path, "%s/%s.png", argv[2], argv[i]);
    a = stbi_load(path, &w1, &h1, &c, 1);
    snprintf(path, sizeof path, "%s/%s.png", argv[3], argv[i]);
    b = stbi_load(path, &w2, &h2, &c, 1);
    if (!a || !b || w1 != w2 || h1 != h2 || memcmp(a, b, (size_t)w1 * (size_t)h1) != 0) {
      fprintf(stderr, "%s/%s.png and %s/%s.png differ (or cannot be read)\n", argv[2], argv[i], argv[3], argv[i]);
      ++bad;
    }
    stbi_image_free(a);
    stbi_image_free(b);
  }
  if (!bad) printf("capi_c_test: %d mask pairs equal\n", argc - 4);
  return bad ? 1 : 0;
}

int main(int argc, char** argv) {
  char path[4096];
  rpp_model* model = NULL;
  rpp_image images[MAX_IMAGES];
  uint8_t* masks[MAX_IMAGES];
  pthread_t threads[N_THREADS];
  int mismatches[N_THREADS], created[N_THREADS];
  int i, t, c;
  size_t fg = 0, total = 0, k;

  if (argc >= 5 && strcmp(argv[1], "--compare-masks") == 0) return compare_masks(argc, argv);
  if (argc < 5 || argc - 4 > MAX_IMAGES) {
    fprintf(stderr, "usage: %s CHECKPOINT IMAGES_DIR PREDICT_MASKS_DIR STEM... (at most %d)\n", argv[0], MAX_IMAGES);
    return 2;
  }
  for (i = 4; i < argc; ++i) {
    Sample* s = &samples[n_samples];
    int w2, h2;
    snprintf(path, sizeof path, "%s/%s.png", argv[2], argv[i]);
    s->rgb = stbi_load(path, &s->w, &s->h, &c, 3);
    snprintf(path, sizeof path, "%s/%s.png", argv[3], argv[i]);
    s->expected = stbi_load(path, &w2, &h2, &c, 1);
    if (!s->rgb || !s->expected || w2 != s->w || h2 != s->h) {
      fprintf(stderr, "cannot read the image or the predict mask of '%s'\n", argv[i]);
      return 1;
    }
    for (k = 0; k < (size_t)s->w * (size_t)s->h; ++k) fg += s->expected[k] != 0;
    total += (size_t)s->w * (size_t)s->h;
    ++n_samples;
  }
  CHECK(fg > 0 && fg < total); /* otherwise comparing masks proves little */

  test_versions();
  test_loading_errors(argv[1]);
  CHECK_STATUS(rpp_model_create_from_file(argv[1], NULL, &model), RPP_STATUS_OK);
  if (!model) return 1;

  /* One image at a time, packed and padded rows. */
  for (i = 0; i < n_samples; ++i) {
    if (!segment_matches(model, &samples[i], 0)) {
      fprintf(stderr, "mask of '%s' differs from resunetpp predict's (%s)\n", argv[4 + i], rpp_last_error());
      ++failures;
    }
    CHECK(segment_matches(model, &samples[i], 5));
  }
  /* All at once. */
  for (i = 0; i < n_samples; ++i) {
    images[i].data = samples[i].rgb;
    images[i].width = samples[i].w;
    images[i].height = samples[i].h;
    images[i].stride = 0;
    masks[i] = (uint8_t*)calloc((size_t)samples[i].w * (size_t)samples[i].h, 1);
  }
  CHECK_STATUS(rpp_segment_batch(model, images, (size_t)n_samples, NULL, masks), RPP_STATUS_OK);
  for (i = 0; i < n_samples; ++i) {
    CHECK(masks[i] && memcmp(masks[i], samples[i].expected, (size_t)samples[i].w * (size_t)samples[i].h) == 0);
    free(masks[i]);
  }
  test_bad_calls(model);

  /* Several threads on the one model. */
  shared_model = model;
  for (t = 0; t < N_THREADS; ++t) {
    mismatches[t] = 0;
    created[t] = pthread_create(&threads[t], NULL, thread_main, &mismatches[t]) == 0;
    CHECK(created[t]);
  }
  for (t = 0; t < N_THREADS; ++t) {
    if (created[t]) pthread_join(threads[t], NULL);
    CHECK(mismatches[t] == 0);
  }

  rpp_model_destroy(model);
  for (i = 0; i < n_samples; ++i) {
    stbi_image_free(samples[i].rgb);
    stbi_image_free(samples[i].expected);
  }
  if (failures) {
    fprintf(stderr, "capi_c_test: %d check(s) failed\n", failures);
    return 1;
  }
  printf("capi_c_test: all checks passed (%d images, %s)\n", n_samples, rpp_version());
  return 0;
}
