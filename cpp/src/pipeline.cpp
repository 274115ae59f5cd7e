#include "pipeline.hpp"

#include <cctype>
#include <chrono>
#include <cmath>
#include <limits>
#include <regex>
#include <sstream>

#include "error.hpp"
#include "sampling.hpp"

namespace rar::detail {
namespace {

std::string Number(double value) {  // as a person writes it: 1, 0.96, 1e+300
  std::ostringstream text;
  text << value;
  return text.str();
}

// A number that stays finite as the float32 the graphs compute with (Python's arguments.check_finite).
double Finite(const char* name, double value) {
  if (!std::isfinite(value) || std::fabs(value) > std::numeric_limits<float>::max()) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, std::string(name) + " must be a finite number within float32's range, got " +
                                     Number(value));
  }
  return value;
}

// A guidance scale within +-10000, checked after finiteness (Python's arguments.check_guidance): beyond it the
// guided logits overflow float32, a wrong image rather than an error.
double GuidanceScale(double value) {
  constexpr double kMaxGuidance = 1e4;
  Finite("guidance scale", value);
  if (std::fabs(value) > kMaxGuidance) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "guidance scale must lie within +-" + Number(kMaxGuidance) +
                                     " (published values are 1.5 to 16), got " + Number(value));
  }
  return value;
}

// labels[start, start + batch_size), the last batch shorter
std::vector<int64_t> Batch(const std::vector<int64_t>& labels, size_t start, int64_t batch_size) {
  const size_t end = std::min(labels.size(), start + static_cast<size_t>(batch_size));
  return {labels.begin() + static_cast<std::ptrdiff_t>(start), labels.begin() + static_cast<std::ptrdiff_t>(end)};
}

double Milliseconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Pipeline::Pipeline(const std::string& directory, const std::string& backend, const std::string& device)
    : artifacts_(Artifacts::Load(directory)) {
  if (!std::regex_match(device, std::regex("cpu|cuda(:[0-9]+)?"))) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "device must be 'cpu', 'cuda' or 'cuda:N', got '" + device + "'");
  }
  if (backend == "onnxruntime") {
    backend_ = OnnxRuntimeBackend(artifacts_, device);
  } else if (backend == "tensorrt") {
    if (device == "cpu") Fail(RAR_ERROR_INVALID_ARGUMENT, "the tensorrt backend runs on a CUDA GPU: use device cuda");
    backend_ = TensorRTBackend(artifacts_, device);
  } else {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "unknown backend '" + backend + "': choose onnxruntime or tensorrt");
  }
  if (artifacts_.is_var()) {
    var_loop_ = std::make_unique<VarLoop>(artifacts_, *backend_);
  } else {
    rar_loop_ = std::make_unique<RarLoop>(artifacts_, *backend_);
  }
}

RarModelInfo Pipeline::Info() const {
  const SamplingDefaults& d = artifacts_.defaults;
  return {artifacts_.seq_len, artifacts_.codebook_size, artifacts_.num_classes, artifacts_.image_side,
          artifacts_.image_side, artifacts_.image_channels, artifacts_.max_batch, d.guidance_scale, d.guidance_pow,
          d.temperature, artifacts_.is_var() ? RAR_FAMILY_VAR : RAR_FAMILY_RAR, artifacts_.var.num_scales(), d.top_k,
          d.top_p};
}

void Pipeline::NotThisFamily(const std::string& what) const {
  std::string family = artifacts_.family;
  for (char& c : family) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  Fail(RAR_ERROR_INVALID_ARGUMENT,
       what + " does not apply to a " + family + " model (" + artifacts_.directory.string() + "): drop it");
}

void Pipeline::CheckLabels(const std::vector<int64_t>& labels) const {
  if (labels.empty()) Fail(RAR_ERROR_INVALID_ARGUMENT, "no class labels given: pass at least one ImageNet class id");
  for (int64_t label : labels) {
    if (label < 0 || label >= artifacts_.num_classes) {
      Fail(RAR_ERROR_INVALID_ARGUMENT, "class id " + std::to_string(label) + " is out of range: class ids must lie in "
                                       "[0, " + std::to_string(artifacts_.num_classes) + ")");
    }
  }
}

int64_t Pipeline::BatchSize(std::optional<int64_t> requested) const {
  if (!requested) return artifacts_.max_batch;
  if (*requested < 1 || *requested > artifacts_.max_batch) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "batch size " + std::to_string(*requested) + " is outside the artifacts' profile "
                                     "[1, " + std::to_string(artifacts_.max_batch) + "]: use a smaller one or export "
                                     "again with a larger --max-batch");
  }
  return *requested;
}

std::vector<int64_t> Pipeline::GenerateTokens(const std::vector<int64_t>& labels, const Sampling& sampling) {
  return artifacts_.is_var() ? VarGenerate(labels, sampling, nullptr) : RarTokens(labels, sampling);
}

