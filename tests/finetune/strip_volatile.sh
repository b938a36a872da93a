#!/usr/bin/env sh
# Prints summary.json without the fields that measure time (they differ between any two runs).
grep -v -e '"train_seconds"' -e '"wall_seconds"' -e '"train_examples_per_second"' "$1"
