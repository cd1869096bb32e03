"""Launch recipes in deploy/: each one run, or parsed by the real command-line parsers, here.

cron: the wrapper runs real jobs (success and failure, in parallel) and keeps their exit codes.
Airflow: the DAG's operator arguments are turned into the command the Beam provider runs and fed
to `pipeline.encode.parser()` and Beam's PipelineOptions (Airflow itself is not installed here).
Dataflow / Flink / Spark: deploy/launch.sh's command lines and the flex-template parameters go
through the same parsers; the --setup_file sdist is built the way Beam builds it, and installs.
"""

from __future__ import annotations

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
import time
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from conftest import write_tokens_parquet

from seqcodec.pipeline.encode import parser
from seqcodec.pipeline.options import DEFAULT_MAX_ERROR_RATE
from seqcodec.transforms.partition import SUCCESS

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


def test_cron_wrapper_keeps_the_jobs_default_error_gate(tmp_path):
    """Without SEQCODEC_MAX_ERROR_RATE the nightly command leaves --max-error-rate to the job (one default)."""
    env = {k: v for k, v in wrapper_env(tmp_path).items() if k != "SEQCODEC_MAX_ERROR_RATE"}
    env.update({"SEQCODEC_DRY_RUN": "1", "RUN_DATE": DATE, "SEQCODEC_INPUT": "/data/tokens/dt={ds}/*.parquet",
                "SEQCODEC_OUTPUT": str(tmp_path / "codes"), "SEQCODEC_MODEL_DIR": "/models/v3"})
    run = subprocess.run([str(DEPLOY / "cron" / "seqcodec-nightly.sh")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "logs" / f"seqcodec-encode-{DATE}.log").read_text().splitlines()
    argv = [line for line in log if not line.startswith("===")]  # the dry run's command, one argument a line
    assert argv[1] == "encode"
    args, _ = check_accepted(argv[2:])
    assert args.run_date == DATE and args.max_error_rate == DEFAULT_MAX_ERROR_RATE


def test_crontab_runs_the_wrapper_nightly():
    lines = [line for line in (DEPLOY / "cron" / "seqcodec.crontab").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    entries = [line for line in lines if not re.match(r"^[A-Z_]+=", line)]
    assert len(entries) == 1
    minute, hour, dom, month, dow, command = entries[0].split(None, 5)
    assert 0 <= int(minute) < 60 and 0 <= int(hour) < 24 and (dom, month, dow) == ("*", "*", "*")
    assert command.endswith("/deploy/cron/seqcodec-nightly.sh") and "%" not in command
    assert os.access(DEPLOY / "cron" / "seqcodec-nightly.sh", os.X_OK)


# -- deploy/install.sh: the install-only command of a production host -----------------------------


def test_install_is_a_quick_no_op_on_an_installed_venv():
    """Run on the virtualenv running these tests: installs (if ever) the first time, then does nothing, at once."""
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):
        pytest.skip("the tests do not run in a virtualenv")
    command = ["bash", str(DEPLOY / "install.sh"), "--extras", "aws,gcp", str(venv)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    started = time.monotonic()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and time.monotonic() - started < 10, again.stderr
    assert again.stderr == f"seqcodec: ready: {os.path.realpath(venv)}/bin/seqcodec\n" and again.stdout == ""


@pytest.mark.parametrize("argv, python, message", [
    (["--extras", "azure"], None, "deploy/install.sh: error: unknown extra 'azure'"),
    (["--bogus"], None, "deploy/install.sh: error: unknown option --bogus"),
    (["VENV", "other"], None, "deploy/install.sh: error: one VENV only"),
    # The machine has only Python 3.11, so a two-line script stands in for another version's interpreter.
    (["VENV"], "3.12", "seqcodec: error: needs Python 3.11 (requirements.txt's pins are checked on it), but "),
    (["VENV"], "missing", "is not a working Python: install python3.11 and set PYTHON=python3.11"),
])
def test_install_refuses_bad_arguments_and_other_pythons_in_one_line(argv, python, message, tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    if python == "missing":
        env["PYTHON"] = str(tmp_path / "no-such-python")
    elif python:
        env["PYTHON"] = str(tmp_path / f"python{python}")
        Path(env["PYTHON"]).write_text(f"#!/bin/sh\necho {python}\n")
        Path(env["PYTHON"]).chmod(0o755)
    argv = [str(venv) if arg == "VENV" else arg for arg in argv]
    run = subprocess.run(["bash", str(DEPLOY / "install.sh"), *argv], capture_output=True, text=True, env=env,
                         timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and message in run.stderr, run.stderr
    assert not venv.exists()  # nothing created


def test_slim_install_runs_the_jobs_without_tensorflow_and_train_says_what_to_install(tmp_path):
    """`deploy/install.sh --slim` (what workers get from `pip install seqcodec`): no TensorFlow, the jobs still run."""
    venv = tmp_path / "slim"
    install = subprocess.run(["bash", str(DEPLOY / "install.sh"), "--slim", str(venv)], capture_output=True,
                             text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    python = venv / "bin" / "python"
    for module in ("tensorflow", "keras"):
        found = subprocess.run([str(python), "-c", f"import importlib.util as u; print(u.find_spec('{module}'))"],
                               capture_output=True, text=True, timeout=60)
        assert found.stdout.strip() == "None", found.stdout  # not installed at all, not merely unused
    sample = ROOT / "data" / "sample" / "words.parquet"
    rows = pq.read_table(sample).slice(0, 2000)
    pq.write_table(rows, tmp_path / "rows.parquet")
    seqcodec = str(venv / "bin" / "seqcodec")
    encode = subprocess.run([seqcodec, "encode", "--input", str(tmp_path / "rows.parquet"), "--model-dir",
                             str(ROOT / "models" / "default"), "--output", str(tmp_path / "out"), "--decode"],
                            capture_output=True, text=True, timeout=300)
    assert encode.returncode == 0, encode.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows_encoded"] == summary["rows_decoded"] == 2000
    train = subprocess.run([seqcodec, "train", "--input", str(tmp_path / "rows.parquet"), "--model-dir",
                            str(tmp_path / "model")], capture_output=True, text=True, timeout=120)
    assert train.returncode == 2 and train.stdout == "", train.stderr[-3000:]
    assert train.stderr.splitlines() == [
        "seqcodec: error: training and networks the numpy engine cannot run need TensorFlow, "
        "which is not installed (a slim install): pip install 'seqcodec[train]'"]
    assert not (tmp_path / "model").exists()


def test_python_version_is_one_everywhere():
    """requirements.txt's pins were checked on one Python: setup.py requires it and ensure_venv.sh checks for it."""
    checked = re.search(r"checked together on Python (\d+)\.(\d+)", (ROOT / "requirements.txt").read_text())
    major, minor = int(checked[1]), int(checked[2])
    assert f'python_requires=">={major}.{minor},<{major}.{minor + 1}"' in (ROOT / "setup.py").read_text()
    assert f"SEQCODEC_PYTHON_VERSION={major}.{minor}\n" in (DEPLOY / "ensure_venv.sh").read_text()
    assert sys.version_info[:2] == (major, minor)


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
    assert args.max_error_rate == DEFAULT_MAX_ERROR_RATE and args.num_shards == 4  # the job's default gate
    assert beam["runner"] == beam_runner
    if runner == "dataflow":
        assert beam["setup_file"] == str(ROOT / "setup.py") and beam["temp_location"] == "gs://b/tmp"
    if runner in ("flink", "spark"):
        assert beam["environment_type"] == "DOCKER" and beam["environment_config"] == "registry/seqcodec-sdk:1"


@pytest.mark.parametrize("runner", ["flink", "spark"])
def test_portable_launch_with_a_setup_file_instead_of_an_image(runner):
    """SEQCODEC_SETUP_FILE alone gives the workers seqcodec (they install its sdist): --setup_file, no image."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEQCODEC_", "BEAM_"))}
    env.update({"SEQCODEC_DRY_RUN": "1", "RUN_DATE": DATE, "SEQCODEC_INPUT": "/shared/tokens/*.parquet",
                "SEQCODEC_OUTPUT": "/shared/codes", "SEQCODEC_MODEL_DIR": "/shared/models/v3",
                "FLINK_MASTER": "flink:8081", "SPARK_JOB_ENDPOINT": "spark-jobserver:8099",
                "SEQCODEC_SETUP_FILE": str(ROOT / "setup.py")})
    run = subprocess.run([str(DEPLOY / "launch.sh"), runner], capture_output=True, text=True, env=env, timeout=30,
                         check=True)
    _, beam = check_accepted(run.stdout.splitlines()[2:])
    assert beam["setup_file"] == str(ROOT / "setup.py") and beam["environment_type"] == "DOCKER"
    assert beam.get("environment_config") is None


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
               "run_date": DATE, "max_error_rate": "0.01", "num_shards": "8", "batch_tokens": "8192",
               "batch_size": "1024"}
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
    assert (args.batch_tokens, args.batch_size) == (8192, 1024)
    assert beam["temp_location"] == "gs://b/tmp"
    assert args.wait is False  # a flex-template launcher must return once the job is submitted
    required = {a.dest for a in parser()._actions if a.required}
    assert required <= {name for name, p in params.items() if not p.get("isOptional")}


def test_flex_template_defaults_are_the_jobs():
    """Each optional parameter documents the job's own default: ``defaultValue`` (also in its help text)
    equals what the job's parser gives it, and a parameter without one has no default in the job either."""
    metadata = json.loads((DEPLOY / "dataflow" / "metadata.json").read_text())
    actions = {a.dest: a for a in parser()._actions}
    for param in metadata["parameters"]:
        action = actions[param["name"]]
        if not param.get("isOptional"):
            continue  # the template requires it (run_date too: a nightly template always names its date)
        if "defaultValue" in param:
            documented = action.type(param["defaultValue"]) if action.type else param["defaultValue"]
            assert documented == action.default, (param["name"], param["defaultValue"], action.default)
            assert f"(default {param['defaultValue']}" in param["helpText"], param
        else:
            assert action.default is None and "(default: no " in param["helpText"], param


# -- Airflow (the real `airflow dags test` is in test_airflow.py) ---------------------------------


def test_airflow_dag_file_imports_without_airflow():
    """The DAG file is plain Python until Airflow is there: its task arguments are readable anywhere."""
    dag_module = load_module(DEPLOY / "airflow" / "seqcodec_nightly.py", "seqcodec_nightly_dag")
    assert dag_module.dag is None
    kwargs = dag_module.encode_task_kwargs()
    assert kwargs["py_file"] == "seqcodec.pipeline.encode" and kwargs["pipeline_options"]["run-date"] == "{{ ds }}"


def dag_command_options(kwargs: dict[str, Any]) -> list[str]:
    """The options the Beam provider puts on the command line: ``--key=value`` for each pipeline option."""
    return [f"--{key}={value}" for key, value in kwargs["pipeline_options"].items()]


@pytest.mark.parametrize("setting, expected", [(None, DEFAULT_MAX_ERROR_RATE), ("0.02", 0.02)])
def test_airflow_dag_error_gate_is_the_jobs_unless_set(setting, expected, monkeypatch):
    monkeypatch.delenv("SEQCODEC_MAX_ERROR_RATE", raising=False)
    if setting is not None:
        monkeypatch.setenv("SEQCODEC_MAX_ERROR_RATE", setting)
    dag_module = load_module(DEPLOY / "airflow" / "seqcodec_nightly.py", "seqcodec_nightly_dag")
    args, beam = check_accepted(dag_command_options(dag_module.encode_task_kwargs(DATE)))
    assert args.run_date == DATE and args.max_error_rate == expected
    assert beam["direct_running_mode"] == "multi_processing"


# -- launch.sh without its settings, the worker image ------------------------------------------------


@pytest.mark.parametrize("argv, env, message", [
    ([], {}, "usage: deploy/launch.sh direct|dataflow|flink|spark"),
    (["yarn"], {}, "unknown runner 'yarn'"),
    (["direct"], {"SEQCODEC_OUTPUT": "/o"}, "set SEQCODEC_INPUT SEQCODEC_MODEL_DIR "),
    (["dataflow"], {"SEQCODEC_INPUT": "i", "SEQCODEC_OUTPUT": "o", "SEQCODEC_MODEL_DIR": "m", "GCP_PROJECT": "p"},
     "set GCP_REGION GCS_TEMP "),
    (["spark"], {"SEQCODEC_INPUT": "i", "SEQCODEC_OUTPUT": "o", "SEQCODEC_MODEL_DIR": "m"}, "set SPARK_JOB_ENDPOINT "),
    # Beam's plain SDK image cannot import seqcodec: an image with it, or a setup file, is required.
    (["flink"], {"SEQCODEC_INPUT": "i", "SEQCODEC_OUTPUT": "o", "SEQCODEC_MODEL_DIR": "m", "FLINK_MASTER": "f:8081"},
     "flink workers need seqcodec: set BEAM_ENVIRONMENT_CONFIG "),
    (["spark"], {"SEQCODEC_INPUT": "i", "SEQCODEC_OUTPUT": "o", "SEQCODEC_MODEL_DIR": "m",
                 "SPARK_JOB_ENDPOINT": "s:8099", "BEAM_ENVIRONMENT_TYPE": "EXTERNAL"}, "spark workers need seqcodec: "),
    (["spark"], {"SEQCODEC_INPUT": "i", "SEQCODEC_OUTPUT": "o", "SEQCODEC_MODEL_DIR": "m",
                 "SPARK_JOB_ENDPOINT": "s:8099", "SEQCODEC_SETUP_FILE": "/no/such/setup.py"},
     "SEQCODEC_SETUP_FILE=/no/such/setup.py: no such file"),
])
def test_launch_without_its_settings_is_one_line_and_exit_2(argv, env, message, tmp_path):
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SEQCODEC_", "GCP_", "GCS_", "FLINK_", "SPARK_", "BEAM_"))}
    run = subprocess.run([str(DEPLOY / "launch.sh"), *argv], capture_output=True, text=True, timeout=30,
                         env={**clean, **env, "SEQCODEC_BIN": str(tmp_path / "must-not-run")})
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith("deploy/launch.sh: error: ")
    assert message in run.stderr
    assert "exit code" in (DEPLOY / "README.md").read_text() and "| 2 |" in (DEPLOY / "README.md").read_text()


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def copy_like_docker(steps: list[tuple[str, str]], context: Path) -> dict[str, str]:
    """Do a Dockerfile's COPY steps from the repository into ``context`` (standing for its WORKDIR).

    Asserts that every source exists and is not excluded by .dockerignore. Returns the absolute path
    in the image of every copied file or directory, mapped to its source in the repository.
    """
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    workdir, in_image = "/", {}
    for word, args in steps:
        if word == "WORKDIR":
            workdir = args
        if word == "COPY":
            *sources, dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert source not in ignored and source.split("/")[0] not in ignored, \
                    f"COPY {source}: excluded by .dockerignore"
                # Docker's rules: a directory's contents go to DEST; files go into DEST/ when it ends with "/".
                name = dest
                if (ROOT / source).is_file() and dest.endswith("/"):
                    name = f"{dest}{Path(source).name}"
                in_image[os.path.normpath(os.path.join(workdir, name))] = source
                target = context / name
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / source, target)
    return in_image


def test_worker_image_dockerfile_copies_what_exists_and_installs_the_package(tmp_path):
    """docker cannot run here: check the Dockerfile against the repo, then do its install step on its COPY set."""
    steps = dockerfile_instructions(DEPLOY / "docker" / "Dockerfile")
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == [f"apache/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{pins['apache-beam']}"]
    assert not any(word in ("ENTRYPOINT", "CMD") for word, _ in steps)  # the SDK image's boot must stay
    context = tmp_path / "context"
    copy_like_docker(steps, context)
    runs = [args for word, args in steps if word == "RUN"]
    assert any('pip install --no-cache-dir ".[aws]"' in run for run in runs), runs
    # The RUN step, minus its dependencies (the base image has Beam; this venv has the rest): the
    # copied files build a package that installs seqcodec and nothing else at the top level.
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "wheels"), str(context)],
                           capture_output=True, text=True, timeout=180)
    assert wheel.returncode == 0, wheel.stderr
    (built,) = (tmp_path / "wheels").glob("seqcodec-*.whl")
    with zipfile.ZipFile(built) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"seqcodec/pipeline/encode.py", "seqcodec/model/codec.py", "seqcodec/transforms/parquet_io.py"} <= set(names)
    assert {n.split("/", 1)[0] for n in names if ".dist-info" not in n} == {"seqcodec"}
    assert f"Requires-Dist: apache-beam[aws]=={pins['apache-beam']}; extra == \"aws\"" in metadata
    assert f"Requires-Dist: apache-beam[gcp]=={pins['apache-beam']}; extra == \"gcp\"" in metadata


