"""The typed job description: what a job's graph is built from (Job), what it built (Graph), the finalize plan.

Read in the order a job runs: ``Job`` is fixed before the graph is built, ``Graph`` is what the
build returns, ``Plan`` is what the finalize stage needs at the end (it travels to the worker that
runs the stage).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Any

import apache_beam as beam

from seqcodec.model.config import Batching
from seqcodec.model.manifest import Manifest
from seqcodec.pipeline.options import runner_name
from seqcodec.pipeline.specs import JobSpec
from seqcodec.transforms.parquet_io import MAX_BATCH_ROWS
from seqcodec.transforms.partition import GRACE_SECONDS, Partition
from seqcodec.transforms.table import TableRun


@dataclasses.dataclass(frozen=True)
class Job:
    """What every job's graph needs, fixed before it is built: checked inputs, model facts, paths, batching."""

    inputs: Any  # InputFiles or CodeFiles: the checked files, their rows and id type
    model_dir: str
    manifest: Manifest
    staging: str
    id_column: str = "id"
    batching: Batching = Batching()
    num_shards: int = 0
    max_batch_rows: int = MAX_BATCH_ROWS
    progress_total: int | None = None  # rows one worker will see in all, where a single worker does everything

    @classmethod
    def from_spec(cls, spec: JobSpec, inputs: Any, manifest: Manifest, staging: str, **own: Any):
        """The job from the shared settings (``JobSpec``) plus the job's ``own`` fields."""
        return cls(inputs=inputs, model_dir=spec.model_dir, manifest=manifest, staging=staging,
                   id_column=spec.id_column, batching=spec.batching, num_shards=spec.num_shards,
                   max_batch_rows=spec.max_batch_rows, **own)


class JobKind(enum.Enum):
    """Which job a plan finalizes: what its main output folder is called and how its rows are counted."""

    ENCODE = "encode"
    DECODE = "decode"

    @property
    def folder(self) -> str:
        """The main output folder."""
        return "codes" if self is JobKind.ENCODE else "decoded"

    @property
    def done_label(self) -> str:
        """Its rows are counted as ``rows_<done_label>``."""
        return "encoded" if self is JobKind.ENCODE else "decoded"


class RoundTrip(enum.Enum):
    """What the finalize stage reports about the rows a job decoded."""

    LENGTHS = "lengths"  # the decode job: a histogram of the decoded lengths
    COMPARE = "compare"  # encode --decode: the round trip, the decoded rows against the codes written alongside


def model_dir_fact(model_dir: str) -> str:
    """The model directory as summary.json records it: absolute if local, so `seqcodec report` finds it."""
    return model_dir if "://" in model_dir else os.path.abspath(model_dir)


def row_counts(pipeline: beam.Pipeline, counted: dict[str, beam.PCollection]) -> beam.PCollection:
    """``(name, rows)`` per name of ``counted`` that has rows: the rows in all of its tables, in one combine.

    One CombinePerKey for all counts: a CombineGlobally per count added a grouping and a
    default-value stage each, a cost every job paid (docs/BENCHMARKS.md).
    A name without rows is missing; finalize counts it as 0.
    """
    named = [pc | f"Rows {name}" >> beam.Map(lambda t, name=name: (name, t.num_rows)) for name, pc in counted.items()]
    return named | "All rows" >> beam.Flatten(pipeline=pipeline) | "Sum rows" >> beam.CombinePerKey(sum)


@dataclasses.dataclass
class Graph:
    """The built job's PCollections that the finalize stage waits for (``written``) and reads."""

    written: list[beam.PCollection]  # each write's file names: finalize runs after all of them
    counts: beam.PCollection  # (name, rows) from row_counts: "read", "rejected" and the done label
    counted: tuple[str, ...]  # the names counted (a name with no rows has no element)
    stats: beam.PCollection | None = None  # decode stage: one DecodeStats
    mismatches: beam.PCollection | None = None  # encode --decode --mismatches: examples written


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the finalize stage needs, fixed at launch (it travels to the worker that runs the stage)."""

    partition: Partition | TableRun  # a folder's partition, or an Iceberg table's run date (transforms/table.py)
    rows_read: int  # from the input files' footers, counted before the job started
    kind: JobKind
    max_error_rate: float
    started: float  # wall-clock time.time() at launch
    runner: str
    facts: dict[str, Any]
    counted: tuple[str, ...]  # the names of the graph's row counts (Graph.counted)
    roundtrip: RoundTrip | None = None  # None: the job decodes nothing
    grace_seconds: float = GRACE_SECONDS


def make_plan(spec: JobSpec, pipeline: beam.Pipeline, partition: Partition | TableRun, rows_read: int,
              kind: JobKind, facts: dict[str, Any], started: float, counted: tuple[str, ...],
              roundtrip: RoundTrip | None = None) -> Plan:
    """The finalize plan from the shared settings (the runner's name read before run(), which may clear it)."""
    return Plan(partition=partition, rows_read=rows_read, kind=kind, max_error_rate=spec.max_error_rate,
                started=started, runner=runner_name(pipeline.options), facts=facts, counted=counted,
                roundtrip=roundtrip, grace_seconds=spec.grace_seconds)
