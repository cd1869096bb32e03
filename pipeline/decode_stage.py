"""The decode stage shared by `seqcodec decode` and `seqcodec encode --decode`: decode, write, count, report.

The graph part (``add_decode_stage``) decodes valid code tables and writes ``decoded/``; it also
sums per-length counts and (with the original tokens at hand) picks mismatch examples. The
finalize stage turns those counts into the summary's round trip or length histogram
(``decode_report``); ``log_roundtrip`` prints the round trip for people.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from seqcodec.transforms.inference import DecodeTables
from seqcodec.transforms.parquet_io import WriteTables, decoded_schema
from seqcodec.transforms.roundtrip import (
    KeepExamples,
    LengthStats,
    PickMismatches,
    SumStats,
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
    stats: beam.PCollection  # one array: summed per-length counts
    mismatches: beam.PCollection | None  # one int: examples written to roundtrip/mismatches.jsonl


def add_decode_stage(
    tables: beam.PCollection,
    staging: str,
    id_type: pa.DataType,
    facts: dict[str, Any],
    model_dir: str,
    batch_size: int,
    num_shards: int = 0,
    compare: bool = False,
    mismatches: int = 0,
    total_rows: int | None = None,
) -> DecodeStage:
    """Valid code tables (id, code[, tokens]) -> staging/decoded/, per-length counts, mismatch examples.

    ``facts`` is the model's (``model_facts``), recorded in the decoded shards' schema. With
    ``compare`` the tables also carry the original ``tokens``, and up to ``mismatches`` wrongly
    decoded rows go to staging/roundtrip/mismatches.jsonl.
    """
    decoded = tables | "Decode" >> DecodeTables(model_dir, batch_size, compare, total_rows=total_rows)
    written = (
        decoded
        | "Decoded columns" >> beam.Map(lambda t: t.select(["id", "tokens"]))
        | "Write decoded" >> WriteTables(
            FileSystems.join(staging, "decoded", "part"), decoded_schema(id_type, facts), num_shards
        )
    )
    stats = (
        decoded
        | "Length stats" >> beam.ParDo(LengthStats(facts["max_length"], compare))
        | "Sum stats" >> beam.CombineGlobally(SumStats(facts["max_length"]))
    )
    kept = None
    if compare and mismatches:
        kept = (
            decoded
            | "Pick mismatches" >> beam.ParDo(PickMismatches(mismatches))
            | "Keep mismatches" >> beam.CombineGlobally(KeepExamples(mismatches))
            | "Write mismatches" >> beam.Map(_write_counted, FileSystems.join(staging, *MISMATCHES))
        )
    return DecodeStage(decoded, written, stats, kept)


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
    report = length_report(stats, compare)
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
        return "n/a" if x is None else f"{100 * x:.2f}%"

    log.info("round trip: token accuracy %s, exact match %s over %d sequences (%d tokens)",
             pct(rt["token_accuracy"]), pct(rt["exact_match"]), rt["sequences"], rt["tokens"])
    for b in rt["by_length"]:
        if b["sequences"]:
            log.info("  length %-9s %8d sequences  token accuracy %8s  exact match %8s",
                     b["lengths"], b["sequences"], pct(b["token_accuracy"]), pct(b["exact_match"]))
    if "mismatch_examples" in rt:
        log.info("%d mismatch example(s) in %s", rt["mismatch_examples"], rt["mismatches_file"])
