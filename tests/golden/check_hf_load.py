#!/usr/bin/env python3
"""Checks that a folder written by lathe's save_pretrained loads in Hugging Face `transformers`
as a BertForSequenceClassification, exactly and without re-initialising anything.

Usage (same venv and pins as make_bert_goldens.py: torch 2.9.1, transformers 4.57.1):
  HF_HUB_OFFLINE=1 ~/.cache/lathe/venv-torch/bin/python tests/golden/check_hf_load.py DIR \
      [--input FILE] [--expect-logits FILE] [--write-logits OUT] [--atol 1e-4] \
      [--labels negative,neutral,positive] [--allow-extra-keys] [--dtype float64|float32] [--force]

Checks, failing with exit status 1 and one line "check_hf_load: FAIL: <reason>" on stderr:
  - DIR/config.json parses, model_type is "bert", and its id2label has num_labels entries keyed
    "0".."n-1" with label2id its inverse (--labels also fixes the names, in order);
  - DIR/model.safetensors exists and BertForSequenceClassification.from_pretrained(DIR,
    output_loading_info=True) reports no missing, unexpected or mismatched keys and no errors
    (a missing key is a newly initialised weight);
  - the file's key set equals the model's state_dict key set (HF silently drops a few extra
    keys such as bert.embeddings.position_ids; --allow-extra-keys accepts those), and every
    loaded tensor equals the file's tensor exactly (after casting to the model's dtype);
  - if DIR/vocab.txt exists, BertTokenizer.from_pretrained(DIR) loads and its vocabulary fits
    config.vocab_size (and, with DIR/tokenizer.json, BertTokenizerFast agrees on a sample);
  - with --input FILE (safetensors holding input_ids, optional attention_mask (default ones),
    optional token_type_ids (default zeros), all integer), the model runs in eval() mode
    (cast to --dtype, float64 by default) and its logits are compared with `logits` from
    --expect-logits FILE, or else from FILE itself if it holds `logits`; the max abs difference
    is printed and must be <= --atol (1e-4). --write-logits OUT writes the inputs and HF's
    logits (F64 when --dtype float64) to OUT, so a file without logits can become a golden.
Exit status 0 and a final "check_hf_load: OK ..." line when everything passes.
"""
import argparse
import json
import os
import sys

PINNED = {"torch": "2.9.1", "transformers": "4.57.1"}


