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
from seqcodec.model.heldout import GROUPS, split_unavailable
from seqcodec.model.manifest import Manifest, model_vocab
from seqcodec.model.scores import percent
from seqcodec.transforms.formats import decoded_schema
from seqcodec.transforms.inference import DecodeTables
from seqcodec.transforms.parquet_io import WriteTables
from seqcodec.transforms.partition import shard_prefix
from seqcodec.transforms.roundtrip import (
    KeepExamples,
    LengthStats,
    PickMismatches,
    SplitStats,
    SumStats,
    TokenStats,
    baseline_report,
    drift_report,
    length_report,
    split_report,
    write_examples,
)

log = logging.getLogger("seqcodec")

MISMATCHES = ("roundtrip", "mismatches.jsonl")


@dataclasses.dataclass(frozen=True)
class DecodeStats:
    """The decode stage's summed counts, one per job: per length, and comparing, per token and per split group."""

    lengths: np.ndarray  # roundtrip.LengthStats, summed
    tokens: np.ndarray | None = None  # comparing: roundtrip.TokenStats, summed
    split: np.ndarray | None = None  # comparing on a model that keeps its training split: roundtrip.SplitStats


@dataclasses.dataclass(frozen=True)
class DecodeStage:
    """What the decode stage adds to a graph: the decoded tables and what the finalize stage waits for."""

    decoded: beam.PCollection  # (id, tokens[, original, correct]) tables
    written: beam.PCollection  # file names of the decoded/ shards, once written
    stats: beam.PCollection  # one DecodeStats
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
    split: bool = False,
) -> DecodeStage:
    """Valid code tables (id, code[, tokens]) -> staging/decoded/, per-length counts, mismatch examples.

    ``facts`` is the model's (``Manifest.facts()``), recorded in the decoded shards' schema. With
    ``compare`` the tables also carry the original ``tokens``, and up to ``mismatches`` wrongly
    decoded rows go to staging/roundtrip/mismatches.jsonl; per-token counts of the originals give
    the round trip's baseline. With a ``vocab`` the decoded rows get a ``text`` column and the
    mismatch examples their words. With ``split`` (comparing, on a model that keeps its training
    split) the round trip is also counted per group: training, held-out and unseen rows.
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
    lengths = (
        decoded
        | "Length stats" >> beam.ParDo(LengthStats(facts["max_length"], compare))
        | "Sum stats" >> beam.CombineGlobally(SumStats(facts["max_length"]))
    )
    sides: dict[str, beam.pvalue.AsSingleton] = {}
    if compare:
        vocab_size = facts["vocab_size"]
        token_stats = (
            decoded
            | "Token stats" >> beam.ParDo(TokenStats(vocab_size))
            | "Sum token stats" >> beam.CombineGlobally(SumStats(0, shape=(2, vocab_size)))
        )
        sides["tokens"] = beam.pvalue.AsSingleton(token_stats)
        if split:
            sides["split"] = beam.pvalue.AsSingleton(
                decoded
                | "Split stats" >> beam.ParDo(SplitStats(model_dir))
                | "Sum split stats" >> beam.CombineGlobally(SumStats(0, shape=(len(GROUPS), 4)))
            )
    stats = lengths | "Join stats" >> beam.Map(lambda counts, **rest: DecodeStats(counts, **rest), **sides)
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
                        help="one token per line (line number = id), or JSON (a list, or an object with a tokens "
                             "list, as data/sample/vocab.json): decoded rows get a text column and "
                             "mismatch examples their words (default: the model's own vocab.txt, stored by "
                             "`train --vocab`; without one, ids only)")


def job_vocab(vocab: str | None, model_dir: str, manifest: Manifest) -> tuple[str, ...] | None:
    """The ``vocab`` file's tokens (--vocab), else the model directory's own; checked against the model before
    anything runs.

    None when neither exists (ids only).
    """
    if vocab is not None:
        return tuple(read_vocab(vocab, manifest.vocab_size))
    tokens = model_vocab(model_dir, manifest)
    return None if tokens is None else tuple(tokens)


def training_facts(manifest: Manifest) -> dict[str, Any]:
    """The model's own held-out figures from training, for summary.json beside a round trip (which
    may mix rows the model trained on with others): ``{"model_training": ...}`` (absent if it has none),
    and ``training_split``: whether the round trip can tell training rows from held-out ones."""
    metrics = manifest.metrics or {}
    why = split_unavailable(manifest)
    out: dict[str, Any] = {"training_split": {"available": False, "reason": why} if why else
                           {"available": True, **manifest.extra["split"]}}
    if isinstance(metrics.get("test"), dict):
        keep = ("test", "train", "baseline", "train_sequences", "stopped_by_time_budget", "hints")
        out["model_training"] = {k: metrics[k] for k in keep if k in metrics}
    return out


def heldout_reference(facts: dict[str, Any]) -> float | None:
    """Training's held-out test exact match from a job's facts (``training_facts``), or None."""
    test = (facts.get("model_training") or {}).get("test") or {}
    return test.get("exact_match")


def _write_counted(examples: list[dict[str, Any]], path: str) -> int:
    write_examples(examples, path)
    return len(examples)


def decode_report(
    stats: DecodeStats, compare: bool, decoded: int, expected: int, mismatch_examples: int | None,
    reference: float | None = None,
) -> tuple[dict[str, Any], str | None]:
    """Summary fields from the summed per-length counts, and why the rows do not add up (None if they do).

    ``decoded`` is the rows in the decoded shards, ``expected`` the rows that should have been
    decoded (the codes written in the same job, or ``decoded`` itself for the decode job).
    ``reference``: training's held-out exact match, which the night's rows never trained on are
    checked against (``drift``) when the stats have per-group counts.
    """
    report = length_report(stats.lengths, compare)
    if stats.tokens is not None:
        report["baseline"] = baseline_report(stats.tokens, report["sequences"])
    if stats.split is not None:
        report["by_split"] = split_report(stats.split)
        report["drift"] = drift_report(report["by_split"], reference)
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


def log_drift(summary: dict[str, Any]) -> None:
    """A warning line when the round trip flagged drift (rows never trained on far below training's held out)."""
    drift = (summary.get("roundtrip") or {}).get("drift") or {}
    if drift.get("flagged"):
        log.warning("drift: %d rows never trained on round-trip whole at %s, %s points below training's held-out "
                    "%s (rule: %s)", drift["rows"], percent(drift["exact_match"], 2), drift["points_below"],
                    percent(drift["reference_exact_match"], 2), drift["rule"])


def log_roundtrip(summary: dict[str, Any], warn_drift: bool = True) -> None:
    """The round trip in the printed summary: totals, by training split, then one line per length bucket.

    ``warn_drift``: also the drift warning (``log_drift``), unless the job's own last stage logged it here.
    """
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
    split = summary.get("training_split") or {}
    if rt.get("by_split"):
        for name, g in rt["by_split"].items():
            log.info("  %-9s rows: %8d sequences  token accuracy %8s  exact match %8s", name.replace("_", "-"),
                     g["sequences"], pct(g["token_accuracy"]), pct(g["exact_match"]))
        if warn_drift:
            log_drift(summary)
    elif split.get("available") is False:
        log.info("  training/held-out split unavailable: %s", split["reason"])
    for b in rt["by_length"]:
        if b["sequences"]:
            log.info("  length %-9s %8d sequences  token accuracy %8s  exact match %8s",
                     b["lengths"], b["sequences"], pct(b["token_accuracy"]), pct(b["exact_match"]))
    if "mismatch_examples" in rt:
        log.info("%d mismatch example(s) in %s", rt["mismatch_examples"], rt["mismatches_file"])
