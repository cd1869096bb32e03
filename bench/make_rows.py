"""Make a large token Parquet input for benchmarks by resampling the shipped English-word sample.

Rows are drawn with replacement from ``data/sample/words.parquet`` (English words, tokens a-z = 0..25),
so lengths and letters follow the real word distribution; ids are new (0..N-1). The file is written
in row groups of ``--row-group-size`` rows (default 65,536) with zstd, like a typical upstream export.
Memory stays bounded: one row group is built at a time.

Run: .venv/bin/python -m bench.make_rows --rows 1000000 --out /tmp/seqcodec-bench/data/rows-1000000.parquet
Generated data belongs in a temp or bench output directory, never in the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "words.parquet"
DEFAULT_ROW_GROUP = 65_536


def make_rows(
    rows: int,
    out: str | os.PathLike,
    *,
    source: str | os.PathLike = SAMPLE,
    row_group_size: int = DEFAULT_ROW_GROUP,
    seed: int = 0,
) -> Path:
    """Write ``rows`` rows (``id`` int64, ``tokens`` list<int32>) sampled from ``source``; return the path.

    Deterministic for a given ``seed``. Written to a temporary name and renamed, so a half-written
    file never looks finished (the benchmark reuses an existing file of the right row count).
    """
    if rows < 1 or row_group_size < 1:
        raise ValueError("rows and row_group_size must be at least 1")
    words = pq.read_table(source, columns=["tokens"]).column("tokens").combine_chunks()
    if not pa.types.is_list(words.type):
        words = words.cast(pa.list_(pa.int32()))
    rng = np.random.default_rng(seed)
    schema = pa.schema([("id", pa.int64()), ("tokens", words.type)], metadata=provenance(source, seed))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
        for start in range(0, rows, row_group_size):
            n = min(row_group_size, rows - start)
            picks = pa.array(rng.integers(0, len(words), size=n))
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            writer.write_table(pa.table({"id": ids, "tokens": words.take(picks)}, schema=schema),
                               row_group_size=row_group_size)
    partial.replace(path)
    return path


def provenance(source: str | os.PathLike, seed: int) -> dict[str, str]:
    """Schema metadata naming what the rows were sampled from, so a changed sample means new data."""
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    return {"bench.source": str(source), "bench.source_sha256": digest, "bench.seed": str(seed)}


def ensure_rows(rows: int, out_dir: str | os.PathLike, row_group_size: int = DEFAULT_ROW_GROUP, seed: int = 0,
                source: str | os.PathLike = SAMPLE) -> Path:
    """``rows-<N>.parquet`` under ``out_dir``; (re)generated unless it has that shape and the same source."""
    path = Path(out_dir) / f"rows-{rows}.parquet"
    if path.exists():
        file = pq.ParquetFile(path)
        meta = file.metadata
        have = {k.decode(): v.decode() for k, v in (file.schema_arrow.metadata or {}).items()}
        want = provenance(source, seed)
        if (meta.num_rows == rows and meta.num_row_groups == -(-rows // row_group_size)
                and all(have.get(k) == v for k, v in want.items())):
            return path
    return make_rows(rows, path, source=source, row_group_size=row_group_size, seed=seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--out", help="output file (default /tmp/seqcodec-bench/data/rows-N.parquet)")
    p.add_argument("--source", default=str(SAMPLE), help="Parquet file with a list<int> tokens column to sample")
    p.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out or f"/tmp/seqcodec-bench/data/rows-{args.rows}.parquet"
    path = make_rows(args.rows, out, source=args.source, row_group_size=args.row_group_size, seed=args.seed)
    meta = pq.ParquetFile(path).metadata
    print(f"wrote {meta.num_rows} rows in {meta.num_row_groups} row groups to {path} "
          f"({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
