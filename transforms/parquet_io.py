"""Parquet in and out: check token and code files up front, read Arrow batches, write code/decoded/error shards."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from seqcodec.model.data import directory_pattern, require_columns, token_list_type_error
from seqcodec.model.errors import InputDataError, first_line
from seqcodec.model.manifest import Manifest
from seqcodec.transforms.formats import schema_metadata
from seqcodec.transforms.parquet_sink import ParquetTableSink, WriteShards
from seqcodec.transforms.partition import matching_paths, partition_inputs
from seqcodec.transforms.table_coder import ArrowTableCoder  # noqa: F401 - registers the coder of pa.Table
from seqcodec.transforms.validate import CODE_VALUE_TYPES

log = logging.getLogger("seqcodec")


MIN_SPLIT_BYTES, MAX_SPLIT_BYTES = 1 << 20, 64 << 20
# Rows per Arrow table handed on at once (``--max-batch-rows``): bigger row groups are sliced, which
# bounds a worker's memory per element.
MAX_BATCH_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class InputFiles:
    """What the up-front check learned: the files, their total rows and the id column's type."""

    paths: tuple[str, ...]
    rows: int
    id_type: pa.DataType
    bytes: int = 0  # the files' sizes, for splitting the read


def match_files(pattern: str | list[str]) -> dict[str, int]:
    """Files matching ``pattern`` (or the Parquet files of a directory) on any Beam filesystem: path -> bytes, sorted.

    A list is taken as exact files (e.g. an Iceberg snapshot's data files). InputDataError if none.
    """
    if isinstance(pattern, list):
        try:
            results = FileSystems.match(pattern)
        except Exception as exc:  # a file the table names is gone: report it, do not crash
            raise InputDataError(f"{pattern[0]}: cannot read the table's files ({first_line(exc)})") from None
        return {m.path: m.size_in_bytes for r in results for m in r.metadata_list}
    committed = partition_inputs(pattern)
    if committed is not None:  # a seqcodec partition's folder: the files its commit names, wherever they are
        if not committed:
            raise InputDataError(f"{pattern}: the committed run wrote no file there")
        results = FileSystems.match(committed)
        return {m.path: m.size_in_bytes for r in results for m in r.metadata_list}
    pattern = directory_pattern(pattern, is_directory(pattern))
    try:
        results = FileSystems.match([pattern])
    except Exception as exc:  # a bad scheme or unreachable bucket: report it, do not crash
        raise InputDataError(f"{pattern}: cannot list files ({first_line(exc)})") from None
    sizes = {m.path: m.size_in_bytes for m in sorted(results[0].metadata_list, key=lambda m: m.path)}
    if not sizes:
        raise InputDataError(f"{pattern}: no file matches")
    return sizes


def is_directory(path: str) -> bool:
    """A local directory, or on an object store a prefix with objects under it (given as ``gs://b/dir`` or ``.../``)."""
    if FileSystems.get_scheme(path) is None:
        return os.path.isdir(path)
    if any(c in path for c in "*?["):
        return False
    return bool(matching_paths(path.rstrip("/") + "/*"))


