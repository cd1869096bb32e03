"""Launch recipes in deploy/: each one run, or parsed by the real command-line parsers, here.

cron: the wrapper runs real jobs (success and failure, in parallel) and keeps their exit codes.
Airflow: the DAG's operator arguments are turned into the command the Beam provider runs and fed
to `pipeline.encode.parser()` and Beam's PipelineOptions (Airflow itself is not installed here).
Dataflow / Flink / Spark: deploy/launch.sh's command lines and the flex-template parameters go
through the same parsers; the --setup_file sdist is built the way Beam builds it, and installs.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import write_tokens_parquet

from seqcodec.pipeline.encode import parser
from seqcodec.pipeline.outputs import SUCCESS

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DATE = "2026-11-26"
PACKAGES = ("seqcodec", "model", "transforms", "pipeline")


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_accepted(argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """Parse a `seqcodec encode` argument list as the job does; every leftover must be a Beam option.

    Returns (seqcodec's namespace, Beam's options as a dict).
    """
    args, beam_args = parser().parse_known_args(argv)
    beam = PipelineOptions(beam_args).get_all_options(retain_unknown_options=False)
    for arg in beam_args:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            assert name in beam, f"{arg}: neither a seqcodec nor a Beam option"
    return args, beam


# -- cron -----------------------------------------------------------------------------------------


def wrapper_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "SEQCODEC_BIN": str(bin_dir / "seqcodec"),
        "SEQCODEC_ENV_FILE": str(tmp_path / "no-such.env"),
        "SEQCODEC_LOG_DIR": str(tmp_path / "logs"),
        **extra,
    }


def test_cron_wrapper_logs_to_dated_file_and_keeps_exit_codes(tiny_model_dir, tmp_path):
    ids = list(range(100))
    good = write_tokens_parquet(tmp_path / "good.parquet", ids, [[1, 2, 3]] * 100)
    bad = write_tokens_parquet(tmp_path / "bad.parquet", ids, [[1, 2, 3]] * 90 + [[99]] * 10)
    wrapper = DEPLOY / "cron" / "seqcodec-nightly.sh"
    runs = {
        "ok": ("2026-11-25", good, tmp_path / "out-ok"),
        "rejects": ("2026-11-26", bad, tmp_path / "out-rejects"),
    }
    jobs = {
        name: subprocess.Popen(
            [str(wrapper)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=wrapper_env(tmp_path, RUN_DATE=date, SEQCODEC_INPUT=str(path), SEQCODEC_OUTPUT=str(out),
                            SEQCODEC_MODEL_DIR=str(tiny_model_dir), SEQCODEC_MAX_ERROR_RATE="0.05"),
        )
        for name, (date, path, out) in runs.items()
    }
    done = {name: (*job.communicate(timeout=240), job.returncode) for name, job in jobs.items()}

    out, err, code = done["ok"]
    assert code == 0, err
    assert err == "" and out == ""  # cron mails nothing when all is well
    log = (tmp_path / "logs" / "seqcodec-encode-2026-11-25.log").read_text()
    assert "start run_date=2026-11-25" in log and "done: 100 rows read" in log and log.endswith("exit=0\n")
    assert (tmp_path / "out-ok" / "dt=2026-11-25" / SUCCESS).exists()

    out, err, code = done["rejects"]
    assert code == 3
    assert len(err.splitlines()) == 1
    assert err.startswith("seqcodec-nightly 2026-11-26: exit 3: seqcodec: error: 10 of 100 rows rejected")
    log = (tmp_path / "logs" / "seqcodec-encode-2026-11-26.log").read_text()
    assert "seqcodec: error: 10 of 100 rows rejected" in log and log.endswith("exit=3\n")
    assert not (tmp_path / "out-rejects" / "dt=2026-11-26").exists()


def test_cron_wrapper_does_not_overlap_a_running_job(tmp_path):
    output = str(tmp_path / "out")
    logs = tmp_path / "logs"
    logs.mkdir()
    lock = logs / f".seqcodec-encode-{hashlib.sha256(output.encode()).hexdigest()[:12]}.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a still-running wrapper holds
        run = subprocess.run(
            [str(DEPLOY / "cron" / "seqcodec-nightly.sh")], capture_output=True, text=True, timeout=60,
            env=wrapper_env(tmp_path, RUN_DATE=DATE, SEQCODEC_INPUT="x", SEQCODEC_OUTPUT=output,
                            SEQCODEC_MODEL_DIR="m"),
        )
    assert run.returncode == 75 and "not started" in run.stderr
    assert not (tmp_path / "out").exists()


def test_crontab_runs_the_wrapper_nightly():
    lines = [line for line in (DEPLOY / "cron" / "seqcodec.crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    entries = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 1
    minute, hour, dom, month, dow, command = entries[0].split(None, 5)
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and (dom, month, dow) == ("*", "*", "*")
    assert command.endswith("/deploy/cron/seqcodec-nightly.sh") and "%" not in command
    assert os.access(DEPLOY / "cron" / "seqcodec-nightly.sh", os.X_OK)


# -- Dataflow, Flink, Spark, direct: deploy/launch.sh ------------------------------------------------


@pytest.mark.parametrize("runner, beam_runner", [("direct", "DirectRunner"), ("dataflow", "DataflowRunner"),
                                                 ("flink", "FlinkRunner"), ("spark", "PortableRunner")])
def test_launch_command_lines_are_accepted(runner, beam_runner):
    env = {**os.environ, "SEQCODEC_DRY_RUN": "1", "RUN_DATE": DATE, "SEQCODEC_INPUT": "gs://b/tokens/dt={ds}/*.parquet",
           "SEQCODEC_OUTPUT": "gs://b/codes", "SEQCODEC_MODEL_DIR": "gs://b/models/v3", "GCP_PROJECT": "proj",
           "GCP_REGION": "europe-west1", "GCS_TEMP": "gs://b/tmp", "FLINK_MASTER": "flink:8081",
           "SPARK_JOB_ENDPOINT": "spark-jobserver:8099", "BEAM_ENVIRONMENT_CONFIG": "registry/seqcodec-sdk:1"}
    run = subprocess.run([str(DEPLOY / "launch.sh"), runner, "--num-shards", "4"], capture_output=True, text=True,
                         env=env, timeout=30, check=True)
    argv = run.stdout.splitlines()
    assert argv[0].endswith("seqcodec") and argv[1] == "encode"
    args, beam = check_accepted(argv[2:])
    assert (args.input, args.output, args.run_date) == (f"gs://b/tokens/dt={DATE}/*.parquet", "gs://b/codes", DATE)
    assert args.max_error_rate == 0.01 and args.num_shards == 4
    assert beam["runner"] == beam_runner
    if runner == "dataflow":
        assert beam["setup_file"] == str(ROOT / "setup.py") and beam["temp_location"] == "gs://b/tmp"
    if runner in ("flink", "spark"):
        assert beam["environment_type"] == "DOCKER" and beam["environment_config"] == "registry/seqcodec-sdk:1"


def test_setup_file_sdist_builds_with_the_packages_and_installs(tmp_path):
    """What --setup_file does: Beam's stager builds an sdist that workers pip-install."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "MANIFEST.in", "requirements.txt", "pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = ("import sys; from apache_beam.runners.portability.stager import Stager; "
             "print(Stager._build_setup_package(sys.argv[1], sys.argv[2]))")
    run = subprocess.run([sys.executable, "-c", build, str(src / "setup.py"), str(tmp_path / "dist")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    sdist = Path(run.stdout.strip().splitlines()[-1])
    with tarfile.open(sdist) as tar:
        members = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {str(p.relative_to(src)) for package in PACKAGES for p in (src / package).rglob("*.py")}
    assert wanted <= members, sorted(wanted - members)
    assert "requirements.txt" in members  # setup.py reads it on the worker

    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheels"), str(sdist)],
                           capture_output=True, text=True, timeout=180)
    assert wheel.returncode == 0, wheel.stderr
    wheels = list((tmp_path / "wheels").glob("seqcodec-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist() if not name.startswith("seqcodec-")}
        assert "seqcodec/model/codec.py" in whl.namelist() and "seqcodec/pipeline/encode.py" in whl.namelist()
    assert tops == {"seqcodec"}, tops  # nothing installed as a top-level model/pipeline/transforms


def test_flex_template_parameters_are_accepted():
    metadata = json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())
    samples = {"input": f"gs://b/tokens/dt={DATE}/*.parquet", "output": "gs://b/codes", "model_dir": "gs://b/models/v3",
               "run_date": DATE, "max_error_rate": "0.01", "num_shards": "8", "batch_size": "1024"}
    params = {p["name"]: p for p in metadata["parameters"]}
    assert metadata["name"] and set(params) == set(samples)
    for name, param in params.items():
        assert param["label"] and param["helpText"]
        for regex in param.get("regexes", []):
            assert re.match(regex, samples[name]), (name, regex)
    launcher = load_module(DEPLOY / "dataflow" / "launch.py", "flex_launch")
    # Dataflow passes each parameter as --name=value, plus its own options (e.g. the temp location).
    argv = launcher.seqcodec_argv([f"--{name}={samples[name]}" for name in params] + ["--temp_location=gs://b/tmp"])
    args, beam = check_accepted(argv)
    assert (args.model_dir, args.run_date, args.max_error_rate, args.num_shards) == ("gs://b/models/v3", DATE, 0.01, 8)
    assert beam["temp_location"] == "gs://b/tmp"
    required = {a.dest for a in parser()._actions if a.required}
    assert required <= {name for name, p in params.items() if not p.get("isOptional")}


# -- Airflow ---------------------------------------------------------------------------------------


def beam_options_to_args(options: dict) -> list[str]:
    """apache-airflow-providers-apache-beam 6.x, hooks/beam.py ``beam_options_to_args``, for Python pipelines."""
    args: list[str] = []
    for attr, value in (options or {}).items():
        if isinstance(value, bool):
            if value:
                args.append(f"--{attr}")
        elif isinstance(value, list):
            args.extend([f"--{attr}={v}" for v in value])
        elif isinstance(value, dict):
            args.append(f"--{attr}={json.dumps(value)}")
        elif value is None:
            continue
        else:
            args.append(f"--{attr}={value}")
    return args


def provider_command(kwargs: dict[str, Any], context: dict[str, str]) -> list[str]:
    """The command BeamRunPythonPipelineOperator.execute + BeamHook.start_python_pipeline run (non-Dataflow).

    Templated fields get ``{{ ds }}`` rendered; the operator adds an airflow-version label, snake-cases
    option names (a no-op for lower-case names) and the hook turns labels into key=value items.
    """
    def render(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: context[m.group(1)], value)
        if isinstance(value, dict):
            return {k: render(v) for k, v in value.items()}
        if isinstance(value, list):
            return [render(v) for v in value]
        return value

    options = render(copy.deepcopy(kwargs["pipeline_options"]))
    options.setdefault("labels", {}).update({"airflow-version": "v3-3-2"})
    options = {re.sub(r"(?!^)([A-Z]+)", r"_\1", key).lower(): value for key, value in options.items()}
    options["labels"] = [f"{key}={value}" for key, value in options["labels"].items()]
    return [kwargs["py_interpreter"], *kwargs.get("py_options", []), render(kwargs["py_file"]),
            f"--runner={render(kwargs.get('runner', 'DirectRunner'))}", *beam_options_to_args(options)]


def test_airflow_dag_arguments_are_accepted_by_the_job():
    dag_module = load_module(DEPLOY / "airflow" / "seqcodec_nightly.py", "seqcodec_nightly_dag")
    if importlib.util.find_spec("airflow") is None:
        assert dag_module.dag is None  # the DAG file imports cleanly without Airflow
    kwargs = dag_module.encode_task_kwargs()
    assert kwargs["pipeline_options"]["run-date"] == "{{ ds }}"
    cmd = provider_command(kwargs, {"ds": DATE})
    assert cmd[1:3] == ["-m", "seqcodec.pipeline.encode"]
    args, beam = check_accepted(cmd[3:])
    assert args.run_date == DATE and f"dt={DATE}" in args.input and args.max_error_rate == 0.01
    assert beam["runner"] == "DirectRunner" and beam["labels"] == ["airflow-version=v3-3-2"]
    assert beam["direct_running_mode"] == "multi_processing" and beam["direct_num_workers"] == 0
