#!/usr/bin/env python3
"""Makes the BERT reference data lathe's C++ BERT is tested against, with Hugging Face
`transformers` + PyTorch (versions pinned below; other versions are refused unless --force).

Usage (from the repository root; HF_HUB_OFFLINE=1, nothing is downloaded):
  python3 -m venv ~/.cache/lathe/venv-torch
  ~/.cache/lathe/venv-torch/bin/pip install torch==2.9.1 transformers==4.57.1 safetensors numpy \
      sentence-transformers==5.1.2        # the last one is optional: it only cross-checks part 2
  scripts/fetch-assets.sh --model-only    # part 2 needs $LATHE_CACHE/models/all-MiniLM-L6-v2
  HF_HUB_OFFLINE=1 ~/.cache/lathe/venv-torch/bin/python tests/golden/make_bert_goldens.py \
      [--only tiny|minilm] [--minilm DIR] [--force]

Writes, relative to the repository root:

 1. tests/golden/bert/tiny/{config.json,model.safetensors}
      A tiny random BertForSequenceClassification (see TINY_CONFIG; seed 1234), saved with
      save_pretrained(safe_serialization=True): float32, 41 tensors, no position_ids buffer.
      LayerNorm weights/biases and every Linear bias get N(0, 0.1) noise added, so a test fails
      if one is dropped.
    tests/golden/bert/tiny_golden.safetensors  (every float tensor is F64, ids are I64)
      The reference is computed in float64 from EXACTLY the saved f32 weights: the model is
      reloaded from tiny/ with from_pretrained and cast with .double() (eager attention,
      train() mode; dropout is 0 so train == eval).
      input_ids, attention_mask, token_type_ids [3,11] I64; labels [3] I64
        lengths 11, 7, 4; pad id 0 after the end (mask 0 there, token type 0 there);
        input_ids[:,0] = 2; sequence 1 has token types 0,0,0,0,1,1,1 (sentence pair).
        position ids are 0..10 for every row (HF uses absolute positions, padding or not).
      last_hidden_state [3,11,32], pooler_output [3,32], logits [3,3]
        padded positions are included: HF masks keys only, so padded query rows hold the
        ordinary values of a row that attends to the sequence's real tokens.
      loss []  (0-dim) mean cross entropy over the 3 rows
      grad.<name> for every parameter (same names/shapes as tiny/model.safetensors), from
        loss.backward() of that forward.
      AdamW (torch.optim.AdamW, foreach=False) over the f64 model with HF Trainer's two groups,
        lr 1e-3, betas (0.9, 0.999), eps 1e-8, get_linear_schedule_with_warmup(3 warmup, 10
        total); 3 steps on the same batch, each = zero_grad, forward, backward, opt.step(),
        sched.step().
      step1.<name>, step2.<name>, step3.<name>: every parameter after step k
      lr.step1/2/3 []: the lr that step k used (0, 1e-3/3, 2e-3/3: step 1 runs at lr 0 yet
        still updates the moments); loss.step1/2/3 []: the loss of step k's forward
        (loss.step1 == loss).
      __metadata__: strings with every setting and the versions (see tiny_metadata()).

 2. tests/golden/bert/minilm_golden.safetensors from all-MiniLM-L6-v2 (BertModel, eval(),
    float64 copy of the f32 checkpoint) and tests/golden/bert/minilm_sentences.txt (16 lines,
    UTF-8, read as lines without the newline):
      input_ids, attention_mask, token_type_ids [16,T] I64: BertTokenizerFast, one batch,
        padding=True, truncation=True, max_length=128 (nothing is truncated)
      lengths [16] I64: attention_mask row sums
      last_hidden_state_packed [sum(lengths),384] F32: the rows of last_hidden_state at the
        unpadded positions, sentence 0's positions 0..len0-1 first, then sentence 1's, ...
        (the padded [16,T,384] tensor would not fit in 1 MB)
      embeddings [16,384] F64: mean of last_hidden_state over attention_mask, then L2
        normalised (torch.nn.functional.normalize, eps 1e-12): sentence-transformers'
        Transformer -> Pooling(mean) -> Normalize pipeline for this model.
    With sentence-transformers installed, embeddings are checked against
    SentenceTransformer(DIR).encode(...) to 1e-5.
"""
import argparse
import json
import os
import shutil
import struct
import sys

PINNED = {"torch": "2.9.1", "transformers": "4.57.1"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "golden", "bert")

