"""The `seqcodec` command line: help states defaults, every failure is one line, --version, pipes, directories."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_tokens_parquet

import seqcodec
from seqcodec.model.config import Batching
from seqcodec.pipeline import decode, encode, train
from seqcodec.pipeline.specs import DecodeSpec, EncodeSpec, TableSpec
from seqcodec.transforms.parquet_io import MAX_BATCH_ROWS

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"train": train.parser, "encode": encode.parser, "decode": decode.parser}


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_option_states_its_default(command):
    for action in PARSERS[command]()._actions:
        if action.dest in ("help", "verbose") or action.required or not action.option_strings or action.nargs == 0:
            continue  # flags (store_true/false) are off unless given
        text = action.help or ""
        assert "default" in text or "(0:" in text, f"{command} {action.option_strings[0]}: {text!r}"
        if action.default not in (None, True, False) and "%(default)" in text:
            assert "(default: %(default)" in text or "default: %(default)" in text


def test_time_budget_help_matches_its_default():
    help_text = subprocess.run([sys.executable, "-m", "seqcodec", "train", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert re.search(r"default:\s+600", " ".join(help_text.split()))


@pytest.mark.parametrize("argv", [
    ["train", "--input", "x", "--model-dir", "y", "--no-such-option"],
    ["train", "--model-dir", "y"],
    ["encode", "--input", "x", "--output", "o", "--model-dir", "m", "--batch-size", "many"],
    ["encode", "--input", "x", "--output", "o", "--model-dir", "m", "--too-long", "drop"],
    ["decode", "--output", "o"],
    ["report"],
    ["no-such-command"],
    [],
])
def test_every_usage_mistake_is_one_error_line(argv, seqcodec):
    code, out, err = seqcodec(argv)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("seqcodec: error: ")
    assert "Traceback" not in err and "usage:" not in lines[-1]
    if argv and argv[0] != "no-such-command":
        assert len(lines) == 1, err


def test_unknown_option_for_a_job_is_refused_before_it_runs(tmp_path, tiny_model_dir, seqcodec):
    write_tokens_parquet(tmp_path / "in.parquet", [1], [[1, 2]])
    code, _, err = seqcodec(["encode", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out",
                             "--model-dir", tiny_model_dir, "--too-lng", "truncate"])
    assert code == 2 and err.strip().splitlines()[-1] == (
        "seqcodec: error: unrecognized arguments: --too-lng truncate (neither the job's nor Beam's)")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("command, abbreviated", [
    ("encode", ["--num-shard", "2"]),  # --num-shards: neither taken for it nor handed on to Beam
    ("decode", ["--max-error", "1"]),
    ("train", ["--hidden", "8"]),
    ("report", ["--ou", "elsewhere"]),
])
def test_abbreviated_options_are_unrecognized(command, abbreviated, tmp_path, tiny_model_dir, seqcodec):
    if command == "decode":
        pq.write_table(pa.table({"id": [1], "code": pa.array([[1.0] * 17], pa.list_(pa.float32()))}),
                       tmp_path / "in.parquet")
    else:
        write_tokens_parquet(tmp_path / "in.parquet", [1], [[1, 2]])
    args = {"report": [tmp_path / "run"], "train": ["--input", tmp_path / "in.parquet", "--model-dir", tmp_path / "m"]}
    argv = [command, *args.get(command, ["--input", tmp_path / "in.parquet", "--output", tmp_path / "out",
                                         "--model-dir", tiny_model_dir]), *abbreviated]
    code, out, err = seqcodec(argv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"seqcodec: error: unrecognized arguments: {' '.join(abbreviated)}"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


def test_version(seqcodec):
    code, out, _ = seqcodec(["--version"])
    assert code == 0 and out.strip() == f"seqcodec {seqcodec_version()}"


def seqcodec_version() -> str:
    return seqcodec.__version__ if hasattr(seqcodec, "__version__") else ""


@pytest.mark.parametrize("argv", [["-h"], ["encode", "-h"], ["train", "--help"]])
def test_help_into_a_closed_pipe_is_quiet(argv):
    # `seqcodec -h | head -3`: head exits early; the command must not end in a BrokenPipeError traceback.
    proc = subprocess.run(f"{sys.executable} -m seqcodec {' '.join(argv)} | head -3", shell=True,
                          capture_output=True, text=True, check=True)
    assert len(proc.stdout.splitlines()) == 3
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_missing_columns_are_named_together_with_their_flags(tmp_path, tiny_model_dir, seqcodec):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"key": [1], "seq": [[1, 2]]}), tmp_path / "in.parquet")
    code, _, err = seqcodec(["encode", "--input", tmp_path / "in.parquet", "--output", tmp_path / "out",
                             "--model-dir", tiny_model_dir])
    line = err.strip().splitlines()[-1]
    assert code == 2
    assert "'id' (rename with --id-column)" in line and "'tokens' (rename with --tokens-column)" in line
    assert "key, seq" in line


def test_input_directory_means_its_parquet_files(tmp_path, tiny_model_dir, seqcodec):
    folder = tmp_path / "tokens"
    folder.mkdir()
    write_tokens_parquet(folder / "a.parquet", [1, 2], [[1, 2], [3]])
    write_tokens_parquet(folder / "b.parquet", [3], [[4, 5, 6]])
    (folder / "notes.txt").write_text("not parquet, not read")
    code, _, err = seqcodec(["encode", "--input", folder, "--output", tmp_path / "out", "--model-dir",
                             tiny_model_dir])
    assert code == 0, err
    import json

    assert json.loads((tmp_path / "out" / "summary.json").read_text())["rows_read"] == 3
    # and the job's own output folder reads back as input
    code, _, err = seqcodec(["decode", "--input", tmp_path / "out" / "codes", "--output", tmp_path / "back",
                             "--model-dir", tiny_model_dir])
    assert code == 0, err


def test_ctrl_c_during_a_job_is_exit_130_in_one_line(tmp_path):
    """SIGINT to a real running encode job (a subprocess): exit 130 and one line, not Beam's traceback and exit 4."""
    rng = np.random.default_rng(0)
    rows = 300_000  # the default model encodes 15k-60k rows/s here: still running when interrupted
    lengths = rng.integers(1, 29, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = pa.ListArray.from_arrays(offsets, rng.integers(0, 26, int(offsets[-1])).astype(np.int32))
    pq.write_table(pa.table({"id": np.arange(rows), "tokens": tokens}), tmp_path / "in.parquet")
    job = subprocess.Popen(
        [sys.executable, "-m", "seqcodec.pipeline.cli", "encode", "--input", str(tmp_path / "in.parquet"),
         "--output", str(tmp_path / "out"), "--model-dir", str(REPO / "models" / "default")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        seen = []
        for line in job.stderr:  # the worker's "model ... loaded" line: the pipeline is running
            seen.append(line)
            if " loaded: " in line:
                break
        assert job.poll() is None, "".join(seen)
        time.sleep(0.5)
        job.send_signal(signal.SIGINT)
        _, rest = job.communicate(timeout=60)
    finally:
        job.kill()
    err = "".join(seen) + rest
    assert job.returncode == 130, err
    assert "Traceback" not in err and "seqcodec: error" not in err, err
    # Besides the job's timestamped log lines, one line: the last.
    own = [line for line in err.splitlines() if not re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) ", line)]
    assert own == ["seqcodec: interrupted"] and err.splitlines()[-1] == "seqcodec: interrupted", err
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("scheme, module, extra", [("s3", "boto3", "aws"), ("gs", "google.cloud.storage", "gcp")])
def test_an_object_store_without_its_extra_names_what_to_install(tmp_path, scheme, module, extra):
    """boto3 (or Google's storage client) missing: one line naming the extra, before anything is read or created."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"  # as if it were not installed
              "from seqcodec.pipeline.cli import main\n"
              f"sys.exit(main(['encode', '--input', '{scheme}://bucket/tokens/*.parquet', '--output', "
              f"'{tmp_path}/out', '--model-dir', 'models/default']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"seqcodec: error: {scheme}://bucket/tokens/*.parquet: {scheme}:// paths need {module}, which is not "
        f"installed: pip install 'seqcodec[{extra}]'")
    assert not (tmp_path / "out").exists()


def test_the_jobs_parse_once_into_frozen_specs():
    """Below the parser the jobs see only typed, frozen settings: --table and its options as one TableSpec."""
    args = encode.parser().parse_args(["--input", "in", "--output", "out", "--model-dir", "m", "--decode",
                                       "--batch-tokens", "512", "--beam-width", "3"])
    spec = EncodeSpec.from_args(args)
    assert spec.batching == Batching(512, None, 0, beam_width=3) and spec.max_batch_rows == MAX_BATCH_ROWS
    assert spec.decode and spec.table is None and spec.wait
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.decode = False  # type: ignore[misc]
    args = decode.parser().parse_args(["--table", "ns.codes", "--run-date", "2026-11-26", "--snapshot-id", "7",
                                       "--output", "out", "--model-dir", "m"])
    assert DecodeSpec.from_args(args).table == TableSpec("ns.codes", "default", 7)
