"""Helpers shared by the Beam job tests (test_validate, test_encode_job, test_runners).

Plain functions only (no fixtures): a mixed token file that hits every bad-row reason, Parquet
writers for any id type, readers for a published output directory, and subprocess plumbing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import INT32_LISTS, TINY, random_sequences

REPO = Path(__file__).resolve().parents[1]
VOCAB, MAX_LEN = TINY["vocab_size"], TINY["max_length"]
CODE_SIZE = TINY["hidden_size"] + 1
ATOL = 1e-5
INT64 = pa.int64()

# (id, tokens, expected reason or None for a valid row). Rows that match several reasons show the
# order of the checks: a row gets the first reason of REASONS that applies.
BAD_ROWS: list[tuple[int | None, list | None, str]] = [
    (None, [4, 5], "null_id"),
    (None, None, "null_id"),  # null id wins over null tokens
    (101, None, "null_tokens"),
    (102, [], "empty_tokens"),
    (103, [1, None, 2], "null_token"),
    (104, [VOCAB, None], "null_token"),  # a null element wins over an out-of-range id
    (105, [2, -1, 3], "token_out_of_range"),
    (106, [VOCAB - 1, VOCAB], "token_out_of_range"),
    (107, [99] * (MAX_LEN + 1), "token_out_of_range"),  # out of range wins over too long
    (108, [1] * (MAX_LEN + 1), "too_long"),
]
EXPECTED_DETAILS = {
    105: f"token id -1 is outside [0, {VOCAB})",
    106: f"token id {VOCAB} is outside [0, {VOCAB})",
    107: f"token id 99 is outside [0, {VOCAB})",
    108: f"{MAX_LEN + 1} tokens, the model's max_length is {MAX_LEN}",
}
EXPECTED_REASON_COUNTS = {
    "empty_tokens": 1, "null_id": 2, "null_token": 2, "null_tokens": 1, "token_out_of_range": 3, "too_long": 1,
}


def mixed_rows(n_valid: int = 30, seed: int = 5) -> list[tuple[int | None, list | None, str | None]]:
    """Valid rows (ids 0..n_valid-1, edge lengths 1 and MAX_LEN and edge ids 0 and VOCAB-1 included)
    interleaved with every kind of bad row."""
    valid = [s.tolist() for s in random_sequences(n_valid - 2, VOCAB, MAX_LEN, seed)]
    valid += [[0] * MAX_LEN, [VOCAB - 1]]
    rows: list[tuple[int | None, list | None, str | None]] = [(i, t, None) for i, t in enumerate(valid)]
    for k, bad in enumerate(BAD_ROWS):  # spread the bad rows over the file (and its row groups)
        rows.insert(3 * k + 1, bad)
    return rows


def expected_reason(row_id, tokens, too_long: str = "reject") -> str | None:
    """The reason a row is rejected, worked out in plain Python (the spec of transforms/validate.py)."""
    if row_id is None:
        return "null_id"
    if tokens is None:
        return "null_tokens"
    if len(tokens) == 0:
        return "empty_tokens"
    if any(t is None for t in tokens):
        return "null_token"
    if any(t < 0 or t >= VOCAB for t in tokens):
        return "token_out_of_range"
    if too_long == "reject" and len(tokens) > MAX_LEN:
        return "too_long"
    return None


def write_table(
    path: str | os.PathLike,
    ids: Sequence,
    token_lists: Sequence,
    *,
    id_type: pa.DataType = INT64,
    tokens_type: pa.DataType = INT32_LISTS,
    row_group_size: int | None = None,
    extra_columns: dict[str, pa.Array] | None = None,
) -> Path:
    """A real Parquet file with ``id`` of ``id_type`` and ``tokens`` of ``tokens_type`` (+ extra columns)."""
    columns = {"id": pa.array(list(ids), type=id_type), "tokens": pa.array(list(token_lists), type=tokens_type)}
    columns.update(extra_columns or {})
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return Path(path)


def write_mixed(path: str | os.PathLike, rows, row_group_size: int | None = 8, id_type=INT64) -> Path:
    return write_table(path, [r[0] for r in rows], [r[1] for r in rows], id_type=id_type,
                       row_group_size=row_group_size)


# -- reading a published output directory -----------------------------------------------------------


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def read_folder(folder: Path) -> pa.Table:
    """All shards of ``folder`` as one table (each shard read on its own, so no dataset inference)."""
    files = shards(folder)
    assert files, f"no Parquet shard in {folder}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def sort_by_id(table: pa.Table) -> pa.Table:
    return table.sort_by([("id", "ascending")])


def codes_by_id(out: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """(ids, lengths, codes as an (N, H+1) float array) of a published run, sorted by id."""
    table = sort_by_id(read_folder(out / "codes"))
    codes = np.asarray(table.column("code").combine_chunks().flatten().to_numpy(), dtype=np.float64)
    return table.column("id").to_pylist(), table.column("length").to_numpy(), codes.reshape(table.num_rows, -1)


def error_rows(out: Path) -> list[tuple]:
    """(id, reason, detail, tokens) of a published run's errors, in a stable order (null ids first)."""
    rows = read_folder(out / "errors").to_pylist()
    key = [(r["id"] is not None, r["id"] if r["id"] is not None else 0, r["reason"], str(r["tokens"])) for r in rows]
    return [(r["id"], r["reason"], r["detail"], r["tokens"]) for _, r in sorted(zip(key, rows, strict=True))]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def beam_counters(log: str) -> dict[str, int]:
    """The Beam counters that a waiting launcher logs after the job (``beam counters: {...}``)."""
    return json.loads(re.search(r"beam counters: (\{.*\})", log).group(1))


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and directory under ``root`` (hidden ones too) -> sha256 of its bytes ("dir" for folders)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- subprocesses ---------------------------------------------------------------------------------------


def child_env(home: Path) -> dict[str, str]:
    """Environment for processes we start: this interpreter's bin first on PATH (Beam's worker pool starts
    ``python`` from PATH, as in an activated virtualenv), and a fresh HOME so any download Beam attempts
    (Prism keeps its binary in ~/.apache_beam/cache) leaves a trace we can check."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["HOME"] = str(home)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def run_encode_subprocess(args: Sequence, home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m seqcodec.pipeline.encode ARGS`` in a separate process (killed after ``timeout`` seconds)."""
    return subprocess.run(
        [sys.executable, "-m", "seqcodec.pipeline.encode", *map(str, args)],
        cwd=REPO, env=child_env(home), capture_output=True, text=True, timeout=timeout,
    )


def start_encode_subprocess(args: Sequence, home: Path, log: Path, **env: str) -> subprocess.Popen:
    """Start ``python -m seqcodec.pipeline.encode ARGS`` in its own session (output to ``log``) and return it."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "seqcodec.pipeline.encode", *map(str, args)], cwd=REPO,
            env={**child_env(home), **env},
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process we started with ``start_new_session=True``, then anything left in its process group
    (e.g. SDK workers a worker pool started)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Return once localhost:port accepts connections; AssertionError (with the log) if the process dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening on {port}:\n"
                                 + log.read_text()[-3000:])
        try:
            with socket.create_connection(("localhost", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listening on localhost:{port} after {timeout}s:\n" + log.read_text()[-3000:])
