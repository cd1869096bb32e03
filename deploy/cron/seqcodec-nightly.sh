#!/usr/bin/env bash
# Cron entry for the nightly encode: one run date, logged to a dated file, the job's exit code kept.
#
# Usage (see seqcodec.crontab): seqcodec-nightly.sh [more seqcodec or Beam options...]
# Configuration, from the environment or from SEQCODEC_ENV_FILE (default /etc/seqcodec/nightly.env,
# read if it exists): everything deploy/launch.sh reads (SEQCODEC_INPUT, SEQCODEC_OUTPUT,
# SEQCODEC_MODEL_DIR, RUN_DATE, ...), plus
#   SEQCODEC_RUNNER   direct | dataflow | flink | spark (default direct)
#   SEQCODEC_LOG_DIR  where seqcodec-encode-RUN_DATE.log goes (default ~/.local/state/seqcodec)
#
# Exit code: the job's (0 published, 2 bad arguments/input, 3 too many rejects, 4 pipeline failed,
# 128+N killed by signal N), or 75 if another run of this output still holds the lock.
# On failure one line goes to stderr (cron mails it); the whole story is in the log file.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_file="${SEQCODEC_ENV_FILE:-/etc/seqcodec/nightly.env}"
if [[ -f "$env_file" ]]; then
  set -a
  # shellcheck disable=SC1090
  source "$env_file"
  set +a
fi
RUN_DATE="${RUN_DATE:-$(date -d yesterday +%F)}"  # yesterday in TZ (the machine's unless set)
export RUN_DATE
runner="${SEQCODEC_RUNNER:-direct}"
log_dir="${SEQCODEC_LOG_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/seqcodec}"
mkdir -p "$log_dir" || exit 4
log="$log_dir/seqcodec-encode-$RUN_DATE.log"

# One run per output at a time: a late run and the next night's, or a manual rerun, must not overlap.
lock="$log_dir/.seqcodec-encode-$(printf '%s' "${SEQCODEC_OUTPUT:-}" | sha256sum | cut -c1-12).lock"
exec 9>"$lock"
if ! flock -n 9; then
  echo "seqcodec-nightly $RUN_DATE: another run for ${SEQCODEC_OUTPUT:-?} holds $lock; not started" | tee -a "$log" >&2
  exit 75
fi

start=$(stat -c %s "$log" 2>/dev/null || echo 0)
echo "=== $(date -u +%FT%TZ) start run_date=$RUN_DATE runner=$runner host=$(hostname) pid=$$" >>"$log"
"$here/../launch.sh" "$runner" "$@" >>"$log" 2>&1  # the job inherits the lock (fd 9) until it ends
rc=$?
echo "=== $(date -u +%FT%TZ) end run_date=$RUN_DATE exit=$rc" >>"$log"
if [[ $rc -ne 0 ]]; then
  why="$(tail -c +"$((start + 1))" "$log" | grep -E '^(seqcodec: |deploy/launch.sh: |.*: set [A-Z_]+)' | tail -n 1)"
  echo "seqcodec-nightly $RUN_DATE: exit $rc: ${why:-no error line, see the log} (log: $log)" >&2
fi
exit "$rc"
