"""Load a model and encode one sequence in a fresh process, against ``import tensorflow`` alone, alternating.

    .venv/bin/python -m bench.load_time --rounds 5

Each round runs both commands once, in alternating order; the figure is the ratio of the medians of
the wall times (the whole processes, interpreter start-up included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LOAD = "import seqcodec; seqcodec.load({model!r}).encode([[0, 1, 2]])"
IMPORT_TF = "import tensorflow"


def wall(code: str) -> float:
    """Seconds a fresh interpreter takes to run ``code`` (TensorFlow's start-up lines silenced)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/default")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    commands = {"load and encode one sequence": LOAD.format(model=args.model_dir), "import tensorflow": IMPORT_TF}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for r in range(args.rounds):
        for name in commands if r % 2 == 0 else list(commands)[::-1]:
            times[name].append(round(wall(commands[name]), 3))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = medians["load and encode one sequence"] / medians["import tensorflow"]
    print(json.dumps({"seconds": times, "medians": medians, "ratio": round(ratio, 3)}, indent=1))


if __name__ == "__main__":
    main()
