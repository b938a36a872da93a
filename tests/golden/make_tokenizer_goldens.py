#!/usr/bin/env python3
"""Makes the WordPiece parity goldens from Hugging Face `tokenizers` (pinned below).

Usage:
  python3 -m venv /tmp/tok && /tmp/tok/bin/pip install tokenizers==0.20.3
  /tmp/tok/bin/python tests/golden/make_tokenizer_goldens.py [--minilm DIR]

DIR defaults to $LATHE_CACHE/models/all-MiniLM-L6-v2 (LATHE_CACHE defaults to ~/.cache/lathe);
it must hold tokenizer.json. Writes, relative to the repository root:
  tests/golden/tokenizer_goldens.jsonl   one record per case (see below)
  tests/golden/tokenizer_unicode.json    per-256-code-point-block hashes of BertNormalizer output
  data/unicode_tables.cpp                the character classes BertNormalizer/BertPreTokenizer use

Inputs are the lines of tests/golden/tokenizer_corpus.txt (UTF-8, one case per line, blank lines
kept) followed by GENERATED lines holding characters a text file cannot carry readably: control
characters, NUL, lone combining marks, zero-width and bidi controls, private use, unassigned.

The first record is {"generated": [...]}: the generated lines. Every later record is
{"mode": M, "inputs": [line numbers], "max_length": N, "small": [ENC...], "small_cased": [...],
"minilm": [...]}; line numbers count the corpus lines from 0, then the generated lines. ENC is
{"ids": [...], "mask": number of leading ones (the rest are zeros), "type": "00011" (pairs only;
type ids are all zero otherwise)}.
  single: inputs [a], no truncation, no padding
  pair:   inputs [a, b], truncation longest_first to max_length, padding to max_length
  trunc:  inputs [a], truncation to max_length, padding to max_length
  batch:  inputs [a, b, c, ...] encoded as one batch, padding to the longest (no truncation)
small = BertWordPieceTokenizer(tests/data/small_vocab.txt) (lowercase, accents stripped),
small_cased = the same with lowercase=False, strip_accents=False (every 8th case only),
minilm = Tokenizer.from_file(all-MiniLM-L6-v2/tokenizer.json) with its stored truncation/padding
switched off and the per-mode settings applied.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import unicodedata

import tokenizers
from tokenizers import BertWordPieceTokenizer, Tokenizer, normalizers, pre_tokenizers

PINNED = "0.20.3"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GENERATED = [
    "nul\x00inside", "\x00", "bell\x07ring", "\x01\x02\x03\x04\x05\x06\x08", "a\x7fb", "\x80\x9f c1",
    "vt\x0bff\x0cend", "nel\x85line", "cr\rlf\nboth\r\n", "fs\x1cgs\x1drs\x1eus\x1fend",
    "replacement \ufffd char", "\ufffd\ufffd", "zwsp\u200bzwnj\u200czwj\u200dlrm\u200erlm\u200f",
    "ls\u2028ps\u2029", "soft\u00adhyphen", "word\u2060joiner", "\ufeffbom start",
    "bidi \u202aemb\u202c \u202eover\u202c \u2066iso\u2069", "arabic\u0600sign \u061cmark",
    "pua \ue000\uf8ff \U000f0000 \U0010fffd", "unassigned \u0378 \u0380 \U000e0000",
    "tags \U000e0001\U000e0041\U000e007f", "variation \u2764\ufe0f \u0030\ufe0f\u20e3",
    "e\u0301 a\u0308\u0301 o\u0302\u0323", "\u0301leading mark", "mark\u0301\u0301\u0301",
    "hangul \u1100\u1161\u11a8 \uac00\ud7a3", "compat \uf900\ufa6d \U0002f800",
    "ext \U00020000 \U0002a6df \U0002a700 \U0002b81f \U0002b820 \U0002b91f \U0002b920 \U0002ceaf",
    "\u0130\u0131 I\u0307 \u03a3\u03c2\u03c3 \u1e9e\u00df \u01c5\u01c8",
    "\u212b \u2126 \u212a \u00c5",
    "nbsp\u00a0ogham\u1680en\u2002em\u2003thin\u2009hair\u200anarrow\u202fmath\u205fideo\u3000",
    "\t\t\t", "\x00\x01 \x02", "tab\ttab", "[CLS]\x00[SEP]", "\u00ad[MASK]\u00ad",
    "x" * 99 + "\u0301", "\u00e9" * 100, "e\u0301" * 60, "\U0001f600" * 101, "\u4e2d" * 200,
    "!" * 150, "a" * 100 + "!" + "b" * 101,
]
for cp in list(range(0, 0x20)) + list(range(0x7f, 0xa1)) + [0x2028, 0x2029, 0xfeff, 0xfffd]:
    GENERATED.append("ctl" + chr(cp) + "x " + chr(cp))


def fnv1a(data, h=0x811C9DC5):
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        v = not (0xD800 <= cp < 0xE000) and pred(cp)
        if v and start is None:
            start = cp
        if not v and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def write_tables(path):
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    chin = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                      strip_accents=False, lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    nfd = normalizers.NFD()
    pt = pre_tokenizers.BertPreTokenizer()
    tables = {
        # Code points NFD changes (so utf8proc's newer decompositions are not applied to others).
        "decomposes": ranges(lambda cp: nfd.normalize_str(chr(cp)) != chr(cp)),
        # Marks strip_accents removes after NFD (its Unicode tables are older than utf8proc's).
        "nonspacing_mark": ranges(lambda cp: strip.normalize_str(chr(cp)) == ""),
        "dropped": ranges(lambda cp: clean.normalize_str(chr(cp)) == ""),
        "to_space": ranges(lambda cp: cp != 32 and clean.normalize_str(chr(cp)) == " "),
        "chinese": ranges(lambda cp: chin.normalize_str(chr(cp)) != chr(cp)),
        "whitespace": ranges(lambda cp: len(pt.pre_tokenize_str("a" + chr(cp) + "a")) == 2),
        "punctuation": ranges(lambda cp: len(pt.pre_tokenize_str("a" + chr(cp) + "a")) == 3),
    }
    with open(path, "w") as f:
        f.write("// Generated by tests/golden/make_tokenizer_goldens.py from Hugging Face tokenizers "
                f"{PINNED}.\n// The character classes of BertNormalizer (clean_text, handle_chinese_chars, "
                "strip_accents) and BertPreTokenizer,\n// taken from the library itself so that lathe splits and "
                "drops exactly the same code points\n// whatever Unicode version utf8proc carries.\n")
        f.write('#include "unicode_tables.h"\n\nnamespace lathe::data::unicode {\n\n')
        for name, rs in tables.items():
            f.write(f"const CodeRange k_{name}[] = {{\n")
            for i in range(0, len(rs), 4):
                f.write("    " + " ".join(f"{{0x{a:X}, 0x{b:X}}}," for a, b in rs[i:i + 4]) + "\n")
            f.write(f"}};\nconst std::size_t k_{name}_size = {len(rs)};\n\n")
        f.write("}  // namespace lathe::data::unicode\n")
    if shutil.which("clang-format"):
        subprocess.run(["clang-format", "-i", path], check=True)


def write_unicode_sweep(path):
    out = {}
    for name, lower in (("lowercase", True), ("cased", False)):
        n = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                       strip_accents=None if lower else False, lowercase=lower)
        blocks = []
        for block in range(0x110000 // 256):
            h = 0x811C9DC5
            for cp in range(block * 256, block * 256 + 256):
                if 0xD800 <= cp < 0xE000:
                    continue
                h = fnv1a(n.normalize_str(chr(cp)).encode("utf-8") + b"\xff", h)
            blocks.append(f"{h:08x}")
        out[name] = blocks
    json.dump(out, open(path, "w"), separators=(",", ":"))


def enc_dict(e, pair):
    # Right padding makes the mask a run of ones then zeros: store the count of ones. Type ids are
    # all zero except in pairs, where they are stored in full.
    ones = sum(e.attention_mask)
    assert e.attention_mask == [1] * ones + [0] * (len(e.ids) - ones)
    out = {"ids": e.ids, "mask": ones}
    if pair:
        out["type"] = "".join(map(str, e.type_ids))
    else:
        assert not any(e.type_ids)
    return out


def main():
    ap = argparse.ArgumentParser()
    cache = os.environ.get("LATHE_CACHE", os.path.expanduser("~/.cache/lathe"))
    ap.add_argument("--minilm", default=os.path.join(cache, "models", "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    if tokenizers.__version__ != PINNED:
        sys.exit(f"need tokenizers=={PINNED}, found {tokenizers.__version__}")

    small = BertWordPieceTokenizer(os.path.join(ROOT, "tests/data/small_vocab.txt"), lowercase=True)
    cased = BertWordPieceTokenizer(os.path.join(ROOT, "tests/data/small_vocab.txt"), lowercase=False,
                                   strip_accents=False)
    minilm = Tokenizer.from_file(os.path.join(args.minilm, "tokenizer.json"))
    minilm.no_truncation()
    minilm.no_padding()
    toks = {"small": small, "small_cased": cased, "minilm": minilm}

    corpus = open(os.path.join(ROOT, "tests/golden/tokenizer_corpus.txt"), encoding="utf-8").read()
    lines = corpus.split("\n")[:-1] + GENERATED

    cases = [("single", [i], 0) for i in range(len(lines))]
    cases += [("pair", [i, i + 1], 24 if i % 2 else 9) for i in range(0, len(lines) - 1, 7)]
    cases += [("trunc", [i], 12 if i % 2 else 5) for i in range(0, len(lines), 13)]
    cases += [("batch", list(range(i, i + 5)), 0) for i in range(3, len(lines) - 5, 97)]

    out_path = os.path.join(ROOT, "tests/golden/tokenizer_goldens.jsonl")
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"generated": GENERATED}, separators=(",", ":")) + "\n")
        for n, (mode, numbers, max_length) in enumerate(cases):
            rec = {"mode": mode, "inputs": numbers, "max_length": max_length}
            inputs = [lines[i] for i in numbers]
            for name, tok in toks.items():
                if name == "small_cased" and n % 8:
                    continue
                tok.no_truncation()
                tok.no_padding()
                if mode in ("pair", "trunc"):
                    tok.enable_truncation(max_length, strategy="longest_first")
                    tok.enable_padding(length=max_length, pad_id=tok.token_to_id("[PAD]"))
                    encs = [tok.encode(*inputs)]
                elif mode == "batch":
                    tok.enable_padding(pad_id=tok.token_to_id("[PAD]"))
                    encs = tok.encode_batch(inputs)
                else:
                    encs = [tok.encode(inputs[0])]
                rec[name] = [enc_dict(e, mode == "pair") for e in encs]
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases -> {out_path}")
    write_unicode_sweep(os.path.join(ROOT, "tests/golden/tokenizer_unicode.json"))
    write_tables(os.path.join(ROOT, "data/unicode_tables.cpp"))


if __name__ == "__main__":
    main()
