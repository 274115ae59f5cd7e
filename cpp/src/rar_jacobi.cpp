#include "rar_jacobi.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <utility>

#include "sampling.hpp"

namespace rar::detail {
namespace {

// decode_block over a cache in the backend's memory (runtime/jacobi.py's BlockDecoder): the condition rows of every
// position computed once, each call's keys and values written in place at its images' own positions.
class BlockDecoder {
 public:
  struct Out {
    std::vector<float> logits;        // [B, P, V]
    std::vector<int64_t> next_tokens;  // [B, P]
  };

  BlockDecoder(const Artifacts& artifacts, Backend& backend, const std::vector<int64_t>& rows)
      : artifacts_(artifacts), backend_(backend), memory_(backend.memory()), rows_(static_cast<int64_t>(rows.size())) {
    const ModelConfig& m = artifacts.model;
    const int64_t seq = m.cache_len();
    Buffer labels = memory_.Empty({rows_}, DType::kInt64);
    memory_.Upload(rows.data(), labels);
    std::vector<int64_t> table(static_cast<size_t>(seq * rows_));
    for (int64_t p = 0; p < seq; ++p) std::fill_n(table.begin() + p * rows_, rows_, p);
    Buffer positions = memory_.Empty({seq, rows_}, DType::kInt64);
    memory_.Upload(table.data(), positions);
    condition_ = memory_.Empty({seq, rows_, artifacts.condition_width}, artifacts.float_dtype);
    backend_.Run("condition", {{"class_labels", labels}, {"positions", positions}}, {{"condition", condition_}});
    // zeros: a masked cache position is multiplied by 0 in attention, and 0 * NaN would be NaN
    keys_ = memory_.Zeros({m.depth, rows_, m.num_heads, seq, m.head_dim()}, artifacts.float_dtype);
    values_ = memory_.Zeros({m.depth, rows_, m.num_heads, seq, m.head_dim()}, artifacts.float_dtype);
  }

  // tokens [B, P] at positions first[b] .. first[b] + P - 1 of image b; guidance [B, P]; noise [B, P, V]
  Out operator()(const std::vector<int64_t>& first, const std::vector<int64_t>& tokens, int64_t size,
                 const std::vector<float>& guidance, const std::vector<float>& temperature,
                 const std::vector<float>& noise) {
    const int64_t batch = static_cast<int64_t>(first.size()), vocab = artifacts_.model.codebook_size;
    auto found = buffers_.find({batch, size});
    if (found == buffers_.end()) {  // allocated once per shape: a call only uploads into them
      Buffers feeds{{"tokens", memory_.Empty({batch, size}, DType::kInt64)},
                    {"position", memory_.Empty({batch}, DType::kInt64)},
                    {"guidance_scale", memory_.Empty({batch, size}, DType::kFloat32)},
                    {"temperature", memory_.Empty({batch}, DType::kFloat32)},
                    {"noise", memory_.Empty({batch, size, vocab}, DType::kFloat32)}};
      Buffers outputs = backend_.OutputBuffers(
          "decode_block", {{"batch", batch}, {"rows", rows_}, {"block", size}, {"positions", condition_.shape[0]}});
      found = buffers_.emplace(std::make_pair(batch, size), std::make_pair(feeds, outputs)).first;
    }
    Buffers& feeds = found->second.first;
    Buffers& outputs = found->second.second;
    memory_.Upload(tokens.data(), feeds.at("tokens"));
    memory_.Upload(first.data(), feeds.at("position"));
    memory_.Upload(guidance.data(), feeds.at("guidance_scale"));
    memory_.Upload(temperature.data(), feeds.at("temperature"));
    memory_.Upload(noise.data(), feeds.at("noise"));
    Buffers all = feeds;
    all["condition"] = condition_;
    for (int64_t layer = 0; layer < artifacts_.model.depth; ++layer) {
      all["k_cache." + std::to_string(layer)] = keys_.Row(layer);
      all["v_cache." + std::to_string(layer)] = values_.Row(layer);
    }
    backend_.Run("decode_block", all, outputs);
    if (std::all_of(first.begin(), first.end(), [&](int64_t f) { return f == first[0]; })) {
      memory_.WritePosition(keys_, outputs.at("keys"), first[0]);  // one block for every image: one copy
      memory_.WritePosition(values_, outputs.at("values"), first[0]);
    } else {  // row r is image r mod B's
      std::vector<int64_t> positions(static_cast<size_t>(rows_));
      for (int64_t r = 0; r < rows_; ++r) positions[static_cast<size_t>(r)] = first[static_cast<size_t>(r % batch)];
      memory_.WriteRows(keys_, outputs.at("keys"), positions);
      memory_.WriteRows(values_, outputs.at("values"), positions);
    }
    Out out{std::vector<float>(static_cast<size_t>(batch * size * vocab)),
            std::vector<int64_t>(static_cast<size_t>(batch * size))};
    memory_.Download(outputs.at("logits"), out.logits.data());
    memory_.Download(outputs.at("next_tokens"), out.next_tokens.data());
    return out;
  }

