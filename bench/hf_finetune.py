#!/usr/bin/env python3
"""lathe-finetune's recipe with Hugging Face transformers.Trainer on the CPU (reference run).

Fine-tunes a BERT checkpoint (by default all-MiniLM-L6-v2) for sequence classification on
labelled TSV files with the same recipe as `lathe-finetune`, so that docs/results.md can put
the two side by side (quality and wall time on the same cores):

  * AdamW, betas 0.9/0.999, eps 1e-8, weight decay 0.01 except biases and LayerNorm weights
    (Trainer's own grouping: parameters of nn.LayerNorm modules and names containing "bias")
  * linear warmup for ceil(warmup_ratio * total_steps) steps, then linear decay to 0
  * gradient-norm clipping at 1.0, batch 32, max length 64 tokens (truncation), dynamic padding
  * label ids by sorted label name (negative=0, positive=1)
  * evaluation on dev every --eval-every steps (0 = at each epoch end) and at the last step;
    the checkpoint with the best dev macro-F1 is loaded at the end and evaluated on test
  * --pooling cls: BertForSequenceClassification (pooler + dropout + linear);
    --pooling mean: mean of the token states over the attention mask + dropout + linear
    (no pooler), head initialised like BERT: normal(0, 0.02), bias 0.
    NOTE: the default here is --pooling cls (Hugging Face's standard head); lathe-finetune's
    default is mean, so pass --pooling explicitly to both programs when comparing.

Environment (the venv ~/.cache/lathe/venv-torch; nothing is downloaded, HF_HUB_OFFLINE=1):
  torch 2.9.1, transformers 4.57.1, tokenizers 0.22.2, numpy 2.4.6, safetensors 0.8.0,
  plus, installed for Trainer:  pip install accelerate==1.11.0 psutil==7.2.2

Full recipe (3 epochs, cls head, 2 threads), next to `lathe-finetune --pooling cls --threads 2`:

  nice -n 5 ~/.cache/lathe/venv-torch/bin/python bench/hf_finetune.py \\
      --model ~/.cache/lathe/models/all-MiniLM-L6-v2 \\
      --train ~/.cache/lathe/data/movie-review-snippets/train.tsv \\
      --dev ~/.cache/lathe/data/movie-review-snippets/dev.tsv \\
      --test ~/.cache/lathe/data/movie-review-snippets/test.tsv \\
      --pooling cls --threads 2 --out runs/hf-finetune-cls

Outputs in --out: summary.json (versions, threads, recipe, dev best, test metrics, timings),
log_history.json (Trainer's train/eval log), trainer/ (Trainer's checkpoints). The last line
on stdout is the summary as one line of JSON (Trainer's logs and progress go to stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

# Offline before transformers / huggingface_hub are imported: nothing comes from the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation is up front, not timed

WALL_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import accelerate  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402
from transformers.models.bert.modeling_bert import BertPreTrainedModel  # noqa: E402

HOME = Path.home()
DEFAULT_MODEL = HOME / ".cache/lathe/models/all-MiniLM-L6-v2"
DEFAULT_DATA = HOME / ".cache/lathe/data/movie-review-snippets"


# ---------------------------------------------------------------------------------------------
# command line (names and defaults follow lathe-finetune)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="lathe-finetune's recipe with Hugging Face Trainer on the CPU (reference).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="Hugging Face BERT directory")
    p.add_argument("--train", default=str(DEFAULT_DATA / "train.tsv"), help="training TSV")
    p.add_argument("--dev", default=str(DEFAULT_DATA / "dev.tsv"), help="dev TSV (evaluation)")
    p.add_argument("--test", default=str(DEFAULT_DATA / "test.tsv"),
                   help="test TSV (evaluated once with the best model; '' = none)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--label-field", default="label")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after N optimizer steps (0 = epochs decide)")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=64,
                   help="tokens per example incl. [CLS]/[SEP]; longer ones are truncated")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="warmup steps = ceil(ratio * total steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate on dev and checkpoint every N steps (0 = at each epoch end)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--pooling", choices=["cls", "mean"], default="cls",
                   help="cls = BertForSequenceClassification (pooler); mean = masked mean "
                        "(NB: lathe-finetune's default is mean)")
    p.add_argument("--subset", type=int, default=0,
                   help="train on a seeded stratified subset of N examples (0 = all)")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="Trainer's LengthGroupedSampler (shuffle, then sort by length inside "
                        "pools of 50 batches), the closest to lathe's length-pooled batcher; "
                        "--no-group-by-length = plain random batches")
    p.add_argument("--optim", default=None,
                   help="TrainingArguments.optim (default: Trainer's, adamw_torch_fused "
                        "with torch >= 2.8)")
    p.add_argument("--out", default="runs/hf-finetune", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    if a.epochs <= 0 or a.batch_size <= 0 or a.max_len < 3 or a.threads <= 0:
        p.error("--epochs, --batch-size, --threads must be positive and --max-len >= 3")
    if not 0.0 <= a.warmup_ratio <= 1.0:
        p.error("--warmup-ratio must be in [0, 1]")
    if a.max_steps < 0 or a.eval_every < 0 or a.subset < 0:
        p.error("--max-steps, --eval-every and --subset must be >= 0")
    return a


# ---------------------------------------------------------------------------------------------
# data


def read_tsv(path: str, text_field: str, label_field: str) -> list[tuple[str, str]]:
    """Plain tab-separated file with a header row; no quoting (like lathe's TSV reader)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        try:
            ti, li = header.index(text_field), header.index(label_field)
        except ValueError:
            sys.exit(f"{path}: the header {header} lacks '{text_field}' or '{label_field}'")
        for n, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != len(header):
                sys.exit(f"{path}:{n}: {len(cols)} fields, the header has {len(header)}")
            rows.append((cols[ti], cols[li]))
    return rows


def stratified_subset(rows, n: int, seed: int):
    """A seeded subset of n rows keeping the label proportions (largest remainder per label).

    Same contract as lathe-finetune's --subset, but a different RNG, so not the same rows."""
    if n <= 0 or n >= len(rows):
        return rows
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, (_, y) in enumerate(rows):
        by_label.setdefault(y, []).append(i)
    labels = sorted(by_label)
    exact = [n * len(by_label[y]) / len(rows) for y in labels]
    take = [int(math.floor(e)) for e in exact]
    for k in sorted(range(len(labels)), key=lambda k: exact[k] - take[k], reverse=True):
        if sum(take) >= n:
            break
        take[k] += 1
    keep: list[int] = []
    for y, t in zip(labels, take):
        idx = np.array(by_label[y])
        keep.extend(rng.permutation(idx)[:t].tolist())
    keep.sort()  # file order; the Trainer's sampler shuffles
    return [rows[i] for i in keep]


class EncodedDataset(torch.utils.data.Dataset):
    """A list of tokenised examples (dicts), which DataCollatorWithPadding pads per batch."""

    def __init__(self, features: list[dict]):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def encode(rows, tokenizer, label2id: dict[str, int], max_len: int, path: str,
           sort_by_length: bool = False):
    texts = [t for t, _ in rows]
    full = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
    enc = tokenizer(texts, truncation=True, max_length=max_len)
    feats = []
    for i, (_, y) in enumerate(rows):
        if y not in label2id:
            sys.exit(f"{path}: label '{y}' (row {i + 2}) does not occur in the training data")
        feats.append({
            "input_ids": enc["input_ids"][i],
            "token_type_ids": enc["token_type_ids"][i],
            "attention_mask": enc["attention_mask"][i],
            "labels": label2id[y],
        })
    if sort_by_length:
        # Evaluation only: metrics do not depend on the order, and sorted batches pad the least
        # (lathe's evaluation batcher does the same).
        feats.sort(key=lambda f: len(f["input_ids"]))
    lengths = np.array([len(x) for x in full])
    stats = {
        "size": len(rows),
        "tokens_p50_p90_p99_max": [int(np.percentile(lengths, q, method="inverted_cdf"))
                                   for q in (50, 90, 99)] + [int(lengths.max())],
        "truncated": int((lengths > max_len).sum()),
    }
    return EncodedDataset(feats), stats


# ---------------------------------------------------------------------------------------------
# model


class BertMeanPoolingClassifier(BertPreTrainedModel):
    """BertModel (no pooler) -> masked mean of the last hidden states -> dropout -> linear."""

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None \
            else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                **kwargs):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(h.shape[:2], dtype=h.dtype, device=h.device)
        m = attention_mask.to(h.dtype).unsqueeze(-1)
        pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_model(args, labels: list[str]):
    id2label = dict(enumerate(labels))
    label2id = {y: i for i, y in id2label.items()}
    common = dict(num_labels=len(labels), id2label=id2label, label2id=label2id)
    if args.pooling == "cls":
        model = BertForSequenceClassification.from_pretrained(args.model, **common)
    else:
        model = BertMeanPoolingClassifier.from_pretrained(args.model, **common)
    # The new head, explicitly as BERT initialises it: normal(0, initializer_range), bias 0
    # (from_pretrained already does this; repeated so the script does not depend on it).
    std = model.config.initializer_range
    with torch.no_grad():
        nn.init.normal_(model.classifier.weight, mean=0.0, std=std)
        nn.init.zeros_(model.classifier.bias)
    return model


