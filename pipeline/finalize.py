"""The job's last stage: account for every row, write summary.json, apply the error-rate gate, publish.

``add_finalize`` adds the stage to a built graph; ``finalize`` runs once, after every shard is
written. Because publishing happens inside the job, a job whose launcher has gone (``--no-wait``,
a Dataflow flex template, a detached Flink submission) still publishes its partition.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from seqcodec.pipeline.decode_stage import MISMATCHES, DecodeStats, decode_report, heldout_reference, log_drift
from seqcodec.pipeline.job import Graph, JobKind, Plan, RoundTrip
from seqcodec.pipeline.runtime import EXIT_PIPELINE_FAILED, EXIT_TOO_MANY_REJECTS
from seqcodec.transforms.parquet_io import read_schema
from seqcodec.transforms.partition import NOT_PUBLISHED, PUBLISHED, SUMMARY, Partition, PartitionBusy, RunSummary
from seqcodec.transforms.table import ERRORS_SUFFIX, TableCommitFailed, TableRun

log = logging.getLogger("seqcodec")


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


def finalize(_: None, plan: Plan, written: list[str], counts: dict[str, int], stats: DecodeStats | None = None,
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
        previous = partition.commit(summary.files, plan.kind.value, summary.rows_done)
    except (PartitionBusy, TableCommitFailed) as exc:
        log.error("not published: %s", exc)
        return {**summary.to_dict(), "status": NOT_PUBLISHED, "reason": str(exc), "exit_code": EXIT_PIPELINE_FAILED}
    if previous is not None:
        log.info("published %s (run %s, %s rows %s), replacing run %s%s", partition.path, partition.run_id,
                 f"{summary.rows_done:,}", plan.kind.done_label, previous.run_id or "(unnamed)",
                 f" ({previous.rows:,} rows)" if previous.rows >= 0 else "")
    partition.clean_up(plan.grace_seconds)
    return summary.to_dict()


def written_rows(written: list[str], folder: str) -> int:
    """Rows in the shards of ``folder`` that the writes returned, from their footers."""
    return sum(read_schema(path)[1] for path in in_folder(written, folder))


def in_folder(written: list[str], folder: str) -> list[str]:
    return sorted(p for p in written if FileSystems.split(FileSystems.split(p)[0])[1] == folder)


def account(plan: Plan, written: list[str], counts: dict[str, int], stats: DecodeStats | None,
            mismatches: int | None) -> RunSummary:
    """The run's summary from the files its writes returned, with the decision: publish, or why not."""
    partition = plan.partition
    done = written_rows(written, plan.kind.folder)
    rejected = written_rows(written, "errors")
    elapsed = time.time() - plan.started
    relative = [p[len(partition.staging):].lstrip("/") for p in written if p.startswith(partition.staging)]
    extra = ["/".join(MISMATCHES)] if mismatches is not None else []
    summary = RunSummary(
        run_id=partition.run_id, job=plan.kind.value, status=PUBLISHED, reason=None, rows_read=plan.rows_read,
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
            f"{plan.kind.done_label} {done} + rejected {rejected}"
        )
    if plan.roundtrip is not None:
        compare = plan.roundtrip is RoundTrip.COMPARE
        # Comparing, every code written must come back decoded; the decode job's own output is its measure.
        expected = written_rows(written, JobKind.ENCODE.folder) if compare else done
        fields, problem = decode_report(stats, compare, written_rows(written, "decoded"),
                                        expected, mismatches, heldout_reference(plan.facts))
        summary.details.update(fields)
        log_drift(fields)
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


def errors_folder(partition: Partition | TableRun, published: bool) -> str:
    """Where a run's rejected rows are: the partition's errors/ once published locally (the errors table's
    run date for a table), else its run directory's."""
    if published and isinstance(partition, TableRun):
        return f"{partition.ref.identifier}{ERRORS_SUFFIX} (run_date={partition.run_date})"
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
