"""Decode cost per sequence against encode, in memory, for several model directories in one process.

Each model encodes and decodes the same sequences, interleaved round by round, so machine load hits
all alike; prints rows/s and the decode/encode cost ratio per model and round.
Run: .venv/bin/python -m bench.decoder_cost --data data/words/sentences.parquet --rows 6000 MODEL_DIR...
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+")
    parser.add_argument("--data", default="data/words/sentences.parquet")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from seqcodec.model.loader import load
    from seqcodec.transforms.inference import flat_tokens

    tokens = pq.read_table(args.data, columns=["tokens"]).column("tokens").slice(0, args.rows)
    values, offsets = flat_tokens(tokens)
    rows = len(tokens)
    codecs = {m: load(m) for m in args.model_dirs}
    codes = {m: c.encode_flat(values, offsets) for m, c in codecs.items()}
    for m, c in codecs.items():  # warm-up: traces
        c.decode_flat(codes[m][: min(rows, 600)])
    results: dict[str, list] = {m: [] for m in codecs}
    for _ in range(args.rounds):
        for m, c in codecs.items():
            start = time.perf_counter()
            c.decode_flat(codes[m])
            decode = time.perf_counter() - start
            start = time.perf_counter()
            c.encode_flat(values, offsets)
            encode = time.perf_counter() - start
            entry = {"decoder": c.config.decoder, "vocab_size": c.config.vocab_size,
                     "encode_rows_per_s": round(rows / encode), "decode_rows_per_s": round(rows / decode),
                     "decode_cost_vs_encode": round(decode / encode, 2)}
            results[m].append(entry)
            print(m, json.dumps(entry), flush=True)
    print(json.dumps({"rows": rows, "data": args.data, "results": results}, indent=1))


if __name__ == "__main__":
    main()
