"""The whole job on gs://: a GCS emulator (gcp-storage-emulator, in memory) on a free loopback port.

Beam's own GCS filesystem (apache-beam[gcp]) reaches it through ``STORAGE_EMULATOR_HOST``, and
``--no_auth`` makes the launcher and the job connect without credentials at once. Inputs, the model
directory and the output are all gs:// paths. The server is started and stopped here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_seqcodec, token_files
from helpers_beam import child_env, free_port, stop_process_group, wait_for_port
from helpers_commit import committed_ids, crash_after_each_step, staged_run

DATE = "2026-11-26"
BUCKET = "nightly"


class GCS:
    """A running emulator: a storage client to put and look at objects."""

    def __init__(self, host: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.client = storage.Client(project="test", credentials=AnonymousCredentials())
        self.bucket = self.client.create_bucket(BUCKET)

    def put_file(self, local, key: str) -> str:
        self.bucket.blob(key).upload_from_filename(str(local))
        return f"gs://{BUCKET}/{key}"

    def objects(self, prefix: str) -> dict[str, bytes]:
        return {b.name[len(prefix):].lstrip("/"): b.download_as_bytes()
                for b in self.client.list_blobs(BUCKET, prefix=prefix)}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    home = tmp_path_factory.mktemp("gcs-server")
    port = free_port()
    log = home / "emulator.log"
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    with open(log, "wb") as handle:
        server = subprocess.Popen([emulator, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                                  stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=child_env(home), start_new_session=True)
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, server, log, timeout=60)
        yield GCS(os.environ["STORAGE_EMULATOR_HOST"])
    finally:
        stop_process_group(server)
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


@pytest.fixture(scope="module")
def inputs(gcs, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs-inputs")
    token_files(root, {"a.parquet": range(0, 120), "b.parquet": range(1000, 1080)}, seed=41, row_group_size=40)
    for path in sorted(tiny_model_dir.iterdir()):
        gcs.put_file(path, f"models/tiny/{path.name}")
    return {"a": (gcs.put_file(root / "a.parquet", "tokens/a.parquet"), list(range(0, 120))),
            "b": (gcs.put_file(root / "b.parquet", "tokens/b.parquet"), list(range(1000, 1080))),
            "model": f"gs://{BUCKET}/models/tiny"}


def argv(inputs, source: str, output: str, *extra) -> list[str]:
    return [str(a) for a in ("--input", source, "--output", output, "--model-dir", inputs["model"],
                             "--run-date", DATE, "--no_auth", "--project", "test", *extra)]


def test_dated_run_and_rerun_on_gs_connect_at_once_and_commit(gcs, inputs):
    output = f"gs://{BUCKET}/codes"
    code, _, err = run_seqcodec(["encode", *argv(inputs, inputs["a"][0], output)])
    assert code == 0, err
    assert "credentials" not in err.lower()  # --no_auth: no look-up, no retries
    assert committed_ids(f"{output}/dt={DATE}") == inputs["a"][1]
    record = json.loads(gcs.objects(f"codes/dt={DATE}/_SUCCESS")[""])
    assert record["run_dir"] == f".dt={DATE}.run-{record['run_id']}" and record["rows"] == 120

    code, _, err = run_seqcodec(["encode", *argv(inputs, inputs["b"][0], output, "--num-shards", "2")])
    assert code == 0, err
    assert f"replacing run {record['run_id']} (120 rows)" in err
    assert committed_ids(f"{output}/dt={DATE}") == inputs["b"][1]
    decoded = f"gs://{BUCKET}/decoded"
    code, _, err = run_seqcodec(["decode", "--input", f"{output}/dt={DATE}/codes", "--output", decoded,
                                 "--model-dir", inputs["model"], "--no_auth", "--project", "test"])
    assert code == 0, err
    assert committed_ids(decoded, "decoded") == inputs["b"][1]


def test_bad_file_on_gs_is_one_line_and_writes_nothing(gcs, inputs, tmp_path):
    bad = tmp_path / "c.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    gcs.put_file(bad, "tokens-bad/c.parquet")
    code, _, err = run_seqcodec(["encode", *argv(inputs, f"gs://{BUCKET}/tokens-bad/*.parquet", f"gs://{BUCKET}/bad")])
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"seqcodec: error: gs://{BUCKET}/tokens-bad/c.parquet: not a readable Parquet file")
    assert gcs.objects("bad") == {}


def test_a_crash_after_any_step_of_the_commit_on_gs_is_completed_by_a_retry(gcs, inputs, monkeypatch):
    output = f"gs://{BUCKET}/crash"
    code, _, err = run_seqcodec(["encode", *argv(inputs, inputs["a"][0], output)])
    assert code == 0, err
    steps = crash_after_each_step(
        monkeypatch, lambda name: staged_run(monkeypatch, argv(inputs, inputs[name][0], output)),
        f"{output}/dt={DATE}", {"a": inputs["a"][1], "b": inputs["b"][1]}, current="a")
    assert steps >= 3
    shards = [k for k in gcs.objects("crash") if k.endswith(".parquet") and "/codes/" in k]
    assert shards and all(pq.read_table(pa.BufferReader(gcs.objects(f"crash/{k}")[""])).num_rows for k in shards)
