// Step 1 of fine-tuning: read the labelled text, split it, map labels to ids, tokenize once, and
// describe what the model will see (sizes, label balance, lengths, truncation).
#pragma once

#include <string>
#include <vector>

#include "lathe/data/batching.h"
#include "lathe/data/dataset.h"
#include "lathe/data/tokenizer.h"
#include "options.h"

namespace lathe::finetune {

struct PreparedData {
  data::LabelMap labels;
  std::vector<data::EncodedExample> train, dev, test;
  std::vector<std::string> dev_text, test_text;
  std::string summary;  // the human-readable data report
};

PreparedData prepare_data(const Options& options, const data::Tokenizer& tokenizer);

}  // namespace lathe::finetune
