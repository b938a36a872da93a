#!/usr/bin/env python3
"""Hugging Face `tokenizers` on the corpus of bench/bench_tokenizer.cpp, one core, for comparison.

  /tmp/tok/bin/python bench/bench_tokenizer_hf.py [--model DIR]   (tokenizers==0.20.3, see
  tests/golden/make_tokenizer_goldens.py)

Reports output tokens per second (with [CLS]/[SEP], no padding) for a per-line encode() loop and
for encode_batch() with the Rust thread pool limited to one thread; best of 5 passes, wall-clock
and process CPU time (Google Benchmark's rates use CPU time).
"""
import argparse
import os
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    cache = os.environ.get("LATHE_CACHE", os.path.expanduser("~/.cache/lathe"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(cache, "models", "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    corpus = os.path.join(ROOT, "tests", "golden", "tokenizer_corpus.txt")
    lines = open(corpus, encoding="utf-8").read().split("\n")[:-1]
    tokens = sum(len(e.ids) for e in tok.encode_batch(lines))
    for name, fn in (("encode loop", lambda: [tok.encode(l) for l in lines]),
                     ("encode_batch", lambda: tok.encode_batch(lines))):
        best, best_cpu = float("inf"), float("inf")
        for _ in range(5):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        print(f"HF tokenizers {name}: {len(lines)} lines, {tokens} tokens, "
              f"wall {best * 1e3:.2f} ms ({tokens / best / 1e6:.3f} M tokens/s), "
              f"cpu {best_cpu * 1e3:.2f} ms ({tokens / best_cpu / 1e6:.3f} M tokens/s)")


if __name__ == "__main__":
    main()
