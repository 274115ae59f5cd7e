#include "var_loop.hpp"

#include <algorithm>
#include <numeric>

namespace rar::detail {

VarLoop::VarLoop(const Artifacts& artifacts, Backend& backend)
    : artifacts_(artifacts), backend_(backend), memory_(backend.memory()) {
  const int64_t size = artifacts.var.patch_nums.back();
  for (const VarScale& scale : artifacts.scales) {
    std::vector<int64_t> positions(static_cast<size_t>(scale.end - scale.begin));
    std::iota(positions.begin(), positions.end(), scale.begin);
    Buffers constants{{"positions", memory_.Empty({scale.side, scale.side}, DType::kInt64)},
                      {"phi_index", memory_.Empty({1}, DType::kInt64)},
                      {"down", memory_.Empty({scale.side, size}, DType::kFloat32)},
                      {"up", memory_.Empty({size, scale.side}, DType::kFloat32)}};
    memory_.Upload(positions.data(), constants.at("positions"));
    memory_.Upload(&scale.phi_index, constants.at("phi_index"));
    memory_.Upload(scale.down.data(), constants.at("down"));
    memory_.Upload(scale.up.data(), constants.at("up"));
    constants_.push_back(std::move(constants));
  }
}

void VarLoop::Allocate(int64_t batch) {
  const VarConfig& m = artifacts_.var;
  const DType i64 = DType::kInt64, f32 = DType::kFloat32;
  const int64_t rows = 2 * batch, size = m.patch_nums.back();
  // zeros: slots of later scales are masked, and a masked score times a NaN value would still be NaN
  k_cache_ = memory_.Zeros({m.depth, rows, m.num_heads, m.seq_len(), m.head_dim()}, artifacts_.float_dtype);
  v_cache_ = memory_.Zeros({m.depth, rows, m.num_heads, m.seq_len(), m.head_dim()}, artifacts_.float_dtype);
  for (Buffer& f_hat : f_hat_) f_hat = memory_.Zeros({batch, m.vae_channels, size, size}, f32);
  labels_ = memory_.Empty({batch}, i64);
  guidance_ = memory_.Empty({m.num_scales(), batch}, f32);  // a row a scale
  top_k_ = memory_.Empty({1}, i64);
  top_p_ = memory_.Empty({1}, f32);
  temperature_ = memory_.Empty({batch}, f32);
  noise_.clear(), outputs_.clear();
  for (const VarScale& scale : artifacts_.scales) {
    noise_.push_back(memory_.Empty({batch, scale.side, scale.side, m.codebook_size}, f32));
    Buffers outputs = backend_.OutputBuffers(
        "var_step", {{"batch", batch}, {"rows", rows}, {"side", scale.side}, {"tokens", scale.side * scale.side}});
    outputs.erase("f_hat_out");  // bound to the other f_hat buffer at each step
    outputs_.push_back(std::move(outputs));
  }
  images_ = backend_.OutputBuffers("var_decoder", {{"batch", batch}});
  batch_ = batch;
}

void VarLoop::Start(const VarInputs& inputs) {
  const std::vector<int64_t>& labels = inputs.labels;
  const std::vector<float>& temperature = inputs.temperature;
  const std::vector<float>& noise = inputs.noise;
  const int64_t batch = static_cast<int64_t>(labels.size()), seq = artifacts_.var.seq_len();
  if (batch != batch_) Allocate(batch);
  memory_.Upload(labels.data(), labels_);
  std::vector<float> rows(artifacts_.scales.size() * labels.size());  // [K, B]: t = cfg * n / d in double, to float
  for (size_t k = 0; k < artifacts_.scales.size(); ++k) {
    const VarScale& scale = artifacts_.scales[k];
    const double t = inputs.guidance_scale * static_cast<double>(scale.guidance_numerator) /
                     static_cast<double>(scale.guidance_denominator);
    std::fill_n(rows.begin() + k * labels.size(), labels.size(), static_cast<float>(t));
  }
  memory_.Upload(rows.data(), guidance_);
  memory_.Upload(&inputs.top_k, top_k_);
  memory_.Upload(&inputs.top_p, top_p_);
  memory_.Upload(temperature.data(), temperature_);
  const size_t vocab = static_cast<size_t>(artifacts_.var.codebook_size);
  for (size_t k = 0; k < artifacts_.scales.size(); ++k) {  // [B, L, V] -> the scale's [B, n, V] = [B, side, side, V]
    const VarScale& scale = artifacts_.scales[k];
    const size_t n = static_cast<size_t>(scale.end - scale.begin);
    std::vector<float> slice(static_cast<size_t>(batch) * n * vocab);
    for (size_t b = 0; b < static_cast<size_t>(batch); ++b) {
      std::copy_n(noise.begin() + (b * static_cast<size_t>(seq) + static_cast<size_t>(scale.begin)) * vocab, n * vocab,
                  slice.begin() + b * n * vocab);
    }
    memory_.Upload(slice.data(), noise_[k]);
  }
  memory_.Fill(f_hat_[0], 0);  // scale 0 reads zeros
  position_ = 0;
}

void VarLoop::Step() {
  const int64_t k = position_++;
  const size_t scale = static_cast<size_t>(k);
  Buffers feeds = constants_[scale];
  feeds.insert({{"class_labels", labels_}, {"f_hat", f_hat_[k % 2]}, {"guidance", guidance_.Row(k)},
                {"top_k", top_k_}, {"top_p", top_p_}, {"temperature", temperature_}, {"noise", noise_[scale]}});
  for (int64_t layer = 0; layer < artifacts_.var.depth; ++layer) {
    feeds["k_cache." + std::to_string(layer)] = k_cache_.Row(layer);
    feeds["v_cache." + std::to_string(layer)] = v_cache_.Row(layer);
  }
  Buffers outputs = outputs_[scale];
  outputs["f_hat_out"] = f_hat_[(k + 1) % 2];
  backend_.Run("var_step", feeds, outputs);
  const int64_t begin = artifacts_.scales[scale].begin;
  memory_.WritePosition(k_cache_, outputs.at("keys"), begin);
  memory_.WritePosition(v_cache_, outputs.at("values"), begin);
}

std::vector<int64_t> VarLoop::Tokens() {
  const size_t seq = static_cast<size_t>(artifacts_.var.seq_len());
  std::vector<int64_t> tokens(static_cast<size_t>(batch_) * seq);  // [B, L]: scale k's [B, n] at columns begin..
  for (size_t k = 0; k < artifacts_.scales.size(); ++k) {
    const VarScale& scale = artifacts_.scales[k];
    const size_t n = static_cast<size_t>(scale.end - scale.begin);
    std::vector<int64_t> chunk(static_cast<size_t>(batch_) * n);
    memory_.Download(outputs_[k].at("tokens"), chunk.data());
    for (size_t b = 0; b < static_cast<size_t>(batch_); ++b) {
      std::copy_n(chunk.begin() + b * n, n, tokens.begin() + b * seq + static_cast<size_t>(scale.begin));
    }
  }
  return tokens;
}

std::vector<uint8_t> VarLoop::DecodeImages() {
  backend_.Run("var_decoder", {{"f_hat", f_hat_[artifacts_.scales.size() % 2]}}, images_);
  std::vector<uint8_t> images(images_.at("images_uint8").Bytes());
  memory_.Download(images_.at("images_uint8"), images.data());
  return images;
}

}  // namespace rar::detail
