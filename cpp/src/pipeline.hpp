// The generation loop over a backend (rar_deploy/runtime/pipeline.py in Python), driving the family's loop with Drive and the
// checks of what a caller passes: the same rules and messages as the Python API. RAR draws tokens, then
// decodes them; VAR draws tokens and images in one loop (its images come from f_hat, not from tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"
#include "loop.hpp"
#include "rar_jacobi.hpp"
#include "rar_loop.hpp"
#include "var_loop.hpp"
#include "rar/rar.h"

namespace rar::detail {

struct Sampling {
  std::optional<double> guidance_scale, guidance_pow, temperature;  // guidance_pow: RAR only
  uint64_t seed = 0;
  std::optional<int64_t> batch_size;
  std::optional<int64_t> top_k;  // VAR only
  std::optional<double> top_p;   // VAR only
  int64_t parallel_window = 0;   // RAR: speculative Jacobi decoding's drafts per image (rar_jacobi.hpp); 0 off
};

class Pipeline {
 public:
  Pipeline(const std::string& directory, const std::string& backend, const std::string& device);

  const Artifacts& artifacts() const { return artifacts_; }
  RarModelInfo Info() const;
  std::vector<int64_t> GenerateTokens(const std::vector<int64_t>& labels, const Sampling& sampling);
  // tokens [B, N] and uint8 images [B, H, W, C], both families
  std::pair<std::vector<int64_t>, std::vector<uint8_t>> Generate(const std::vector<int64_t>& labels,
                                                                 const Sampling& sampling);
  std::vector<uint8_t> Decode(const std::vector<int64_t>& tokens, int64_t batch_size);  // RAR
  RarTimings Timings() const { return timings_; }
  double MeanDecodeCalls() const { return mean_decode_calls_; }  // per image, of the last RAR generation
  void SetConditionBudget(int64_t bytes);  // RAR

  // For the in-flight scheduler (rar_slots.hpp), which runs on this pipeline's backend under its lock
  struct RarValues {
    double guidance_scale, guidance_pow, temperature;
  };
  RarValues CheckRar(const Sampling& sampling) const;  // RAR's values resolved and checked (one line each)
  void CheckLabels(const std::vector<int64_t>& labels) const;
  Backend& backend() { return *backend_; }
  std::mutex& mutex() { return mutex_; }

 private:
  int64_t BatchSize(std::optional<int64_t> requested) const;
  std::vector<int64_t> RarTokens(const std::vector<int64_t>& labels, const Sampling& sampling);
  // VAR's tokens, and its images where `images` is given
  std::vector<int64_t> VarGenerate(const std::vector<int64_t>& labels, const Sampling& sampling,
                                   std::vector<uint8_t>* images);
  [[noreturn]] void NotThisFamily(const std::string& what) const;

  Artifacts artifacts_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<RarLoop> rar_loop_;  // RAR's
  std::unique_ptr<VarLoop> var_loop_;  // VAR's
  std::mutex mutex_;  // one set of device buffers: calls are serialised
  RarTimings timings_{};
  double mean_decode_calls_ = 0;
};

}  // namespace rar::detail
