"""`seqcodec decode` / `python -m seqcodec.pipeline.decode`: the Beam job from code Parquet back to token Parquet.

The decode stage (``add_decode_stage``) is shared with ``seqcodec encode --decode``, which also
hands it the original tokens so it can measure the round trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from seqcodec.pipeline.errors import PipelineFailed, exit_process, run_cli, setup_logging
from seqcodec.pipeline.options import check_io_arguments, job_parser, make_pipeline
from seqcodec.pipeline.outputs import Partition, partition_path, staged_rows
from seqcodec.pipeline.run import Job, run_and_publish
from seqcodec.transforms.inference import DecodeTables, read_model_manifest
from seqcodec.transforms.parquet_io import CodeFiles, ReadBatches, WriteTables, decoded_schema, inspect_codes
from seqcodec.transforms.roundtrip import (
    KeepExamples,
    LengthStats,
    PickMismatches,
    SumStats,
    length_report,
    read_stats,
    write_examples,
    write_stats,
)
from seqcodec.transforms.validate import ERRORS_TAG, ValidateCodes, code_error_schema

log = logging.getLogger("seqcodec")

STATS_FILE = "_decode_stats.json"  # per-length counts, read into summary.json and then removed
MISMATCHES = ("roundtrip", "mismatches.jsonl")


def model_dir_fact(model_dir: str) -> str:
    """The model directory as summary.json records it: absolute if local, so `seqcodec report` finds it."""
    return model_dir if "://" in model_dir else os.path.abspath(model_dir)


def model_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """What output schemas record about the model that wrote them."""
    return {k: manifest[k] for k in ("fingerprint", "code_size", "vocab_size", "max_length")}


def add_decode_stage(
    tables: beam.PCollection,
    staging: str,
    id_type,
    manifest: dict[str, Any],
    model_dir: str,
    batch_size: int,
    num_shards: int = 0,
    compare: bool = False,
    mismatches: int = 0,
) -> beam.PCollection:
    """Valid code tables (id, code[, tokens]) -> staging/decoded/, per-length counts, mismatch examples.

    With ``compare`` the tables also carry the original ``tokens``, and up to ``mismatches``
    wrongly decoded rows go to staging/roundtrip/mismatches.jsonl. Returns the decoded tables.
    """
    decoded = tables | "Decode" >> DecodeTables(model_dir, batch_size, compare)
    _ = (
        decoded
        | "Decoded columns" >> beam.Map(lambda t: t.select(["id", "tokens"]))
        | "Write decoded" >> WriteTables(
            FileSystems.join(staging, "decoded", "part"), decoded_schema(id_type, model_facts(manifest)), num_shards
        )
    )
    _ = (
        decoded
        | "Length stats" >> beam.ParDo(LengthStats(manifest["max_length"], compare))
        | "Sum stats" >> beam.CombineGlobally(SumStats(manifest["max_length"]))
        | "Write stats" >> beam.Map(write_stats, FileSystems.join(staging, STATS_FILE))
    )
    if compare and mismatches:
        _ = (
            decoded
            | "Pick mismatches" >> beam.ParDo(PickMismatches(mismatches))
            | "Keep mismatches" >> beam.CombineGlobally(KeepExamples(mismatches))
            | "Write mismatches" >> beam.Map(write_examples, FileSystems.join(staging, *MISMATCHES))
        )
    return decoded


def decode_summary(compare: bool, mismatches: int = 0, codes_folder: str | None = None
                   ) -> Callable[[Partition], dict[str, Any]]:
    """The ``extra_summary`` for run_and_publish: round trip (or length histogram) from the staged counts.

    Raises PipelineFailed if the counts do not match the decoded rows (or, with ``codes_folder``,
    the decoded rows do not match the codes written in the same job).
    """

    def extra(partition: Partition) -> dict[str, Any]:
        path = partition.staged(STATS_FILE)
        try:
            stats = read_stats(path)
        except Exception as exc:  # missing or damaged: the job did not finish its work
            raise PipelineFailed(f"the decode statistics are missing ({exc}); nothing was published") from None
        FileSystems.delete([path])
        report = length_report(stats, compare)
        decoded = staged_rows(partition, "decoded")
        expected = staged_rows(partition, codes_folder) if codes_folder else decoded
        if not report["sequences"] == decoded == expected:
            raise PipelineFailed(
                f"decode accounting failed: {decoded} decoded rows, {report['sequences']} counted"
                + (f", {expected} {codes_folder}" if codes_folder else "")
                + f"; nothing was published (staging kept at {partition.staging})"
            )
        if not compare:
            return {"length_histogram": report["by_length"]}
        if mismatches:
            with FileSystems.open(partition.staged(*MISMATCHES), compression_type="uncompressed") as handle:
                report["mismatch_examples"] = handle.read().count(b"\n")
            report["mismatches_file"] = "/".join(MISMATCHES)
        return {"rows_decoded": decoded, "roundtrip": report}

    return extra


def log_roundtrip(summary: dict[str, Any]) -> None:
    """The round trip in the printed summary: totals, then one line per length bucket."""
    rt = summary.get("roundtrip")
    if not rt:
        return

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.2f}%"

    log.info("round trip: token accuracy %s, exact match %s over %d sequences (%d tokens)",
             pct(rt["token_accuracy"]), pct(rt["exact_match"]), rt["sequences"], rt["tokens"])
    for b in rt["by_length"]:
        if b["sequences"]:
            log.info("  length %-9s %8d sequences  token accuracy %8s  exact match %8s",
                     b["lengths"], b["sequences"], pct(b["token_accuracy"]), pct(b["exact_match"]))
    if "mismatch_examples" in rt:
        log.info("%d mismatch example(s) in %s", rt["mismatch_examples"], rt["mismatches_file"])


@dataclasses.dataclass(frozen=True)
class DecodeJob(Job):
    """The decode job's graph: the shared job fields plus the code column."""

    inputs: CodeFiles
    code_column: str = "code"