# -- Dataflow, as far as it goes offline ------------------------------------------------------------


def test_flex_template_launcher_image_and_readme_commands_name_real_files(tmp_path):
    """docker and gcloud cannot run here: the launcher Dockerfile copies files that exist, its
    FLEX_TEMPLATE_PYTHON_* variables name the copied launch.py and setup.py, and deploy/README.md's
    build and run commands name files of this repository."""
    dockerfile = DEPLOY / "dataflow" / "Dockerfile"
    steps = dockerfile_instructions(dockerfile)
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    assert [args for word, args in steps if word == "FROM"] == [
        f"gcr.io/dataflow-templates-base/python{version}-template-launcher-base"]
    assert not any(word in ("ENTRYPOINT", "CMD") for word, _ in steps)  # the launcher base's entry point stays
    in_image = copy_like_docker(steps, tmp_path / "context")
    env = dict(args.split("=", 1) for word, args in steps if word == "ENV")
    assert in_image[env["FLEX_TEMPLATE_PYTHON_PY_FILE"]] == "deploy/dataflow/launch.py"
    assert in_image[env["FLEX_TEMPLATE_PYTHON_SETUP_FILE"]] == "setup.py"
    for package in PACKAGES:
        assert package in in_image.values(), f"{package} is not copied: launch.py imports seqcodec"
    assert any('pip install --no-cache-dir ".[gcp]"' in args for word, args in steps if word == "RUN")

    readme = (DEPLOY / "README.md").read_text()
    # Each command with its continuation lines (indented by two spaces after a trailing backslash).
    commands = re.findall(r"^(?:docker build|gcloud dataflow flex-template (?:build|run)) .*(?:\n  .*)*", readme,
                          re.MULTILINE)
    assert any(c.startswith("docker build -f deploy/dataflow/Dockerfile ") and c.endswith(" .") for c in commands)
    assert any("flex-template build" in c and "--metadata-file deploy/dataflow/metadata.json" in c for c in commands)
    assert any("flex-template run" in c and "--template-file-gcs-location" in c for c in commands)
    named = {path for command in commands for path in re.findall(r"(?<!\S)(deploy/\S+)", command)}
    assert {"deploy/dataflow/Dockerfile", "deploy/dataflow/metadata.json"} <= named
    for path in named:
        assert (ROOT / path).exists(), f"deploy/README.md names {path}, which does not exist"


