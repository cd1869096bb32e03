"""Round-trip statistics and examples: per-length counts and accuracies, and mismatched rows to show.

Everything on the hot path is an Arrow or numpy column operation; Python loops only ever touch
the few mismatch examples kept for people.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from seqcodec.model.heldout import GROUPS, read_split, token_hashes
from seqcodec.model.manifest import read_manifest
from seqcodec.transforms.validate import METRICS_NAMESPACE

MAX_BUCKETS = 20


# -- lengths and round-trip statistics -----------------------------------------------------------------


def length_buckets(max_length: int) -> list[tuple[int, int]]:
    """Inclusive (first, last) length ranges of a round width (1, 2, 5, 10, 20, ...), at most MAX_BUCKETS."""
    widths = (m * 10**e for e in itertools.count() for m in (1, 2, 5))
    width = next(w for w in widths if -(-max_length // w) <= MAX_BUCKETS)
    return [(lo, min(lo + width - 1, max_length)) for lo in range(1, max_length + 1, width)]


def bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


class LengthStats(beam.DoFn):
    """Decoded table -> per-length counts ``(3, max_length + 1)``: rows, correct tokens, exact rows.

    The last two stay 0 without ``compare``. Round-trip totals and per-bucket counts also go
    to Beam counters (``roundtrip_*``), so they show while the job runs.
    """

    def __init__(self, max_length: int, compare: bool) -> None:
        self.max_length, self.compare = max_length, compare
        self.buckets = length_buckets(max_length)
        if compare:
            def counter(name):
                return Metrics.counter(METRICS_NAMESPACE, name)

            self.totals = {name: counter(f"roundtrip_{name}") for name in ("rows", "tokens", "tokens_correct", "exact")}
            self.by_bucket = {
                name: [counter(f"roundtrip_{name}_len{lo:04d}_{hi:04d}") for lo, hi in self.buckets]
                for name in ("rows", "tokens_correct", "exact")
            }

    def process(self, table: pa.Table) -> Iterator[np.ndarray]:
        size = self.max_length + 1
        lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
        if lengths.size and lengths.max() > self.max_length:
            raise ValueError(f"a decoded row is {lengths.max()} long, over max_length {self.max_length}")
        stats = np.zeros((3, size), dtype=np.int64)
        stats[0] = np.bincount(lengths, minlength=size)
        if self.compare:
            correct = table.column("correct").to_numpy().astype(np.int64)
            stats[1] = np.bincount(lengths, weights=correct, minlength=size).astype(np.int64)
            stats[2] = np.bincount(lengths[correct == lengths], minlength=size)
            self.totals["rows"].inc(int(lengths.size))
            self.totals["tokens"].inc(int(lengths.sum()))
            self.totals["tokens_correct"].inc(int(correct.sum()))
            self.totals["exact"].inc(int(stats[2].sum()))
            starts = np.array([lo for lo, _ in self.buckets])
            for row, name in enumerate(("rows", "tokens_correct", "exact")):
                for counter, value in zip(self.by_bucket[name], np.add.reduceat(stats[row], starts), strict=True):
                    if value:
                        counter.inc(int(value))
        yield stats


class TokenStats(beam.DoFn):
    """Compared table -> per-token counts ``(2, vocab_size)`` of the original rows: how often each token
    occurs, and how many rows consist of that token alone. Enough to score the trivial decoder that
    writes the most frequent token everywhere, the baseline beside the round trip."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def process(self, table: pa.Table) -> Iterator[np.ndarray]:
        original = table.column("original").combine_chunks()
        values = original.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        lengths = pc.list_value_length(original).to_numpy(zero_copy_only=False).astype(np.int64)
        stats = np.zeros((2, self.vocab_size), dtype=np.int64)
        stats[0] = np.bincount(values, minlength=self.vocab_size)
        if lengths.size:
            starts = np.cumsum(lengths) - lengths
            first = values[starts]
            same = np.add.reduceat((values == np.repeat(first, lengths)).astype(np.int64), starts) == lengths
            stats[1] = np.bincount(first[same], minlength=self.vocab_size)
        yield stats


