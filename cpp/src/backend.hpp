// A backend runs one artifact folder's graphs on buffers of its Memory and owns that memory
// (rar_deploy/runtime/backends.py in Python). The generation loops over it are RarLoop and VarLoop.
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

  Memory& memory() { return *memory_; }
  Buffers OutputBuffers(const std::string& graph, const Dims& dims);  // every output of `graph`, allocated

  bool use_cuda_graph() const { return use_cuda_graph_; }  // whether a loop may capture a step and replay it

 protected:
  bool use_cuda_graph_ = false;

 private:
  const Artifacts& artifacts_;
  std::unique_ptr<Memory> memory_;
};

std::unique_ptr<Backend> OnnxRuntimeBackend(const Artifacts& artifacts, const std::string& device);
std::unique_ptr<Backend> TensorRTBackend(const Artifacts& artifacts, const std::string& device);
int DeviceIndex(const std::string& device);  // "cuda:N" -> N, "cuda" -> 0

}  // namespace rar::detail