std::pair<std::vector<int64_t>, std::vector<uint8_t>> Pipeline::Generate(const std::vector<int64_t>& labels,
                                                                         const Sampling& sampling) {
  std::vector<uint8_t> images;
  if (artifacts_.is_var()) {
    std::vector<int64_t> tokens = VarGenerate(labels, sampling, &images);
    return {std::move(tokens), std::move(images)};
  }
  std::vector<int64_t> tokens = RarTokens(labels, sampling);
  images = Decode(tokens, sampling.batch_size.value_or(0));
  return {std::move(tokens), std::move(images)};
}

Pipeline::RarValues Pipeline::CheckRar(const Sampling& sampling) const {
  if (sampling.top_k) NotThisFamily("top-k");
  if (sampling.top_p) NotThisFamily("top-p");
  const double scale = GuidanceScale(sampling.guidance_scale.value_or(artifacts_.defaults.guidance_scale));
  const double pow = Finite("guidance pow", sampling.guidance_pow.value_or(artifacts_.defaults.guidance_pow));
  const double temperature = Finite("temperature", sampling.temperature.value_or(artifacts_.defaults.temperature));
  if (pow < 0) Fail(RAR_ERROR_INVALID_ARGUMENT, "guidance pow must be >= 0 (0 is constant guidance)");
  if (temperature < 0) Fail(RAR_ERROR_INVALID_ARGUMENT, "temperature must be >= 0 (0 is greedy)");
  if (sampling.seed >= (uint64_t{1} << 63)) Fail(RAR_ERROR_INVALID_ARGUMENT, "seed must lie in [0, 2**63)");
  if (sampling.parallel_window < 0 || sampling.parallel_window > kMaxParallelWindow) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "--parallel-window must be 0 .. " + std::to_string(kMaxParallelWindow) +
                                     " draft tokens (0: off), got " + std::to_string(sampling.parallel_window));
  }
  if (sampling.parallel_window != 0 && !artifacts_.has_decode_block()) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, artifacts_.directory.string() + " has no decode_block graph: export it with "
                                     "rar-export --parallel-decoding to use --parallel-window");
  }
  return {scale, pow, temperature};
}

std::vector<int64_t> Pipeline::RarTokens(const std::vector<int64_t>& labels, const Sampling& sampling) {
  const ModelConfig& m = artifacts_.model;
  CheckLabels(labels);
  const auto [scale, pow, temperature] = CheckRar(sampling);
  const int64_t batch_size = BatchSize(sampling.batch_size);
  const bool guided = scale != 0;  // 0 means no guidance: the conditional rows only, as the official code
  const std::vector<float> schedule = GuidanceSchedule(m.image_seq_len, scale, pow);

  std::lock_guard<std::mutex> lock(mutex_);
  timings_.start_ms = timings_.prefill_ms = timings_.steps_ms = 0, timings_.steps = 0;
  mean_decode_calls_ = 0;
  std::vector<int64_t> tokens;
  for (size_t start = 0; start < labels.size(); start += static_cast<size_t>(batch_size)) {
    const std::vector<int64_t> chunk = Batch(labels, start, batch_size);
    const int64_t batch = static_cast<int64_t>(chunk.size());
    const RarInputs inputs{GuidanceRows(chunk, guided, m.null_class()), schedule,
                           std::vector<float>(chunk.size(), static_cast<float>(temperature)),
                           SamplingNoise(sampling.seed, batch, m.image_seq_len, m.codebook_size,
                                         static_cast<int64_t>(start))};
    auto clock = std::chrono::steady_clock::now();
    if (sampling.parallel_window != 0) {  // speculative decoding: no per-step timings (its calls are not steps)
      JacobiResult result = JacobiGenerate(artifacts_, *backend_, inputs, sampling.seed, static_cast<int64_t>(start),
                                           sampling.parallel_window);
      timings_.steps_ms += Milliseconds(clock);
      for (int64_t calls : result.calls) mean_decode_calls_ += static_cast<double>(calls) / labels.size();
      tokens.insert(tokens.end(), result.tokens.begin(), result.tokens.end());
      continue;
    }
    mean_decode_calls_ += static_cast<double>(m.cache_len() * batch) / labels.size();
    Drive(*rar_loop_, inputs, [&](RarLoop& loop) {
      if (loop.position() == 0 || loop.position() == 2) {  // after the start; after the prefill (positions 0-1)
        backend_->memory().Synchronize();
        (loop.position() == 0 ? timings_.start_ms : timings_.prefill_ms) += Milliseconds(clock);
        clock = std::chrono::steady_clock::now();
      }
    });
    const std::vector<int64_t> chunk_tokens = rar_loop_->Tokens();  // synchronises
    timings_.steps_ms += Milliseconds(clock);
    timings_.steps += m.image_seq_len - 1;
    timings_.condition_window = rar_loop_->condition_window();
    tokens.insert(tokens.end(), chunk_tokens.begin(), chunk_tokens.end());
  }
  return tokens;
}

