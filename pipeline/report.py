"""`seqcodec report DIR`: a finished run as a picture (report.png) and a small page around it (report.html).

Reads DIR/summary.json and, when summary.json names a model directory holding history.json,
the training curves. Panels: round-trip accuracy by length, the length histogram, training
loss and training/validation accuracy; a panel whose data the run does not have says so.
Rendered with matplotlib's Agg canvas: no display needed.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
from typing import Any

import numpy as np
from apache_beam.io.filesystems import FileSystems

from seqcodec.model.data import read_vocab
from seqcodec.model.errors import InputDataError, first_line
from seqcodec.model.manifest import VOCAB_FILE, ModelDirError, model_vocab, read_manifest
from seqcodec.model.scores import percent
from seqcodec.pipeline.options import (
    add_table_arguments,
    check_beam_arguments,
    check_extras,
    use_filesystem_options,
)
from seqcodec.pipeline.runtime import ArgumentParser, UsageError, exit_process, run_cli, setup_logging
from seqcodec.transforms.partition import (
    SUCCESS,
    SUMMARY,
    check_run_date,
    committed_run_dir,
    matching_paths,
    seqcodec_files,
)
from seqcodec.transforms.roundtrip import bucket_label, length_buckets
from seqcodec.transforms.table import TableRef, run_dir_of

log = logging.getLogger("seqcodec")

PNG_NAME, HTML_NAME = "report.png", "report.html"
HISTORY = "history.json"
COLORS = {"token": "#1f77b4", "exact": "#ff7f0e", "wrong": "#c7c7c7", "lr": "#7f7f7f", "val": "#2ca02c"}


def _read_text(path: str) -> str:
    with FileSystems.open(path, compression_type="uncompressed") as handle:
        return handle.read().decode()


def run_files(run_dir: str) -> str:
    """Where a run's files are: a committed partition's run directory, or a (hidden) run directory itself.

    InputDataError (one line) for a partition without ``_SUCCESS``: its run is still running or
    failed, or the folder is a half copy; its files cannot be trusted.
    """
    run_dir = run_dir.rstrip("/")
    committed = committed_run_dir(run_dir)
    if committed is not None:
        return committed
    if FileSystems.split(run_dir)[1].startswith("."):  # a run's own directory, read as it is for inspection
        return run_dir
    if not seqcodec_files(run_dir):
        raise InputDataError(f"{run_dir}: no readable summary.json (not a finished seqcodec run)")
    raise InputDataError(f"{run_dir}: not published (no {SUCCESS}); its run is still running or failed")


def read_summary(run_dir: str) -> dict[str, Any]:
    """The summary.json of a run's files (``run_files``); InputDataError (one line) if it is not a finished run."""
    path = FileSystems.join(run_dir, SUMMARY)
    try:
        text = _read_text(path)
    except Exception:  # FileSystems raises its own types per scheme
        raise InputDataError(f"{run_dir}: no readable summary.json (not a finished seqcodec run)") from None
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise InputDataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(summary, dict) or "rows_read" not in summary:
        raise InputDataError(f"{path}: not a seqcodec run summary (no rows_read)")
    return summary


def read_history(model_dir: str | None) -> dict[str, list[float]] | None:
    """The model directory's training curves, or None if there are none (a warning if they are unreadable)."""
    if not model_dir:
        return None
    path = FileSystems.join(model_dir, HISTORY)
    try:
        if not FileSystems.exists(path):
            log.info("no %s in %s: the report has no training curves", HISTORY, model_dir)
            return None
        history = json.loads(_read_text(path))
    except Exception as exc:
        log.warning("cannot read %s (%s): the report has no training curves", path, first_line(exc))
        return None
    if not isinstance(history, dict):
        log.warning("%s is not a JSON object: the report has no training curves", path)
        return None
    return {k: [float(x) for x in v] for k, v in history.items() if isinstance(v, list) and v}


