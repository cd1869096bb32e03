"""Run a built job to completion: execute, account for every row, write the summary, publish."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from seqcodec.model.data import first_line
from seqcodec.pipeline.errors import PipelineFailed, TooManyRejects
from seqcodec.pipeline.options import runner_name
from seqcodec.pipeline.outputs import SUCCESS, SUMMARY, Partition, reason_counts, staged_rows
from seqcodec.transforms.validate import METRICS_NAMESPACE

log = logging.getLogger("seqcodec")


@dataclasses.dataclass(frozen=True)
class Job:
    """What every job's graph needs, fixed before it is built: checked inputs, model facts, paths, batching."""

    inputs: Any  # InputFiles or CodeFiles: the checked files, their rows and id type
    model_dir: str
    manifest: dict[str, Any]
    staging: str
    id_column: str = "id"
    batch_size: int = 512
    num_shards: int = 0
    max_batch_rows: int = 65536

    @classmethod
    def from_args(cls, args: argparse.Namespace, inputs: Any, manifest: dict[str, Any], staging: str, **own: Any):
        """The job from the shared command-line options (add_io_arguments) plus the job's ``own`` fields."""
        return cls(
            inputs=inputs, model_dir=args.model_dir, manifest=manifest, staging=staging, id_column=args.id_column,
            batch_size=args.batch_size, num_shards=args.num_shards, max_batch_rows=args.max_batch_rows, **own,
        )


def counters(result: Any) -> dict[str, int]:
    """The job's own Beam counters (committed where the runner has them, else attempted)."""
    try:
        query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except Exception:  # some portable runners do not report metrics
        return {}
    out: dict[str, int] = {}
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))


def run_and_publish(
    pipeline: beam.Pipeline,
    partition: Partition,
    rows_read: int,
    folder: str,
    done_label: str,
    started: float,
    facts: dict[str, Any],
    extra_summary: Callable[[Partition], dict[str, Any]] | None = None,
    *,
    max_error_rate: float | None = None,
) -> dict[str, Any]:
    """Run ``pipeline`` (built to write into ``partition``'s staging) and publish it if every row adds up.

    ``folder`` is the main output ("codes" or "decoded"), its rows counted as ``rows_<done_label>``;
    rejected rows are in "errors". ``extra_summary``, if given, is called after a successful run
    with the partition (still staged) and its dict is added to the summary after ``facts``; it
    may raise JobError to stop the publish.
    Raises PipelineFailed (exit 4; nothing published, staging kept for inspection) if the run
    fails, the counts do not add up or the publish fails, and TooManyRejects (exit 3; staging kept,
    summary.json included) if more than ``max_error_rate`` of the rows were rejected.
    """
    runner = runner_name(pipeline.options)  # before run(): portable runners clear options.runner
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        raise PipelineFailed(
            f"the pipeline failed, nothing was published ({first_line(exc)}); staging kept at {partition.staging}"
        ) from exc
    done = staged_rows(partition, folder)
    rejected = staged_rows(partition, "errors")
    if extra_summary is not None:
        facts = {**facts, **extra_summary(partition)}
    elapsed = time.monotonic() - started
    summary = {
        "rows_read": rows_read,
        f"rows_{done_label}": done,
        "rows_rejected": rejected,
        "rejected_by_reason": reason_counts(partition.staged("errors", "*.parquet")),
        "elapsed_seconds": round(elapsed, 2),
        "sequences_per_second": round(rows_read / elapsed, 1) if elapsed > 0 else None,
        "runner": runner,
        "run_id": partition.run_id,
        "partition": partition.path,
        **facts,
        "counters": counters(result),
    }
    if done + rejected != rows_read:
        raise PipelineFailed(
            f"row accounting failed: read {rows_read}, {done_label} {done} + rejected {rejected}; "
            f"nothing was published (staging kept at {partition.staging})"
        )
    partition.write_json(SUMMARY, summary)
    check_error_rate(rows_read, rejected, max_error_rate, partition)
    try:
        partition.publish()
    except OSError as exc:  # BeamIOError is an OSError too
        raise PipelineFailed(
            f"publishing {partition.path} failed ({first_line(exc)}); "
            f"a reader must not trust it without {SUCCESS}; staging kept at {partition.staging}"
        ) from exc
    log.info(
        "done: %d rows read, %d %s, %d rejected %s in %.1fs (%.0f sequences/s); published %s",
        rows_read, done, done_label, rejected, summary["rejected_by_reason"] or "", elapsed,
        summary["sequences_per_second"] or 0, partition.path,
    )
    return summary


def check_error_rate(rows_read: int, rejected: int, max_error_rate: float | None, partition: Partition) -> None:
    """TooManyRejects if the rejected fraction is above ``max_error_rate`` (nothing published, staging kept)."""
    rate = rejected / rows_read if rows_read else 0.0
    if max_error_rate is None or rate <= max_error_rate:
        return
    raise TooManyRejects(
        f"{rejected} of {rows_read} rows rejected ({rate:.2%}), more than --max-error-rate {max_error_rate:g} "
        f"allows; nothing was published; rejected rows are in {partition.staged('errors')} "
        f"(summary in {partition.staged(SUMMARY)})"
    )