std::vector<int64_t> Pipeline::VarGenerate(const std::vector<int64_t>& labels, const Sampling& sampling,
                                           std::vector<uint8_t>* images) {
  const VarConfig& m = artifacts_.var;
  const SamplingDefaults& d = artifacts_.defaults;
  CheckLabels(labels);
  if (sampling.guidance_pow) NotThisFamily("guidance pow");
  if (sampling.parallel_window != 0) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "--parallel-window is RAR's speculative decoding; a VAR model samples a whole "
                                     "scale a step: drop it");
  }
  const double scale = GuidanceScale(sampling.guidance_scale.value_or(d.guidance_scale));
  const int64_t top_k = sampling.top_k.value_or(d.top_k);
  const double top_p = Finite("top-p", sampling.top_p.value_or(d.top_p));
  const double temperature = Finite("temperature", sampling.temperature.value_or(d.temperature));
  if (scale < 0) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "guidance scale must be >= 0 (0 is the conditional logits alone), got " +
                                     Number(scale));
  }
  if (top_k < 0) Fail(RAR_ERROR_INVALID_ARGUMENT, "top-k must be >= 0 (0 turns it off), got " + std::to_string(top_k));
  if (!(top_p >= 0 && top_p < 1)) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "top-p must lie in [0, 1) (0 turns it off), got " + Number(top_p));
  }
  if (temperature < 0) Fail(RAR_ERROR_INVALID_ARGUMENT, "temperature must be >= 0 (0 is greedy)");
  if (sampling.seed >= (uint64_t{1} << 63)) Fail(RAR_ERROR_INVALID_ARGUMENT, "seed must lie in [0, 2**63)");
  const int64_t batch_size = BatchSize(sampling.batch_size);

  std::lock_guard<std::mutex> lock(mutex_);
  timings_ = RarTimings{};
  std::vector<int64_t> tokens;
  for (size_t start = 0; start < labels.size(); start += static_cast<size_t>(batch_size)) {
    const std::vector<int64_t> chunk = Batch(labels, start, batch_size);
    const int64_t batch = static_cast<int64_t>(chunk.size());
    const VarInputs inputs{chunk, scale, top_k, static_cast<float>(top_p),
                           std::vector<float>(chunk.size(), static_cast<float>(temperature)),
                           SamplingNoise(sampling.seed, batch, m.seq_len(), m.codebook_size,
                                         static_cast<int64_t>(start))};
    auto clock = std::chrono::steady_clock::now();
    Drive(*var_loop_, inputs, [&](VarLoop& loop) {
      if (loop.position() == 0) {  // after the start
        backend_->memory().Synchronize();
        timings_.start_ms += Milliseconds(clock);
        clock = std::chrono::steady_clock::now();
      }
    });
    const std::vector<int64_t> chunk_tokens = var_loop_->Tokens();  // synchronises
    timings_.steps_ms += Milliseconds(clock);
    timings_.steps += m.num_scales();
    tokens.insert(tokens.end(), chunk_tokens.begin(), chunk_tokens.end());
    if (images != nullptr) {
      clock = std::chrono::steady_clock::now();
      const std::vector<uint8_t> pixels = var_loop_->DecodeImages();
      timings_.decode_ms += Milliseconds(clock);
      images->insert(images->end(), pixels.begin(), pixels.end());
    }
  }
  return tokens;
}

void Pipeline::SetConditionBudget(int64_t bytes) {
  if (artifacts_.is_var()) NotThisFamily("the condition budget");
  if (bytes < 0) Fail(RAR_ERROR_INVALID_ARGUMENT, "the condition budget is a number of bytes >= 0 (0: one position a step)");
  std::lock_guard<std::mutex> lock(mutex_);
  rar_loop_->condition_table_budget = bytes;
}

std::vector<uint8_t> Pipeline::Decode(const std::vector<int64_t>& tokens, int64_t batch_size) {
  if (artifacts_.is_var()) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "a VAR model's images come from its generation loop (f_hat), not from tokens: "
                                     "generate tokens and images in one call (RarPipelineGenerate)");
  }
  const ModelConfig& m = artifacts_.model;
  if (tokens.empty() || tokens.size() % static_cast<size_t>(m.image_seq_len) != 0) {
    Fail(RAR_ERROR_INVALID_ARGUMENT, "tokens must be [B, " + std::to_string(m.image_seq_len) + "] with B >= 1");
  }
  for (int64_t token : tokens) {
    if (token < 0 || token >= m.codebook_size) {
      Fail(RAR_ERROR_INVALID_ARGUMENT, "token ids must lie in [0, " + std::to_string(m.codebook_size) + ")");
    }
  }
  const int64_t batch = BatchSize(batch_size > 0 ? std::optional<int64_t>(batch_size) : std::nullopt);
  const int64_t count = static_cast<int64_t>(tokens.size()) / m.image_seq_len;
  std::lock_guard<std::mutex> lock(mutex_);
  const auto clock = std::chrono::steady_clock::now();
  std::vector<uint8_t> images;
  for (int64_t start = 0; start < count; start += batch) {
    const int64_t size = std::min(batch, count - start);
    const std::vector<int64_t> chunk(tokens.begin() + start * m.image_seq_len,
                                     tokens.begin() + (start + size) * m.image_seq_len);
    const std::vector<uint8_t> pixels = DecodeTokens(artifacts_, *backend_, chunk, size);
    images.insert(images.end(), pixels.begin(), pixels.end());
  }
  timings_.decode_ms = Milliseconds(clock);
  return images;
}

}  // namespace rar::detail
