"""`seqcodec encode` / `python -m seqcodec.pipeline.encode`: the Beam job from token Parquet to code Parquet."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import apache_beam as beam
import pyarrow as pa

from seqcodec.model.heldout import read_split, split_unavailable
from seqcodec.model.manifest import Manifest, read_manifest
from seqcodec.pipeline.decode_stage import add_decode_stage, add_vocab_argument, job_vocab, training_facts
from seqcodec.pipeline.finalize import add_finalize
from seqcodec.pipeline.job import Graph, Job, JobKind, RoundTrip, make_plan, model_dir_fact, row_counts
from seqcodec.pipeline.launch import Built
from seqcodec.pipeline.options import (
    add_table_arguments,
    check_extras,
    discard,
    job_parser,
    make_pipeline,
    single_worker,
)
from seqcodec.pipeline.runtime import exit_process, run_cli
from seqcodec.pipeline.specs import EncodeSpec, parse_job
from seqcodec.transforms.formats import CODE_DTYPES, FLOAT16_EXACT_LENGTH, check_code_dtype, code_schema, error_schema
from seqcodec.transforms.inference import EncodeTables
from seqcodec.transforms.parquet_io import InputFiles, ReadBatches, WriteTables, inspect_inputs, split_bytes
from seqcodec.transforms.partition import Partition, partition_path, shard_prefix
from seqcodec.transforms.table import ERRORS_SUFFIX, TableRef, TableRun, prepare_tables, table_schema, with_run_date
from seqcodec.transforms.validate import TOO_LONG_CHOICES

log = logging.getLogger("seqcodec")


@dataclasses.dataclass(frozen=True)
class EncodeJob(Job):
    """The encode job's graph: the shared job fields plus the tokens column and what to do after encoding."""

    inputs: InputFiles
    tokens_column: str = "tokens"
    too_long: str = "reject"
    decode: bool = False  # also decode every code, measure the round trip and write decoded/
    mismatches: int = 0  # with decode: up to this many wrongly decoded examples to roundtrip/
    vocab: tuple[str, ...] | None = None  # with decode: words beside ids in decoded/ and the examples
    code_dtype: str = "float32"
    split: bool = False  # with decode: the model keeps its training split, so score its groups apart
    run_date_column: str | None = None  # table output: every code and error row carries this run date


def shard_schemas(job: EncodeJob) -> tuple[pa.Schema, pa.Schema]:
    """The schemas of the code and error shards (as a table stores them, with the run date, for table output)."""
    m = job.manifest
    codes = code_schema(job.inputs.id_type, m.code_size, m.facts(), job.code_dtype)
    errors = error_schema(job.inputs.id_type)
    if job.run_date_column is None:
        return codes, errors
    return table_schema(codes), table_schema(errors)


def build_pipeline(pipeline: beam.Pipeline, job: EncodeJob) -> Graph:
    """Read -> EncodeTables (validate, encode) -> write codes; rejected rows -> errors.

    Returns what finalize waits for.
    """
    m = job.manifest
    tables = pipeline | "Read" >> ReadBatches(job.inputs.paths, job.id_column, job.tokens_column, job.max_batch_rows,
                                              split_bytes(job.inputs, job.max_batch_rows))
    # With decode the codes keep their tokens, so that decoding can compare.
    encoded = tables | "Encode" >> EncodeTables(
        job.model_dir, m, too_long=job.too_long, batching=job.batching, id_field=job.id_column,
        tokens_field=job.tokens_column, keep_tokens=job.decode, total_rows=job.progress_total,
        code_dtype=job.code_dtype,
    )
    if job.decode:
        codes = encoded.main | "Code columns" >> beam.Map(
            lambda t: t.select(["id", "length", "code"])).with_output_types(pa.Table)
        stage = add_decode_stage(encoded.main, job.staging, job.inputs.id_type, job.manifest.facts(), job.model_dir,
                                 job.batching, job.num_shards, compare=True, mismatches=job.mismatches,
                                 total_rows=job.progress_total, vocab=job.vocab, split=job.split)
    else:
        codes = encoded.main
    codes_schema, errors_schema = shard_schemas(job)
    rows, errors = codes, encoded.errors
    if job.run_date_column is not None:
        rows = codes | "Codes with run date" >> beam.Map(
            with_run_date, job.run_date_column, codes_schema).with_output_types(pa.Table)
        errors = errors | "Errors with run date" >> beam.Map(
            with_run_date, job.run_date_column, errors_schema).with_output_types(pa.Table)
    codes_written = rows | "Write codes" >> WriteTables(
        shard_prefix(job.staging, "codes"), codes_schema, job.num_shards,
        # Floats that never repeat and are never filtered on: a dictionary would only be built and
        # dropped, and min/max statistics computed for nothing.
        plain_columns=["code"],
    )
    errors_written = errors | "Write errors" >> WriteTables(shard_prefix(job.staging, "errors"), errors_schema, 1)
    counted = {"read": tables, "rejected": encoded.errors, "encoded": codes}
    if not job.decode:
        return Graph([codes_written, errors_written], row_counts(pipeline, counted), tuple(counted))
    counted["decoded"] = stage.decoded
    return Graph([codes_written, errors_written, stage.written], row_counts(pipeline, counted), tuple(counted),
                 stage.stats, stage.mismatches)