def read_schema(path: str) -> tuple[pa.Schema, int]:
    """The Arrow schema and row count from a Parquet footer; InputDataError names the file if unreadable."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            meta = pq.ParquetFile(handle).metadata
            return meta.schema.to_arrow_schema(), meta.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise unreadable(path, exc) from None


def unreadable(path: str, exc: BaseException) -> InputDataError:
    """The one-line error for a file that is not readable Parquet."""
    return InputDataError(f"{path}: not a readable Parquet file ({first_line(exc)})")


def check_id_type(
    path: str, schema: pa.Schema, id_column: str, seen: pa.DataType | None, first_path: str
) -> pa.DataType:
    """The id column's type; InputDataError if it is not a scalar or differs from the first file's."""
    this_id = schema.field(id_column).type
    if pa.types.is_nested(this_id):
        raise InputDataError(f"{path}: column {id_column!r} is {this_id}; ids must be scalars")
    if seen is not None and this_id != seen:
        raise InputDataError(f"{path}: column {id_column!r} is {this_id} but {first_path} has {seen}")
    return this_id


def inspect_inputs(pattern: str, id_column: str, tokens_column: str) -> InputFiles:
    """Check every input file before the job starts, so a bad file stops it before anything is written."""
    sizes = match_files(pattern)
    paths = list(sizes)
    total = 0
    id_type: pa.DataType | None = None
    for path in paths:
        schema, rows = read_schema(path)
        require_columns(path, schema.names, {id_column: "--id-column", tokens_column: "--tokens-column"})
        problem = token_list_type_error(schema.field(tokens_column).type)
        if problem:
            raise InputDataError(f"{path}: column {tokens_column!r} {problem}")
        id_type = check_id_type(path, schema, id_column, id_type, paths[0])
        total += rows
    assert id_type is not None
    return InputFiles(tuple(paths), total, id_type, sum(sizes.values()))


def code_type_error(field_type: pa.DataType) -> str | None:
    """Why a column type cannot hold codes, or None for a (fixed-size or large) list of float32/float64."""
    if not (pa.types.is_list(field_type) or pa.types.is_large_list(field_type)
            or pa.types.is_fixed_size_list(field_type)):
        return f"is {field_type}, not a list of float16, float32 or float64"
    if field_type.value_type not in CODE_VALUE_TYPES:
        return f"is a list of {field_type.value_type}, not of float16, float32 or float64"
    return None


@dataclasses.dataclass(frozen=True)
class CodeFiles:
    """What the up-front check of the code files learned."""

    paths: tuple[str, ...]
    rows: int
    id_type: pa.DataType
    unmarked: tuple[str, ...]  # files without a model fingerprint in their metadata
    bytes: int = 0  # the files' sizes, for splitting the read


def _first_rows_width(file: pq.ParquetFile, column: str) -> int | None:
    """The most common code width among the first rows of a variable-width code column (None if all null)."""
    for batch in file.iter_batches(batch_size=1024, columns=[column]):
        widths = pc.drop_null(pc.list_value_length(batch.column(0))).to_numpy(zero_copy_only=False)
        if widths.size:
            values, counts = np.unique(widths, return_counts=True)
            return int(values[np.argmax(counts)])
    return None


def inspect_codes(pattern: str | list[str], id_column: str, code_column: str, manifest: Manifest,
                  model_dir: str) -> CodeFiles:
    """Check every code file against the model before the job starts; InputDataError (one line) if unusable.

    Codes whose metadata names another model are refused, naming both fingerprints. Files with no
    fingerprint (not written by ``seqcodec encode``) are accepted when their code width matches
    the model: the fixed width of the column, or else the usual width of its first rows.
    """
    fingerprint, code_size = manifest.fingerprint, manifest.code_size
    sizes = match_files(pattern)
    paths = list(sizes)
    total = 0
    id_type: pa.DataType | None = None
    unmarked = []
    for path in paths:
        try:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                file = pq.ParquetFile(handle)
                schema, rows = file.schema_arrow, file.metadata.num_rows
                require_columns(path, schema.names, {id_column: "--id-column", code_column: "--code-column"})
                code_type = schema.field(code_column).type
                problem = code_type_error(code_type)
                if problem:
                    raise InputDataError(f"{path}: column {code_column!r} {problem}")
                facts = schema_metadata(schema)
                made_by = facts.get("fingerprint")
                if made_by is not None and made_by != fingerprint:
                    raise InputDataError(
                        f"{path}: these codes were made by model {made_by}, but --model-dir {model_dir} is model "
                        f"{fingerprint}; decode them with the model that made them"
                    )
                if pa.types.is_fixed_size_list(code_type):
                    width, seen = code_type.list_size, "its column type"
                elif made_by is None:
                    width, seen = _first_rows_width(file, code_column), "its first rows"
                else:
                    width, seen = facts.get("code_size"), "its metadata"
        except (OSError, pa.ArrowException) as exc:
            raise unreadable(path, exc) from None
        if width is not None and width != code_size:
            raise InputDataError(
                f"{path}: codes are {width} wide (from {seen}) but model {fingerprint} has code_size {code_size}"
            )
        id_type = check_id_type(path, schema, id_column, id_type, paths[0])
        if made_by is None:
            unmarked.append(path)
        total += rows
    assert id_type is not None
    if unmarked:
        log.warning(
            "%d of %d file(s) carry no model fingerprint (not written by seqcodec encode), e.g. %s; "
            "accepted because their code width matches the model's %d", len(unmarked), len(paths), unmarked[0],
            code_size,
        )
    return CodeFiles(tuple(paths), total, id_type, tuple(unmarked), sum(sizes[p] for p in paths))


def slice_tables(table: pa.Table, max_rows: int) -> Iterable[pa.Table]:
    """Cut a large row group into slices of at most ``max_rows`` rows (bounded memory per element)."""
    for start in range(0, table.num_rows, max_rows):
        yield table.slice(start, max_rows)


def schema_key(schema: pa.Schema) -> tuple:
    """Names, types and nullability: tables with equal keys concatenate (metadata may differ)."""
    return tuple((f.name, f.type, f.nullable) for f in schema)


class CoalesceTables(beam.DoFn):
    """Merge small tables of one bundle into tables of ``rows`` rows; large ones pass through untouched.

    Small row groups and small files would otherwise each become one model call with its own
    length sort, so batches stay tiny. At most ``rows`` rows (plus one incoming table) are held
    per schema; whatever is left is emitted when the bundle finishes, so every row comes out once.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def start_bundle(self) -> None:
        self.pending: dict[tuple, tuple[list[pa.Table], int]] = {}

    def process(self, table: pa.Table) -> Iterable[pa.Table]:
        if table.num_rows >= self.rows:
            yield table
            return
        key = schema_key(table.schema)
        tables, held = self.pending.get(key, ([], 0))
        tables.append(table)
        held += table.num_rows
        if held < self.rows:
            self.pending[key] = (tables, held)
            return
        merged = pa.concat_tables(tables).combine_chunks()
        full = merged.num_rows - merged.num_rows % self.rows
        yield from slice_tables(merged.slice(0, full), self.rows)
        rest = merged.num_rows - full
        self.pending[key] = ([merged.slice(full)], rest) if rest else ([], 0)

    def finish_bundle(self) -> Iterable[beam.utils.windowed_value.WindowedValue]:
        for tables, _ in self.pending.values():
            if tables:
                yield beam.transforms.window.GlobalWindows.windowed_value(pa.concat_tables(tables).combine_chunks())
        self.pending = {}


