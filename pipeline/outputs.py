"""A run's output partition: write into staging, check, then publish with _SUCCESS written last."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms.parquet_io import count_rows

log = logging.getLogger("seqcodec")

SUCCESS = "_SUCCESS"
SUMMARY = "summary.json"


def _parent_and_name(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    parent, name = FileSystems.split(path)
    return parent, name


class Partition:
    """The published directory of one run and the staging directory it is built in.

    Staging is a hidden sibling (``.NAME.staging-RUNID``), so nothing lands in the published
    directory until ``publish`` swaps it in whole. On a local or POSIX filesystem the swap is
    two renames; on object stores (no atomic rename) ``_SUCCESS``, written last, marks a
    complete partition.
    """

    def __init__(self, path: str) -> None:
        self.path = path.rstrip("/")
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        parent, name = _parent_and_name(self.path)
        self.parent, self.name = parent, name
        self.staging = FileSystems.join(parent, f".{name}.staging-{self.run_id}")

    def staged(self, *parts: str) -> str:
        return FileSystems.join(self.staging, *parts)

    def prepare(self) -> None:
        FileSystems.mkdirs(self.staging)

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        with FileSystems.create(self.staged(name)) as handle:
            handle.write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode())

    def publish(self) -> None:
        """Replace the published partition with staging, then write _SUCCESS."""
        old = FileSystems.join(self.parent, f".{self.name}.old-{self.run_id}")
        if FileSystems.exists(self.path):
            FileSystems.rename([self.path], [old])
        FileSystems.rename([self.staging], [self.path])
        with FileSystems.create(FileSystems.join(self.path, SUCCESS)) as handle:
            handle.write(b"")
        if FileSystems.exists(old):
            FileSystems.delete([old])

    def discard(self) -> None:
        if FileSystems.exists(self.staging):
            FileSystems.delete([self.staging])


def staged_rows(partition: Partition, folder: str) -> int:
    """Rows written to ``folder`` of the staging directory (0 if it has no shards)."""
    return count_rows(partition.staged(folder, "*.parquet"))


def reason_counts(pattern: str) -> dict[str, int]:
    """Rejected rows by reason, from the error shards' ``reason`` column alone."""
    counts: dict[str, int] = {}
    try:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # no shards written
        return counts
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_numpy(zero_copy_only=False)
        for name, count in zip(*np.unique(reasons.astype(str), return_counts=True), strict=True):
            counts[str(name)] = counts.get(str(name), 0) + int(count)
    return dict(sorted(counts.items()))
