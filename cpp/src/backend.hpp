// The generation loop's device side (rar_deploy/runtime/backends.py in Python): one static KV cache
// [L, R, H, N+1, Dh] per keys/values with per-layer views, the condition table (or the condition computed
// per step), every sequence position through the decode step, the cache written in place. Subclasses run
// one graph on buffers of their Memory. This is RAR's loop; VAR's is VarLoop (var_loop.hpp), over Run and
// memory().
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "artifacts.hpp"
#include "memory.hpp"

namespace rar::detail {

using Buffers = std::map<std::string, Buffer>;

class Backend {
 public:
  Backend(const Artifacts& artifacts, std::unique_ptr<Memory> memory);
  virtual ~Backend() = default;
  virtual void Run(const std::string& graph, const Buffers& feeds, const Buffers& outputs) = 0;

  // One generation: guidance rows [R], schedule [N], temperatures [B], noise [B, N, V] (host).
  // The condition rows are computed W positions at a time in Step (row p mod W), W = condition_window().
  void Start(const std::vector<int64_t>& rows, const std::vector<float>& schedule,
             const std::vector<float>& temperature, const std::vector<float>& noise);
  void Step(int64_t position);            // positions 0 .. N
  std::vector<int64_t> Tokens();          // [B, N] on the host
  std::vector<uint8_t> DecodeImages(const std::vector<int64_t>& tokens, int64_t batch);  // [B, H, W, C]
  Memory& memory() { return *memory_; }
  Buffers OutputBuffers(const std::string& graph, const Dims& dims);  // every output of `graph`, allocated

  // bytes of condition rows: the window is the most positions that fit (the table, or one per step at least)
  int64_t condition_table_budget = int64_t{2} << 30;
  int64_t condition_window() const { return window_; }

 protected:
  bool use_cuda_graph_ = false;

 private:
  void Allocate(int64_t batch, int64_t rows, int64_t window);
  void Decode(const Buffer& tokens, const Buffer& position, const Buffer& guidance, const Buffer& noise,
              const Buffer& next_tokens);

  const Artifacts& artifacts_;
  std::unique_ptr<Memory> memory_;
  int64_t batch_ = 0, rows_ = 0, window_ = 0;
  Buffer k_cache_, v_cache_, condition_, positions_, image_positions_, rows_buffer_, out_tokens_, guidance_,
      temperature_, noise_;
  Buffers outputs_, static_;
  std::function<void()> replay_;
};

std::unique_ptr<Backend> OnnxRuntimeBackend(const Artifacts& artifacts, const std::string& device);
std::unique_ptr<Backend> TensorRTBackend(const Artifacts& artifacts, const std::string& device);
int DeviceIndex(const std::string& device);  // "cuda:N" -> N, "cuda" -> 0

}  // namespace rar::detail
