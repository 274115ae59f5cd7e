// The C API (rar.h): handles over the C++ implementation; every exception becomes a RarResult.
#include <algorithm>
#include <memory>
#include <new>
#include <string>

#include "error.hpp"
#include "pipeline.hpp"
#include "rar/rar.h"
#include "rar_slots.hpp"

struct RarResult {
  RarErrorCode code;
  std::string message;
};

struct RarPipeline {
  RarPipeline(const std::string& directory, const std::string& backend, const std::string& device)
      : pipeline(directory, backend, device) {}
  rar::detail::Pipeline pipeline;
};

struct RarGenerateParams {
  rar::detail::Sampling sampling;
};

struct RarScheduler {
  RarPipeline* owner;
  int64_t slots;
  std::unique_ptr<rar::detail::RarSlots> tables[2];  // [0]: guided images, slots 0 .. S-1; [1]: unguided, S .. 2S-1
};

namespace {

RarResult* Error(RarErrorCode code, const std::string& message) {
  return new (std::nothrow) RarResult{code, message};
}

template <typename Body>
RarResult* Guard(Body body) {
  try {
    body();
    return nullptr;
  } catch (const rar::detail::Failure& failure) {
    return Error(failure.code(), failure.what());
  } catch (const std::bad_alloc&) {
    return Error(RAR_ERROR_RUNTIME, "out of memory");
  } catch (const std::exception& error) {
    return Error(RAR_ERROR_RUNTIME, error.what());
  } catch (...) {
    return Error(RAR_ERROR_RUNTIME, "unknown error");
  }
}

void Require(const void* pointer, const char* name) {
  if (pointer == nullptr) rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, std::string(name) + " must not be NULL");
}

}  // namespace

