# Sourced by run_local.sh and run_tests.sh: make .venv at the repo root and install the project into it.
# Usage: ensure_venv REQUIREMENTS_FILE   (re-installs only when that file or setup.py changed)
ensure_venv() {
  local root req stamp want
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  req="$1"
  if [[ ! -x "$root/.venv/bin/python" ]]; then
    echo "seqcodec: creating $root/.venv" >&2
    "${PYTHON:-python3}" -m venv "$root/.venv"
  fi
  stamp="$root/.venv/.seqcodec-installed"
  want="$(cat "$root/$req" "$root/requirements.txt" "$root/setup.py" | sha256sum | cut -c1-16) $req"
  if [[ ! -f "$stamp" ]] || ! grep -qxF "$want" "$stamp"; then
    echo "seqcodec: installing $req and the project into .venv (first run takes a minute or two)" >&2
    "$root/.venv/bin/python" -m pip install -qq --disable-pip-version-check -r "$root/$req" -e "$root"
    echo "$want" >> "$stamp"
  fi
}
