#include "artifacts.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "error.hpp"

namespace rar::detail {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kSchemaVersion = 3;
constexpr uint64_t kChunk = 1 << 16;
constexpr uint64_t kChunks = 16;

[[noreturn]] void Invalid(const fs::path& manifest, const std::string& what) {
  Fail(RAR_ERROR_ARTIFACTS, manifest.string() + ": " + what + "; the manifest was edited or is damaged: " +
                                "export the artifacts again");
}

TensorSpec Spec(const std::string& name, DType dtype, std::vector<Dim> shape) { return {name, dtype, std::move(shape)}; }

TensorSpec ParseSpec(const json& node) {
  TensorSpec spec{node.at("name").get<std::string>(), ParseDType(node.at("dtype").get<std::string>()), {}};
  for (const auto& dim : node.at("shape")) {
    if (dim.is_string()) {
      spec.shape.emplace_back(dim.get<std::string>());
    } else {
      spec.shape.emplace_back(dim.get<int64_t>());
    }
  }
  return spec;
}

std::string Hex(const unsigned char* digest, unsigned int length) {
  static const char* digits = "0123456789abcdef";
  std::string text;
  for (unsigned int i = 0; i < length; ++i) {
    text += digits[digest[i] >> 4];
    text += digits[digest[i] & 15];
  }
  return text;
}

}  // namespace

size_t ItemSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat16: return 2;
    case DType::kInt64: return 8;
    case DType::kUint8: return 1;
  }
  return 0;
}

DType ParseDType(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "int64") return DType::kInt64;
  if (name == "uint8") return DType::kUint8;
  Fail(RAR_ERROR_ARTIFACTS, "unknown dtype " + name + " in the manifest");
}

std::string DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kInt64: return "int64";
    case DType::kUint8: return "uint8";
  }
  return "?";
}

std::vector<int64_t> TensorSpec::Resolve(const Dims& dims) const {
  std::vector<int64_t> sizes;
  for (const auto& dim : shape) {
    sizes.push_back(std::holds_alternative<int64_t>(dim) ? std::get<int64_t>(dim) : dims.at(std::get<std::string>(dim)));
  }
  return sizes;
}

bool TensorSpec::operator==(const TensorSpec& other) const {
  return name == other.name && dtype == other.dtype && shape == other.shape;
}

std::map<std::string, GraphInfo> ContractGraphs(const ModelConfig& m, int64_t side, int64_t channels, DType dtype) {
  const int64_t vocab = m.codebook_size, width = m.condition_width();
  const std::vector<Dim> step_kv{m.depth, "rows", m.num_heads, int64_t{1}, m.head_dim()};
  const std::vector<Dim> cache_view{"rows", m.num_heads, m.cache_len(), m.head_dim()};
  std::map<std::string, GraphInfo> graphs;
  graphs["condition"] = {"condition.onnx",
                         {Spec("class_labels", DType::kInt64, {"rows"}),
                          Spec("positions", DType::kInt64, {"positions", "rows"})},
                         {Spec("condition", dtype, {"positions", "rows", width})}};
  GraphInfo& step = graphs["decode_step"];
  step.file = "decode_step.onnx";
  step.inputs = {Spec("tokens", DType::kInt64, {"batch"}), Spec("position", DType::kInt64, {"batch"}),
                 Spec("condition", dtype, {"positions", "rows", width})};
  for (const char* kv : {"k", "v"}) {
    for (int64_t i = 0; i < m.depth; ++i) {
      step.inputs.push_back(Spec(std::string(kv) + "_cache." + std::to_string(i), dtype, cache_view));
    }
  }
  step.inputs.push_back(Spec("guidance_scale", DType::kFloat32, {"batch"}));
  step.inputs.push_back(Spec("temperature", DType::kFloat32, {"batch"}));
  step.inputs.push_back(Spec("noise", DType::kFloat32, {"batch", vocab}));
  step.outputs = {Spec("next_tokens", DType::kInt64, {"batch"}), Spec("logits", DType::kFloat32, {"batch", vocab}),
                  Spec("keys", dtype, step_kv), Spec("values", dtype, step_kv)};
  graphs["vq_decoder"] = {"vq_decoder.onnx",
                          {Spec("tokens", DType::kInt64, {"batch", m.image_seq_len})},
                          {Spec("images", DType::kFloat32, {"batch", channels, side, side}),
                           Spec("images_uint8", DType::kUint8, {"batch", side, side, channels})}};
  return graphs;
}

