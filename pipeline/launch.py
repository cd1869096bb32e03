"""Launching a built job and reporting its outcome: submit, wait, map the run's decision to an exit code.

``launch`` takes the partition's lease and submits the pipeline (by default it waits and reports);
the pipeline's own finalize stage (``pipeline/finalize.py``) decides and publishes, so the launcher
only reads the decision back from the run's directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from seqcodec.model.errors import first_line
from seqcodec.pipeline.decode_stage import log_roundtrip
from seqcodec.pipeline.finalize import errors_folder
from seqcodec.pipeline.job import Graph, Plan
from seqcodec.pipeline.options import DIRECT_RUNNERS, discard
from seqcodec.pipeline.runtime import EXIT_TOO_MANY_REJECTS, PipelineFailed, TooManyRejects
from seqcodec.transforms.partition import SUCCESS, SUMMARY, Partition, RunSummary
from seqcodec.transforms.table import TableRun
from seqcodec.transforms.validate import METRICS_NAMESPACE

log = logging.getLogger("seqcodec")


@dataclasses.dataclass(frozen=True)
class Built:
    """A job built and checked, ready to launch: its pipeline, finalize plan, graph and summary PCollection."""

    pipeline: beam.Pipeline
    plan: Plan
    graph: Graph
    summary: beam.PCollection  # the finalize stage's output: one dict, the run's summary
    wait: bool = True
    made: bool = True  # the job made ``pipeline`` (False: the caller handed it one, e.g. a TestPipeline)

    def launch(self) -> int:
        """Launch the job (``launch``); its exit code."""
        return launch(self.pipeline, self.plan, self.wait, self.made)


def launch(pipeline: beam.Pipeline, plan: Plan, wait: bool = True, made: bool = True) -> int:
    """Take the partition's lease, submit the pipeline; by default wait for it and map its outcome to 0, 3 or 4.

    Without ``wait`` return 0 once the runner has the job: the job commits its partition itself,
    and its outcome is in _SUCCESS and summary.json, or in its run directory's summary.json. On
    the in-process DirectRunner the job has ended by then anyway, so its outcome is reported.
    Raises PartitionBusy (exit 75) when another live run holds the partition, PipelineFailed
    (exit 4) or TooManyRejects (exit 3), naming the run directory. Refused, a pipeline the job ``made``
    leaves no Beam temp directory; a handed one stays its caller's.
    """
    partition = plan.partition
    in_process = plan.runner in DIRECT_RUNNERS
    try:
        partition.take_lease(pid_bound=wait or in_process)
    except BaseException:  # refused (another run writes the partition): the pipeline will not run
        if made:
            discard(pipeline)
        raise
    try:
        result = pipeline.run()
        if wait or in_process:
            state = result.wait_until_finish()
    except ImportError as exc:  # the runner is not installed (e.g. DataflowRunner without apache-beam[gcp])
        partition.release_lease()
        if in_process:
            raise PipelineFailed(f"the pipeline failed, nothing was published ({first_line(exc)})") from exc
        hint = "; pip install 'seqcodec[gcp]'" if "dataflow" in plan.runner.lower() else ""
        raise ValueError(f"--runner {plan.runner}: {first_line(exc)}{hint}; nothing ran") from None
    except Exception as exc:
        if wait or in_process:
            partition.release_lease()
        raise PipelineFailed(
            f"the pipeline failed, nothing was published ({first_line(exc)}); its files are in {partition.staging}"
        ) from exc
    except BaseException:  # interrupted: this run will not commit
        if wait or in_process:
            partition.release_lease()
        raise
    if not wait and not in_process:
        job_id = job_id_of(result)
        how = "a snapshot with its run id" if isinstance(partition, TableRun) else f"{SUCCESS} written last"
        log.info("submitted%s; the job publishes %s itself (%s); if it does not, the reason is in %s",
                 f" job {job_id}" if job_id else "", partition.path, how, partition.staged(SUMMARY))
        if job_id:
            print(job_id)
        return 0
    if not wait:
        log.info("--no-wait: the DirectRunner ran the job in this process; its outcome follows")
    partition.release_lease()  # a run that ended without committing gives the partition up
    if state not in (PipelineState.DONE, None):
        raise PipelineFailed(f"the pipeline ended {state}, nothing was published; its files are in {partition.staging}")
    summary = outcome(partition)
    if not summary.published:
        error = TooManyRejects if summary.exit_code == EXIT_TOO_MANY_REJECTS else PipelineFailed
        where = (f"rejected rows are in {partition.staged('errors')} " if error is TooManyRejects else "")
        raise error(f"{summary.reason}; nothing was published; {where}(summary in {partition.staged(SUMMARY)})")
    if summary.rows_rejected and not in_process:  # the in-process finalize logged it here
        log.warning("%d of %d rows rejected %s; they are in %s", summary.rows_rejected, summary.rows_read,
                    summary.rejected_by_reason, errors_folder(partition, True))
    log.info(
        "done: %d rows read, %d %s, %d rejected %s in %.1fs (%.0f sequences/s); published %s%s",
        summary.rows_read, summary.rows_done, plan.kind.done_label, summary.rows_rejected,
        summary.rejected_by_reason or "", summary.elapsed_seconds, summary.sequences_per_second or 0,
        partition.path, replaced(partition),
    )
    log_roundtrip(summary.to_dict(), warn_drift=not in_process)  # in process, the job's last stage warned here
    counted = counters(result)
    # The per-length round-trip counters are dozens; summary.json has them as by_length.
    log.info("beam counters: %s", json.dumps({k: v for k, v in counted.items() if "_len" not in k}))
    log.debug("beam counters by length: %s", json.dumps({k: v for k, v in counted.items() if "_len" in k}))
    return 0


def replaced(partition: Partition | TableRun) -> str:
    """", replacing run X (N rows)" when this run's commit replaced another run, else ""."""
    if isinstance(partition, TableRun):
        return ""  # the finalize stage logged it (the table keeps no record of what a snapshot replaced)
    current = partition.committed()
    if current is None or current.run_id != partition.run_id or not current.superseded:
        return ""
    rows = f" ({current.replaced_rows:,} rows)" if current.replaced_rows >= 0 else ""
    return f", replacing run {current.superseded[-1][0] or '(unnamed)'}{rows}"


