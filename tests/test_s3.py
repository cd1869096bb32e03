"""The whole job on real object storage: an S3 server (moto, server mode) on a free loopback port.

Inputs, the model directory and the output are all s3:// paths, reached through Beam's own S3
filesystem (apache-beam[aws]) with Beam's standard options (--s3_endpoint_url, --s3_access_key_id,
...), which the launcher's own checks (listing, footers, manifest) honour as well as the workers.
Real jobs: in-process on the DirectRunner, and as separate processes (multi-process workers, a
SIGKILLed run). The server is started and stopped here; nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, run_seqcodec, token_files, write_tokens_parquet
from helpers_beam import REPO, child_env, free_port, stop_process_group, wait_for_port
from helpers_commit import at_once, committed_ids, crash_after_each_step, staged_run

from seqcodec.pipeline import finalize
from seqcodec.pipeline.options import use_filesystem_options
from seqcodec.transforms.partition import Partition, read_versioned, write_if

DATE = "2026-11-26"
BUCKET = "nightly"
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true"}  # never ask a cloud metadata service for credentials


class S3:
    """A running moto S3 server: its Beam options and a boto3 client to look at what the job wrote."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1")
        self.beam_args = [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                          "--s3_secret_access_key=testing", "--s3_region_name=us-east-1", "--s3_verify=false"]

    def put_file(self, local: Path, key: str) -> str:
        self.client.upload_file(str(local), BUCKET, key)
        return f"s3://{BUCKET}/{key}"

    def put_tree(self, local: Path, prefix: str) -> str:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.put_file(path, f"{prefix}/{path.relative_to(local)}")
        return f"s3://{BUCKET}/{prefix}"

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under ``prefix`` (key relative to it -> bytes)."""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                body = self.client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
                out[item["Key"][len(prefix) :].lstrip("/")] = body
        return out

    def ids(self, prefix: str) -> list[int]:
        """All ids in the Parquet objects under ``prefix``, sorted, duplicates kept."""
        out: list[int] = []
        for key, body in self.objects(prefix).items():
            if key.endswith(".parquet"):
                out += pq.read_table(pa.BufferReader(body), columns=["id"]).column("id").to_pylist()
        return sorted(out)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    home = tmp_path_factory.mktemp("s3-server")
    port = free_port()
    log = home / "moto.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**child_env(home), **KEYS}, start_new_session=True)
    try:
        wait_for_port(port, server, log, timeout=60)
        store = S3(f"http://127.0.0.1:{port}")
        store.client.create_bucket(Bucket=BUCKET)
        saved = {k: os.environ.get(k) for k in KEYS}
        os.environ.update(KEYS)
        yield store
    finally:
        stop_process_group(server)
        for key, value in locals().get("saved", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def inputs(s3, tiny_model_dir, tmp_path_factory):
    """Token files (two for the date, one big one for the killed run) and the model, uploaded to S3."""
    root = tmp_path_factory.mktemp("s3-inputs")
    token_files(root, {"a.parquet": range(0, 60), "b.parquet": range(60, 120)}, seed=21, row_group_size=20)
    big = random_sequences(20000, 13, 12, seed=22)
    write_tokens_parquet(root / "big.parquet", range(20000), big, row_group_size=100)
    for name in ("a", "b"):
        s3.put_file(root / f"{name}.parquet", f"tokens/dt={DATE}/{name}.parquet")
    return {
        "tokens": f"s3://{BUCKET}/tokens/dt={DATE}/*.parquet",
        "big": s3.put_file(root / "big.parquet", "tokens-big/big.parquet"),
        "model": s3.put_tree(tiny_model_dir, "models/tiny"),
        "ids": list(range(120)),
    }


def encode_args(s3, inputs, output: str, *extra) -> list:
    return ["encode", "--input", inputs["tokens"], "--output", output, "--model-dir", inputs["model"],
            "--run-date", DATE, *s3.beam_args, *extra]


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("seqcodec: error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def start_job(argv: list, home: Path, log: Path, **env: str) -> subprocess.Popen:
    """``python -m seqcodec.pipeline.cli ARGV`` as a new user runs it: its own process and session."""
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "seqcodec.pipeline.cli", *map(str, argv)], cwd=REPO,
                                env={**child_env(home), **KEYS, **env}, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture(scope="module")
def published(s3, inputs):
    """A dated run published to s3://nightly/codes/dt=DATE in three shards (in-process, DirectRunner)."""
    code, _, err = run_seqcodec(encode_args(s3, inputs, f"s3://{BUCKET}/codes", "--num-shards", "3"))
    assert code == 0, err
    return f"codes/dt={DATE}"


def commit_record(s3, partition: str) -> dict:
    return json.loads(s3.objects(f"{partition}/_SUCCESS")[""])


