#include "artifacts.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "error.hpp"

namespace rar::detail {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kSchemaVersion = 5;
constexpr uint64_t kChunk = 1 << 16;
constexpr uint64_t kChunks = 16;

[[noreturn]] void Invalid(const fs::path& manifest, const std::string& what) {
  Fail(RAR_ERROR_ARTIFACTS, manifest.string() + ": " + what + "; the manifest was edited or is damaged: " +
                                "export the artifacts again");
}

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

// The text contract_sha256 hashes (docs/CONTRACT.md; Python's manifest.canonical): JSON with sorted keys and no
// spaces, a float written as `f` and the 16 hex digits of its IEEE-754 bits.
std::string Canonical(const json& value) {
  switch (value.type()) {
    case json::value_t::object: {
      std::string text = "{";
      for (auto item = value.begin(); item != value.end(); ++item) {  // std::map: keys in byte order
        text += (item == value.begin() ? "" : ",") + json(item.key()).dump(-1, ' ', true) + ":" +
                Canonical(item.value());
      }
      return text + "}";
    }
    case json::value_t::array: {
      std::string text = "[";
      for (size_t i = 0; i < value.size(); ++i) text += (i ? "," : "") + Canonical(value[i]);
      return text + "]";
    }
    case json::value_t::number_float: {
      const double number = value.get<double>();
      uint64_t bits = 0;
      std::memcpy(&bits, &number, sizeof bits);
      char hex[20];
      std::snprintf(hex, sizeof hex, "f%016llx", static_cast<unsigned long long>(bits));
      return hex;
    }
    default:
      return value.dump(-1, ' ', true);  // strings (ASCII-escaped), integers, booleans, null
  }
}

// SHA-256 of every section a runtime builds its computation from: all but those rar-build rewrites, the
// checkpoints' places and the editable sampling defaults (Python's manifest.contract_sha256).
std::string ContractSha256(const json& manifest) {
  json sections = manifest;
  for (const char* key : {"contract_sha256", "rar_deploy_version", "checkpoints", "files", "engines", "batch_profile",
                          "tools"}) {
    sections.erase(key);
  }
  if (sections.contains("sampling") && sections["sampling"].is_object()) {
    sections["sampling"].erase("defaults");
    sections["sampling"].erase("demo_guidance_scale");
  }
  const std::string text = Canonical(sections);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(text.data(), text.size(), digest, &length, EVP_sha256(), nullptr);
  return Hex(digest, length);
}

// sampling.defaults, the editable part of a manifest, must hold values a caller could pass (Python's
// manifest._check_defaults).
void CheckDefaults(const SamplingDefaults& d, bool var, const fs::path& path) {
  std::string wrong;
  const double limit = std::numeric_limits<float>::max();
  for (const auto& [name, value] : {std::pair<const char*, double>{"guidance_scale", d.guidance_scale},
                                    {"guidance_pow", d.guidance_pow}, {"temperature", d.temperature},
                                    {"top_p", d.top_p}}) {
    if (!std::isfinite(value) || std::fabs(value) > limit) wrong = name;
  }
  if (wrong.empty() && (std::fabs(d.guidance_scale) > 1e4 || d.temperature < 0 || d.guidance_pow < 0)) {
    wrong = std::fabs(d.guidance_scale) > 1e4 ? "guidance_scale" : d.temperature < 0 ? "temperature" : "guidance_pow";
  }
  if (wrong.empty() && var && (d.guidance_scale < 0 || d.top_k < 0 || !(d.top_p >= 0 && d.top_p < 1))) {
    wrong = d.guidance_scale < 0 ? "guidance_scale" : d.top_k < 0 ? "top_k" : "top_p";
  }
  if (!wrong.empty()) {
    Fail(RAR_ERROR_ARTIFACTS, path.string() + ": sampling.defaults." + wrong + " holds a value the runtime refuses; "
                              "fix it there or export the artifacts again");
  }
}

// The family's graphs as the manifest declares them (file, inputs, outputs): data, kept honest by the contract
// hash; each session's declared I/O is compared with them when a backend opens the graph.
void ReadGraphs(const json& manifest, std::initializer_list<const char*> names, const fs::path& path,
                std::map<std::string, GraphInfo>& graphs) {
  const json& listed = manifest.at("graphs");
  for (const char* name : names) {
    if (!listed.contains(name)) Invalid(path, std::string("it lists no graph ") + name);
    const json& node = listed.at(name);
    GraphInfo graph{node.at("file").get<std::string>(), {}, {}};
    for (const auto& spec : node.at("inputs")) graph.inputs.push_back(ParseSpec(spec));
    for (const auto& spec : node.at("outputs")) graph.outputs.push_back(ParseSpec(spec));
    graphs[name] = graph;
  }
}

// (height = width, channels) of the images a decoder graph draws: its images_uint8 output [batch, H, W, C].
std::pair<int64_t, int64_t> ImageShape(const GraphInfo& decoder, const fs::path& path) {
  for (const TensorSpec& spec : decoder.outputs) {
    if (spec.name == "images_uint8" && spec.shape.size() == 4 && std::holds_alternative<int64_t>(spec.shape[1]) &&
        std::holds_alternative<int64_t>(spec.shape[3])) {
      return {std::get<int64_t>(spec.shape[1]), std::get<int64_t>(spec.shape[3])};
    }
  }
  Invalid(path, "its decoder graph declares no images_uint8 output [batch, H, W, C]");
}

// kv_cache: the layout the loop allocates (shape, the graphs' float dtype) and writes (at offset 0).
void CheckCache(const json& cache, const std::vector<Dim>& shape, DType dtype, const fs::path& path) {
  const TensorSpec recorded =
      ParseSpec({{"name", "cache"}, {"dtype", cache.at("dtype")}, {"shape", cache.at("shape")}});
  if (recorded.shape != shape || recorded.dtype != dtype || cache.at("write_offset").get<int64_t>() != 0) {
    Invalid(path, "its kv_cache layout is not the one its model gives");
  }
}

void LoadRar(const json& manifest, const fs::path& path, Artifacts& artifacts) {
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
  const json& tokenizer = manifest.at("tokenizer");
  if (tokenizer.at("codebook_size").get<int64_t>() != m.codebook_size) {
    Invalid(path, "the tokenizer's codebook does not match the generator's vocabulary: it mixes two models");
  }
  artifacts.condition_width = manifest.at("condition").at("width").get<int64_t>();
  if (artifacts.condition_width < 1) Invalid(path, "its condition width is not positive");
  artifacts.seq_len = m.image_seq_len, artifacts.codebook_size = m.codebook_size;
  artifacts.num_classes = m.num_classes;
  const json& defaults = manifest.at("sampling").at("defaults");
  artifacts.defaults = {defaults.at("guidance_scale").get<double>(), defaults.at("guidance_pow").get<double>(),
                        defaults.at("temperature").get<double>()};
  ReadGraphs(manifest, {"condition", "decode_step", "vq_decoder"}, path, artifacts.graphs);
  if (manifest.at("graphs").contains("decode_block")) ReadGraphs(manifest, {"decode_block"}, path, artifacts.graphs);
  std::tie(artifacts.image_side, artifacts.image_channels) = ImageShape(artifacts.graphs.at("vq_decoder"), path);
  CheckCache(manifest.at("kv_cache"), {m.depth, "rows", m.num_heads, m.cache_len(), m.head_dim()},
             artifacts.float_dtype, path);
}

// A manifest matrix [rows, columns] of finite numbers, as float32 row-major; none if it has another shape.
std::vector<float> ReadMatrix(const json& node, int64_t rows, int64_t columns) {
  if (!node.is_array() || static_cast<int64_t>(node.size()) != rows) return {};
  std::vector<float> values;
  values.reserve(static_cast<size_t>(rows * columns));
  for (const json& row : node) {
    if (!row.is_array() || static_cast<int64_t>(row.size()) != columns) return {};
    for (const json& value : row) {
      if (!value.is_number() || !std::isfinite(value.get<double>())) return {};
      values.push_back(value.get<float>());
    }
  }
  return values;
}

void LoadVar(const json& manifest, const fs::path& path, Artifacts& artifacts) {
  const json& model = manifest.at("model");
  VarConfig& m = artifacts.var;
  m = {model.at("depth").get<int64_t>(), model.at("embed_dim").get<int64_t>(), model.at("num_heads").get<int64_t>(),
       model.at("mlp_size").get<int64_t>(), model.at("codebook_size").get<int64_t>(),
       model.at("vae_channels").get<int64_t>(), model.at("num_classes").get<int64_t>(),
       model.at("patch_nums").get<std::vector<int64_t>>()};
  for (int64_t value : {m.depth, m.embed_dim, m.num_heads, m.mlp_size, m.codebook_size, m.vae_channels,
                        m.num_classes}) {
    if (value < 1) Invalid(path, "a model dimension is not positive");
  }
  // two scales at least: the guidance schedule t = cfg * k / (K - 1) divides by K - 1
  if (m.patch_nums.size() < 2 || *std::min_element(m.patch_nums.begin(), m.patch_nums.end()) < 1) {
    Invalid(path, "patch_nums must list two or more positive scale sides");
  }
  if (m.embed_dim % m.num_heads != 0) Invalid(path, "embed_dim is not a multiple of num_heads");
  const json& tokenizer = manifest.at("tokenizer");
  if (tokenizer.at("codebook_size").get<int64_t>() != m.codebook_size ||
      tokenizer.at("vae_channels").get<int64_t>() != m.vae_channels) {
    Invalid(path, "the tokenizer's codebook or channels do not match the generator's: it mixes two models");
  }
  const int64_t num_phi = tokenizer.at("num_phi").get<int64_t>(), size = m.patch_nums.back();
  if (num_phi < 1) Invalid(path, "the tokenizer's num_phi is not positive");
  artifacts.seq_len = m.seq_len(), artifacts.codebook_size = m.codebook_size, artifacts.num_classes = m.num_classes;
  const json& defaults = manifest.at("sampling").at("defaults");
  artifacts.defaults = {defaults.at("guidance_scale").get<double>(), 0.0, defaults.at("temperature").get<double>(),
                        defaults.at("top_k").get<int64_t>(), defaults.at("top_p").get<double>()};
  ReadGraphs(manifest, {"var_step", "var_decoder"}, path, artifacts.graphs);
  std::tie(artifacts.image_side, artifacts.image_channels) = ImageShape(artifacts.graphs.at("var_decoder"), path);
  CheckCache(manifest.at("kv_cache"), {m.depth, "rows", m.num_heads, m.seq_len(), m.head_dim()}, artifacts.float_dtype,
             path);
  // scales: data (kept honest by the contract hash), read with the structure the loop relies on: scale k has
  // the side patch_nums[k], the next side^2 positions, a Phi index among num_phi, down [side, P] and up [P, side]
  const json& scales = manifest.at("scales");
  if (!scales.is_array() || static_cast<int64_t>(scales.size()) != m.num_scales()) {
    Invalid(path, "it lists " + std::to_string(scales.is_array() ? scales.size() : 0) + " scales, its model has " +
                      std::to_string(m.num_scales()));
  }
  int64_t begin = 0;
  for (int64_t k = 0; k < m.num_scales(); ++k) {
    const json& node = scales[static_cast<size_t>(k)];
    const int64_t side = m.patch_nums[static_cast<size_t>(k)];
    const std::string which = "scale " + std::to_string(k) + "'s ";
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"side", side}, {"begin", begin},
                                     {"end", begin + side * side}}) {
      if (node.at(key) != value) {  // a JSON comparison, as Python's: 3.0 is 3, 3.5 is not
        Invalid(path, which + key + " is " + node.at(key).dump() + ", its model gives " + std::to_string(value));
      }
    }
    const json& phi = node.at("phi_index");
    if (!phi.is_number() || phi.get<double>() != std::floor(phi.get<double>()) || phi.get<double>() < 0 ||
        phi.get<double>() >= static_cast<double>(num_phi)) {
      Invalid(path, which + "phi_index is " + phi.dump() + ", not one of the tokenizer's " +
                        std::to_string(num_phi) + " Phi convolutions");
    }
    VarScale scale{side, begin, begin + side * side, static_cast<int64_t>(phi.get<double>()),
                   ReadMatrix(node.at("down"), side, size), ReadMatrix(node.at("up"), size, side)};
    if (scale.down.empty()) Invalid(path, which + "down is not a [" + std::to_string(side) + ", " +
                                              std::to_string(size) + "] matrix of finite numbers");
    if (scale.up.empty()) Invalid(path, which + "up is not a [" + std::to_string(size) + ", " +
                                            std::to_string(side) + "] matrix of finite numbers");
    const json& fraction = node.at("guidance_fraction");
    if (!fraction.is_array() || fraction.size() != 2 || !fraction[0].is_number_unsigned() ||
        !fraction[1].is_number_unsigned() || fraction[1].get<int64_t>() == 0) {
      Invalid(path, which + "guidance_fraction is " + fraction.dump() + ", not [n, d] with whole n >= 0 and d >= 1");
    }
    scale.guidance_numerator = fraction[0].get<int64_t>(), scale.guidance_denominator = fraction[1].get<int64_t>();
    artifacts.scales.push_back(std::move(scale));
    begin += side * side;
  }
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

