#!/usr/bin/env bash
# Launch one nightly `seqcodec encode` run on a chosen Beam runner (the command lines of deploy/README.md).
#
# Usage: deploy/launch.sh RUNNER [more seqcodec or Beam options...]     RUNNER: direct | dataflow | flink | spark
#
# Configuration, from the environment:
#   SEQCODEC_INPUT        input glob; "{ds}" in it becomes the run date        (required)
#   SEQCODEC_OUTPUT       output root; the run publishes OUTPUT/dt=RUN_DATE     (required)
#   SEQCODEC_MODEL_DIR    model directory written by `seqcodec train`            (required)
#   RUN_DATE              YYYY-MM-DD (default: yesterday in TZ, like Airflow's {{ ds }} of a daily run)
#   SEQCODEC_MAX_ERROR_RATE  fail with exit 3 above this rejected fraction (unset: the job's default, 0.05;
#                         1 = no limit)
#   SEQCODEC_BIN          the seqcodec command (default: the repo's .venv/bin/seqcodec)
#   dataflow: GCP_PROJECT, GCP_REGION, GCS_TEMP (gs://bucket/tmp); optional SDK_CONTAINER_IMAGE
#   flink:    FLINK_MASTER (host:8081); optional FLINK_VERSION, FLINK_JOB_SERVER_JAR
#   spark:    SPARK_JOB_ENDPOINT (host:8099 of a running Beam Spark job server)
#   flink/spark: BEAM_ENVIRONMENT_TYPE (default DOCKER) and how workers get seqcodec, one of (required):
#                BEAM_ENVIRONMENT_CONFIG  SDK image with seqcodec installed (deploy/docker/Dockerfile), or
#                                         with EXTERNAL the worker pool's host:port
#                SEQCODEC_SETUP_FILE      this checkout's setup.py: workers pip-install the project at start
#   SEQCODEC_DRY_RUN=1    print the command, one argument per line, instead of running it
# The exit code is the job's (0 published, 2 bad arguments/input, 3 too many rejects, 4 pipeline failed),
# or 2 with one line `deploy/launch.sh: error: ...` when the runner or a required setting is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

fail() {
  echo "deploy/launch.sh: error: $*" >&2
  exit 2
}

# Every missing setting named in one line (bash's ${VAR:?} stops at the first, with exit 1).
require() {
  local name missing=()
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || missing+=("$name")
  done
  if (( ${#missing[@]} )); then
    fail "set ${missing[*]} (see the top of deploy/launch.sh or deploy/README.md)"
  fi
}

runner="${1:-}"
case "$runner" in
  direct) require SEQCODEC_INPUT SEQCODEC_OUTPUT SEQCODEC_MODEL_DIR ;;
  dataflow) require SEQCODEC_INPUT SEQCODEC_OUTPUT SEQCODEC_MODEL_DIR GCP_PROJECT GCP_REGION GCS_TEMP ;;
  flink) require SEQCODEC_INPUT SEQCODEC_OUTPUT SEQCODEC_MODEL_DIR FLINK_MASTER ;;
  spark) require SEQCODEC_INPUT SEQCODEC_OUTPUT SEQCODEC_MODEL_DIR SPARK_JOB_ENDPOINT ;;
  "") fail "usage: deploy/launch.sh direct|dataflow|flink|spark [options...]" ;;
  *) fail "unknown runner '$runner' (direct, dataflow, flink or spark)" ;;
esac
environment_type="${BEAM_ENVIRONMENT_TYPE:-DOCKER}"
if [[ "$runner" == flink || "$runner" == spark ]]; then
  # Workers of the default DOCKER environment run Beam's plain SDK image: without an image that has
  # seqcodec, or a setup file they install, every worker fails to import it and the job never progresses.
  if [[ "$environment_type" != LOOPBACK && -z "${BEAM_ENVIRONMENT_CONFIG:-}" && -z "${SEQCODEC_SETUP_FILE:-}" ]]; then
    fail "$runner workers need seqcodec: set BEAM_ENVIRONMENT_CONFIG (an SDK image with it installed, see deploy/docker/Dockerfile) or SEQCODEC_SETUP_FILE (e.g. $root/setup.py)"
  fi
  if [[ -n "${SEQCODEC_SETUP_FILE:-}" && ! -f "$SEQCODEC_SETUP_FILE" ]]; then
    fail "SEQCODEC_SETUP_FILE=$SEQCODEC_SETUP_FILE: no such file"
  fi
fi
shift
run_date="${RUN_DATE:-$(date -d yesterday +%F)}"
max_error_rate="${SEQCODEC_MAX_ERROR_RATE:-}"  # unset: the job's own default, one default everywhere

cmd=("${SEQCODEC_BIN:-$root/.venv/bin/seqcodec}" encode
  --input "${SEQCODEC_INPUT//\{ds\}/$run_date}"
  --output "$SEQCODEC_OUTPUT"
  --model-dir "$SEQCODEC_MODEL_DIR"
  --run-date "$run_date")
if [[ -n "$max_error_rate" ]]; then
  cmd+=(--max-error-rate "$max_error_rate")
fi

case "$runner" in
  direct)
    # One machine. For every core add: --direct_running_mode=multi_processing --direct_num_workers=0
    cmd+=(--runner=DirectRunner)
    ;;
  dataflow)
    # Workers install the project from the sdist that --setup_file builds (its pins from requirements.txt,
    # without TensorFlow, on every worker start: a prebuilt --sdk_container_image starts faster).
    cmd+=(--runner=DataflowRunner
      --project="$GCP_PROJECT" --region="$GCP_REGION" --temp_location="$GCS_TEMP"
      --job_name="seqcodec-encode-$run_date"
      --setup_file="$root/setup.py")
    if [[ -n "${SDK_CONTAINER_IMAGE:-}" ]]; then
      cmd+=(--sdk_container_image="$SDK_CONTAINER_IMAGE")
    fi
    ;;
  flink)
    cmd+=(--runner=FlinkRunner --flink_master="$FLINK_MASTER"
      --flink_version="${FLINK_VERSION:-1.19}"
      --environment_type="$environment_type")
    if [[ -n "${FLINK_JOB_SERVER_JAR:-}" ]]; then
      cmd+=(--flink_job_server_jar="$FLINK_JOB_SERVER_JAR")  # else Beam downloads it at launch
    fi
    ;;
  spark)
    cmd+=(--runner=PortableRunner --job_endpoint="$SPARK_JOB_ENDPOINT"
      --environment_type="$environment_type")
    ;;
esac
if [[ "$runner" == flink || "$runner" == spark ]]; then
  if [[ -n "${BEAM_ENVIRONMENT_CONFIG:-}" ]]; then
    cmd+=(--environment_config="$BEAM_ENVIRONMENT_CONFIG")
  fi
  if [[ -n "${SEQCODEC_SETUP_FILE:-}" ]]; then
    cmd+=(--setup_file="$SEQCODEC_SETUP_FILE")
  fi
fi
cmd+=("$@")

if [[ "${SEQCODEC_DRY_RUN:-}" == 1 ]]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
