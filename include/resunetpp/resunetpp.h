/* resunetpp/resunetpp.h — the C API of libresunetpp: ResUNet++ polyp segmentation from a
 * trained checkpoint. The only public header of the library; plain C (C99), usable from C++.
 *
 *   rpp_model_options opts;
 *   rpp_model* model = NULL;
 *   if (rpp_model_options_init(&opts, RPP_API_VERSION) != RPP_STATUS_OK ||
 *       rpp_model_create_from_file("best.safetensors", &opts, &model) != RPP_STATUS_OK) {
 *     fprintf(stderr, "%s\n", rpp_last_error());
 *     ...
 *   }
 *   rpp_image img = {pixels, width, height, 0};            // RGB, 3 bytes per pixel
 *   uint8_t* mask = malloc((size_t)width * height);          // 0 or 255 per pixel
 *   rpp_status s = rpp_segment(model, &img, NULL, mask);
 *   rpp_model_destroy(model);
 *
 * Link with -lresunetpp (pkg-config resunetpp) or, in CMake, find_package(resunetpp) and
 * target_link_libraries(app PRIVATE resunetpp::resunetpp), or resunetpp::resunetpp_static.
 *
 * CONVENTIONS
 * - Every call that can fail returns an rpp_status. RPP_STATUS_OK is 0. On any other value,
 *   rpp_last_error() says what went wrong (the function, the file, what was expected and what
 *   was found). No C++ exception ever leaves the library, and it never calls exit() or abort().
 * - Handles are opaque. Every create has a destroy; destroy accepts NULL.
 * - Pointers passed in are borrowed for the duration of the call only: the library keeps no
 *   reference to any caller memory after a call returns.
 * - Out-parameters: each says who owns what it receives. Buffers the library writes results
 *   into are always allocated and owned by the caller.
 *
 * RESULTS
 *   For each image the library does exactly what `resunetpp predict` does: converts it to the
 *   model's input (bilinear resize with half-pixel centres to size x size, byte / 255), runs the
 *   network, takes sigmoid(logit), resizes that probability map bilinearly back to the image's
 *   own width x height, and thresholds it (probability >= threshold gives 255, else 0). With the
 *   defaults (batch 1, threshold 0.5, no TTA) the mask is byte for byte the PNG that
 *   `resunetpp predict` writes for the same checkpoint and image.
 *
 * THREAD SAFETY
 * - rpp_version, rpp_api_version, rpp_status_name, rpp_output_size and rpp_model_options_init
 *   keep no state: call them from any thread at any time.
 * - rpp_last_error is per thread: it reports the last rpp_* call made by the calling thread.
 * - rpp_model_create_from_file / _from_memory may run concurrently (each makes its own model).
 * - One model may be used by any number of threads at once with rpp_segment,
 *   rpp_segment_batch, the _device variants and the rpp_model_* queries. Each running call holds
 *   one execution context of the model (the inference graph, its working memory and a copy of
 *   the weights); a context is created the first time more calls run at once than contexts exist,
 *   up to rpp_model_options.max_contexts (calls beyond it wait for a free context). Results do not
 *   depend on how many calls run at once.
 * - rpp_model_destroy must not run while any other call on the same model is in progress, and
 *   the handle must not be used afterwards.
 * - All models of a process share one CPU thread pool (RESUNETPP_THREADS threads, default all
 *   cores): one call at a time spreads its work over the pool, and calls that run meanwhile
 *   compute on their own calling thread. Either way they give the same bits.
 *
 * VERSIONING
 *   RPP_API_VERSION is the version of this header. Pass it to rpp_model_options_init: a library
 *   accepts programs built against a header with the same major version and a minor version not
 *   above its own; anything else is refused with RPP_STATUS_UNSUPPORTED and a message naming
 *   both versions (so a program built against a newer header never runs on an older library
 *   that would misread its options). Minor versions only add functions and append fields to the
 *   end of rpp_model_options; the library reads a field only when the api_version stored in the
 *   options is new enough to contain it. A new major version changes the library's soname.
 */
#ifndef RESUNETPP_RESUNETPP_H
#define RESUNETPP_RESUNETPP_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(RPP_BUILDING_LIBRARY)
#define RPP_API __declspec(dllexport)
#elif defined(RPP_STATIC)
#define RPP_API
#else
#define RPP_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define RPP_API __attribute__((visibility("default")))
#else
#define RPP_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- versions ------------------------------------------------------------------------------ */

#define RPP_API_VERSION_MAJOR 1
#define RPP_API_VERSION_MINOR 0
#define RPP_MAKE_API_VERSION(major, minor) (((uint32_t)(major) << 16) | (uint32_t)(minor))
#define RPP_API_VERSION RPP_MAKE_API_VERSION(RPP_API_VERSION_MAJOR, RPP_API_VERSION_MINOR)

/* The library's version as text, e.g. "resunetpp 0.1.0 (C API 1.0, cpu)". Static storage: never
 * free it. */
RPP_API const char* rpp_version(void);

/* The API version the library implements, RPP_MAKE_API_VERSION(major, minor). Compare with
 * RPP_API_VERSION, the version of the header a program was compiled against. */
