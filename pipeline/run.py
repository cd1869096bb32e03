"""From a built job to a published partition: the in-pipeline finalize stage, and the launcher that submits it.

Read top to bottom: ``launch`` submits the pipeline (and by default waits and reports); the
pipeline's own last stage, ``finalize``, runs once after every shard is written and does the
rest: account for every row, write summary.json, apply the error-rate gate, publish.
Because publishing happens inside the job, a job whose launcher has gone (``--no-wait``, a
Dataflow flex template, a detached Flink submission) still publishes its partition.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from seqcodec.model.config import Batching
from seqcodec.model.data import first_line
from seqcodec.model.manifest import Manifest
from seqcodec.pipeline.decode_stage import MISMATCHES, decode_report, log_roundtrip
from seqcodec.pipeline.errors import EXIT_PIPELINE_FAILED, EXIT_TOO_MANY_REJECTS, PipelineFailed, TooManyRejects
from seqcodec.pipeline.options import DIRECT_RUNNERS, runner_name
from seqcodec.transforms.parquet_io import read_schema
from seqcodec.transforms.partition import (
    GRACE_SECONDS,
    NOT_PUBLISHED,
    PUBLISHED,
    SUCCESS,
    SUMMARY,
    Partition,
    PartitionBusy,
    RunSummary,
)
from seqcodec.transforms.validate import METRICS_NAMESPACE

log = logging.getLogger("seqcodec")


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
            batching=Batching(args.batch_tokens, args.batch_size, args.tf_threads, beam_width=args.beam_width),
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

    partition: Partition
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


@dataclasses.dataclass(frozen=True)
class Built:
    """A job built and checked, ready to launch: its pipeline, finalize plan, graph and summary PCollection."""

    pipeline: beam.Pipeline
    plan: Plan
    graph: Graph
    summary: beam.PCollection  # the finalize stage's output: one dict, the run's summary
    wait: bool = True

    def launch(self) -> int:
        return launch(self.pipeline, self.plan, self.wait)


# -- the pipeline's last stage ------------------------------------------------------------------------


def add_finalize(pipeline: beam.Pipeline, graph: Graph, plan: Plan) -> beam.PCollection:
    """The job's last stage; returns its output, the run's summary (one dict).

    As Beam's own file sinks finalize (iobase.WriteImpl): a singleton PCollection processed with
    every write's results as side inputs, so it runs once, after every shard has been written.
    """
    written = graph.written | "All written" >> beam.Flatten()
    side: dict[str, Any] = {"written": beam.pvalue.AsList(written), "counts": beam.pvalue.AsDict(graph.counts)}
    if graph.stats is not None:
        side["stats"] = beam.pvalue.AsSingleton(graph.stats)
    if graph.mismatches is not None:
        side["mismatches"] = beam.pvalue.AsSingleton(graph.mismatches)
    return pipeline | "Finalize once" >> beam.Create([None]) | "Finalize" >> beam.Map(finalize, plan, **side)


def job_counters(counted: tuple[str, ...], counts: dict[str, int]) -> dict[str, int]:
    """The pipeline's own row counts by name, 0 where none came, with ``valid`` = ``read`` - ``rejected``."""
    out = {name: counts.get(name, 0) for name in counted}
    if "rejected" in out:
        out["valid"] = out["read"] - out.pop("rejected")
    return out


def finalize(_: None, plan: Plan, written: list[str], counts: dict[str, int], stats: Any = None,
             mismatches: int | None = None) -> dict[str, Any]:
    """Account for every row, record the decision, commit if it says so: the run's summary (as summary.json has it).

    Safe to run more than once, even at the same time (a runner may retry this bundle, or run it
    twice): the decision is written once into the run's own directory, which nothing ever moves,
    and a later attempt takes it from there instead of counting again; the commit itself is one
    atomic step that leaves the same partition however often it runs (``Partition.commit``).
    A gate that fails is not an error of the stage (retrying cannot change the counts): the
    reason goes into the run's summary.json and the stage ends normally, committing nothing.
    """
    partition = plan.partition
    summary = partition.decision()
    if summary is None:
        summary = account(plan, written, job_counters(plan.counted, counts), stats, mismatches)
        partition.write_decision(summary)
    if not summary.published:
        log.error("not published: %s (summary in %s)", summary.reason, partition.staged(SUMMARY))
        partition.release_lease()
        return summary.to_dict()
    try:
        previous = partition.commit(summary.files, plan.job, summary.rows_done)
    except PartitionBusy as exc:
        log.error("not published: %s", exc)
        return {**summary.to_dict(), "status": NOT_PUBLISHED, "reason": str(exc), "exit_code": EXIT_PIPELINE_FAILED}
    if previous is not None:
        log.info("published %s (run %s, %s rows %s), replacing run %s%s", partition.path, partition.run_id,
                 f"{summary.rows_done:,}", plan.done_label, previous.run_id or "(unnamed)",
                 f" ({previous.rows:,} rows)" if previous.rows >= 0 else "")
    partition.clean_up(plan.grace_seconds)
    return summary.to_dict()


def written_rows(written: list[str], folder: str) -> int:
    """Rows in the shards of ``folder`` that the writes returned, from their footers."""
    return sum(read_schema(path)[1] for path in in_folder(written, folder))


def in_folder(written: list[str], folder: str) -> list[str]:
    return sorted(p for p in written if FileSystems.split(FileSystems.split(p)[0])[1] == folder)