Artifacts Artifacts::Load(const fs::path& directory) {
  if (!fs::is_directory(directory)) Fail(RAR_ERROR_ARTIFACTS, "artifact directory not found: " + directory.string());
  const fs::path path = directory / "manifest.json";
  if (!fs::is_regular_file(path)) {
    Fail(RAR_ERROR_ARTIFACTS, directory.string() + " has no manifest.json: is it an artifact directory written by "
                                                   "rar-export?");
  }
  json manifest;
  try {
    std::ifstream stream(path);
    manifest = json::parse(stream);
  } catch (const json::exception& error) {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + " is corrupt (" + error.what() + "): export the artifacts again");
  }
  if (!manifest.is_object() || manifest.value("schema", "") != "rar-deploy/manifest") {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + " is not a rar-deploy manifest");
  }
  if (manifest.value("schema_version", 0) != kSchemaVersion) {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + " has schema version " + manifest["schema_version"].dump() +
                                  ", this runtime reads " + std::to_string(kSchemaVersion) +
                                  ": export the artifacts again with this version");
  }
  Artifacts artifacts;
  artifacts.directory = directory;
  try {
    const json& model = manifest.at("model");
    ModelConfig& m = artifacts.model;
    m = {model.at("hidden_size").get<int64_t>(), model.at("depth").get<int64_t>(), model.at("num_heads").get<int64_t>(),
         model.at("mlp_size").get<int64_t>(), model.at("image_seq_len").get<int64_t>(),
         model.at("codebook_size").get<int64_t>(), model.at("num_classes").get<int64_t>()};
    for (int64_t value : {m.hidden_size, m.depth, m.num_heads, m.mlp_size, m.image_seq_len, m.codebook_size,
                          m.num_classes}) {
      if (value < 1) Invalid(path, "a model dimension is not positive");
    }
    if (m.hidden_size % m.num_heads != 0) Invalid(path, "hidden_size is not a multiple of num_heads");
    int64_t grid = 0;
    while ((grid + 1) * (grid + 1) <= m.image_seq_len) ++grid;
    if (grid * grid != m.image_seq_len) Invalid(path, "image_seq_len is not a square token grid");
    const json& tokenizer = manifest.at("tokenizer");
    if (tokenizer.at("codebook_size").get<int64_t>() != m.codebook_size) {
      Invalid(path, "the tokenizer's codebook does not match the generator's vocabulary: it mixes two models");
    }
    artifacts.image_side = grid << (tokenizer.at("channel_mult").size() - 1);
    artifacts.image_channels = tokenizer.at("num_channels").get<int64_t>();
    const std::string precision = manifest.at("precision").get<std::string>();
    if (precision != "fp16" && precision != "fp32") Invalid(path, "precision must be fp16 or fp32");
    artifacts.float_dtype = precision == "fp16" ? DType::kFloat16 : DType::kFloat32;
    const json& profile = manifest.at("batch_profile");
    const int64_t low = profile.at("min").get<int64_t>(), opt = profile.at("opt").get<int64_t>();
    artifacts.max_batch = profile.at("max").get<int64_t>();
    if (!(1 <= low && low <= opt && opt <= artifacts.max_batch)) {
      Invalid(path, "its batch profile does not satisfy 1 <= min <= opt <= max");
    }
    const json& defaults = manifest.at("sampling").at("defaults");
    artifacts.defaults = {defaults.at("guidance_scale").get<double>(), defaults.at("guidance_pow").get<double>(),
                          defaults.at("temperature").get<double>()};
    for (const auto& [name, record] : manifest.at("files").items()) {
      artifacts.files_[name] = {record.at("size").get<uint64_t>(), record.at("fingerprint").get<std::string>()};
    }
    const auto expected = ContractGraphs(m, artifacts.image_side, artifacts.image_channels, artifacts.float_dtype);
    for (const auto& [name, wanted] : expected) {
      const json& node = manifest.at("graphs").at(name);
      GraphInfo graph{node.at("file").get<std::string>(), {}, {}};
      for (const auto& spec : node.at("inputs")) graph.inputs.push_back(ParseSpec(spec));
      for (const auto& spec : node.at("outputs")) graph.outputs.push_back(ParseSpec(spec));
      if (graph.inputs != wanted.inputs || graph.outputs != wanted.outputs) {
        Invalid(path, "graph " + name + "'s inputs or outputs are not the ones its model gives");
      }
      artifacts.graphs[name] = graph;
    }
    const json& cache = manifest.at("kv_cache");
    const std::vector<Dim> cache_shape{m.depth, "rows", m.num_heads, m.cache_len(), m.head_dim()};
    if (ParseSpec({{"name", "cache"}, {"dtype", cache.at("dtype")}, {"shape", cache.at("shape")}}).shape != cache_shape ||
        cache.at("write_offset").get<int64_t>() != 0) {
      Invalid(path, "its kv_cache layout is not the one its model gives");
    }
    if (manifest.at("condition").at("width").get<int64_t>() != m.condition_width()) {
      Invalid(path, "its condition width is not the one its model gives");
    }
    for (const auto& [name, node] : manifest.at("engines").items()) {
      EngineInfo engine{node.at("file").get<std::string>(), node.at("flavour").get<std::string>(),
                        node.at("tensorrt_version").get<std::string>(), {}};
      for (const auto& capability : node.at("compute_capabilities")) {
        engine.compute_capabilities.push_back(capability.get<std::string>());
      }
      artifacts.engines[name] = engine;
    }
  } catch (const json::exception& error) {
    Invalid(path, std::string("it is not a valid manifest (") + error.what() + ")");
  }
  for (const auto& [name, graph] : artifacts.graphs) artifacts.CheckFile(graph.file);
  return artifacts;
}

