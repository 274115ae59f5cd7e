#include "artifacts.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "error.hpp"

namespace rar::detail {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int kSchemaVersion = 4;
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

// The recorded I/O of every graph of the family must be the one the contract gives for the model.
void ReadGraphs(const json& manifest, const std::map<std::string, GraphInfo>& expected, const fs::path& path,
                std::map<std::string, GraphInfo>& graphs) {
  for (const auto& [name, wanted] : expected) {
    const json& node = manifest.at("graphs").at(name);
    GraphInfo graph{node.at("file").get<std::string>(), {}, {}};
    for (const auto& spec : node.at("inputs")) graph.inputs.push_back(ParseSpec(spec));
    for (const auto& spec : node.at("outputs")) graph.outputs.push_back(ParseSpec(spec));
    if (graph.inputs != wanted.inputs || graph.outputs != wanted.outputs) {
      Invalid(path, "graph " + name + "'s inputs or outputs are not the ones its model gives");
    }
    graphs[name] = graph;
  }
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
  int64_t grid = 0;
  while ((grid + 1) * (grid + 1) <= m.image_seq_len) ++grid;
  if (grid * grid != m.image_seq_len) Invalid(path, "image_seq_len is not a square token grid");
  const json& tokenizer = manifest.at("tokenizer");
  if (tokenizer.at("codebook_size").get<int64_t>() != m.codebook_size) {
    Invalid(path, "the tokenizer's codebook does not match the generator's vocabulary: it mixes two models");
  }
  artifacts.image_side = grid << (tokenizer.at("channel_mult").size() - 1);
  artifacts.image_channels = tokenizer.at("num_channels").get<int64_t>();
  artifacts.seq_len = m.image_seq_len, artifacts.codebook_size = m.codebook_size;
  artifacts.num_classes = m.num_classes;
  const json& defaults = manifest.at("sampling").at("defaults");
  artifacts.defaults = {defaults.at("guidance_scale").get<double>(), defaults.at("guidance_pow").get<double>(),
                        defaults.at("temperature").get<double>()};
  ReadGraphs(manifest, ContractGraphs(m, artifacts.image_side, artifacts.image_channels, artifacts.float_dtype), path,
             artifacts.graphs);
  CheckCache(manifest.at("kv_cache"), {m.depth, "rows", m.num_heads, m.cache_len(), m.head_dim()},
             artifacts.float_dtype, path);
  if (manifest.at("condition").at("width").get<int64_t>() != m.condition_width()) {
    Invalid(path, "its condition width is not the one its model gives");
  }
}

// VAR's per-scale constants as rar_deploy/contract/graphs.py derives them (docs/CONTRACT.md "VAR"): float64 with
// the same operations in the same order, rounded to float32 (the build turns off fused multiply-add: a fused
// product would round once where Python rounds twice).

// The Phi convolution of scale k of K: the one whose tick is nearest k / (K - 1); the ticks are numpy's
// linspace(margin, 1 - margin, n) (i * step + margin, the last exactly 1 - margin), the first nearest wins.
int64_t PhiIndex(int64_t k, int64_t num_scales, int64_t num_phi) {
  const double n = static_cast<double>(num_phi), margin = num_phi == 4 ? 1.0 / 3 / n : 1.0 / 2 / n;
  const double step = num_phi > 1 ? ((1 - margin) - margin) / (n - 1) : 0;
  const double where = static_cast<double>(k) / static_cast<double>(num_scales - 1);
  int64_t nearest = 0;
  double best = 0;
  for (int64_t i = 0; i < num_phi; ++i) {
    const double tick = i == num_phi - 1 && i > 0 ? 1 - margin : static_cast<double>(i) * step + margin;
    const double distance = std::fabs(tick - where);
    if (i == 0 || distance < best) nearest = i, best = distance;
  }
  return nearest;
}

// [size_out, size_in] row-major: area interpolation (adaptive average pooling) along one axis.
std::vector<float> AreaMatrix(int64_t size_in, int64_t size_out) {
  std::vector<float> matrix(static_cast<size_t>(size_out * size_in), 0.0f);
  for (int64_t i = 0; i < size_out; ++i) {
    const int64_t start = i * size_in / size_out, end = ((i + 1) * size_in + size_out - 1) / size_out;
    for (int64_t j = start; j < end; ++j) {
      matrix[static_cast<size_t>(i * size_in + j)] = static_cast<float>(1 / static_cast<double>(end - start));
    }
  }
  return matrix;
}

// [size_out, size_in] row-major: bicubic interpolation along one axis (align_corners false, a = -0.75, border
// taps clamped: a clamped tap's weight adds to the border's, in tap order); the identity for equal sizes.
std::vector<float> BicubicMatrix(int64_t size_in, int64_t size_out) {
  const double a = -0.75;
  auto near = [a](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };       // |x| <= 1
  auto far = [a](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };  // 1 < |x| < 2
  std::vector<float> matrix(static_cast<size_t>(size_out * size_in), 0.0f);
  std::vector<double> row(static_cast<size_t>(size_in));
  for (int64_t i = 0; i < size_out; ++i) {
    std::fill(row.begin(), row.end(), 0.0);
    if (size_in == size_out) {
      row[static_cast<size_t>(i)] = 1;
    } else {
      const double source = static_cast<double>(size_in) / static_cast<double>(size_out) *
                            (static_cast<double>(i) + 0.5) - 0.5;
      const double first = std::floor(source), t = source - first;
      const double weights[4] = {far(t + 1), near(t), near(1 - t), far(2 - t)};
      for (int64_t tap = 0; tap < 4; ++tap) {
        const int64_t column = std::min(std::max(static_cast<int64_t>(first) - 1 + tap, int64_t{0}), size_in - 1);
        row[static_cast<size_t>(column)] += weights[tap];
      }
    }
    for (int64_t j = 0; j < size_in; ++j) {
      matrix[static_cast<size_t>(i * size_in + j)] = static_cast<float>(row[static_cast<size_t>(j)]);
    }
  }
  return matrix;
}

// A manifest matrix against the float32 one its model gives, compared as Python compares them: each JSON
// number (a double) equal to the float32 value (a number that merely rounds to it is another matrix). The
// shape first, so that a damaged manifest never sizes a computation. The values if they match, else none.
std::vector<float> MatchMatrix(const json& node, int64_t rows, int64_t columns,
                               const std::function<std::vector<float>()>& compute) {
  if (!node.is_array() || static_cast<int64_t>(node.size()) != rows) return {};
  for (const json& row : node) {
    if (!row.is_array() || static_cast<int64_t>(row.size()) != columns) return {};
  }
  std::vector<float> wanted = compute();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; ++c) {
      const json& value = node[static_cast<size_t>(r)][static_cast<size_t>(c)];
      if (!value.is_number() || value.get<double>() != wanted[static_cast<size_t>(r * columns + c)]) return {};
    }
  }
  return wanted;
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
  artifacts.image_side = size << (tokenizer.at("channel_mult").size() - 1);
  artifacts.image_channels = 3;
  artifacts.seq_len = m.seq_len(), artifacts.codebook_size = m.codebook_size, artifacts.num_classes = m.num_classes;
  const json& defaults = manifest.at("sampling").at("defaults");
  artifacts.defaults = {defaults.at("guidance_scale").get<double>(), 0.0, defaults.at("temperature").get<double>(),
                        defaults.at("top_k").get<int64_t>(), defaults.at("top_p").get<double>()};
  ReadGraphs(manifest, VarContractGraphs(m, artifacts.image_side, artifacts.float_dtype), path, artifacts.graphs);
  CheckCache(manifest.at("kv_cache"), {m.depth, "rows", m.num_heads, m.seq_len(), m.head_dim()}, artifacts.float_dtype,
             path);
  // scales: every value the one its model and num_phi give (Python's manifest._check_scales, same messages)
  const json& scales = manifest.at("scales");
  if (!scales.is_array() || static_cast<int64_t>(scales.size()) != m.num_scales()) {
    Invalid(path, "it lists " + std::to_string(scales.is_array() ? scales.size() : 0) + " scales, its model has " +
                      std::to_string(m.num_scales()));
  }
  int64_t begin = 0;
  for (int64_t k = 0; k < m.num_scales(); ++k) {
    const json& node = scales[static_cast<size_t>(k)];
    const int64_t side = m.patch_nums[static_cast<size_t>(k)];
    VarScale scale{side, begin, begin + side * side, PhiIndex(k, m.num_scales(), num_phi), {}, {}};
    const std::string which = "scale " + std::to_string(k) + "'s ";
    for (const auto& [key, value] : {std::pair<const char*, int64_t>{"side", scale.side}, {"begin", scale.begin},
                                     {"end", scale.end}, {"phi_index", scale.phi_index}}) {
      const json& recorded = node.at(key);
      if (recorded != value) {  // a JSON comparison, as Python's: 3.0 is 3, 3.5 is not
        Invalid(path, which + key + " is " + recorded.dump() + ", its model gives " + std::to_string(value));
      }
    }
    scale.down = MatchMatrix(node.at("down"), side, size, [&] { return AreaMatrix(size, side); });
    if (scale.down.empty()) Invalid(path, which + "down is its matrix, its model gives another");
    scale.up = MatchMatrix(node.at("up"), size, side, [&] { return BicubicMatrix(side, size); });
    if (scale.up.empty()) Invalid(path, which + "up is its matrix, its model gives another");
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

int64_t VarConfig::seq_len() const {
  int64_t tokens = 0;
  for (int64_t side : patch_nums) tokens += side * side;
  return tokens;
}

std::map<std::string, GraphInfo> VarContractGraphs(const VarConfig& m, int64_t image, DType dtype) {
  const int64_t vocab = m.codebook_size, size = m.patch_nums.back();
  const DType i64 = DType::kInt64, f32 = DType::kFloat32;
  const std::vector<Dim> f_hat{"batch", m.vae_channels, size, size};
  const std::vector<Dim> cache_view{"rows", m.num_heads, m.seq_len(), m.head_dim()};
  const std::vector<Dim> scale_kv{m.depth, "rows", m.num_heads, "tokens", m.head_dim()};
  std::map<std::string, GraphInfo> graphs;
  GraphInfo& step = graphs["var_step"];
  step.file = "var_step.onnx";
  step.inputs = {Spec("class_labels", i64, {"batch"}), Spec("f_hat", f32, f_hat),
                 Spec("positions", i64, {"side", "side"}), Spec("phi_index", i64, {int64_t{1}}),
                 Spec("down", f32, {"side", size}), Spec("up", f32, {size, "side"}), Spec("guidance", f32, {"batch"}),
                 Spec("top_k", i64, {int64_t{1}}), Spec("top_p", f32, {int64_t{1}}),
                 Spec("temperature", f32, {"batch"}), Spec("noise", f32, {"batch", "side", "side", vocab})};
  for (const char* kv : {"k", "v"}) {
    for (int64_t i = 0; i < m.depth; ++i) {
      step.inputs.push_back(Spec(std::string(kv) + "_cache." + std::to_string(i), dtype, cache_view));
    }
  }
  step.outputs = {Spec("tokens", i64, {"batch", "tokens"}), Spec("f_hat_out", f32, f_hat),
                  Spec("logits", f32, {"batch", "tokens", vocab}), Spec("keys", dtype, scale_kv),
                  Spec("values", dtype, scale_kv)};
  graphs["var_decoder"] = {"var_decoder.onnx",
                           {Spec("f_hat", f32, f_hat)},
                           {Spec("images", f32, {"batch", int64_t{3}, image, image}),
                            Spec("images_uint8", DType::kUint8, {"batch", image, image, int64_t{3}})}};
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
