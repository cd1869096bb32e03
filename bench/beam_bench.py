"""Beam search against greedy decoding: held-out exact match, token accuracy and decode cost per width.

Rebuilds the held-out test set that ``seqcodec train`` reported for the model (same files, seed and
validation fraction, read from its manifest), round-trips it at each ``--widths`` value and times the
decode alone, widths alternating round by round so machine load hits all alike. Beam search runs
on the numpy engine; ``--reference`` also times TensorFlow's (``tf_engine.beam_decoder``) at the
first width above 1, once, and counts the rows on which both choose the same tokens:

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
    parser.add_argument("--reference", action="store_true", help="also TensorFlow's beam search, compared")
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
    if args.reference:
        width = next(w for w in widths if w > 1)
        reference(args.model_dir, base, codes, width, codecs, min(results[width]["seconds"]))


def reference(model_dir: str, base, codes: np.ndarray, width: int, codecs: dict, numpy_seconds: float) -> None:
    """TensorFlow's beam search on the same codes: its time, and the rows where it chooses what numpy does."""
    from pathlib import Path

    from seqcodec.model.codec import SequenceCodec
    from seqcodec.model.tf_engine import KerasDecoder, load_network_file

    network = load_network_file(model_dir, Path(model_dir) / "decoder.keras")
    tf_codec = SequenceCodec(base.encoder, KerasDecoder(network, base.config, width), base.config, base.fingerprint)
    tf_codec.decode(codes[:64])  # trace outside the timing
    start = time.perf_counter()
    theirs = tf_codec.decode(codes)
    seconds = time.perf_counter() - start
    ours = codecs[width].decode(codes)
    same = sum(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    print(f"width {width}: TensorFlow {seconds:.2f} s, numpy {numpy_seconds:.2f} s (best round); "
          f"the same tokens on {same:,} of {len(codes):,} rows")


if __name__ == "__main__":
    main()
