"""Codes back to tokens: file and row checks of code Parquet, the decoder ModelHandler, round-trip statistics.

Everything on the hot path is an Arrow or numpy column operation; Python loops only ever touch
rejected rows and the few mismatch examples kept for people.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from model.data import InputDataError
from transforms.inference import CodecEncoderHandler, flat_tokens, localize_model_dir
from transforms.parquet_io import METADATA_PREFIX, match_files, schema_metadata
from transforms.validate import ERRORS_TAG, METRICS_NAMESPACE

log = logging.getLogger("seqcodec")

# Why a code row was rejected, in the order they are checked (a row gets the first that applies).
CODE_REASONS: dict[str, str] = {
    "null_id": "the id is null",
    "null_code": "the code is null",
    "wrong_width": "the code does not have the model's code_size values",
    "null_value": "the code holds a null value",
    "not_finite": "the code holds NaN or infinity (as float32)",
    "bad_length": "the length field (the code's first value) is not an integer in [1, max_length]",
}
CODE_VALUE_TYPES = (pa.float32(), pa.float64())
MAX_BUCKETS = 20


# -- file-level checks (before the job starts) --------------------------------------------------------


def code_type_error(field_type: pa.DataType) -> str | None:
    """Why a column type cannot hold codes, or None for a (fixed-size or large) list of float32/float64."""
    if not (pa.types.is_list(field_type) or pa.types.is_large_list(field_type)
            or pa.types.is_fixed_size_list(field_type)):
        return f"is {field_type}, not a list of float32 or float64"
    if field_type.value_type not in CODE_VALUE_TYPES:
        return f"is a list of {field_type.value_type}, not of float32 or float64"
    return None


@dataclasses.dataclass(frozen=True)
class CodeFiles:
    """What the up-front check of the code files learned."""

    paths: tuple[str, ...]
    rows: int
    id_type: pa.DataType
    unmarked: tuple[str, ...]  # files without a model fingerprint in their metadata


def _first_rows_width(file: pq.ParquetFile, column: str) -> int | None:
    """The most common code width among the first rows of a variable-width code column (None if all null)."""
    for batch in file.iter_batches(batch_size=1024, columns=[column]):
        widths = pc.drop_null(pc.list_value_length(batch.column(0))).to_numpy(zero_copy_only=False)
        if widths.size:
            values, counts = np.unique(widths, return_counts=True)
            return int(values[np.argmax(counts)])
    return None


def inspect_codes(pattern: str, id_column: str, code_column: str, manifest: dict[str, Any],
                  model_dir: str) -> CodeFiles:
    """Check every code file against the model before the job starts; InputDataError (one line) if unusable.

    Codes whose metadata names another model are refused, naming both fingerprints. Files with no
    fingerprint (not written by ``seqcodec encode``) are accepted when their code width matches
    the model: the fixed width of the column, or else the usual width of its first rows.
    """
    fingerprint, code_size = manifest["fingerprint"], manifest["code_size"]
    paths = match_files(pattern)
    total = 0
    id_type: pa.DataType | None = None
    unmarked = []
    for path in paths:
        try:
            with FileSystems.open(path, compression_type="uncompressed") as handle:
                file = pq.ParquetFile(handle)
                schema, rows = file.schema_arrow, file.metadata.num_rows
                for column in (id_column, code_column):
                    if column not in schema.names:
                        raise InputDataError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)})")
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
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputDataError(f"{path}: not a readable Parquet file ({reason})") from None
        if width is not None and width != code_size:
            raise InputDataError(
                f"{path}: codes are {width} wide (from {seen}) but model {fingerprint} has code_size {code_size}"
            )
        this_id = schema.field(id_column).type
        if pa.types.is_nested(this_id):
            raise InputDataError(f"{path}: column {id_column!r} is {this_id}; ids must be scalars")
        if id_type is None:
            id_type = this_id
        elif this_id != id_type:
            raise InputDataError(f"{path}: column {id_column!r} is {this_id} but {paths[0]} has {id_type}")
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
    return CodeFiles(tuple(paths), total, id_type, tuple(unmarked))


# -- schemas ------------------------------------------------------------------------------------------


def code_error_schema(id_type: pa.DataType) -> pa.Schema:
    """Dead-letter code rows: the id, why, a sentence for people, and the code as it was read."""
    return pa.schema(
        [("id", id_type), ("reason", pa.string()), ("detail", pa.string()), ("code", pa.list_(pa.float64()))]
    )


def decoded_schema(id_type: pa.DataType, metadata: dict[str, object]) -> pa.Schema:
    """Decoded shards: id and tokens (int32); the decoding model's facts in the schema metadata."""
    return pa.schema(
        [("id", id_type), ("tokens", pa.list_(pa.int32()))],
        metadata={f"{METADATA_PREFIX}{k}": json.dumps(v) for k, v in metadata.items()},
    )


