#include "memory.hpp"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "error.hpp"

#ifdef RAR_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace rar::detail {

int64_t Buffer::Elements() const {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

Buffer Buffer::Row(int64_t index) const {
  if (shape.empty() || index < 0 || index >= shape[0]) Fail(RAR_ERROR_RUNTIME, "buffer row out of range");
  Buffer row{nullptr, std::vector<int64_t>(shape.begin() + 1, shape.end()), dtype, owner};
  row.data = static_cast<char*>(data) + static_cast<size_t>(index) * row.Bytes();
  return row;
}

Buffer Buffer::Head(int64_t rows) const {
  if (shape.empty() || rows < 0 || rows > shape[0]) Fail(RAR_ERROR_RUNTIME, "buffer rows out of range");
  Buffer head{data, shape, dtype, owner};
  head.shape[0] = rows;
  return head;
}

Buffer Buffer::Reshape(std::vector<int64_t> new_shape) const {
  Buffer view{data, std::move(new_shape), dtype, owner};
  if (view.Elements() != Elements()) Fail(RAR_ERROR_RUNTIME, "buffer reshape to another size");
  return view;
}

Buffer Memory::Zeros(std::vector<int64_t> shape, DType dtype) {
  Buffer buffer = Empty(std::move(shape), dtype);
  Fill(buffer, 0);
  return buffer;
}

void Memory::CopyRows(Buffer& destination, const std::vector<int64_t>& to, const Buffer& source,
                      const std::vector<int64_t>& from, size_t axis) {
  auto product = [](const std::vector<int64_t>& shape, size_t begin, size_t end) {
    return std::accumulate(shape.begin() + static_cast<std::ptrdiff_t>(begin),
                           shape.begin() + static_cast<std::ptrdiff_t>(end), int64_t{1}, std::multiplies<int64_t>());
  };
  const size_t outer = static_cast<size_t>(product(source.shape, 0, axis));
  const size_t inner = static_cast<size_t>(product(source.shape, axis + 1, source.shape.size())) *
                       ItemSize(source.dtype);
  for (size_t j = 0; j < to.size(); ++j) {
    Copy2D(static_cast<char*>(destination.data) + static_cast<size_t>(to[j]) * inner,
           static_cast<size_t>(destination.shape[axis]) * inner,
           static_cast<const char*>(source.data) + static_cast<size_t>(from[j]) * inner,
           static_cast<size_t>(source.shape[axis]) * inner, inner, outer);
  }
}

void Memory::WriteRows(Buffer& cache, const Buffer& fresh, const std::vector<int64_t>& positions) {
  const int64_t layers = cache.shape[0], rows = cache.shape[1], heads = cache.shape[2], seq = cache.shape[3];
  const int64_t fresh_rows = fresh.shape[1], n = fresh.shape[3];
  const size_t step = static_cast<size_t>(cache.shape[4]) * ItemSize(cache.dtype), width = static_cast<size_t>(n) * step;
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (size_t j = 0; j < positions.size(); ++j) {  // H rows of n * Dh elements: pitch S * Dh in the cache
      const int64_t row = static_cast<int64_t>(j);
      const size_t kept = static_cast<size_t>(std::min(n, seq - positions[j])) * step;
      Copy2D(static_cast<char*>(cache.data) + static_cast<size_t>(((layer * rows + row) * heads) * seq + positions[j]) * step,
             static_cast<size_t>(seq) * step,
             static_cast<const char*>(fresh.data) + static_cast<size_t>((layer * fresh_rows + row) * heads * n) * step,
             width, kept, static_cast<size_t>(heads));
    }
  }
}

namespace {

class Host final : public Memory {
 public:
  bool IsDevice() const override { return false; }

  Buffer Empty(std::vector<int64_t> shape, DType dtype) override {
    Buffer buffer{nullptr, std::move(shape), dtype, nullptr};
    auto storage = std::shared_ptr<char[]>(new char[std::max<size_t>(buffer.Bytes(), 1)]);
    buffer.data = storage.get();
    buffer.owner = storage;
    return buffer;
  }
  void Upload(const void* host, Buffer& buffer) override { std::memcpy(buffer.data, host, buffer.Bytes()); }
  void Download(const Buffer& buffer, void* host) override { std::memcpy(host, buffer.data, buffer.Bytes()); }
  void Copy(Buffer& destination, const Buffer& source) override {
    std::memcpy(destination.data, source.data, source.Bytes());
  }
  void Fill(Buffer& buffer, int value) override { std::memset(buffer.data, value, buffer.Bytes()); }
  void Copy2D(void* destination, size_t dpitch, const void* source, size_t spitch, size_t width,
              size_t height) override {
    for (size_t r = 0; r < height; ++r) {
      std::memcpy(static_cast<char*>(destination) + r * dpitch, static_cast<const char*>(source) + r * spitch, width);
    }
  }

  void WritePosition(Buffer& cache, const Buffer& fresh, int64_t position) override {
    const size_t step = static_cast<size_t>(cache.shape[4]) * ItemSize(cache.dtype);
    const size_t width = static_cast<size_t>(fresh.shape[3]) * step;  // n positions of one (layer, row, head)
    const int64_t rows = cache.shape[0] * cache.shape[1] * cache.shape[2], seq = cache.shape[3];
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(static_cast<char*>(cache.data) + (static_cast<size_t>(r * seq + position)) * step,
                  static_cast<const char*>(fresh.data) + static_cast<size_t>(r) * width, width);
    }
  }
};

