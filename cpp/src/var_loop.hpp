// VAR's generation loop on a backend (rar_deploy/runtime/loops.py's VARLoop in Python): one var_step
// per scale, its keys and values written into the static cache [depth, 2B, H, L, Dh] on the backend's
// memory, f_hat passed from one step's output buffer to the next step's input (two buffers, swapped), and
// the var_decoder on the last f_hat. The per-scale constants (positions, Phi index, resize matrices) are
// uploaded once, every scale's noise once per batch; only tokens and images come back to the host.
#pragma once

#include <cstdint>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"

namespace rar::detail {

// One VAR generation: labels [B], the guidance scale (cfg), top-k, top-p, temperatures [B], noise [B, L, V]. The
// guidance t of each scale is cfg * n / d of its manifest guidance_fraction [n, d].
struct VarInputs {
  std::vector<int64_t> labels;
  double guidance_scale = 0;
  int64_t top_k = 0;
  float top_p = 0;
  std::vector<float> temperature, noise;
};

class VarLoop {
 public:
  using Inputs = VarInputs;
  VarLoop(const Artifacts& artifacts, Backend& backend);

  void Start(const VarInputs& inputs);
  void Step();  // the next scale
  bool Done() const { return position_ == static_cast<int64_t>(artifacts_.scales.size()); }
  int64_t position() const { return position_; }  // scales done since Start
  int64_t TokensDone() const { return position_ ? artifacts_.scales[static_cast<size_t>(position_ - 1)].end : 0; }
  std::vector<int64_t> Tokens();        // [B, L] on the host: every scale's
  std::vector<uint8_t> DecodeImages();  // [B, H, W, 3] from the last f_hat

 private:
  void Allocate(int64_t batch);

  const Artifacts& artifacts_;
  Backend& backend_;
  Memory& memory_;
  std::vector<Buffers> constants_, outputs_;  // per scale: positions, phi_index, down, up; its step's outputs
  std::vector<Buffer> noise_;                 // per scale [B, side, side, V]
  Buffer k_cache_, v_cache_, f_hat_[2], labels_, guidance_, top_k_, top_p_, temperature_;
  Buffers images_;
  int64_t batch_ = 0, position_ = 0;
};

}  // namespace rar::detail