RPP_API uint32_t rpp_api_version(void);

/* ---- status -------------------------------------------------------------------------------- */

typedef enum rpp_status {
  RPP_STATUS_OK = 0,
  RPP_STATUS_INVALID_ARGUMENT = 1, /* a NULL pointer, a size or stride out of range, a bad option */
  RPP_STATUS_IO_ERROR = 2,         /* a file could not be read */
  RPP_STATUS_BAD_CHECKPOINT = 3,   /* not a valid checkpoint, or one of another architecture */
  RPP_STATUS_UNSUPPORTED = 4,      /* valid but not available in this build (CUDA, bf16), or an
                                      incompatible API version */
  RPP_STATUS_OUT_OF_MEMORY = 5,    /* an allocation failed, or the model would need more memory
                                      than the machine has */
  RPP_STATUS_INTERNAL = 6          /* a bug in the library: please report the message */
} rpp_status;

/* The enumerator's name, e.g. "RPP_STATUS_IO_ERROR"; "RPP_STATUS_UNKNOWN" for other values.
 * Static storage: never free it. */
RPP_API const char* rpp_status_name(rpp_status status);

/* The message of the last call returning an rpp_status made by the calling thread: "" if it
 * returned RPP_STATUS_OK. Never NULL. The string belongs to the library and stays valid until the
 * calling thread's next call of a function returning an rpp_status, or the thread's exit; copy it
 * to keep it. */
RPP_API const char* rpp_last_error(void);

/* ---- model --------------------------------------------------------------------------------- */

/* A loaded model: weights plus its execution contexts. Opaque. */
typedef struct rpp_model rpp_model;

/* How to load and run a model. Initialise with rpp_model_options_init, then change fields. */
typedef struct rpp_model_options {
  /* The header version the caller was built against, written by rpp_model_options_init. A
   * struct not initialised by it (api_version 0) is refused. */
  uint32_t api_version;
  /* "cpu" (default; NULL means "cpu") or "cuda" / "cuda:N". A CUDA device needs a library built
   * with CUDA and cuDNN (rpp_version() then lists "cuda") and a visible GPU; otherwise create
   * returns RPP_STATUS_UNSUPPORTED naming the reason. Each context of a CUDA model holds its own
   * device memory and stream. The CUDA path is new and has not yet been verified on a GPU.
   * Read during create only. */
  const char* device;
  /* "fp32" (default; NULL means "fp32") or "bf16": activations stored in bf16 and convolutions
   * on bf16 tensor cores, arithmetic in fp32; probabilities then differ from fp32's by about
   * 1e-3. bf16 needs a CUDA device (refused with RPP_STATUS_UNSUPPORTED on "cpu") and has not
   * yet been verified on a GPU. Read during create only. */
  const char* precision;
  /* The model's square input resolution: 0 (default) takes the checkpoint's metadata "size"
   * (256 when absent, e.g. a PyTorch state_dict); otherwise a multiple of 8 in [8, 16384]. */
  int32_t input_size;
  /* Images per forward pass in rpp_segment_batch, in [1, 4096]; default 1. Larger batches are
   * faster per image but may change probabilities in the last bits, so masks may differ from
   * `resunetpp predict` (which runs one image at a time) at pixels lying on the threshold. A
   * call with a single image (rpp_segment, or a batch call with count 1) runs one image at a
   * time whatever this is: a model with batch > 1 keeps a batch-1 context beside each batch
   * context for that (more memory, about one more copy of the weights per context). The last
   * forward pass of a batch call whose count is not a multiple of batch is padded to batch. */
  int32_t batch;
  /* 0 (default) or 1: flip test-time augmentation, the average of the probabilities of the
   * image and its horizontal and vertical flips (`resunetpp predict --tta`). */
  int32_t tta;
  /* At most this many calls on the model compute at the same time (further calls wait); each
   * concurrent call needs its own context. 0 (default): no limit, contexts are created on
   * demand. Must be >= 0. */
  int32_t max_contexts;
  /* Mask threshold on the probability, strictly between 0 and 1; default 0.5. */
  double threshold;
  /* A cudaStream_t for the _device calls on a "cuda" model (NULL: the default stream); ignored
   * on the CPU. The library never creates, synchronises beyond its own work, or destroys it. */
  void* cuda_stream;
} rpp_model_options;

/* Fills *options with the defaults and records api_version, which must be RPP_API_VERSION:
 *   rpp_model_options_init(&opts, RPP_API_VERSION);
 * RPP_STATUS_UNSUPPORTED if the library cannot serve a program built against that header version
 * (see VERSIONING above); RPP_STATUS_INVALID_ARGUMENT if options is NULL. */
RPP_API rpp_status rpp_model_options_init(rpp_model_options* options, uint32_t api_version);

