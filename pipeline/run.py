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
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from seqcodec.model.config import Batching
from seqcodec.model.data import first_line
from seqcodec.model.manifest import Manifest
from seqcodec.pipeline.decode_stage import decode_report, log_roundtrip
from seqcodec.pipeline.errors import EXIT_PIPELINE_FAILED, EXIT_TOO_MANY_REJECTS, PipelineFailed, TooManyRejects
from seqcodec.pipeline.options import runner_name
from seqcodec.pipeline.outputs import SUCCESS, SUMMARY, Partition, reason_counts, staged_files, staged_rows
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
            batching=Batching(args.batch_tokens, args.batch_size, args.xla, args.tf_threads,
                              beam_width=args.beam_width),
            num_shards=args.num_shards, max_batch_rows=args.max_batch_rows, **own,
        )

    def model_facts(self) -> dict[str, Any]:
        """What output schemas record about the model that wrote them."""
        return self.manifest.facts()


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
    """Account for every row, write summary.json, apply the gate, publish: the run's summary.

    Safe to retry (a runner may run this bundle again after a failure or a lost worker):
    * the decision is made once: the first attempt writes it into staging's summary.json before
      publishing, and a later attempt takes it from there instead of counting again (a cut-short
      object-store publish has already moved some staged files away, so a recount would be wrong);
    * publishing is idempotent per run id (``Partition.publish``): ``_SUCCESS`` names the run that
      wrote it, so an attempt finding its own run id there does nothing, and one finding a
      half-done publish completes it; a published partition of this run is never touched again.
    A gate that fails is not an error of the stage (retrying cannot change the counts): the
    reason goes into staging's summary.json and the stage ends normally, publishing nothing.
    """
    partition = plan.partition
    if partition.committed_by() == partition.run_id:
        summary = read_json(FileSystems.join(partition.path, SUMMARY))
        partition.publish(summary["files"])  # already committed: only tidies a cut-short attempt's staging
        return summary
    summary = read_json(partition.staged(SUMMARY), missing_ok=True)
    if summary is None or summary.get("run_id") != partition.run_id:
        summary = account(plan, written, job_counters(plan.counted, counts), stats, mismatches)
        partition.write_json(SUMMARY, summary)
    if summary["status"] != "published":
        log.error("not published: %s (summary in %s)", summary["reason"], partition.staged(SUMMARY))
        return summary
    partition.publish(summary["files"])
    log.info("published %s (run %s)", partition.path, partition.run_id)
    return summary


def account(plan: Plan, written: list[str], counts: dict[str, int], stats: Any,
            mismatches: int | None) -> dict[str, Any]:
    """The run's summary from what staging holds, with the outcome: ``status`` "published" or why not."""
    partition = plan.partition
    done = staged_rows(partition, plan.folder)
    rejected = staged_rows(partition, "errors")
    elapsed = time.time() - plan.started
    summary: dict[str, Any] = {
        "status": "published",
        "reason": None,
        "rows_read": plan.rows_read,
        f"rows_{plan.done_label}": done,
        "rows_rejected": rejected,
        "rejected_by_reason": reason_counts(partition.staged("errors", "*.parquet")),
        "elapsed_seconds": round(elapsed, 2),
        "sequences_per_second": round(plan.rows_read / elapsed, 1) if elapsed > 0 else None,
        "runner": plan.runner,
        "run_id": partition.run_id,
        "partition": partition.path,
        "max_error_rate": plan.max_error_rate,
        **plan.facts,
    }
    problems = []
    if done + rejected != plan.rows_read or counts.get("read", plan.rows_read) != plan.rows_read:
        problems.append(
            f"row accounting failed: read {plan.rows_read} (the job read {counts.get('read')}), "
            f"{plan.done_label} {done} + rejected {rejected}"
        )
    if plan.roundtrip is not None:
        expected = staged_rows(partition, plan.expected_folder) if plan.expected_folder else done
        fields, problem = decode_report(stats, plan.roundtrip == "compare", staged_rows(partition, "decoded"),
                                        expected, mismatches)
        summary.update(fields)
        problems += [problem] if problem else []
    summary["counters"] = {f"rows_{name}": n for name, n in sorted(counts.items())}
    summary["files"] = sorted({*staged_files(partition), SUMMARY} - {SUCCESS})
    summary["shards_written"] = len(written)
    rate = rejected / plan.rows_read if plan.rows_read else 0.0
    if rejected:
        log.warning("%d of %d rows rejected (%.2f%%) %s; they are in %s", rejected, plan.rows_read, 100 * rate,
                    summary["rejected_by_reason"], FileSystems.join(partition.path, "errors"))
    if problems:
        summary.update(status="not published", reason="; ".join(problems), exit_code=EXIT_PIPELINE_FAILED)
    elif rate > plan.max_error_rate:
        summary.update(
            status="not published", exit_code=EXIT_TOO_MANY_REJECTS,
            reason=f"{rejected} of {plan.rows_read} rows rejected ({rate:.2%}), more than --max-error-rate "
                   f"{plan.max_error_rate:g} allows",
        )
    return summary


