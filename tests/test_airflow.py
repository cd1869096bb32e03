"""The nightly DAG in a real Airflow: `airflow dags test seqcodec_nightly DATE` runs the job and publishes.

Airflow 3.3.2 with the Beam and Google providers lives in its own virtualenv (deploy/airflow/ensure_venv.sh,
pinned in deploy/airflow/requirements.txt, cached under .cache/, never the project's .venv). The DAG
runs seqcodec with this interpreter (SEQCODEC_PYTHON), on a small input, with a standalone SQLite
metadata database in a temporary AIRFLOW_HOME. Nothing is mocked: the provider builds the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, write_tokens_parquet

from seqcodec.transforms.partition import SUCCESS

ROOT = Path(__file__).resolve().parent.parent
DATE = "2026-11-26"
ROWS = 3000


@pytest.fixture(scope="module")
def airflow_bin() -> Path:
    """The Airflow virtualenv's bin/ (installed on first use: minutes; then reused)."""
    started = time.monotonic()
    run = subprocess.run(["bash", str(ROOT / "deploy" / "airflow" / "ensure_venv.sh")], capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    venv = Path(run.stdout.strip().splitlines()[-1])
    assert venv.resolve() != (ROOT / ".venv").resolve()
    print(f"airflow venv ready in {time.monotonic() - started:.0f}s: {venv}")
    return venv / "bin"


def test_dags_test_runs_the_nightly_encode_and_publishes(airflow_bin, tiny_model_dir, tmp_path):
    seqs = random_sequences(ROWS, 13, 12, seed=31)
    (tmp_path / "tokens" / f"dt={DATE}").mkdir(parents=True)
    write_tokens_parquet(tmp_path / "tokens" / f"dt={DATE}" / "a.parquet", range(ROWS), seqs, row_group_size=500)
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "airflow" / "seqcodec_nightly.py", home / "dags")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV"))},
        "PATH": f"{airflow_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "SEQCODEC_PYTHON": sys.executable,
        "SEQCODEC_INPUT": str(tmp_path / "tokens" / "dt={ds}" / "*.parquet"),
        "SEQCODEC_OUTPUT": str(tmp_path / "codes"),
        "SEQCODEC_MODEL_DIR": str(tiny_model_dir),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "SEQCODEC_PROGRESS_SECONDS": "0",  # a progress line per batch: this job is seconds long
    }
    migrate = subprocess.run([str(airflow_bin / "airflow"), "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]

    started = time.monotonic()
    run = subprocess.run([str(airflow_bin / "airflow"), "dags", "test", "seqcodec_nightly", DATE], env=env,
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    print(f"airflow dags test: {time.monotonic() - started:.0f}s, {len(log.splitlines())} log lines")

    part = tmp_path / "codes" / f"dt={DATE}"
    assert (part / SUCCESS).exists()
    ids = sorted(i for shard in (part / "codes").glob("*.parquet")
                 for i in pq.read_table(shard, columns=["id"]).column("id").to_pylist())
    assert ids == list(range(ROWS))
    assert sorted(os.listdir(tmp_path / "codes")) == [os.readlink(part), f"dt={DATE}"]  # its run, no lease left

    # The task log carries the job's own lines (the provider's command, the start, the workers' progress
    # relayed through the launcher, the summary) ...
    assert "-m seqcodec.pipeline.encode" in log and f"--run-date={DATE}" in log
    assert f"encoding {ROWS} rows" in log
    assert re.search(r"INFO worker: progress: \d+ rows encoded by this worker in \d+s", log), log[-5000:]
    assert f"done: {ROWS} rows read" in log and "Process exited with return code: 0" in log
    # ... and not Beam's per-bundle INFO chatter from the SDK workers.
    chatter = [line for line in log.splitlines()
               if "INFO:apache_beam" in line or "Worker: severity" in line or "Logging handler created" in line]
    assert not chatter, chatter[:5]
