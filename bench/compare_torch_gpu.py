#!/usr/bin/env python3
"""lathe vs PyTorch on a lent GPU: the ratio table of docs/benchmarks.md, from one device call.

scripts/gpu-check.sh runs `lathe-bench --benchmark_filter=BM_Cuda` once (JSON) and then this
script, which times the same computations in PyTorch on the same GPU in the same call (PyTorch
eager; torch.compile for the headline bf16 BERT-base training step; SDPA's flash backend for
attention) and prints markdown tables:
  1. lathe / PyTorch time ratios (< 1: lathe is faster) for the training step, inference, GEMM
     (lathe's matmul op and cuBLAS called directly, both from lathe-bench), attention and the row
     kernels;
  2. the training step's peak allocated memory with and without gradient checkpointing;
  3. each lathe kernel's GB/s as a fraction of the device-to-device copy bandwidth measured by
     BM_CudaCopy in the same lathe-bench run (the roofline line of issue #9 / #7).

Usage: python3 bench/compare_torch_gpu.py --lathe-json bench.json [--no-compile] [--quick]
Timing: CUDA events around each call after warm-up, median of repetitions; the lathe side is
Google Benchmark's real time per iteration divided by the launches per iteration (kLaunches in
bench/bench_cuda_kernels.cpp) where the entry batches launches.
"""
import argparse
import json
import statistics
import sys
import time

import torch

LAUNCHES = 20  # kLaunches in bench/bench_cuda_kernels.cpp


def load_lathe(path):
    with open(path) as f:
        runs = json.load(f)["benchmarks"]
    out = {}
    for b in runs:
        # Aggregates, and entries that skipped with an error (a variant the GPU lacks, or one
        # gpu-check times in a process of its own and merges in under the same name).
        if b.get("run_type") == "aggregate" or b.get("error_occurred"):
            continue
        unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b["time_unit"]]
        # "BM_X/args/min_time:1.000/real_time" -> "BM_X/args"
        name = "/".join(p for p in b["name"].split("/")
                        if p != "real_time" and not p.startswith("min_time:"))
        out[name] = dict(b, seconds=b["real_time"] * unit)
    return out


DEVICE = "cuda"


