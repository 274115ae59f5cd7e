/* rar-deploy C API: run an artifact folder written by rar-export (docs/CONTRACT.md) from C or any language
 * with a C FFI, of either model family: RAR (tokens, then RarPipelineDecode) or VAR (next-scale prediction:
 * tokens and images in one RarPipelineGenerate, which runs RAR folders too). Conventions of ONNX Runtime
 * GenAI's C API: opaque handles with create/destroy pairs, and every fallible call returns a RarResult: NULL
 * on success, else an error object (code and one-line message) that the caller destroys. No exception
 * crosses this boundary. A RarPipeline may be used from several threads; its calls are serialised. */
#ifndef RAR_DEPLOY_RAR_H
#define RAR_DEPLOY_RAR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RAR_API __declspec(dllexport)
#else
#define RAR_API __attribute__((visibility("default")))
#endif

typedef enum RarErrorCode {
  RAR_OK = 0,
  RAR_ERROR_INVALID_ARGUMENT = 1, /* a value the caller passed: labels, sampling values, sizes, null pointers */
  RAR_ERROR_ARTIFACTS = 2,        /* the folder: missing, manifest invalid or edited, files damaged or replaced */
  RAR_ERROR_BACKEND = 3,          /* the backend cannot run here: unknown, not built in, no GPU, engines for another */
  RAR_ERROR_RUNTIME = 4           /* a failure while running a graph */
} RarErrorCode;

typedef struct RarResult RarResult;
typedef struct RarPipeline RarPipeline;
typedef struct RarGenerateParams RarGenerateParams;

RAR_API RarErrorCode RarResultGetCode(const RarResult* result);
RAR_API const char* RarResultGetMessage(const RarResult* result);
RAR_API void RarResultDestroy(RarResult* result);

/* backend: "onnxruntime" or "tensorrt" (when built with TensorRT); device: "cpu", "cuda" or "cuda:N" (NULL:
 * cpu for onnxruntime, cuda for tensorrt). The folder's manifest and graph files are checked first. */
RAR_API RarResult* RarPipelineCreate(const char* artifacts_dir, const char* backend, const char* device,
                                     RarPipeline** out);
RAR_API void RarPipelineDestroy(RarPipeline* pipeline);

typedef enum RarModelFamily {
  RAR_FAMILY_RAR = 0, /* condition, decode_step, vq_decoder */
  RAR_FAMILY_VAR = 1  /* var_step, var_decoder: one step per scale */
} RarModelFamily;

typedef struct RarModelInfo {
  int64_t image_seq_len;   /* tokens per image: N (RAR); L, every scale's side^2 summed (VAR) */
  int64_t codebook_size;   /* V */
  int64_t num_classes;
  int64_t image_height, image_width, image_channels;
  int64_t max_batch;       /* the artifacts' batch profile */
  double default_guidance_scale, default_guidance_pow, default_temperature; /* guidance pow: RAR's (0 for VAR) */
  /* fields are only ever appended */
  RarModelFamily family;
  int64_t num_scales;      /* VAR: K (0 for RAR) */
  int64_t default_top_k;   /* VAR (0 for RAR) */
  double default_top_p;    /* VAR (0 for RAR) */
} RarModelInfo;
RAR_API RarResult* RarPipelineGetModelInfo(const RarPipeline* pipeline, RarModelInfo* info);

/* Sampling settings of one call; unset values are the model size's published defaults (the manifest's). A
 * value set that the pipeline's family does not have (guidance pow on VAR, top-k or top-p on RAR) makes the
 * generation fail with RAR_ERROR_INVALID_ARGUMENT. */
RAR_API RarResult* RarGenerateParamsCreate(RarGenerateParams** out);
RAR_API void RarGenerateParamsDestroy(RarGenerateParams* params);
/* guidance scale: 0 is no guidance; |scale| <= 10000 (beyond it the guided logits overflow float32) */
RAR_API RarResult* RarGenerateParamsSetGuidanceScale(RarGenerateParams* params, double scale);
RAR_API RarResult* RarGenerateParamsSetGuidancePow(RarGenerateParams* params, double pow);
RAR_API RarResult* RarGenerateParamsSetTemperature(RarGenerateParams* params, double temperature); /* 0: greedy */
RAR_API RarResult* RarGenerateParamsSetSeed(RarGenerateParams* params, uint64_t seed); /* < 2^63; default 0 */
RAR_API RarResult* RarGenerateParamsSetBatchSize(RarGenerateParams* params, int64_t batch_size);
RAR_API RarResult* RarGenerateParamsSetTopK(RarGenerateParams* params, int64_t top_k); /* VAR: >= 0, 0 off */
RAR_API RarResult* RarGenerateParamsSetTopP(RarGenerateParams* params, double top_p);  /* VAR: [0, 1), 0 off */
/* RAR: speculative Jacobi decoding with this many draft tokens per image (1 .. 16; the folder needs rar-export
 * --parallel-decoding); 0, the default, one token a decode call. Greedy: the same tokens; sampling: the same
 * distribution, other draws (docs/CONTRACT.md). */