@dataclasses.dataclass(frozen=True)
class RowGroups:
    """One read split: row groups ``first`` up to ``stop`` of a file (``stop`` None: to the end)."""

    path: str
    first: int = 0
    stop: int | None = None


def row_group_splits(path: str, max_rows: int, split_bytes: int) -> Iterable[RowGroups]:
    """Cut a file into runs of consecutive row groups of about ``max_rows`` rows or ``split_bytes`` bytes.

    A file no bigger than a split is one split without opening it (a night of many small files
    pays one open each, in the read).
    """
    (match,) = FileSystems.match([path])
    if len(match.metadata_list) == 1 and match.metadata_list[0].size_in_bytes <= split_bytes:
        yield RowGroups(path)
        return
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        meta = pq.ParquetFile(handle).metadata
    first, rows, size = 0, 0, 0
    for index in range(meta.num_row_groups):
        group = meta.row_group(index)
        group_bytes = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        if index > first and (rows + group.num_rows > max_rows or size + group_bytes > split_bytes):
            yield RowGroups(path, first, index)
            first, rows, size = index, 0, 0
        rows, size = rows + group.num_rows, size + group_bytes
    if meta.num_row_groups > first:
        yield RowGroups(path, first, meta.num_row_groups)


class ReadRowGroups(beam.DoFn):
    """Read a split's row groups in one call, projected to ``columns``, as tables of at most ``max_rows`` rows.

    One call for all of a split's row groups, not one per row group: 100-row row groups cost a
    read each otherwise (docs/BENCHMARKS.md, small inputs).
    """

    def __init__(self, columns: list[str], max_rows: int) -> None:
        self.columns, self.max_rows = columns, max_rows

    def process(self, split: RowGroups) -> Iterable[pa.Table]:
        with FileSystems.open(split.path, compression_type="uncompressed") as handle:
            file = pq.ParquetFile(handle)
            stop = file.metadata.num_row_groups if split.stop is None else split.stop
            if stop <= split.first:
                return
            table = file.read_row_groups(range(split.first, stop), columns=self.columns).select(self.columns)
        yield from slice_tables(table, self.max_rows)


