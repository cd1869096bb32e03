"""The one-way commit under stress, on local disk: finalize twice at once, a crash after every step, runs
that overlap, readers midway, and commands that must not replace what they read.

Real jobs on the DirectRunner, real directories. The same crash-and-retry test on an object store
runs against the moto S3 server in test_s3.py (``crash_after_each_step`` is shared).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, write_tokens_parquet
from helpers_commit import at_once, committed_ids, crash_after_each_step, ids_of, staged_run

from seqcodec.pipeline import decode, encode, finalize
from seqcodec.pipeline.options import discard
from seqcodec.transforms.partition import SUCCESS, Partition, PartitionBusy, committed_files

DATE = "2026-11-26"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two inputs with disjoint ids, so a partition's rows say which run wrote them."""
    root = tmp_path_factory.mktemp("commit-data")
    seqs = random_sequences(160, 13, 12, seed=31)
    old = write_tokens_parquet(root / "old.parquet", range(0, 100), seqs[:100], row_group_size=25)
    new = write_tokens_parquet(root / "new.parquet", range(1000, 1060), seqs[100:], row_group_size=20)
    return {"old": (old, list(range(0, 100))), "new": (new, list(range(1000, 1060)))}


def argv(model_dir, input_path, output, *extra) -> list[str]:
    return [str(a) for a in ("--input", input_path, "--output", output, "--model-dir", model_dir,
                             "--run-date", DATE, *extra)]


# -- 1. the same run's finalize twice at once ----------------------------------------------------------


def test_finalize_run_twice_at_once_leaves_the_new_run_whole(tiny_model_dir, data, tmp_path, monkeypatch):
    """Beam may run the finalize bundle twice, overlapping (backup tasks, lost leases): 8 runs, each finalized twice."""
    original = finalize.finalize
    errors: list[BaseException] = []

    def twice(*args, **kwargs):
        results, failed = at_once(original, *args, **kwargs)
        errors.extend(failed)
        return results[0]

    monkeypatch.setattr(finalize, "finalize", twice)
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    for trial in range(8):
        name = ("old", "new")[trial % 2]
        path, want = data[name]
        assert encode.run(argv(tiny_model_dir, path, out)) == 0, f"trial {trial}"
        assert not errors, errors
        # what a plain reader of the folder sees, and what the summary says
        assert sorted(ids_of(sorted(glob.glob(f"{part}/codes/*.parquet")))) == want, f"trial {trial}"
        summary = json.loads((part / "summary.json").read_text())
        assert summary["rows_encoded"] == len(want) and json.loads((part / SUCCESS).read_text())["run_id"] == \
            summary["run_id"]


# -- 2. a crash after every step of the commit, then a retry ---------------------------------------------