int64_t VarConfig::seq_len() const {
  int64_t tokens = 0;
  for (int64_t side : patch_nums) tokens += side * side;
  return tokens;
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
    artifacts.family = manifest.value("family", "rar");  // manifests written before VAR have none: RAR's
    if (artifacts.family != "rar" && artifacts.family != "var") {
      Fail(RAR_ERROR_ARTIFACTS, path.string() + " holds a model of family '" + artifacts.family + "', which this "
                                "runtime does not know (it runs rar and var): use a rar-deploy runtime as new as "
                                "the export");
    }
    if (!manifest.contains("contract_sha256") || manifest.at("contract_sha256") != ContractSha256(manifest)) {
      Fail(RAR_ERROR_ARTIFACTS, path.string() + " was edited: its contract sections (model, graphs, layouts, scales; "
                                "everything but sampling.defaults) no longer match their contract_sha256; export the "
                                "artifacts again (only sampling.defaults may be edited)");
    }
    const std::string precision = manifest.at("precision").get<std::string>();
    if (precision != "fp16" && precision != "fp32") Invalid(path, "precision must be fp16 or fp32");
    artifacts.float_dtype = precision == "fp16" ? DType::kFloat16 : DType::kFloat32;
    const json& profile = manifest.at("batch_profile");
    const int64_t low = profile.at("min").get<int64_t>(), opt = profile.at("opt").get<int64_t>();
    artifacts.max_batch = profile.at("max").get<int64_t>();
    if (!(1 <= low && low <= opt && opt <= artifacts.max_batch)) {
      Invalid(path, "its batch profile does not satisfy 1 <= min <= opt <= max");
    }
    for (const auto& [name, record] : manifest.at("files").items()) {
      artifacts.files_[name] = {record.at("size").get<uint64_t>(), record.at("fingerprint").get<std::string>()};
    }
    if (artifacts.is_var()) {
      LoadVar(manifest, path, artifacts);
    } else {
      LoadRar(manifest, path, artifacts);
    }
    CheckDefaults(artifacts.defaults, artifacts.is_var(), path);
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