def lengths_from_codes(run_dir: str) -> list[dict[str, Any]] | None:
    """Length histogram from the codes' ``length`` column, for runs that did not decode."""
    import pyarrow.parquet as pq

    parts = []
    for path in matching_paths(FileSystems.join(run_dir, "codes", "*.parquet")):
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            parts.append(pq.read_table(handle, columns=["length"]).column("length").to_numpy().astype(np.int64))
    lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if not lengths.size:
        return None
    rows = np.bincount(lengths)
    out = []
    for lo, hi in length_buckets(int(lengths.max())):
        n = int(rows[lo : hi + 1].sum())
        out.append({"lengths": bucket_label(lo, hi), "min_length": lo, "max_length": hi, "sequences": n})
    return out


def length_rows(summary: dict[str, Any], run_dir: str) -> list[dict[str, Any]] | None:
    """Per-length-bucket rows: from the round trip, the decode histogram, or else the codes themselves."""
    if summary.get("roundtrip"):
        return summary["roundtrip"]["by_length"]
    if summary.get("length_histogram"):
        return summary["length_histogram"]
    return lengths_from_codes(run_dir)


def _pct(x: float | None) -> str:
    return percent(x)


def read_examples(run_dir: str, vocab: list[str] | None, vocab_path: str = "") -> list[dict[str, Any]]:
    """The run's mismatch examples (roundtrip/mismatches.jsonl), with words when a vocabulary is given."""
    path = FileSystems.join(run_dir, "roundtrip", "mismatches.jsonl")
    try:
        if not FileSystems.exists(path):
            return []
        examples = [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]
    except Exception as exc:
        log.warning("cannot read %s (%s): the report shows no examples", path, first_line(exc))
        return []
    if vocab is not None:
        largest = max((t for e in examples for t in e["original"] + e["decoded"]), default=-1)
        if largest >= len(vocab):
            raise InputDataError(f"{vocab_path}: {len(vocab)} tokens, but the run's examples use token id {largest}")
        for e in examples:
            e["original_text"] = " ".join(vocab[t] for t in e["original"])
            e["decoded_text"] = " ".join(vocab[t] for t in e["decoded"])
    return examples


def report_vocab(summary: dict[str, Any], vocab_path: str | None) -> tuple[list[str] | None, str]:
    """The vocabulary for the examples' words and where it came from: ``--vocab``, else the run's model's own.

    The run's model (summary.json's ``model_dir``) gives the size a --vocab file must have and, without
    --vocab, its stored vocab.txt, but only while it is still the model of the run (same fingerprint):
    a model retrained since may number its tokens differently.
    """
    manifest = None
    model_dir = summary.get("model_dir")
    if model_dir:
        try:
            manifest = read_manifest(model_dir)
        except ModelDirError as exc:
            log.info("%s: the vocabulary's size is not checked", exc)
    if manifest is not None and manifest.fingerprint != summary.get("model_fingerprint"):
        log.warning("model directory %s now holds another model (%s, the run's was %s): its vocabulary is not used",
                    model_dir, manifest.fingerprint, summary.get("model_fingerprint"))
        manifest = None
    if vocab_path:
        return read_vocab(vocab_path, manifest.vocab_size if manifest else None), vocab_path
    if manifest is None:
        return None, ""
    return model_vocab(model_dir, manifest), FileSystems.join(model_dir, VOCAB_FILE)