def fail(reason):
    print(f"check_hf_load: FAIL: {reason}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--input", help="safetensors with input_ids[, attention_mask, token_type_ids]")
    ap.add_argument("--expect-logits", help="safetensors holding the expected `logits`")
    ap.add_argument("--write-logits", help="write the inputs and HF's logits here")
    ap.add_argument("--atol", type=float, default=1e-4)
    ap.add_argument("--labels", help="comma-separated expected id2label names, in id order")
    ap.add_argument("--allow-extra-keys", action="store_true")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--force", action="store_true", help="run with unpinned versions")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import transformers
    from safetensors import safe_open
    from transformers import BertConfig, BertForSequenceClassification

    have = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    bad = [f"{k} {have[k]} (pinned {v})" for k, v in PINNED.items() if have[k] != v]
    if bad and not args.force:
        fail("version mismatch: " + ", ".join(bad) + "; rerun with --force")
    transformers.logging.set_verbosity_error()  # this script prints what matters itself

    d = args.dir
    if not os.path.isdir(d):
        fail(f"{d} is not a directory")
    cfg_path, weights = os.path.join(d, "config.json"), os.path.join(d, "model.safetensors")
    if not os.path.isfile(cfg_path):
        fail(f"{cfg_path} missing")
    if not os.path.isfile(weights):
        fail(f"{weights} missing")

    # --- config and labels
    try:
        with open(cfg_path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"config.json does not parse: {e}")
    if raw.get("model_type") != "bert":
        fail(f"config.json model_type is {raw.get('model_type')!r}, not 'bert'")
    try:
        config = BertConfig.from_pretrained(d)
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        fail(f"BertConfig.from_pretrained raised {type(e).__name__}: {e}")
    raw_id2label = raw.get("id2label")
    if not isinstance(raw_id2label, dict) or not raw_id2label:
        fail("config.json has no id2label")
    n = config.num_labels
    if sorted(raw_id2label) != sorted(str(i) for i in range(n)):
        fail(f"config.json id2label keys {sorted(raw_id2label)} are not '0'..'{n - 1}'")
    labels = [config.id2label[i] for i in range(n)]
    label2id = raw.get("label2id")
    if label2id is not None and label2id != {name: i for i, name in enumerate(labels)}:
        fail(f"config.json label2id {label2id} is not the inverse of id2label {labels}")
    if args.labels is not None and labels != args.labels.split(","):
        fail(f"id2label is {labels}, expected {args.labels.split(',')}")
    print(f"config: {config.num_hidden_layers} layers, hidden {config.hidden_size}, heads "
          f"{config.num_attention_heads}, vocab {config.vocab_size}, hidden_act "
          f"{config.hidden_act}, id2label {labels}")

    # --- weights
    try:
        model, info = BertForSequenceClassification.from_pretrained(
            d, output_loading_info=True, attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        fail(f"from_pretrained raised {type(e).__name__}: {str(e).splitlines()[0]}")
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        print(f"{k}: {sorted(map(str, info[k]))}")
    if info["missing_keys"]:
        fail(f"{len(info['missing_keys'])} weights missing (newly initialized): "
             f"{sorted(info['missing_keys'])}")
    if info["unexpected_keys"]:
        fail(f"unexpected keys: {sorted(info['unexpected_keys'])}")
    if info["mismatched_keys"]:
        fail(f"shape-mismatched keys: {info['mismatched_keys']}")
    if info["error_msgs"]:
        fail(f"load errors: {info['error_msgs']}")

    state = model.state_dict()
    with safe_open(weights, "pt") as f:
        file_keys = set(f.keys())
        extra = sorted(file_keys - set(state))
        absent = sorted(set(state) - file_keys)
        if absent:
            fail(f"model.safetensors lacks {absent}")
        if extra and not args.allow_extra_keys:
            fail(f"model.safetensors has keys HF does not keep: {extra} (--allow-extra-keys)")
        dtypes = set()
        for k, v in state.items():
            t = f.get_tensor(k)
            dtypes.add(str(t.dtype).replace("torch.", ""))
            if tuple(t.shape) != tuple(v.shape):
                fail(f"{k}: file shape {list(t.shape)} != model shape {list(v.shape)}")
            if not torch.equal(t.to(v.dtype), v):
                fail(f"{k}: loaded tensor differs from the file's")
    print(f"weights: {len(state)} tensors, dtypes {sorted(dtypes)}, all loaded exactly"
          + (f"; extra keys ignored by HF: {extra}" if extra else ""))

    # --- tokenizer
    if os.path.isfile(os.path.join(d, "vocab.txt")):
        from transformers import BertTokenizer, BertTokenizerFast
        try:
            tok = BertTokenizer.from_pretrained(d)
        except Exception as e:  # noqa: BLE001
            fail(f"BertTokenizer.from_pretrained raised {type(e).__name__}: {e}")
        if len(tok) > config.vocab_size:
            fail(f"tokenizer has {len(tok)} tokens, config.vocab_size is {config.vocab_size}")
        sample = "Hello, world! A sample sentence."
        ids = tok(sample)["input_ids"]
        if max(ids) >= config.vocab_size:
            fail(f"tokenizer produced id {max(ids)} >= vocab_size {config.vocab_size}")
        if os.path.isfile(os.path.join(d, "tokenizer.json")):
            try:
                fast = BertTokenizerFast.from_pretrained(d)
            except Exception as e:  # noqa: BLE001
                fail(f"BertTokenizerFast.from_pretrained raised {type(e).__name__}: {e}")
            if fast(sample)["input_ids"] != ids:
                fail("BertTokenizerFast and BertTokenizer disagree on a sample sentence")
        print(f"tokenizer: {len(tok)} tokens, {sample!r} -> {ids}")
    else:
        print("tokenizer: no vocab.txt, not checked")

    # --- logits
    compared = ""
    if args.input:
        if not os.path.isfile(args.input):
            fail(f"{args.input} missing")
        with safe_open(args.input, "pt") as f:
            keys = set(f.keys())
            if "input_ids" not in keys:
                fail(f"{args.input} has no input_ids")
            input_ids = f.get_tensor("input_ids").long()
            mask = (f.get_tensor("attention_mask").long() if "attention_mask" in keys
                    else torch.ones_like(input_ids))
            types = (f.get_tensor("token_type_ids").long() if "token_type_ids" in keys
                     else torch.zeros_like(input_ids))
            expected = f.get_tensor("logits") if "logits" in keys else None
        if input_ids.dim() != 2 or mask.shape != input_ids.shape or types.shape != input_ids.shape:
            fail(f"input shapes differ or are not 2-D: input_ids {list(input_ids.shape)}, "
                 f"attention_mask {list(mask.shape)}, token_type_ids {list(types.shape)}")
        source = args.input
        if args.expect_logits:
            with safe_open(args.expect_logits, "pt") as f:
                if "logits" not in f.keys():
                    fail(f"{args.expect_logits} has no logits")
                expected = f.get_tensor("logits")
            source = args.expect_logits
        model = model.to(getattr(torch, args.dtype)).eval()
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask,
                           token_type_ids=types).logits
        if args.write_logits:
            from safetensors.torch import save_file
            save_file({"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types,
                       "logits": logits.contiguous()}, args.write_logits,
                      metadata={"format": "pt", "source": f"check_hf_load.py {d}",
                                "dtype": args.dtype, "transformers": transformers.__version__,
                                "torch": torch.__version__})
            print(f"wrote {args.write_logits}: logits {list(logits.shape)} {args.dtype}")
        if expected is None:
            print(f"logits {list(logits.shape)} (nothing to compare with): {logits.tolist()}")
        else:
            if tuple(expected.shape) != tuple(logits.shape):
                fail(f"expected logits {list(expected.shape)} from {source}, HF gives "
                     f"{list(logits.shape)}")
            diff = (expected.to(torch.float64) - logits.to(torch.float64)).abs().max().item()
            print(f"logits: max abs diff {diff:.3e} vs {source} (atol {args.atol:g})")
            if not diff <= args.atol:  # also catches NaN
                fail(f"logits differ from {source} by {diff:.3e} > atol {args.atol:g}")
            compared = f", logits match to {diff:.1e}"
    print(f"check_hf_load: OK {d}: {len(state)} weights loaded exactly{compared}")


if __name__ == "__main__":
    main()
