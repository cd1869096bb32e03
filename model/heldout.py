"""The training split recorded in the model directory: a 64-bit hash of every sequence and its role.

``split.parquet`` lists each distinct token sequence that training read, by hash, as ``train``,
``validation`` or ``test``, so a round trip on any input can tell rows the model trained on from
rows it held out and from rows it never saw. Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqcodec.model.manifest import Manifest, read_checked

SPLIT_FILE = "split.parquet"
HASH_NAME = "seqcodec-token-hash-1"  # recorded in the manifest: a record made with another hash cannot be read
ROLES = ("train", "validation", "test")
GROUPS = ("training", "held_out", "unseen")  # how a round trip groups rows: trained on, held out, not in the record

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 with full avalanche."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def token_hashes(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One uint64 per row of ``values[offsets[i]:offsets[i + 1]]``: equal sequences, equal hashes.

    Each (position, token) is mixed on its own and the row's mixes are summed, so the whole
    computation is a few numpy passes (no Python loop on the job's hot path); the row's length
    is mixed in last. Tokens must be below 2**32.
    """
    values = np.asarray(values, dtype=np.int64).astype(np.uint64)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    positions = np.arange(values.size, dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
    mixed = _mix((positions.astype(np.uint64) << np.uint64(32)) | values)
    with np.errstate(over="ignore"):
        running = np.zeros(values.size + 1, dtype=np.uint64)
        np.cumsum(mixed, out=running[1:])
        start = offsets[:-1] - offsets[0]
        sums = running[start + lengths] - running[start]  # wraps modulo 2**64, as the sum did
        return _mix(sums ^ _mix(lengths.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))


def split_table(hashes: np.ndarray, train: np.ndarray, validation: np.ndarray, test: np.ndarray) -> pa.Table:
    """The record: distinct hashes, sorted, each with its role (a sequence trained on anywhere is ``train``)."""
    role = np.full(hashes.size, len(ROLES), dtype=np.int8)
    for code in reversed(range(len(ROLES))):  # train last, so it wins over a duplicate held out
        role[(train, validation, test)[code]] = code
    order = np.lexsort((role, hashes))
    hashes, role = hashes[order], role[order]
    first = np.ones(hashes.size, dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]  # the smallest role, i.e. train before held out, comes first
    keep = first & (role < len(ROLES))
    return pa.table({"hash": pa.array(hashes[keep], pa.uint64()),
                     "split": pa.DictionaryArray.from_arrays(pa.array(role[keep]), pa.array(ROLES))})


def split_bytes(table: pa.Table) -> bytes:
    """The record as Parquet bytes: sorted hashes delta-encoded (about 6 bytes a row instead of 8)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, use_dictionary=["split"], compression="zstd",
                   column_encoding={"hash": "DELTA_BINARY_PACKED"})
    return buffer.getvalue()


def split_facts(table: pa.Table) -> dict[str, Any]:
    """The manifest's ``split`` entry for a record: its file, hash and rows per role."""
    counts = table.column("split").combine_chunks().indices.to_numpy()
    return {"file": SPLIT_FILE, "hash": HASH_NAME,
            "rows": {name: int((counts == code).sum()) for code, name in enumerate(ROLES)}}


@dataclasses.dataclass(frozen=True)
class SplitRecord:
    """A model's training split: sorted hashes and their role codes (indices into ROLES)."""

    hashes: np.ndarray
    roles: np.ndarray

    def groups(self, hashes: np.ndarray) -> np.ndarray:
        """Per hash, its round-trip group as an index into GROUPS: training, held_out or unseen."""
        at = np.searchsorted(self.hashes, hashes)
        found = at < self.hashes.size
        found[found] = self.hashes[at[found]] == hashes[found]
        out = np.full(hashes.size, GROUPS.index("unseen"), dtype=np.int64)
        trained = np.zeros(hashes.size, dtype=bool)
        trained[found] = self.roles[at[found]] == ROLES.index("train")
        out[found] = GROUPS.index("held_out")
        out[trained] = GROUPS.index("training")
        return out


def split_unavailable(manifest: Manifest) -> str | None:
    """Why a model has no usable split record (None if it has one)."""
    entry = manifest.extra.get("split")
    if not isinstance(entry, dict) or "file" not in entry:
        return "the model directory records no training split (trained before seqcodec kept one)"
    if entry.get("hash") != HASH_NAME:
        return f"the model's split record uses hash {entry.get('hash')!r}, not {HASH_NAME!r}"
    return None


def read_split(model_dir: str | os.PathLike, manifest: Manifest) -> SplitRecord:
    """Read and check the model's split record (on any Beam filesystem): its sha256 must be the manifest's.

    ModelDirError (one line) if it is missing, damaged or not the one the manifest names; call
    ``split_unavailable`` first for models that have none.
    """
    data = read_checked(model_dir, manifest, manifest.extra["split"]["file"])
    table = pq.read_table(io.BytesIO(data))
    roles = table.column("split").combine_chunks()
    codes = np.array([ROLES.index(r) for r in roles.dictionary.to_pylist()], dtype=np.int8)[roles.indices.to_numpy()]
    return SplitRecord(table.column("hash").to_numpy(), codes)