def figures_rows(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, sequences, token accuracy, exact match) rows: the round trip, its baseline, and the model's
    own figures from training, so a reader sees the round trip beside what it should be compared with."""
    out = []
    rt = summary.get("roundtrip")
    if rt:
        out.append(("round trip of this run (may include rows the model trained on)", f"{rt['sequences']:,}",
                    percent(rt["token_accuracy"]), percent(rt["exact_match"])))
        if rt.get("baseline"):
            b = rt["baseline"]
            out.append((f"baseline on these rows: always the most frequent token (id {b['token']})", "",
                        percent(b["token_accuracy"]), percent(b["exact_match"])))
        for name, g in (rt.get("by_split") or {}).items():
            out.append((f"round trip: {GROUP_LABELS[name]}", f"{g['sequences']:,}", percent(g["token_accuracy"]),
                        percent(g["exact_match"])))
        if (summary.get("training_split") or {}).get("available") is False:
            out.append((f"round trip by training split: unavailable ({summary['training_split']['reason']})",
                        "", "", ""))
    training = summary.get("model_training") or {}
    labels = (("test", "training: held-out test rows (never trained on)"),
              ("train", "training: a sample of its training rows"),
              ("baseline", "training: baseline on the held-out rows (most frequent token)"))
    for key, label in labels:
        if isinstance(training.get(key), dict):
            f = training[key]
            out.append((label, f"{f['sequences']:,}" if "sequences" in f else "", percent(f["token_accuracy"]),
                        percent(f["exact_match"])))
    return out


def _empty(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555", wrap=True,
            transform=ax.transAxes)


def zoom_percent(ax, values: list[float]) -> None:
    """Fit the y axis (fractions shown as percentages) to ``values``, within [0, 1], with decimals that
    tell its ticks apart: curves near 100% fill the panel instead of lying flat at its top."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = max((hi - lo) * 0.08, 0.002)
    bottom, top = max(lo - pad, 0.0), min(hi + pad, 1.0)
    if top - bottom < 0.01:  # a flat curve: one point of percentage around it
        bottom, top = max(min(bottom, top - 0.01), 0.0), min(max(top, bottom + 0.01), 1.0)
    ax.set_ylim(bottom - (top - bottom) * 0.02, top + (top - bottom) * 0.02)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
    digits = max(0, min(3, int(np.ceil(-np.log10((top - bottom) * 100 / 5)))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.{digits}f}%"))


def whole_epochs(ax) -> None:
    """Epoch ticks at whole numbers only (no 1.5, 2.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def trim_empty(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Length buckets without the empty ones before the first row and after the last (gaps between stay)."""
    filled = [i for i, b in enumerate(rows) if b["sequences"]]
    return rows[filled[0] : filled[-1] + 1] if filled else rows


def _plot_accuracy(ax, roundtrip: dict[str, Any] | None) -> None:
    if not roundtrip:
        _empty(ax, "no round trip in this run\n(`seqcodec encode ... --decode` measures it)")
        return
    buckets = [b for b in roundtrip["by_length"] if b["sequences"]]
    x = np.arange(len(buckets))
    token = np.array([b["token_accuracy"] for b in buckets], dtype=float)
    exact = np.array([b["exact_match"] for b in buckets], dtype=float)
    ax.plot(x, token, "o-", color=COLORS["token"], label=f"token accuracy (all: {_pct(roundtrip['token_accuracy'])})")
    ax.plot(x, exact, "s-", color=COLORS["exact"], label=f"exact match (all: {_pct(roundtrip['exact_match'])})")
    for value, color in ((roundtrip["token_accuracy"], COLORS["token"]), (roundtrip["exact_match"], COLORS["exact"])):
        if value is not None:
            ax.axhline(value, color=color, linestyle=":", linewidth=1)
    if roundtrip.get("baseline") and roundtrip["baseline"]["token_accuracy"] is not None:
        ax.axhline(roundtrip["baseline"]["token_accuracy"], color=COLORS["wrong"], linestyle="--", linewidth=1.5,
                   label=f"baseline: always the most frequent token ({_pct(roundtrip['baseline']['token_accuracy'])})")
    ax.set_xticks(x, [b["lengths"] for b in buckets], rotation=45 if len(buckets) > 8 else 0)
    # The baseline's line stays out of the zoom: it is often far below, and its legend entry has its value.
    zoom_percent(ax, [*token, *exact, roundtrip["token_accuracy"], roundtrip["exact_match"]])
    ax.set_xlabel("sequence length")
    ax.set_ylabel("correct")
    ax.set_title(f"Round trip by length ({roundtrip['sequences']:,} sequences, training rows included)")
    ax.grid(alpha=0.3)
    # Below the panel: the zoomed curves fill it, so a legend on it would hide part of one.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32 if len(buckets) > 8 else -0.2), ncol=2, fontsize=8,
              frameon=False)


