"""Add the training split record (split.parquet) to a model trained before `seqcodec train` kept one.

The split is a function of the training data and the seed (``model/train.split_rows``), so it can be
recomputed afterwards, but only from the very data the model was trained on. This script proves it
is: the recomputed test rows must round-trip to exactly the held-out figures in the manifest
(float for float), or nothing is written. Then it writes split.parquet and names it in
manifest.json (the weights, and so the fingerprint, are untouched)::

    .venv/bin/python data/record_split.py --model-dir models/default --input 'data/sample/*.parquet'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqcodec.model.data import read_token_sequences
from seqcodec.model.heldout import SPLIT_FILE, split_bytes, split_facts
from seqcodec.model.numpy_encoder import file_digest
from seqcodec.model.storage import load_codec
from seqcodec.model.train import evaluate, split, split_record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--input", required=True, help="the glob the model was trained on")
    p.add_argument("--tokens-column", default="tokens")
    args = p.parse_args(argv)
    model_dir = Path(args.model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    settings = manifest["metrics"]["settings"]
    data = read_token_sequences(args.input, args.tokens_column)
    data = data.take((data.lengths <= manifest["max_length"]).nonzero()[0])  # as training skipped longer rows
    fraction, seed = settings["validation_fraction"], settings["seed"]
    _, _, test = split(data, fraction, seed)
    got = evaluate(load_codec(model_dir), test)
    if got != manifest["metrics"]["test"]:
        print(f"the recomputed test rows round-trip to {got}, not to the manifest's {manifest['metrics']['test']}: "
              "this is not the data (or the seed) the model was trained on; nothing written", file=sys.stderr)
        return 1
    record = split_record(data, fraction, seed)
    (model_dir / SPLIT_FILE).write_bytes(split_bytes(record))
    manifest["files"][SPLIT_FILE] = file_digest(model_dir / SPLIT_FILE)
    manifest["split"] = split_facts(record)
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"model_dir": str(model_dir), "test": got, "split": manifest["split"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
