"""Held-out round trip of trained models: exact match, tokens by position, and tokens by edit distance.

Token accuracy counts tokens at their own position, so a decode that drops or repeats one word early
loses every later one. Tokens by edit distance (1 - Levenshtein / length, summed over rows) counts
what is right in order, whatever shifted. Comparing the two says whether a model that loses tokens
loses content or only places it a step off. Each model's held-out test set is rebuilt from its
manifest (same input, seed and validation fraction) as ``bench/beam_bench.py`` does:

    .venv/bin/python -m bench.heldout_scores --input data/words/sentences.parquet MODEL_DIR [MODEL_DIR ...]

``--by-length`` adds, per model, the same figures by sentence length, and for an autoregressive
decoder its tokens when fed the true previous token (teacher forcing, Keras): where greedy
decoding falls below that, a wrong word led to more. A sentence is exact under greedy decoding
exactly when it is exact under teacher forcing, so that gap can cost tokens but never exact matches.

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
    parser.add_argument("--by-length", action="store_true", help="also a table by sentence length per model")
    args = parser.parse_args()

    from seqcodec.model.data import read_token_sequences
    from seqcodec.model.loader import load
    from seqcodec.model.train import split

    data = read_token_sequences(args.input)
    print("| model | held-out rows | exact | tokens | tokens by edit distance |")
    print("|---|---:|---:|---:|---:|")
    tables = []
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
        if args.by_length:
            tables.append(by_length(model_dir, codec, test, values, distances))
    for table in tables:
        print("\n" + table)


LENGTHS = ((1, 7), (8, 11), (12, 15), (16, 19), (20, 29), (30, 1000))


def teacher_forced(model_dir: str, codec, test) -> np.ndarray | None:
    """Per token of ``test``: right when the decoder is fed the true previous tokens; None for a repeat decoder."""
    if codec.config.decoder != "autoregressive":
        return None
    from seqcodec.model.batches import pad_shifted
    from seqcodec.model.manifest import DECODER_FILE, ENCODER_FILE
    from seqcodec.model.tfenv import keras
    from seqcodec.model.train import teacher_inputs

    encoder, decoder = (keras.saving.load_model(f"{model_dir}/{name}", compile=False)
                        for name in (ENCODER_FILE, DECODER_FILE))
    right = []
    for start in range(0, len(test), 256):
        ids = pad_shifted(test.values, test.offsets, np.arange(start, min(start + 256, len(test))))
        previous = keras.ops.convert_to_tensor(teacher_inputs(ids, codec.config, 0.0, np.random.default_rng(0)))
        chosen = np.asarray(decoder([encoder(ids), previous])).argmax(-1)
        # Right-padded rows in order: the real steps, row by row, are the test tokens in order.
        right.append((chosen == ids - 1)[ids > 0])
    return np.concatenate(right)


def by_length(model_dir: str, codec, test, values: np.ndarray, distances: np.ndarray) -> str:
    """A markdown table of one model's held-out figures by sentence length."""
    lengths = test.lengths
    right = values == test.values
    forced = teacher_forced(model_dir, codec, test)
    lines = [f"{model_dir}, by length:", "",
             "| words | rows | exact | tokens | tokens, teacher-forced |", "|---|---:|---:|---:|---:|"]
    for low, high in LENGTHS:
        rows = (lengths >= low) & (lengths <= high)
        if not rows.any():
            continue
        tokens = np.repeat(rows, lengths)
        name = f"{low}-{high}" if high < 1000 else f"{low}+"
        forced_cell = f"{forced[tokens].mean():.1%}" if forced is not None else "n/a"
        lines.append(f"| {name} | {rows.sum():,} | {(distances[rows] == 0).mean():.1%} | "
                     f"{right[tokens].mean():.1%} | {forced_cell} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
