# Sourced by run_local.sh, run_tests.sh and deploy/install.sh: make a virtualenv and install the project into it.
# Usage: ensure_venv REQUIREMENTS_FILE [VENV [EXTRAS [slim]]]   (VENV default: .venv at the repo root;
# EXTRAS e.g. aws,gcp; slim: the project's own dependencies only, pinned by requirements.txt, so no
# TensorFlow unless EXTRAS has train)
# Re-installs only when that file, requirements.txt, setup.py or the extras changed.
# The Python that requirements.txt's pins were checked on (setup.py's python_requires says the same; tested).
SEQCODEC_PYTHON_VERSION=3.11

ensure_venv() {
  local root req venv extras slim stamp want python have
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  req="$1"
  venv="${2:-$root/.venv}"
  extras="${3:-}"
  slim="${4:-}"
  python="$venv/bin/python"
  [[ -x "$python" ]] || python="${PYTHON:-python3}"
  # One line before anything is created: pip would otherwise fail later, in many lines, on python_requires.
  have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || have=""
  if [[ "$have" != "$SEQCODEC_PYTHON_VERSION" ]]; then
    local fix="install python$SEQCODEC_PYTHON_VERSION and set PYTHON=python$SEQCODEC_PYTHON_VERSION"
    [[ "$python" != "$venv/bin/python" ]] || fix="remove $venv and run again with PYTHON=python$SEQCODEC_PYTHON_VERSION"
    echo "seqcodec: error: needs Python $SEQCODEC_PYTHON_VERSION (requirements.txt's pins are checked on it)," \
      "but $python is ${have:-not a working Python}: $fix" >&2
    return 2
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "seqcodec: creating $venv" >&2
    "$python" -m venv "$venv"
  fi
  stamp="$venv/.seqcodec-installed"
  want="$(cat "$root/$req" "$root/requirements.txt" "$root/setup.py" | sha256sum | cut -c1-16) $req${extras:+[$extras]}${slim:+ $slim}"
  if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
    local pins=(-r "$root/$req") what="$req and the project"
    [[ -z "$slim" ]] || pins=(-c "$root/$req") what="the project (no TensorFlow)"
    [[ -z "$slim" || ",$extras," != *,train,* ]] || what="the project"
    echo "seqcodec: installing $what${extras:+ [$extras]} into $venv (first run takes a minute or two)" >&2
    "$venv/bin/python" -m pip install -qq --disable-pip-version-check "${pins[@]}" -e "$root${extras:+[$extras]}"
    echo "$want" >> "$stamp"
  fi
}