def read_json(path: str, missing_ok: bool = False) -> dict[str, Any] | None:
    """A JSON document on any Beam filesystem (None if it is missing and ``missing_ok``)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return json.loads(handle.read())
    except Exception:
        if missing_ok and not FileSystems.exists(path):
            return None
        raise


# -- the launcher -------------------------------------------------------------------------------------


def launch(pipeline: beam.Pipeline, plan: Plan, wait: bool = True) -> int:
    """Submit the built pipeline; by default wait for it and map its outcome to an exit code (0, 3 or 4).

    Without ``wait`` return 0 once the runner has the job: the job publishes its partition
    itself, and its outcome is in summary.json / _SUCCESS, or in staging's summary.json.
    Raises PipelineFailed (exit 4) or TooManyRejects (exit 3), naming the staging directory.
    """
    partition = plan.partition
    try:
        result = pipeline.run()
        if wait:
            state = result.wait_until_finish()
    except ImportError as exc:  # the runner is not installed (e.g. DataflowRunner without apache-beam[gcp])
        if plan.runner in ("DirectRunner", "direct"):
            raise PipelineFailed(f"the pipeline failed, nothing was published ({first_line(exc)})") from exc
        raise ValueError(f"--runner {plan.runner}: {first_line(exc)}; nothing ran") from None
    except Exception as exc:
        raise PipelineFailed(
            f"the pipeline failed, nothing was published ({first_line(exc)}); staging kept at {partition.staging}"
        ) from exc
    if not wait:
        job_id = job_id_of(result)
        log.info("submitted%s; the job publishes %s itself (%s written last); if it does not, the reason is in %s",
                 f" job {job_id}" if job_id else "", partition.path, SUCCESS, partition.staged(SUMMARY))
        if job_id:
            print(job_id)
        return 0
    if state not in (PipelineState.DONE, None):
        raise PipelineFailed(f"the pipeline ended {state}, nothing was published; staging kept at {partition.staging}")
    summary = outcome(partition)
    if summary["status"] != "published":
        error = TooManyRejects if summary.get("exit_code") == EXIT_TOO_MANY_REJECTS else PipelineFailed
        where = (f"rejected rows are in {partition.staged('errors')} " if error is TooManyRejects else "")
        raise error(f"{summary['reason']}; nothing was published; {where}(summary in {partition.staged(SUMMARY)})")
    if summary["rows_rejected"] and plan.runner != "DirectRunner":  # the DirectRunner's finalize logged it here
        log.warning("%d of %d rows rejected %s; they are in %s", summary["rows_rejected"], summary["rows_read"],
                    summary["rejected_by_reason"], FileSystems.join(partition.path, "errors"))
    log.info(
        "done: %d rows read, %d %s, %d rejected %s in %.1fs (%.0f sequences/s); published %s",
        summary["rows_read"], summary[f"rows_{plan.done_label}"], plan.done_label, summary["rows_rejected"],
        summary["rejected_by_reason"] or "", summary["elapsed_seconds"], summary["sequences_per_second"] or 0,
        partition.path,
    )
    log_roundtrip(summary)
    counted = counters(result)
    # The per-length round-trip counters are dozens; summary.json has them as by_length.
    log.info("beam counters: %s", json.dumps({k: v for k, v in counted.items() if "_len" not in k}))
    log.debug("beam counters by length: %s", json.dumps({k: v for k, v in counted.items() if "_len" in k}))
    return 0


def outcome(partition: Partition) -> dict[str, Any]:
    """The finished run's summary: the published one if _SUCCESS names this run, else staging's."""
    if partition.committed_by() == partition.run_id:
        return read_json(FileSystems.join(partition.path, SUMMARY))
    summary = read_json(partition.staged(SUMMARY), missing_ok=True)
    if summary is None:
        raise PipelineFailed(f"the job ended without a summary, nothing was published; staging: {partition.staging}")
    if summary["status"] == "published":  # decided to publish, but _SUCCESS does not name this run
        raise PipelineFailed(
            f"publishing {partition.path} failed; a reader must not trust it without {SUCCESS}; "
            f"staging kept at {partition.staging}"
        )
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
                facts=facts, **kw)