def test_dataflow_launch_translates_the_whole_job_into_a_job_request(tiny_model_dir, tmp_path):
    """deploy/launch.sh dataflow's command, built by the job's own code and translated by Beam's DataflowRunner
    into the Dataflow job request, with Beam's --dry_run (nothing submitted, no credentials, no network).

    Needs apache-beam[gcp] (requirements-dev.txt); without it the job stops at once with Beam's
    "Google Cloud Dataflow runner not available, please install apache_beam[gcp]".
    """
    from seqcodec.pipeline.encode import build

    write_tokens_parquet(tmp_path / "a.parquet", range(20), [[1, 2, 3]] * 20)
    env = {**os.environ, "SEQCODEC_DRY_RUN": "1", "RUN_DATE": DATE, "SEQCODEC_INPUT": str(tmp_path / "*.parquet"),
           "SEQCODEC_OUTPUT": str(tmp_path / "codes"), "SEQCODEC_MODEL_DIR": str(tiny_model_dir),
           "GCP_PROJECT": "seqcodec-test", "GCP_REGION": "europe-west1", "GCS_TEMP": "gs://seqcodec-test/tmp"}
    run = subprocess.run([str(DEPLOY / "launch.sh"), "dataflow", "--no-wait", "--dry_run=True", "--no_auth"],
                         capture_output=True, text=True, env=env, timeout=30, check=True)
    argv = run.stdout.splitlines()[2:]
    built = build(argv)
    result = built.pipeline.run()  # what launch() does first; with --dry_run Beam stops before the service
    request = json.loads(result.job.json())
    assert request["name"] == f"seqcodec-encode-{DATE}" and request["type"] == "JOB_TYPE_BATCH"
    assert result.job.google_cloud_options.project == "seqcodec-test"
    assert result.job.root_staging_location.startswith("gs://seqcodec-test/tmp")
    pipeline = result.job.proto_pipeline
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    for step in ("Read", "Encode", "Write codes", "Write errors", "Finalize"):
        assert step in names, sorted(names)  # the whole job, its count-gate-publish stage included
    # Workers run Beam's SDK image of this Python and install the sdist that --setup_file built.
    (environment,) = {e.SerializeToString(): e for e in pipeline.components.environments.values()}.values()
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    image = f"/beam_python{sys.version_info.major}.{sys.version_info.minor}_sdk:{pins['apache-beam']}"
    assert environment.payload.endswith(image.encode()), environment.payload
    staged = {a.role_payload[2:].decode() for a in environment.dependencies}
    assert "workflow.tar.gz" in staged, staged
    assert not (tmp_path / "codes").exists()  # nothing ran, nothing was created