#ifdef RAR_WITH_CUDA
void CheckCuda(cudaError_t error, const std::string& doing) {
  if (error != cudaSuccess) Fail(RAR_ERROR_RUNTIME, "CUDA failed " + doing + ": " + cudaGetErrorName(error));
}

class Cuda final : public Memory {
 public:
  explicit Cuda(int device) : device_(device) {
    if (CudaCapability(device).empty()) {
      Fail(RAR_ERROR_BACKEND, "device cuda:" + std::to_string(device) + ", but no CUDA GPU is visible here: use cpu");
    }
    CheckCuda(cudaSetDevice(device), "selecting the device");
    CheckCuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating a stream");
  }
  ~Cuda() override { cudaStreamDestroy(stream_); }

  bool IsDevice() const override { return true; }
  int DeviceIndex() const override { return device_; }
  void* Stream() override { return stream_; }

  Buffer Empty(std::vector<int64_t> shape, DType dtype) override {
    Buffer buffer{nullptr, std::move(shape), dtype, nullptr};
    void* address = nullptr;
    CheckCuda(cudaMalloc(&address, std::max<size_t>(buffer.Bytes(), 1)), "allocating device memory");
    buffer.data = address;
    buffer.owner = std::shared_ptr<void>(address, [](void* p) { cudaFree(p); });
    return buffer;
  }
  void Upload(const void* host, Buffer& buffer) override {
    CheckCuda(cudaMemcpyAsync(buffer.data, host, buffer.Bytes(), cudaMemcpyHostToDevice, stream_), "uploading");
    Synchronize();  // `host` may be temporary
  }
  void Download(const Buffer& buffer, void* host) override {
    CheckCuda(cudaMemcpyAsync(host, buffer.data, buffer.Bytes(), cudaMemcpyDeviceToHost, stream_), "downloading");
    Synchronize();
  }
  void Copy(Buffer& destination, const Buffer& source) override {
    CheckCuda(cudaMemcpyAsync(destination.data, source.data, source.Bytes(), cudaMemcpyDeviceToDevice, stream_),
              "copying");
  }
  void Fill(Buffer& buffer, int value) override {
    CheckCuda(cudaMemsetAsync(buffer.data, value, buffer.Bytes(), stream_), "filling");
  }
  void Copy2D(void* destination, size_t dpitch, const void* source, size_t spitch, size_t width,
              size_t height) override {
    CheckCuda(cudaMemcpy2DAsync(destination, dpitch, source, spitch, width, height, cudaMemcpyDeviceToDevice, stream_),
              "copying rows");
  }
  // one 2-D copy of L*R*H rows of n*Dh elements, source pitch n*Dh, destination pitch S*Dh
  void WritePosition(Buffer& cache, const Buffer& fresh, int64_t position) override {
    const size_t step = static_cast<size_t>(cache.shape[4]) * ItemSize(cache.dtype);
    const size_t width = static_cast<size_t>(fresh.shape[3]) * step;
    const size_t rows = static_cast<size_t>(cache.shape[0] * cache.shape[1] * cache.shape[2]);
    CheckCuda(cudaMemcpy2DAsync(static_cast<char*>(cache.data) + static_cast<size_t>(position) * step,
                                static_cast<size_t>(cache.shape[3]) * step, fresh.data, width, width, rows,
                                cudaMemcpyDeviceToDevice, stream_),
              "writing the KV cache");
  }
  std::function<void()> Capture(const std::function<void()>& body) override {
    CheckCuda(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "starting a graph capture");
    cudaGraph_t graph = nullptr;
    try {
      body();
    } catch (...) {
      cudaStreamEndCapture(stream_, &graph);
      throw;
    }
    CheckCuda(cudaStreamEndCapture(stream_, &graph), "ending the graph capture");
    cudaGraphExec_t executable = nullptr;
    CheckCuda(cudaGraphInstantiate(&executable, graph, 0), "instantiating the CUDA graph");
    auto exec = std::shared_ptr<CUgraphExec_st>(executable, [graph](cudaGraphExec_t e) {
      cudaGraphExecDestroy(e);
      cudaGraphDestroy(graph);
    });
    cudaStream_t stream = stream_;
    return [exec, stream] { CheckCuda(cudaGraphLaunch(exec.get(), stream), "replaying the CUDA graph"); };
  }
  void Synchronize() override { CheckCuda(cudaStreamSynchronize(stream_), "synchronising the stream"); }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
};
#endif

}  // namespace

std::unique_ptr<Memory> HostMemory() { return std::make_unique<Host>(); }

std::unique_ptr<Memory> CudaMemory(int device_index) {
#ifdef RAR_WITH_CUDA
  return std::make_unique<Cuda>(device_index);
#else
  (void)device_index;
  Fail(RAR_ERROR_BACKEND, "this rar-deploy library was built without CUDA: rebuild with the CUDA toolkit, or use cpu");
#endif
}

std::string CudaCapability(int device_index) {
#ifdef RAR_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count <= device_index) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return "";
  }
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_index);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device_index);
  return "SM" + std::to_string(major) + std::to_string(minor);
#else
  (void)device_index;
  return "";
#endif
}

}  // namespace rar::detail
