#include "rar_loop.hpp"

#include <algorithm>

namespace rar::detail {

RarLoop::RarLoop(const Artifacts& artifacts, Backend& backend)
    : artifacts_(artifacts), backend_(backend), memory_(backend.memory()) {}

int64_t RarLoop::TokensDone() const { return std::max<int64_t>(position_ - 1, 0); }

void RarLoop::Allocate(int64_t batch, int64_t rows, int64_t window) {
  const ModelConfig& m = artifacts_.model;
  const DType f = artifacts_.float_dtype, i64 = DType::kInt64, f32 = DType::kFloat32;
  const int64_t seq = m.cache_len(), windows = (seq + window - 1) / window;
  // zeros: a masked cache position is multiplied by 0 in attention, and 0 * NaN would be NaN
  k_cache_ = memory_.Zeros({m.depth, rows, m.num_heads, seq, m.head_dim()}, f);
  v_cache_ = memory_.Zeros({m.depth, rows, m.num_heads, seq, m.head_dim()}, f);
  condition_ = memory_.Empty({window, rows, artifacts_.condition_width}, f);
  // window k's positions [W, R]: k W .. k W + W - 1, past N clamped to N (rows never read)
  std::vector<int64_t> host(static_cast<size_t>(windows * window * std::max(rows, batch)));
  positions_ = memory_.Empty({windows, window, rows}, i64);
  for (int64_t p = 0; p < windows * window; ++p) std::fill_n(host.begin() + p * rows, rows, std::min(p, seq - 1));
  memory_.Upload(host.data(), positions_);
  image_positions_ = memory_.Empty({seq, batch}, i64);  // [p, b] = p: the step's `position`
  for (int64_t p = 0; p < seq; ++p) std::fill_n(host.begin() + p * batch, batch, p);
  memory_.Upload(host.data(), image_positions_);
  rows_buffer_ = memory_.Empty({rows}, i64);
  // row p holds what position p sampled (image token p - 1); row 0 is what position 0 returns (unused)
  out_tokens_ = memory_.Zeros({seq, batch}, i64);
  guidance_ = memory_.Empty({m.image_seq_len, batch}, f32);
  temperature_ = memory_.Empty({batch}, f32);
  noise_ = memory_.Empty({m.image_seq_len, batch, m.codebook_size}, f32);
  outputs_ = backend_.OutputBuffers("decode_step", {{"batch", batch}, {"rows", rows}, {"positions", window}});
  if (backend_.use_cuda_graph()) {  // the captured step reads and writes these fixed addresses
    static_ = {{"tokens", memory_.Zeros({batch}, i64)}, {"position", memory_.Zeros({batch}, i64)},
               {"guidance_scale", memory_.Empty({batch}, f32)},
               {"noise", memory_.Empty({batch, m.codebook_size}, f32)}, {"next_tokens", memory_.Empty({batch}, i64)}};
  }
  batch_ = batch, rows_ = rows, window_ = window, replay_ = nullptr;
}

void RarLoop::Start(const RarInputs& inputs) {
  const std::vector<int64_t>& rows = inputs.rows;
  const std::vector<float>& schedule = inputs.schedule;
  const std::vector<float>& temperature = inputs.temperature;
  const std::vector<float>& noise = inputs.noise;
  const ModelConfig& m = artifacts_.model;
  const int64_t batch = static_cast<int64_t>(temperature.size()), num_rows = static_cast<int64_t>(rows.size());
  const int64_t per_position = num_rows * artifacts_.condition_width * static_cast<int64_t>(ItemSize(artifacts_.float_dtype));
  const int64_t window = std::clamp<int64_t>(condition_table_budget / per_position, 1, m.cache_len());
  if (batch != batch_ || num_rows != rows_ || window != window_ || k_cache_.data == nullptr) {
    Allocate(batch, num_rows, window);
  }
  memory_.Upload(rows.data(), rows_buffer_);
  std::vector<float> guidance(static_cast<size_t>(m.image_seq_len * batch));  // [N, B]: a row a step
  for (int64_t t = 0; t < m.image_seq_len; ++t) std::fill_n(guidance.begin() + t * batch, batch, schedule[t]);
  memory_.Upload(guidance.data(), guidance_);
  memory_.Upload(temperature.data(), temperature_);
  std::vector<float> steps(noise.size());  // [B, N, V] -> [N, B, V]: a slice a step
  const size_t vocab = static_cast<size_t>(m.codebook_size), n = static_cast<size_t>(m.image_seq_len);
  for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
    for (size_t t = 0; t < n; ++t) {
      std::copy_n(noise.begin() + (b * n + t) * vocab, vocab, steps.begin() + (t * batch + b) * vocab);
    }
  }
  memory_.Upload(steps.data(), noise_);
  position_ = 0;
}

