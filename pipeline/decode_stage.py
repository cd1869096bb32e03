"""The decode stage shared by `seqcodec decode` and `seqcodec encode --decode`: decode, write, count, report.

The graph part (``add_decode_stage``) decodes valid code tables and writes ``decoded/``; it also
sums per-length counts and (with the original tokens at hand) picks mismatch examples. The
finalize stage turns those counts into the summary's round trip or length histogram
(``decode_report``); ``log_roundtrip`` prints the round trip for people.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from seqcodec.model.config import Batching
from seqcodec.model.data import read_vocab, token_text
from seqcodec.model.figures import percent
from seqcodec.model.manifest import Manifest, model_vocab
from seqcodec.transforms.formats import decoded_schema
from seqcodec.transforms.inference import DecodeTables
from seqcodec.transforms.parquet_io import WriteTables
from seqcodec.transforms.partition import shard_prefix
from seqcodec.transforms.roundtrip import (
    KeepExamples,
    LengthStats,
    PickMismatches,
    SumStats,
    TokenStats,
    baseline_report,
    length_report,
    write_examples,
)

log = logging.getLogger("seqcodec")

MISMATCHES = ("roundtrip", "mismatches.jsonl")


@dataclasses.dataclass(frozen=True)
class DecodeStage:
    """What the decode stage adds to a graph: the decoded tables and what the finalize stage waits for."""

    decoded: beam.PCollection  # (id, tokens[, original, correct]) tables
    written: beam.PCollection  # file names of the decoded/ shards, once written
    stats: beam.PCollection  # one array of summed per-length counts; comparing, {"lengths": ..., "tokens": ...}
    mismatches: beam.PCollection | None  # one int: examples written to roundtrip/mismatches.jsonl


def add_decode_stage(
    tables: beam.PCollection,
    staging: str,
    id_type: pa.DataType,
    facts: dict[str, Any],
    model_dir: str,
    batching: Batching,
    num_shards: int = 0,
    compare: bool = False,
    mismatches: int = 0,
    total_rows: int | None = None,
    vocab: tuple[str, ...] | None = None,
) -> DecodeStage:
    """Valid code tables (id, code[, tokens]) -> staging/decoded/, per-length counts, mismatch examples.

    ``facts`` is the model's (``Manifest.facts()``), recorded in the decoded shards' schema. With
    ``compare`` the tables also carry the original ``tokens``, and up to ``mismatches`` wrongly
    decoded rows go to staging/roundtrip/mismatches.jsonl; per-token counts of the originals give
    the round trip's baseline. With a ``vocab`` the decoded rows get a ``text`` column and the
    mismatch examples their words.
    """
    decoded = tables | "Decode" >> DecodeTables(model_dir, batching, compare, total_rows=total_rows)
    schema = decoded_schema(id_type, facts)
    if vocab is not None:
        schema = schema.append(pa.field("text", pa.string()))
    written = (
        decoded
        | "Decoded columns" >> beam.Map(decoded_columns, vocab).with_output_types(pa.Table)
        | "Write decoded" >> WriteTables(shard_prefix(staging, "decoded"), schema, num_shards)
    )
    stats = (
        decoded
        | "Length stats" >> beam.ParDo(LengthStats(facts["max_length"], compare))
        | "Sum stats" >> beam.CombineGlobally(SumStats(facts["max_length"]))
    )
    if compare:
        vocab_size = facts["vocab_size"]
        token_stats = (
            decoded
            | "Token stats" >> beam.ParDo(TokenStats(vocab_size))
            | "Sum token stats" >> beam.CombineGlobally(SumStats(0, shape=(2, vocab_size)))
        )
        stats = stats | "Join stats" >> beam.Map(
            lambda lengths, tokens: {"lengths": lengths, "tokens": tokens}, beam.pvalue.AsSingleton(token_stats)
        )
    kept = None
    if compare and mismatches:
        kept = (
            decoded
            | "Pick mismatches" >> beam.ParDo(PickMismatches(mismatches, vocab))
            | "Keep mismatches" >> beam.CombineGlobally(KeepExamples(mismatches))
            | "Write mismatches" >> beam.Map(_write_counted, FileSystems.join(staging, *MISMATCHES))
        )
    return DecodeStage(decoded, written, stats, kept)


def decoded_columns(table: pa.Table, vocab: tuple[str, ...] | None) -> pa.Table:
    """The columns written to decoded/: id and tokens, and with a vocabulary the tokens as text."""
    out = table.select(["id", "tokens"])
    if vocab is None:
        return out
    tokens = out.column("tokens").combine_chunks()
    values = tokens.flatten().to_numpy(zero_copy_only=False)
    offsets = (tokens.offsets.to_numpy() - tokens.offsets[0].as_py()) if len(tokens) else np.zeros(1, np.int64)
    return out.append_column("text", token_text(values, offsets, list(vocab)))


def add_vocab_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", metavar="FILE",
                        help="one token per line (line number = id): decoded rows get a text column and "
                             "mismatch examples their words (default: the model's own vocab.txt, stored by "
                             "`train --vocab`; without one, ids only)")


def job_vocab(args: argparse.Namespace, manifest: Manifest) -> tuple[str, ...] | None:
    """The --vocab file's tokens, else the model directory's own; checked against the model before anything runs.

    None when neither exists (ids only).
    """
    if args.vocab is not None:
        return tuple(read_vocab(args.vocab, manifest.vocab_size))
    tokens = model_vocab(args.model_dir, manifest)
    return None if tokens is None else tuple(tokens)


def training_facts(manifest: Manifest) -> dict[str, Any]:
    """The model's own held-out figures from training, for summary.json beside a round trip (which
    may mix rows the model trained on with others): ``{"model_training": ...}``, or {} if it has none."""
    metrics = manifest.metrics or {}
    if not isinstance(metrics.get("test"), dict):
        return {}
    keep = ("test", "train", "baseline", "train_sequences", "stopped_by_time_budget", "hints")
    return {"model_training": {k: metrics[k] for k in keep if k in metrics}}


def _write_counted(examples: list[dict[str, Any]], path: str) -> int:
    write_examples(examples, path)
    return len(examples)


def decode_report(
    stats: np.ndarray, compare: bool, decoded: int, expected: int, mismatch_examples: int | None
) -> tuple[dict[str, Any], str | None]:
    """Summary fields from the summed per-length counts, and why the rows do not add up (None if they do).

    ``decoded`` is the rows in the decoded shards, ``expected`` the rows that should have been
    decoded (the codes written in the same job, or ``decoded`` itself for the decode job).
    """
    token_stats = None
    if isinstance(stats, dict):
        stats, token_stats = stats["lengths"], stats["tokens"]
    report = length_report(stats, compare)
    if token_stats is not None:
        report["baseline"] = baseline_report(token_stats, report["sequences"])
    problem = None
    if not report["sequences"] == decoded == expected:
        problem = (f"decode accounting failed: {decoded} decoded rows, {report['sequences']} counted, "
                   f"{expected} expected")
    if not compare:
        return {"length_histogram": report["by_length"]}, problem
    if mismatch_examples is not None:
        report["mismatch_examples"] = mismatch_examples
        report["mismatches_file"] = "/".join(MISMATCHES)
    return {"rows_decoded": decoded, "roundtrip": report}, problem


def log_roundtrip(summary: dict[str, Any]) -> None:
    """The round trip in the printed summary: totals, then one line per length bucket."""
    rt = summary.get("roundtrip")
    if not rt:
        return

    def pct(x):
        return percent(x, 2)

    log.info("round trip: token accuracy %s, exact match %s over %d sequences (%d tokens)",
             pct(rt["token_accuracy"]), pct(rt["exact_match"]), rt["sequences"], rt["tokens"])
    if rt.get("baseline"):
        b = rt["baseline"]
        log.info("  baseline, always writing the most frequent token (id %d): token accuracy %s, exact match %s",
                 b["token"], pct(b["token_accuracy"]), pct(b["exact_match"]))
    test = (summary.get("model_training") or {}).get("test")
    if test:
        log.info("  these rows may include the model's training rows; held out in training: token accuracy %s, "
                 "exact match %s", pct(test["token_accuracy"]), pct(test["exact_match"]))
    for b in rt["by_length"]:
        if b["sequences"]:
            log.info("  length %-9s %8d sequences  token accuracy %8s  exact match %8s",
                     b["lengths"], b["sequences"], pct(b["token_accuracy"]), pct(b["exact_match"]))
    if "mismatch_examples" in rt:
        log.info("%d mismatch example(s) in %s", rt["mismatch_examples"], rt["mismatches_file"])
