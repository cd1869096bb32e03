"""Nightly operation: dated partitions, idempotent reruns, atomic publish, --max-error-rate, killed runs.

Real jobs on the DirectRunner (in-process through the `seqcodec` fixture, and one real subprocess that
is SIGKILLed mid-run), real files; the publish protocol is also driven directly on real directories.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import token_file, visible

from seqcodec.transforms.partition import SUCCESS, SUMMARY

DATE = "2026-11-26"
ROOT = Path(__file__).resolve().parent.parent




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("nightly-data")
    return {
        "clean": token_file(root / "clean.parquet", 200, seed=1),
        "dirty": token_file(root / "dirty.parquet", 200, bad_every=10, seed=2),  # 20 of 200 rejected: 10%
    }


def encode(seqcodec, model_dir, input_path, output, *extra):
    """The encode command; replaced runs are deleted at once (``--grace-seconds 0``) unless ``extra`` says otherwise."""
    grace = [] if "--grace-seconds" in map(str, extra) else ["--grace-seconds", "0"]
    return seqcodec(["encode", "--input", input_path, "--output", output, "--model-dir", model_dir, *grace, *extra])


def ids(folder: Path) -> list[int]:
    """All ids in the Parquet shards of ``folder``, sorted, duplicates kept."""
    out: list[int] = []
    for shard in sorted(folder.glob("*.parquet")):
        out += pq.read_table(shard, columns=["id"]).column("id").to_pylist()
    return sorted(out)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("seqcodec: error: "), err
    return lines[0]


# -- through the command --------------------------------------------------------------------------


def test_run_date_layout_one_partition_per_date(seqcodec, tiny_model_dir, data, tmp_path):
    path, valid, bad = data["dirty"]
    out = tmp_path / "codes"
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", DATE, "--max-error-rate", "0.1")
    assert code == 0, err
    assert "published" in err and f"dt={DATE}" in err
    part = out / f"dt={DATE}"
    assert visible(out) == [f"dt={DATE}"] and hidden(out) == [os.readlink(part)]  # the run's own directory
    assert sorted(os.listdir(part)) == [SUCCESS, "codes", "errors", SUMMARY]
    assert ids(part / "codes") == valid and ids(part / "errors") == bad
    summary = json.loads((part / SUMMARY).read_text())
    assert summary["partition"] == str(part) and summary["rows_rejected"] == len(bad)

    before = snapshot(part)
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", "2026-11-27", "--max-error-rate", "1")
    assert code == 0, err
    assert visible(out) == [f"dt={DATE}", "dt=2026-11-27"]
    assert snapshot(part) == before  # another date leaves this one alone


@pytest.mark.parametrize(
    "dated, shards", [(True, (3, 3, 1)), (False, (2, 1))], ids=["run-date", "plain-output"]
)
def test_rerun_replaces_the_partition_completely(seqcodec, tiny_model_dir, data, tmp_path, dated, shards):
    path, valid, _ = data["clean"]
    out = tmp_path / "codes"
    part = out / f"dt={DATE}" if dated else out
    extra = ["--run-date", DATE] if dated else []
    previous = None
    for n in shards:
        code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--num-shards", n, *extra)
        assert code == 0, err
        if previous:  # the launcher says what the commit replaced
            assert f"replacing run {previous} ({len(valid):,} rows)" in err
        previous = json.loads((part / SUCCESS).read_text())["run_id"]
        assert ids(part / "codes") == valid  # exactly the input's rows: no duplicates from earlier runs
        assert len(list((part / "codes").glob("*.parquet"))) == n  # and no stale shards of another count
        assert (part / SUCCESS).exists()
    assert hidden(out if dated else tmp_path) == [os.readlink(part)]  # replaced runs go (--grace-seconds 0)


@pytest.mark.parametrize("value", ["2026-11-31", "2026-13-01", "26-11-2026", "20261126", "yesterday", " 2026-11-26"])
def test_bad_run_date_is_one_line_and_exit_2(seqcodec, tiny_model_dir, data, tmp_path, value):
    code, out, err = encode(seqcodec, tiny_model_dir, data["clean"][0], tmp_path / "codes", "--run-date", value)
    assert code == 2
    assert "--run-date" in one_line(err) and repr(value) in err
    assert not (tmp_path / "codes").exists() and hidden(tmp_path) == []


def test_max_error_rate_at_the_threshold_publishes(seqcodec, tiny_model_dir, data, tmp_path):
    path, valid, bad = data["dirty"]  # 10% rejected
    code, _, err = encode(seqcodec, tiny_model_dir, path, tmp_path / "codes", "--run-date", DATE,
                          "--max-error-rate", "0.1")
    assert code == 0, err
    part = tmp_path / "codes" / f"dt={DATE}"
    assert (part / SUCCESS).exists() and ids(part / "codes") == valid and ids(part / "errors") == bad


def test_max_error_rate_exceeded_exit_3_keeps_previous_and_rejects_for_inspection(
    seqcodec, tiny_model_dir, data, tmp_path
):
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    code, _, err = encode(seqcodec, tiny_model_dir, data["clean"][0], out, "--run-date", DATE)
    assert code == 0, err
    before = snapshot(part)

    path, _, bad = data["dirty"]
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", DATE, "--max-error-rate", "0.05")
    assert code == 3
    line = one_line(err[err.index("seqcodec: error:"):])  # progress lines come first on stderr
    assert "20 of 200 rows rejected (10.00%)" in line and "--max-error-rate 0.05" in line
    staging = Path(re.search(r"rejected rows are in (\S+)/errors", line).group(1))
    assert staging.parent == out and staging.name.startswith(f".dt={DATE}.run-")
    assert "WARNING 20 of 200 rows rejected (10.00%)" in err and f"they are in {staging}/errors" in err  # not dt=D's
    assert ids(staging / "errors") == bad  # kept for inspection
    assert json.loads((staging / SUMMARY).read_text())["rows_rejected"] == len(bad)
    assert not (staging / SUCCESS).exists()
    assert snapshot(part) == before  # the published partition did not change

    code, _, err = encode(seqcodec, tiny_model_dir, data["clean"][0], out, "--run-date", DATE)
    assert code == 0, err
    assert hidden(out) == [os.readlink(part)]  # the next successful publish removed the failed run's directory


def test_output_that_is_not_a_partition_is_refused(seqcodec, tiny_model_dir, data, tmp_path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    code, _, err = encode(seqcodec, tiny_model_dir, data["clean"][0], precious)
    assert code == 2 and "not a seqcodec partition" in one_line(err[err.index("seqcodec: error:"):])
    assert os.listdir(precious) == ["notes.txt"] and hidden(tmp_path) == []  # nothing created, not even a lease

    dated = tmp_path / "codes"
    (dated / f"dt={DATE}").mkdir(parents=True)
    (dated / f"dt={DATE}" / SUCCESS).touch()
    code, _, err = encode(seqcodec, tiny_model_dir, data["clean"][0], dated)
    assert code == 2 and "holds dated partitions" in one_line(err[err.index("seqcodec: error:"):])
    assert (dated / f"dt={DATE}" / SUCCESS).exists()


def test_killed_run_leaves_the_previous_partition_and_publishes_nothing(seqcodec, tiny_model_dir, data, tmp_path):
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    path, valid, _ = data["clean"]
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", DATE)
    assert code == 0, err
    before = snapshot(part)

    # A long run: 3000 rows, one model call per row, killed once it reports encoding progress.
    big, _, _ = token_file(tmp_path / "big.parquet", 3000, seed=3, row_group_size=100)
    log = tmp_path / "job.log"
    # Killed, the run cannot remove Beam's temp directory for its pipeline: it goes to tmp_path, not /tmp.
    env = {**os.environ, "SEQCODEC_PROGRESS_SECONDS": "0.2", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    argv = [sys.executable, "-m", "seqcodec.pipeline.cli", "encode", "--input", str(big), "--output", str(out),
            "--model-dir", str(tiny_model_dir), "--run-date", DATE, "--batch-size", "1",
            "--max-batch-rows", "100"]  # 30 tables (small row groups merge up to this): progress between them
    with open(log, "wb") as stderr:
        job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 150
        while "progress:" not in log.read_text() or len(hidden(out)) < 3:  # the committed run, the lease, its own
            assert job.poll() is None, f"the job ended before it could be killed:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no progress line in time:\n{log.read_text()}"
            time.sleep(0.1)
        job.send_signal(signal.SIGKILL)
    finally:
        job.kill()
        job.wait(30)
    assert job.returncode == -signal.SIGKILL
    # the in-process DirectRunner's one worker knows the total: rows of it, percentage, time left
    assert re.search(r"progress: \d+ of 3000 rows encoded \(\d+\.\d%\) in \d+s \(\d+ rows/s\), about \d+s left",
                     log.read_text())

    assert snapshot(part) == before  # same files, same bytes
    killed = [name for name in hidden(out) if name != os.readlink(part)]
    assert killed == [f".dt={DATE}.lease", killed[1]] and killed[1].startswith(f".dt={DATE}.run-")
    assert not any(p.name == SUCCESS for p in (out / killed[1]).rglob("*"))
    assert visible(out) == [f"dt={DATE}"]

    # Its lease names a process of this host that has ended: the rerun takes it over.
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", DATE, "--num-shards", 2)
    assert code == 0, err
    assert "taking over" in err and "it has ended or its lease expired" in err
    assert hidden(out) == [os.readlink(part)]  # the killed run's directory was cleaned up, never published
    assert ids(part / "codes") == valid


def test_pipeline_failure_exit_4_keeps_the_previous_partition(seqcodec, tiny_model_dir, data, tmp_path):
    out = tmp_path / "codes"
    path = data["clean"][0]
    code, _, err = encode(seqcodec, tiny_model_dir, path, out, "--run-date", DATE)
    assert code == 0, err
    before = snapshot(out / f"dt={DATE}")

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "encoder.keras").write_bytes(b"not a keras file")  # the manifest reads fine; workers fail
    code, _, err = encode(seqcodec, broken, path, out, "--run-date", DATE)
    assert code == 4
    assert "the pipeline failed, nothing was published" in one_line(err[err.index("seqcodec: error:"):])
    assert snapshot(out / f"dt={DATE}") == before
