// Speculative Jacobi decoding over RAR's decode_block graph (rar_deploy/runtime/jacobi.py in Python; docs/CONTRACT.md
// says the loop, the acceptance rule and the noise stream, so both languages draw the same tokens): each image keeps
// a window of draft tokens after its final ones, one decode_block call checks them all, and speculative sampling's
// rule keeps every token's distribution the model's own. Greedy (temperature 0) gives the sequential tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "artifacts.hpp"
#include "backend.hpp"
#include "rar_loop.hpp"

namespace rar::detail {

constexpr uint64_t kJacobiStream = 0x4A41434F4249ULL;  // "JACOBI": the seed of the speculative streams is seed ^ it
constexpr int64_t kMaxParallelWindow = 16;

struct JacobiResult {
  std::vector<int64_t> tokens;  // [B, N]
  std::vector<int64_t> calls;   // decode calls each image took (the prefill included; sequential: N + 1)
};

// The tokens of the images of `inputs` (their guidance rows, schedule and temperatures; not their sequential noise):
// image b's randomness comes from (seed, first_image + b) alone. window: 1 .. kMaxParallelWindow drafts.
JacobiResult JacobiGenerate(const Artifacts& artifacts, Backend& backend, const RarInputs& inputs, uint64_t seed,
                            int64_t first_image, int64_t window);

}  // namespace rar::detail