extern "C" {

RarErrorCode RarResultGetCode(const RarResult* result) { return result ? result->code : RAR_OK; }
const char* RarResultGetMessage(const RarResult* result) { return result ? result->message.c_str() : ""; }
void RarResultDestroy(RarResult* result) { delete result; }

RarResult* RarPipelineCreate(const char* artifacts_dir, const char* backend, const char* device, RarPipeline** out) {
  return Guard([&] {
    Require(artifacts_dir, "artifacts_dir"), Require(out, "out");
    *out = nullptr;
    const std::string name = backend ? backend : "onnxruntime";
    const std::string where = device ? device : (name == "tensorrt" ? "cuda" : "cpu");
    *out = new RarPipeline(artifacts_dir, name, where);
  });
}

void RarPipelineDestroy(RarPipeline* pipeline) { delete pipeline; }

RarResult* RarPipelineGetModelInfo(const RarPipeline* pipeline, RarModelInfo* info) {
  return Guard([&] {
    Require(pipeline, "pipeline"), Require(info, "info");
    *info = pipeline->pipeline.Info();
  });
}

RarResult* RarGenerateParamsCreate(RarGenerateParams** out) {
  return Guard([&] {
    Require(out, "out");
    *out = new RarGenerateParams{};
  });
}

void RarGenerateParamsDestroy(RarGenerateParams* params) { delete params; }

RarResult* RarGenerateParamsSetGuidanceScale(RarGenerateParams* params, double scale) {
  return Guard([&] { Require(params, "params"), params->sampling.guidance_scale = scale; });
}
RarResult* RarGenerateParamsSetGuidancePow(RarGenerateParams* params, double pow) {
  return Guard([&] { Require(params, "params"), params->sampling.guidance_pow = pow; });
}
RarResult* RarGenerateParamsSetTemperature(RarGenerateParams* params, double temperature) {
  return Guard([&] { Require(params, "params"), params->sampling.temperature = temperature; });
}
RarResult* RarGenerateParamsSetSeed(RarGenerateParams* params, uint64_t seed) {
  return Guard([&] { Require(params, "params"), params->sampling.seed = seed; });
}
RarResult* RarGenerateParamsSetBatchSize(RarGenerateParams* params, int64_t batch_size) {
  return Guard([&] { Require(params, "params"), params->sampling.batch_size = batch_size; });
}
RarResult* RarGenerateParamsSetTopK(RarGenerateParams* params, int64_t top_k) {
  return Guard([&] { Require(params, "params"), params->sampling.top_k = top_k; });
}
RarResult* RarGenerateParamsSetTopP(RarGenerateParams* params, double top_p) {
  return Guard([&] { Require(params, "params"), params->sampling.top_p = top_p; });
}
RarResult* RarGenerateParamsSetParallelWindow(RarGenerateParams* params, int64_t window) {
  return Guard([&] { Require(params, "params"), params->sampling.parallel_window = window; });
}

RarResult* RarPipelineGenerateTokens(RarPipeline* pipeline, const int64_t* class_labels, size_t num_labels,
                                     const RarGenerateParams* params, int64_t* tokens) {
  return Guard([&] {
    Require(pipeline, "pipeline");  // no labels (NULL, 0: an empty vector's data()) is the pipeline's refusal
    if (num_labels > 0) Require(class_labels, "class_labels"), Require(tokens, "tokens");
    const std::vector<int64_t> labels(class_labels, class_labels + num_labels);
    const std::vector<int64_t> result =
        pipeline->pipeline.GenerateTokens(labels, params ? params->sampling : rar::detail::Sampling{});
    std::copy(result.begin(), result.end(), tokens);
  });
}

RarResult* RarPipelineGenerate(RarPipeline* pipeline, const int64_t* class_labels, size_t num_labels,
                               const RarGenerateParams* params, int64_t* tokens, uint8_t* images) {
  return Guard([&] {
    Require(pipeline, "pipeline");
    if (num_labels > 0) Require(class_labels, "class_labels"), Require(images, "images");
    const std::vector<int64_t> labels(class_labels, class_labels + num_labels);
    const auto [ids, pixels] = pipeline->pipeline.Generate(labels, params ? params->sampling : rar::detail::Sampling{});
    if (tokens != nullptr) std::copy(ids.begin(), ids.end(), tokens);
    std::copy(pixels.begin(), pixels.end(), images);
  });
}

RarResult* RarPipelineDecode(RarPipeline* pipeline, const int64_t* tokens, size_t num_images, int64_t batch_size,
                             uint8_t* images) {
  return Guard([&] {
    Require(pipeline, "pipeline");
    if (num_images > 0) Require(tokens, "tokens"), Require(images, "images");
    const size_t n = static_cast<size_t>(pipeline->pipeline.Info().image_seq_len);
    const std::vector<uint8_t> pixels =
        pipeline->pipeline.Decode(std::vector<int64_t>(tokens, tokens + num_images * n), batch_size);
    std::copy(pixels.begin(), pixels.end(), images);
  });
}

RarResult* RarPipelineSetConditionBudget(RarPipeline* pipeline, int64_t bytes) {
  return Guard([&] {
    Require(pipeline, "pipeline");
    pipeline->pipeline.SetConditionBudget(bytes);
  });
}

RarResult* RarPipelineGetMeanDecodeCalls(const RarPipeline* pipeline, double* calls) {
  return Guard([&] {
    Require(pipeline, "pipeline"), Require(calls, "calls");
    *calls = pipeline->pipeline.MeanDecodeCalls();
  });
}

RarResult* RarPipelineGetTimings(const RarPipeline* pipeline, RarTimings* timings) {
  return Guard([&] {
    Require(pipeline, "pipeline"), Require(timings, "timings");
    *timings = pipeline->pipeline.Timings();
  });
}

RarResult* RarSchedulerCreate(RarPipeline* pipeline, int64_t slots, RarScheduler** out) {
  return Guard([&] {
    Require(pipeline, "pipeline"), Require(out, "out");
    *out = nullptr;
    const rar::detail::Artifacts& artifacts = pipeline->pipeline.artifacts();
    if (artifacts.is_var()) {
      rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, "the C API's in-flight scheduler runs RAR folders so far; " +
                        artifacts.directory.string() + " holds a VAR export (Python: rar_deploy.runtime.scheduler)");
    }
    if (slots < 1 || slots > artifacts.max_batch) {
      rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, "slots must lie in [1, " + std::to_string(artifacts.max_batch) +
                        "] (the artifacts' batch profile), got " + std::to_string(slots));
    }
    *out = new RarScheduler{pipeline, slots, {}};
  });
}

