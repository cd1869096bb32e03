"""One dataset, three runners, the same codes and errors.

(a) the default DirectRunner, in memory, in this process;
(b) the DirectRunner with --direct_running_mode=multi_processing --direct_num_workers=2 (a separate
    driver process whose SDK workers are processes too);
(c) a real portable runner: Beam's local job service and an external worker pool, each a separate
    process on a free port, the job submitted with --runner PortableRunner --environment_type EXTERNAL.

Every process we start gets a fresh HOME: Beam caches anything it downloads (the Prism binary) under
~/.apache_beam, so an empty HOME afterwards shows that no download was attempted.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from apache_beam.options.pipeline_options import WorkerOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
from conftest import random_sequences, root_logging_restored, run_seqcodec
from helpers_beam import (
    ATOL,
    BAD_ROWS,
    EXPECTED_REASON_COUNTS,
    MAX_LEN,
    REPO,
    VOCAB,
    child_env,
    codes_by_id,
    error_rows,
    free_port,
    mixed_rows,
    start_encode_subprocess,
    stop_process_group,
    summary,
    wait_for_port,
    write_mixed,
    write_table,
)

from seqcodec.model.loader import load
from seqcodec.pipeline import encode
from seqcodec.pipeline.options import make_pipeline
from seqcodec.transforms.partition import SUCCESS, SUMMARY

ROWS = mixed_rows(n_valid=30, seed=8)
EXTRA = [s.tolist() for s in random_sequences(60, VOCAB, MAX_LEN, seed=12)]
N_VALID = sum(r[2] is None for r in ROWS) + len(EXTRA)
COUNTERS = ("rows_read", "rows_valid", "rows_encoded")  # counted by the pipeline itself, so on every runner
JOB_TIMEOUT = 300  # seconds, per subprocess job
DATE = "2026-11-26"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two files, several row groups each, every bad-row reason included."""
    root = tmp_path_factory.mktemp("runners")
    (root / "in").mkdir()
    write_mixed(root / "in" / "a.parquet", ROWS, row_group_size=10)
    write_table(root / "in" / "b.parquet", range(1000, 1000 + len(EXTRA)), EXTRA, row_group_size=15)
    return root


def job_args(dataset, out, model_dir) -> list:
    return ["--input", dataset / "in" / "*.parquet", "--output", out, "--model-dir", model_dir, "--batch-size", 8,
            "--max-error-rate", 1]  # rows with every rejection reason, on purpose


def assert_same_output(out, reference):
    ids, lengths, codes = codes_by_id(out)
    want_ids, want_lengths, want = codes_by_id(reference)
    assert ids == want_ids
    assert np.array_equal(lengths, want_lengths)
    assert np.abs(codes - want).max() <= ATOL
    assert error_rows(out) == error_rows(reference)
    got, ref = summary(out), summary(reference)
    for key in ("rows_read", "rows_encoded", "rows_rejected", "rejected_by_reason", "model_fingerprint"):
        assert got[key] == ref[key], key
    assert {k: got["counters"].get(k) for k in COUNTERS} == {k: ref["counters"].get(k) for k in COUNTERS}


def test_direct_runner_is_fnapi_runner_without_prism():
    """pipeline/options.py hands the DirectRunner's own engine to the Pipeline, so Beam never picks Prism."""
    for args in ([], ["--runner", "DirectRunner"], ["--runner=direct"],
                 ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]):
        assert isinstance(make_pipeline(args).runner, FnApiRunner), args
    assert not isinstance(make_pipeline(["--runner", "PortableRunner"]).runner, FnApiRunner)


def test_workers_log_warnings_and_the_jobs_own_lines_unless_told_otherwise():
    worker = make_pipeline([]).options.view_as(WorkerOptions)
    assert (worker.default_sdk_harness_log_level, worker.sdk_harness_log_level_overrides) == (
        "WARNING", {"seqcodec": "INFO"})
    worker = make_pipeline(["--default_sdk_harness_log_level=DEBUG",
                            '--sdk_harness_log_level_overrides={"seqcodec": "DEBUG", "grpc": "ERROR"}'],
                           ).options.view_as(WorkerOptions)
    assert (worker.default_sdk_harness_log_level, worker.sdk_harness_log_level_overrides) == (
        "DEBUG", {"seqcodec": "DEBUG", "grpc": "ERROR"})


def test_in_memory_direct_runner(runs, tiny_model_dir):
    in_memory = runs["in-memory"]
    s = summary(in_memory)
    assert (s["rows_read"], s["rows_encoded"], s["rows_rejected"]) == (len(ROWS) + len(EXTRA), N_VALID, len(BAD_ROWS))
    assert s["rejected_by_reason"] == EXPECTED_REASON_COUNTS
    assert s["runner"] == "DirectRunner"
    valid = {i: t for i, t, reason in ROWS if reason is None} | {1000 + k: t for k, t in enumerate(EXTRA)}
    ids, _, codes = codes_by_id(in_memory)
    assert ids == sorted(valid)
    assert np.abs(codes - load(tiny_model_dir).encode([valid[i] for i in ids])).max() <= ATOL
    assert {k: s["counters"][k] for k in COUNTERS} == {
        "rows_read": len(ROWS) + len(EXTRA), "rows_valid": N_VALID, "rows_encoded": N_VALID,
    }


