"""Airflow DAG: the nightly `seqcodec encode` for the run's logical date, through the Apache Beam provider.

Copy this file into the DAGs folder of an Airflow with apache-airflow-providers-apache-beam. The
task runs ``SEQCODEC_PYTHON -m seqcodec.pipeline.encode --runner=... --input=... --run-date={{ ds }} ...``
in a subprocess on the Airflow worker and fails when that exits non-zero (2 bad arguments or input,
3 too many rejects, 4 pipeline failed; the reason is the last ``seqcodec: error:`` line of the task
log). Reruns and retries of a date are safe: they replace ``OUTPUT/dt={{ ds }}`` whole.

Settings come from the environment of the DAG processor and workers (SEQCODEC_* below).

Runners: the job counts its rows, applies the error-rate gate and publishes in its own last stage,
whoever waits for it. The provider waits for the subprocess with DirectRunner, FlinkRunner,
SparkRunner and PortableRunner, so the task fails with the job. With ``runner="DataflowRunner"`` it
stops reading the launcher once the Dataflow job id appears, so the task's success means
"submitted": downstream tasks wait on ``OUTPUT/dt={{ ds }}/_SUCCESS`` (see deploy/README.md).

``encode_task_kwargs`` is plain Python, so tests check it without Airflow installed.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

DAG_ID = "seqcodec_nightly"
SCHEDULE = "30 2 * * *"  # after midnight; {{ ds }} is the start of the data interval: yesterday
SEQCODEC_PYTHON = os.environ.get("SEQCODEC_PYTHON", "/opt/seqcodec/.venv/bin/python")
INPUT = os.environ.get("SEQCODEC_INPUT", "/data/tokens/dt={ds}/*.parquet")  # {ds} = the run date
OUTPUT = os.environ.get("SEQCODEC_OUTPUT", "/data/codes")
MODEL_DIR = os.environ.get("SEQCODEC_MODEL_DIR", "/opt/seqcodec/models/default")
# Unset: the job's own --max-error-rate default (0.05), so there is one default, the job's.
MAX_ERROR_RATE = float(os.environ["SEQCODEC_MAX_ERROR_RATE"]) if os.environ.get("SEQCODEC_MAX_ERROR_RATE") else None
RUNNER = os.environ.get("SEQCODEC_RUNNER", "DirectRunner")


def encode_task_kwargs(run_date: str = "{{ ds }}") -> dict[str, Any]:
    """The BeamRunPythonPipelineOperator arguments of the nightly encode task (templated by Airflow)."""
    options: dict[str, Any] = {
        "input": INPUT.replace("{ds}", run_date),
        "output": OUTPUT,
        "model-dir": MODEL_DIR,
        "run-date": run_date,
    }
    if MAX_ERROR_RATE is not None:
        options["max-error-rate"] = MAX_ERROR_RATE
    if RUNNER == "DirectRunner":
        options.update({"direct_running_mode": "multi_processing", "direct_num_workers": 0})  # every core
    return {
        "task_id": "encode",
        "runner": RUNNER,
        "py_interpreter": SEQCODEC_PYTHON,
        "py_options": ["-m"],
        "py_file": "seqcodec.pipeline.encode",
        "pipeline_options": options,
    }


def build_dag() -> Any:
    try:
        from airflow.sdk import DAG  # Airflow 3
    except ImportError:
        from airflow import DAG  # Airflow 2
    from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator

    with DAG(
        dag_id=DAG_ID,
        schedule=SCHEDULE,
        start_date=datetime(2026, 11, 1),
        catchup=False,
        max_active_runs=1,
        default_args={"retries": 1, "retry_delay": timedelta(minutes=20)},
        tags=["seqcodec"],
        doc_md=__doc__,
    ) as dag:
        BeamRunPythonPipelineOperator(**encode_task_kwargs())
    return dag


try:
    import airflow  # noqa: F401
except ImportError:  # imported by the tests, or anywhere without Airflow
    dag = None
else:
    dag = build_dag()
