"""The job's output formats in one place: the schemas and table builders of codes, decoded and error shards."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

METADATA_PREFIX = "seqcodec."
# Code value types that encode writes. float16 holds every integer up to 2048 exactly, so the length
# field (code[0]) stays exact for models with max_length <= 2048; the state values keep ~3 digits.
CODE_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
FLOAT16_EXACT_LENGTH = 2048


def _with_facts(fields: list[tuple[str, pa.DataType]], facts: dict[str, object]) -> pa.Schema:
    """A schema whose metadata holds the model's facts as ``seqcodec.<name>`` JSON entries."""
    return pa.schema(fields, metadata={f"{METADATA_PREFIX}{k}": json.dumps(v) for k, v in facts.items()})


def check_code_dtype(code_dtype: str, max_length: int) -> None:
    """ValueError (one line) for an unknown dtype or a model whose lengths float16 cannot hold exactly."""
    if code_dtype not in CODE_DTYPES:
        raise ValueError(f"--code-dtype must be one of {', '.join(CODE_DTYPES)}, got {code_dtype!r}")
    if code_dtype == "float16" and max_length > FLOAT16_EXACT_LENGTH:
        raise ValueError(f"--code-dtype float16 keeps lengths exact up to {FLOAT16_EXACT_LENGTH}; "
                         f"this model's max_length is {max_length}")


def code_schema(id_type: pa.DataType, code_size: int, metadata: dict[str, object],
                code_dtype: str = "float32") -> pa.Schema:
    """Code shards: id, length and the length-prefixed code; model facts and the code dtype in the metadata."""
    fields = [("id", id_type), ("length", pa.int32()), ("code", pa.list_(CODE_DTYPES[code_dtype], code_size))]
    return _with_facts(fields, {**metadata, "code_dtype": code_dtype})


def decoded_schema(id_type: pa.DataType, metadata: dict[str, object]) -> pa.Schema:
    """Decoded shards: id and tokens (int32); the decoding model's facts in the schema metadata."""
    return _with_facts([("id", id_type), ("tokens", pa.list_(pa.int32()))], metadata)


def schema_metadata(schema: pa.Schema) -> dict[str, object]:
    """The ``seqcodec.*`` entries of a schema's metadata, decoded (empty if there are none)."""
    raw = schema.metadata or {}
    out = {}
    for key, value in raw.items():
        key = key.decode()
        if key.startswith(METADATA_PREFIX):
            out[key[len(METADATA_PREFIX) :]] = json.loads(value)
    return out


def error_schema(id_type: pa.DataType) -> pa.Schema:
    """Dead-letter rows: the id, why, a sentence for people, and the tokens as they were read."""
    return pa.schema(
        [("id", id_type), ("reason", pa.string()), ("detail", pa.string()), ("tokens", pa.list_(pa.int64()))]
    )


def code_error_schema(id_type: pa.DataType) -> pa.Schema:
    """Dead-letter code rows: the id, why, a sentence for people, and the code as it was read."""
    return pa.schema(
        [("id", id_type), ("reason", pa.string()), ("detail", pa.string()), ("code", pa.list_(pa.float64()))]
    )


def codes_table(ids: pa.Array, codes: np.ndarray) -> pa.Table:
    """(id, length, code) rows from ids and the (N, H+1) code matrix (float32 or float16)."""
    width = codes.shape[1]
    return pa.table(
        {
            "id": ids,
            "length": pa.array(codes[:, 0].astype(np.int32)),
            "code": pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), width),
        }
    )


def tokens_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    """(values, offsets) in Arrow's list layout -> list<int32>."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int32()))