/* Loads a checkpoint file: any checkpoint written by resunetpp (checkpoint_best, checkpoint_last,
 * ...; the filters and size come from its metadata), or a PyTorch state_dict of the default
 * network (filters 16,32,64,128,256) saved with safetensors. `options` may be NULL (defaults).
 * On success *model receives a new model owned by the caller, to be released with
 * rpp_model_destroy; on failure *model is set to NULL (when model is not NULL).
 * Errors: RPP_STATUS_INVALID_ARGUMENT (NULL path or model, bad options), RPP_STATUS_IO_ERROR
 * (missing or unreadable file), RPP_STATUS_BAD_CHECKPOINT (corrupt, truncated, not safetensors,
 * missing, unexpected or wrongly shaped tensors, bad metadata), RPP_STATUS_UNSUPPORTED (device,
 * precision or api_version), RPP_STATUS_OUT_OF_MEMORY. */
RPP_API rpp_status rpp_model_create_from_file(const char* path, const rpp_model_options* options,
                                              rpp_model** model);

/* Same from the bytes of a checkpoint file in memory (size bytes at data). The library copies
 * what it needs: data may be freed as soon as the call returns. */
RPP_API rpp_status rpp_model_create_from_memory(const void* data, size_t size, const rpp_model_options* options,
                                                rpp_model** model);

/* Releases a model and all its memory. NULL is a no-op. See THREAD SAFETY. */
RPP_API void rpp_model_destroy(rpp_model* model);

/* The model's input resolution (the images are resized to size x size): writes *size. */
RPP_API rpp_status rpp_model_input_size(const rpp_model* model, int32_t* size);

/* The model's five channel widths (stem, encoders 1-3, bridge): writes filters[0..4]. */
RPP_API rpp_status rpp_model_filters(const rpp_model* model, int32_t filters[5]);

/* ---- running ------------------------------------------------------------------------------- */

/* An 8-bit RGB image in caller memory: width x height pixels, 3 interleaved bytes per pixel
 * (R, G, B), rows top to bottom, row r starting at data + r * stride. width and height are in
 * [1, 16384]; stride is 0 (meaning 3 * width) or at least 3 * width. For the _device calls data is
 * a device pointer. */
typedef struct rpp_image {
  const uint8_t* data;
  int32_t width;
  int32_t height;
  size_t stride;
} rpp_image;

/* The sizes in bytes of the outputs for an image of width x height: the probability map
 * (width * height floats) and the mask (width * height bytes). Either pointer may be NULL.
 * RPP_STATUS_INVALID_ARGUMENT unless width and height are in [1, 16384]. */
RPP_API rpp_status rpp_output_size(int32_t width, int32_t height, size_t* probability_bytes, size_t* mask_bytes);

/* Segments one image. Outputs, at the image's own width x height, row-major with no padding,
 * caller-allocated (see rpp_output_size), either may be NULL but not both:
 *   probability: width * height floats, the polyp probability of each pixel, in [0, 1];
 *   mask:        width * height bytes, 255 where probability >= threshold, else 0.
 * Errors: RPP_STATUS_INVALID_ARGUMENT (NULL model or image or data, sizes or stride out of range,
 * both outputs NULL), RPP_STATUS_OUT_OF_MEMORY. */
RPP_API rpp_status rpp_segment(rpp_model* model, const rpp_image* image, float* probability, uint8_t* mask);

/* Segments count images, running up to options.batch of them per forward pass. images points to
 * count descriptors. probabilities and masks are each NULL (no such output for any image) or an
 * array of count pointers, each as in rpp_segment (NULL: skip that output for that image); every
 * image needs at least one output. All descriptors are checked before any work starts, so on
 * RPP_STATUS_INVALID_ARGUMENT nothing has been written; after an error during the run, the
 * outputs may be partly written. count 0 returns RPP_STATUS_OK and does nothing. */
RPP_API rpp_status rpp_segment_batch(rpp_model* model, const rpp_image* images, size_t count,
                                     float* const* probabilities, uint8_t* const* masks);

/* The CUDA device-pointer variants, for a model created with device "cuda:N": image data
 * (rpp_image.data) and the probability / mask outputs are device memory on that GPU, allocated
 * and owned by the caller, sized as for rpp_segment. The work is ordered after everything queued
 * on cuda_stream before the call (NULL: the model's options.cuda_stream; NULL there too: the
 * legacy default stream), and everything queued on that stream after the call runs after it;
 * the host never waits. So the outputs are ready once the caller's stream reaches that point,
 * e.g. after cudaStreamSynchronize(cuda_stream); the images must stay valid until then. Same
 * arithmetic as rpp_segment, so the results equal rpp_segment's on the same model (probabilities
 * to about 1e-6: the sigmoid runs on the GPU). Arguments are checked as rpp_segment checks them;
 * a CPU model returns RPP_STATUS_UNSUPPORTED, as does a model with tta = 1 (not available on
 * this path yet). Thread safety as for rpp_segment. */
RPP_API rpp_status rpp_segment_device(rpp_model* model, const rpp_image* image, float* probability, uint8_t* mask,
                                      void* cuda_stream);
RPP_API rpp_status rpp_segment_batch_device(rpp_model* model, const rpp_image* images, size_t count,
                                            float* const* probabilities, uint8_t* const* masks, void* cuda_stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* RESUNETPP_RESUNETPP_H */
