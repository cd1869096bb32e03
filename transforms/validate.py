"""Check token rows column-wise and split each Arrow batch into valid rows and dead letters."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

METRICS_NAMESPACE = "seqcodec"
ERRORS_TAG = "errors"

# Why a row was rejected, in the order they are checked (a row gets the first that applies).
REASONS: dict[str, str] = {
    "null_id": "the id is null",
    "null_tokens": "the token list is null",
    "empty_tokens": "the token list is empty",
    "null_token": "the token list holds a null element",
    "token_out_of_range": "a token id is < 0 or >= the model's vocab_size",
    "too_long": "the sequence is longer than the model's max_length",
}
TOO_LONG_CHOICES = ("reject", "truncate")


def error_schema(id_type: pa.DataType) -> pa.Schema:
    """Dead-letter rows: the id, why, a sentence for people, and the tokens as they were read."""
    return pa.schema(
        [("id", id_type), ("reason", pa.string()), ("detail", pa.string()), ("tokens", pa.list_(pa.int64()))]
    )


def _first_per_row(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, dict[int, int]]:
    """Mask of rows that occur in ``rows`` and, for each, the first matching value."""
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    unique, first = np.unique(rows, return_index=True)
    return mask, dict(zip(unique.tolist(), values[first].tolist(), strict=True))


def split_rows(
    table: pa.Table,
    vocab_size: int,
    max_length: int,
    too_long: str = "reject",
    id_column: str = "id",
    tokens_column: str = "tokens",
) -> tuple[pa.Table, pa.Table, int]:
    """Split one batch into (valid rows ``id, tokens``, rejected rows in ``error_schema``, truncated count).

    All checks are Arrow/numpy column operations; only rejected rows get a Python-built detail.
    With ``too_long="truncate"`` long rows keep their first ``max_length`` tokens instead.
    """
    ids = table.column(id_column).combine_chunks()
    tokens = table.column(tokens_column).combine_chunks()
    n = len(tokens)
    lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(tokens)
    # The row of each flattened value, from the same lengths list_flatten uses: list_parent_indices would
    # also count the values behind a null list slot, which list_flatten leaves out.
    parents = np.repeat(np.arange(n), lengths)
    values = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    null_element = flat.is_null().to_numpy(zero_copy_only=False) if flat.null_count else np.zeros(len(flat), bool)
    null_token_rows, _ = _first_per_row(parents[null_element], values[null_element], n)
    out_of_range = ((values < 0) | (values >= vocab_size)) & ~null_element
    bad_id_rows, first_bad_id = _first_per_row(parents[out_of_range], values[out_of_range], n)
    checks = {
        "null_id": ids.is_null().to_numpy(zero_copy_only=False),
        "null_tokens": tokens.is_null().to_numpy(zero_copy_only=False),
        "empty_tokens": lengths == 0,
        "null_token": null_token_rows,
        "token_out_of_range": bad_id_rows,
        "too_long": (lengths > max_length) if too_long == "reject" else np.zeros(n, bool),
    }
    reason = np.full(n, "", dtype=object)
    for name, hit in checks.items():
        reason[(reason == "") & hit] = name
    ok = reason == ""

    good_tokens = tokens.filter(pa.array(ok))
    if too_long == "truncate":
        good_tokens = pc.list_slice(good_tokens, 0, max_length)
    good = pa.table({"id": ids.filter(pa.array(ok)), "tokens": good_tokens})

    bad_rows = np.flatnonzero(~ok)
    details = []
    for row in bad_rows.tolist():
        name = reason[row]
        if name == "token_out_of_range":
            details.append(f"token id {first_bad_id[row]} is outside [0, {vocab_size})")
        elif name == "too_long":
            details.append(f"{lengths[row]} tokens, the model's max_length is {max_length}")
        else:
            details.append(REASONS[name])
    indices = pa.array(bad_rows, type=pa.int64())
    bad = pa.Table.from_arrays(
        [
            ids.take(indices),
            pa.array(reason[bad_rows].tolist(), type=pa.string()),
            pa.array(details, type=pa.string()),
            tokens.take(indices).cast(pa.list_(pa.int64())),
        ],
        schema=error_schema(ids.type),
    )
    truncated = int((ok & (lengths > max_length)).sum()) if too_long == "truncate" else 0
    return good, bad, truncated


class ValidateTokens(beam.DoFn):
    """Arrow batch in; valid rows out on the main output, rejected rows on ``errors``; counts as it goes."""

    def __init__(self, vocab_size: int, max_length: int, too_long: str, id_column: str, tokens_column: str) -> None:
        self.args = (vocab_size, max_length, too_long, id_column, tokens_column)
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")
        self.rows_valid = Metrics.counter(METRICS_NAMESPACE, "rows_valid")
        self.truncated = Metrics.counter(METRICS_NAMESPACE, "rows_truncated")
        self.rejected = {name: Metrics.counter(METRICS_NAMESPACE, f"rejected_{name}") for name in REASONS}

    def process(self, table: pa.Table):
        vocab_size, max_length, too_long, id_column, tokens_column = self.args
        good, bad, truncated = split_rows(table, vocab_size, max_length, too_long, id_column, tokens_column)
        self.rows_read.inc(table.num_rows)
        self.rows_valid.inc(good.num_rows)
        self.truncated.inc(truncated)
        if bad.num_rows:
            for name, count in zip(*np.unique(bad.column("reason").to_numpy(zero_copy_only=False), return_counts=True),
                                   strict=True):
                self.rejected[name].inc(int(count))
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, bad)
        if good.num_rows:
            yield good