void RarLoop::Decode(const Buffer& tokens, const Buffer& position, const Buffer& guidance, const Buffer& noise,
                     const Buffer& next_tokens) {
  Buffers feeds{{"tokens", tokens}, {"position", position}, {"condition", condition_},
                {"guidance_scale", guidance}, {"temperature", temperature_}, {"noise", noise}};
  for (int64_t layer = 0; layer < artifacts_.model.depth; ++layer) {
    feeds["k_cache." + std::to_string(layer)] = k_cache_.Row(layer);
    feeds["v_cache." + std::to_string(layer)] = v_cache_.Row(layer);
  }
  Buffers outputs = outputs_;
  outputs["next_tokens"] = next_tokens;
  backend_.Run("decode_step", feeds, outputs);
}

void RarLoop::Step() {
  const int64_t p = position_++;
  const int64_t q = std::max<int64_t>(p - 1, 0);  // the input token's row, the sampled token's guidance and noise
  if (p % window_ == 0) {  // the next window of condition rows
    backend_.Run("condition", {{"class_labels", rows_buffer_}, {"positions", positions_.Row(p / window_)}},
        {{"condition", condition_}});
  }
  if (backend_.use_cuda_graph()) {
    const std::pair<const char*, Buffer> sources[] = {{"tokens", out_tokens_.Row(q)},
                                                      {"position", image_positions_.Row(p)},
                                                      {"guidance_scale", guidance_.Row(q)}, {"noise", noise_.Row(q)}};
    for (const auto& [name, source] : sources) memory_.Copy(static_.at(name), source);
    auto body = [this] {
      Decode(static_.at("tokens"), static_.at("position"), static_.at("guidance_scale"), static_.at("noise"),
             static_.at("next_tokens"));
    };
    if (!replay_) {
      body();  // warm-up (TensorRT requires one before capture); it computes this step
      replay_ = memory_.Capture(body);
    } else {
      replay_();
    }
    Buffer row = out_tokens_.Row(p);
    memory_.Copy(row, static_.at("next_tokens"));
  } else {
    Decode(out_tokens_.Row(q), image_positions_.Row(p), guidance_.Row(q), noise_.Row(q), out_tokens_.Row(p));
  }
  memory_.WritePosition(k_cache_, outputs_.at("keys"), p);
  memory_.WritePosition(v_cache_, outputs_.at("values"), p);
}

std::vector<int64_t> RarLoop::Tokens() {
  const int64_t n = artifacts_.model.image_seq_len;
  std::vector<int64_t> rows(static_cast<size_t>((n + 1) * batch_));
  memory_.Download(out_tokens_, rows.data());
  std::vector<int64_t> tokens(static_cast<size_t>(n * batch_));  // [N+1, B] rows 1.. -> [B, N]
  for (int64_t b = 0; b < batch_; ++b) {
    for (int64_t t = 0; t < n; ++t) tokens[b * n + t] = rows[(t + 1) * batch_ + b];
  }
  return tokens;
}

std::vector<uint8_t> DecodeTokens(const Artifacts& artifacts_, Backend& backend, const std::vector<int64_t>& tokens,
                                  int64_t batch) {
  Memory& memory_ = backend.memory();
  const Dims dims{{"batch", batch}};
  Buffer input = memory_.Empty({batch, artifacts_.model.image_seq_len}, DType::kInt64);
  memory_.Upload(tokens.data(), input);
  Buffers outputs = backend.OutputBuffers("vq_decoder", dims);
  backend.Run("vq_decoder", {{"tokens", input}}, outputs);
  std::vector<uint8_t> images(outputs.at("images_uint8").Bytes());
  memory_.Download(outputs.at("images_uint8"), images.data());
  return images;
}

}  // namespace rar::detail
