/* tools/bench/capi_bench.c — resunetpp-capi-bench: the C API (libresunetpp) timed as an
 * application uses it. Each call takes an RGB frame of any size, resizes it to the model's input,
 * runs the network and returns the probability map and the mask at the frame's size.
 *
 *   resunetpp-capi-bench --checkpoint FILE [--device cpu|cuda[:N]] [--precision fp32|bf16]
 *       [--size N] [--width W] [--height H] [--batch N] [--repeats N] [--batch-repeats N]
 *       [--warmup N] [--tolerance X] [--device-pointers] [--json FILE]
 *
 * Before timing it verifies what it times:
 *   - every output: probabilities finite and in [0, 1], mask 255 exactly where p >= threshold;
 *   - the batch call against single calls on the same frames: probabilities within --tolerance
 *     (default 1e-4), masks equal except at pixels whose probability is within that of the
 *     threshold (the C API allows batches to differ in the last bits);
 *   - with --device-pointers (a CUDA model): the device batch call against the host batch call,
 *     and the device single call against the host single call, likewise.
 * A failed check prints what differed and exits with status 1, without timing anything.
 * Then: latency of rpp_segment (one frame per call; median, min and max of --repeats calls after
 * --warmup), throughput of rpp_segment_batch (--batch frames per call, the model's batch option
 * set to the same; median of --batch-repeats calls), and the same two for the device-pointer
 * calls, each followed by a stream synchronisation. The frames are synthetic (a smooth
 * background, a bright ellipse and noise), --width x --height, default 622 x 530, the most common
 * Kvasir-SEG size. RPP_CAPI_BENCH_CORRUPT=1 flips one mask byte of the batch output before the
 * check (to test that the check fails). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "resunetpp/resunetpp.h"

#ifdef RPP_BENCH_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct {
  const char* checkpoint;
  const char* device;
  const char* precision;
  const char* json;
  double tolerance;
  int size, width, height, batch, repeats, batch_repeats, warmup, device_pointers;
} options;

typedef struct {
  double median, min, max;
  int n;
} timing;

static void usage(FILE* f) {
  fputs(
      "usage: resunetpp-capi-bench --checkpoint FILE [options]\n"
      "\n"
      "Latency and throughput of the C API (rpp_segment, rpp_segment_batch and, with\n"
      "--device-pointers, their device variants) on synthetic RGB frames, each output verified\n"
      "before anything is timed.\n"
      "\n"
      "options:\n"
      "  --checkpoint FILE   a resunetpp checkpoint or PyTorch state_dict (safetensors) (required)\n"
      "  --device DEV        cpu, cuda or cuda:N (default: cpu)\n"
      "  --precision P       fp32 or bf16 (bf16: CUDA only) (default: fp32)\n"
      "  --size N            the model's input size; 0: the checkpoint's (default: 0)\n"
      "  --width W           frame width in pixels (default: 622)\n"
      "  --height H          frame height in pixels (default: 530)\n"
      "  --batch N           frames per rpp_segment_batch call (default: 32)\n"
      "  --repeats N         timed single-frame calls (default: 20)\n"
      "  --batch-repeats N   timed batch calls (default: 5)\n"
      "  --warmup N          untimed calls before each timing (default: 2)\n"
      "  --tolerance X       largest probability difference accepted between batch and single\n"
      "                      calls, and between device and host calls (default: 1e-4)\n"
      "  --device-pointers   also time rpp_segment_device and rpp_segment_batch_device (CUDA)\n"
      "  --json FILE         also write the results as JSON\n"
      "  --help              print this help\n",
      f);
}

static int parse_int(const char* flag, const char* text, int lo, int hi, int* out) {
  char* end = NULL;
  const long v = strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "resunetpp-capi-bench: %s must be an integer in [%d, %d], got '%s'\n", flag, lo, hi, text);
    return 0;
  }
  *out = (int)v;
  return 1;
}

/* 0: parsed; 1: --help; 2: error (message printed). */
static int parse_args(int argc, char** argv, options* o) {
  int i;
  o->checkpoint = NULL;
  o->device = "cpu";
  o->precision = "fp32";
  o->json = NULL;
  o->size = 0;
  o->width = 622;
  o->height = 530;
  o->batch = 32;
  o->repeats = 20;
  o->batch_repeats = 5;
  o->warmup = 2;
  o->tolerance = 1e-4;
  o->device_pointers = 0;
  for (i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    if (strcmp(a, "--help") == 0) return 1;
    if (strcmp(a, "--device-pointers") == 0) {
      o->device_pointers = 1;
      continue;
    }
    if (v == NULL) {
      fprintf(stderr, "resunetpp-capi-bench: unknown option or missing value: %s (see --help)\n", a);
      return 2;
    }
    ++i;
    if (strcmp(a, "--checkpoint") == 0) o->checkpoint = v;
    else if (strcmp(a, "--device") == 0) o->device = v;
    else if (strcmp(a, "--precision") == 0) o->precision = v;
    else if (strcmp(a, "--json") == 0) o->json = v;
    else if (strcmp(a, "--size") == 0) ok = parse_int(a, v, 0, 16384, &o->size);
    else if (strcmp(a, "--width") == 0) ok = parse_int(a, v, 1, 16384, &o->width);
    else if (strcmp(a, "--height") == 0) ok = parse_int(a, v, 1, 16384, &o->height);
    else if (strcmp(a, "--batch") == 0) ok = parse_int(a, v, 1, 4096, &o->batch);
    else if (strcmp(a, "--repeats") == 0) ok = parse_int(a, v, 1, 100000, &o->repeats);
    else if (strcmp(a, "--batch-repeats") == 0) ok = parse_int(a, v, 1, 100000, &o->batch_repeats);
    else if (strcmp(a, "--warmup") == 0) ok = parse_int(a, v, 0, 100000, &o->warmup);
    else if (strcmp(a, "--tolerance") == 0) {
      char* end = NULL;
      o->tolerance = strtod(v, &end);
      if (*v == '\0' || *end != '\0' || !(o->tolerance >= 0 && o->tolerance < 1)) {
        fprintf(stderr, "resunetpp-capi-bench: --tolerance must be a number in [0, 1), got '%s'\n", v);
        return 2;
      }
    }
    else {
      fprintf(stderr, "resunetpp-capi-bench: unknown option %s (see --help)\n", a);
      return 2;
    }
    if (!ok) return 2;
  }
  if (o->checkpoint == NULL) {
    fputs("resunetpp-capi-bench: --checkpoint FILE is required (see --help)\n", stderr);
    return 2;
  }
  return 0;
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int cmp_double(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

static timing summarise(double* ms, int n) {
  timing t;
  qsort(ms, (size_t)n, sizeof(double), cmp_double);
  t.n = n;
  t.min = ms[0];
  t.max = ms[n - 1];
  t.median = n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
  return t;
}

/* A deterministic frame: a smooth background, a bright ellipse (a polyp-like blob) placed by the
 * seed, and uniform noise of +-12. */
static void make_frame(uint8_t* rgb, int w, int h, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 12345u;
  const double cx = w * (0.3 + 0.4 * (double)(seed % 7) / 6.0), cy = h * (0.35 + 0.3 * (double)(seed % 5) / 4.0);
  const double rx = 0.18 * w + 1.0, ry = 0.15 * h + 1.0;
  int x, y, c;
  for (y = 0; y < h; ++y)
    for (x = 0; x < w; ++x) {
      const double dx = (x - cx) / rx, dy = (y - cy) / ry;
      const int inside = dx * dx + dy * dy <= 1.0;
      for (c = 0; c < 3; ++c) {
        int v = 90 + (int)(60.0 * x / w) + 20 * c + (inside ? 80 - 30 * c : 0);
        s = s * 1664525u + 1013904223u;
        v += (int)(s >> 27) - 12; /* 0..31 - 12 */
        rgb[((size_t)y * (size_t)w + (size_t)x) * 3 + (size_t)c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
      }
    }
}

/* Checks one output pair: probabilities finite in [0, 1], mask 255 where p >= threshold, else 0. */
static int check_output(const float* p, const uint8_t* m, size_t n, double threshold, const char* what) {
  size_t i;
  for (i = 0; i < n; ++i) {
    if (!(p[i] >= 0.f && p[i] <= 1.f)) {
      fprintf(stderr, "verification failed: %s: probability %g at pixel %zu is not in [0, 1]\n", what, (double)p[i], i);
      return 0;
    }
    if (m[i] != ((double)p[i] >= threshold ? 255 : 0)) {
      fprintf(stderr, "verification failed: %s: mask %d at pixel %zu, probability %.9g, threshold %g\n", what, m[i], i,
              (double)p[i], threshold);
      return 0;
    }
  }
  return 1;
}

/* Compares two outputs of one frame: |p - q| <= tol; masks equal except where p is within tol of
 * the threshold. Updates *max_diff. */
static int compare_outputs(const float* p, const uint8_t* m, const float* q, const uint8_t* k, size_t n,
                           double threshold, double tol, const char* what, double* max_diff) {
  size_t i;
  for (i = 0; i < n; ++i) {
    const double d = fabs((double)p[i] - (double)q[i]);
    if (d > *max_diff) *max_diff = d;
    if (d > tol) {
      fprintf(stderr, "verification failed: %s: probabilities %.9g and %.9g at pixel %zu differ by more than %g\n",
              what, (double)p[i], (double)q[i], i, tol);
      return 0;
    }
    if (m[i] != k[i] && fabs((double)p[i] - threshold) > tol) {
      fprintf(stderr, "verification failed: %s: masks %d and %d at pixel %zu, probability %.9g\n", what, m[i], k[i],
              i, (double)p[i]);
      return 0;
    }
  }
  return 1;
}

static int api_ok(rpp_status s, const char* call) {
  if (s == RPP_STATUS_OK) return 1;
  fprintf(stderr, "resunetpp-capi-bench: %s: %s: %s\n", call, rpp_status_name(s), rpp_last_error());
  return 0;
}

static void print_timing(FILE* f, const char* name, const timing* t, int per_call) {
  fprintf(f, "%-34s median %9.3f ms  min %9.3f  max %9.3f  (%d calls)  %8.2f images/s\n", name, t->median, t->min,
          t->max, t->n, per_call * 1e3 / t->median);
}

static void json_timing(FILE* f, const char* name, const timing* t, int per_call, int last) {
  fprintf(f,
          "  \"%s\": {\"images_per_call\": %d, \"calls\": %d, \"median_ms\": %.6f, \"min_ms\": %.6f, \"max_ms\": %.6f, "
          "\"images_per_s\": %.6f}%s\n",
          name, per_call, t->n, t->median, t->min, t->max, per_call * 1e3 / t->median, last ? "" : ",");
}

int main(int argc, char** argv) {
  options o;
  rpp_model_options mo;
  rpp_model* model = NULL;
  rpp_image* frames = NULL;
  float** probs = NULL;
  uint8_t** masks = NULL;
  float* single_p = NULL;
  uint8_t* single_m = NULL;
  double* ms = NULL;
  size_t prob_bytes = 0, mask_bytes = 0, npix;
  timing lat, thr, dlat = {0, 0, 0, 0}, dthr = {0, 0, 0, 0};
  double max_batch_diff = 0, max_device_diff = 0;
  int32_t input_size = 0;
  int rc = 1, i, r, parsed, have_device = 0;
  char what[96];

  parsed = parse_args(argc, argv, &o);
  if (parsed == 1) {
    usage(stdout);
    return 0;
  }
  if (parsed == 2) return 2;
#ifndef RPP_BENCH_CUDA
  if (o.device_pointers) {
    fputs("resunetpp-capi-bench: --device-pointers needs a build with CUDA\n", stderr);
    return 2;
  }
#endif

  if (!api_ok(rpp_model_options_init(&mo, RPP_API_VERSION), "rpp_model_options_init")) return 1;
  mo.device = o.device;
  mo.precision = o.precision;
  mo.input_size = o.size;
  mo.batch = o.batch;
  if (!api_ok(rpp_model_create_from_file(o.checkpoint, &mo, &model), "rpp_model_create_from_file")) return 1;
  if (!api_ok(rpp_model_input_size(model, &input_size), "rpp_model_input_size")) goto done;
  if (!api_ok(rpp_output_size(o.width, o.height, &prob_bytes, &mask_bytes), "rpp_output_size")) goto done;
  npix = (size_t)o.width * (size_t)o.height;

  frames = calloc((size_t)o.batch, sizeof *frames);
  probs = calloc((size_t)o.batch, sizeof *probs);
  masks = calloc((size_t)o.batch, sizeof *masks);
  single_p = malloc(prob_bytes);
  single_m = malloc(mask_bytes);
  ms = malloc(sizeof(double) * (size_t)(o.repeats > o.batch_repeats ? o.repeats : o.batch_repeats));
  if (!frames || !probs || !masks || !single_p || !single_m || !ms) {
    fputs("resunetpp-capi-bench: out of host memory\n", stderr);
    goto done;
  }
  for (i = 0; i < o.batch; ++i) {
    uint8_t* rgb = malloc(npix * 3);
    probs[i] = malloc(prob_bytes);
    masks[i] = malloc(mask_bytes);
    if (!rgb || !probs[i] || !masks[i]) {
      free(rgb);
      fputs("resunetpp-capi-bench: out of host memory\n", stderr);
      goto done;
    }
    make_frame(rgb, o.width, o.height, (uint32_t)i + 1u);
    frames[i].data = rgb;
    frames[i].width = o.width;
    frames[i].height = o.height;
    frames[i].stride = 0;
  }
  printf("resunetpp-capi-bench: library %s, device %s, precision %s, input %dx%d, frames %dx%d, batch %d\n",
         rpp_version(), o.device, o.precision, input_size, input_size, o.width, o.height, o.batch);

  /* ---- verification ---- */
  if (!api_ok(rpp_segment_batch(model, frames, (size_t)o.batch, probs, masks), "rpp_segment_batch")) goto done;
  if (getenv("RPP_CAPI_BENCH_CORRUPT") && strcmp(getenv("RPP_CAPI_BENCH_CORRUPT"), "1") == 0)
    masks[o.batch - 1][npix / 2] ^= 0xff;
  for (i = 0; i < o.batch; ++i) {
    snprintf(what, sizeof what, "batch call, frame %d", i);
    if (!check_output(probs[i], masks[i], npix, mo.threshold, what)) goto done;
  }
  /* The first frames and the last against single calls (all of them when the batch is small). */
  for (i = 0; i < o.batch; ++i) {
    if (i >= 3 && i != o.batch - 1) continue;
    if (!api_ok(rpp_segment(model, &frames[i], single_p, single_m), "rpp_segment")) goto done;
    snprintf(what, sizeof what, "single call, frame %d", i);
    if (!check_output(single_p, single_m, npix, mo.threshold, what)) goto done;
    snprintf(what, sizeof what, "batch call against single call, frame %d", i);
    if (!compare_outputs(probs[i], masks[i], single_p, single_m, npix, mo.threshold, o.tolerance, what, &max_batch_diff))
      goto done;
  }
  printf("verified: %d batch outputs in range and thresholded; batch against single calls: max |dp| %.3g\n", o.batch,
         max_batch_diff);

  /* ---- host calls ---- */
  for (i = 0; i < o.warmup; ++i)
    if (!api_ok(rpp_segment(model, &frames[i % o.batch], single_p, single_m), "rpp_segment")) goto done;
  for (r = 0; r < o.repeats; ++r) {
    const double t0 = now_ms();
    if (!api_ok(rpp_segment(model, &frames[r % o.batch], single_p, single_m), "rpp_segment")) goto done;
    ms[r] = now_ms() - t0;
  }
  lat = summarise(ms, o.repeats);
  if (o.warmup > 0 && !api_ok(rpp_segment_batch(model, frames, (size_t)o.batch, probs, masks), "rpp_segment_batch"))
    goto done;
  for (r = 0; r < o.batch_repeats; ++r) {
    const double t0 = now_ms();
    if (!api_ok(rpp_segment_batch(model, frames, (size_t)o.batch, probs, masks), "rpp_segment_batch")) goto done;
    ms[r] = now_ms() - t0;
  }
  thr = summarise(ms, o.batch_repeats);
  print_timing(stdout, "rpp_segment (latency)", &lat, 1);
  print_timing(stdout, "rpp_segment_batch (throughput)", &thr, o.batch);

#ifdef RPP_BENCH_CUDA
  if (o.device_pointers) {
    /* Device copies of the frames and device outputs; one stream of our own. */
    cudaStream_t stream = NULL;
    uint8_t** dframes = calloc((size_t)o.batch, sizeof *dframes);
    float** dprobs = calloc((size_t)o.batch, sizeof *dprobs);
    uint8_t** dmasks = calloc((size_t)o.batch, sizeof *dmasks);
    rpp_image* dimages = calloc((size_t)o.batch, sizeof *dimages);
    int cuda_ok = dframes && dprobs && dmasks && dimages && cudaStreamCreate(&stream) == cudaSuccess;
    for (i = 0; cuda_ok && i < o.batch; ++i) {
      cuda_ok = cudaMalloc((void**)&dframes[i], npix * 3) == cudaSuccess &&
                cudaMalloc((void**)&dprobs[i], prob_bytes) == cudaSuccess &&
                cudaMalloc((void**)&dmasks[i], mask_bytes) == cudaSuccess &&
                cudaMemcpy(dframes[i], frames[i].data, npix * 3, cudaMemcpyHostToDevice) == cudaSuccess;
      dimages[i] = frames[i];
      dimages[i].data = dframes[i];
    }
    if (!cuda_ok) {
      fputs("resunetpp-capi-bench: CUDA allocation or copy failed\n", stderr);
    } else {
      have_device = 1;
      /* Verify each device call against the host call that uses the same context: the device
       * batch call against the host batch call (whose outputs probs/masks hold: the timed host
       * batch calls ran on these frames), the device single call against the host single call.
       * (A single-image call runs on the model's batch-1 context, whose convolution algorithms
       * may differ from the batch context's.) */
      if (!api_ok(rpp_segment_batch_device(model, dimages, (size_t)o.batch, dprobs, dmasks, stream),
                  "rpp_segment_batch_device") ||
          cudaStreamSynchronize(stream) != cudaSuccess)
        have_device = 0;
      for (i = 0; have_device && i < o.batch; ++i) {
        if (i >= 3 && i != o.batch - 1) continue;
        if (cudaMemcpy(single_p, dprobs[i], prob_bytes, cudaMemcpyDeviceToHost) != cudaSuccess ||
            cudaMemcpy(single_m, dmasks[i], mask_bytes, cudaMemcpyDeviceToHost) != cudaSuccess) {
          have_device = 0;
          break;
        }
        snprintf(what, sizeof what, "device batch call against host batch call, frame %d", i);
        if (!check_output(single_p, single_m, npix, mo.threshold, what) ||
            !compare_outputs(single_p, single_m, probs[i], masks[i], npix, mo.threshold, o.tolerance, what,
                             &max_device_diff))
          have_device = 0;
      }
      if (have_device) {
        have_device = api_ok(rpp_segment_device(model, &dimages[0], dprobs[0], dmasks[0], stream),
                             "rpp_segment_device") &&
                      cudaStreamSynchronize(stream) == cudaSuccess &&
                      api_ok(rpp_segment(model, &frames[0], probs[0], masks[0]), "rpp_segment") &&
                      cudaMemcpy(single_p, dprobs[0], prob_bytes, cudaMemcpyDeviceToHost) == cudaSuccess &&
                      cudaMemcpy(single_m, dmasks[0], mask_bytes, cudaMemcpyDeviceToHost) == cudaSuccess;
        if (have_device &&
            (!check_output(single_p, single_m, npix, mo.threshold, "device single call, frame 0") ||
             !compare_outputs(single_p, single_m, probs[0], masks[0], npix, mo.threshold, o.tolerance,
                              "device single call against host single call, frame 0", &max_device_diff)))
          have_device = 0;
      }
      if (have_device) {
        printf("verified: device calls against host calls: max |dp| %.3g\n", max_device_diff);
        for (i = 0; i < o.warmup && have_device; ++i)
          have_device = api_ok(rpp_segment_device(model, &dimages[i % o.batch], dprobs[0], dmasks[0], stream),
                               "rpp_segment_device") &&
                        cudaStreamSynchronize(stream) == cudaSuccess;
        for (r = 0; r < o.repeats && have_device; ++r) {
          const double t0 = now_ms();
          have_device = api_ok(rpp_segment_device(model, &dimages[r % o.batch], dprobs[0], dmasks[0], stream),
                               "rpp_segment_device") &&
                        cudaStreamSynchronize(stream) == cudaSuccess;
          ms[r] = now_ms() - t0;
        }
        if (have_device) dlat = summarise(ms, o.repeats);
        for (r = 0; r < o.batch_repeats && have_device; ++r) {
          const double t0 = now_ms();
          have_device = api_ok(rpp_segment_batch_device(model, dimages, (size_t)o.batch, dprobs, dmasks, stream),
                               "rpp_segment_batch_device") &&
                        cudaStreamSynchronize(stream) == cudaSuccess;
          ms[r] = now_ms() - t0;
        }
        if (have_device) {
          dthr = summarise(ms, o.batch_repeats);
          print_timing(stdout, "rpp_segment_device (latency)", &dlat, 1);
          print_timing(stdout, "rpp_segment_batch_device (throughput)", &dthr, o.batch);
        }
      }
    }
    for (i = 0; i < o.batch; ++i) {
      if (dframes && dframes[i]) cudaFree(dframes[i]);
      if (dprobs && dprobs[i]) cudaFree(dprobs[i]);
      if (dmasks && dmasks[i]) cudaFree(dmasks[i]);
    }
    if (stream) cudaStreamDestroy(stream);
    free(dframes);
    free(dprobs);
    free(dmasks);
    free(dimages);
    if (!have_device) goto done;
  }
#endif

  if (o.json) {
    FILE* f = fopen(o.json, "w");
    if (!f) {
      fprintf(stderr, "resunetpp-capi-bench: cannot write %s\n", o.json);
      goto done;
    }
    fprintf(f,
            "{\n  \"tool\": \"resunetpp-capi-bench\",\n  \"library\": \"%s\",\n  \"device\": \"%s\",\n"
            "  \"precision\": \"%s\",\n  \"input_size\": %d,\n  \"frame_width\": %d,\n  \"frame_height\": %d,\n"
            "  \"batch\": %d,\n  \"verified\": {\"batch_vs_single_max_abs_diff\": %.9g",
            rpp_version(), o.device, o.precision, input_size, o.width, o.height, o.batch, max_batch_diff);
    if (have_device) fprintf(f, ", \"device_vs_host_max_abs_diff\": %.9g", max_device_diff);
    fputs("},\n", f);
    json_timing(f, "segment", &lat, 1, 0);
    json_timing(f, "segment_batch", &thr, o.batch, !have_device);
    if (have_device) {
      json_timing(f, "segment_device", &dlat, 1, 0);
      json_timing(f, "segment_batch_device", &dthr, o.batch, 1);
    }
    fputs("}\n", f);
    if (fclose(f) != 0) {
      fprintf(stderr, "resunetpp-capi-bench: cannot write %s\n", o.json);
      goto done;
    }
  }
  rc = 0;

done:
  for (i = 0; frames && probs && masks && i < o.batch; ++i) {
    free((void*)frames[i].data);
    free(probs[i]);
    free(masks[i]);
  }
  free(frames);
  free(probs);
  free(masks);
  free(single_p);
  free(single_m);
  free(ms);
  rpp_model_destroy(model);
  return rc;
}
