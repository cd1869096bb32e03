"""Read token sequences from Parquet for training, streaming row groups into Arrow's list layout."""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqcodec.model.errors import InputDataError, first_line

log = logging.getLogger(__name__)


def require_columns(path: str, names: list[str], columns: dict[str, str]) -> None:
    """InputDataError naming the file and every one of ``columns`` (column -> the flag that renames it) it lacks."""
    missing = [f"{column!r} (rename with {flag})" for column, flag in columns.items() if column not in names]
    if missing:
        raise InputDataError(f"{path}: no column {', no column '.join(missing)}; its columns: {', '.join(names)}")


GLOB_CHARACTERS = "*?["


def directory_pattern(pattern: str, is_dir: bool) -> str:
    """``DIR/*.parquet`` for a directory given without a wildcard (the jobs' outputs are folders), else ``pattern``."""
    if is_dir and not any(c in pattern for c in GLOB_CHARACTERS):
        return pattern.rstrip("/") + "/*.parquet"
    return pattern


@dataclasses.dataclass
class TokenSequences:
    """Sequences in Arrow's list layout: row i is ``values[offsets[i]:offsets[i + 1]]``."""

    values: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return self.offsets.size - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> TokenSequences:
        """The given rows, in the given order, as a new compact set."""
        lengths = self.lengths[rows]
        offsets = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        starts = np.repeat(self.offsets[rows], lengths)
        within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        return TokenSequences(self.values[starts + within], offsets)



def expand_glob(pattern: str) -> list[str]:
    """Local files matching ``pattern`` (sorted), or the Parquet files of a directory; InputDataError if none."""
    pattern = directory_pattern(pattern, os.path.isdir(pattern))
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if not os.path.isdir(p))
    if not paths:
        raise InputDataError(f"{pattern}: no file matches")
    return paths


def token_list_type_error(field_type: pa.DataType) -> str | None:
    """Why a column type cannot hold token lists, or None when it is a list of integers."""
    if not (pa.types.is_list(field_type) or pa.types.is_large_list(field_type)):
        return f"is {field_type}, not a list of integers"
    if not pa.types.is_integer(field_type.value_type):
        return f"is a list of {field_type.value_type}, not of integers"
    return None


def open_parquet(path: str, columns: dict[str, str]) -> pq.ParquetFile:
    """Open a Parquet file and check that it has the columns, else InputDataError naming the file."""
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputDataError(f"{path}: not a readable Parquet file ({first_line(exc)})") from None
    require_columns(path, file.schema_arrow.names, columns)
    return file


def read_token_sequences(pattern: str, tokens_column: str = "tokens") -> TokenSequences:
    """All usable sequences from the files matching ``pattern``, read one row group at a time.

    Null and empty rows are skipped (and counted in the log); a null element or a negative id
    means the file is broken and stops the read with one line naming it.
    """
    value_parts: list[np.ndarray] = []
    length_parts: list[np.ndarray] = []
    skipped = 0
    for path in expand_glob(pattern):
        file = open_parquet(path, {tokens_column: "--tokens-column"})
        problem = token_list_type_error(file.schema_arrow.field(tokens_column).type)
        if problem:
            raise InputDataError(f"{path}: column {tokens_column!r} {problem}")
        try:
            for batch in file.iter_batches(columns=[tokens_column]):
                column = batch.column(0)
                lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
                keep = lengths > 0
                skipped += int((~keep).sum())
                kept = column.filter(pa.array(keep))
                flat = pc.list_flatten(kept)
                if flat.null_count:
                    raise InputDataError(f"{path}: column {tokens_column!r} has null token ids")
                values = flat.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                if values.size and values.min() < 0:
                    raise InputDataError(f"{path}: column {tokens_column!r} has negative token id {values.min()}")
                value_parts.append(values)
                length_parts.append(lengths[keep])
        except (OSError, pa.ArrowException) as exc:
            raise InputDataError(f"{path}: cannot be read ({first_line(exc)})") from None
    if skipped:
        log.warning("skipped %d null or empty sequences", skipped)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(value_parts) if value_parts else np.zeros(0, np.int64)
    return TokenSequences(values, offsets)


def read_vocab(path: str, vocab_size: int | None) -> list[str]:
    """The tokens of a vocabulary file, one per line (line number = token id, from 0).

    InputDataError naming the file if it is unreadable or its size is not the model's
    ``vocab_size`` (None: not checked; a longer file would give every id beyond the model's a meaning it never had,
    and usually means the file belongs to another model).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: cannot read the vocabulary file ({first_line(exc)})") from None
    return parse_vocab(text, path, vocab_size)


def parse_vocab(text: str, where: str, vocab_size: int | None) -> list[str]:
    """A vocabulary file's text as its tokens; InputDataError unless it holds exactly ``vocab_size`` (None: any).

    One token per line (line number = id), or JSON: a list of strings, or an object whose ``tokens``
    is one (as ``data/sample/vocab.json``); a file is read as JSON only when the whole of it parses so.
    """
    tokens = json_tokens(text)
    if tokens is None:
        tokens = text.splitlines()
    if vocab_size is not None and len(tokens) != vocab_size:
        raise InputDataError(
            f"{where}: {len(tokens)} tokens, but the model's vocabulary has {vocab_size} "
            "(one token per line, line number = id)"
        )
    return tokens


def json_tokens(text: str) -> list[str] | None:
    """The tokens of a JSON vocabulary (a list of strings, or an object with one as ``tokens``), else None."""
    if not text.lstrip().startswith(("[", "{")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("tokens")
    if isinstance(data, list) and all(isinstance(t, str) for t in data):
        return data
    return None


def token_text(values: np.ndarray, offsets: np.ndarray, vocab: list[str]) -> pa.Array:
    """Each row's tokens as words joined by spaces (an Arrow string array), for people to read."""
    words = pa.array(np.asarray(vocab, dtype=object)[np.asarray(values, dtype=np.int64)], type=pa.string())
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), words), " ")

