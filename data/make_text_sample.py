"""Write word-level token sequences from English prose found offline: the standard library's docstrings.

Sentences come from ``inspect.getdoc`` of a fixed list of standard library modules and of the
classes, functions and methods they define. They are lowercased, cut into words with
``[a-z]+'?[a-z]*`` (a trailing apostrophe is dropped), kept when 3..40 words long and
de-duplicated (docstrings repeat a lot; duplicates would leak between training and held-out
rows). The vocabulary is the ``V - 1`` most frequent words (ties alphabetical) plus id ``V - 1``
for any other word. Deterministic for a given interpreter version (the docstrings are its own).

Run: .venv/bin/python data/make_text_sample.py --out /tmp/seqcodec-text
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MODULES = [
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "builtins", "bz2", "calendar",
    "cmath", "codecs", "collections", "colorsys", "concurrent.futures", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email", "enum", "filecmp",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client", "http.server", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "locale", "logging",
    "lzma", "mailbox", "math", "mimetypes", "multiprocessing", "operator", "os", "pathlib", "pdb",
    "pickle", "platform", "plistlib", "poplib", "pprint", "queue", "random", "re", "sched", "secrets",
    "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "sqlite3", "ssl",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "xml.dom.minidom", "xml.etree.ElementTree",
    "zipfile", "zlib",
]  # fmt: skip

WORD = re.compile(r"[a-z]+'?[a-z]*")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ )")


def module_docstrings(module_name: str) -> list[str]:
    """The docstrings of a module and of its classes, functions and their methods, in name order.

    Names a module imports from elsewhere come along too; the caller drops repeated docstrings.
    """
    module = importlib.import_module(module_name)
    docs = [inspect.getdoc(module)]
    for name in sorted(vars(module)):
        obj = vars(module)[name]
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for member_name in sorted(vars(obj)):
                member = vars(obj)[member_name]
                if inspect.isroutine(member) or isinstance(member, (property, classmethod, staticmethod)):
                    docs.append(inspect.getdoc(member))
    return [d for d in docs if d]


def sentences_of(doc: str) -> list[str]:
    """Prose sentences of one docstring: code lines (doctests) dropped, paragraphs joined, cut at . ! ?"""
    out: list[str] = []
    for paragraph in re.split(r"\n\s*\n", doc):
        text = " ".join(line.strip() for line in paragraph.splitlines() if not CODE_LINE.match(line))
        out.extend(s for s in SENTENCE_END.split(text) if s)
    return out


def words_of(sentence: str) -> list[str]:
    return [w.rstrip("'") for w in WORD.findall(sentence.lower())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/seqcodec-text")
    parser.add_argument("--vocab-size", type=int, default=2000, help="V: V - 1 words plus one unknown id")
    parser.add_argument("--min-words", type=int, default=3)
    parser.add_argument("--max-words", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2026, help="row order of the written file")
    args = parser.parse_args()

    seen_docs: set[str] = set()
    seen_sentences: set[tuple[str, ...]] = set()
    sentences: list[list[str]] = []
    modules_used = []
    for module_name in MODULES:
        try:
            docs = module_docstrings(module_name)
        except ImportError as exc:  # e.g. a module this interpreter was built without
            print(f"skipping {module_name}: {exc}", file=sys.stderr)
            continue
        modules_used.append(module_name)
        for doc in docs:
            if doc in seen_docs:
                continue
            seen_docs.add(doc)
            for sentence in sentences_of(doc):
                words = words_of(sentence)
                key = tuple(words)
                if args.min_words <= len(words) <= args.max_words and key not in seen_sentences:
                    seen_sentences.add(key)
                    sentences.append(words)

    counts = collections.Counter(w for s in sentences for w in s)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab = [w for w, _ in ranked[: args.vocab_size - 1]]
    unknown = args.vocab_size - 1
    index = {w: i for i, w in enumerate(vocab)}
    rows = [[index.get(w, unknown) for w in s] for s in sentences]
    order = np.random.default_rng(args.seed).permutation(len(rows))
    rows = [rows[i] for i in order]

    lengths = np.array([len(r) for r in rows])
    tokens = np.concatenate([np.asarray(r) for r in rows])
    oov = float((tokens == unknown).mean())
    oov_rows = float(np.mean([unknown in r for r in rows]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(np.arange(len(rows), dtype=np.int64)),
            "tokens": pa.array(rows, type=pa.list_(pa.int32())),
        }
    )
    pq.write_table(table, out / "sentences.parquet", row_group_size=16_384, compression="zstd")
    stats = {
        "sentences": len(rows),
        "tokens": int(lengths.sum()),
        "mean_length": round(float(lengths.mean()), 2),
        "median_length": float(np.median(lengths)),
        "max_length": int(lengths.max()),
        "distinct_words": len(counts),
        "vocab_size": args.vocab_size,
        "oov_token_rate": round(oov, 4),
        "sentences_with_oov": round(oov_rows, 4),
        "modules": len(modules_used),
        "python": sys.version.split()[0],
    }
    vocab_doc = {
        "tokens": vocab + ["<unk>"],
        "unknown_id": unknown,
        "source": "inspect.getdoc of Python standard library modules, classes and functions",
        "modules": modules_used,
        "stats": stats,
    }
    (out / "vocab.json").write_text(json.dumps(vocab_doc, indent=1) + "\n")
    print(f"wrote {len(rows)} sentences to {out / 'sentences.parquet'}")
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