def test_dated_run_publishes_on_s3(s3, inputs, published):
    assert set(s3.objects(published)) == {"_SUCCESS"}  # the commit record; the files stay where the run wrote them
    record = commit_record(s3, published)
    run_id, run_dir = record["run_id"], record["run_dir"]
    assert run_dir == f".dt={DATE}.run-{run_id}" and record["job"] == "encode" and record["rows"] == 120
    objects = s3.objects(f"codes/{run_dir}")
    assert sorted(objects) == sorted(record["files"])  # no _SUCCESS inside: only the record commits
    assert sorted(k for k in objects if k.startswith("codes/")) == [
        f"codes/part-{run_id}-0000{i}-of-00003.parquet" for i in range(3)]
    summary = json.loads(objects["summary.json"])
    assert summary["run_id"] == run_id and sorted(summary["files"]) == sorted(record["files"])
    assert committed_ids(f"s3://{BUCKET}/{published}") == inputs["ids"]
    assert sorted({key.split("/", 1)[0] for key in s3.objects("codes")}) == [run_dir, f"dt={DATE}"]  # no lease left


def test_decode_and_report_read_only_a_published_partition(s3, inputs, published):
    decode = ["decode", "--input", f"s3://{BUCKET}/{published}/codes/*.parquet", "--output",
              f"s3://{BUCKET}/decoded", "--model-dir", inputs["model"], "--run-date", DATE, *s3.beam_args]
    report = ["report", f"s3://{BUCKET}/{published}", "--out", f"s3://{BUCKET}/report", *s3.beam_args]
    # An object beside the record (left by hand, or by another tool) is not the committed run's: not read.
    stray = f"{published}/codes/part-00007-of-00008.parquet"
    s3.client.copy_object(Bucket=BUCKET, Key=stray, CopySource={"Bucket": BUCKET, "Key": f"tokens/dt={DATE}/a.parquet"})
    try:
        code, _, err = run_seqcodec(decode)
        assert code == 0, err
        assert committed_ids(f"s3://{BUCKET}/decoded/dt={DATE}", "decoded") == inputs["ids"]
    finally:
        s3.client.delete_object(Bucket=BUCKET, Key=stray)
    code, _, err = run_seqcodec(report)
    assert code == 0, err
    assert set(s3.objects("report")) == {"report.png", "report.html"}

    # Without _SUCCESS (never committed, or deleted by hand) both refuse, in one line.
    success = s3.objects(f"{published}/_SUCCESS")[""]
    s3.client.delete_object(Bucket=BUCKET, Key=f"{published}/_SUCCESS")
    try:
        code, _, err = run_seqcodec(decode)
        assert code == 2 and "is not committed (no _SUCCESS)" in one_line(err)
        code, _, err = run_seqcodec(report)
        assert code == 2 and "not published (no _SUCCESS)" in one_line(err)
    finally:
        s3.client.put_object(Bucket=BUCKET, Key=f"{published}/_SUCCESS", Body=success)


def test_a_crash_after_any_step_of_the_commit_on_s3_is_completed_by_a_retry(s3, inputs, monkeypatch, tmp_path):
    """The object-store commit: a retried finalize after a crash at any point leaves one run whole, never a mix."""
    seqs = random_sequences(40, 13, 12, seed=23)
    write_tokens_parquet(tmp_path / "c.parquet", range(500, 540), seqs, row_group_size=20)
    other = s3.put_file(tmp_path / "c.parquet", "tokens-crash/c.parquet")
    output = f"s3://{BUCKET}/crash"

    def argv(source: str) -> list[str]:
        return [str(a) for a in ("--input", source, "--output", output, "--model-dir", inputs["model"],
                                 "--run-date", DATE, *s3.beam_args)]

    code, _, err = run_seqcodec(["encode", *argv(inputs["tokens"])])
    assert code == 0, err
    sources = {"first": inputs["tokens"], "other": other}
    steps = crash_after_each_step(monkeypatch, lambda name: staged_run(monkeypatch, argv(sources[name])),
                                  f"{output}/dt={DATE}", {"first": inputs["ids"], "other": list(range(500, 540))},
                                  current="first")
    assert steps >= 3  # the decision, the record, the lease (and the clean-up)


def test_a_second_run_of_a_date_on_s3_waits_for_the_first(s3, inputs):
    """Run A holds the lease of dt=D (this process, alive): run B exits 75 and writes nothing; then B runs."""
    output = f"s3://{BUCKET}/fenced"
    holder = Partition(f"{output}/dt={DATE}")
    holder.take_lease(pid_bound=True)
    code, _, err = run_seqcodec(encode_args(s3, inputs, output))
    assert code == 75 and f"is being written by run {holder.run_id}" in one_line(err)
    assert set(s3.objects("fenced")) == {f".dt={DATE}.lease"}
    holder.release_lease()
    code, _, err = run_seqcodec(encode_args(s3, inputs, output))
    assert code == 0, err
    assert committed_ids(f"{output}/dt={DATE}") == inputs["ids"]


