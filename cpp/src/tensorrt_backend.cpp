// The TensorRT backend (standard TensorRT 10.x; TensorRT-RTX with RAR_TENSORRT_RTX, whose headers carry
// their own version macros): the engines of the folder, checked against this machine first with the Python
// runtime's messages; the execution contexts (three for RAR, two for VAR) share one scratch allocation; a RAR
// step is captured once in a CUDA graph and replayed (Backend), with no host synchronisation inside the loop;
// a VAR step (VarLoop) sets its scale's input shapes and runs as it is, as in the Python runtime.
#include "backend.hpp"
#include "error.hpp"

#ifdef RAR_WITH_TENSORRT
#include <NvInfer.h>

#include <fstream>
#include <sstream>
#endif

namespace rar::detail {

#ifdef RAR_WITH_TENSORRT
namespace {

#ifdef RAR_TENSORRT_RTX
constexpr const char* kFlavour = "tensorrt-rtx";
#else
constexpr const char* kFlavour = "tensorrt";
#endif

std::string TensorRTVersion() {
  return std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
         std::to_string(NV_TENSORRT_PATCH) + "." + std::to_string(NV_TENSORRT_BUILD);
}

class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kERROR) last_error = message;
  }
  std::string last_error;
};

void CheckEngines(const Artifacts& artifacts, const std::string& capability) {
  const std::string rebuild = "rebuild them here: rar-build --artifacts " + artifacts.directory.string();
  if (artifacts.engines.size() != artifacts.graphs.size()) {
    Fail(RAR_ERROR_BACKEND, artifacts.directory.string() + " has no TensorRT engines: build them on this machine with "
                                                           "rar-build --artifacts " + artifacts.directory.string() +
                                ", or use the onnxruntime backend");
  }
  for (const auto& [name, engine] : artifacts.engines) {
    if (engine.flavour != kFlavour || engine.version != TensorRTVersion()) {
      Fail(RAR_ERROR_BACKEND, "engine " + name + " was built with " + engine.flavour + " " + engine.version +
                                  ", this runtime has " + kFlavour + " " + TensorRTVersion() + ": " + rebuild);
    }
    if (capability.empty()) {
      Fail(RAR_ERROR_BACKEND, "the tensorrt backend needs an NVIDIA GPU (CUDA sees none): use the onnxruntime backend "
                              "on this machine");
    }
    const auto& targets = engine.compute_capabilities;
    if (std::find(targets.begin(), targets.end(), capability) == targets.end()) {
      Fail(RAR_ERROR_BACKEND, "engine " + name + " was built for other GPUs, this GPU is " + capability + ": " + rebuild);
    }
  }
}

nvinfer1::Dims ToDims(const std::vector<int64_t>& shape) {
  nvinfer1::Dims dims{};
  dims.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) dims.d[i] = shape[i];
  return dims;
}

class TensorRT final : public Backend {
 public:
  TensorRT(const Artifacts& artifacts, const std::string& device)
      : Backend(artifacts, (CheckEngines(artifacts, CudaCapability(DeviceIndex(device))), CudaMemory(DeviceIndex(device)))) {
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    int64_t scratch = 0;
    for (const auto& [name, engine] : artifacts.engines) {
      std::ifstream stream(artifacts.CheckFile(engine.file), std::ios::binary);
      const std::string plan((std::istreambuf_iterator<char>(stream)), std::istreambuf_iterator<char>());
      engines_[name].reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
      if (!engines_[name]) {
        Fail(RAR_ERROR_BACKEND, "TensorRT could not load engine " + name + " (" + logger_.last_error +
                                    "): rebuild the engines (rar-build)");
      }
      scratch = std::max(scratch, engines_[name]->getDeviceMemorySizeV2());
    }
    // one scratch allocation for all the contexts: they never run at the same time
    scratch_ = memory().Empty({std::max<int64_t>(scratch, 1)}, DType::kUint8);
    for (auto& [name, engine] : engines_) {
      contexts_[name].reset(engine->createExecutionContext(nvinfer1::ExecutionContextAllocationStrategy::kUSER_MANAGED));
      contexts_[name]->setDeviceMemoryV2(scratch_.data, static_cast<int64_t>(scratch_.Bytes()));
    }
    use_cuda_graph_ = true;
  }

  void Run(const std::string& graph, const Buffers& feeds, const Buffers& outputs) override {
    nvinfer1::IExecutionContext& context = *contexts_.at(graph);
    for (const auto& [name, buffer] : feeds) {
      context.setInputShape(name.c_str(), ToDims(buffer.shape));
      context.setTensorAddress(name.c_str(), buffer.data);
    }
    for (const auto& [name, buffer] : outputs) context.setTensorAddress(name.c_str(), buffer.data);
    if (!context.enqueueV3(static_cast<cudaStream_t>(memory().Stream()))) {
      Fail(RAR_ERROR_RUNTIME, "TensorRT failed to run " + graph + ": " + logger_.last_error);
    }
  }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, std::unique_ptr<nvinfer1::ICudaEngine>> engines_;
  std::map<std::string, std::unique_ptr<nvinfer1::IExecutionContext>> contexts_;
  Buffer scratch_;
};

}  // namespace
#endif

std::unique_ptr<Backend> TensorRTBackend(const Artifacts& artifacts, const std::string& device) {
#ifdef RAR_WITH_TENSORRT
  return std::make_unique<TensorRT>(artifacts, device);
#else
  (void)artifacts, (void)device;
  Fail(RAR_ERROR_BACKEND, "this rar-deploy library was built without TensorRT: configure with -DRAR_WITH_TENSORRT=ON "
                          "(and -DTENSORRT_ROOT), or use the onnxruntime backend");
#endif
}

}  // namespace rar::detail