# ---------------------------------------------------------------------------------------------
# metrics


def classification_metrics(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> dict:
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)  # rows gold, columns predicted
    np.add.at(cm, (gold, pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "macro_f1": float(f1.mean()),
        "per_label_f1": f1.tolist(),
        "confusion": cm.tolist(),
    }


def make_compute_metrics(num_labels: int):
    def compute_metrics(ev):
        logits = ev.predictions[0] if isinstance(ev.predictions, tuple) else ev.predictions
        m = classification_metrics(np.argmax(logits, axis=-1), np.asarray(ev.label_ids),
                                   num_labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    return compute_metrics


class EvaluateAtLastStep(TrainerCallback):
    """lathe-finetune also evaluates (and checkpoints) at the final step when it is not a
    multiple of --eval-every; Trainer's step strategy alone would skip that evaluation."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


# ---------------------------------------------------------------------------------------------
# environment summary


def torch_build_info() -> dict:
    """The CPU-relevant part of torch.__config__.show() / parallel_info(), summarised."""
    cfg = torch.__config__.show()
    info: dict = {}
    for line in cfg.splitlines():
        s = line.strip().lstrip("- ").strip()
        if "Math Kernel Library" in s:
            info["mkl"] = s.split(" for ")[0]
        elif "MKL-DNN" in s or "oneDNN" in s:
            info["onednn"] = s.split(" (Git")[0]
        elif s.startswith("OpenMP"):
            info["openmp"] = s
        elif s.startswith("CPU capability usage:"):
            info["cpu_capability"] = s.split(":", 1)[1].strip()
        elif s.startswith("Build settings:"):
            settings = dict(kv.strip().split("=", 1) for kv in s[len("Build settings:"):]
                            .split(", ") if "=" in kv and not kv.strip().startswith("CXX_FLAGS"))
            info["build"] = {k: settings[k] for k in (
                "BLAS_INFO", "LAPACK_INFO", "USE_MKL", "USE_MKLDNN", "USE_OPENMP", "BUILD_TYPE",
                "CUDA_VERSION") if k in settings}
    m = re.search(r"ATen parallel backend: (\S+)", torch.__config__.parallel_info())
    info["parallel_backend"] = m.group(1) if m else None
    info["mkl_available"] = torch.backends.mkl.is_available()
    info["mkldnn_available"] = torch.backends.mkldnn.is_available()
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    # ---- data ----
    train_rows = read_tsv(args.train, args.text_field, args.label_field)
    dev_rows = read_tsv(args.dev, args.text_field, args.label_field)
    test_rows = read_tsv(args.test, args.text_field, args.label_field) if args.test else []
    full_train = len(train_rows)
    train_rows = stratified_subset(train_rows, args.subset, args.seed)
    labels = sorted({y for _, y in train_rows})
    if len(labels) < 2:
        sys.exit(f"the training data has {len(labels)} distinct label(s); need at least 2")
    label2id = {y: i for i, y in enumerate(labels)}

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    train_ds, train_stats = encode(train_rows, tokenizer, label2id, args.max_len, args.train)
    dev_ds, dev_stats = encode(dev_rows, tokenizer, label2id, args.max_len, args.dev, True)
    test_ds, test_stats = (encode(test_rows, tokenizer, label2id, args.max_len, args.test, True)
                           if test_rows else (None, None))
    log(f"data: train {len(train_ds)} (of {full_train}), dev {len(dev_ds)}, "
        f"test {len(test_ds) if test_ds else 0}; labels {labels}; truncated at {args.max_len} "
        f"tokens: train {train_stats['truncated']}, dev {dev_stats['truncated']}")

    # ---- model ----
    model = build_model(args, labels)
    n_params = sum(p.numel() for p in model.parameters())

    # ---- schedule: the same step arithmetic as lathe-finetune ----
    steps_per_epoch = math.ceil(len(train_ds) / args.batch_size)  # the last batch is kept
    total_steps = args.max_steps if args.max_steps > 0 else args.epochs * steps_per_epoch
    warmup_steps = math.ceil(args.warmup_ratio * total_steps)
    log_every = max(1, min(10, total_steps // 50))
    strategy = "steps" if args.eval_every > 0 else "epoch"

    targs = dict(
        output_dir=str(out / "trainer"),
        overwrite_output_dir=True,
        use_cpu=True,
        seed=args.seed,
        data_seed=args.seed,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=max(args.batch_size, 64),
        gradient_accumulation_steps=1,
        num_train_epochs=args.epochs,
        max_steps=total_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        lr_scheduler_type="linear",
        warmup_steps=warmup_steps,
        max_grad_norm=args.max_grad_norm,
        eval_strategy=strategy,
        save_strategy=strategy,
        load_best_model_at_end=True,
        metric_for_best_model="macro_f1",
        greater_is_better=True,
        save_total_limit=1,  # with load_best_model_at_end: the best and the latest are kept
        logging_strategy="steps",
        logging_steps=log_every,
        report_to="none",
        fp16=False,
        bf16=False,
        group_by_length=args.group_by_length,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        dataloader_drop_last=False,
        disable_tqdm=args.quiet,
    )
    if args.eval_every > 0:
        targs["eval_steps"] = args.eval_every
        targs["save_steps"] = args.eval_every
    if args.optim:
        targs["optim"] = args.optim
    training_args = TrainingArguments(**targs)

    callbacks = []
    if args.eval_every > 0 and total_steps % args.eval_every != 0:
        callbacks.append(EvaluateAtLastStep())
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=make_compute_metrics(len(labels)),
        callbacks=callbacks,
    )
    log(f"model: {args.model}, {args.pooling} pooling, {n_params} parameters, "
        f"attention {model.config._attn_implementation}; training: {total_steps} steps "
        f"({steps_per_epoch} per epoch), batch {args.batch_size}, lr {args.lr} with "
        f"{warmup_steps} warmup steps (linear), weight decay {args.weight_decay}, "
        f"optimizer {training_args.optim.value}, {torch.get_num_threads()} threads")

    # ---- train ----
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its log dicts to stdout
        result = trainer.train()
    train_seconds = time.perf_counter() - t0
    steps_done = trainer.state.global_step
    full_epochs, rem = divmod(steps_done, steps_per_epoch)
    examples_seen = full_epochs * len(train_ds) + rem * args.batch_size
    threads_after = torch.get_num_threads()

    evals = [h for h in trainer.state.log_history if "eval_macro_f1" in h]
    best = max(evals, key=lambda h: h["eval_macro_f1"]) if evals else None  # first of ties
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))

    # ---- the best model (loaded by the Trainer) on dev and test ----
    num_labels = len(labels)

    def evaluate(ds):
        t = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            pred = trainer.predict(ds)
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        m = classification_metrics(np.argmax(logits, -1), pred.label_ids, num_labels)
        m["loss"] = float(pred.metrics.get("test_loss", float("nan")))
        m["count"] = len(ds)
        m["seconds"] = time.perf_counter() - t
        return m

    dev_best = evaluate(dev_ds)
    test_m = evaluate(test_ds) if test_ds is not None else None
    wall_seconds = time.perf_counter() - WALL_START

    summary = {
        "program": "bench/hf_finetune.py (transformers.Trainer)",
        "model": args.model,
        "labels": labels,
        "steps": steps_done,
        "epochs": steps_done / steps_per_epoch,
        "train_seconds": train_seconds,
        "train_examples_per_second": examples_seen / max(train_seconds, 1e-9),
        "examples_seen": examples_seen,
        "train_loss": float(result.training_loss),
        "wall_seconds": wall_seconds,
        "threads": threads_after,
        "best": {
            "step": best["step"] if best else None,
            "dev_macro_f1": best["eval_macro_f1"] if best else None,
            "dev_accuracy": best["eval_accuracy"] if best else None,
            "checkpoint": trainer.state.best_model_checkpoint,
        },
        "dev": dev_best,
        "test": test_m,
        "recipe": {
            "pooling": args.pooling,
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "eval_batch_size": training_args.per_device_eval_batch_size,
            "max_len": args.max_len,
            "warmup_ratio": args.warmup_ratio,
            "warmup_steps": warmup_steps,
            "weight_decay": args.weight_decay,
            "no_decay": "biases and nn.LayerNorm parameters (Trainer.get_decay_parameter_names)",
            "adam": {"betas": [training_args.adam_beta1, training_args.adam_beta2],
                     "eps": training_args.adam_epsilon},
            "optimizer": training_args.optim.value,
            "schedule": "linear",
            "max_grad_norm": args.max_grad_norm,
            "eval_every": args.eval_every,
            "eval_strategy": strategy,
            "group_by_length": args.group_by_length,
            "dropout": {"hidden": model.config.hidden_dropout_prob,
                        "attention": model.config.attention_probs_dropout_prob,
                        "head": model.config.classifier_dropout
                        if model.config.classifier_dropout is not None
                        else model.config.hidden_dropout_prob},
            "attn_implementation": model.config._attn_implementation,
            "seed": args.seed,
            "subset": args.subset,
            "train_size": len(train_ds),
            "full_train_size": full_train,
        },
        "data": {"train": train_stats, "dev": dev_stats, "test": test_stats},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "accelerate": accelerate.__version__,
            "tokenizers": __import__("tokenizers").__version__,
            "numpy": np.__version__,
            "torch_build": torch_build_info(),
        },
        "machine": {"cpu": cpu_model(), "cores_visible": os.cpu_count(),
                    "threads_requested": args.threads,
                    "interop_threads": torch.get_num_interop_threads()},
        "args": vars(args),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    if test_m is not None:
        cm = test_m["confusion"]
        w = max(len(y) for y in labels)
        lines = [f"test: {test_m['count']} examples, loss {test_m['loss']:.4f}, accuracy "
                 f"{test_m['accuracy']:.4f}, macro-F1 {test_m['macro_f1']:.4f}",
                 "confusion (rows gold, columns predicted):",
                 " " * (w + 2) + "  ".join(f"{y:>{w}}" for y in labels)]
        for y, row in zip(labels, cm):
            lines.append(f"  {y:>{w}}" + "".join(f"  {c:>{w}}" for c in row))
        print("\n".join(lines), file=sys.stderr)
    one_line = {
        "program": "hf_finetune",
        "pooling": args.pooling,
        "threads": threads_after,
        "steps": steps_done,
        "best_step": summary["best"]["step"],
        "dev_macro_f1": summary["best"]["dev_macro_f1"],
        "test_accuracy": test_m["accuracy"] if test_m else None,
        "test_macro_f1": test_m["macro_f1"] if test_m else None,
        "train_seconds": round(train_seconds, 3),
        "train_examples_per_second": round(summary["train_examples_per_second"], 3),
        "wall_seconds": round(wall_seconds, 3),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "summary": str(out / "summary.json"),
    }
    print(json.dumps(one_line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
