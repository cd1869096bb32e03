"""Beam search against greedy decoding: held-out exact match, tokens and decode time per beam width.

Rows are the input's rows the model held out in training (its ``split.parquet``), or all rows
with ``--all-rows``. Each width decodes the same codes in one process, the widths alternating over
``--rounds`` rounds; times are the best round's, and their ratio to greedy's is the figure to quote.
``--reference`` also times TensorFlow's beam search (``tf_engine.beam_decoder``) at the first width
above 1 and checks that it chooses the same tokens::

    .venv/bin/python -m bench.beam_width --model-dir models/words --input data/words/sentences.parquet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import seqcodec
from seqcodec.model.data import read_token_sequences
from seqcodec.model.heldout import read_split, token_hashes


def scores(decoded: list[np.ndarray], rows: list[np.ndarray]) -> tuple[float, float]:
    """(exact match, token accuracy) of decoded rows against the originals."""
    exact = np.mean([np.array_equal(a, b) for a, b in zip(decoded, rows, strict=True)])
    right = sum(int((a == b).sum()) for a, b in zip(decoded, rows, strict=True))
    return float(exact), right / sum(r.size for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--widths", default="1,2,3,4")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--all-rows", action="store_true", help="every row, not only the held-out ones")
    p.add_argument("--reference", action="store_true", help="also TensorFlow's beam search, checked equal")
    args = p.parse_args(argv)

    data = read_token_sequences(args.input)
    codec = seqcodec.load(args.model_dir)
    if not args.all_rows:
        groups = read_split(args.model_dir, codec.manifest).groups(token_hashes(data.values, data.offsets))
        data = data.take(np.flatnonzero(groups == 1))  # GROUPS[1]: held out
    rows = [data.values[a:b] for a, b in zip(data.offsets[:-1], data.offsets[1:], strict=True)]
    codes = codec.encode(rows)
    widths = [int(w) for w in args.widths.split(",")]
    codecs = {w: seqcodec.load(args.model_dir, beam_width=w) for w in widths}
    best: dict[int, float] = {}
    decoded: dict[int, list[np.ndarray]] = {}
    for _ in range(args.rounds):
        for w in widths:
            start = time.perf_counter()
            decoded[w] = codecs[w].decode(codes)
            best[w] = min(best.get(w, np.inf), time.perf_counter() - start)
    print(f"{len(rows):,} {'held-out ' if not args.all_rows else ''}rows, {args.rounds} rounds", file=sys.stderr)
    print("| beam width | exact match | tokens | decode s (best) | time / greedy |")
    print("|---:|---:|---:|---:|---:|")
    for w in widths:
        exact, tokens = scores(decoded[w], rows)
        print(f"| {w} | {100 * exact:.2f}% | {100 * tokens:.2f}% | {best[w]:.2f} | {best[w] / best[widths[0]]:.2f}x |")
    if args.reference:
        from seqcodec.model.codec import SequenceCodec
        from seqcodec.model.tf_engine import KerasDecoder, load_network_file

        width = next(w for w in widths if w > 1)
        decoder = KerasDecoder(load_network_file(args.model_dir, Path(args.model_dir) / "decoder.keras"), codec.config,
                               width)
        tf_codec = SequenceCodec(codec.encoder, decoder, codec.config, codec.fingerprint)
        start = time.perf_counter()
        reference = tf_codec.decode(codes)
        seconds = time.perf_counter() - start
        same = sum(np.array_equal(a, b) for a, b in zip(reference, decoded[width], strict=True))
        print(f"TensorFlow beam search, width {width}: {seconds:.2f} s (one round, numpy's best "
              f"{best[width]:.2f} s); the same tokens on {same:,} of {len(rows):,} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
