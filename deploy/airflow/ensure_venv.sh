#!/usr/bin/env bash
# Create (once) a separate virtualenv with Airflow and the Beam + Google providers, pinned in
# deploy/airflow/requirements.txt, and print its path. Never the project's .venv: Airflow and
# seqcodec keep their own dependencies; the DAG runs seqcodec with SEQCODEC_PYTHON.
#
# Usage: deploy/airflow/ensure_venv.sh [VENV]   (default: .cache/airflow-venv at the repo root, or
# $SEQCODEC_AIRFLOW_VENV). Reinstalls only when requirements.txt changed. Takes minutes the first time.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${1:-${SEQCODEC_AIRFLOW_VENV:-$root/.cache/airflow-venv}}"
req="$root/deploy/airflow/requirements.txt"
want="$(sha256sum "$req" | cut -c1-16)"
stamp="$venv/.seqcodec-airflow-installed"
if [[ -f "$stamp" ]] && grep -qxF "$want" "$stamp" && [[ -x "$venv/bin/airflow" ]]; then
  echo "$venv"
  exit 0
fi
# Progress on stderr, a line before and after: the install is silent (pip -qq) and takes minutes.
echo "seqcodec: installing Airflow (deploy/airflow/requirements.txt) into $venv: several minutes the first time" >&2
SECONDS=0
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -qq --disable-pip-version-check -r "$req" >&2
echo "$want" > "$stamp"
echo "seqcodec: Airflow installed in $venv in ${SECONDS}s ($(du -sh "$venv" | cut -f1))" >&2
echo "$venv"
