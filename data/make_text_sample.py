"""Write word-level token sequences from English prose found offline: docstrings of installed Python code.

Sentences come from the docstrings (``ast.get_docstring``: modules, classes, functions) of the
standard library's source files and of the installed packages named by ``--packages`` (by
default the project's own pinned dependencies, so the text is fixed by requirements.txt). Files
are parsed, never imported. Sentences are lowercased, cut into words with ``[a-z]+'?[a-z]*`` (a
trailing apostrophe is dropped), kept when ``--min-words``..``--max-words`` long and
de-duplicated (docstrings repeat a lot; duplicates would leak between training and held-out rows).
The vocabulary is the ``V - 1`` most frequent words (ties alphabetical) plus id ``V - 1`` for any
other word. Deterministic for a given interpreter and set of package versions.

Writes ``sentences.parquet`` (id, tokens), ``vocab.txt`` (one token per line, line number = id:
the ``--vocab`` file of decode, encode --decode and report) and ``stats.json``.
Run: .venv/bin/python data/make_text_sample.py --out data/words
"""

from __future__ import annotations

import argparse
import ast
import collections
import importlib.util
import json
import re
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PACKAGES = ["numpy", "pyarrow", "matplotlib", "keras", "tensorflow", "apache_beam"]
UNKNOWN = "<unk>"
WORD = re.compile(r"[a-z]+'?[a-z]*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~^]{3,}\s*$|:\w+:|\.\. )")


def source_files(packages: list[str]) -> list[Path]:
    """The standard library's .py files (no tests, no site-packages) and those of the named packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in stdlib.rglob("*.py")
        if not {"site-packages", "test", "tests", "idlelib", "lib2to3"} & set(p.relative_to(stdlib).parts)
    )  # fmt: skip
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            print(f"skipping {name}: not installed", file=sys.stderr)
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        files += sorted(p for p in root.rglob("*.py") if not {"test", "tests"} & set(p.relative_to(root).parts))
    return files


def docstrings(path: Path) -> list[str]:
    """Docstrings of a source file's module, classes and functions, in file order; none if it does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes in old sources
            tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    return [d for n in nodes if (d := ast.get_docstring(n))]


def sentences_of(doc: str) -> list[str]:
    """Prose sentences of one docstring: code and markup lines dropped, paragraphs joined, cut at . ! ?"""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(line.startswith(("    ", "\t")) for line in lines):
            continue  # indented blocks are code, parameter lists or tables
        text = " ".join(line.strip() for line in lines if not CODE_LINE.match(line))
        out.extend(s for s in SENTENCE_END.split(text) if s)
    return out


def words_of(sentence: str) -> list[str]:
    return [w.rstrip("'") for w in WORD.findall(sentence.lower())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/words")
    parser.add_argument("--packages", default=",".join(PACKAGES), help="installed packages besides the stdlib")
    parser.add_argument("--vocab-size", type=int, default=4000, help="V: V - 1 words plus one unknown id")
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=40)
    parser.add_argument("--max-unknown", type=float, default=0.2, help="drop sentences with more unknown words")
    parser.add_argument("--sentences", type=int, default=30_000,
                        help="keep this many (a random choice; 0: all); the vocabulary comes from the kept ones")
    parser.add_argument("--seed", type=int, default=2026, help="which sentences are kept, and their order")
    args = parser.parse_args()

    seen_docs: set[str] = set()
    seen_sentences: set[tuple[str, ...]] = set()
    sentences: list[list[str]] = []
    files = source_files([p for p in args.packages.split(",") if p])
    for path in files:
        for doc in docstrings(path):
            if doc in seen_docs:
                continue
            seen_docs.add(doc)
            for sentence in sentences_of(doc):
                words = words_of(sentence)
                key = tuple(words)
                if args.min_words <= len(words) <= args.max_words and key not in seen_sentences:
                    seen_sentences.add(key)
                    sentences.append(words)

    order = np.random.default_rng(args.seed).permutation(len(sentences))
    sentences = [sentences[i] for i in order[: args.sentences or None]]
    counts = collections.Counter(w for s in sentences for w in s)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [w for w, _ in ranked[: args.vocab_size - 1]]
    unknown = args.vocab_size - 1
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(w, unknown) for w in s] for s in sentences]
    rows = [r for r in rows if sum(t == unknown for t in r) <= args.max_unknown * len(r)]

    lengths = np.array([len(r) for r in rows])
    tokens = np.concatenate([np.asarray(r) for r in rows])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(np.arange(len(rows), dtype=np.int64)),
            "tokens": pa.array(rows, type=pa.list_(pa.int16())),
        }
    )
    pq.write_table(table, out / "sentences.parquet", row_group_size=16_384, compression="zstd")
    (out / "vocab.txt").write_text("\n".join([*vocab, UNKNOWN]) + "\n")
    stats = {
        "sentences": len(rows),
        "tokens": int(lengths.sum()),
        "mean_length": round(float(lengths.mean()), 2),
        "median_length": float(np.median(lengths)),
        "max_length": int(lengths.max()),
        "distinct_words": len(counts),
        "vocab_size": args.vocab_size,
        "unknown_id": unknown,
        "unknown_token_rate": round(float((tokens == unknown).mean()), 4),
        "most_frequent_token_rate": round(float(np.bincount(tokens).max() / tokens.size), 4),
        "source_files": len(files),
        "packages": args.packages,
        "python": sys.version.split()[0],
        "command": "python data/make_text_sample.py " + " ".join(sys.argv[1:]),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(f"wrote {len(rows)} sentences to {out / 'sentences.parquet'}")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