def cuda_time(fn, reps=20, warmup=3, max_seconds=3.0, inner=1):
    """Median seconds per fn() call, timed with CUDA events (host clock in --device cpu smoke).

    inner > 1 times that many back-to-back calls per event pair, as lathe-bench's kernel entries
    do (kLaunches), so neither side pays a synchronization per launch."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < reps and (len(times) < 3 or time.perf_counter() < deadline):
        if DEVICE == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / inner)
    return statistics.median(times)


def bert(base, dtype=torch.float32):
    from transformers import BertConfig, BertForSequenceClassification
    kw = dict(vocab_size=30522, hidden_size=768 if base else 384,
              num_hidden_layers=12 if base else 6, num_attention_heads=12,
              intermediate_size=3072 if base else 1536, num_labels=2)
    cfg = BertConfig(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).to(DEVICE).to(dtype)


def batch(seq):
    ids = torch.randint(100, 30100, (32, seq), device=DEVICE)
    mask = torch.ones(32, seq, dtype=torch.long, device=DEVICE)
    labels = torch.randint(0, 2, (32,), device=DEVICE)
    return ids, mask, labels


def train_step_fn(base, seq, bf16, compile_model=False, checkpointing=False):
    model = bert(base)
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01, fused=DEVICE == "cuda")
    ids, mask, labels = batch(seq)
    fwd = torch.compile(model) if compile_model else model

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            logits = fwd(input_ids=ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def inference_fn(base, seq, bf16):
    model = bert(base)
    model.eval()
    ids, mask, _ = batch(seq)

    def run():
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
            return model(input_ids=ids, attention_mask=mask).logits.float().cpu()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lathe-json", required=True)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--quick", action="store_true", help="fewer entries")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script, no GPU")
    a = ap.parse_args()
    global DEVICE
    DEVICE = a.device
    lathe = load_lathe(a.lathe_json)
    if DEVICE == "cuda":
        dev = torch.cuda.get_device_properties(0)
        print(f"torch {torch.__version__} on {dev.name} ({dev.multi_processor_count} SMs)")

    rows = []  # (label, lathe seconds or None, torch seconds, torch label)

    def lathe_s(name, per_launch=True):
        b = lathe.get(name)
        if b is None:
            return None
        return b["seconds"] / (LAUNCHES if per_launch else 1)

    def add(label, lathe_name, fn, torch_label="eager", per_launch=True):
        try:
            ts = cuda_time(fn, inner=LAUNCHES if per_launch else 1)
        except Exception as e:  # a PyTorch failure must not hide the rest of the table
            print(f"  {label}: PyTorch failed: {e}", file=sys.stderr)
            ts = None
        rows.append((label, lathe_s(lathe_name, per_launch) if lathe_name else None, ts,
                     torch_label))
        print(f"  {label} [{torch_label}] done", file=sys.stderr, flush=True)

    # End to end (lathe: BM_CudaTrainStep / BM_CudaInference, one step per iteration).
    for base in (0, 1):
        for bf16 in (0, 1):
            tag = f"{'BERT-base' if base else 'MiniLM'} B32 T128 {'bf16' if bf16 else 'f32'}"
            name = f"base:{base}/T:128/bf16:{bf16}"
            add(f"train step, {tag}", f"BM_CudaTrainStep/{name}",
                train_step_fn(base, 128, bool(bf16)), per_launch=False)
            add(f"inference, {tag}", f"BM_CudaInference/{name}", inference_fn(base, 128, bool(bf16)),
                per_launch=False)
    # f32 with the GEMMs in TF32 on both sides (lathe: set_float32_matmul_precision("high");
    # PyTorch: torch.backends.cuda.matmul.allow_tf32).
    if DEVICE == "cuda":
        for base in (0, 1):
            tag = f"{'BERT-base' if base else 'MiniLM'} B32 T128 f32, TF32 GEMMs"
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                add(f"train step, {tag}", f"BM_CudaTrainStepTf32/base:{base}/T:128",
                    train_step_fn(base, 128, False), per_launch=False)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
    if not a.no_compile:
        t0 = time.perf_counter()
        step = train_step_fn(1, 128, True, compile_model=True)
        step()
        print(f"  torch.compile warm-up: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        add("train step, BERT-base B32 T128 bf16", "BM_CudaTrainStep/base:1/T:128/bf16:1", step,
            "torch.compile", per_launch=False)

    # Gradient checkpointing (lathe: BM_CudaTrainStepCheckpointing, bf16): step time beside the
    # step's peak allocated memory, against Hugging Face's gradient_checkpointing_enable().
    memory_rows = []  # (label, lathe MiB or None, torch MiB)
    for t_ in ((128,) if a.quick else (128, 512)):
        for ckpt in (0, 1):
            label = f"train step, BERT-base B32 T{t_} bf16, checkpointing {'on' if ckpt else 'off'}"
            name = f"BM_CudaTrainStepCheckpointing/base:1/T:{t_}/checkpointing:{ckpt}"
            try:
                step = train_step_fn(1, t_, True, checkpointing=bool(ckpt))
                step()  # AdamW's state exists from here on, as on the lathe side
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                add(label, name, step, per_launch=False)
                torch_mib = (torch.cuda.max_memory_allocated() / 2**20 if DEVICE == "cuda"
                             else None)
                del step
            except Exception as e:
                print(f"  {label}: PyTorch failed: {e}", file=sys.stderr)
                torch_mib = None
            b = lathe.get(name)
            memory_rows.append((label, b.get("peak_MiB") if b else None, torch_mib))
            if DEVICE == "cuda":
                torch.cuda.empty_cache()

    # GEMM: torch.matmul (cuBLAS underneath) vs lathe's op and vs raw cuBLAS from lathe-bench.
    gemm_shapes = [(4096, 384, 384), (4096, 1536, 384), (4096, 384, 1536), (4096, 768, 768),
                   (4096, 3072, 768), (4096, 768, 3072), (1024, 1024, 1024), (4096, 4096, 4096)]
    for dt, code in ((torch.float32, 0), (torch.bfloat16, 1)):
        for m, n, k in gemm_shapes:
            x = torch.randn(m, k, device=DEVICE).to(dt)
            y = torch.randn(k, n, device=DEVICE).to(dt)
            suffix = f"{m}/{n}/{k}/{code}"
            label = f"GEMM {m}x{n}x{k} {'bf16' if code else 'f32'}"
            add(label, f"BM_CudaGemm_Lathe/{suffix}", lambda x=x, y=y: torch.matmul(x, y))
            raw = lathe_s(f"BM_CudaGemm_Cublas/{suffix}")
            rows.append((label + " (raw cuBLAS via lathe-bench)", lathe_s(f"BM_CudaGemm_Lathe/{suffix}"),
                         raw, "cuBLAS direct"))
    if DEVICE == "cuda":
        for m, n, k in ((4096, 3072, 768), (4096, 768, 3072), (4096, 4096, 4096)):
            x = torch.randn(m, k, device=DEVICE)
            y = torch.randn(k, n, device=DEVICE)
            suffix = f"{m}/{n}/{k}/2"
            label = f"GEMM {m}x{n}x{k} f32 TF32"
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                add(label, f"BM_CudaGemm_Lathe/{suffix}", lambda x=x, y=y: torch.matmul(x, y))
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
            rows.append((label + " (raw cuBLAS via lathe-bench)", lathe_s(f"BM_CudaGemm_Lathe/{suffix}"),
                         lathe_s(f"BM_CudaGemm_Cublas/{suffix}"), "cuBLAS direct"))

    # Attention: lathe's op (composed or fused) vs SDPA (flash backend) forward, bf16, H = 12.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for b_, t_, d_ in ((32, 128, 32), (32, 128, 64), (8, 512, 64), (2, 2048, 64)):
        q, k, v = (torch.randn(b_, 12, t_, d_, device=DEVICE, dtype=torch.bfloat16)
                   for _ in range(3))

        def sdpa(q=q, k=k, v=v):
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v)
        add(f"attention fwd B{b_} H12 T{t_} d{d_} bf16", f"BM_CudaAttentionOp/B:{b_}/T:{t_}/d:{d_}",
            sdpa, "SDPA flash")

    # Fused attention at the sizes of issue #8 and of bench/bench_cuda_attention.cpp: 16k tokens
    # per batch, hidden 2048 (B = 16384 / T, H = 2048 / d). FLOPs as FlashAttention counts them:
    # forward 4·B·H·T²·d (halved when causal), backward 2.5x the forward. lathe's time comes from
    # its TFLOP/s counter (its entries time 5 launches per iteration). bf16: lathe's tensor-core
    # kernels against SDPA's flash backend; f32: lathe's SIMT kernels against SDPA's memory-
    # efficient backend (PyTorch's fused f32 attention; its flash backend is 16-bit only). The
    # bf16 entries also get a row for lathe's backward in its atomic dQ mode (BackwardAtomic).
    def fused_attention(shapes, dtype, backend, entry_prefix, ref_name, atomic=False):
        for d_, t_, causal in shapes:
            b_, h_ = 16384 // t_, 2048 // d_
            q, k, v = (torch.randn(b_, h_, t_, d_, device=DEVICE, dtype=dtype,
                                   requires_grad=True) for _ in range(3))
            flops = 4.0 * b_ * h_ * t_ * t_ * d_ / (2 if causal else 1)

            def fwd(q=q, k=k, v=v, causal=causal):
                with sdpa_kernel([backend]):
                    return torch.nn.functional.scaled_dot_product_attention(
                        q, k, v, is_causal=bool(causal))
            try:
                out = fwd()
                dout = torch.randn_like(out)

                def bwd(out=out, dout=dout, q=q, k=k, v=v):
                    torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
                tf, tb = cuda_time(fwd), cuda_time(bwd)
            except Exception as e:
                print(f"  {ref_name} d{d_} T{t_}: {e}", file=sys.stderr)
                continue
            dname = "bf16" if dtype == torch.bfloat16 else "f32"
            kinds = [("Forward", tf, 1.0), ("Backward", tb, 2.5)]
            if atomic:  # lathe's backward with atomic dQ (deterministic = false), same reference
                kinds.append(("BackwardAtomic", tb, 2.5))
            for kind, t_torch, mult in kinds:
                entry = lathe.get(f"{entry_prefix}{kind}/T:{t_}/d:{d_}/causal:{causal}")
                lathe_time = (mult * flops / (entry["TFLOP/s"] * 1e12)
                              if entry and entry.get("TFLOP/s") else None)
                torch_tflops = mult * flops / t_torch / 1e12
                lathe_tflops = f"{entry['TFLOP/s']:.0f}" if entry else "—"
                what = {"BackwardAtomic": "backward (atomic dQ)"}.get(kind, kind.lower())
                rows.append((f"attention {what} B{b_} H{h_} T{t_} d{d_}"
                             f"{' causal' if causal else ''} {dname} (lathe {lathe_tflops} TFLOP/s)",
                             lathe_time, t_torch, f"{ref_name} ({torch_tflops:.0f} TFLOP/s)"))
                # The kernel variants' A/B (kernels/cuda/attention_variant.h), where lathe-bench
                # has it: variant 0 (the default), 1 and (sm_90a wgmma) 2 to 4, timed
                # side by side in the same run.
                for variant in (0, 1, 2, 3, 4):
                    ventry = lathe.get(f"{entry_prefix}{kind}Variant/T:{t_}/d:{d_}"
                                       f"/causal:{causal}/variant:{variant}")
                    if not ventry or not ventry.get("TFLOP/s"):
                        continue
                    rows.append((f"attention {what} variant {variant} B{b_} H{h_} T{t_} d{d_}"
                                 f"{' causal' if causal else ''} {dname} "
                                 f"(lathe {ventry['TFLOP/s']:.0f} TFLOP/s)",
                                 mult * flops / (ventry["TFLOP/s"] * 1e12), t_torch,
                                 f"{ref_name} ({torch_tflops:.0f} TFLOP/s)"))
            del q, k, v, out, dout

    flash = [(d_, t_, 0) for d_ in (64, 128)
             for t_ in ((1024, 4096) if a.quick else (512, 1024, 2048, 4096, 8192))]
    flash += [(64, 2048, 1), (128, 2048, 1)]
    fused_attention(flash, torch.bfloat16, SDPBackend.FLASH_ATTENTION, "BM_CudaFlashAttention",
                    "SDPA flash", atomic=True)
    simt = [(d_, t_, 0) for d_ in (64, 128) for t_ in ((512,) if a.quick else (128, 512, 2048))]
    simt += [(64, 2048, 1)]
    fused_attention(simt, torch.float32, SDPBackend.EFFICIENT_ATTENTION, "BM_CudaSimtAttention",
                    "SDPA mem-efficient")

    # Row kernels, bf16: PyTorch's own kernels at the shapes of lathe-bench.
    F = torch.nn.functional
    for r, c in ((4096, 384), (4096, 768), (32768, 768)):
        x = torch.randn(r, c, device=DEVICE, dtype=torch.bfloat16)
        w = torch.randn(c, device=DEVICE, dtype=torch.bfloat16)
        add(f"layer norm fwd {r}x{c} bf16", f"BM_CudaLayerNormForward/{r}/{c}/1",
            lambda x=x, w=w, c=c: F.layer_norm(x, (c,), w, w))
        add(f"softmax fwd {r}x{c} bf16", f"BM_CudaSoftmaxForward/{r}/{c}/1",
            lambda x=x: torch.softmax(x, -1))
    for n in (8192 * 1536, 32768 * 3072):
        x = torch.randn(n, device=DEVICE, dtype=torch.bfloat16)
        add(f"GELU fwd {n} bf16", f"BM_CudaGeluForward/{n}/1", lambda x=x: F.gelu(x))
    for n in (4096 * 768, 32768 * 768):
        x = torch.randn(n, device=DEVICE, dtype=torch.bfloat16)
        add(f"dropout p 0.1 {n} bf16", f"BM_CudaDropout/{n}/1",
            lambda x=x: F.dropout(x, 0.1, training=True))
    for r, c in ((4096, 30522),):
        x = torch.randn(r, c, device=DEVICE, dtype=torch.bfloat16)
        t = torch.randint(0, c, (r,), device=DEVICE)
        add(f"cross-entropy fwd {r}x{c} bf16", f"BM_CudaCrossEntropyForward/{r}/{c}/1",
            lambda x=x, t=t: F.cross_entropy(x, t, label_smoothing=0.1))

    print("\n| entry | reference | lathe ms | reference ms | lathe / reference |")
    print("|---|---|---|---|---|")
    for label, ls, ts, tl in rows:
        fmt = lambda s: "—" if s is None else f"{s * 1e3:.3f}"
        ratio = "—" if (ls is None or ts is None) else f"{ls / ts:.2f}"
        print(f"| {label} | {tl} | {fmt(ls)} | {fmt(ts)} | {ratio} |")

    print("\n| training memory | lathe peak MiB | PyTorch peak MiB | lathe / PyTorch |")
    print("|---|---|---|---|")
    for label, lm, tm in memory_rows:
        fmt = lambda v: "—" if v is None else f"{v:.0f}"
        ratio = "—" if (lm is None or tm is None) else f"{lm / tm:.2f}"
        print(f"| {label} | {fmt(lm)} | {fmt(tm)} | {ratio} |")

    # Roofline line per kernel: GB/s against the best copy of the same run.
    copies = [b["GB/s"] for n, b in lathe.items() if n.startswith("BM_CudaCopy/") and "GB/s" in b]
    if copies:
        ceiling = max(copies)
        print(f"\ncopy ceiling (best BM_CudaCopy, read + write): {ceiling:.0f} GB/s\n")
        # A kernel at B*T = 4096 moves a few MB, about a microsecond at full bandwidth, so launch
        # gaps and L2 residency weigh as much as the kernel; the copy of the same [rows, cols,
        # dtype] pays the same costs and is the fair ceiling for that shape.
        same = {n.partition("/")[2]: b["GB/s"] for n, b in lathe.items()
                if n.startswith("BM_CudaCopy/") and "GB/s" in b}
        print("| kernel | shape | GB/s | % of best copy | % of same-shape copy |")
        print("|---|---|---|---|---|")
        for n, b in lathe.items():
            if "GB/s" in b and not n.startswith("BM_CudaCopy/") and b["GB/s"] > 0:
                fam, _, shape = n.partition("/")
                key = "/".join(shape.split("/")[:3])
                local = f"{100 * b['GB/s'] / same[key]:.0f}%" if key in same else "—"
                print(f"| {fam} | {shape} | {b['GB/s']:.0f} | "
                      f"{100 * b['GB/s'] / ceiling:.0f}% | {local} |")


if __name__ == "__main__":
    main()