def parser() -> argparse.ArgumentParser:
    p = job_parser("seqcodec encode", "Encode token sequences into length-prefixed codes.", table_replaces="output")
    p.add_argument("--tokens-column", default="tokens", help="name of the tokens column (default: %(default)s)")
    p.add_argument("--too-long", choices=TOO_LONG_CHOICES, default="reject",
                   help="rows longer than the model's max_length: reject (dead letter) or truncate "
                        "(default: %(default)s)")
    p.add_argument("--code-dtype", choices=tuple(CODE_DTYPES), default="float32",
                   help="value type of the codes: float16 halves them, lengths stay exact up to "
                        f"{FLOAT16_EXACT_LENGTH}, but it can change decodes (measured on the word and letters "
                        "samples in docs/MODEL.md, \"Codes in float16\"; default: %(default)s)")
    p.add_argument("--decode", action="store_true",
                   help="also decode every code (DIR/decoded/) and report the round trip in summary.json")
    p.add_argument("--mismatches", type=int, default=0, metavar="N",
                   help="with --decode: write up to N wrongly decoded examples to DIR/roundtrip/mismatches.jsonl "
                        "(default: %(default)s)")
    add_vocab_argument(p)
    add_table_arguments(p, "write into this Iceberg table instead of --output (needs --run-date): one commit per "
                           "run replaces the date's rows; rejected rows go to NAMESPACE.TABLE_errors (README, "
                           "\"Iceberg tables\")")
    return p


def run(argv: list[str] | None = None, pipeline: beam.Pipeline | None = None) -> int:
    """The job: check, build (on ``pipeline`` if given, e.g. a TestPipeline), launch; the exit code."""
    return build(argv, pipeline).launch()


def build(argv: list[str] | None, pipeline: beam.Pipeline | None = None) -> Built:
    """Check the arguments and inputs, then build the whole job, its finalize stage included, on ``pipeline``.

    Nothing is created before the job starts: a failed check (exit 2) leaves no trace.
    """
    return build_spec(*parse_job(parser(), EncodeSpec, argv), pipeline)


def build_spec(spec: EncodeSpec, beam_args: list[str], pipeline: beam.Pipeline | None = None) -> Built:
    """``build`` from the parsed settings: the encode-only checks, the inputs and the model, then the job."""
    ref = TableRef.resolve(spec.table.catalog, spec.table.name) if spec.table else None
    if ref is not None and spec.code_dtype != "float32":
        raise ValueError("--table takes float32 codes only (Iceberg has no float16); drop --code-dtype")
    if spec.mismatches < 0 or (spec.mismatches and not spec.decode):
        raise ValueError("--mismatches must be >= 0 and needs --decode")
    if spec.vocab and not spec.decode:
        raise ValueError("--vocab needs --decode (codes have no words to show)")
    started = time.time()
    inputs = inspect_inputs(spec.input, spec.id_column, spec.tokens_column)
    manifest = read_manifest(spec.model_dir)
    vocab = job_vocab(spec.vocab, spec.model_dir, manifest) if spec.decode else None
    split = spec.decode and split_unavailable(manifest) is None
    if split:
        read_split(spec.model_dir, manifest)  # a damaged record stops the job now, not on a worker
    check_code_dtype(spec.code_dtype, manifest.max_length)
    if ref is None:
        partition = Partition(partition_path(spec.output, spec.run_date))
        partition.check("encode", inputs.paths)
    made = pipeline is None
    pipeline = pipeline or make_pipeline(beam_args)
    if ref is not None:  # last of the checks: a table that does not exist yet is created here
        try:
            partition = table_run(ref, spec.run_date, inputs, manifest)
        except BaseException:
            if made:
                discard(pipeline)
            raise
    log.info("encoding %d rows from %d file(s) with model %s (code size %d) into %s",
             inputs.rows, len(inputs.paths), manifest.fingerprint, manifest.code_size, partition.path)
    job = EncodeJob.from_spec(
        spec, inputs, manifest, partition.staging, tokens_column=spec.tokens_column, too_long=spec.too_long,
        decode=spec.decode, mismatches=spec.mismatches, vocab=vocab, code_dtype=spec.code_dtype, split=split,
        run_date_column=spec.run_date if ref is not None else None,
        progress_total=inputs.rows if single_worker(pipeline.options) else None,
    )
    graph = build_pipeline(pipeline, job)
    facts = {"model_fingerprint": manifest.fingerprint, "code_size": manifest.code_size, "code_dtype": spec.code_dtype,
             "input_files": len(inputs.paths), "model_dir": model_dir_fact(spec.model_dir)}
    if spec.decode:
        facts.update(training_facts(manifest), beam_width=manifest.config.beam_width(spec.batching.beam_width))
    plan = make_plan(spec, pipeline, partition, inputs.rows, JobKind.ENCODE, facts, started, graph.counted,
                     RoundTrip.COMPARE if spec.decode else None)
    return Built(pipeline, plan, graph, add_finalize(pipeline, graph, plan), spec.wait, made)


def table_run(ref: TableRef, run_date: str, inputs: InputFiles, manifest: Manifest) -> TableRun:
    """Check (or create) the codes and errors tables for this run; the run, staged under the codes table's location."""
    schemas = {"": table_schema(code_schema(inputs.id_type, manifest.code_size, manifest.facts())),
               ERRORS_SUFFIX: table_schema(error_schema(inputs.id_type))}
    location = prepare_tables(ref, schemas, manifest.fingerprint, manifest.code_size)
    check_extras(location)  # the workers write the shards there through Beam's filesystem (s3:// needs boto3)
    return TableRun(ref, run_date, location, manifest.fingerprint, manifest.code_size)


def main(argv: list[str] | None = None) -> int:
    return run(argv)


if __name__ == "__main__":
    exit_process(run_cli(main))