# -- row-level checks -----------------------------------------------------------------------------------


def _rows_hit(hit: np.ndarray, parents: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """For a mask over the flat values: the rows with a hit, and per row the flat position of its first hit."""
    positions = np.flatnonzero(hit)
    mask = np.zeros(n, dtype=bool)
    mask[parents[positions]] = True
    first = np.full(n, -1, dtype=np.int64)
    unique, index = np.unique(parents[positions], return_index=True)
    first[unique] = positions[index]
    return mask, first


def split_codes(
    table: pa.Table, code_size: int, max_length: int, id_column: str = "id", code_column: str = "code"
) -> tuple[pa.Table, pa.Table]:
    """Split one batch into (valid ``id, code`` rows, rejected rows in ``code_error_schema``).

    Valid codes come out as ``fixed_size_list<float32, code_size>`` whatever list type they were
    read as; the checks are column operations, only rejected rows get a Python-built detail.
    """
    ids = table.column(id_column).combine_chunks()
    codes = table.column(code_column).combine_chunks()
    n = len(codes)
    widths = pc.fill_null(pc.list_value_length(codes), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(codes)
    # The row of each flattened value, from the lengths list_flatten itself uses (list_parent_indices
    # would also count values hidden behind a null slot, which list_flatten leaves out).
    parents = np.repeat(np.arange(n), widths)
    values = flat.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)  # nulls read as NaN
    starts = np.cumsum(widths) - widths  # where each row's values begin in ``values``

    null_value = flat.is_null().to_numpy(zero_copy_only=False) if flat.null_count else np.zeros(len(flat), bool)
    with np.errstate(over="ignore"):
        not_finite = ~np.isfinite(values.astype(np.float32)) & ~null_value
    null_value_rows, _ = _rows_hit(null_value, parents, n)
    not_finite_rows, first_not_finite = _rows_hit(not_finite, parents, n)
    right_width = widths == code_size
    length_field = np.full(n, np.nan)
    length_field[right_width] = values[starts[right_width]]
    with np.errstate(invalid="ignore"):
        good_length = (length_field == np.round(length_field)) & (length_field >= 1) & (length_field <= max_length)
    checks = {
        "null_id": ids.is_null().to_numpy(zero_copy_only=False),
        "null_code": codes.is_null().to_numpy(zero_copy_only=False),
        "wrong_width": ~right_width,
        "null_value": null_value_rows,
        "not_finite": not_finite_rows,
        "bad_length": ~good_length,
    }
    reason = np.full(n, "", dtype=object)
    for name, hit in checks.items():
        reason[(reason == "") & hit] = name
    ok = reason == ""

    matrix = values[ok[parents]].astype(np.float32).reshape(-1, code_size)
    good = pa.table({
        "id": ids.filter(pa.array(ok)),
        "code": pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), pa.float32()), code_size),
    })

    bad_rows = np.flatnonzero(~ok)
    details = []
    for row in bad_rows.tolist():
        name = reason[row]
        if name == "wrong_width":
            details.append(f"{widths[row]} values, the model's code_size is {code_size}")
        elif name == "not_finite":
            at = int(first_not_finite[row])
            details.append(f"value {float(values[at])!r} at position {at - starts[row]} is not a finite float32")
        elif name == "bad_length":
            details.append(f"length field {float(length_field[row])!r} is not an integer in [1, {max_length}]")
        else:
            details.append(CODE_REASONS[name])
    indices = pa.array(bad_rows, type=pa.int64())
    bad = pa.Table.from_arrays(
        [
            ids.take(indices),
            pa.array(reason[bad_rows].tolist(), type=pa.string()),
            pa.array(details, type=pa.string()),
            codes.take(indices).cast(pa.list_(pa.float64())),
        ],
        schema=code_error_schema(ids.type),
    )
    return good, bad