def test_a_crash_after_any_step_of_the_commit_is_completed_by_a_retry(tiny_model_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "codes"
    part = str(out / f"dt={DATE}")
    assert encode.run(argv(tiny_model_dir, data["old"][0], out)) == 0
    steps = crash_after_each_step(
        monkeypatch, lambda name: staged_run(monkeypatch, argv(tiny_model_dir, data[name][0], out)),
        part, {name: ids for name, (_, ids) in data.items()},
    )
    assert steps >= 4  # decision, the run's _SUCCESS, the link, the lease (and the clean-up)
    assert ids_of(sorted(glob.glob(f"{part}/codes/*.parquet"))) == committed_ids(part)


# -- 3. runs of one partition that overlap ----------------------------------------------------------------


def test_a_run_started_while_another_holds_the_partition_refuses_and_harms_nothing(tiny_model_dir, data, tmp_path):
    """Run A (long) holds dt=D; run B (short) starts 4 s... later: B exits 75 untouched, A publishes."""
    out = tmp_path / "codes"
    big = tmp_path / "big.parquet"
    write_tokens_parquet(big, range(5000, 17000), random_sequences(12000, 13, 12, seed=33), row_group_size=100)
    log = tmp_path / "a.log"
    env = {**os.environ, "SEQCODEC_PROGRESS_SECONDS": "0.2", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "seqcodec.pipeline.cli", "encode", *argv(tiny_model_dir, big, out),
           "--batch-size", "1", "--max-batch-rows", "100"]
    with open(log, "wb") as stderr:
        job_a = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 150
        while "progress:" not in log.read_text():
            assert job_a.poll() is None, f"run A ended too soon:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no progress from run A in time:\n{log.read_text()}"
            time.sleep(0.1)
        a_dirs = sorted(p.name for p in out.iterdir())
        b_tmp = tmp_path / "b-tmp"  # B's temp directory: Beam makes one for its pipeline, which never runs
        b_tmp.mkdir()
        b = subprocess.run([sys.executable, "-m", "seqcodec.pipeline.cli", "encode",
                            *argv(tiny_model_dir, data["new"][0], out)], capture_output=True, text=True,
                           env={**env, "TMPDIR": str(b_tmp)}, cwd=ROOT, timeout=120)
        assert b.returncode == 75, b.stderr
        line = b.stderr.strip().splitlines()[-1]
        assert line.startswith("seqcodec: error: ") and "is being written by run" in line and "did not start" in line
        assert sorted(p.name for p in out.iterdir()) == a_dirs  # B created and deleted nothing
        assert list(b_tmp.iterdir()) == []
        assert job_a.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if job_a.poll() is None:
            job_a.send_signal(signal.SIGKILL)
            job_a.wait(30)
    assert committed_ids(str(out / f"dt={DATE}")) == list(range(5000, 17000))


def test_a_refused_run_keeps_the_temp_directory_of_a_pipeline_it_was_handed(tiny_model_dir, data, tmp_path):
    """Exit 75 removes Beam's temp directory only of a pipeline the job made: a handed one stays its caller's."""
    holder = encode.build(argv(tiny_model_dir, data["new"][0], tmp_path / "codes"))
    holder.plan.partition.take_lease(pid_bound=True)  # this process, alive: the partition is busy
    handed = beam.Pipeline(runner="DirectRunner")
    refused = encode.build(argv(tiny_model_dir, data["new"][0], tmp_path / "codes"), handed)
    with pytest.raises(PartitionBusy):
        refused.launch()
    assert os.path.isdir(handed.local_tempdir)
    made = encode.build(argv(tiny_model_dir, data["new"][0], tmp_path / "codes"))
    with pytest.raises(PartitionBusy):
        made.launch()
    assert not os.path.exists(made.pipeline.local_tempdir)
    discard(handed)
    discard(holder.pipeline)


def test_a_run_that_lost_its_lease_does_not_commit(tiny_model_dir, data, tmp_path, monkeypatch):
    """A run whose lease was taken over (it looked dead) finds that out before committing, and commits nothing."""
    out = tmp_path / "codes"
    part = str(out / f"dt={DATE}")
    assert encode.run(argv(tiny_model_dir, data["old"][0], out)) == 0
    side = staged_run(monkeypatch, argv(tiny_model_dir, data["new"][0], out))
    lease = Path(side["plan"].partition.lease_path)
    held = json.loads(lease.read_text())
    lease.write_text(json.dumps({**held, "run_id": "20990101T000000.000000Z-0ther0"}))  # another run took over
    summary = finalize.finalize(None, **side)
    assert summary["status"] == "not published" and "no longer holds the lease" in summary["reason"]
    assert committed_ids(part) == data["old"][1]


def test_the_lease_is_taken_over_only_when_its_run_has_ended(tmp_path):
    part = str(tmp_path / f"dt={DATE}")
    first = Partition(part)
    first.take_lease(pid_bound=True)  # this process: alive
    second = Partition(part)
    with pytest.raises(PartitionBusy, match=f"run {first.run_id}"):
        second.take_lease(pid_bound=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held = json.loads(Path(first.lease_path).read_text())
    Path(first.lease_path).write_text(json.dumps({**held, "pid": int(dead.stdout)}))  # its process has ended
    second.take_lease(pid_bound=True)
    assert second.holds_lease() and not first.holds_lease()
    third = Partition(part)
    Path(first.lease_path).write_text(json.dumps({**json.loads(Path(first.lease_path).read_text()),
                                                  "pid_bound": False, "expires": time.time() - 1}))
    third.take_lease(pid_bound=False)  # a detached run's lease counts only until it expires
    assert third.holds_lease()


# -- 4. a reader midway, and what is removed when ---------------------------------------------------------


def test_a_reader_holding_the_old_files_finishes_while_a_new_run_commits(tiny_model_dir, data, tmp_path):
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    assert encode.run(argv(tiny_model_dir, data["old"][0], out)) == 0
    held = [os.path.realpath(p) for p in sorted(glob.glob(f"{part}/codes/*.parquet"))]  # resolved once
    assert committed_files(str(part), "codes") == held
    assert encode.run(argv(tiny_model_dir, data["new"][0], out)) == 0
    assert ids_of(held) == data["old"][1]  # the replaced run stays for --grace-seconds
    assert committed_ids(str(part)) == data["new"][1]
    assert encode.run(argv(tiny_model_dir, data["old"][0], out, "--grace-seconds", "0")) == 0
    assert not any(os.path.exists(p) for p in held)  # past its grace period: removed by a later commit
    assert len([n for n in os.listdir(out) if n.startswith(".")]) == 1  # only the committed run's directory


def test_a_partition_written_before_run_directories_is_replaced_without_a_gap(tiny_model_dir, data, tmp_path):
    """A partition of an earlier version (a real directory, _SUCCESS holding a run id) is kept as a run directory."""
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    (part / "codes").mkdir(parents=True)
    pq.write_table(pq.read_table(data["old"][0]).select(["id"]), part / "codes" / "part-00000-of-00001.parquet")
    (part / "summary.json").write_text(json.dumps({"run_id": "20260101T000000.000000Z-abcdef", "rows_read": 100,
                                                   "rows_encoded": 100, "job": "encode"}))
    (part / SUCCESS).write_text("20260101T000000.000000Z-abcdef")
    held = committed_files(str(part), "codes")
    assert ids_of(held) == data["old"][1]
    assert encode.run(argv(tiny_model_dir, data["new"][0], out)) == 0
    assert os.path.islink(part) and committed_ids(str(part)) == data["new"][1]
    legacy = out / ".dt=2026-11-26.run-20260101T000000.000000Z-abcdef"
    assert ids_of([str(legacy / "codes" / "part-00000-of-00001.parquet")]) == data["old"][1]


# -- 5. commands that must not replace what they read ----------------------------------------------------


def test_decode_into_the_partition_it_reads_is_refused(seqcodec, tiny_model_dir, data, tmp_path):
    out = tmp_path / "codes"
    part = out / f"dt={DATE}"
    assert encode.run(argv(tiny_model_dir, data["old"][0], out)) == 0
    before = {p: Path(p).read_bytes() for p in committed_files(str(part))}
    for output, extra in [(out, ["--run-date", DATE]), (part, []), (part / "decoded", [])]:
        code, _, err = seqcodec(["decode", "--input", part / "codes", "--model-dir", tiny_model_dir,
                                 "--output", output, *extra])
        assert code == 2, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("seqcodec: error: --output") or line.startswith("seqcodec: error: --input"), err
    assert {p: Path(p).read_bytes() for p in committed_files(str(part))} == before
    assert sorted(os.listdir(out)) == [f".dt={DATE}.run-{json.loads((part / SUCCESS).read_text())['run_id']}",
                                       f"dt={DATE}"]


def test_encode_refuses_to_replace_a_decode_partition_and_reads_only_committed_folders(
        seqcodec, tiny_model_dir, data, tmp_path):
    out = tmp_path / "codes"
    assert encode.run(argv(tiny_model_dir, data["old"][0], out)) == 0
    decoded = tmp_path / "decoded"
    assert decode.run(["--input", str(out / f"dt={DATE}" / "codes"), "--model-dir", str(tiny_model_dir),
                       "--output", str(decoded)]) == 0
    code, _, err = seqcodec(["encode", "--input", data["new"][0], "--model-dir", tiny_model_dir, "--output", decoded])
    assert code == 2 and "holds the partition of decode run" in err.strip().splitlines()[-1]

    half = tmp_path / "half"  # a half-copied partition: shards, no _SUCCESS
    (half / "codes").mkdir(parents=True)
    for shard in (out / f"dt={DATE}" / "codes").glob("*.parquet"):
        (half / "codes" / shard.name).write_bytes(shard.read_bytes())
    code, _, err = seqcodec(["decode", "--input", half / "codes", "--model-dir", tiny_model_dir,
                             "--output", tmp_path / "d2"])
    assert code == 2 and "is not committed (no _SUCCESS)" in err.strip().splitlines()[-1]
    code, _, err = seqcodec(["report", half])
    assert code == 2 and "not published (no _SUCCESS)" in err.strip().splitlines()[-1]


def test_a_replaced_run_of_another_date_goes_with_a_later_commit_beside_it(tiny_model_dir, data, tmp_path):
    """A date rerun once keeps its replaced run only for the grace period: the next night's commit removes it."""
    out = tmp_path / "codes"
    for name in ("old", "new"):
        assert encode.run(argv(tiny_model_dir, data[name][0], out)) == 0
    replaced = [n for n in os.listdir(out) if n.startswith(".") and n != os.readlink(out / f"dt={DATE}")]
    assert len(replaced) == 1  # kept: within --grace-seconds
    next_night = [str(a) for a in ("--input", data["old"][0], "--output", out, "--model-dir", tiny_model_dir,
                                   "--run-date", "2026-11-27")]
    assert encode.run(next_night) == 0
    assert (out / replaced[0]).exists()  # still within its grace period
    assert encode.run([*next_night, "--grace-seconds", "0"]) == 0
    assert not (out / replaced[0]).exists()
    assert committed_ids(str(out / f"dt={DATE}")) == data["new"][1]
