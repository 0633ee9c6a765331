// shoal quantize: a weight-quantized copy of a model (engine/model/quantize.hpp does the work).

#include <iostream>

#include "engine/model/quantize.hpp"
#include "tools/cli/commands.hpp"

namespace shoal::cli {

namespace {

struct quantize_args {
  std::string model;
  std::string out;
  quantize_options opts;
};

}  // namespace

runner_fn add_quantize(CLI::App& app) {
  auto a = std::make_shared<quantize_args>();
  app.add_option("--model", a->model, "Source: HF model directory or .gguf file")->required();
  app.add_option("--out", a->out, "Output: a directory (int8, int4, fp8) or a .gguf file (q8_0, q4_0, f32, f16, bf16)")
      ->required();
  app.add_option("--type", a->opts.type, "int8 | int4 | fp8 (HF layout; fp8: float8_e4m3fn with 128x128 block scales) | q8_0 | q4_0 | f32 | f16 | bf16 (GGUF)")
      ->required();
  app.add_option("--group-size", a->opts.group_size,
                 "int4: columns per scale, a multiple of 32 (default 64)");
  app.add_flag("--force", a->opts.force, "Overwrite an existing --out");
  return [a] {
    const auto report = quantize_model(a->model, a->out, a->opts);
    for (const auto& n : report.notes) std::cerr << "note: " << n << "\n";
    std::cout << "wrote " << a->out << " (" << a->opts.type << ": " << report.quantized
              << " matrices quantized, " << report.kept << " kept in their source type)\n";
    return 0;
  };
}

}  // namespace shoal::cli
