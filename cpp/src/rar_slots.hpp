// In-flight batching for RAR (rar_deploy/runtime/slots.py's RARSlots in Python; docs/CONTRACT.md allows the
// images of one decode_step at different positions): up to `slots` images, each admitted at any step with its
// own label, seed, image index and sampling values, stepping together and leaving the step they finish. A step
// runs the decode_step on the n images present (batch n: a lone image costs what it costs alone), their cache
// rows kept in the layout of a batch of n (conditional rows 0 .. n-1, null-class rows n .. 2n-1) and re-laid
// when images join or leave; each image's condition rows are computed once, at admission, into a table from
// which a step gathers every row's at its own position (P = 1). Each image's tokens equal those of generating
// it alone. A table holds guided or unguided images (their row counts differ). No threads: the caller steps.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"

namespace rar::detail {

class RarSlots {
 public:
  RarSlots(const Artifacts& artifacts, Backend& backend, int64_t slots, bool guided);

  // the image `index` of a request with `seed`, its values already checked and resolved
  void Admit(int64_t slot, int64_t label, double guidance_scale, double guidance_pow, double temperature,
             uint64_t seed, int64_t index);
  std::vector<int64_t> Step();  // one decode_step for the images present; the slots whose image finished
  bool Busy(int64_t slot) const { return images_.at(static_cast<size_t>(slot)).has_value(); }
  bool Done(int64_t slot) const;  // its image has every token
  const std::vector<int64_t>& Tokens(int64_t slot) const { return images_.at(static_cast<size_t>(slot))->tokens; }
  void Release(int64_t slot) { images_.at(static_cast<size_t>(slot)).reset(); }
  int64_t slots() const { return slots_; }

 private:
  struct Image {
    float temperature;
    std::vector<float> schedule, noise;  // guidance [N], uniform noise [N, V]
    std::vector<int64_t> tokens;         // [N], sampled so far
    int64_t step = 0;                    // positions done
  };
  struct Batch {
    Buffers feeds, outputs;
    Buffer next_tokens;
  };
  void Relayout(const std::vector<int64_t>& order);
  Batch& BatchOf(int64_t n);
  void Decode(int64_t n);

  const Artifacts& artifacts_;
  Backend& backend_;
  Memory& memory_;
  int64_t slots_, kinds_;  // kinds: rows per image (2 with guidance)
  Buffer k_cache_, v_cache_, blank_, table_;
  std::vector<std::optional<Image>> images_;
  std::vector<int64_t> order_;  // the slots in the cache's rows: image j of a step is slot order_[j]
  std::map<int64_t, Batch> batches_;
  std::map<int64_t, std::function<void()>> replays_;
};

}  // namespace rar::detail
