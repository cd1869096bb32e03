"""Parquet in and out: check input files up front, read Arrow batches, write code/error shards."""

from __future__ import annotations

import dataclasses
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from model.data import InputDataError, token_list_type_error

METADATA_PREFIX = "seqcodec."


@dataclasses.dataclass(frozen=True)
class InputFiles:
    """What the up-front check learned: the files, their total rows and the id column's type."""

    paths: tuple[str, ...]
    rows: int
    id_type: pa.DataType


def match_files(pattern: str) -> list[str]:
    """Files matching ``pattern`` on any Beam filesystem, sorted; InputDataError if none."""
    try:
        results = FileSystems.match([pattern])
    except Exception as exc:  # a bad scheme or unreachable bucket: report it, do not crash
        raise InputDataError(f"{pattern}: cannot list files ({str(exc).splitlines()[0]})") from None
    paths = sorted(m.path for m in results[0].metadata_list)
    if not paths:
        raise InputDataError(f"{pattern}: no file matches")
    return paths


def read_schema(path: str) -> tuple[pa.Schema, int]:
    """The Arrow schema and row count from a Parquet footer; InputDataError names the file if unreadable."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            meta = pq.ParquetFile(handle).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputDataError(f"{path}: not a readable Parquet file ({reason})") from None


def inspect_inputs(pattern: str, id_column: str, tokens_column: str) -> InputFiles:
    """Check every input file before the job starts, so a bad file stops it before anything is written."""
    paths = match_files(pattern)
    total = 0
    id_type: pa.DataType | None = None
    for path in paths:
        schema, rows = read_schema(path)
        for column in (id_column, tokens_column):
            if column not in schema.names:
                raise InputDataError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
        problem = token_list_type_error(schema.field(tokens_column).type)
        if problem:
            raise InputDataError(f"{path}: column {tokens_column!r} {problem}")
        this_id = schema.field(id_column).type
        if pa.types.is_nested(this_id):
            raise InputDataError(f"{path}: column {id_column!r} is {this_id}; ids must be scalars")
        if id_type is None:
            id_type = this_id
        elif this_id != id_type:
            raise InputDataError(f"{path}: column {id_column!r} is {this_id} but {paths[0]} has {id_type}")
        total += rows
    assert id_type is not None
    return InputFiles(tuple(paths), total, id_type)


def code_schema(id_type: pa.DataType, code_size: int, metadata: dict[str, object]) -> pa.Schema:
    """Code shards: id, length and the length-prefixed code; model facts in the schema metadata."""
    return pa.schema(
        [("id", id_type), ("length", pa.int32()), ("code", pa.list_(pa.float32(), code_size))],
        metadata={f"{METADATA_PREFIX}{k}": json.dumps(v) for k, v in metadata.items()},
    )


def schema_metadata(schema: pa.Schema) -> dict[str, object]:
    """The ``seqcodec.*`` entries of a schema's metadata, decoded (empty if there are none)."""
    raw = schema.metadata or {}
    out = {}
    for key, value in raw.items():
        key = key.decode()
        if key.startswith(METADATA_PREFIX):
            out[key[len(METADATA_PREFIX) :]] = json.loads(value)
    return out


class ReadTokenBatches(beam.PTransform):
    """Read the checked files' row groups as Arrow tables, projected to the id and tokens columns."""

    def __init__(self, paths: tuple[str, ...], id_column: str, tokens_column: str) -> None:
        super().__init__()
        self.paths, self.columns = paths, [id_column, tokens_column]

    def expand(self, pbegin):
        # The checked list, not the glob again: a file that appears mid-run must not break the row count.
        return (
            pbegin
            | "Files" >> beam.Create(self.paths)
            | "Row groups" >> beam.io.ReadAllFromParquetBatched(columns=self.columns)
        )


class WriteTables(beam.PTransform):
    """Write Arrow tables as Parquet shards ``<prefix>-SSSSS-of-NNNNN.parquet`` (zstd)."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0) -> None:
        super().__init__()
        self.prefix, self.schema, self.num_shards = prefix, schema, num_shards

    def expand(self, tables):
        return tables | beam.io.WriteToParquetBatched(
            self.prefix,
            schema=self.schema,
            codec="zstd",
            file_name_suffix=".parquet",
            num_shards=self.num_shards,
        )


def count_rows(pattern: str) -> int:
    """Rows in the Parquet files matching ``pattern`` (0 if none), from their footers."""
    try:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # nothing written: no match
        return 0
    return sum(read_schema(path)[1] for path in paths)
