// The generation loop over a backend (rar_deploy/runtime/pipeline.py in Python) and the checks of what a
// caller passes: the same rules and messages as the Python API.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"
#include "rar/rar.h"

namespace rar::detail {

struct Sampling {
  std::optional<double> guidance_scale, guidance_pow, temperature;
  uint64_t seed = 0;
  std::optional<int64_t> batch_size;
};

class Pipeline {
 public:
  Pipeline(const std::string& directory, const std::string& backend, const std::string& device);

  const Artifacts& artifacts() const { return artifacts_; }
  RarModelInfo Info() const;
  std::vector<int64_t> GenerateTokens(const std::vector<int64_t>& labels, const Sampling& sampling);
  std::vector<uint8_t> Decode(const std::vector<int64_t>& tokens, int64_t batch_size);
  RarTimings Timings() const { return timings_; }
  void SetConditionBudget(int64_t bytes);

 private:
  int64_t BatchSize(std::optional<int64_t> requested) const;

  Artifacts artifacts_;
  std::unique_ptr<Backend> backend_;
  std::mutex mutex_;  // one set of device buffers: calls are serialised
  RarTimings timings_{};
};

}  // namespace rar::detail
