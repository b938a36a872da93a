// lathe-finetune: fine-tunes a pretrained BERT encoder with a new classification head. Run with
// --help for the options; docs/finetuning.md walks through a run.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "lathe/core/error.h"
#include "options.h"
#include "train.h"

int main(int argc, char** argv) {
  CLI::App app{"lathe-finetune"};
  lathe::finetune::Options options;
  lathe::finetune::add_options(app, options);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);  // --help prints and returns 0; bad flags print one reason, non-zero
  }
  try {
    lathe::finetune::finalize_options(options);
    return lathe::finetune::run(options);
  } catch (const lathe::Error& e) {
    std::fprintf(stderr, "lathe-finetune: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lathe-finetune: %s\n", e.what());
    return 1;
  }
}
