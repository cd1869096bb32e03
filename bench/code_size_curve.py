"""Fidelity against code size: train the default recipe at several hidden sizes and tabulate held-out scores.

Each size is one ``seqcodec train`` run (defaults, ``--time-budget``, one at a time so they do not share
the cores), written to ``OUT/h{size}s{seed}``; a size whose model directory already holds a finished
model is not trained again, so an interrupted curve resumes. The table is read from the manifests::

    .venv/bin/python -m bench.code_size_curve --input data/words/sentences.parquet --out /tmp/curve/words
    .venv/bin/python -m bench.code_size_curve --input data/sample/words.parquet --out /tmp/curve/letters
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def train(input: str, model_dir: Path, size: int, seed: int, budget: float, extra: list[str]) -> None:
    """One training run of the defaults at ``size``, unless ``model_dir`` already holds a finished one."""
    manifest = model_dir / "manifest.json"
    if manifest.is_file() and "test" in json.loads(manifest.read_text()).get("metrics", {}):
        return
    command = [sys.executable, "-m", "seqcodec", "train", "--input", input, "--model-dir", str(model_dir),
               "--overwrite", "--hidden-size", str(size), "--seed", str(seed), "--time-budget", str(budget), *extra]
    print(" ".join(command[1:]), file=sys.stderr, flush=True)
    subprocess.run(command, check=True)


def row(model_dir: Path) -> str:
    """One table row from a finished model's manifest."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    metrics = manifest["metrics"]
    test, train_rows = metrics["test"], metrics["train"]
    cells = [
        str(manifest["hidden_size"] + 1),
        f"{metrics['train_sequences']:,}",
        f"{metrics['epochs_run']} ({metrics['best_epoch']})",
        f"{metrics['train_seconds'] / max(metrics['epochs_run'], 1):.0f}",
        f"**{100 * test['exact_match']:.2f}%**",
        f"**{100 * test['token_accuracy']:.2f}%**",
        f"{100 * train_rows['exact_match']:.2f}%",
        f"{100 * train_rows['token_accuracy']:.2f}%",
    ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="training data, as `seqcodec train --input`")
    p.add_argument("--out", required=True, help="folder for the model directories")
    p.add_argument("--sizes", default="64,128,192,256,512", help="hidden sizes (codes are one wider)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--time-budget", type=float, default=600.0)
    p.add_argument("--report-only", action="store_true", help="tabulate the finished runs, train nothing")
    args, extra = p.parse_known_args(argv)  # anything else goes to `seqcodec train`
    runs = [(int(size), int(seed)) for seed in args.seeds.split(",") for size in args.sizes.split(",")]
    for size, seed in runs:
        if not args.report_only:
            train(args.input, Path(args.out) / f"h{size}s{seed}", size, seed, args.time_budget, extra)
    print("| code size | training sequences | epochs (best) | s/epoch | held-out exact | held-out tokens "
          "| training exact | training tokens |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for size, seed in sorted(runs):
        model_dir = Path(args.out) / f"h{size}s{seed}"
        if (model_dir / "manifest.json").is_file():
            print(row(model_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
