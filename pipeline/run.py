"""Run a built job to completion: execute, account for every row, write the summary, publish."""

from __future__ import annotations

import logging
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from pipeline.errors import JobError
from pipeline.options import runner_name
from pipeline.outputs import SUMMARY, Partition, reason_counts, staged_rows
from transforms.validate import METRICS_NAMESPACE

log = logging.getLogger("seqcodec")


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
) -> dict[str, Any]:
    """Run ``pipeline`` (built to write into ``partition``'s staging) and publish it if every row adds up.

    ``folder`` is the main output ("codes" or "decoded"), its rows counted as ``rows_<done_label>``;
    rejected rows are in "errors".
    Raises JobError (nothing published, staging kept for inspection) if the run fails or the
    counts do not add up.
    """
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise JobError(
            f"the pipeline failed, nothing was published ({first}); staging kept at {partition.staging}"
        ) from exc
    done = staged_rows(partition, folder)
    rejected = staged_rows(partition, "errors")
    elapsed = time.monotonic() - started
    summary = {
        "rows_read": rows_read,
        f"rows_{done_label}": done,
        "rows_rejected": rejected,
        "rejected_by_reason": reason_counts(partition.staged("errors", "*.parquet")),
        "elapsed_seconds": round(elapsed, 2),
        "sequences_per_second": round(rows_read / elapsed, 1) if elapsed > 0 else None,
        "runner": runner_name(pipeline.options),
        **facts,
        "counters": counters(result),
    }
    if done + rejected != rows_read:
        raise JobError(
            f"row accounting failed: read {rows_read}, {done_label} {done} + rejected {rejected}; "
            f"nothing was published (staging kept at {partition.staging})"
        )
    partition.write_json(SUMMARY, summary)
    partition.publish()
    log.info(
        "done: %d rows read, %d %s, %d rejected %s in %.1fs (%.0f sequences/s); output in %s",
        rows_read, done, done_label, rejected, summary["rejected_by_reason"] or "", elapsed,
        summary["sequences_per_second"] or 0, partition.path,
    )
    return summary
