"""Token sequences as flat numpy arrays: flattening, validation, padding and length-sorted batches.

Nothing here imports TensorFlow, so the numpy encoder and a job's launcher can use it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from seqcodec.model.config import CodecConfig


def flatten(sequences: Sequence[np.ndarray] | Sequence[Sequence[int]] | Any) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences -> (values, offsets) in Arrow's list layout; rejects non-integer tokens.

    ``sequences`` is a list of token lists or int arrays, or Arrow data (``arrow_lists``).
    """
    if type(sequences).__module__.split(".")[0] == "pyarrow":
        return arrow_lists(sequences)
    arrays = [np.asarray(s) for s in sequences]
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            raise ValueError(f"sequence {i}: expected a 1-D list of token ids, got shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"sequence {i}: token ids must be integers, got {a.dtype}")
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return values, offsets


def arrow_lists(data: Any, tokens_column: str = "tokens") -> tuple[np.ndarray, np.ndarray]:
    """Arrow token sequences -> (values, offsets): a table's ``tokens`` column, or a (chunked) list array.

    Iterating an Arrow table gives its columns, not its rows, so tables are never read as lists of
    sequences; anything else from Arrow is refused with a ValueError that says what to pass.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(data, pa.Table | pa.RecordBatch):
        if tokens_column not in data.column_names:
            raise ValueError(f"an Arrow table needs a {tokens_column!r} column of token lists (it has "
                             f"{', '.join(map(repr, data.column_names)) or 'none'}); pass table.column(NAME) "
                             "to encode another column")
        data = data.column(tokens_column)
    if isinstance(data, pa.ChunkedArray):
        data = data.combine_chunks()
    kind = getattr(data, "type", None)
    if not isinstance(data, pa.Array) or not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
                                              or pa.types.is_fixed_size_list(kind)):
        raise ValueError(f"cannot read an Arrow {kind or type(data).__name__} as token sequences: pass a table "
                         "with a 'tokens' column, a list array of integers, or a list of token lists")
    if not pa.types.is_integer(kind.value_type):
        raise ValueError(f"token ids must be integers, got Arrow {kind.value_type}")
    if data.null_count:
        row = int(np.argmax(data.is_null().to_numpy(zero_copy_only=False)))
        raise ValueError(f"sequence {row}: null instead of a list of token ids")
    lengths = pc.list_value_length(data).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.list_flatten(data)
    if values.null_count:
        position = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
        row = int(np.searchsorted(np.cumsum(lengths), position, side="right"))
        raise ValueError(f"sequence {row}: a token id is null")
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return values.to_numpy(zero_copy_only=False).astype(np.int64), offsets


def ragged_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of the given lengths, the (row, column) of every element in row-major order."""
    row_of = np.repeat(np.arange(lengths.size), lengths)
    col_of = np.arange(row_of.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row_of, col_of


def pad_shifted(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Right-pad the given rows into an int32 matrix of ids + 1 (0 marks padding), as wide as the longest."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    out = np.zeros((rows.size, int(lengths.max(initial=0))), dtype=np.int32)
    row_of, col_of = ragged_positions(lengths)
    out[row_of, col_of] = values[starts[row_of] + col_of] + 1
    return out


class FlatTokens:
    """Decoded token rows of known lengths, filled batch by batch into Arrow's list layout (``values``, ``offsets``).

    Batches may be filled from several threads: each writes only its own rows' slots.
    """

    def __init__(self, lengths: np.ndarray) -> None:
        self.lengths = lengths
        self.offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.values = np.empty(int(self.offsets[-1]), dtype=np.int32)

    def put(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        """Each of ``rows``' tokens (row i of the padded matrix ``tokens`` is ``rows[i]``), cut to its length.

        Both decoders are causal and row-independent, so cutting a padded row back to its own length is exact.
        """
        row_of, col_of = ragged_positions(self.lengths[rows])
        self.values[self.offsets[rows][row_of] + col_of] = tokens[row_of, col_of]


def split_flat(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Arrow's list layout -> one array per row (views into ``values``)."""
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def token_batches(lengths: np.ndarray, token_budget: int, max_rows: int | None = None) -> list[np.ndarray]:
    """Row indices sorted by length (stable), cut into batches of at most ``token_budget`` padded tokens.

    A batch's padded size is its row count times its longest row; ``max_rows`` also caps the rows.
    A row longer than the whole budget still gets a batch of its own.
    """
    order = np.argsort(lengths, kind="stable")
    widths = np.maximum(lengths[order], 1)
    batches, start, n = [], 0, order.size
    while start < n:
        # Widths grow along the sorted rows, so rows x widest grows with the row count: the batch
        # is the longest prefix that fits (at least one row).
        most = min(n - start, max(1, token_budget // int(widths[start])), max_rows or n)
        padded = np.arange(1, most + 1) * widths[start : start + most]
        rows = max(1, int(np.searchsorted(padded, token_budget, side="right")))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def check_sequences(values: np.ndarray, offsets: np.ndarray, config: CodecConfig) -> None:
    """Raise ValueError naming the first bad sequence: empty, too long, or an id out of range."""
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {values.dtype}")
    lengths = np.diff(offsets)
    if (lengths == 0).any():
        raise ValueError(f"sequence {int(np.argmax(lengths == 0))}: empty sequence")
    too_long = lengths > config.max_length
    if too_long.any():
        i = int(np.argmax(too_long))
        raise ValueError(
            f"sequence {i}: length {int(lengths[i])} is over the model's max_length {config.max_length}"
        )
    bad = (values < 0) | (values >= config.vocab_size)
    if bad.any():
        pos = int(np.argmax(bad))
        row = int(np.searchsorted(offsets, pos, side="right") - 1)
        raise ValueError(
            f"sequence {row}: token id {int(values[pos])} is outside [0, {config.vocab_size})"
        )


def good_length_field(length_field: np.ndarray, max_length: int) -> np.ndarray:
    """Per code, whether its length field is an integer in [1, max_length] (NaN is not)."""
    with np.errstate(invalid="ignore"):
        return (length_field == np.round(length_field)) & (length_field >= 1) & (length_field <= max_length)


def check_codes(codes: np.ndarray, config: CodecConfig) -> np.ndarray:
    """Validate codes and return their lengths (int64); ValueError names the first bad row."""
    if codes.ndim != 2 or codes.shape[1] != config.code_size:
        raise ValueError(f"codes must have shape (N, {config.code_size}), got {codes.shape}")
    # Codes are floats; integer (or bool, object) arrays are something else, token ids most often, and
    # decoding them would give tokens without an error.
    if not np.issubdtype(codes.dtype, np.floating):
        raise ValueError(f"codes must be floats (float16, float32 or float64, as encode returns them), got "
                         f"{codes.dtype}")
    # isfinite in the codes' own dtype: widening a float32 matrix to float64 first doubled the work.
    finite = np.isfinite(codes).all(axis=1)
    if not finite.all():
        raise ValueError(f"code {int(np.argmin(finite))}: contains NaN or infinity")
    length_field = codes[:, 0].astype(np.float64)
    ok = good_length_field(length_field, config.max_length)
    if not ok.all():
        i = int(np.argmin(ok))
        raise ValueError(
            f"code {i}: length field {length_field[i]!r} is not an integer in [1, {config.max_length}]"
        )
    return length_field.astype(np.int64)
