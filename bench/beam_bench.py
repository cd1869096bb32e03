"""Beam search against greedy decoding: held-out exact match, token accuracy and decode cost per width.

Rebuilds the held-out test set that ``seqcodec train`` reported for the model (same files, seed and
validation fraction, read from its manifest), round-trips it at each ``--widths`` value and times the
decode alone, widths alternating round by round so machine load hits all alike:

    .venv/bin/python -m bench.beam_bench --model-dir models/words --input 'data/words/*.parquet'

No number here is an assertion: this is a measuring tool.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/words")
    parser.add_argument("--input", default="data/words/*.parquet", help="the files the model was trained on")
    parser.add_argument("--widths", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from seqcodec.model.data import read_token_sequences
    from seqcodec.model.loader import load
    from seqcodec.model.train import split

    base = load(args.model_dir)
    settings = base.manifest.metrics["settings"]
    _, _, test = split(read_token_sequences(args.input), settings["validation_fraction"], settings["seed"])
    reported = base.manifest.metrics["test"]
    codes = base.encode_flat(test.values, test.offsets)
    widths = [int(w) for w in args.widths.split(",")]
    codecs = {w: load(args.model_dir, beam_width=w) for w in widths}
    results: dict[int, dict] = {w: {"seconds": []} for w in widths}
    for round_ in range(args.rounds):
        for w in widths if round_ % 2 == 0 else widths[::-1]:
            codecs[w].decode_flat(codes[:64])  # trace outside the timing
            start = time.perf_counter()
            values, offsets = codecs[w].decode_flat(codes)
            results[w]["seconds"].append(time.perf_counter() - start)
            same = values == test.values
            wrong = np.add.reduceat(~same, offsets[:-1])
            results[w].update(exact_match=float((wrong == 0).mean()), token_accuracy=float(same.mean()))
    greedy = min(results[widths[0]]["seconds"])
    print(f"{len(test)} held-out sequences of {args.model_dir}; training reported exact "
          f"{reported['exact_match']:.2%}, tokens {reported['token_accuracy']:.2%}")
    print("| beam width | held-out exact | held-out tokens | decode rows/s | cost vs width 1 |")
    print("|---:|---:|---:|---:|---:|")
    for w in widths:
        best = min(results[w]["seconds"])
        print(f"| {w} | {results[w]['exact_match']:.2%} | {results[w]['token_accuracy']:.2%} | "
              f"{len(test) / best:,.0f} | {best / greedy:.2f}x |")
    print(json.dumps({str(w): r for w, r in results.items()}))


if __name__ == "__main__":
    main()
