"""`seqcodec report DIR`: a real run (a briefly trained model, then encode --decode) rendered as PNG and HTML."""

import base64
import json
import re
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import random_sequences, run_seqcodec, write_tokens_parquet
from matplotlib.image import imread

from seqcodec.model.scores import percent
from seqcodec.pipeline.report import _plot_accuracy, _plot_lengths, _plot_loss, _plot_training_accuracy, headline

VOCAB, MAX_LEN = 5, 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Train a tiny model for a few epochs (a real history.json), encode --decode with it, then report."""
    root = tmp_path_factory.mktemp("report")
    data = write_tokens_parquet(root / "tokens.parquet", range(400), random_sequences(400, VOCAB, MAX_LEN, seed=4))
    code, _, err = run_seqcodec([
        "train", "--input", data, "--model-dir", root / "model", "--hidden-size", 32, "--embedding-size", 8,
        "--epochs", 6, "--batch-size", 32, "--learning-rate", 0.01, "--time-budget", 0,
    ])
    assert code == 0, err
    train_log = err
    code, _, err = run_seqcodec(["encode", "--input", data, "--output", root / "run", "--model-dir", root / "model",
                                 "--decode", "--mismatches", 3])
    assert code == 0, err
    code, out, err = run_seqcodec(["report", root / "run"])
    assert code == 0, err
    return SimpleNamespace(root=root, dir=root / "run", out=out, train_log=train_log,
                           summary=json.loads((root / "run" / "summary.json").read_text()))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def ink_by_quadrant(path: Path) -> list[float]:
    """Share of clearly non-white pixels in each quarter of the picture (top-left, top-right, ...)."""
    pixels = imread(path)[..., :3]
    inked = (pixels < 0.85).any(axis=-1)
    h, w = inked.shape
    body = inked[int(h * 0.07):]  # below the title
    bh = body.shape[0]
    return [float(body[r * bh // 2:(r + 1) * bh // 2, c * w // 2:(c + 1) * w // 2].mean())
            for r in (0, 1) for c in (0, 1)]


def test_report_renders_a_png_and_a_page_from_a_real_run(trained_run):
    paths = json.loads(trained_run.out)
    png, page = Path(paths["png"]), Path(paths["html"])
    assert png == trained_run.dir / "report.png" and page == trained_run.dir / "report.html"
    data = png.read_bytes()
    assert png_size(data) == (1300, 850)
    assert 30_000 < len(data) < 1_000_000
    # All four panels drawn: accuracy by length, lengths, loss, training accuracy (a "no data" note is far lighter).
    assert min(ink_by_quadrant(png)) > 0.018  # drawn panels measure 0.03-0.4, a note alone under 0.01
    text = page.read_text()
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert embedded and base64.b64decode(embedded.group(1)) == data
    rt = trained_run.summary["roundtrip"]
    assert f"{100 * rt['exact_match']:.1f}%" in text and trained_run.summary["model_fingerprint"] in text


def test_the_run_records_what_the_report_needs(trained_run):
    s = trained_run.summary
    assert Path(s["model_dir"]) == (trained_run.root / "model").resolve()
    history = json.loads((Path(s["model_dir"]) / "history.json").read_text())
    assert {"loss", "token_accuracy", "val_exact_match", "val_token_accuracy"} <= set(history)
    rt = s["roundtrip"]
    # A few epochs on 5 token ids: clearly better than chance (1 in 5), and short sequences do best.
    assert rt["token_accuracy"] > 0.3
    by_length = {b["min_length"]: b for b in rt["by_length"]}
    assert by_length[1]["exact_match"] > by_length[MAX_LEN]["exact_match"]
    assert sum(b["sequences"] for b in rt["by_length"]) == s["rows_decoded"] == 400


def test_report_without_round_trip_or_history(trained_run, tmp_path, tiny_model_dir):
    """A plain encode run whose model has no history.json: lengths come from the codes, the rest says so."""
    run = tmp_path / "plain"
    shutil.copytree(trained_run.dir / "codes", run / "codes")
    summary = {k: v for k, v in trained_run.summary.items() if k not in ("roundtrip", "rows_decoded")}
    summary["model_dir"] = str(tiny_model_dir)
    (run / "summary.json").write_text(json.dumps(summary))
    code, _, err = run_seqcodec(["report", run])
    assert code == 2 and "not published (no _SUCCESS)" in err  # a copy is read only once it is whole
    (run / "_SUCCESS").write_text(summary["run_id"])  # as a partition of an earlier version had it
    code, out, err = run_seqcodec(["report", run, "--out", tmp_path / "pictures"])
    assert code == 0, err
    png = tmp_path / "pictures" / "report.png"
    assert json.loads(out)["png"] == str(png)
    top_left, top_right, bottom_left, bottom_right = ink_by_quadrant(png)
    assert top_right > 0.018  # the length histogram, read from codes/*.parquet
    assert max(top_left, bottom_left, bottom_right) < 0.012  # only a note in each
    counts = np.bincount([len(s) for s in random_sequences(400, VOCAB, MAX_LEN, seed=4)])
    page = (tmp_path / "pictures" / "report.html").read_text()
    for length in range(1, MAX_LEN + 1):
        assert f"<tr><td>{length}</td><td>{counts[length]:,}</td></tr>" in page


def test_report_of_a_directory_that_is_not_a_run(seqcodec, tmp_path):
    code, _, err = seqcodec(["report", tmp_path])
    assert code == 2 and err.count("\n") == 1 and "no readable summary.json" in err


def test_report_shows_where_the_model_stands_and_words_with_vocab(trained_run, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("".join(f"w{i}x\n" for i in range(VOCAB)))
    code, _, err = run_seqcodec(["report", trained_run.dir, "--out", tmp_path / "out", "--vocab", vocab])
    assert code == 0, err
    page = (tmp_path / "out" / "report.html").read_text()
    rt, training = trained_run.summary["roundtrip"], trained_run.summary["model_training"]
    assert "Where the model stands" in page and "may include rows the model trained on" in page
    assert f"always the most frequent token (id {rt['baseline']['token']})" in page
    assert "held-out test rows (never trained on)" in page
    held = trained_run.summary["roundtrip"]["by_split"]["held_out"]
    assert f"round trip: held out in training</td><td>{held['sequences']:,}</td>" in page
    assert percent(training["test"]["token_accuracy"]) in page
    examples = [json.loads(line) for line in (trained_run.dir / "roundtrip" / "mismatches.jsonl").open()]
    assert examples and "Mismatch examples" in page
    for e in examples:
        assert " ".join(f"w{t}x" for t in e["original"]) in page
    short = tmp_path / "short.txt"
    short.write_text("a\n")
    code, _, err = run_seqcodec(["report", trained_run.dir, "--out", tmp_path / "out2", "--vocab", short])
    assert code == 2 and str(short) in err and f"1 tokens, but the model's vocabulary has {VOCAB}" in err



# -- what the picture says at a glance --------------------------------------------------------------


def test_the_headline_puts_held_out_rows_beside_all_rows(trained_run):
    s = trained_run.summary
    rt, held = s["roundtrip"], s["roundtrip"]["by_split"]["held_out"]
    line = headline(s, str(trained_run.dir))[2]
    assert line.startswith(f"round trip, all {rt['sequences']:,} rows: {percent(rt['exact_match'])} exact")
    assert f"  |  held out in training ({held['sequences']:,}): {percent(held['exact_match'])} exact, " in line
    assert headline(s, "x")[3].startswith("training rows (")  # the other groups on the next line
    # A model without the split record: training's own held-out figure, and a word that the split is missing.
    old = {**s, "roundtrip": {k: v for k, v in rt.items() if k not in ("by_split", "drift")}}
    line = headline(old, "x")[2]
    test = s["model_training"]["test"]
    assert f"training's own held-out test ({test['sequences']:,}): {percent(test['exact_match'])} exact" in line
    assert "unavailable" in line
    flagged = {**s, "roundtrip": {**rt, "drift": {**rt["drift"], "flagged": True, "points_below": 7.5,
                                                  "exact_match": 0.1, "reference_exact_match": 0.175}}}
    assert headline(flagged, "x")[-1].startswith("DRIFT: ") and "7.5 points below" in headline(flagged, "x")[-1]
    assert not any(line.startswith("DRIFT") for line in headline(s, "x"))


def test_report_reads_a_json_vocabulary(trained_run, tmp_path):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"tokens": [f"L{i}" for i in range(VOCAB)], "source": "test"}))
    code, _, err = run_seqcodec(["report", trained_run.dir, "--out", tmp_path / "out", "--vocab", vocab])
    assert code == 0, err
    page = (tmp_path / "out" / "report.html").read_text()
    examples = [json.loads(line) for line in (trained_run.dir / "roundtrip" / "mismatches.jsonl").open()]
    assert examples and all(" ".join(f"L{t}" for t in e["original"]) in page for e in examples)


def drawn(plot, *args):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.25), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    plot(ax, *args)
    fig.canvas.draw()
    return ax


def test_training_curves_zoom_show_whole_epochs_and_keep_the_legend_off_them():
    history = {"token_accuracy": [0.991, 0.996, 0.998, 0.999], "val_token_accuracy": [0.990, 0.995, 0.997, 0.998],
               "val_exact_match": [0.95, 0.975, 0.985, 0.99], "loss": [0.1, 0.05, 0.02, 0.01]}
    ax = drawn(_plot_training_accuracy, history)
    bottom, top = ax.get_ylim()
    assert 0.9 < bottom < 0.95 and top < 1.01  # the curves fill the panel
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(set(labels)) == len(labels)  # enough decimals to tell the ticks apart
    assert all(float(t) == int(float(t)) for t in ax.get_xticks() if 1 <= t <= 4)
    legend, panel = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert not legend.overlaps(panel)  # below the panel, covering no curve
    # A long run: the first epochs' climb does not flatten the last ones.
    climbing = {"val_exact_match": [0.3, 0.7, 0.9, *np.linspace(0.95, 0.99, 9)]}
    ax = drawn(_plot_training_accuracy, climbing)
    assert 0.9 < ax.get_ylim()[0] < 0.95 and "zoomed to epochs 4-12" in ax.get_title()
    loss = drawn(_plot_loss, history, None)
    assert all(float(t) == int(float(t)) for t in loss.get_xticks())


def test_round_trip_panel_zooms_to_its_data():
    buckets = [{"lengths": str(n), "sequences": 10, "token_accuracy": 0.999, "exact_match": 0.99} for n in (3, 4)]
    rt = {"by_length": buckets, "token_accuracy": 0.999, "exact_match": 0.99, "sequences": 20,
          "baseline": {"token": 0, "token_accuracy": 0.1, "exact_match": 0.0}}
    ax = drawn(_plot_accuracy, rt)
    assert ax.get_ylim()[0] > 0.95
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())


def test_length_histogram_starts_and_ends_with_rows():
    rows = [{"lengths": label, "sequences": n} for label, n in (("1-2", 0), ("3-4", 5), ("5-6", 0), ("7-8", 3),
                                                                 ("9-10", 0))]
    ax = drawn(_plot_lengths, rows, None)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["3-4", "5-6", "7-8"]


def test_epoch_lines_print_percentages(trained_run):
    lines = [line for line in trained_run.train_log.splitlines() if " epoch " in line and "val_exact_match" in line]
    assert len(lines) == 6 and "epoch 6/6 (" in lines[-1]
    assert all(re.search(r"val_exact_match \d+\.\d\d+%", line) for line in lines)
    assert not any(re.search(r"\de-\d", line) for line in lines)