def account(plan: Plan, written: list[str], counts: dict[str, int], stats: Any,
            mismatches: int | None) -> RunSummary:
    """The run's summary from the files its writes returned, with the decision: publish, or why not."""
    partition = plan.partition
    done = written_rows(written, plan.folder)
    rejected = written_rows(written, "errors")
    elapsed = time.time() - plan.started
    relative = [p[len(partition.staging):].lstrip("/") for p in written if p.startswith(partition.staging)]
    extra = ["/".join(MISMATCHES)] if mismatches is not None else []
    summary = RunSummary(
        run_id=partition.run_id, job=plan.job, status=PUBLISHED, reason=None, rows_read=plan.rows_read,
        rows_done=done, rows_rejected=rejected, rejected_by_reason=reason_counts(in_folder(written, "errors")),
        partition=partition.path, run_dir=partition.staging, files=sorted({*relative, *extra, SUMMARY}),
        runner=plan.runner, elapsed_seconds=round(elapsed, 2),
        sequences_per_second=round(plan.rows_read / elapsed, 1) if elapsed > 0 else None,
        max_error_rate=plan.max_error_rate, counters={f"rows_{name}": n for name, n in sorted(counts.items())},
        shards_written=len(written), details=dict(plan.facts),
    )
    problems = []
    if done + rejected != plan.rows_read or counts.get("read", plan.rows_read) != plan.rows_read:
        problems.append(
            f"row accounting failed: read {plan.rows_read} (the job read {counts.get('read')}), "
            f"{plan.done_label} {done} + rejected {rejected}"
        )
    if plan.roundtrip is not None:
        expected = written_rows(written, plan.expected_folder) if plan.expected_folder else done
        fields, problem = decode_report(stats, plan.roundtrip == "compare", written_rows(written, "decoded"),
                                        expected, mismatches)
        summary.details.update(fields)
        problems += [problem] if problem else []
    rate = rejected / plan.rows_read if plan.rows_read else 0.0
    if problems:
        summary.refuse("; ".join(problems), EXIT_PIPELINE_FAILED)
    elif rate > plan.max_error_rate:
        summary.refuse(f"{rejected} of {plan.rows_read} rows rejected ({rate:.2%}), more than --max-error-rate "
                       f"{plan.max_error_rate:g} allows", EXIT_TOO_MANY_REJECTS)
    if rejected:
        log.warning("%d of %d rows rejected (%.2f%%) %s; they are in %s", rejected, plan.rows_read, 100 * rate,
                    summary.rejected_by_reason, errors_folder(partition, summary.published))
    return summary


def errors_folder(partition: Partition, published: bool) -> str:
    """Where a run's rejected rows are: the partition's errors/ once published locally, else its run directory's."""
    if published and partition.local:
        return FileSystems.join(partition.path, "errors")
    return partition.staged("errors")


def reason_counts(paths: list[str]) -> dict[str, int]:
    """Rejected rows by reason, from the error shards' ``reason`` column alone."""
    counts: dict[str, int] = {}
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_numpy(zero_copy_only=False)
        for name, count in zip(*np.unique(reasons.astype(str), return_counts=True), strict=True):
            counts[str(name)] = counts.get(str(name), 0) + int(count)
    return dict(sorted(counts.items()))


# -- the launcher -------------------------------------------------------------------------------------


def launch(pipeline: beam.Pipeline, plan: Plan, wait: bool = True) -> int:
    """Take the partition's lease, submit the pipeline; by default wait for it and map its outcome to 0, 3 or 4.

    Without ``wait`` return 0 once the runner has the job: the job commits its partition itself,
    and its outcome is in _SUCCESS and summary.json, or in its run directory's summary.json. On
    the in-process DirectRunner the job has ended by then anyway, so its outcome is reported.
    Raises PartitionBusy (exit 75) when another live run holds the partition, PipelineFailed
    (exit 4) or TooManyRejects (exit 3), naming the run directory.
    """
    partition = plan.partition
    in_process = plan.runner in DIRECT_RUNNERS
    partition.take_lease(pid_bound=wait or in_process)
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
        log.info("submitted%s; the job publishes %s itself (%s written last); if it does not, the reason is in %s",
                 f" job {job_id}" if job_id else "", partition.path, SUCCESS, partition.staged(SUMMARY))
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
        summary.rows_read, summary.rows_done, plan.done_label, summary.rows_rejected,
        summary.rejected_by_reason or "", summary.elapsed_seconds, summary.sequences_per_second or 0,
        partition.path, replaced(partition),
    )
    log_roundtrip(summary.to_dict())
    counted = counters(result)
    # The per-length round-trip counters are dozens; summary.json has them as by_length.
    log.info("beam counters: %s", json.dumps({k: v for k, v in counted.items() if "_len" not in k}))
    log.debug("beam counters by length: %s", json.dumps({k: v for k, v in counted.items() if "_len" in k}))
    return 0


def replaced(partition: Partition) -> str:
    """", replacing run X (N rows)" when this run's commit replaced another run, else ""."""
    current = partition.committed()
    if current is None or current.run_id != partition.run_id or not current.superseded:
        return ""
    rows = f" ({current.replaced_rows:,} rows)" if current.replaced_rows >= 0 else ""
    return f", replacing run {current.superseded[-1][0] or '(unnamed)'}{rows}"


def outcome(partition: Partition) -> RunSummary:
    """The finished run's summary and decision, from its own directory; PipelineFailed if it decided to
    publish but did not commit."""
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


def make_plan(args: argparse.Namespace, pipeline: beam.Pipeline, partition: Partition, rows_read: int,
              folder: str, done_label: str, facts: dict[str, Any], started: float, **kw: Any) -> Plan:
    """The finalize plan from the shared options (the runner's name read before run(), which may clear it)."""
    return Plan(partition=partition, rows_read=rows_read, folder=folder, done_label=done_label,
                max_error_rate=args.max_error_rate, started=started, runner=runner_name(pipeline.options),
                facts=facts, grace_seconds=args.grace_seconds, **kw)