RAR_API RarResult* RarGenerateParamsSetParallelWindow(RarGenerateParams* params, int64_t window);

/* Tokens [num_labels, N] into `tokens` (num_labels * N int64). Image i's noise depends on (seed, i) alone. */
RAR_API RarResult* RarPipelineGenerateTokens(RarPipeline* pipeline, const int64_t* class_labels, size_t num_labels,
                                             const RarGenerateParams* params, int64_t* tokens);
/* Tokens [num_labels, N] (unless `tokens` is NULL) and uint8 images [num_labels, H, W, C] in one call, either
 * family: RAR decodes its tokens at the params' batch size; VAR decodes the loop's last f_hat. */
RAR_API RarResult* RarPipelineGenerate(RarPipeline* pipeline, const int64_t* class_labels, size_t num_labels,
                                       const RarGenerateParams* params, int64_t* tokens, uint8_t* images);
/* RAR: uint8 images [num_images, H, W, C] into `images` from tokens [num_images, N]. VAR refuses it (its
 * images come from the loop's f_hat): use RarPipelineGenerate. */
RAR_API RarResult* RarPipelineDecode(RarPipeline* pipeline, const int64_t* tokens, size_t num_images,
                                     int64_t batch_size, uint8_t* images);

/* RAR: bytes the condition rows of one generation may take (default 2 GiB): they are computed for the most
 * positions W that fit at a time (all N + 1 when they fit), and for one position per step when none do
 * (0 asks for that). Any W gives the same tokens. VAR has no condition rows: refused. */
RAR_API RarResult* RarPipelineSetConditionBudget(RarPipeline* pipeline, int64_t bytes);

/* RAR: decode calls an image of the last generation took, on average (N + 1 without a parallel window). */
RAR_API RarResult* RarPipelineGetMeanDecodeCalls(const RarPipeline* pipeline, double* calls);

/* The last generation's. VAR: steps_ms and steps are every scale's var_step, decode_ms the var_decoder;
 * prefill_ms and condition_window are 0. */
typedef struct RarTimings {
  double start_ms;     /* uploading the last GenerateTokens' inputs */
  double prefill_ms;   /* positions 0 and 1, with the first window of condition rows (all of them: the table) */
  double steps_ms;     /* positions 2 .. N */
  int64_t steps;
  int64_t condition_window; /* positions of condition rows computed at a time (N + 1: the whole table) */
  double decode_ms;    /* the last Decode */
} RarTimings;
RAR_API RarResult* RarPipelineGetTimings(const RarPipeline* pipeline, RarTimings* timings);

/* In-flight batching (RAR folders): up to `slots` images generated at once (per kind: guided images and images
   without guidance run in tables of their own), each admitted at any step with its own label, image index, seed
   and sampling values, each leaving the step it is done. The tokens and image of every image equal those of
   RarPipelineGenerate for its label at position `image_index` of a call with the same seed and values, whatever
   runs beside it (docs/CONTRACT.md). No threads: the caller admits, steps and collects (a server's loop); the
   scheduler uses its pipeline's backend, so calls on the pipeline and on its scheduler are serialised. */
typedef struct RarScheduler RarScheduler;
/* slots: 1 .. the artifacts' max batch; the pipeline must outlive the scheduler */
RAR_API RarResult* RarSchedulerCreate(RarPipeline* pipeline, int64_t slots, RarScheduler** out);
RAR_API void RarSchedulerDestroy(RarScheduler* scheduler);
/* Admit one image into a free slot (its id into *slot); params: sampling values and seed (NULL: defaults; batch
   size ignored). RAR_ERROR_INVALID_ARGUMENT when no slot of its kind is free: step and collect first. */
RAR_API RarResult* RarSchedulerAdmit(RarScheduler* scheduler, int64_t class_label, const RarGenerateParams* params,
                                     int64_t image_index, int64_t* slot);
/* One decode step for every image admitted; the slots whose image finished at this step go to
   finished[0 .. *num_finished) (capacity: at least 2 * slots covers every case). */
RAR_API RarResult* RarSchedulerStep(RarScheduler* scheduler, int64_t* finished, size_t capacity,
                                    size_t* num_finished);
/* A finished slot's tokens [N] (unless NULL) and uint8 image [H, W, C] (unless NULL); the slot is free after. */
RAR_API RarResult* RarSchedulerCollect(RarScheduler* scheduler, int64_t slot, int64_t* tokens, uint8_t* image);

#ifdef __cplusplus
}
#endif
#endif /* RAR_DEPLOY_RAR_H */