def build_pipeline(pipeline: beam.Pipeline, job: DecodeJob) -> dict[str, beam.PCollection]:
    """Read codes -> validate -> decode -> write tokens; rejected rows -> errors. Returns the main PCollections."""
    m = job.manifest
    tables = pipeline | "Read" >> ReadBatches(job.inputs.paths, job.id_column, job.code_column, job.max_batch_rows)
    checked = tables | "Validate" >> beam.ParDo(
        ValidateCodes(m["code_size"], m["max_length"], job.id_column, job.code_column)
    ).with_outputs(ERRORS_TAG, main="valid")
    decoded = add_decode_stage(
        checked.valid, job.staging, job.inputs.id_type, m, job.model_dir, job.batch_size, job.num_shards
    )
    _ = checked[ERRORS_TAG] | "Write errors" >> WriteTables(
        FileSystems.join(job.staging, "errors", "part"), code_error_schema(job.inputs.id_type), 1
    )
    return {"decoded": decoded, "errors": checked[ERRORS_TAG], "valid": checked.valid}


def parser() -> argparse.ArgumentParser:
    p = job_parser("seqcodec decode", "Decode length-prefixed codes back into token sequences.")
    p.add_argument("--code-column", default="code")
    return p


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parser().parse_known_args(argv)
    setup_logging(args.verbose)
    check_io_arguments(args)
    started = time.monotonic()
    manifest = read_model_manifest(args.model_dir)
    inputs = inspect_codes(args.input, args.id_column, args.code_column, manifest, args.model_dir)
    log.info("decoding %d codes from %d file(s) with model %s (code size %d)",
             inputs.rows, len(inputs.paths), manifest["fingerprint"], manifest["code_size"])
    partition = Partition(partition_path(args.output, args.run_date))
    partition.prepare()
    job = DecodeJob.from_args(args, inputs, manifest, partition.staging, code_column=args.code_column)
    pipeline = make_pipeline(beam_args)
    build_pipeline(pipeline, job)
    facts = {"model_fingerprint": manifest["fingerprint"], "code_size": manifest["code_size"],
             "model_dir": model_dir_fact(args.model_dir), "input_files": len(inputs.paths),
             "input_files_without_fingerprint": len(inputs.unmarked)}
    run_and_publish(pipeline, partition, inputs.rows, "decoded", "decoded", started, facts,
                    extra_summary=decode_summary(compare=False), max_error_rate=args.max_error_rate)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