def split_bytes(files: InputFiles | CodeFiles, rows: int) -> int:
    """Bytes of input per read split: about ``rows`` rows' worth, between 1 MiB and Beam's 64 MiB default.

    Token lists compress so well (about 10 bytes a word) that with Beam's default a file of a
    million rows is one split, read and encoded by one worker however many the runner has.
    """
    if not files.rows or not files.bytes:
        return MAX_SPLIT_BYTES
    return int(min(MAX_SPLIT_BYTES, max(MIN_SPLIT_BYTES, files.bytes * rows / files.rows)))


class ReadBatches(beam.PTransform):
    """Read the checked files' row groups as Arrow tables of at most ``max_rows`` rows, projected to two columns.

    Files are cut into splits of consecutive row groups (``row_group_splits``: about ``max_rows`` rows
    or ``split_bytes`` bytes) for parallel reading; each split is read in one call, and smaller tables
    are merged (within a bundle) up to ``max_rows`` rows.
    """

    def __init__(self, paths: tuple[str, ...], id_column: str, data_column: str, max_rows: int = MAX_BATCH_ROWS,
                 split_bytes: int = MAX_SPLIT_BYTES) -> None:
        super().__init__()
        self.paths, self.columns = paths, [id_column, data_column]
        self.max_rows, self.split_bytes = max_rows, split_bytes

    def expand(self, pbegin):
        # The checked list, not the glob again: a file that appears mid-run must not break the row count.
        return (
            pbegin
            | "Files" >> beam.Create(self.paths)
            | "Splits" >> beam.FlatMap(row_group_splits, self.max_rows, self.split_bytes)
            | "Spread" >> beam.Reshuffle()  # a big file's splits go to several workers
            | "Row groups" >> beam.ParDo(ReadRowGroups(self.columns, self.max_rows)).with_output_types(pa.Table)
            | "Coalesce" >> beam.ParDo(CoalesceTables(self.max_rows)).with_output_types(pa.Table)
        )


class WriteTables(beam.PTransform):
    """Write Arrow tables as Parquet shards ``<prefix>-SSSSS-of-NNNNN.parquet`` (zstd); their file names out.

    Each table is written by a background thread (``parquet_sink``); ``plain_columns`` get no
    compression, no dictionary encoding and no statistics.
    """

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0, plain_columns: Iterable[str] = ()) -> None:
        super().__init__()
        self.sink = ParquetTableSink(prefix, schema, num_shards, plain_columns)

    def expand(self, tables):
        return tables | "Write" >> WriteShards(self.sink)


def count_rows(pattern: str) -> int:
    """Rows in the Parquet files matching ``pattern`` (0 if none), from their footers."""
    return sum(read_schema(path)[1] for path in matching_paths(pattern))