class ValidateCodes(beam.DoFn):
    """Arrow batch of code rows in; valid rows on the main output, rejected rows on ``errors``."""

    def __init__(self, code_size: int, max_length: int, id_column: str, code_column: str) -> None:
        self.args = (code_size, max_length, id_column, code_column)
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.rows_valid = Metrics.counter(METRICS_NAMESPACE, "rows_valid")
        self.rejected = {name: Metrics.counter(METRICS_NAMESPACE, f"rejected_{name}") for name in CODE_REASONS}

    def process(self, table: pa.Table):
        good, bad = split_codes(table, *self.args)
        self.rows_read.inc(table.num_rows)
        self.rows_valid.inc(good.num_rows)
        if bad.num_rows:
            reasons = bad.column("reason").to_numpy(zero_copy_only=False)
            for name, count in zip(*np.unique(reasons, return_counts=True), strict=True):
                self.rejected[name].inc(int(count))
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, bad)
        if good.num_rows:
            yield good


# -- RunInference handlers -------------------------------------------------------------------------------


def code_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A valid fixed-size code column -> float32 matrix (N, code_size)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    return pc.list_flatten(array).to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, width)


def tokens_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    """(values, offsets) in Arrow's list layout -> list<int32>."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int32()))


def correct_per_row(same: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many positions of each row are True in the flat ``same`` mask."""
    cumulative = np.zeros(same.size + 1, dtype=np.int64)
    np.cumsum(same, out=cumulative[1:])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


