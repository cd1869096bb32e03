#!/usr/bin/env bash
# The main job on a laptop: install into .venv if needed, then encode the shipped sample with the
# shipped default model on the DirectRunner, decode it again, and render the run report.
# Extra arguments go to `seqcodec encode` (e.g. --direct_running_mode=multi_processing).
set -euo pipefail
cd "$(dirname "$0")"
source deploy/ensure_venv.sh
ensure_venv requirements.txt

OUT="${SEQCODEC_OUT:-out/sample}"
.venv/bin/seqcodec encode \
  --input 'data/sample/*.parquet' \
  --model-dir models/default \
  --output "$OUT" \
  --decode --mismatches 20 --vocab data/sample/vocab.json \
  "$@"
.venv/bin/seqcodec report "$OUT" --vocab data/sample/vocab.json
echo "run_local: codes in $OUT/codes, decoded sequences in $OUT/decoded, report in $OUT/report.html"
