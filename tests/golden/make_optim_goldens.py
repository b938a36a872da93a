#!/usr/bin/env python3
"""Writes tests/golden/optim/optim_golden.safetensors: parameter trajectories of torch.optim's
SGD, Adam and AdamW (with Hugging Face transformers' lr schedules and
torch.nn.utils.clip_grad_norm_) that tests/core/test_optim.cpp replays with lathe::optim.

Four parameters ("layer.weight" [3, 4], "layer.bias" [4], "other.weight" [2, 3],
"norm.weight" [5]) start from fixed values and receive a fixed gradient sequence for 5 steps;
"other.weight" has no gradient at step 2, so every optimizer must skip it there. Each
configuration runs in float32 and in float64 (foreach=False: torch's single-tensor code path).
The configurations below are restated in the C++ test; keep the two in sync.

Layout (all float64 unless noted):
  init/<param>                   [*shape] initial values (exactly representable in f32)
  grads/<param>                  [5, *shape] gradient of each step (f32-representable)
  has_grad                       int64 [5, 4]: 0 where the parameter gets no gradient
  <config>/<dtype>/<param>       [6, *shape] the parameter before step 0 and after each step,
                                 in <dtype> (float32 / float64)
  <config>/lr                    [5, groups] the lr each group used at each step
  <config>/<dtype>/total_norm    [5] clip_grad_norm_'s return value (clip configs only)
  clip/<name>/total_norm         [1] and clip/<name>/<param> [*shape]: clip_grad_norm_ on the
                                 step-0 gradients times 3 (float32), see CLIP_CASES
  schedule/<name>                [steps] factor of transformers' schedule lambdas at 0..steps-1

    python3 -m venv ~/.cache/lathe/venv-optim
    ~/.cache/lathe/venv-optim/bin/pip install torch==2.9.1 numpy safetensors transformers
    ~/.cache/lathe/venv-optim/bin/python tests/golden/make_optim_goldens.py
"""
import json
import math
import os
import platform

import numpy as np
import safetensors
import torch
import transformers
from safetensors.numpy import save_file
from transformers.optimization import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

PARAMS = [("layer.weight", (3, 4)), ("layer.bias", (4,)), ("other.weight", (2, 3)),
          ("norm.weight", (5,))]
STEPS = 5
NO_GRAD = {(2, "other.weight")}  # (step, param) without a gradient

# name -> optimizer, its options, groups (name, params, lr, weight_decay), schedule, clip max_norm
CONFIGS = {
    "sgd_nesterov": dict(
        opt="SGD", kw=dict(momentum=0.9, dampening=0.0, nesterov=True),
        groups=[("all", [p for p, _ in PARAMS], 0.1, 0.01)], schedule=None, clip=None),
    "sgd_dampening": dict(
        opt="SGD", kw=dict(momentum=0.8, dampening=0.3, nesterov=False),
        groups=[("decay", ["layer.weight", "other.weight"], 0.05, 0.02),
                ("no_decay", ["layer.bias", "norm.weight"], 0.05, 0.0)],
        schedule=None, clip=None),
    "adam_l2": dict(
        opt="Adam", kw=dict(betas=(0.9, 0.999), eps=1e-8),
        groups=[("all", [p for p, _ in PARAMS], 1e-2, 0.1)], schedule=None, clip=None),
    "adamw_linear": dict(
        opt="AdamW", kw=dict(betas=(0.9, 0.999), eps=1e-8),
        groups=[("decay", ["layer.weight", "other.weight"], 1e-2, 0.05),
                ("no_decay", ["layer.bias", "norm.weight"], 1e-2, 0.0)],
        schedule=("linear", 2, 6), clip=None),
    "adamw_cosine_clip": dict(
        opt="AdamW", kw=dict(betas=(0.8, 0.99), eps=1e-6),
        groups=[("all", [p for p, _ in PARAMS], 2e-2, 0.1)],
        schedule=("cosine", 1, 5), clip=1.0),
}

# name -> (norm_type, max_norm)
CLIP_CASES = {"l2_clipped": (2.0, 0.5), "l2_unclipped": (2.0, 100.0), "inf": (math.inf, 0.5),
              "l1": (1.0, 0.5), "p3": (3.0, 0.5)}

SCHEDULES = {
    "linear_w3_t10": (get_linear_schedule_with_warmup, dict(num_warmup_steps=3,
                                                            num_training_steps=10), 12),
    "linear_w0_t4": (get_linear_schedule_with_warmup, dict(num_warmup_steps=0,
                                                           num_training_steps=4), 6),
    "cosine_w3_t10": (get_cosine_schedule_with_warmup, dict(num_warmup_steps=3,
                                                            num_training_steps=10), 12),
    "cosine_w2_t9_c1": (get_cosine_schedule_with_warmup, dict(num_warmup_steps=2,
                                                              num_training_steps=9,
                                                              num_cycles=1.0), 11),
    "constant_w3": (get_constant_schedule_with_warmup, dict(num_warmup_steps=3), 6),
}