fs::path Artifacts::CheckFile(const std::string& relative) const {
  const fs::path path = directory / relative;
  const auto record = files_.find(relative);
  if (record == files_.end()) {
    Fail(RAR_ERROR_ARTIFACTS, relative + " has no size and hashes in " + (directory / "manifest.json").string() +
                                  ": the manifest was edited or is damaged; export the artifacts again");
  }
  const std::string fix = relative.rfind("engines/", 0) == 0 ? "rebuild the engines (rar-build)"
                                                              : "export the artifacts again";
  if (!fs::is_regular_file(path)) Fail(RAR_ERROR_ARTIFACTS, path.string() + " is missing: " + fix);
  const uint64_t size = fs::file_size(path);
  if (size != record->second.first) {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + " has " + std::to_string(size) + " bytes, the manifest says " +
                                  std::to_string(record->second.first) + ": it was truncated or replaced; " + fix);
  }
  if (Fingerprint(path) != record->second.second) {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + " is not the file this manifest lists (its fingerprint differs): it "
                                              "was replaced or modified, perhaps from another export; " + fix);
  }
  return path;
}

std::string Fingerprint(const fs::path& file) {
  std::ifstream stream(file, std::ios::binary);
  const uint64_t size = fs::file_size(file);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr);
  unsigned char little_endian[8];
  for (int i = 0; i < 8; ++i) little_endian[i] = static_cast<unsigned char>((size >> (8 * i)) & 0xff);
  EVP_DigestUpdate(context.get(), little_endian, 8);
  std::vector<char> chunk(kChunk);
  auto hash = [&](uint64_t offset, uint64_t length) {
    stream.seekg(static_cast<std::streamoff>(offset));
    chunk.resize(length);
    stream.read(chunk.data(), static_cast<std::streamsize>(length));
    EVP_DigestUpdate(context.get(), chunk.data(), static_cast<size_t>(stream.gcount()));
  };
  if (size <= kChunks * kChunk) {
    hash(0, size);
  } else {
    for (uint64_t i = 0; i < kChunks; ++i) hash(i * (size - kChunk) / (kChunks - 1), kChunk);
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_DigestFinal_ex(context.get(), digest, &length);
  return Hex(digest, length);
}

}  // namespace rar::detail