class CodecDecoderHandler(ModelHandler[pa.Table, pa.Table, Any]):
    """Arrow table of valid (id, code) rows in, Arrow table of (id, tokens) out.

    Like the encoder's handler, each element is already a batch; the codec sorts its rows by
    length, cuts them into batches and runs the compiled decoder. With ``compare`` the input
    also holds the original ``tokens``; the output then keeps them as ``original`` and adds
    ``correct``, the number of positions each decoded row got right.
    """

    def __init__(self, model_dir: str, batch_size: int, compare: bool = False) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.model_dir, self.batch_size, self.compare = model_dir, batch_size, compare
        self.rows = Metrics.counter(METRICS_NAMESPACE, "rows_decoded")

    def load_model(self) -> Any:
        from model.storage import load_codec  # TensorFlow is imported on the worker, not at launch

        return load_codec(localize_model_dir(self.model_dir), batch_size=self.batch_size)

    def run_inference(
        self, batch: Sequence[pa.Table], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[pa.Table]:
        for table in batch:
            values, offsets = model.decode_flat(code_matrix(table.column("code")))
            columns = {"id": table.column("id").combine_chunks(), "tokens": tokens_array(values, offsets)}
            if self.compare:
                original = table.column("tokens").combine_chunks()
                original_values, original_offsets = flat_tokens(original)
                if not np.array_equal(original_offsets, offsets):
                    raise ValueError("decoded lengths differ from the original sequences' lengths")
                columns["original"] = original
                columns["correct"] = pa.array(
                    correct_per_row(original_values == values, offsets).astype(np.int32), type=pa.int32()
                )
            self.rows.inc(table.num_rows)
            yield pa.table(columns)

    def get_num_bytes(self, batch: Sequence[pa.Table]) -> int:
        return sum(table.nbytes for table in batch)

    def get_metrics_namespace(self) -> str:
        return "seqcodec_decoder"


class CodecEncoderKeepingTokens(CodecEncoderHandler):
    """The encoder's handler, with the input ``tokens`` kept next to each code (for the round trip)."""

    def run_inference(
        self, batch: Sequence[pa.Table], model: Any, inference_args: dict[str, Any] | None = None
    ) -> Iterable[pa.Table]:
        for table, codes in zip(batch, super().run_inference(batch, model, inference_args), strict=True):
            yield codes.append_column("tokens", table.column("tokens"))


class EncodeKeepingTokens(beam.PTransform):
    """Valid token tables -> (id, length, code, tokens) tables through RunInference."""

    def __init__(self, model_dir: str, batch_size: int = 512) -> None:
        super().__init__()
        self.handler = CodecEncoderKeepingTokens(model_dir, batch_size)

    def expand(self, tables):
        return tables | "RunInference" >> RunInference(self.handler)


class DecodeTables(beam.PTransform):
    """Valid code tables -> decoded tables, through RunInference and the codec's batched decoder."""

    def __init__(self, model_dir: str, batch_size: int = 512, compare: bool = False) -> None:
        super().__init__()
        self.handler = CodecDecoderHandler(model_dir, batch_size, compare)

    def expand(self, tables):
        return tables | "RunInference" >> RunInference(self.handler)


# -- lengths and round-trip statistics -----------------------------------------------------------------


def length_buckets(max_length: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) length ranges of a round width (1, 2, 5, 10, 20, ...), at most MAX_BUCKETS."""
    widths = (m * 10**e for e in itertools.count() for m in (1, 2, 5))
    width = next(w for w in widths if -(-max_length // w) <= MAX_BUCKETS)
    return [(lo, min(lo + width - 1, max_length)) for lo in range(1, max_length + 1, width)]


def bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


class LengthStats(beam.DoFn):
    """Decoded table -> per-length counts ``(3, max_length + 1)``: rows, correct tokens, exact rows.

    The last two stay 0 without ``compare``. Round-trip totals and per-bucket counts also go
    to Beam counters (``roundtrip_*``), so they show while the job runs.
    """

    def __init__(self, max_length: int, compare: bool) -> None:
        self.max_length, self.compare = max_length, compare
        self.buckets = length_buckets(max_length)
        if compare:
            def counter(name):
                return Metrics.counter(METRICS_NAMESPACE, name)

            self.totals = {name: counter(f"roundtrip_{name}") for name in ("rows", "tokens", "tokens_correct", "exact")}
            self.by_bucket = {
                name: [counter(f"roundtrip_{name}_len{lo:04d}_{hi:04d}") for lo, hi in self.buckets]
                for name in ("rows", "tokens_correct", "exact")
            }

    def process(self, table: pa.Table) -> Iterator[np.ndarray]:
        size = self.max_length + 1
        lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
        if lengths.size and lengths.max() > self.max_length:
            raise ValueError(f"a decoded row is {lengths.max()} long, over max_length {self.max_length}")
        stats = np.zeros((3, size), dtype=np.int64)
        stats[0] = np.bincount(lengths, minlength=size)
        if self.compare:
            correct = table.column("correct").to_numpy().astype(np.int64)
            stats[1] = np.bincount(lengths, weights=correct, minlength=size).astype(np.int64)
            stats[2] = np.bincount(lengths[correct == lengths], minlength=size)
            self.totals["rows"].inc(int(lengths.size))
            self.totals["tokens"].inc(int(lengths.sum()))
            self.totals["tokens_correct"].inc(int(correct.sum()))
            self.totals["exact"].inc(int(stats[2].sum()))
            starts = np.array([lo for lo, _ in self.buckets])
            for row, name in enumerate(("rows", "tokens_correct", "exact")):
                for counter, value in zip(self.by_bucket[name], np.add.reduceat(stats[row], starts), strict=True):
                    if value:
                        counter.inc(int(value))
        yield stats


class SumStats(beam.CombineFn):
    """Element-wise sum of the per-length count arrays (zeros when there were none)."""

    def __init__(self, max_length: int) -> None:
        self.shape = (3, max_length + 1)

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, stats: np.ndarray) -> np.ndarray:
        return accumulator + stats

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return sum(accumulators, self.create_accumulator())

    def extract_output(self, accumulator: np.ndarray) -> np.ndarray:
        return accumulator


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def length_report(stats: np.ndarray, compare: bool) -> dict[str, Any]:
    """Summed per-length counts -> totals and per-bucket rows for summary.json (accuracies if ``compare``)."""
    rows, correct, exact = (np.asarray(s, dtype=np.int64) for s in stats)
    tokens = rows * np.arange(rows.size)
    buckets = []
    for lo, hi in length_buckets(rows.size - 1):
        span = slice(lo, hi + 1)
        entry: dict[str, Any] = {
            "lengths": bucket_label(lo, hi), "min_length": lo, "max_length": hi,
            "sequences": int(rows[span].sum()), "tokens": int(tokens[span].sum()),
        }
        if compare:
            entry["token_accuracy"] = _ratio(int(correct[span].sum()), entry["tokens"])
            entry["exact_match"] = _ratio(int(exact[span].sum()), entry["sequences"])
        buckets.append(entry)
    out: dict[str, Any] = {"sequences": int(rows.sum()), "tokens": int(tokens.sum())}
    if compare:
        out["tokens_correct"] = int(correct.sum())
        out["exact_matches"] = int(exact.sum())
        out["token_accuracy"] = _ratio(out["tokens_correct"], out["tokens"])
        out["exact_match"] = _ratio(out["exact_matches"], out["sequences"])
    out["by_length"] = buckets
    return out


def write_text(path: str, text: str) -> None:
    """Write (or overwrite) a small text file on any Beam filesystem."""
    with FileSystems.create(path) as handle:
        handle.write(text.encode())


def write_stats(stats: np.ndarray, path: str) -> None:
    write_text(path, json.dumps({"rows": stats[0].tolist(), "correct": stats[1].tolist(),
                                 "exact": stats[2].tolist()}) + "\n")


def read_stats(path: str) -> np.ndarray:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        data = json.loads(handle.read())
    return np.array([data["rows"], data["correct"], data["exact"]], dtype=np.int64)


# -- mismatch examples ------------------------------------------------------------------------------------


class PickMismatches(beam.DoFn):
    """From a compared table, up to ``n`` wrongly decoded rows, spread over lengths (one per length first).

    Yields one list of example dicts per table (nothing when every row round-tripped).
    """

    def __init__(self, n: int) -> None:
        self.n = n

    def process(self, table: pa.Table) -> Iterator[list[dict[str, Any]]]:
        lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
        correct = table.column("correct").to_numpy().astype(np.int64)
        wrong = np.flatnonzero(correct < lengths)
        if not wrong.size:
            return
        wrong_lengths = lengths[wrong]
        order = np.argsort(wrong_lengths, kind="stable")
        sorted_lengths = wrong_lengths[order]
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size) - np.searchsorted(sorted_lengths, sorted_lengths, side="left")
        chosen = np.lexsort((wrong_lengths, rank))[: self.n]
        take = pa.array(wrong[chosen], type=pa.int64())
        examples = []
        for r, row_id, original, decoded in zip(
            rank[chosen].tolist(),
            table.column("id").take(take).to_pylist(),
            table.column("original").take(take).to_pylist(),
            table.column("tokens").take(take).to_pylist(),
            strict=True,
        ):
            wrong_at = [i for i, (a, b) in enumerate(zip(original, decoded, strict=True)) if a != b]
            examples.append({
                "rank": r, "id": row_id, "length": len(original), "wrong_tokens": len(wrong_at),
                "wrong_positions": wrong_at, "original": original, "decoded": decoded,
            })
        yield examples


def keep_spread(examples: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` examples taking one of each length in turn (shortest first), then a second, ..."""
    turn: dict[int, int] = {}
    keyed = []
    for example in sorted(examples, key=lambda e: (e["length"], e["rank"], str(e["id"]))):
        k = turn.get(example["length"], 0)
        turn[example["length"]] = k + 1
        keyed.append(((k, example["length"], str(example["id"])), example))
    keyed.sort(key=lambda item: item[0])
    return [example for _, example in keyed[:n]]


class KeepExamples(beam.CombineFn):
    """At most ``n`` examples, preferring one per length before a second of any length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def create_accumulator(self) -> list[dict[str, Any]]:
        return []

    def add_input(self, accumulator: list, examples: list) -> list:
        return keep_spread(accumulator + examples, self.n)

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return keep_spread(itertools.chain.from_iterable(accumulators), self.n)

    def extract_output(self, accumulator: list) -> list:
        out = sorted(accumulator, key=lambda e: (e["length"], str(e["id"])))
        return [{k: v for k, v in e.items() if k != "rank"} for e in out]


def write_examples(examples: list[dict[str, Any]], path: str) -> None:
    """Mismatch examples as JSON Lines, one readable object per line (empty file when there are none)."""
    write_text(path, "".join(json.dumps(e, default=str) + "\n" for e in examples))
