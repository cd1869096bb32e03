"""Write the shipped sample: English words from the english-words package as character-token Parquet.

Run: .venv/bin/python data/make_sample.py  (deterministic; needs only the installed package)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from english_words import get_english_words_set

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "sample"))
    parser.add_argument("--rows", type=int, default=0, help="how many words (default 0: all of them)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    words = sorted(get_english_words_set(["web2"], lower=True, alpha=True))
    rng = np.random.default_rng(args.seed)
    count = min(args.rows, len(words)) if args.rows > 0 else len(words)
    chosen = [words[i] for i in rng.choice(len(words), size=count, replace=False)]
    index = {c: i for i, c in enumerate(ALPHABET)}
    tokens = pa.array([[index[c] for c in w] for w in chosen], type=pa.list_(pa.int32()))
    table = pa.table({"id": pa.array(np.arange(len(chosen), dtype=np.int64)), "tokens": tokens})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "words.parquet", row_group_size=16_384, compression="zstd")
    (out / "vocab.json").write_text(json.dumps({"tokens": list(ALPHABET), "source": "english-words web2"}) + "\n")
    print(f"wrote {len(chosen)} words to {out / 'words.parquet'}")


if __name__ == "__main__":
    main()
