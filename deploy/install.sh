#!/usr/bin/env bash
# Install seqcodec on a production host: create or update a virtualenv with the project and its pinned
# requirements, and nothing else (no sample run, no test tools; run_local.sh also runs the sample job).
#
# Usage: deploy/install.sh [--slim] [--extras aws,gcp,train] [VENV]
#   VENV      the virtualenv (default: .venv of this checkout; cloned to /opt/seqcodec that is
#             /opt/seqcodec/.venv, which deploy/launch.sh, the cron wrapper and the Airflow DAG use)
#   --slim    without TensorFlow: a host (or worker) that only runs encode and decode on the numpy
#             engine; `train`, beam search and models of another structure then need --extras train
#   --extras  extras to add: aws (s3:// paths), gcp (gs:// paths, Dataflow), iceberg (--table), train
#             (TensorFlow; a full install always has it), comma-separated
#   PYTHON    the interpreter that creates VENV (default python3; it must be Python 3.11)
# Running it again is a no-op unless requirements.txt, setup.py or the extras changed.
# Exit 2 with one line `deploy/install.sh: error: ...` (or `seqcodec: error: ...`) on a bad argument or Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

fail() {
  echo "deploy/install.sh: error: $*" >&2
  exit 2
}

extras="" venv="" slim=""
while (( $# )); do
  case "$1" in
    --extras) (( $# >= 2 )) || fail "--extras needs a value: aws, gcp, iceberg, train, comma-separated"; extras="$2"; shift 2 ;;
    --extras=*) extras="${1#*=}"; shift ;;
    --slim) slim=slim; shift ;;
    -h|--help) sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) fail "unknown option $1 (usage: deploy/install.sh [--slim] [--extras aws,gcp,train] [VENV])" ;;
    *) [[ -z "$venv" ]] || fail "one VENV only, got '$venv' and '$1'"; venv="$1"; shift ;;
  esac
done
IFS=, read -ra wanted <<<"$extras"
for extra in "${wanted[@]}"; do
  [[ "$extra" == aws || "$extra" == gcp || "$extra" == iceberg || "$extra" == train ]] ||
    fail "unknown extra '$extra' (aws, gcp, iceberg, train)"
done
if [[ -n "$venv" ]]; then
  venv="$(realpath -m "$venv")"  # pip and the stamp need an absolute path; it may not exist yet
fi

# shellcheck source=deploy/ensure_venv.sh
source "$here/ensure_venv.sh"
ensure_venv requirements.txt "$venv" "$extras" "$slim"
echo "seqcodec: ready: ${venv:-$(dirname "$here")/.venv}/bin/seqcodec" >&2
