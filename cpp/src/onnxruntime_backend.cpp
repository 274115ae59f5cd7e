// The ONNX Runtime backend: the C++ API with IO binding on our own buffers, on the CPU or with the CUDA
// execution provider running on our stream (device memory, no copies to the host inside the loop).
#include <onnxruntime_cxx_api.h>

#include "backend.hpp"
#include "error.hpp"

namespace rar::detail {
namespace {

ONNXTensorElementDataType OnnxType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::kFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::kInt64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case DType::kUint8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

Ort::Env& Environment() {
  static Ort::Env environment(ORT_LOGGING_LEVEL_ERROR, "rar-deploy");  // one per process, as ONNX Runtime wants
  return environment;
}

std::string Describe(const TensorSpec& spec) {
  std::string text = spec.name + " " + DTypeName(spec.dtype) + " [";
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    const Dim& dim = spec.shape[i];
    text += (i ? ", " : "") + (std::holds_alternative<int64_t>(dim) ? std::to_string(std::get<int64_t>(dim))
                                                                    : std::get<std::string>(dim));
  }
  return text + "]";
}

// What a session declares for one input or output, in the manifest's terms.
TensorSpec Declared(const std::string& name, const Ort::TypeInfo& type) {
  const auto tensor = type.GetTensorTypeAndShapeInfo();
  TensorSpec spec{name, DType::kFloat32, {}};
  switch (tensor.GetElementType()) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: spec.dtype = DType::kFloat16; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: spec.dtype = DType::kInt64; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: spec.dtype = DType::kUint8; break;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: break;
    default: spec.name += " (an unexpected type)";
  }
  const auto sizes = tensor.GetShape();
  std::vector<const char*> symbols(sizes.size(), nullptr);
  tensor.GetSymbolicDimensions(symbols.data(), symbols.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] >= 0) {
      spec.shape.emplace_back(sizes[i]);
    } else {
      spec.shape.emplace_back(std::string(symbols[i] ? symbols[i] : ""));
    }
  }
  return spec;
}

