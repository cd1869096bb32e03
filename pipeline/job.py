"""The typed job description: what a job's graph is built from (Job), what it built (Graph), and the finalize plan.

Read in the order a job runs: ``Job`` is fixed before the graph is built, ``Graph`` is what the
build returns, ``Plan`` is what the finalize stage needs at the end (it travels to the worker that
runs the stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import apache_beam as beam

from seqcodec.model.config import Batching
from seqcodec.model.manifest import Manifest
from seqcodec.pipeline.options import runner_name
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
    max_batch_rows: int = 65536
    progress_total: int | None = None  # rows one worker will see in all, where a single worker does everything

    @classmethod
    def from_args(cls, args: argparse.Namespace, inputs: Any, manifest: Manifest, staging: str, **own: Any):
        """The job from the shared command-line options (add_io_arguments) plus the job's ``own`` fields."""
        return cls(
            inputs=inputs, model_dir=args.model_dir, manifest=manifest, staging=staging, id_column=args.id_column,
            batching=Batching(args.batch_tokens, args.batch_size, args.xla, args.tf_threads,
                              beam_width=args.beam_width),
            num_shards=args.num_shards, max_batch_rows=args.max_batch_rows, **own,
        )



def model_dir_fact(model_dir: str) -> str:
    """The model directory as summary.json records it: absolute if local, so `seqcodec report` finds it."""
    return model_dir if "://" in model_dir else os.path.abspath(model_dir)


def row_counts(pipeline: beam.Pipeline, counted: dict[str, beam.PCollection]) -> beam.PCollection:
    """``(name, rows)`` per name of ``counted`` that has rows: the rows in all of its tables, in one combine.

    One CombinePerKey for all counts: a CombineGlobally per count added a grouping and a
    default-value stage each (0.2-0.3 s of every job on the DirectRunner, docs/BENCHMARKS.md).
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
    stats: beam.PCollection | None = None  # decode stage: summed per-length counts
    mismatches: beam.PCollection | None = None  # encode --decode --mismatches: examples written


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the finalize stage needs, fixed at launch (it travels to the worker that runs the stage)."""

    partition: Partition | TableRun  # a folder's partition, or an Iceberg table's run date (transforms/table.py)
    rows_read: int  # from the input files' footers, counted before the job started
    folder: str  # the main output: "codes" or "decoded"
    done_label: str  # its rows are counted as rows_<done_label>
    max_error_rate: float
    started: float  # wall-clock time.time() at launch
    runner: str
    facts: dict[str, Any]
    counted: tuple[str, ...]  # the names of the graph's row counts (Graph.counted)
    roundtrip: str | None = None  # None, "lengths" (decode job) or "compare" (encode --decode)
    expected_folder: str | None = None  # with "compare": the decoded rows must match this folder's
    grace_seconds: float = GRACE_SECONDS

    @property
    def job(self) -> str:
        return "encode" if self.folder == "codes" else "decode"


def make_plan(args: argparse.Namespace, pipeline: beam.Pipeline, partition: Partition, rows_read: int,
              folder: str, done_label: str, facts: dict[str, Any], started: float, **kw: Any) -> Plan:
    """The finalize plan from the shared options (the runner's name read before run(), which may clear it)."""
    return Plan(partition=partition, rows_read=rows_read, folder=folder, done_label=done_label,
                max_error_rate=args.max_error_rate, started=started, runner=runner_name(pipeline.options),
                facts=facts, grace_seconds=args.grace_seconds, **kw)