def _plot_lengths(ax, rows: list[dict[str, Any]] | None, roundtrip: dict[str, Any] | None) -> None:
    if not rows:
        _empty(ax, "no sequence lengths in this run")
        return
    rows = trim_empty(rows)
    x = np.arange(len(rows))
    total = np.array([b["sequences"] for b in rows])
    if roundtrip:
        exact = np.array([round((b["exact_match"] or 0) * b["sequences"]) for b in rows])
        ax.bar(x, exact, color=COLORS["exact"], label="decoded exactly")
        ax.bar(x, total - exact, bottom=exact, color=COLORS["wrong"], label="with wrong tokens")
        ax.legend(loc="upper right", fontsize=9)
    else:
        ax.bar(x, total, color=COLORS["token"])
    ax.set_xticks(x, [b["lengths"] for b in rows], rotation=45 if len(rows) > 8 else 0)
    ax.set_ylim(0, max(1, int(total.max())) * 1.2)  # headroom for the legend
    ax.set_xlabel("sequence length")
    ax.set_ylabel("sequences")
    ax.set_title(f"Sequence lengths ({int(total.sum()):,} sequences)")
    ax.grid(axis="y", alpha=0.3)


def _plot_loss(ax, history: dict[str, list[float]] | None, model_dir: str | None) -> None:
    if not history or "loss" not in history:
        where = f"no {HISTORY} in {model_dir}" if model_dir else "summary.json names no model directory"
        _empty(ax, f"no training history\n({where})")
        return
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], "o-", color=COLORS["token"], markersize=3, label="training loss")
    whole_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if history.get("learning_rate"):
        lr = ax.twinx()
        rates = history["learning_rate"]
        lr.plot(np.arange(1, len(rates) + 1), rates, "--", color=COLORS["lr"], label="learning rate")
        lr.set_ylabel("learning rate", color=COLORS["lr"])
        lr.tick_params(axis="y", colors=COLORS["lr"])
        lines = ax.get_lines() + lr.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=9)
    else:
        ax.legend(loc="upper right", fontsize=9)


def _plot_training_accuracy(ax, history: dict[str, list[float]] | None) -> None:
    curves = [
        ("token_accuracy", "token accuracy (train)", COLORS["token"], "-"),
        ("val_token_accuracy", "token accuracy (validation)", COLORS["val"], "-"),
        ("val_exact_match", "exact match (validation)", COLORS["exact"], "-"),
    ]
    present = [c for c in curves if history and history.get(c[0])]
    if not present:
        _empty(ax, "no training accuracy curves")
        return
    for key, label, color, style in present:
        values = history[key]
        ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", markersize=3, color=color, label=label)
    # Zoom to the later three quarters of the run: the first epochs climb from far below and would
    # flatten the differences that matter, those between the last epochs.
    epochs = max(len(history[key]) for key, *_ in present)
    skip = epochs // 4 if epochs >= 8 else 0
    zoom_percent(ax, [v for key, *_ in present for v in history[key][skip:]])
    whole_epochs(ax)
    ax.set_xlabel("epoch")
    below = any(v is not None and v < ax.get_ylim()[0] for key, *_ in present for v in history[key])
    ax.set_title("Training accuracy" + (f" (zoomed to epochs {skip + 1}-{epochs}; earlier ones lower)" if below
                                        else ""))
    ax.grid(alpha=0.3)
    # Below the panel, not on it: zoomed curves fill the whole panel, so any corner would hide one.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=len(present), fontsize=9, frameon=False)


def headline(summary: dict[str, Any], run_dir: str) -> list[str]:
    """Two lines for the top of the picture: where and what, then how many rows went where."""
    counts = [f"{summary['rows_read']:,} read"]
    for key in ("rows_encoded", "rows_decoded", "rows_rejected"):
        if key in summary:
            counts.append(f"{summary[key]:,} {key.split('_', 1)[1]}")
    reasons = summary.get("rejected_by_reason") or {}
    if reasons:
        counts[-1] += " (" + ", ".join(f"{k} {v:,}" for k, v in reasons.items()) + ")"
    where = run_dir.rstrip("/")
    first = f"seqcodec run {where if len(where) <= 90 else '...' + where[-87:]}"
    model = summary.get("model_fingerprint")
    second = ", ".join(counts) + (f"  |  model {model}" if model else "")
    if summary.get("elapsed_seconds") is not None:
        second += f"  |  {summary['elapsed_seconds']:.1f} s on {summary.get('runner', '?')}"
    return [first, second, *figures_headline(summary)]


def _scores(figures: dict[str, Any]) -> str:
    return f"{_pct(figures['exact_match'])} exact, {_pct(figures['token_accuracy'])} tokens"


