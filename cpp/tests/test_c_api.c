/* The C API on bad input: every call returns an error object with the right code and one line, never crashes.
 * Run with the folder cpp_parity.py prepare wrote: test_c_api WORK */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rar/rar.h"

static int failures = 0;

/* Expect `result` to be an error of `code` whose one-line message contains `phrase`; consumes it. */
static void expect(RarResult* result, RarErrorCode code, const char* phrase, const char* what) {
  if (result == NULL) {
    printf("FAIL %s: no error\n", what);
    failures++;
    return;
  }
  const char* message = RarResultGetMessage(result);
  if (RarResultGetCode(result) != code || strstr(message, phrase) == NULL || strchr(message, '\n') != NULL) {
    printf("FAIL %s: code %d, message: %s\n", what, (int)RarResultGetCode(result), message);
    failures++;
  } else {
    printf("ok   %s: %s\n", what, message);
  }
  RarResultDestroy(result);
}

static RarPipeline* open_pipeline(const char* work, const char* name) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", work, name);
  RarPipeline* pipeline = NULL;
  RarResult* result = RarPipelineCreate(path, "onnxruntime", "cpu", &pipeline);
  if (result != NULL) {
    printf("FAIL opening %s: %s\n", path, RarResultGetMessage(result));
    RarResultDestroy(result);
    exit(1);
  }
  return pipeline;
}

static void expect_open_fails(const char* work, const char* name, const char* backend, RarErrorCode code,
                              const char* phrase) {
  char path[4096];
  snprintf(path, sizeof(path), "%s/%s", work, name);
  RarPipeline* pipeline = (RarPipeline*)0x1;
  expect(RarPipelineCreate(path, backend, NULL, &pipeline), code, phrase, name);
  if (pipeline != NULL) {
    printf("FAIL %s: out was not set to NULL\n", name);
    failures++;
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_c_api WORK\n");
    return 2;
  }
  const char* work = argv[1];
  expect_open_fails(work, "no_such_folder", "onnxruntime", RAR_ERROR_ARTIFACTS, "not found");
  expect_open_fails(work, "corrupt_manifest", "onnxruntime", RAR_ERROR_ARTIFACTS, "is corrupt");
  expect_open_fails(work, "edited_manifest", "onnxruntime", RAR_ERROR_ARTIFACTS, "was edited");
  expect_open_fails(work, "truncated_graph", "onnxruntime", RAR_ERROR_ARTIFACTS, "truncated");
  expect_open_fails(work, "swapped_graph", "onnxruntime", RAR_ERROR_ARTIFACTS, "replaced");
  expect_open_fails(work, "fp32", "tflite", RAR_ERROR_INVALID_ARGUMENT, "unknown backend");
  expect_open_fails(work, "fp16_engines", "tensorrt", RAR_ERROR_BACKEND, "");  /* no TensorRT here, or no GPU */
  expect(RarPipelineCreate(NULL, NULL, NULL, NULL), RAR_ERROR_INVALID_ARGUMENT, "must not be NULL", "NULL folder");

  RarPipeline* pipeline = open_pipeline(work, "fp32");
  RarModelInfo info;
  if (RarPipelineGetModelInfo(pipeline, &info) != NULL || info.image_seq_len != 16 || info.max_batch != 4) {
    printf("FAIL model info\n");
    failures++;
  }
  int64_t tokens[16 * 8];
  const int64_t labels[] = {1, 2, 3, 4, 5};
  const int64_t out_of_range[] = {1000};
  RarGenerateParams* params = NULL;
  RarResultDestroy(RarGenerateParamsCreate(&params));
  expect(RarPipelineGenerateTokens(pipeline, out_of_range, 1, params, tokens), RAR_ERROR_INVALID_ARGUMENT,
         "class id 1000 is out of range", "class id out of range");
  expect(RarPipelineGenerateTokens(pipeline, labels, 0, params, tokens), RAR_ERROR_INVALID_ARGUMENT,
         "no class labels", "no labels");
  RarResultDestroy(RarGenerateParamsSetBatchSize(params, 5));
  expect(RarPipelineGenerateTokens(pipeline, labels, 5, params, tokens), RAR_ERROR_INVALID_ARGUMENT,
         "outside the artifacts' profile [1, 4]", "batch over the profile");
  RarResultDestroy(RarGenerateParamsSetBatchSize(params, 2));
  RarResultDestroy(RarGenerateParamsSetGuidanceScale(params, NAN));
  expect(RarPipelineGenerateTokens(pipeline, labels, 1, params, tokens), RAR_ERROR_INVALID_ARGUMENT, "finite",
         "NaN guidance scale");
  RarResultDestroy(RarGenerateParamsSetGuidanceScale(params, 4.0));
  RarResultDestroy(RarGenerateParamsSetTemperature(params, INFINITY));
  expect(RarPipelineGenerateTokens(pipeline, labels, 1, params, tokens), RAR_ERROR_INVALID_ARGUMENT, "finite",
         "infinite temperature");
  RarResultDestroy(RarGenerateParamsSetTemperature(params, 1.0));
  RarResultDestroy(RarGenerateParamsSetSeed(params, (uint64_t)1 << 63));
  expect(RarPipelineGenerateTokens(pipeline, labels, 1, params, tokens), RAR_ERROR_INVALID_ARGUMENT, "seed",
         "seed too large");
  RarResultDestroy(RarGenerateParamsSetSeed(params, 7));
  expect(RarPipelineGenerateTokens(pipeline, NULL, 1, params, tokens), RAR_ERROR_INVALID_ARGUMENT, "NULL",
         "NULL labels");
  RarResult* ok = RarPipelineGenerateTokens(pipeline, labels, 3, params, tokens);
  if (ok != NULL) {
    printf("FAIL a valid generation: %s\n", RarResultGetMessage(ok));
    failures++;
    RarResultDestroy(ok);
  }
  expect(RarPipelineSetConditionBudget(pipeline, -1), RAR_ERROR_INVALID_ARGUMENT, "condition budget",
         "negative condition budget");
  int64_t bad_tokens[16] = {0};
  bad_tokens[3] = 1024;
  uint8_t images[64 * 64 * 3];
  expect(RarPipelineDecode(pipeline, bad_tokens, 1, 0, images), RAR_ERROR_INVALID_ARGUMENT, "token ids",
         "token out of range");
  RarGenerateParamsDestroy(params);
  RarPipelineDestroy(pipeline);
  printf(failures ? "%d FAILED\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
