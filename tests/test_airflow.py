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
from helpers_progress import run_showing_stderr

from seqcodec.transforms.partition import SUCCESS

ROOT = Path(__file__).resolve().parent.parent
DATE = "2026-11-26"
ROWS = 3000


@pytest.fixture(scope="module")
def airflow_bin(pytestconfig: pytest.Config) -> Path:
    """The Airflow virtualenv's bin/ (installed on first use: minutes; then reused).

    The install script's progress lines (start, and done with the time it took) reach the terminal
    at once, so a first `run_tests.sh` is not silent for minutes.
    """
    started = time.monotonic()
    run = run_showing_stderr(pytestconfig, ["bash", str(ROOT / "deploy" / "airflow" / "ensure_venv.sh")],
                             timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    venv = Path(run.stdout.strip().splitlines()[-1])
    assert venv.resolve() != (ROOT / ".venv").resolve()
    print(f"airflow venv ready in {time.monotonic() - started:.0f}s: {venv}")
    return venv / "bin"


def test_install_progress_reaches_the_terminal_through_pytest_capture(tmp_path):
    """A test session (captured output, no -s) shows a subprocess's stderr lines as the fixture above does."""
    (tmp_path / "test_inner.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from helpers_progress import run_showing_stderr\n"
        "def test_step(pytestconfig):\n"
        "    run = run_showing_stderr(pytestconfig, ['bash', '-c', 'echo start >&2; echo /venv; echo done in 0s >&2'],"
        " timeout=60)\n"
        "    assert (run.returncode, run.stdout, run.stderr) == (0, '/venv\\n', 'start\\ndone in 0s\\n')\n"
        "    print('captured, not shown')\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "start\ndone in 0s\n" in run.stderr and "captured, not shown" not in run.stdout + run.stderr


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
