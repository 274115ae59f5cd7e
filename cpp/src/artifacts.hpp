// An artifact folder as the C++ runtime sees it: manifest.json (schema 5, docs/CONTRACT.md) read with
// nlohmann::json as data (graph I/O, scales, condition width: never re-derived), its contract sections checked
// against their SHA-256, and its files checked (size and fingerprint) before a graph is opened. Two families: RAR (condition, decode_step, vq_decoder) and VAR
// (var_step, var_decoder; manifest `family` "var").
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace rar::detail {

enum class DType { kFloat32, kFloat16, kInt64, kUint8 };
size_t ItemSize(DType dtype);
DType ParseDType(const std::string& name);
std::string DTypeName(DType dtype);

using Dim = std::variant<int64_t, std::string>;  // a size, or a symbolic dim: batch, rows, positions, side, tokens
using Dims = std::map<std::string, int64_t>;

struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<Dim> shape;
  std::vector<int64_t> Resolve(const Dims& dims) const;
  bool operator==(const TensorSpec& other) const;
};

struct GraphInfo {
  std::string file;
  std::vector<TensorSpec> inputs, outputs;
};

struct ModelConfig {
  int64_t hidden_size, depth, num_heads, mlp_size, image_seq_len, codebook_size, num_classes;
  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t cache_len() const { return image_seq_len + 1; }
  int64_t null_class() const { return num_classes; }
};

// VAR's generator (manifest `model` of family var): K scales of side pn_k, L = sum pn_k^2 tokens.
struct VarConfig {
  int64_t depth, embed_dim, num_heads, mlp_size, codebook_size, vae_channels, num_classes;
  std::vector<int64_t> patch_nums;
  int64_t head_dim() const { return embed_dim / num_heads; }
  int64_t num_scales() const { return static_cast<int64_t>(patch_nums.size()); }
  int64_t seq_len() const;
  int64_t null_class() const { return num_classes; }
};

// One VAR scale's constants (manifest `scales`, read as data: the contract hash keeps them honest):
// sequence positions [begin, end) = side^2 tokens, the Phi convolution's index, the resize matrices down
// [side, P] and up [P, side] (row-major float32).
struct VarScale {
  int64_t side, begin, end, phi_index;
  std::vector<float> down, up;
  int64_t guidance_numerator = 0, guidance_denominator = 1;  // guidance t = cfg * numerator / denominator
};

struct EngineInfo {
  std::string file, flavour, version;
  std::vector<std::string> compute_capabilities;
};

struct SamplingDefaults {
  double guidance_scale, guidance_pow, temperature;  // guidance_pow: RAR's (0 for VAR)
  int64_t top_k = 0;                                 // VAR's (0 for RAR: off)
  double top_p = 0;
};

class Artifacts {
 public:
  // Reads and validates `directory`/manifest.json and checks every graph file; throws Failure.
  static Artifacts Load(const std::filesystem::path& directory);

  std::filesystem::path directory;
  std::string family = "rar";  // "rar" or "var"
  ModelConfig model{};         // RAR's (zeros for VAR)
  VarConfig var{};             // VAR's (zeros for RAR)
  std::vector<VarScale> scales;  // VAR's, one per scale in order
  int64_t seq_len = 0, codebook_size = 0, num_classes = 0;  // both families: tokens per image (N or L), V
  DType float_dtype = DType::kFloat32;  // the graphs' float dtype (the KV cache's)
  int64_t max_batch = 0;
  int64_t image_side = 0, image_channels = 0;  // of the decoder graph's images_uint8 output
  int64_t condition_width = 0;                  // RAR's: floats of one condition row (manifest `condition`)
  SamplingDefaults defaults{};
  std::map<std::string, GraphInfo> graphs;   // condition, decode_step, vq_decoder (decode_block); or var_step, var_decoder
  std::map<std::string, EngineInfo> engines;  // empty without engines

  bool is_var() const { return family == "var"; }
  std::string step_graph() const { return is_var() ? "var_step" : "decode_step"; }  // the graph run per step
  bool has_decode_block() const { return graphs.count("decode_block") != 0; }  // rar-export --parallel-decoding
  std::filesystem::path GraphPath(const std::string& graph) const { return directory / graphs.at(graph).file; }
  // Size and fingerprint of a listed file against the manifest (docs/CONTRACT.md); throws Failure.
  std::filesystem::path CheckFile(const std::string& relative) const;

 private:
  std::map<std::string, std::pair<uint64_t, std::string>> files_;  // relative path -> size, fingerprint
};

std::string Fingerprint(const std::filesystem::path& file);  // docs/CONTRACT.md

}  // namespace rar::detail