GROUP_LABELS = {"held_out": "held out in training", "training": "training rows", "unseen": "rows unseen in training"}


def figures_headline(summary: dict[str, Any]) -> list[str]:
    """The round trip for the top of the picture: all rows beside the held-out rows (and drift), or nothing."""
    rt = summary.get("roundtrip")
    if not rt:
        return []
    parts = [f"round trip, all {rt['sequences']:,} rows: {_scores(rt)}"]
    groups = rt.get("by_split")
    more = []
    if groups:
        # Held-out rows first, beside all rows: they are the honest figure; the other groups follow.
        shown = [f"{GROUP_LABELS[name]} ({groups[name]['sequences']:,}): {_scores(groups[name])}"
                 for name in ("held_out", "training", "unseen") if groups[name]["sequences"]]
        parts, more = parts + shown[:1], shown[1:]
    else:
        test = (summary.get("model_training") or {}).get("test")
        if test:
            parts.append(f"training's own held-out test ({test['sequences']:,}): {_scores(test)}")
        parts.append("(these rows' training/held-out split: unavailable)")
    lines = ["  |  ".join(parts)] + (["  |  ".join(more)] if more else [])
    drift = rt.get("drift") or {}
    if drift.get("flagged"):
        lines.append(f"DRIFT: {drift['rows']:,} rows never trained on at {_pct(drift['exact_match'])} exact, "
                     f"{drift['points_below']:g} points below training's held-out "
                     f"{_pct(drift['reference_exact_match'])}")
    return lines


