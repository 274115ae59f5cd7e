// rar_generate: the C++ example program, with the Python rar-generate's options and refusal rules, for RAR and
// VAR folders alike (an option of the other family is refused).
//   rar_generate --artifacts DIR --class-labels 207,360 [--num-per-class K] [--seed S] [--guidance-scale G]
//       [--temperature T] [--guidance-pow P (RAR)] [--top-k K --top-p P (VAR)] [--batch-size B]
//       [--backend onnxruntime|tensorrt] [--device cpu|cuda] --out DIR [--save-tokens FILE.npy] [--force]
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "outputs.hpp"
#include "rar/rar.hpp"

namespace fs = std::filesystem;
using rar::tools::Kind;
using rar::tools::Output;
using rar::tools::UsageError;

namespace {

std::vector<int64_t> ParseLabels(const std::string& text) {
  std::vector<int64_t> labels;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    if (part.find_first_not_of(" ") == std::string::npos) continue;
    size_t used = 0;
    try {
      labels.push_back(std::stoll(part, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || part.find_first_not_of(" ", used) != std::string::npos) {
      throw UsageError("--class-labels must be comma-separated decimal integers, got '" + text + "'");
    }
  }
  return labels;
}

constexpr uint64_t kMaxImages = 1000000;  // one call: its labels, tokens and images are held in memory

std::string Decimal(unsigned __int128 value) {  // std::to_string has no 128-bit overload
  std::string digits;
  do {
    digits.insert(digits.begin(), static_cast<char>('0' + static_cast<int>(value % 10)));
    value /= 10;
  } while (value != 0);
  return digits;
}

std::string ImageName(size_t index, int64_t label) {
  char name[64];
  std::snprintf(name, sizeof(name), "%04zu_class%lld.png", index, static_cast<long long>(label));
  return name;
}

int Generate(int argc, char** argv) {
  CLI::App app{"Generate images from rar-deploy artifacts (the C++ runtime)"};
  std::string artifacts, class_labels, backend = "onnxruntime", device;
  fs::path out, save_tokens;
  int64_t num_per_class = 1, batch_size = 0;
  int64_t seed = 0, condition_budget = -1, parallel_window = 0;
  std::optional<double> guidance_scale, guidance_pow, temperature, top_p;
  std::optional<int64_t> top_k;
  bool force = false;
  app.add_option("--artifacts", artifacts, "Artifact directory written by rar-export")->required();
  app.add_option("--class-labels", class_labels, "Comma-separated ImageNet class ids, e.g. 207,360")->required();
  app.add_option("--num-per-class", num_per_class, "Images per class")
      ->check(CLI::Validator([](const std::string& text) {
        return std::stoll(text) >= 1 ? std::string() : "must be at least 1, got " + text;
      }, "INT >= 1"));
  app.add_option("--seed", seed, "Image i's noise comes from (seed, i)");
  app.add_option("--guidance-scale", guidance_scale, "0 is no guidance [default: the manifest's]");
  app.add_option("--guidance-pow", guidance_pow, "RAR: [default: the manifest's]");
  app.add_option("--temperature", temperature, "0 is greedy [default: the manifest's]");
  app.add_option("--top-k", top_k, "VAR: keep the k most likely tokens, 0 all [default: the manifest's]");
  app.add_option("--top-p", top_p, "VAR: nucleus of mass p, 0 off [default: the manifest's]");
  app.add_option("--batch-size", batch_size, "Images per batch [default: the artifacts' max batch]");
  app.add_option("--backend", backend, "onnxruntime or tensorrt")->check(CLI::IsMember({"onnxruntime", "tensorrt"}));
  app.add_option("--device", device, "cpu, cuda or cuda:N [default: cpu for onnxruntime, cuda for tensorrt]");
  app.add_option("--condition-budget", condition_budget,
                 "Bytes of condition rows a generation may hold (0: one position a step) [default: 2 GiB]")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--parallel-window", parallel_window,
                 "RAR: speculative Jacobi decoding with this many draft tokens per image (1-16; the folder needs "
                 "rar-export --parallel-decoding). 0: off");
  app.add_option("--out", out, "Folder for the PNGs and samples.json")->required();
  app.add_option("--save-tokens", save_tokens, "Also save the tokens (.npy)");
  app.add_flag("--force", force, "Replace an earlier rar-generate --out / --save-tokens (never anything else)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::ParseError& error) {
    std::cerr << "Error: " << error.what() << "\n";  // one line, as every other refusal
    return 2;
  }

  // Every check before any heavy work: the values, both outputs, then the folder.
  const std::vector<int64_t> per_class = ParseLabels(class_labels);
  // counted before the list is built (in 128 bits: a label count times a num-per-class below 2^63 fits); no
  // labels at all is the pipeline's refusal, as in Python
  const unsigned __int128 count = static_cast<unsigned __int128>(per_class.size()) *
                                   static_cast<uint64_t>(num_per_class);
  if (count > kMaxImages) {
    throw UsageError(Decimal(count) + " images (--class-labels x --num-per-class) are more than one call makes (" +
                     std::to_string(kMaxImages) + "): split the request");
  }
  std::vector<int64_t> labels;
  for (int64_t label : per_class) labels.insert(labels.end(), num_per_class, label);
  if (seed < 0) throw UsageError("seed must lie in [0, 2**63), got " + std::to_string(seed));
  const Output images{out, "--out", Kind::kSamplesFolder, force, {artifacts}};
  images.Check();
  std::vector<const Output*> outputs{&images};
  std::optional<Output> tokens_out;
  if (!save_tokens.empty()) {
    tokens_out = Output{save_tokens, "--save-tokens", Kind::kNumpyFile, force, {artifacts}};
    if (rar::tools::Overlap(save_tokens, out)) {  // publishing one would replace or drop the other
      throw UsageError("--save-tokens " + save_tokens.string() + " is --out " + out.string() +
                       ", lies inside it or holds it: save the tokens outside --out");
    }
    tokens_out->Check();
    outputs.push_back(&*tokens_out);
  }
  rar::tools::Lock lock(images.Target());
  std::optional<rar::tools::Lock> tokens_lock;
  if (tokens_out) tokens_lock.emplace(tokens_out->Target());
  rar::Pipeline pipeline(artifacts, backend, device);
  if (condition_budget >= 0) pipeline.SetConditionBudget(condition_budget);
  rar::Sampling sampling{guidance_scale, guidance_pow, temperature, static_cast<uint64_t>(seed), std::nullopt,
                         top_k, top_p};
  if (batch_size != 0) sampling.batch_size = batch_size;
  sampling.parallel_window = parallel_window;
  const rar::Generation generated = pipeline.Generate(labels, sampling);  // RAR: the tokens, then Decode
  const std::vector<int64_t>& tokens = generated.tokens;
  const rar::Images& decoded = generated.images;
  const std::string family = pipeline.is_var() ? "var" : "rar";

  // Everything into temporaries first (a full disk fails here, with nothing published), then all together.
  const rar::tools::Temporary folder(images);
  std::optional<rar::tools::Temporary> tokens_file;
  try {
    nlohmann::json record = {{"schema", "rar-deploy/samples"}, {"writer", "rar_generate (C++)"},
                             {"artifacts", fs::weakly_canonical(artifacts).string()}, {"family", family},
                             {"backend", backend},
                             {"seed", seed}, {"class_labels", labels}, {"num_per_class", num_per_class},
                             {"parallel_window", parallel_window},
                             {"images", nlohmann::json::array()}};
    if (!pipeline.is_var()) record["decode_calls_per_image"] = pipeline.MeanDecodeCalls();
    const size_t image_bytes = static_cast<size_t>(decoded.height * decoded.width * decoded.channels);
    for (size_t i = 0; i < labels.size(); ++i) {
      const std::string name = ImageName(i, labels[i]);
      rar::tools::WritePng(folder.path() / name, decoded.pixels.data() + i * image_bytes, decoded.height,
                           decoded.width, decoded.channels);
      record["images"].push_back(name);
    }
    record["files"] = record["images"];
    record["files"].push_back("samples.json");
    rar::tools::WriteText(folder.path() / "samples.json", record.dump(1) + "\n");
    if (tokens_out) {
      tokens_file.emplace(*tokens_out);
      rar::tools::WriteNpy(tokens_file->path(), tokens, static_cast<int64_t>(labels.size()),
                           pipeline.info().image_seq_len);
    }
  } catch (const rar::tools::WriteFailure& failure) {
    rar::tools::WriteFailed(failure.error, outputs);
  }
  std::vector<const rar::tools::Temporary*> temporaries{&folder};
  if (tokens_file) temporaries.push_back(&*tokens_file);
  rar::tools::PublishAll(temporaries, outputs);
  const RarTimings timings = pipeline.Timings();
  std::cout << "wrote " << labels.size() << " images and samples.json to " << out.string() << " (" << backend
            << "; start " << timings.start_ms << " ms, ";
  if (pipeline.is_var()) {
    std::cout << timings.steps << " scale steps " << timings.steps_ms << " ms";
  } else if (parallel_window != 0) {
    std::cout << "speculative decoding, window " << parallel_window << ": " << pipeline.MeanDecodeCalls()
              << " decode calls an image, " << timings.steps_ms << " ms";
  } else {
    std::cout << "prefill " << timings.prefill_ms << " ms, " << timings.steps << " steps " << timings.steps_ms
              << " ms, condition window " << timings.condition_window;
  }
  std::cout << ", decoder " << timings.decode_ms << " ms)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGXFSZ, SIG_IGN);  // past `ulimit -f` a write fails with EFBIG, reported, instead of a silent kill
  try {
    return Generate(argc, argv);
  } catch (const UsageError& error) {
    std::cerr << "Error: " << error.what() << "\n";
  } catch (const rar::Error& error) {
    std::cerr << "Error: " << error.what() << "\n";
  } catch (const std::exception& error) {
    std::cerr << "Error: " << error.what() << "\n";
  }
  return 1;
}