def make_schedule(optimizer, spec):
    if spec is None:
        return None
    kind, warmup, total = spec
    fn = {"linear": get_linear_schedule_with_warmup,
          "cosine": get_cosine_schedule_with_warmup}[kind]
    return fn(optimizer, num_warmup_steps=warmup, num_training_steps=total)


def run(config_name, config, dtype, init, grads, out):
    tensors = {name: torch.tensor(init[name], dtype=dtype, requires_grad=True)
               for name, _ in PARAMS}
    groups = [dict(params=[tensors[p] for p in names], lr=lr, weight_decay=wd)
              for _, names, lr, wd in config["groups"]]
    opt_cls = getattr(torch.optim, config["opt"])
    kw = dict(config["kw"])
    kw["foreach"] = False
    optimizer = opt_cls(groups, **kw)
    scheduler = make_schedule(optimizer, config["schedule"])
    history = {name: [t.detach().numpy().astype(np.float64).copy()] for name, t in tensors.items()}
    lrs, norms = [], []
    for step in range(STEPS):
        for name, t in tensors.items():
            t.grad = None if (step, name) in NO_GRAD else torch.tensor(grads[name][step],
                                                                       dtype=dtype)
        if config["clip"] is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(list(tensors.values()),
                                                              config["clip"])))
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for name, t in tensors.items():
            history[name].append(t.detach().numpy().astype(np.float64).copy())
    tag = "float32" if dtype == torch.float32 else "float64"
    for name, values in history.items():
        out[f"{config_name}/{tag}/{name}"] = np.stack(values)
    out[f"{config_name}/lr"] = np.array(lrs, dtype=np.float64)
    if norms:
        out[f"{config_name}/{tag}/total_norm"] = np.array(norms, dtype=np.float64)


rng = np.random.RandomState(20261126)
init = {name: rng.uniform(-1.0, 1.0, shape).astype(np.float32) for name, shape in PARAMS}
grads = {name: (rng.normal(0.0, 1.0, (STEPS,) + shape) * 0.8).astype(np.float32)
         for name, shape in PARAMS}
out = {}
for name, _ in PARAMS:
    out[f"init/{name}"] = init[name].astype(np.float64)
    out[f"grads/{name}"] = grads[name].astype(np.float64)
out["has_grad"] = np.array([[0 if (s, n) in NO_GRAD else 1 for n, _ in PARAMS]
                            for s in range(STEPS)], dtype=np.int64)

for config_name, config in CONFIGS.items():
    for dtype in (torch.float32, torch.float64):
        run(config_name, config, dtype, init, grads, out)

for case, (norm_type, max_norm) in CLIP_CASES.items():
    tensors = [torch.zeros(shape, dtype=torch.float32, requires_grad=True) for _, shape in PARAMS]
    for t, (name, _) in zip(tensors, PARAMS):
        t.grad = torch.tensor(grads[name][0] * 3.0, dtype=torch.float32)
    total = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
    out[f"clip/{case}/total_norm"] = np.array([float(total)], dtype=np.float64)
    for t, (name, _) in zip(tensors, PARAMS):
        out[f"clip/{case}/{name}"] = t.grad.numpy().astype(np.float64)

dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
for name, (fn, kw, steps) in SCHEDULES.items():
    for g in dummy.param_groups:
        g["lr"] = 1.0
        g.pop("initial_lr", None)
    scheduler = fn(dummy, **kw)
    factors = []
    for _ in range(steps):
        factors.append(dummy.param_groups[0]["lr"])
        dummy.step()
        scheduler.step()
    out[f"schedule/{name}"] = np.array(factors, dtype=np.float64)

metadata = {
    "generator": "tests/golden/make_optim_goldens.py",
    "torch": torch.__version__,
    "numpy": np.__version__,
    "safetensors": safetensors.__version__,
    "transformers": transformers.__version__,
    "python": platform.python_version(),
    "configs": json.dumps({k: {**v, "kw": {kk: list(vv) if isinstance(vv, tuple) else vv
                                           for kk, vv in v["kw"].items()}}
                           for k, v in CONFIGS.items()}),
    "clip_cases": json.dumps({k: [str(a), b] for k, (a, b) in CLIP_CASES.items()}),
    "schedules": json.dumps({k: [v[0].__name__, v[1], v[2]] for k, v in SCHEDULES.items()}),
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "optim", "optim_golden.safetensors")
os.makedirs(os.path.dirname(path), exist_ok=True)
save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, path, metadata=metadata)
print(f"wrote {path}: {os.path.getsize(path)} bytes, {len(out)} tensors")
