// Where a backend's buffers live (rar_deploy/runtime/memory.py in Python): host memory, or CUDA device
// memory with one stream and CUDA graphs (built with RAR_WITH_CUDA). A Buffer is a dense row-major array
// whose first dimension can be indexed without a copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "artifacts.hpp"

namespace rar::detail {

struct Buffer {
  void* data = nullptr;  // host or device address of element 0
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  std::shared_ptr<void> owner;  // keeps the allocation alive while views exist

  int64_t Elements() const;
  size_t Bytes() const { return static_cast<size_t>(Elements()) * ItemSize(dtype); }
  Buffer Row(int64_t index) const;                       // buffer[index], one dimension fewer
  Buffer Head(int64_t rows) const;                       // buffer[:rows], the first rows
  Buffer Reshape(std::vector<int64_t> new_shape) const;  // the same memory, another shape of as many elements
};

class Memory {
 public:
  virtual ~Memory() = default;
  virtual bool IsDevice() const = 0;
  virtual int DeviceIndex() const { return 0; }
  virtual Buffer Empty(std::vector<int64_t> shape, DType dtype) = 0;
  Buffer Zeros(std::vector<int64_t> shape, DType dtype);
  virtual void Upload(const void* host, Buffer& buffer) = 0;  // buffer.Bytes() from host memory
  virtual void Download(const Buffer& buffer, void* host) = 0;  // synchronises
  virtual void Copy(Buffer& destination, const Buffer& source) = 0;
  virtual void Fill(Buffer& buffer, int value) = 0;  // every byte
  // cache [L, R, H, S, Dh] <- fresh [L, R, H, n, Dh] at sequence indices position .. position + n - 1
  virtual void WritePosition(Buffer& cache, const Buffer& fresh, int64_t position) = 0;
  // height rows of width bytes, from source (row pitch spitch) to destination (row pitch dpitch)
  virtual void Copy2D(void* destination, size_t dpitch, const void* source, size_t spitch, size_t width,
                      size_t height) = 0;
  // In-flight batching (rar_slots.hpp): destination[.., to[j], ..] <- source[.., from[j], ..] along `axis`
  void CopyRows(Buffer& destination, const std::vector<int64_t>& to, const Buffer& source,
                const std::vector<int64_t>& from, size_t axis);
  // cache [L, R, H, S, Dh] row j <- fresh [L, R', H, n, Dh] row j at sequence indices positions[j] ..
  // positions[j] + n - 1, j < positions.size(); positions past the cache's end are dropped
  void WriteRows(Buffer& cache, const Buffer& fresh, const std::vector<int64_t>& positions);
  // Capture the device work `body` enqueues into a graph and return its replay; nullptr where there is none.
  virtual std::function<void()> Capture(const std::function<void()>& /*body*/) { return nullptr; }
  virtual void Synchronize() {}
  virtual void* Stream() { return nullptr; }  // the cudaStream_t all work runs on
};

std::unique_ptr<Memory> HostMemory();
std::unique_ptr<Memory> CudaMemory(int device_index);  // fails where built without CUDA or without a GPU
std::string CudaCapability(int device_index);          // "SM89", or "" without a GPU (or without CUDA)

}  // namespace rar::detail