def test_killed_run_changes_nothing_and_a_rerun_with_other_shards_and_workers_replaces_all(
        s3, inputs, published, tmp_path):
    before = s3.objects(published)
    # A long run (20,000 rows) of the same date, killed once it reports progress or has staged files.
    output = f"s3://{BUCKET}/codes"
    argv = ["encode", "--input", inputs["big"], "--output", output, "--model-dir", inputs["model"], "--run-date",
            DATE, "--batch-size", "1", *s3.beam_args]
    log = tmp_path / "killed.log"
    job = start_job(argv, tmp_path, log, SEQCODEC_PROGRESS_SECONDS="0.2")
    try:
        deadline = time.monotonic() + 300
        while "progress" not in log.read_text() and not s3.client.list_objects_v2(
                Bucket=BUCKET, Prefix="codes/.dt=").get("KeyCount"):  # progress, or its first staged files
            assert job.poll() is None, f"the job ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no progress line in time:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        os.killpg(job.pid, signal.SIGKILL)
        assert job.wait(timeout=30) == -signal.SIGKILL
    finally:
        stop_process_group(job)
    assert s3.objects(published) == before  # same objects, same bytes: _SUCCESS still names the old run
    assert not any(key.endswith("_SUCCESS") for key in s3.objects("codes/.dt="))

    # The rerun: a separate launcher, two worker processes (they get the S3 options from the job), one shard.
    log = tmp_path / "rerun.log"
    job = start_job(encode_args(s3, inputs, output, "--num-shards", "1", "--direct_running_mode=multi_processing",
                                "--direct_num_workers=2"), tmp_path, log)
    try:
        assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        stop_process_group(job)
    record = commit_record(s3, published)
    assert record["run_id"] != json.loads(before["_SUCCESS"])["run_id"]
    assert [f for f in record["files"] if f.startswith("codes/")] == [
        f"codes/part-{record['run_id']}-00000-of-00001.parquet"]
    assert committed_ids(f"s3://{BUCKET}/{published}") == inputs["ids"]  # no duplicate, no stale shard
    # the killed run's files are gone; the replaced run stays readable for --grace-seconds
    assert sorted({key.split("/", 1)[0] for key in s3.objects("codes")}) == sorted(
        [record["run_dir"], json.loads(before["_SUCCESS"])["run_dir"], f"dt={DATE}"])


def test_bad_file_on_s3_is_one_line_and_writes_nothing(s3, inputs, tmp_path):
    bad = tmp_path / "c.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    s3.put_file(bad, "tokens-bad/c.parquet")
    s3.client.copy_object(Bucket=BUCKET, Key="tokens-bad/a.parquet",
                          CopySource={"Bucket": BUCKET, "Key": f"tokens/dt={DATE}/a.parquet"})
    argv = ["encode", "--input", f"s3://{BUCKET}/tokens-bad/*.parquet", "--output", f"s3://{BUCKET}/bad",
            "--model-dir", inputs["model"], "--run-date", DATE, *s3.beam_args]
    code, _, err = run_seqcodec(argv)
    assert code == 2
    assert f"s3://{BUCKET}/tokens-bad/c.parquet: not a readable Parquet file" in one_line(err)
    assert s3.objects("bad") == {}


def test_the_lease_and_the_commit_record_are_conditional_writes_on_s3(s3, inputs):
    """S3 has If-None-Match / If-Match: of two writers that read the same state, only the first writes."""
    path = f"s3://{BUCKET}/conditional/.dt={DATE}.lease"
    use_filesystem_options(s3.beam_args)  # what the launcher does first: this process's S3 options
    assert write_if(path, "first", None) is True
    assert write_if(path, "second", None) is False  # it exists now: a second creator loses
    text, version = read_versioned(path)
    assert text == "first" and version
    assert write_if(path, "third", '"not-the-etag"') is False  # changed since it was read: refused
    assert write_if(path, "third", version) is True and read_versioned(path)[0] == "third"


def test_finalize_twice_at_once_on_s3_commits_once(s3, inputs, monkeypatch):
    """Two attempts of one run's finalize at the same moment: both end published, the record is written once."""
    output = f"s3://{BUCKET}/twice"
    argv = [str(a) for a in ("--input", inputs["tokens"], "--output", output, "--model-dir", inputs["model"],
                             "--run-date", DATE, *s3.beam_args)]
    side = staged_run(monkeypatch, argv)
    results, errors = at_once(finalize.finalize, None, **side)
    assert not errors and [r["status"] for r in results] == ["published", "published"], (errors, results)
    assert committed_ids(f"{output}/dt={DATE}") == inputs["ids"]
    assert f".dt={DATE}.lease" not in s3.objects("twice")
