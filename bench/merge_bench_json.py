#!/usr/bin/env python3
"""Merges Google Benchmark JSON files into one.

scripts/gpu-check.sh runs lathe-bench's cuda entries in several processes, each writing a JSON file
of its own: the sm_90a attention kernels one variant per process (a kernel that hangs or traps on
the GPU then loses only its own entries), and the other entries in a few groups, each under its
own time limit (a group cut short loses its own entries, not the run's). This merges them into
bench.json, the one file bench/compare_torch_gpu.py reads and the device tool returns.

The target's existing entries come first when it exists and is valid JSON; otherwise the first
valid part gives the context. An entry of a later file replaces the entry of the same name (the
main run's skipped placeholder of an sm_90a variant); a file that is missing or not valid JSON
(its process was killed mid-write) is reported and left out. The exit status is 1 when a file was
left out, 2 when nothing could be merged.

Usage: python3 bench/merge_bench_json.py bench.json part1.json [part2.json ...]
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            data = json.load(f)
        data["benchmarks"]  # noqa: B018 - a file without the list is as bad as a truncated one
        return data, None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, e


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    target, parts = argv[0], argv[1:]
    status = 0
    merged, error = load(target)
    if merged is None and os.path.exists(target):
        print(f"merge_bench_json: {target} left out: {error}", file=sys.stderr)
        status = 1
    names = [b["name"] for b in merged["benchmarks"]] if merged else []
    for part in parts:
        data, error = load(part)
        if data is None:
            print(f"merge_bench_json: {part} left out: {error}", file=sys.stderr)
            status = 1
            continue
        if merged is None:
            merged = {"context": data.get("context", {}), "benchmarks": []}
        for b in data["benchmarks"]:
            if b["name"] in names:
                merged["benchmarks"][names.index(b["name"])] = b
            else:
                merged["benchmarks"].append(b)
                names.append(b["name"])
        print(f"merge_bench_json: {len(data['benchmarks'])} entries from {part}")
    if merged is None:
        print("merge_bench_json: nothing to merge", file=sys.stderr)
        return 2
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, indent=1)
    os.replace(tmp, target)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
