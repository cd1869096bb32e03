"""Held-out round trip of trained models: exact match, tokens by position, and tokens by edit distance.

Token accuracy counts tokens at their own position, so a decode that drops or repeats one word early
loses every later one. Tokens by edit distance (1 - Levenshtein / length, summed over rows) counts
what is right in order, whatever shifted. Comparing the two says whether a model that loses tokens
loses content or only places it a step off. Each model's held-out test set is rebuilt from its
manifest (same input, seed and validation fraction) as ``bench/beam_bench.py`` does:

    .venv/bin/python -m bench.heldout_scores --input data/words/sentences.parquet MODEL_DIR [MODEL_DIR ...]

No number here is an assertion: this is a measuring tool.
"""

from __future__ import annotations

import argparse

import numpy as np


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token lists (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="the files the models were trained on")
    parser.add_argument("model_dirs", nargs="+")
    args = parser.parse_args()

    from seqcodec.model.data import read_token_sequences
    from seqcodec.model.loader import load
    from seqcodec.model.train import split

    data = read_token_sequences(args.input)
    print("| model | held-out rows | exact | tokens | tokens by edit distance |")
    print("|---|---:|---:|---:|---:|")
    for model_dir in args.model_dirs:
        codec = load(model_dir)
        settings = codec.manifest.metrics["settings"]
        _, _, test = split(data, settings["validation_fraction"], settings["seed"])
        values, offsets = codec.decode_flat(codec.encode_flat(test.values, test.offsets))
        distances = np.array([
            edit_distance(test.values[start:end].tolist(), values[start:end].tolist())
            for start, end in zip(offsets[:-1], offsets[1:], strict=True)
        ])
        exact = (distances == 0).mean()
        tokens = (values == test.values).mean()
        in_order = 1 - distances.sum() / len(values)
        print(f"| {model_dir} | {len(test):,} | {exact:.2%} | {tokens:.2%} | {in_order:.2%} |")


if __name__ == "__main__":
    main()
