#!/usr/bin/env bash
# The test command: install what the tests need into .venv, lint, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")"
source deploy/ensure_venv.sh
ensure_venv requirements-dev.txt
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
