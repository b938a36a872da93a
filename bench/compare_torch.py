#!/usr/bin/env python3
"""lathe vs PyTorch on the cpu, same shapes, same thread count, interleaved in one invocation.

For each entry the lathe side is one `lathe-bench --benchmark_filter=...` run (Google Benchmark,
JSON output) and the PyTorch side the same computation timed here; the two alternate entry by
entry so that both see the same machine state. Prints a markdown table of lathe/PyTorch time
ratios (< 1: lathe is faster): training step and inference (f32, and bf16 under autocast) of
BERT-shaped classifiers, GEMM (f32 and bf16), layer norm, softmax, attention.

PyTorch comes from the venv of tests/golden/README.md ($LATHE_CACHE/venv-torch: torch 2.9.1 from
PyPI, the fastest CPU build the registries offer — MKL + oneDNN, AVX-512 kernels); transformers
4.57.1 builds the same BERT (eager attention and SDPA are both measured for the model).

Usage: ~/.cache/lathe/venv-torch/bin/python bench/compare_torch.py [--lathe-bench PATH]
       [--threads 2] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch


def lathe_time(bench, name_filter, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="passive")
    out = subprocess.run([bench, f"--benchmark_filter={name_filter}", "--benchmark_format=json"],
                         check=True, capture_output=True, text=True, env=env).stdout
    # Entries skipped on this processor (a bf16 GEMM path it lacks) report an error, not a time.
    runs = [b for b in json.loads(out)["benchmarks"]
            if b.get("run_type") != "aggregate" and not b.get("error_occurred")]
    if not runs:
        sys.exit(f"compare_torch: no lathe benchmark matches {name_filter}")
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[runs[0]["time_unit"]]
    return min(b["real_time"] for b in runs) * unit


def torch_time(fn, min_time=2.0, reps_min=3):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < reps_min or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bert(base, attn):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=30522, hidden_size=768 if base else 384,
                     num_hidden_layers=12 if base else 6, num_attention_heads=12,
                     intermediate_size=3072 if base else 1536, num_labels=2,
                     attn_implementation=attn)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def train_step_fn(base, seq, attn, bf16=False):
    model = bert(base, attn)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    ids = torch.randint(100, 30100, (32, seq))
    mask = torch.ones(32, seq, dtype=torch.long)
    labels = torch.randint(0, 2, (32,))

    def step():
        # bf16: torch.autocast on the cpu (oneDNN's bf16 kernels, AMX where the processor has it),
        # the recipe lathe's BM_TrainStepBf16 follows with AutocastGuard(BF16, CPU).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def inference_fn(base, seq, attn, bf16=False):
    model = bert(base, attn)
    model.eval()
    ids = torch.randint(100, 30100, (32, seq))
    mask = torch.ones(32, seq, dtype=torch.long)

    def run():
        # bf16: autocast entered per forward, as lathe's BM_InferenceBf16/.../cache:0 does.
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(input_ids=ids, attention_mask=mask).logits.float().numpy()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lathe-bench", default="build/bin/lathe-bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="MiniLM shape only, fewer entries")
    ap.add_argument("--only", default="", help="run the entries whose label contains this")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MKL "
          f"{torch.backends.mkl.is_available()}, oneDNN {torch.backends.mkldnn.is_available()}, "
          f"{torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)

    entries = []
    shapes = [(0, 64), (0, 128)] if a.quick else [(0, 64), (0, 128), (1, 64), (1, 128)]
    for base, seq in shapes:
        tag = f"{'BERT-base' if base else 'MiniLM'} B32 T{seq}"
        entries.append((f"train step, {tag}", f"BM_TrainStep/base:{base}/T:{seq}/",
                        lambda b=base, s=seq: train_step_fn(b, s, "sdpa")))
        entries.append((f"inference, {tag}", f"BM_Inference/base:{base}/T:{seq}/",
                        lambda b=base, s=seq: inference_fn(b, s, "sdpa")))
    for base in [0] if a.quick else [0, 1]:
        tag = f"{'BERT-base' if base else 'MiniLM'} B32 T128"
        entries.append((f"train step, {tag}, bf16 autocast",
                        f"BM_TrainStepBf16/base:{base}/T:128/path:[12]/",
                        lambda b=base: train_step_fn(b, 128, "sdpa", bf16=True)))
        entries.append((f"inference, {tag}, bf16 autocast",
                        f"BM_InferenceBf16/base:{base}/T:128/cache:0",
                        lambda b=base: inference_fn(b, 128, "sdpa", bf16=True)))
    for m, n, k in [(4096, 1536, 384), (4096, 3072, 768)]:
        def gemm_bf16(m=m, n=n, k=k):
            x, w = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
            return lambda: torch.matmul(x, w.t())
        entries.append((f"GEMM {m}x{n}x{k} bf16 (x @ w^T)",
                        f"BM_GemmBf16_Lathe/m:{m}/n:{n}/k:{k}/path:[12]/layout:0/", gemm_bf16))
    for m, n, k in [(4096, 384, 384), (4096, 1536, 384), (4096, 384, 1536), (1024, 1024, 1024)]:
        def gemm(m=m, n=n, k=k):
            x, y = torch.randn(m, k), torch.randn(k, n)
            return lambda: torch.matmul(x, y)
        # BERT shapes through lathe's GEMM kernel, the square one through the matmul op.
        name = "BM_Sgemm_LatheMatmul" if m == n == k else "BM_Sgemm_Lathe"
        entries.append((f"GEMM {m}x{n}x{k}", f"{name}/{m}/{n}/{k}/", gemm))
    for rows, cols in [(4096, 384), (4096, 768)]:
        def ln(rows=rows, cols=cols):
            x, w, b = torch.randn(rows, cols), torch.rand(cols), torch.rand(cols)
            return lambda: torch.nn.functional.layer_norm(x, (cols,), w, b)

        def sm(rows=rows, cols=cols):
            x = torch.randn(rows, cols)
            return lambda: torch.softmax(x, -1)
        entries.append((f"layer norm {rows}x{cols}", f"BM_LayerNormForward/{rows}/{cols}/", ln))
        entries.append((f"softmax {rows}x{cols}", f"BM_SoftmaxForward/{rows}/{cols}/", sm))
    for seq in [128] if a.quick else [128, 512]:
        def attn(seq=seq):
            q, k, v = (torch.randn(32, 12, seq, 32) for _ in range(3))
            return lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)
        entries.append((f"attention fwd B32 H12 T{seq} d32", f"BM_Attention/fused:1/T:{seq}", attn))

    print("| entry | lathe ms | PyTorch ms | lathe / PyTorch |")
    print("|---|---|---|---|")
    for label, flt, make in entries:
        if a.only and a.only not in label:
            continue
        lt = lathe_time(a.lathe_bench, flt, a.threads)
        tt = torch_time(make())
        print(f"| {label} | {lt * 1e3:.2f} | {tt * 1e3:.2f} | {lt / tt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
