#!/usr/bin/env sh
# Prints summary.json without the fields that measure the run rather than its results: time
# (differs between any two runs), this process's peak memory (a resumed run has its own), and
# whether gradient checkpointing was on and how many CUDA graphs ran the steps (they change memory
# and time, not the results).
grep -v -e '"train_seconds"' -e '"wall_seconds"' -e '"train_examples_per_second"' \
  -e '"peak_memory_bytes"' -e '"gradient_checkpointing"' -e '"cuda_graphs"' "$1"