def render_png(summary: dict[str, Any], history: dict[str, list[float]] | None,
               rows: list[dict[str, Any]] | None, run_dir: str) -> bytes:
    """The four panels as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle("\n".join(headline(summary, run_dir)), fontsize=11)
    (a, b), (c, d) = fig.subplots(2, 2)
    roundtrip = summary.get("roundtrip")
    _plot_accuracy(a, roundtrip)
    _plot_lengths(b, rows, roundtrip)
    _plot_loss(c, history, summary.get("model_dir"))
    _plot_training_accuracy(d, history)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def render_html(summary: dict[str, Any], png: bytes, rows: list[dict[str, Any]] | None, run_dir: str,
                examples: list[dict[str, Any]] | None = None) -> str:
    """A self-contained page: the picture (embedded), the headline numbers, how they compare, the
    per-length table and the mismatch examples (with words when the examples have them)."""
    e = html.escape
    facts = [(k, summary[k]) for k in ("rows_read", "rows_encoded", "rows_decoded", "rows_rejected",
                                       "rejected_by_reason", "model_fingerprint", "model_dir", "runner",
                                       "elapsed_seconds", "sequences_per_second") if k in summary]
    roundtrip = summary.get("roundtrip")
    if roundtrip:
        facts += [("token_accuracy", _pct(roundtrip["token_accuracy"])),
                  ("exact_match", _pct(roundtrip["exact_match"]))]
        if roundtrip.get("mismatches_file"):
            facts.append(("mismatch examples", f"{roundtrip['mismatch_examples']} in {roundtrip['mismatches_file']}"))
    fact_rows = "\n".join(f"<tr><th>{e(str(k))}</th><td>{e(json.dumps(v) if isinstance(v, dict) else str(v))}</td></tr>"
                          for k, v in facts)
    table = ""
    rows = trim_empty(rows) if rows else rows
    if rows:
        head = "<tr><th>length</th><th>sequences</th>" + (
            "<th>token accuracy</th><th>exact match</th>" if roundtrip else "") + "</tr>"
        body = "\n".join(
            f"<tr><td>{e(b['lengths'])}</td><td>{b['sequences']:,}</td>"
            + (f"<td>{_pct(b.get('token_accuracy'))}</td><td>{_pct(b.get('exact_match'))}</td>" if roundtrip else "")
            + "</tr>"
            for b in rows
        )
        table = f"<h2>By length</h2>\n<table>\n{head}\n{body}\n</table>"
    figures = figures_rows(summary)
    if figures:
        body = "\n".join(f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>"
                         for a, b, c, d in figures)
        table = ("<h2>Where the model stands</h2>\n<table>\n<tr><th></th><th>sequences</th><th>token accuracy</th>"
                 f"<th>exact match</th></tr>\n{body}\n</table>\n" + table)
        for hint in (summary.get("model_training") or {}).get("hints") or []:
            table += f"\n<p>Hint from training: {e(hint)}</p>"
    if examples:
        worded = any("original_text" in x for x in examples)
        head = "<tr><th>id</th><th>length</th><th>wrong</th><th>original</th><th>decoded</th></tr>"
        cells = []
        for x in examples:
            original, decoded = (e(json.dumps(x["original"])), e(json.dumps(x["decoded"])))
            if worded:
                original = f"{e(x['original_text'])}<br><small>{original}</small>"
                decoded = f"{e(x['decoded_text'])}<br><small>{decoded}</small>"
            cells.append(f"<tr><td>{e(str(x['id']))}</td><td>{x['length']}</td><td>{x['wrong_tokens']}</td>"
                         f"<td>{original}</td><td>{decoded}</td></tr>")
        table += f"\n<h2>Mismatch examples</h2>\n<table>\n{head}\n" + "\n".join(cells) + "\n</table>"
    title = e(headline(summary, run_dir)[0])
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
th, td {{ border: 1px solid #ddd; padding: 0.25em 0.75em; text-align: left; }}
th {{ background: #f4f4f4; }}
</style>
</head>
<body>
<h1>{title}</h1>
<img src="data:image/png;base64,{image}" alt="round trip by length, length histogram and training curves">
<table>
{fact_rows}
</table>
{table}
</body>
</html>
"""


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="seqcodec report",
        description="Render a finished run (its summary.json) as report.png and report.html. "
        "Beam's filesystem options (--s3_endpoint_url, ...) are accepted for runs on object stores.",
    )
    p.add_argument("run_dir", nargs="?",
                   help="the run's output directory (the partition holding summary.json); not with --table")
    p.add_argument("--out", help="where to write report.png and report.html (default: RUN_DIR)")
    p.add_argument("--vocab", metavar="FILE",
                   help="one token per line (line number = id), or JSON (a list, or an object with a tokens list, "
                        "as data/sample/vocab.json): words in the examples (default: the run's model's own "
                        "vocab.txt, stored by `train --vocab`)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_table_arguments(p, "report the run that wrote --run-date D's rows of this Iceberg table (as of "
                           "--snapshot-id, default the current snapshot); the report goes into that run's "
                           "directory unless --out is given", read=True)
    p.add_argument("--run-date", metavar="YYYY-MM-DD", help="with --table: the date whose run to report")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, beam_args = p.parse_known_args(argv)
    check_beam_arguments(beam_args)  # an option neither the report nor Beam knows would be dropped silently
    setup_logging(args.verbose)
    use_filesystem_options(beam_args)
    if args.table is not None:
        if args.run_dir is not None or args.run_date is None:
            raise UsageError("--table takes --run-date D and no RUN_DIR")
        check_run_date(args.run_date)
        ref = TableRef.resolve(args.catalog, args.table)
        args.run_dir = run_dir_of(ref.load(), args.table, args.run_date, args.snapshot_id)
    elif args.run_dir is None:
        raise UsageError("the following arguments are required: run_dir (or --table with --run-date)")
    elif args.run_date is not None or args.snapshot_id is not None:
        raise UsageError("--run-date and --snapshot-id go with --table")
    check_extras(args.run_dir, args.out)
    files = run_files(args.run_dir)
    summary = read_summary(files)
    history = read_history(summary.get("model_dir"))
    rows = length_rows(summary, files)
    vocab, vocab_path = report_vocab(summary, args.vocab)
    examples = read_examples(files, vocab, vocab_path)
    png = render_png(summary, history, rows, args.run_dir)
    out = args.out or args.run_dir
    png_path, html_path = FileSystems.join(out, PNG_NAME), FileSystems.join(out, HTML_NAME)
    with FileSystems.create(png_path) as handle:
        handle.write(png)
    with FileSystems.create(html_path) as handle:
        handle.write(render_html(summary, png, rows, args.run_dir, examples).encode())
    log.info("report written: %s (%d bytes) and %s", png_path, len(png), html_path)
    print(json.dumps({"png": png_path, "html": html_path}))
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
