#include "backend.hpp"

#include <algorithm>

#include "error.hpp"

namespace rar::detail {

Backend::Backend(const Artifacts& artifacts, std::unique_ptr<Memory> memory)
    : artifacts_(artifacts), memory_(std::move(memory)) {}

Buffers Backend::OutputBuffers(const std::string& graph, const Dims& dims) {
  Buffers buffers;
  for (const TensorSpec& spec : artifacts_.graphs.at(graph).outputs) {
    buffers[spec.name] = memory_->Empty(spec.Resolve(dims), spec.dtype);
  }
  return buffers;
}

int DeviceIndex(const std::string& device) {
  const auto colon = device.find(':');
  return colon == std::string::npos ? 0 : std::stoi(device.substr(colon + 1));
}

}  // namespace rar::detail
