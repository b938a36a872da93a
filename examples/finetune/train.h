// Steps 2-4 of fine-tuning: initialize from the pretrained encoder with a new head, train with
// AdamW under a warmup schedule, evaluate on dev as training goes (keeping the best checkpoint and
// stopping early when dev stops improving), and report test metrics with the best weights.
//
// Exact resume: a checkpoint holds the weights, the optimizer and schedule state, the position in
// the (seeded, per-epoch) data order, the RNG state and the early-stopping counters, written into a
// temporary directory and swapped in atomically. Everything a step computes is a function of that
// state, so a run killed at any moment and resumed from its last checkpoint ends with the same bits
// as an uninterrupted one (on the cpu with the same thread count).
#pragma once

#include "options.h"

namespace lathe::finetune {

// Exit codes: 0 done, 1 bad input or failure, 3 stopped on a non-finite loss or gradient.
int run(const Options& options);

}  // namespace lathe::finetune
