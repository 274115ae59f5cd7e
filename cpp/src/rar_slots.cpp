#include "rar_slots.hpp"

#include <algorithm>
#include <numeric>

#include "sampling.hpp"

namespace rar::detail {

RarSlots::RarSlots(const Artifacts& artifacts, Backend& backend, int64_t slots, bool guided)
    : artifacts_(artifacts), backend_(backend), memory_(backend.memory()), slots_(slots), kinds_(guided ? 2 : 1),
      images_(static_cast<size_t>(slots)) {
  const ModelConfig& m = artifacts_.model;
  const DType f = artifacts_.float_dtype;
  k_cache_ = memory_.Zeros({m.depth, slots * kinds_, m.num_heads, m.cache_len(), m.head_dim()}, f);
  v_cache_ = memory_.Zeros({m.depth, slots * kinds_, m.num_heads, m.cache_len(), m.head_dim()}, f);
  blank_ = memory_.Zeros({1, m.num_heads, m.cache_len(), m.head_dim()}, f);  // one row of one layer
  // condition rows of every slot, row kind and position: (slot * kinds + kind) * S + position
  table_ = memory_.Zeros({1, slots * kinds_ * m.cache_len(), artifacts_.condition_width}, f);
}

bool RarSlots::Done(int64_t slot) const {
  return Busy(slot) && images_[static_cast<size_t>(slot)]->step == artifacts_.model.cache_len();
}

void RarSlots::Admit(int64_t slot, int64_t label, double guidance_scale, double guidance_pow, double temperature,
                     uint64_t seed, int64_t index) {
  const ModelConfig& m = artifacts_.model;
  const int64_t seq = m.cache_len();
  Buffer labels = memory_.Empty({kinds_}, DType::kInt64), positions = memory_.Empty({seq, kinds_}, DType::kInt64);
  const std::vector<int64_t> rows = GuidanceRows({label}, kinds_ == 2, m.null_class());
  std::vector<int64_t> host(static_cast<size_t>(seq * kinds_));
  for (int64_t p = 0; p < seq; ++p) std::fill_n(host.begin() + p * kinds_, kinds_, p);
  memory_.Upload(rows.data(), labels);
  memory_.Upload(host.data(), positions);
  Buffers out = backend_.OutputBuffers("condition", {{"rows", kinds_}, {"positions", seq}});
  backend_.Run("condition", {{"class_labels", labels}, {"positions", positions}}, out);
  const Buffer& condition = out.at("condition");  // [S, kinds, C] -> the table's [kinds, S, C] of this slot
  const size_t width = static_cast<size_t>(artifacts_.condition_width) * ItemSize(artifacts_.float_dtype);
  for (int64_t kind = 0; kind < kinds_; ++kind) {
    memory_.Copy2D(static_cast<char*>(table_.data) + static_cast<size_t>((slot * kinds_ + kind) * seq) * width,
                   width, static_cast<const char*>(condition.data) + static_cast<size_t>(kind) * width,
                   static_cast<size_t>(kinds_) * width, width, static_cast<size_t>(seq));
  }
  images_[static_cast<size_t>(slot)] = Image{static_cast<float>(temperature),
                                             GuidanceSchedule(m.image_seq_len, guidance_scale, guidance_pow),
                                             SamplingNoise(seed, 1, m.image_seq_len, m.codebook_size, index),
                                             std::vector<int64_t>(static_cast<size_t>(m.image_seq_len), 0)};
  memory_.Synchronize();  // the table is written before the host buffers above go away
}

void RarSlots::Relayout(const std::vector<int64_t>& order) {
  const int64_t n = static_cast<int64_t>(order.size()), old_n = static_cast<int64_t>(order_.size());
  std::vector<int64_t> sources, targets, joined;
  for (int64_t kind = 0; kind < kinds_; ++kind) {
    for (int64_t j = 0; j < n; ++j) {
      auto found = std::find(order_.begin(), order_.end(), order[static_cast<size_t>(j)]);
      if (found == order_.end()) {
        joined.push_back(j + kind * n);
      } else {
        sources.push_back((found - order_.begin()) + kind * old_n);
        targets.push_back(j + kind * n);
      }
    }
  }
  const ModelConfig& m = artifacts_.model;
  Buffer staging;
  if (sources != targets) {
    staging = memory_.Empty({static_cast<int64_t>(sources.size()), m.num_heads, m.cache_len(), m.head_dim()},
                            artifacts_.float_dtype);
  }
  std::vector<int64_t> ordinal(sources.size());
  std::iota(ordinal.begin(), ordinal.end(), 0);
  for (Buffer* cache : {&k_cache_, &v_cache_}) {
    for (int64_t layer = 0; layer < m.depth; ++layer) {
      Buffer rows = cache->Row(layer);  // [R, H, S, Dh]: staged first, so moves never overwrite a source
      if (sources != targets) {
        memory_.CopyRows(staging, ordinal, rows, sources, 0);
        memory_.CopyRows(rows, targets, staging, ordinal, 0);
      }
      for (int64_t row : joined) memory_.CopyRows(rows, {row}, blank_, {0}, 0);
    }
  }
  memory_.Synchronize();  // the staging buffer is freed when this returns
  order_ = order;
}

RarSlots::Batch& RarSlots::BatchOf(int64_t n) {
  auto found = batches_.find(n);
  if (found != batches_.end()) return found->second;
  const ModelConfig& m = artifacts_.model;
  const DType i64 = DType::kInt64, f32 = DType::kFloat32;
  Batch batch{{{"tokens", memory_.Zeros({n}, i64)}, {"position", memory_.Zeros({n}, i64)},
               {"guidance_scale", memory_.Zeros({n}, f32)}, {"temperature", memory_.Zeros({n}, f32)},
               {"noise", memory_.Zeros({n, m.codebook_size}, f32)},
               {"condition", memory_.Zeros({1, kinds_ * n, artifacts_.condition_width}, artifacts_.float_dtype)}},
              backend_.OutputBuffers("decode_step", {{"batch", n}, {"rows", kinds_ * n}, {"positions", 1}}),
              memory_.Empty({n}, i64)};
  return batches_.emplace(n, std::move(batch)).first->second;
}

void RarSlots::Decode(int64_t n) {
  Batch& batch = BatchOf(n);
  Buffers feeds = batch.feeds, outputs = batch.outputs;
  for (int64_t layer = 0; layer < artifacts_.model.depth; ++layer) {  // the first kinds * n rows: a batch of n
    feeds["k_cache." + std::to_string(layer)] = k_cache_.Row(layer).Head(kinds_ * n);
    feeds["v_cache." + std::to_string(layer)] = v_cache_.Row(layer).Head(kinds_ * n);
  }
  outputs["next_tokens"] = batch.next_tokens;
  backend_.Run("decode_step", feeds, outputs);
}

std::vector<int64_t> RarSlots::Step() {
  std::vector<int64_t> order;
  for (int64_t slot : order_) {
    if (Busy(slot)) order.push_back(slot);
  }
  for (int64_t slot = 0; slot < slots_; ++slot) {  // those admitted since the last step
    if (Busy(slot) && std::find(order.begin(), order.end(), slot) == order.end()) order.push_back(slot);
  }
  if (order != order_) Relayout(order);
  if (order.empty()) return {};
  const ModelConfig& m = artifacts_.model;
  const int64_t n = static_cast<int64_t>(order.size()), seq = m.cache_len(), vocab = m.codebook_size;
  Batch& batch = BatchOf(n);
  std::vector<int64_t> tokens(static_cast<size_t>(n)), positions(static_cast<size_t>(n)), rows;
  std::vector<float> guidance(static_cast<size_t>(n)), temperature(static_cast<size_t>(n)),
      noise(static_cast<size_t>(n * vocab));
  for (int64_t j = 0; j < n; ++j) {
    const Image& image = *images_[static_cast<size_t>(order[static_cast<size_t>(j)])];
    const int64_t p = image.step, q = std::max<int64_t>(p - 1, 0);
    tokens[j] = p >= 2 ? image.tokens[static_cast<size_t>(p - 2)] : 0;
    positions[j] = p, guidance[j] = image.schedule[static_cast<size_t>(q)], temperature[j] = image.temperature;
    std::copy_n(image.noise.begin() + q * vocab, vocab, noise.begin() + j * vocab);
  }
  for (int64_t kind = 0; kind < kinds_; ++kind) {
    for (int64_t j = 0; j < n; ++j) rows.push_back((order[static_cast<size_t>(j)] * kinds_ + kind) * seq + positions[j]);
  }
  memory_.Upload(tokens.data(), batch.feeds.at("tokens"));
  memory_.Upload(positions.data(), batch.feeds.at("position"));
  memory_.Upload(guidance.data(), batch.feeds.at("guidance_scale"));
  memory_.Upload(temperature.data(), batch.feeds.at("temperature"));
  memory_.Upload(noise.data(), batch.feeds.at("noise"));
  std::vector<int64_t> ordinal(rows.size());
  std::iota(ordinal.begin(), ordinal.end(), 0);
  memory_.CopyRows(batch.feeds.at("condition"), ordinal, table_, rows, 1);
  if (backend_.use_cuda_graph()) {  // one captured step per image count: its buffers never move
    auto replay = replays_.find(n);
    if (replay == replays_.end()) {
      Decode(n);  // warm-up (TensorRT requires one before capture); it computes this step
      replays_[n] = memory_.Capture([this, n] { Decode(n); });
    } else {
      replay->second();
    }
  } else {
    Decode(n);
  }
  std::vector<int64_t> sampled(static_cast<size_t>(n));
  memory_.Download(batch.next_tokens, sampled.data());
  std::vector<int64_t> row_positions;
  for (int64_t kind = 0; kind < kinds_; ++kind) row_positions.insert(row_positions.end(), positions.begin(), positions.end());
  memory_.WriteRows(k_cache_, batch.outputs.at("keys"), row_positions);
  memory_.WriteRows(v_cache_, batch.outputs.at("values"), row_positions);
  std::vector<int64_t> finished;
  for (int64_t j = 0; j < n; ++j) {
    Image& image = *images_[static_cast<size_t>(order[static_cast<size_t>(j)])];
    if (image.step >= 1) image.tokens[static_cast<size_t>(image.step - 1)] = sampled[static_cast<size_t>(j)];
    if (++image.step == seq) finished.push_back(order[static_cast<size_t>(j)]);
  }
  return finished;
}

}  // namespace rar::detail
