#include "sampling.hpp"

#include <cmath>

namespace rar::detail {
namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

uint64_t SplitMix64(uint64_t state) {
  uint64_t z = state + kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<int64_t> GuidanceRows(const std::vector<int64_t>& labels, bool guided, int64_t null_class) {
  std::vector<int64_t> rows(labels);
  if (guided) rows.insert(rows.end(), labels.size(), null_class);
  return rows;
}

std::vector<float> GuidanceSchedule(int64_t num_steps, double scale, double pow) {
  std::vector<float> schedule(static_cast<size_t>(num_steps));
  const double pi = std::acos(-1.0);
  for (int64_t t = 0; t < num_steps; ++t) {
    const double ramp = std::pow(static_cast<double>(t) / static_cast<double>(num_steps), pow);
    schedule[static_cast<size_t>(t)] = static_cast<float>((scale - 1) * ((1 - std::cos(pi * ramp)) * 0.5) + 1);
  }
  return schedule;
}

std::vector<float> SamplingNoise(uint64_t seed, int64_t num_images, int64_t num_steps, int64_t vocab,
                                 int64_t first_image, int64_t first_step) {
  const size_t per_image = static_cast<size_t>(num_steps * vocab);
  std::vector<float> noise(static_cast<size_t>(num_images) * per_image);
  for (int64_t image = 0; image < num_images; ++image) {
    const uint64_t key = SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(first_image + image));
    float* row = noise.data() + static_cast<size_t>(image) * per_image;
    const uint64_t offset = static_cast<uint64_t>(first_step * vocab);
    for (size_t c = 0; c < per_image; ++c) {
      const uint64_t bits = SplitMix64(key + (offset + static_cast<uint64_t>(c)) * kGamma) >> 41;
      row[c] = static_cast<float>(bits) * 0x1p-23f + 0x1p-24f;  // ((bits + 0.5) / 2^23), exact in float
    }
  }
  return noise;
}

}  // namespace rar::detail