def test_multi_processing_direct_runner(runs):
    run = runs["multi-processing"]
    assert run["returncode"] == 0, run["log"][-4000:]
    # two SDK worker processes really ran: each logs its start-up, on its own stderr ("Python sdk harness
    # starting") or, once an import has set the root logger to WARNING (apache-beam[gcp] does), relayed
    # through the driver as the one warning every worker gives at start-up
    started = run["log"].count("Python sdk harness starting") or run["log"].count("No semi_persistent_directory")
    assert started == 2, run["log"][-4000:]
    # the workers' own progress lines reach the launcher's log, readable; Beam's INFO chatter does not
    assert re.search(r"INFO worker: progress: \d+ rows encoded by this worker in \d+s", run["log"]), run["log"][-4000:]
    assert "Worker: severity" not in run["log"] and "INFO:apache_beam" not in run["log"]
    assert "Logging handler created" not in run["log"]
    assert_same_output(run["out"], runs["in-memory"])
    assert not (run["home"] / ".apache_beam").exists(), "Beam tried to fetch Prism"


def test_portable_runner(runs, portable_services):
    run = runs["portable"]
    logs = {name: path.read_text() for name, path in portable_services["logs"].items()}
    assert run["returncode"] == 0, run["log"][-4000:] + "".join(f"\n--- {n}\n{t[-2000:]}" for n, t in logs.items())
    assert_same_output(run["out"], runs["in-memory"])
    assert "Running job" in logs["job-service"]
    # the SDK harness was started by the external worker pool, not by the job service or the driver
    assert "Starting worker with command" in logs["worker-pool"]
    assert all(p.poll() is None for p in portable_services["processes"].values()), "a service died during the job"
    for home in (run["home"], portable_services["home"]):
        assert not (home / ".apache_beam").exists(), "something was downloaded for the portable path"


# -- --no-wait on the portable runner: the job publishes by itself, after the launcher is gone -------------


def portable_args(services) -> list:
    return ["--runner", "PortableRunner", "--job_endpoint", services["job_endpoint"],
            "--environment_type", "EXTERNAL", "--environment_config", services["pool"], "--no-wait"]


def wait_for(predicate, what: str, logs=()) -> None:
    deadline = time.monotonic() + JOB_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {JOB_TIMEOUT}s" + "".join(f"\n--- {p}\n{p.read_text()[-3000:]}"
                                                                              for p in logs))
        time.sleep(0.5)


def staged_summary(partition: Path) -> dict | None:
    """The summary.json in the run directory of ``partition`` (its hidden sibling), once it is there."""
    for path in partition.parent.glob(f".{partition.name}.run-*/summary.json"):
        try:
            return json.loads(path.read_text())
        except ValueError:  # caught while the job writes it
            return None
    return None


def launch_no_wait(args: list, services, tmp_path: Path, request) -> tuple[float, str]:
    """Run the launcher with --no-wait to its end; (when it exited, its output)."""
    home = tmp_path / "home"
    home.mkdir()
    log = tmp_path / "launcher.log"
    process = start_encode_subprocess([*args, *portable_args(services)], home, log)
    request.addfinalizer(lambda: stop_process_group(process))
    assert process.wait(timeout=JOB_TIMEOUT) == 0, log.read_text()[-3000:]
    return time.time(), log.read_text()


def test_portable_no_wait_publishes_once_after_the_launcher_exits(dataset, tiny_model_dir, portable_services, runs,
                                                                  tmp_path, request):
    out = tmp_path / "out"
    exited, log = launch_no_wait([*job_args(dataset, out, tiny_model_dir), "--run-date", DATE], portable_services,
                                 tmp_path, request)
    assert "submitted job " in log, log
    part = out / f"dt={DATE}"
    wait_for(lambda: (part / SUCCESS).exists(), "the partition's _SUCCESS", portable_services["logs"].values())
    assert (part / SUCCESS).stat().st_mtime >= exited - 0.01  # published by the job, after the launcher had gone
    s = summary(part)
    assert s["status"] == "published" and json.loads((part / SUCCESS).read_text())["run_id"] == s["run_id"]
    assert s["runner"] == "PortableRunner"
    assert_same_output(part, runs["in-memory"])  # every row once: no duplicate, nothing missing
    assert sorted(os.listdir(out)) == [os.readlink(part), f"dt={DATE}"]  # published once, the lease released