void RarSchedulerDestroy(RarScheduler* scheduler) { delete scheduler; }

RarResult* RarSchedulerAdmit(RarScheduler* scheduler, int64_t class_label, const RarGenerateParams* params,
                             int64_t image_index, int64_t* slot) {
  return Guard([&] {
    Require(scheduler, "scheduler"), Require(slot, "slot");
    rar::detail::Pipeline& pipeline = scheduler->owner->pipeline;
    const rar::detail::Sampling sampling = params ? params->sampling : rar::detail::Sampling{};
    pipeline.CheckLabels({class_label});
    const auto values = pipeline.CheckRar(sampling);
    if (image_index < 0) {
      rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, "image index must be >= 0, got " + std::to_string(image_index));
    }
    const int kind = values.guidance_scale != 0 ? 0 : 1;
    std::lock_guard<std::mutex> lock(pipeline.mutex());
    auto& table = scheduler->tables[kind];
    if (!table) {
      table = std::make_unique<rar::detail::RarSlots>(pipeline.artifacts(), pipeline.backend(), scheduler->slots,
                                                      kind == 0);
    }
    for (int64_t free = 0; free < scheduler->slots; ++free) {
      if (!table->Busy(free)) {
        table->Admit(free, class_label, values.guidance_scale, values.guidance_pow, values.temperature, sampling.seed,
                     image_index);
        *slot = free + kind * scheduler->slots;
        return;
      }
    }
    rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, "no free slot for this image (" + std::to_string(scheduler->slots) +
                      " " + (kind == 0 ? "guided" : "unguided") + " images run): step and collect a finished one first");
  });
}

RarResult* RarSchedulerStep(RarScheduler* scheduler, int64_t* finished, size_t capacity, size_t* num_finished) {
  return Guard([&] {
    Require(scheduler, "scheduler"), Require(num_finished, "num_finished");
    if (capacity > 0) Require(finished, "finished");
    *num_finished = 0;
    std::lock_guard<std::mutex> lock(scheduler->owner->pipeline.mutex());
    std::vector<int64_t> done;
    for (int kind = 0; kind < 2; ++kind) {
      if (!scheduler->tables[kind]) continue;
      for (int64_t slot : scheduler->tables[kind]->Step()) done.push_back(slot + kind * scheduler->slots);
    }
    if (done.size() > capacity) {  // the step ran; its finished slots stay collectable
      rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, std::to_string(done.size()) + " images finished but `finished` "
                        "holds " + std::to_string(capacity) + ": pass a capacity of 2 * slots");
    }
    std::copy(done.begin(), done.end(), finished);
    *num_finished = done.size();
  });
}

RarResult* RarSchedulerCollect(RarScheduler* scheduler, int64_t slot, int64_t* tokens, uint8_t* image) {
  return Guard([&] {
    Require(scheduler, "scheduler");
    if (slot < 0 || slot >= 2 * scheduler->slots || !scheduler->tables[slot / scheduler->slots] ||
        !scheduler->tables[slot / scheduler->slots]->Done(slot % scheduler->slots)) {
      rar::detail::Fail(RAR_ERROR_INVALID_ARGUMENT, "slot " + std::to_string(slot) + " holds no finished image: "
                        "collect the slots RarSchedulerStep reported");
    }
    rar::detail::Pipeline& pipeline = scheduler->owner->pipeline;
    auto& table = *scheduler->tables[slot / scheduler->slots];
    const int64_t index = slot % scheduler->slots;
    const std::vector<int64_t> image_tokens = table.Tokens(index);
    if (tokens) std::copy(image_tokens.begin(), image_tokens.end(), tokens);
    if (image) {
      const std::vector<uint8_t> pixels = pipeline.Decode(image_tokens, 1);  // takes the pipeline's lock
      std::copy(pixels.begin(), pixels.end(), image);
    }
    std::lock_guard<std::mutex> lock(pipeline.mutex());
    table.Release(index);
  });
}

}  // extern "C"