 private:
  const Artifacts& artifacts_;
  Backend& backend_;
  Memory& memory_;
  int64_t rows_;
  Buffer condition_, keys_, values_;
  std::map<std::pair<int64_t, int64_t>, std::pair<Buffers, Buffers>> buffers_;  // feeds and outputs by (B, P)
};

struct Draft {
  int64_t token;
  std::vector<double> q;  // the distribution it was drawn from; empty for a uniform draft (and when greedy)
};

int64_t Argmax(const float* values, int64_t count) {  // the first largest, as numpy's argmax
  return static_cast<int64_t>(std::max_element(values, values + count) - values);
}

// softmax(logits / T) in double, as runtime/jacobi.py's _probabilities
std::vector<double> Probabilities(const float* logits, int64_t vocab, double temperature) {
  std::vector<double> p(static_cast<size_t>(vocab));
  double peak = -std::numeric_limits<double>::infinity(), total = 0;
  for (int64_t v = 0; v < vocab; ++v) peak = std::max(peak, static_cast<double>(logits[v]) / temperature);
  for (int64_t v = 0; v < vocab; ++v) total += p[static_cast<size_t>(v)] = std::exp(static_cast<double>(logits[v]) / temperature - peak);
  for (double& value : p) value /= total;
  return p;
}

}  // namespace

JacobiResult JacobiGenerate(const Artifacts& artifacts, Backend& backend, const RarInputs& inputs, uint64_t seed,
                            int64_t first_image, int64_t window) {
  const ModelConfig& m = artifacts.model;
  const int64_t n = m.image_seq_len, seq = m.cache_len(), vocab = m.codebook_size;
  const int64_t batch = static_cast<int64_t>(inputs.temperature.size()), stride = window + 1, width = vocab + 2;
  BlockDecoder decoder(artifacts, backend, inputs.rows);
  JacobiResult result{std::vector<int64_t>(static_cast<size_t>(batch * n)), std::vector<int64_t>(static_cast<size_t>(batch))};
  std::vector<int64_t>& tokens = result.tokens;
  std::vector<int64_t>& calls = result.calls;
  std::vector<int64_t> accepted(static_cast<size_t>(batch));  // image tokens 0 .. a - 1 of image b are final
  std::vector<std::vector<Draft>> drafts(static_cast<size_t>(batch));  // for image tokens a, a + 1, ...
  auto index = [](int64_t value) { return static_cast<size_t>(value); };

  // each image's rows of its current call [B, W + 1, V + 2]: columns 0 .. V-1 noise, V acceptance, V+1 uniform draft
  auto streams = [&](const std::vector<bool>& live) {
    std::vector<float> rows(index(batch * stride * width), 0.5f);  // images done: any valid noise
    for (int64_t b = 0; b < batch; ++b) {
      if (!live[index(b)]) continue;
      const std::vector<float> mine =
          SamplingNoise(seed ^ kJacobiStream, 1, stride, width, first_image + b, calls[index(b)] * stride);
      std::copy(mine.begin(), mine.end(), rows.begin() + b * stride * width);
    }
    return rows;
  };
  auto call = [&](const std::vector<int64_t>& first, const std::vector<int64_t>& fed, int64_t size,
                  const std::vector<int64_t>& predicted, const std::vector<float>& rows) {
    std::vector<float> guidance(index(batch * size)), noise(index(batch * size * vocab));
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < size; ++i) {
        guidance[index(b * size + i)] = inputs.schedule[index(std::min(predicted[index(b * size + i)], n - 1))];
        const float* source = rows.data() + (b * stride + i) * width;
        std::copy_n(source, vocab, noise.begin() + (b * size + i) * vocab);
      }
    }
    return decoder(first, fed, size, guidance, inputs.temperature, noise);
  };

  // the prefill: positions 0 and 1, image token 0 sampled at position 1
  std::vector<bool> live(index(batch), true);
  const std::vector<int64_t> zeros(index(batch * 2));
  BlockDecoder::Out out = call(std::vector<int64_t>(index(batch)), zeros, 2, zeros, streams(live));
  for (int64_t b = 0; b < batch; ++b) {
    tokens[index(b * n)] = out.next_tokens[index(b * 2 + 1)];
    accepted[index(b)] = 1, calls[index(b)] = 1;
  }
  while (std::any_of(accepted.begin(), accepted.end(), [&](int64_t a) { return a < n; })) {
    // one block size a call; an image near its end uses the positions up to N and ignores the rest (they wrap round
    // the condition table and their keys are not written), so it never shortens another image's window
    int64_t size = 0;
    std::vector<int64_t> first(index(batch)), valid(index(batch));
    for (int64_t b = 0; b < batch; ++b) {
      live[index(b)] = accepted[index(b)] < n;
      if (live[index(b)]) first[index(b)] = accepted[index(b)] + 1, size = std::max(size, seq - first[index(b)]);
    }
    size = std::min(size, window + 1);
    for (int64_t b = 0; b < batch; ++b) valid[index(b)] = std::min(size, seq - first[index(b)]);
    const std::vector<float> rows = streams(live);
    std::vector<int64_t> fed(index(batch * size)), predicted(index(batch * size));
    for (int64_t b = 0; b < batch; ++b) {
      if (!live[index(b)]) continue;
      std::vector<Draft>& mine = drafts[index(b)];
      while (static_cast<int64_t>(mine.size()) < valid[index(b)] - 1) {  // fill the window with uniform drafts
        const float u = rows[index((b * stride + static_cast<int64_t>(mine.size()) + 1) * width + vocab + 1)];
        mine.push_back({std::min(static_cast<int64_t>(u * static_cast<float>(vocab)), vocab - 1), {}});
      }
      fed[index(b * size)] = tokens[index(b * n + accepted[index(b)] - 1)];
      for (int64_t i = 0; i < size; ++i) {
        if (i < valid[index(b)] - 1) fed[index(b * size + i + 1)] = mine[index(i)].token;
        predicted[index(b * size + i)] = accepted[index(b)] + i;
      }
    }
    out = call(first, fed, size, predicted, rows);
    for (int64_t b = 0; b < batch; ++b) {
      if (!live[index(b)]) continue;
      const int64_t a = accepted[index(b)], used = valid[index(b)];
      const double t = static_cast<double>(inputs.temperature[index(b)]);
      const float* row = rows.data() + b * stride * width;
      const float* logits = out.logits.data() + b * size * vocab;
      std::vector<std::vector<double>> p;
      if (t > 0) {
        for (int64_t i = 0; i < used; ++i) p.push_back(Probabilities(logits + i * vocab, vocab, t));
      }
      int64_t done = used - 1;  // drafts accepted
      bool rejected = false;
      for (int64_t i = 0; i < used - 1 && !rejected; ++i) {
        const Draft& draft = drafts[index(b)][index(i)];
        const float* logits_i = logits + i * vocab;
        bool keep;
        if (t == 0) {
          keep = draft.token == Argmax(logits_i, vocab);
        } else {
          const double q = draft.q.empty() ? 1.0 / static_cast<double>(vocab) : draft.q[index(draft.token)];
          keep = static_cast<double>(row[i * width + vocab]) < p[index(i)][index(draft.token)] / q;
        }
        if (keep) {
          tokens[index(b * n + a + i)] = draft.token;
          continue;
        }
        if (t == 0) {
          tokens[index(b * n + a + i)] = Argmax(logits_i, vocab);
        } else {  // from max(p - q, 0), renormalised: the Gumbel argmax of its log with the call's noise of row i
          double best = -std::numeric_limits<double>::infinity();
          int64_t chosen = 0;
          for (int64_t v = 0; v < vocab; ++v) {
            const double q = draft.q.empty() ? 1.0 / static_cast<double>(vocab) : draft.q[index(v)];
            const double residual = std::max(p[index(i)][index(v)] - q, 0.0);
            const double score = std::log(residual) - std::log(-std::log(static_cast<double>(row[i * width + v])));
            if (score > best) best = score, chosen = v;
          }
          tokens[index(b * n + a + i)] = chosen;
        }
        done = i, rejected = true;
      }
      if (!rejected) tokens[index(b * n + a + used - 1)] = out.next_tokens[index(b * size + used - 1)];
      accepted[index(b)] = a + done + 1;
      std::vector<Draft> next;  // drafts for the tokens after the new final ones: this call's samples
      for (int64_t j = done + 1; j < used; ++j) {
        next.push_back({out.next_tokens[index(b * size + j)], t == 0 ? std::vector<double>{} : p[index(j)]});
      }
      drafts[index(b)] = std::move(next);
      calls[index(b)] += 1;
    }
  }
  return result;
}

}  // namespace rar::detail
