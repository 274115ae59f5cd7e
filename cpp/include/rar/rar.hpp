// rar-deploy C++ API: a header-only RAII wrapper over the C API (rar.h). Errors become rar::Error.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "rar/rar.h"

namespace rar {

class Error : public std::runtime_error {
 public:
  Error(RarErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  RarErrorCode code() const { return code_; }

 private:
  RarErrorCode code_;
};

inline void Check(RarResult* result) {
  if (result == nullptr) return;
  std::unique_ptr<RarResult, decltype(&RarResultDestroy)> owned(result, RarResultDestroy);
  throw Error(RarResultGetCode(result), RarResultGetMessage(result));
}

struct Sampling {
  std::optional<double> guidance_scale, guidance_pow, temperature;  // unset: the model size's defaults
  uint64_t seed = 0;
  std::optional<int64_t> batch_size;  // unset: the artifacts' largest
  std::optional<int64_t> top_k;       // VAR only: >= 0, 0 off (guidance_pow is RAR only)
  std::optional<double> top_p;        // VAR only: [0, 1), 0 off
  int64_t parallel_window = 0;        // RAR: speculative Jacobi decoding's drafts per image (1 .. 16); 0 off
};

struct Images {
  std::vector<uint8_t> pixels;  // [count, height, width, channels]
  int64_t count = 0, height = 0, width = 0, channels = 0;
};

struct Generation {
  std::vector<int64_t> tokens;  // [count, N], row-major
  Images images;
};

class Pipeline {
 public:
  explicit Pipeline(const std::string& artifacts_dir, const std::string& backend = "onnxruntime",
                    const std::string& device = "") {
    RarPipeline* raw = nullptr;
    Check(RarPipelineCreate(artifacts_dir.c_str(), backend.c_str(), device.empty() ? nullptr : device.c_str(), &raw));
    pipeline_.reset(raw);
    Check(RarPipelineGetModelInfo(raw, &info_));
  }

  const RarModelInfo& info() const { return info_; }

  bool is_var() const { return info_.family == RAR_FAMILY_VAR; }

  // tokens [labels.size(), N], row-major
  std::vector<int64_t> GenerateTokens(const std::vector<int64_t>& labels, const Sampling& sampling = {}) {
    const auto params = Params(sampling);
    std::vector<int64_t> tokens(labels.size() * static_cast<size_t>(info_.image_seq_len));
    Check(RarPipelineGenerateTokens(pipeline_.get(), labels.data(), labels.size(), params.get(), tokens.data()));
    return tokens;
  }

  // tokens and images in one call, either family (VAR's images come from its loop: it has no Decode)
  Generation Generate(const std::vector<int64_t>& labels, const Sampling& sampling = {}) {
    const auto params = Params(sampling);
    Generation result;
    result.tokens.resize(labels.size() * static_cast<size_t>(info_.image_seq_len));
    result.images = Sized(static_cast<int64_t>(labels.size()));
    Check(RarPipelineGenerate(pipeline_.get(), labels.data(), labels.size(), params.get(), result.tokens.data(),
                              result.images.pixels.data()));
    return result;
  }

  Images Decode(const std::vector<int64_t>& tokens, int64_t batch_size = 0) {
    if (tokens.size() % static_cast<size_t>(info_.image_seq_len) != 0) {
      throw Error(RAR_ERROR_INVALID_ARGUMENT, "tokens must hold a multiple of " +
                                                  std::to_string(info_.image_seq_len) + " ids ([B, N] row-major)");
    }
    Images images = Sized(static_cast<int64_t>(tokens.size()) / info_.image_seq_len);
    Check(RarPipelineDecode(pipeline_.get(), tokens.data(), static_cast<size_t>(images.count), batch_size,
                            images.pixels.data()));
    return images;
  }

  void SetConditionBudget(int64_t bytes) { Check(RarPipelineSetConditionBudget(pipeline_.get(), bytes)); }

  double MeanDecodeCalls() const {  // RAR: per image, of the last generation
    double calls = 0;
    Check(RarPipelineGetMeanDecodeCalls(pipeline_.get(), &calls));
    return calls;
  }

  RarTimings Timings() const {
    RarTimings timings{};
    Check(RarPipelineGetTimings(pipeline_.get(), &timings));
    return timings;
  }

 private:
  using Owned = std::unique_ptr<RarGenerateParams, decltype(&RarGenerateParamsDestroy)>;

  static Owned Params(const Sampling& sampling) {
    RarGenerateParams* raw = nullptr;
    Check(RarGenerateParamsCreate(&raw));
    Owned params(raw, RarGenerateParamsDestroy);
    if (sampling.guidance_scale) Check(RarGenerateParamsSetGuidanceScale(raw, *sampling.guidance_scale));
    if (sampling.guidance_pow) Check(RarGenerateParamsSetGuidancePow(raw, *sampling.guidance_pow));
    if (sampling.temperature) Check(RarGenerateParamsSetTemperature(raw, *sampling.temperature));
    if (sampling.batch_size) Check(RarGenerateParamsSetBatchSize(raw, *sampling.batch_size));
    if (sampling.top_k) Check(RarGenerateParamsSetTopK(raw, *sampling.top_k));
    if (sampling.top_p) Check(RarGenerateParamsSetTopP(raw, *sampling.top_p));
    if (sampling.parallel_window) Check(RarGenerateParamsSetParallelWindow(raw, sampling.parallel_window));
    Check(RarGenerateParamsSetSeed(raw, sampling.seed));
    return params;
  }

  Images Sized(int64_t count) const {  // room for `count` images
    Images images;
    images.count = count;
    images.height = info_.image_height, images.width = info_.image_width, images.channels = info_.image_channels;
    images.pixels.resize(static_cast<size_t>(images.count * images.height * images.width * images.channels));
    return images;
  }

  std::unique_ptr<RarPipeline, decltype(&RarPipelineDestroy)> pipeline_{nullptr, RarPipelineDestroy};
  RarModelInfo info_{};
};

}  // namespace rar