class OnnxRuntime final : public Backend {
 public:
  OnnxRuntime(const Artifacts& artifacts, const std::string& device)
      : Backend(artifacts, device == "cpu" ? HostMemory() : CudaMemory(DeviceIndex(device))),
        memory_info_(device == "cpu" ? Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)
                                     : Ort::MemoryInfo("Cuda", OrtDeviceAllocator, DeviceIndex(device),
                                                       OrtMemTypeDefault)) {
    Ort::SessionOptions options;
    options.SetLogSeverityLevel(3);
    // a quantized folder's DequantizeLinear + MatMul fuse into MatMulNBits, whose default (accuracy level 4) also
    // rounds activations to int8; level 1 computes in float32, the model the folder holds (docs/CONTRACT.md)
    options.AddConfigEntry("session.qdq_matmulnbits_accuracy_level", "1");
    if (device != "cpu") {
      const auto& api = Ort::GetApi();
      OrtCUDAProviderOptionsV2* cuda = nullptr;
      Ort::ThrowOnError(api.CreateCUDAProviderOptions(&cuda));
      std::unique_ptr<OrtCUDAProviderOptionsV2, decltype(api.ReleaseCUDAProviderOptions)> owned(
          cuda, api.ReleaseCUDAProviderOptions);
      const std::string index = std::to_string(DeviceIndex(device));
      const char* keys[] = {"device_id"};
      const char* values[] = {index.c_str()};
      Ort::ThrowOnError(api.UpdateCUDAProviderOptions(cuda, keys, values, 1));
      Ort::ThrowOnError(api.UpdateCUDAProviderOptionsWithValue(cuda, "user_compute_stream", memory().Stream()));
      options.AppendExecutionProvider_CUDA_V2(*cuda);
      run_options_.AddConfigEntry("disable_synchronize_execution_providers", "1");  // our stream orders the work
    }
    // the graphs other than the step run between steps: their idle threads must not spin against the step's
    Ort::SessionOptions quiet = options.Clone();
    quiet.AddConfigEntry("session.intra_op.allow_spinning", "0");
    for (const auto& [name, graph] : artifacts.graphs) {
      const std::string path = artifacts.GraphPath(name).string();
      try {
        const bool step = name == artifacts.step_graph() || name == "decode_block";  // speculative decoding's step
        const Ort::SessionOptions& chosen = step ? options : quiet;
        sessions_.emplace(name, Ort::Session(Environment(), path.c_str(), chosen));
      } catch (const Ort::Exception& error) {
        Fail(RAR_ERROR_ARTIFACTS, "ONNX Runtime cannot load " + path + ": " + error.what() +
                                      "; export the artifacts again");
      }
      CheckDeclared(path, sessions_.at(name), graph);
    }
  }

  void Run(const std::string& graph, const Buffers& feeds, const Buffers& outputs) override {
    Ort::Session& session = sessions_.at(graph);
    Ort::IoBinding binding(session);
    std::vector<Ort::Value> values;  // alive until the run returns
    values.reserve(feeds.size() + outputs.size());
    auto value = [&](const Buffer& buffer) -> Ort::Value& {
      values.push_back(Ort::Value::CreateTensor(memory_info_, buffer.data, buffer.Bytes(), buffer.shape.data(),
                                                buffer.shape.size(), OnnxType(buffer.dtype)));
      return values.back();
    };
    for (const auto& [name, buffer] : feeds) binding.BindInput(name.c_str(), value(buffer));
    for (const auto& [name, buffer] : outputs) binding.BindOutput(name.c_str(), value(buffer));
    try {
      session.Run(run_options_, binding);
    } catch (const Ort::Exception& error) {
      Fail(RAR_ERROR_RUNTIME, "ONNX Runtime failed to run " + graph + ": " + error.what());
    }
  }

 private:
  static void CheckDeclared(const std::string& path, Ort::Session& session, const GraphInfo& graph) {
    Ort::AllocatorWithDefaultOptions allocator;
    auto check = [&](const char* kind, size_t count, auto name_of, auto type_of, const std::vector<TensorSpec>& specs) {
      for (size_t i = 0; i < std::max(count, specs.size()); ++i) {
        if (i >= count || i >= specs.size()) {
          Fail(RAR_ERROR_ARTIFACTS, path + " declares " + std::to_string(count) + " " + kind + "s, the manifest " +
                                        std::to_string(specs.size()) + ": export the artifacts again");
        }
        const TensorSpec declared = Declared(name_of(i).get(), type_of(i));
        if (!(declared == specs[i])) {
          Fail(RAR_ERROR_ARTIFACTS, path + " declares " + kind + " " + Describe(declared) + ", the manifest says " +
                                        Describe(specs[i]) + ": the graph does not belong to this manifest; export "
                                                             "the artifacts again");
        }
      }
    };
    check("input", session.GetInputCount(), [&](size_t i) { return session.GetInputNameAllocated(i, allocator); },
          [&](size_t i) { return session.GetInputTypeInfo(i); }, graph.inputs);
    check("output", session.GetOutputCount(), [&](size_t i) { return session.GetOutputNameAllocated(i, allocator); },
          [&](size_t i) { return session.GetOutputTypeInfo(i); }, graph.outputs);
  }

  Ort::MemoryInfo memory_info_;
  Ort::RunOptions run_options_;
  std::map<std::string, Ort::Session> sessions_;
};

}  // namespace

std::unique_ptr<Backend> OnnxRuntimeBackend(const Artifacts& artifacts, const std::string& device) {
  try {
    return std::make_unique<OnnxRuntime>(artifacts, device);
  } catch (const Ort::Exception& error) {
    Fail(RAR_ERROR_BACKEND, std::string("ONNX Runtime cannot run on ") + device + ": " + error.what());
  }
}

}  // namespace rar::detail
