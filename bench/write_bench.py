"""What writing codes to Parquet costs: pyarrow's writer per compression and encoding, on real codes.

Encodes the first 65,536 rows of a token file with a model, then writes that codes table four
times per variant into memory, three rounds; prints the best seconds and the size per 1M rows.
The last two variants are the job's own writer options (``writer_options``) on float32 codes and on
the same codes converted to float16 (``--code-dtype float16``; the conversion timed separately).

    .venv/bin/python -m bench.write_bench [--model-dir models/default] [--input FILE]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import pyarrow.parquet as pq

from seqcodec.model.loader import load
from seqcodec.transforms.formats import codes_table
from seqcodec.transforms.inference import flat_tokens
from seqcodec.transforms.parquet_sink import writer_options

VARIANTS = {
    "zstd, dictionary (the job's until 11-28)": {"compression": "zstd"},
    "zstd, no dictionary on code": {"compression": "zstd", "use_dictionary": ["id", "length"]},
    # the job's settings until 0773b12
    "zstd, no dictionary or statistics on code": {"compression": "zstd", "use_dictionary": ["id", "length"],
                                                  "write_statistics": ["id", "length"]},
    "no dictionary or stats on code, data page v2": {"compression": "zstd", "use_dictionary": ["id", "length"],
                                                      "write_statistics": ["id", "length"], "data_page_version": "2.0"},
    "no dictionary or stats, code byte stream split": {"compression": "zstd", "use_dictionary": ["id", "length"],
                                                       "write_statistics": ["id", "length"],
                                                       "use_byte_stream_split": ["code.list.element"]},
    "no dictionary or stats, code BSS, zstd level 1": {
        "compression": "zstd", "compression_level": 1, "use_dictionary": ["id", "length"],
        "write_statistics": ["id", "length"], "use_byte_stream_split": ["code.list.element"]},
    "no dictionary or stats, code BSS, lz4": {
        "compression": {"id": "zstd", "length": "zstd", "code": "lz4"}, "use_dictionary": ["id", "length"],
        "write_statistics": ["id", "length"], "use_byte_stream_split": ["code.list.element"]},
    "no dictionary or stats, code lz4": {"compression": {"id": "zstd", "length": "zstd", "code": "lz4"},
                                         "use_dictionary": ["id", "length"], "write_statistics": ["id", "length"]},
    "zstd, no dictionary": {"compression": "zstd", "use_dictionary": False},
    "snappy, no dictionary": {"compression": "snappy", "use_dictionary": False},
    "lz4, no dictionary": {"compression": "lz4", "use_dictionary": False},
    "uncompressed, no dictionary": {"compression": "none", "use_dictionary": False},
    "zstd, byte stream split": {"compression": "zstd", "use_dictionary": False, "use_byte_stream_split": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/default")
    parser.add_argument("--input", default="/tmp/seqcodec-bench/data/perf-1000000.parquet")
    args = parser.parse_args()
    rows = pq.ParquetFile(args.input).read_row_group(0).slice(0, 65_536)
    encoder = load(args.model_dir)
    codes = encoder.encode_flat(*flat_tokens(rows.column("tokens")))
    table = codes_table(rows.column("id").combine_chunks(), codes)
    start = time.perf_counter()
    half = codes.astype(np.float16)
    convert = time.perf_counter() - start
    table16 = codes_table(rows.column("id").combine_chunks(), half)
    per_million = 1e6 / (4 * table.num_rows)
    variants = [(name, table, options) for name, options in VARIANTS.items()] + [
        ("code uncompressed, no dictionary or stats (the job's writer, float32 codes)", table,
         writer_options(table.schema, ["code"])),
        ("the job's writer, float16 codes", table16, writer_options(table16.schema, ["code"]))]
    results: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in variants}
    for _ in range(3):
        for name, data, options in variants:
            buffer = io.BytesIO()
            start = time.perf_counter()
            with pq.ParquetWriter(buffer, data.schema, **options) as writer:
                for _ in range(4):
                    writer.write_table(data)
            results[name].append((time.perf_counter() - start, buffer.tell()))
    for name, runs in results.items():
        seconds = min(s for s, _ in runs)
        print(f"{name:76s} {seconds * per_million:5.2f} s and {runs[0][1] * per_million / 1e6:6.1f} MB per 1M rows")
    print(f"{'float32 -> float16 conversion (once)':76s} {convert * 4 * per_million:5.2f} s per 1M rows")


if __name__ == "__main__":
    main()