class SplitStats(beam.DoFn):
    """Compared table -> counts ``(len(GROUPS), 4)`` per group of the model's training split (training, held
    out, unseen): rows, tokens, correct tokens, exact rows. Rows are matched to the model's split record
    (``split.parquet``) by the hash of their original tokens."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.record = None

    def setup(self) -> None:
        self.record = read_split(self.model_dir, read_manifest(self.model_dir))

    def process(self, table: pa.Table) -> Iterator[np.ndarray]:
        original = table.column("original").combine_chunks()
        values = original.flatten().to_numpy(zero_copy_only=False)
        offsets = original.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(offsets)
        group = self.record.groups(token_hashes(values, offsets))
        correct = table.column("correct").to_numpy().astype(np.int64)
        stats = np.zeros((len(GROUPS), 4), dtype=np.int64)
        for column, weights in enumerate((None, lengths, correct, correct == lengths)):
            weights = None if weights is None else weights.astype(np.float64)
            stats[:, column] = np.bincount(group, weights=weights, minlength=len(GROUPS)).astype(np.int64)
        yield stats


def split_report(stats: np.ndarray) -> dict[str, Any]:
    """Summed SplitStats counts -> per group: sequences, tokens, token accuracy, exact match."""
    out = {}
    for name, (rows, tokens, correct, exact) in zip(GROUPS, np.asarray(stats).tolist(), strict=True):
        out[name] = {"sequences": rows, "tokens": tokens, "tokens_correct": correct, "exact_matches": exact,
                     "token_accuracy": _ratio(correct, tokens), "exact_match": _ratio(exact, rows)}
    return out


# The drift rule: the night's rows never trained on (held out or unseen) round-trip whole more than
# DRIFT_POINTS below the training run's held-out test figure, by more than DRIFT_SIGMAS standard errors
# of a binomial rate at that figure (so a small night cannot raise it by chance), on at least DRIFT_MIN_ROWS.
DRIFT_POINTS, DRIFT_SIGMAS, DRIFT_MIN_ROWS = 0.05, 3.0, 100
DRIFT_RULE = (f"rows never trained on (held out + unseen) more than {100 * DRIFT_POINTS:g} points and "
              f"{DRIFT_SIGMAS:g} standard errors below training's held-out exact match, on at least "
              f"{DRIFT_MIN_ROWS} rows")


def drift_report(groups: dict[str, Any], reference: float | None) -> dict[str, Any]:
    """Whether the night's rows never trained on round-trip well below training's held-out exact match."""
    rows = groups["held_out"]["sequences"] + groups["unseen"]["sequences"]
    exact = _ratio(groups["held_out"]["exact_matches"] + groups["unseen"]["exact_matches"], rows)
    out: dict[str, Any] = {"flagged": False, "rows": rows, "exact_match": exact, "reference_exact_match": reference,
                           "rule": DRIFT_RULE}
    if reference is None:
        out["not_checked"] = "the model has no held-out figure from training"
    elif rows < DRIFT_MIN_ROWS:
        out["not_checked"] = f"{rows} rows never trained on, fewer than {DRIFT_MIN_ROWS}"
    else:
        below = reference - exact
        error = (reference * (1 - reference) / rows) ** 0.5
        out["points_below"] = round(100 * below, 2)
        out["flagged"] = bool(below > DRIFT_POINTS and below > DRIFT_SIGMAS * error)
    return out


def baseline_report(token_stats: np.ndarray, sequences: int) -> dict[str, Any]:
    """The most frequent token of the compared rows and the scores of writing it everywhere."""
    counts, uniform = token_stats
    token = int(counts.argmax())
    return {"token": token, "token_accuracy": _ratio(int(counts[token]), int(counts.sum())),
            "exact_match": _ratio(int(uniform[token]), sequences)}


class SumStats(beam.CombineFn):
    """Element-wise sum of the count arrays (zeros when there were none): per length ``(3, max_length + 1)``
    by default, or of the given ``shape``."""

    def __init__(self, max_length: int, shape: tuple[int, int] | None = None) -> None:
        self.shape = shape or (3, max_length + 1)

    def create_accumulator(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=np.int64)

    def add_input(self, accumulator: np.ndarray, stats: np.ndarray) -> np.ndarray:
        return accumulator + stats

    def merge_accumulators(self, accumulators: Iterable[np.ndarray]) -> np.ndarray:
        return sum(accumulators, self.create_accumulator())

    def extract_output(self, accumulator: np.ndarray) -> np.ndarray:
        return accumulator


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def length_report(stats: np.ndarray, compare: bool) -> dict[str, Any]:
    """Summed per-length counts -> totals and per-bucket rows for summary.json (accuracies if ``compare``)."""
    rows, correct, exact = (np.asarray(s, dtype=np.int64) for s in stats)
    tokens = rows * np.arange(rows.size)
    buckets = []
    for lo, hi in length_buckets(rows.size - 1):
        span = slice(lo, hi + 1)
        entry: dict[str, Any] = {
            "lengths": bucket_label(lo, hi), "min_length": lo, "max_length": hi,
            "sequences": int(rows[span].sum()), "tokens": int(tokens[span].sum()),
        }
        if compare:
            entry["token_accuracy"] = _ratio(int(correct[span].sum()), entry["tokens"])
            entry["exact_match"] = _ratio(int(exact[span].sum()), entry["sequences"])
        buckets.append(entry)
    out: dict[str, Any] = {"sequences": int(rows.sum()), "tokens": int(tokens.sum())}
    if compare:
        out["tokens_correct"] = int(correct.sum())
        out["exact_matches"] = int(exact.sum())
        out["token_accuracy"] = _ratio(out["tokens_correct"], out["tokens"])
        out["exact_match"] = _ratio(out["exact_matches"], out["sequences"])
    out["by_length"] = buckets
    return out


def write_text(path: str, text: str) -> None:
    """Write (or overwrite) a small text file on any Beam filesystem."""
    with FileSystems.create(path) as handle:
        handle.write(text.encode())


# -- mismatch examples ------------------------------------------------------------------------------------


class PickMismatches(beam.DoFn):
    """From a compared table, up to ``n`` wrongly decoded rows, spread over lengths (one per length first).

    Yields one list of example dicts per table (nothing when every row round-tripped).
    """

    def __init__(self, n: int, vocab: tuple[str, ...] | None = None) -> None:
        self.n, self.vocab = n, vocab

    def process(self, table: pa.Table) -> Iterator[list[dict[str, Any]]]:
        lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
        correct = table.column("correct").to_numpy().astype(np.int64)
        wrong = np.flatnonzero(correct < lengths)
        if not wrong.size:
            return
        wrong_lengths = lengths[wrong]
        order = np.argsort(wrong_lengths, kind="stable")
        sorted_lengths = wrong_lengths[order]
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size) - np.searchsorted(sorted_lengths, sorted_lengths, side="left")
        chosen = np.lexsort((wrong_lengths, rank))[: self.n]
        take = pa.array(wrong[chosen], type=pa.int64())
        examples = []
        for r, row_id, original, decoded in zip(
            rank[chosen].tolist(),
            table.column("id").take(take).to_pylist(),
            table.column("original").take(take).to_pylist(),
            table.column("tokens").take(take).to_pylist(),
            strict=True,
        ):
            wrong_at = [i for i, (a, b) in enumerate(zip(original, decoded, strict=True)) if a != b]
            examples.append({
                "rank": r, "id": row_id, "length": len(original), "wrong_tokens": len(wrong_at),
                "wrong_positions": wrong_at, "original": original, "decoded": decoded,
            })
            if self.vocab is not None:
                examples[-1]["original_text"] = " ".join(self.vocab[t] for t in original)
                examples[-1]["decoded_text"] = " ".join(self.vocab[t] for t in decoded)
        yield examples


def keep_spread(examples: Iterable[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``n`` examples taking one of each length in turn (shortest first), then a second, ..."""
    turn: dict[int, int] = {}
    keyed = []
    for example in sorted(examples, key=lambda e: (e["length"], e["rank"], str(e["id"]))):
        k = turn.get(example["length"], 0)
        turn[example["length"]] = k + 1
        keyed.append(((k, example["length"], str(example["id"])), example))
    keyed.sort(key=lambda item: item[0])
    return [example for _, example in keyed[:n]]


class KeepExamples(beam.CombineFn):
    """At most ``n`` examples, preferring one per length before a second of any length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def create_accumulator(self) -> list[dict[str, Any]]:
        return []

    def add_input(self, accumulator: list, examples: list) -> list:
        return keep_spread(accumulator + examples, self.n)

    def merge_accumulators(self, accumulators: Iterable[list]) -> list:
        return keep_spread(itertools.chain.from_iterable(accumulators), self.n)

    def extract_output(self, accumulator: list) -> list:
        out = sorted(accumulator, key=lambda e: (e["length"], str(e["id"])))
        return [{k: v for k, v in e.items() if k != "rank"} for e in out]


def write_examples(examples: list[dict[str, Any]], path: str) -> None:
    """Mismatch examples as JSON Lines, one readable object per line (empty file when there are none)."""
    write_text(path, "".join(json.dumps(e, default=str) + "\n" for e in examples))
