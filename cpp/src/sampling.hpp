// What the runtime owns in sampling, as docs/CONTRACT.md specifies it (rar_deploy/contract/sampling.py in Python):
// the guidance rows, RAR's guidance schedule and the SplitMix64 noise. Same inputs, same bits, both languages.
#pragma once

#include <cstdint>
#include <vector>

namespace rar::detail {

// labels, then as many null-class rows (guided), or the labels alone
std::vector<int64_t> GuidanceRows(const std::vector<int64_t>& labels, bool guided, int64_t null_class);

// s_t = (g - 1) * ((1 - cos(pi * (t / N) ** pow)) * 0.5) + 1 in double with the C library, rounded to float
std::vector<float> GuidanceSchedule(int64_t num_steps, double scale, double pow);

// uniform noise [num_images, num_steps, vocab] of images first_image, first_image + 1, ..., steps first_step ..
// first_step + num_steps - 1 of their streams
std::vector<float> SamplingNoise(uint64_t seed, int64_t num_images, int64_t num_steps, int64_t vocab,
                                 int64_t first_image, int64_t first_step = 0);

}  // namespace rar::detail