def test_portable_no_wait_failed_gate_publishes_nothing_and_says_why(dataset, tiny_model_dir, portable_services,
                                                                     tmp_path, request):
    out = tmp_path / "out"
    launch_no_wait([*job_args(dataset, out, tiny_model_dir), "--run-date", DATE, "--max-error-rate", "0"],
                   portable_services, tmp_path, request)
    part = out / f"dt={DATE}"
    wait_for(lambda: staged_summary(part), "the staging summary.json", portable_services["logs"].values())
    s = staged_summary(part)
    assert (s["status"], s["exit_code"]) == ("not published", 3)
    assert s["reason"] == (f"{len(BAD_ROWS)} of {len(ROWS) + len(EXTRA)} rows rejected "
                           f"({len(BAD_ROWS) / (len(ROWS) + len(EXTRA)):.2%}), more than --max-error-rate 0 allows")
    assert not part.exists() and not list(out.rglob(SUCCESS))


def test_portable_no_wait_failed_row_accounting_publishes_nothing_and_says_why(tiny_model_dir, portable_services,
                                                                               tmp_path):
    """The input grows after the launcher counted its rows (footers): the job's rows no longer add up."""
    source = tmp_path / "in.parquet"
    write_table(source, range(20), [s.tolist() for s in random_sequences(20, VOCAB, MAX_LEN, seed=3)])
    out = tmp_path / "out"
    argv = [str(a) for a in ["--input", source, "--output", out, "--model-dir", tiny_model_dir,
                             *portable_args(portable_services)]]
    with root_logging_restored():
        built = encode.build(argv)
        write_table(source, range(25), [s.tolist() for s in random_sequences(25, VOCAB, MAX_LEN, seed=3)])
        assert built.launch() == 0
    wait_for(lambda: staged_summary(out), "the staging summary.json", portable_services["logs"].values())
    s = staged_summary(out)
    assert (s["status"], s["exit_code"]) == ("not published", 4)
    assert s["reason"].startswith("row accounting failed: read 20 (the job read 25), encoded 25 + rejected 0")
    assert not list(out.rglob(SUCCESS)) and not (out / SUMMARY).exists()


# -- the services and the runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def portable_services(tmp_path_factory, request):
    """A local job service and an external worker pool, real processes on free ports (``ready()`` waits for them)."""
    root = tmp_path_factory.mktemp("portable")
    home = root / "home"
    home.mkdir()
    job_port, pool_port = free_port(), free_port()
    while pool_port == job_port:
        pool_port = free_port()
    commands = {
        "job-service": (["apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)], job_port),
        "worker-pool": (["apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)], pool_port),
    }
    processes, logs = {}, {}
    for name, (command, _) in commands.items():
        logs[name] = root / f"{name}.log"
        with open(logs[name], "wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", *command], cwd=REPO, env=child_env(home), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        request.addfinalizer(lambda p=processes[name]: stop_process_group(p))

    def ready() -> None:
        for name, (_, port) in commands.items():
            wait_for_port(port, processes[name], logs[name])

    return {"job_endpoint": f"localhost:{job_port}", "pool": f"localhost:{pool_port}", "logs": logs, "home": home,
            "processes": processes, "ready": ready}


@pytest.fixture(scope="module")
def runs(dataset, tiny_model_dir, portable_services, tmp_path_factory, request):
    """The three runs, overlapped to save time: the two subprocess jobs run while the in-memory one does."""
    root = tmp_path_factory.mktemp("runs")
    extra = {
        "multi-processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
        "portable": ["--runner", "PortableRunner", "--job_endpoint", portable_services["job_endpoint"],
                     "--environment_type", "EXTERNAL", "--environment_config", portable_services["pool"]],
    }
    jobs = {}

    def start(name):
        home = root / f"{name}-home"
        home.mkdir()
        out = root / name / "out"
        out.parent.mkdir()
        process = start_encode_subprocess([*job_args(dataset, out, tiny_model_dir), *extra[name]], home,
                                          root / f"{name}.log", SEQCODEC_PROGRESS_SECONDS="0")  # every batch
        request.addfinalizer(lambda: stop_process_group(process))
        jobs[name] = {"process": process, "out": out, "home": home, "started": time.monotonic()}

    start("multi-processing")
    in_memory = root / "in-memory" / "out"
    code, _, err = run_seqcodec(["encode", *job_args(dataset, in_memory, tiny_model_dir)])
    assert code == 0, err
    portable_services["ready"]()
    start("portable")
    results = {"in-memory": in_memory}
    for name, job in jobs.items():
        try:
            job["process"].wait(timeout=max(1.0, JOB_TIMEOUT - (time.monotonic() - job["started"])))
        except subprocess.TimeoutExpired:
            stop_process_group(job["process"])
        results[name] = {"returncode": job["process"].returncode, "out": job["out"], "home": job["home"],
                         "log": (root / f"{name}.log").read_text()}
    return results


def test_portable_summary_names_its_runner(runs):
    if runs["portable"]["returncode"] != 0:  # a real failure, not the expected one
        pytest.fail("the portable run failed: " + runs["portable"]["log"][-2000:])
    assert summary(runs["portable"]["out"])["runner"] == "PortableRunner"