def outcome(partition: Partition | TableRun) -> RunSummary:
    """The finished run's summary and decision, from its own directory; PipelineFailed if it decided to
    publish but did not commit."""
    if isinstance(partition, TableRun):
        return table_outcome(partition)
    current = partition.committed()
    summary = partition.decision()
    if summary is None:
        raise PipelineFailed(f"the job ended without a summary, nothing was published; its files are in "
                             f"{partition.staging}")
    if summary.published and (current is None or current.run_id != partition.run_id):
        holder = partition.lease()
        why = f"another run took the partition over: {holder.describe()}" if holder else "the commit did not happen"
        if current is not None and current.committed_at > partition.started():
            why = f"run {current.run_id} committed it meanwhile"
        raise PipelineFailed(f"publishing {partition.path} failed ({why}); its files are in {partition.staging}")
    return summary


def table_outcome(run: TableRun) -> RunSummary:
    """``outcome`` for a table: the run's decision, and whether the codes table has the run's snapshot."""
    summary = run.decision()
    if summary is None:
        raise PipelineFailed(f"the job ended without a summary, nothing was published; its files are in {run.staging}")
    if summary.published and not run.committed_here():
        raise PipelineFailed(f"publishing {run.path} failed (the commit did not happen; the job's log says why); "
                             f"its files are in {run.staging}")
    return summary


def job_id_of(result: Any) -> str | None:
    """The runner's id for a submitted job, where it has one."""
    for name in ("job_id", "_job_id"):
        value = getattr(result, name, None)
        value = value() if callable(value) else value
        if value:
            return str(value)
    return None


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
