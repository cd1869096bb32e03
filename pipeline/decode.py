"""`seqcodec decode` / `python -m seqcodec.pipeline.decode`: the Beam job from code Parquet back to token Parquet.

The decode stage itself lives in ``decode_stage``, shared with ``seqcodec encode --decode``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import apache_beam as beam

from seqcodec.model.manifest import read_manifest
from seqcodec.pipeline.decode_stage import add_decode_stage, add_vocab_argument, job_vocab
from seqcodec.pipeline.finalize import add_finalize
from seqcodec.pipeline.job import Graph, Job, JobKind, RoundTrip, make_plan, model_dir_fact, row_counts
from seqcodec.pipeline.launch import Built
from seqcodec.pipeline.options import add_table_arguments, job_parser, make_pipeline, single_worker
from seqcodec.pipeline.runtime import exit_process, run_cli
from seqcodec.pipeline.specs import DecodeSpec, parse_job
from seqcodec.transforms.formats import code_error_schema
from seqcodec.transforms.parquet_io import CodeFiles, ReadBatches, WriteTables, inspect_codes, split_bytes
from seqcodec.transforms.partition import Partition, partition_path, shard_prefix
from seqcodec.transforms.table import TableRef, date_files
from seqcodec.transforms.table_coder import of_tables
from seqcodec.transforms.validate import ERRORS_TAG, ValidateCodes

log = logging.getLogger("seqcodec")


@dataclasses.dataclass(frozen=True)
class DecodeJob(Job):
    """The decode job's graph: the shared job fields plus the code column."""

    inputs: CodeFiles
    code_column: str = "code"
    vocab: tuple[str, ...] | None = None


def build_pipeline(pipeline: beam.Pipeline, job: DecodeJob) -> Graph:
    """Read codes -> validate -> decode -> write tokens; rejected rows -> errors. Returns what finalize waits for."""
    m = job.manifest
    tables = pipeline | "Read" >> ReadBatches(job.inputs.paths, job.id_column, job.code_column, job.max_batch_rows,
                                              split_bytes(job.inputs, job.max_batch_rows))
    checked = tables | "Validate" >> beam.ParDo(
        ValidateCodes(m.code_size, m.max_length, job.id_column, job.code_column)
    ).with_outputs(ERRORS_TAG, main="valid")
    valid, rejected = of_tables(checked.valid), of_tables(checked[ERRORS_TAG])
    stage = add_decode_stage(valid, job.staging, job.inputs.id_type, job.manifest.facts(), job.model_dir,
                             job.batching, job.num_shards, total_rows=job.progress_total, vocab=job.vocab)
    errors_written = rejected | "Write errors" >> WriteTables(
        shard_prefix(job.staging, "errors"), code_error_schema(job.inputs.id_type), 1
    )
    counted = {"read": tables, "rejected": rejected, "decoded": stage.decoded}
    return Graph([stage.written, errors_written], row_counts(pipeline, counted), tuple(counted), stage.stats)


def parser() -> argparse.ArgumentParser:
    p = job_parser("seqcodec decode", "Decode length-prefixed codes back into token sequences.", table_replaces="input")
    p.add_argument("--code-column", default="code", help="name of the code column (default: %(default)s)")
    add_vocab_argument(p)
    add_table_arguments(p, "read the codes of --run-date D from this Iceberg table (as `seqcodec encode --table` "
                           "writes it) instead of --input; the decoded rows go to OUTPUT/dt=D as usual", read=True)
    return p


def run(argv: list[str] | None = None, pipeline: beam.Pipeline | None = None) -> int:
    """The decode job, as ``encode.run``: check, build, launch; the exit code."""
    return build(argv, pipeline).launch()


def build(argv: list[str] | None, pipeline: beam.Pipeline | None = None) -> Built:
    """The whole decode job on ``pipeline``, as ``encode.build``: nothing is created before it starts."""
    return build_spec(*parse_job(parser(), DecodeSpec, argv), pipeline)


def build_spec(spec: DecodeSpec, beam_args: list[str], pipeline: beam.Pipeline | None = None) -> Built:
    """``build`` from the parsed settings: the model, the codes (from files or a table's run date), then the job."""
    started = time.time()
    manifest = read_manifest(spec.model_dir)
    vocab = job_vocab(spec.vocab, spec.model_dir, manifest)
    source = spec.input
    if spec.table is not None:  # the date's data files at the snapshot: the job reads them as it reads any codes
        ref = TableRef.resolve(spec.table.catalog, spec.table.name)
        source = date_files(ref.load(), spec.table.name, spec.run_date, spec.table.snapshot_id)
    inputs = inspect_codes(source, spec.id_column, spec.code_column, manifest, spec.model_dir)
    partition = Partition(partition_path(spec.output, spec.run_date))
    partition.check("decode", inputs.paths)
    made = pipeline is None
    pipeline = pipeline or make_pipeline(beam_args)
    log.info("decoding %d codes from %d file(s) with model %s (code size %d) into %s",
             inputs.rows, len(inputs.paths), manifest.fingerprint, manifest.code_size, partition.path)
    job = DecodeJob.from_spec(spec, inputs, manifest, partition.staging, code_column=spec.code_column, vocab=vocab,
                              progress_total=inputs.rows if single_worker(pipeline.options) else None)
    graph = build_pipeline(pipeline, job)
    facts = {"model_fingerprint": manifest.fingerprint, "code_size": manifest.code_size,
             "model_dir": model_dir_fact(spec.model_dir), "input_files": len(inputs.paths),
             "input_files_without_fingerprint": len(inputs.unmarked),
             "beam_width": manifest.config.beam_width(spec.batching.beam_width)}
    plan = make_plan(spec, pipeline, partition, inputs.rows, JobKind.DECODE, facts, started, graph.counted,
                     RoundTrip.LENGTHS)
    return Built(pipeline, plan, graph, add_finalize(pipeline, graph, plan), spec.wait, made)


def main(argv: list[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    exit_process(run_cli(main))