SEED = 1234
TINY_CONFIG = dict(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
    initializer_range=0.2, num_labels=3, pad_token_id=0,
    id2label={0: "negative", 1: "neutral", 2: "positive"},
    label2id={"negative": 0, "neutral": 1, "positive": 2},
    problem_type="single_label_classification",
)
NOISE_STD = 0.1
LENGTHS = [11, 7, 4]
SEQ_LEN = 11
PAIR_SPLIT = 4  # sequence 1: token type 0 at positions 0..3, 1 at 4..6
LABELS = [2, 0, 1]
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.01
WARMUP, TOTAL, STEPS = 3, 10, 3
MINILM_MAX_LENGTH = 128


def check_versions(force):
    import torch
    import transformers
    have = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    bad = [f"{k} {have[k]} (pinned {v})" for k, v in PINNED.items() if have[k] != v]
    if bad:
        msg = "version mismatch: " + ", ".join(bad)
        if not force:
            sys.exit(msg + "; rerun with --force to generate anyway")
        print("warning: " + msg, file=sys.stderr)


def versions():
    import numpy
    import safetensors
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": numpy.__version__}


def no_decay(name):
    # HF Trainer 4.57.1 (Trainer.get_decay_parameter_names): no decay for parameters inside an
    # nn.LayerNorm or whose lower-cased name matches bias|layernorm|rmsnorm|(^|.)norm($|.)|_norm.
    # For BERT that is exactly: "bias" in name or "LayerNorm" in name.
    return "bias" in name or "LayerNorm" in name


def trainer_decay_names(model):
    from torch import nn
    from transformers.trainer_pt_utils import get_parameter_names
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return set(get_parameter_names(model, [nn.LayerNorm], patterns))


def save(path, tensors, metadata):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, path, metadata=metadata)
    # safetensors writes __metadata__ in hash-map order; rewrite the header with sorted keys
    # (data untouched, offsets are relative to the data) so reruns give identical bytes.
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__")
    order = sorted(header, key=lambda k: header[k]["data_offsets"])
    canon = {"__metadata__": dict(sorted(meta.items())), **{k: header[k] for k in order}}
    text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + blob[8 + n:])
    with safe_open(path, "pt") as f:
        assert f.metadata() == metadata and set(f.keys()) == set(tensors)
        assert all(torch.equal(f.get_tensor(k), tensors[k]) for k in tensors)
    os.chmod(path, 0o644)
    print(f"wrote {os.path.relpath(path, ROOT)}: {os.path.getsize(path)} bytes, "
          f"{len(tensors)} tensors")


