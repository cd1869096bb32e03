"""The numpy engine of a tree from before issue 26 against this tree's ``seqcodec.load``, in one process.

    git worktree add /tmp/before 2507420
    .venv/bin/python -m bench.engine_before_after --before-tree /tmp/before --rows 30000 --rounds 11

The other tree's ``model/numpy_encoder.py`` and ``model/numpy_decoder.py`` (what its jobs' workers ran,
``load_encoder``/``load_decoder``) are imported beside this tree; both encode and decode the same rows,
rounds alternating, after a check that codes and tokens are identical. Prints rows/s medians and the
per-round ratios after / before.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq


def before_module(tree: Path, name: str) -> ModuleType:
    """``model/<name>.py`` of the other tree, registered under its own seqcodec name (its siblings import it)."""
    spec = importlib.util.spec_from_file_location(f"seqcodec.model.{name}", tree / "model" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-tree", required=True, type=Path)
    parser.add_argument("--model-dir", default="models/default")
    parser.add_argument("--data", default="data/sample/words.parquet")
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    import seqcodec
    from seqcodec.transforms.inference import flat_tokens

    encoder_module = before_module(args.before_tree, "numpy_encoder")
    decoder_module = before_module(args.before_tree, "numpy_decoder")
    before = (encoder_module.load_encoder(args.model_dir), decoder_module.load_decoder(args.model_dir))
    after = seqcodec.load(args.model_dir)
    values, offsets = flat_tokens(pq.read_table(args.data, columns=["tokens"]).column("tokens").slice(0, args.rows))
    rows = offsets.size - 1
    codes = after.encode_flat(values, offsets)
    if not np.array_equal(before[0].encode_flat(values, offsets), codes):
        raise SystemExit("codes differ")
    if not all(np.array_equal(a, b) for a, b in zip(before[1].decode_flat(codes), after.decode_flat(codes),
                                                      strict=True)):
        raise SystemExit("tokens differ")
    rates: dict[str, list[float]] = {f"{tree} {step}": [] for tree in ("before", "after") for step in ("encode",
                                                                                                   "decode")}
    for r in range(args.rounds):
        pairs = [("before", *before), ("after", after, after)]
        for tree, encoder, decoder in pairs if r % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            encoder.encode_flat(values, offsets)
            rates[f"{tree} encode"].append(rows / (time.perf_counter() - start))
            start = time.perf_counter()
            decoder.decode_flat(codes)
            rates[f"{tree} decode"].append(rows / (time.perf_counter() - start))
    out: dict[str, object] = {name: round(statistics.median(r)) for name, r in rates.items()}
    for step in ("encode", "decode"):
        ratios = [a / b for a, b in zip(rates[f"after {step}"], rates[f"before {step}"], strict=True)]
        out[f"{step} after/before per round"] = [round(x, 3) for x in ratios]
        out[f"{step} after/before median"] = round(statistics.median(ratios), 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
