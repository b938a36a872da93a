#!/usr/bin/env python3
"""Merges Google Benchmark JSON files into the first one, in place.

scripts/gpu-check.sh times the sm_90a attention kernels in processes of their own (a kernel that
hangs or traps on the GPU then loses only its own entries) and merges their results into
bench.json, the one file bench/compare_torch_gpu.py reads and the device tool returns. An entry of
a later file replaces the entry of the same name in the first (the main run's skipped
placeholder); a file that is missing or not valid JSON (its process was killed mid-write) is
reported and left out.

Usage: python3 bench/merge_bench_json.py bench.json part1.json [part2.json ...]
"""
import json
import os
import sys


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    target, parts = argv[0], argv[1:]
    with open(target) as f:
        merged = json.load(f)
    names = [b["name"] for b in merged["benchmarks"]]
    status = 0
    for part in parts:
        try:
            with open(part) as f:
                runs = json.load(f)["benchmarks"]
        except (OSError, ValueError, KeyError) as e:
            print(f"merge_bench_json: {part} left out: {e}", file=sys.stderr)
            status = 1
            continue
        for b in runs:
            if b["name"] in names:
                merged["benchmarks"][names.index(b["name"])] = b
            else:
                merged["benchmarks"].append(b)
                names.append(b["name"])
        print(f"merge_bench_json: {len(runs)} entries from {part}")
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(tmp, target)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
