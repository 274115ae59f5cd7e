// RAR's generation loop on a backend (rar_deploy/runtime/loops.py's RARLoop in Python): one static KV cache
// [L, R, H, N+1, Dh] per keys/values with per-layer views, the condition rows W positions at a time (the
// table, or computed per step), every sequence position 0 .. N through the decode step, the cache written in
// place, the step captured once in a CUDA graph where the backend allows. VAR's is VarLoop (var_loop.hpp);
// both are run by Drive (loop.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"

namespace rar::detail {

// One RAR generation: guidance rows [R] (B labels, then B null classes, or the B labels alone), the guidance
// scale of every image token [N], temperatures [B], uniform noise [B, N, V] (host).
struct RarInputs {
  std::vector<int64_t> rows;
  std::vector<float> schedule, temperature, noise;
};

class RarLoop {
 public:
  using Inputs = RarInputs;
  RarLoop(const Artifacts& artifacts, Backend& backend);

  void Start(const RarInputs& inputs);
  void Step();  // the next sequence position
  bool Done() const { return position_ == artifacts_.model.cache_len(); }
  int64_t position() const { return position_; }  // steps done since Start
  int64_t TokensDone() const;                      // tokens per image sampled so far
  std::vector<int64_t> Tokens();                   // [B, N] on the host

  // bytes of condition rows: the window is the most positions that fit (the table, or one per step at least)
  int64_t condition_table_budget = int64_t{2} << 30;
  int64_t condition_window() const { return window_; }

 private:
  void Allocate(int64_t batch, int64_t rows, int64_t window);
  void Decode(const Buffer& tokens, const Buffer& position, const Buffer& guidance, const Buffer& noise,
              const Buffer& next_tokens);

  const Artifacts& artifacts_;
  Backend& backend_;
  Memory& memory_;
  int64_t batch_ = 0, rows_ = 0, window_ = 0, position_ = 0;
  Buffer k_cache_, v_cache_, condition_, positions_, image_positions_, rows_buffer_, out_tokens_, guidance_,
      temperature_, noise_;
  Buffers outputs_, static_;
  std::function<void()> replay_;
};

// RAR tokens [B, N] -> uint8 images [B, H, W, C] through the vq_decoder.
std::vector<uint8_t> DecodeTokens(const Artifacts& artifacts, Backend& backend, const std::vector<int64_t>& tokens,
                                  int64_t batch);

}  // namespace rar::detail