def make_tiny():
    import torch
    from safetensors import safe_open
    from transformers import BertConfig, BertForSequenceClassification, \
        get_linear_schedule_with_warmup

    torch.manual_seed(SEED)
    config = BertConfig(**TINY_CONFIG)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * NOISE_STD)
    B, T = len(LENGTHS), SEQ_LEN
    input_ids = torch.zeros(B, T, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    token_type_ids = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        input_ids[b, :n] = torch.randint(1, TINY_CONFIG["vocab_size"], (n,))
        input_ids[b, 0] = 2
        attention_mask[b, :n] = 1
    token_type_ids[1, PAIR_SPLIT:LENGTHS[1]] = 1
    labels = torch.tensor(LABELS, dtype=torch.long)

    tiny_dir = os.path.join(OUT, "tiny")
    if os.path.isdir(tiny_dir):
        shutil.rmtree(tiny_dir)
    model.save_pretrained(tiny_dir, safe_serialization=True)
    weights = os.path.join(tiny_dir, "model.safetensors")
    for name in os.listdir(tiny_dir):
        os.chmod(os.path.join(tiny_dir, name), 0o644)
    with safe_open(weights, "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        saved_meta = f.metadata()
    print(f"wrote {os.path.relpath(tiny_dir, ROOT)}: {sorted(os.listdir(tiny_dir))}, "
          f"model.safetensors {os.path.getsize(weights)} bytes, metadata {saved_meta}")
    print(f"model.safetensors keys ({len(saved)}):")
    for k in sorted(saved):
        print(f"  {k} {str(saved[k].dtype).replace('torch.', '')} {list(saved[k].shape)}")
    names = [n for n, _ in model.named_parameters()]
    assert set(saved) == set(names), "saved keys differ from the parameter names"
    assert all(v.dtype == torch.float32 for v in saved.values())

    # The reference: reload the saved f32 file, then cast a copy to f64.
    ref, info = BertForSequenceClassification.from_pretrained(
        tiny_dir, output_loading_info=True, attn_implementation="eager")
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    for n, p in ref.named_parameters():
        assert torch.equal(p, saved[n]), n
    ref = ref.double()
    ref.train()

    def forward():
        return ref(input_ids=input_ids, attention_mask=attention_mask,
                   token_type_ids=token_type_ids, labels=labels)

    out = forward()
    out.loss.backward()
    # BertForSequenceClassification returns neither last_hidden_state nor pooler_output: run the
    # same f64 encoder again without grad and check it reproduces the logits bit for bit.
    with torch.no_grad():
        base = ref.bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids)
        check = ref.classifier(base.pooler_output)
    assert torch.equal(check, out.logits.detach()), "logits != classifier(pooler_output)"
    golden = {"input_ids": input_ids, "attention_mask": attention_mask,
              "token_type_ids": token_type_ids, "labels": labels}
    golden["last_hidden_state"] = base.last_hidden_state
    golden["pooler_output"] = base.pooler_output
    golden["logits"] = out.logits
    golden["loss"] = out.loss.reshape(())
    for n, p in ref.named_parameters():
        golden["grad." + n] = p.grad.clone()
        assert p.grad.dtype == torch.float64

    decay = [n for n, _ in ref.named_parameters() if not no_decay(n)]
    plain = [n for n, _ in ref.named_parameters() if no_decay(n)]
    assert set(decay) == trainer_decay_names(ref), "decay rule differs from HF Trainer's"
    params = dict(ref.named_parameters())
    opt = torch.optim.AdamW(
        [{"params": [params[n] for n in decay], "weight_decay": WEIGHT_DECAY},
         {"params": [params[n] for n in plain], "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS, foreach=False)
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=WARMUP,
                                            num_training_steps=TOTAL)
    lrs, losses = [], []
    for k in range(1, STEPS + 1):
        opt.zero_grad()
        o = forward()
        o.loss.backward()
        if k == 1:
            assert torch.equal(o.loss, out.loss)
            assert all(torch.equal(p.grad, golden["grad." + n]) for n, p in params.items())
        lrs.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == lrs[-1]
        losses.append(o.loss.item())
        opt.step()
        sched.step()
        golden[f"lr.step{k}"] = torch.tensor(lrs[-1], dtype=torch.float64)
        golden[f"loss.step{k}"] = o.loss.detach().reshape(())
        for n, p in params.items():
            golden[f"step{k}.{n}"] = p.detach().clone()

    meta = {
        "format": "pt",
        "generator": "tests/golden/make_bert_goldens.py",
        **{"version." + k: v for k, v in versions().items()},
        "config": json.dumps(TINY_CONFIG, sort_keys=True),
        "seed": str(SEED),
        "weights": "tests/golden/bert/tiny/model.safetensors (f32); reference = those weights "
                   "cast to f64, eager attention, train() mode, dropout 0",
        "noise": f"N(0,{NOISE_STD}) added to every LayerNorm weight/bias and every bias",
        "inputs": f"B={B} T={T} lengths={LENGTHS} pad_id=0 input_ids[:,0]=2 "
                  f"token_type_ids[1,{PAIR_SPLIT}:{LENGTHS[1]}]=1 labels={LABELS}",
        "loss": "0-dim F64, mean cross entropy; loss.stepK and lr.stepK are 0-dim too",
        "grad": "grad.<name>: d loss / d param for the first forward (== step 1's forward)",
        "optimizer": f"torch.optim.AdamW(foreach=False) lr={LR} betas={BETAS} eps={EPS}",
        "param_groups": f"group 0: weight_decay={WEIGHT_DECAY}, {len(decay)} params "
                        f"(name contains neither 'bias' nor 'LayerNorm'); group 1: "
                        f"weight_decay=0.0, {len(plain)} params (name contains 'bias' or "
                        f"'LayerNorm'), == HF Trainer 4.57.1 get_decay_parameter_names",
        "no_decay": json.dumps(plain),
        "scheduler": f"get_linear_schedule_with_warmup(num_warmup_steps={WARMUP}, "
                     f"num_training_steps={TOTAL}): step k (k=1,2,3; s=k-1 scheduler steps taken) "
                     f"uses lr {LR} * (s/{WARMUP} if s < {WARMUP} else "
                     f"max(0, ({TOTAL}-s)/({TOTAL}-{WARMUP})))",
        "steps": f"{STEPS} x (zero_grad, forward, backward, opt.step, sched.step) on the same "
                 "batch; stepK.<name> = params after step K",
        "lrs": json.dumps(lrs),
        "losses": json.dumps(losses),
    }
    save(os.path.join(OUT, "tiny_golden.safetensors"), golden, meta)
    print(f"tiny: loss {out.loss.item():.12f}, logits {out.logits.detach().tolist()}")
    print(f"tiny: lrs {lrs}, losses {losses}")
    print(f"tiny: {len(decay)} decayed params, {len(plain)} without decay: {plain}")
    return golden, meta


def make_minilm(model_dir):
    import torch
    import torch.nn.functional as F
    from transformers import BertModel, BertTokenizerFast

    if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
        sys.exit(f"{model_dir}/model.safetensors missing; run scripts/fetch-assets.sh --model-only")
    with open(os.path.join(OUT, "minilm_sentences.txt"), encoding="utf-8") as f:
        sentences = f.read().split("\n")
    if sentences and sentences[-1] == "":
        sentences.pop()
    assert len(sentences) == 16, len(sentences)

    tok = BertTokenizerFast.from_pretrained(model_dir)
    enc = tok(sentences, padding=True, truncation=True, max_length=MINILM_MAX_LENGTH,
              return_tensors="pt")
    model, info = BertModel.from_pretrained(model_dir, output_loading_info=True,
                                            attn_implementation="eager")
    if any(info[k] for k in ("missing_keys", "mismatched_keys")):
        sys.exit(f"MiniLM did not load cleanly: {info}")
    model = model.double().eval()
    with torch.no_grad():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  token_type_ids=enc["token_type_ids"]).last_hidden_state
    mask = enc["attention_mask"].to(torch.float64).unsqueeze(-1)
    pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = F.normalize(pooled, p=2, dim=1)
    lengths = enc["attention_mask"].sum(1)
    assert int(lengths.max()) < MINILM_MAX_LENGTH, "a sentence was truncated"
    packed = torch.cat([h[b, :int(n)] for b, n in enumerate(lengths)]).to(torch.float32)

    st_note = "not checked (sentence-transformers not installed)"
    try:
        import sentence_transformers
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("minilm: sentence-transformers not installed; cross-check skipped")
    else:
        st = SentenceTransformer(model_dir, device="cpu")
        ref = torch.from_numpy(st.encode(sentences, batch_size=16, convert_to_numpy=True))
        diff = (ref.to(torch.float64) - emb).abs().max().item()
        print(f"minilm: sentence-transformers {sentence_transformers.__version__} encode() "
              f"vs embeddings: max abs diff {diff:.3e}")
        if diff > 1e-5:
            sys.exit(f"minilm: embeddings differ from SentenceTransformer.encode by {diff}")
        st_note = (f"checked: sentence-transformers {sentence_transformers.__version__} "
                   f"encode() (f32) max abs diff {diff:.3e}")

    golden = {
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
        "token_type_ids": enc["token_type_ids"], "lengths": lengths,
        "last_hidden_state_packed": packed, "embeddings": emb,
    }
    meta = {
        "format": "pt",
        "generator": "tests/golden/make_bert_goldens.py",
        **{"version." + k: v for k, v in versions().items()},
        "model": "all-MiniLM-L6-v2 (scripts/fetch-assets.sh), BertModel, eval(), f32 "
                 "checkpoint cast to f64, eager attention",
        "sentences": "tests/golden/bert/minilm_sentences.txt, 16 lines",
        "tokenizer": f"BertTokenizerFast, padding=True, truncation=True, "
                     f"max_length={MINILM_MAX_LENGTH}, one batch",
        "last_hidden_state_packed": "F32 [sum(lengths),384]: last_hidden_state rows at "
                                    "unpadded positions, sentence-major",
        "embeddings": "F64 [16,384]: masked mean pooling then F.normalize(p=2, eps=1e-12)",
        "sentence_transformers": st_note,
    }
    save(os.path.join(OUT, "minilm_golden.safetensors"), golden, meta)
    print(f"minilm: T={enc['input_ids'].shape[1]}, lengths {lengths.tolist()}, "
          f"packed rows {packed.shape[0]}")
    return golden, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["tiny", "minilm"])
    ap.add_argument("--minilm", default=os.path.join(
        os.environ.get("LATHE_CACHE", os.path.expanduser("~/.cache/lathe")), "models",
        "all-MiniLM-L6-v2"))
    ap.add_argument("--force", action="store_true", help="run with unpinned versions")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    check_versions(args.force)
    import torch
    torch.set_num_threads(1)  # same reduction order on every machine
    os.makedirs(OUT, exist_ok=True)
    if args.only in (None, "tiny"):
        make_tiny()
    if args.only in (None, "minilm"):
        make_minilm(args.minilm)


if __name__ == "__main__":
    main()
