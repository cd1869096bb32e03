"""Near-duplicate retrieval with the codes against TF-IDF bag of words: recall@1 and @10 per edit kind and count.

Sources are sentences of at least ``--min-words`` words (and at most the model's max_length - 3,
so that 3 inserted words still fit); each query is a source with 1, 2 or 3
edits of one kind (a word replaced, two adjacent words swapped, a word dropped, a word inserted;
new words drawn from the corpus' own word frequencies, a replacement never the word it replaces).
Every query is looked up among all sentences of the corpus: by cosine on ``h`` (the code without
its length field), raw and after each normalization learned from the corpus' own codes
(``--norms``; ``learned``: the map a model trained with ``--near-duplicates`` keeps), and by cosine
on TF-IDF vectors (smoothed idf, L2-normalized, numpy only). A query
finds its source when a sentence with the source's tokens is among the first k. With a model
directory that keeps its training split, sources are drawn half from training rows and half from
held-out rows, and both are reported. Each cell also counts the queries only TF-IDF finds and only the
codes find (at 1), and ``behind_tfidf_p``, a one-sided exact McNemar test on them (do the codes miss
where TF-IDF hits more often than the other way round, beyond chance?) and, of each of those two
counts, how many the losing method missed for a corpus sentence at most one word edit from the source
(``*_near_pair``: a near-identical pair, where the query is nearly as close to the wrong sentence); the
summary counts the cells behind at p < 0.05 (about 1 in 20 cells of two equal methods would be) and
each method's time to score all its queries (``scoring_seconds``, the queries' encoding included).
Each normalization is also measured through ``seqcodec.CodeSearch``, without and with the corpus' tokens
(``+deletions``, ``+deletions+indexed``; ``--no-deletions``: cosine alone).
``--pool`` adds up saved outputs of several runs, for a test on all their queries; each cell records a
digest of its queries, and pooling refuses two runs that asked the same ones (the queries depend on
``--seed`` and, with a training split, on the model's split: runs of one training seed need
different ``--seed``s), since the test counts every query as a new one::

    .venv/bin/python -m bench.near_duplicates --model-dir models/words --input data/words/sentences.parquet
    .venv/bin/python -m bench.near_duplicates --pool run1.jsonl run2.jsonl
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import hashlib
import json
import math
import time

import numpy as np
import pyarrow.parquet as pq

import seqcodec
from bench.heldout_scores import edit_distance
from seqcodec.model.heldout import GROUPS, read_split, split_unavailable, token_hashes
from seqcodec.model.search import CodeSearch
from seqcodec.model.similarity import NORMALIZATIONS, CodeNormalization

KINDS = ("replaced", "swapped", "dropped", "inserted")
# A cell is significantly behind TF-IDF at recall@1 when behind_p says so at this level (one-sided).
SIGNIFICANT = 0.05


def edit(tokens: np.ndarray, kind: str, count: int, rng: np.random.Generator, words: np.ndarray,
         frequency: np.ndarray) -> np.ndarray:
    """``tokens`` with ``count`` edits of ``kind``, each at a position no earlier edit touched."""
    out = list(tokens)
    for _ in range(count):
        if kind == "replaced":
            i = rng.integers(len(out))
            new = out[i]
            while new == out[i]:
                new = rng.choice(words, p=frequency)
            out[i] = new
        elif kind == "swapped":
            pairs = [i for i in range(len(out) - 1) if out[i] != out[i + 1]]
            if not pairs:  # one word repeated (a row of "=" signs): no swap changes it; both methods get it as is
                break
            i = pairs[rng.integers(len(pairs))]
            out[i], out[i + 1] = out[i + 1], out[i]
        elif kind == "dropped":
            del out[rng.integers(len(out))]
        else:
            out.insert(rng.integers(len(out) + 1), rng.choice(words, p=frequency))
    return np.asarray(out, dtype=np.int64)


class TfIdf:
    """Cosine on TF-IDF bag-of-words vectors (raw counts x smoothed idf, L2-normalized), scored through
    posting lists: each query adds its words' weights to the documents that hold them."""

    def __init__(self, docs: list[np.ndarray], vocab_size: int) -> None:
        self.size = len(docs)
        doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
        words = np.concatenate(docs)
        pair = np.unique(doc_of * vocab_size + words, return_counts=True)
        doc, word, count = pair[0] // vocab_size, pair[0] % vocab_size, pair[1].astype(np.float64)
        df = np.bincount(word, minlength=vocab_size)
        self.idf = np.log((1 + len(docs)) / (1 + df)) + 1
        weight = count * self.idf[word]
        weight /= np.sqrt(np.bincount(doc, weights=weight**2))[doc]
        order = np.argsort(word, kind="stable")
        self.doc, self.weight = doc[order], weight[order]
        self.start = np.concatenate([[0], np.cumsum(np.bincount(word, minlength=vocab_size))])

    def scores(self, queries: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(queries), self.size))
        for row, query in enumerate(queries):
            words, count = np.unique(query, return_counts=True)
            weight = count * self.idf[words]
            weight /= np.sqrt((weight**2).sum())
            spans = [np.arange(self.start[w], self.start[w + 1]) for w in words]
            at = np.concatenate(spans)
            out[row] = np.bincount(self.doc[at], weights=self.weight[at] * np.repeat(weight, [len(s) for s in spans]),
                                   minlength=self.size)
        return out


def cosine(norm: CodeNormalization, index: np.ndarray, query_codes: np.ndarray) -> np.ndarray:
    """Cosine of each query's normalized code with each indexed one (both unit rows)."""
    return norm(query_codes) @ index.T


def hits(scores: np.ndarray, source_hash: np.ndarray, doc_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, a hit at 1 and at 10: any of the first k documents with the source's tokens."""
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    hit = doc_hash[top] == source_hash[:, None]
    return hit[:, 0], hit.any(axis=1)


def near_pairs(misses: np.ndarray, scores: np.ndarray, sources: np.ndarray, docs: list[np.ndarray]) -> int:
    """How many of the ``misses`` (query positions) a method missed for a sentence at most one word edit from
    the source: its first pick by ``scores`` is one of the corpus' near-identical neighbours of the source."""
    picks = scores[misses].argmax(axis=1)
    pairs = zip(sources[misses], picks, strict=True)
    return sum(edit_distance(docs[source].tolist(), docs[pick].tolist()) <= 1 for source, pick in pairs)


def behind_p(only_baseline: int, only_this: int) -> float:
    """One-sided exact McNemar p-value that a method is worse than a baseline on the same queries, from
    the queries only the baseline finds and those only the method finds: the chance of at least this
    many baseline-only hits among these discordant queries, were both methods equally good."""
    discordant = only_baseline + only_this
    return sum(math.comb(discordant, k) for k in range(only_baseline, discordant + 1)) / 2.0**discordant


def queries_digest(queries: list[np.ndarray]) -> str:
    """A short digest of a cell's queries (their tokens, in order): equal only for the same queries."""
    digest = hashlib.sha256()
    for query in queries:
        digest.update(len(query).to_bytes(4, "little") + query.astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def pooled(paths: list[str]) -> list[dict]:
    """Cells of several runs' output (JSON lines) added up per method, edit kind and count, both source
    groups together: the queries only TF-IDF finds and only the method finds, and the p-value of those.

    ValueError when two cells of one method asked the same queries (``queries_digest``): the test would
    count each of them twice. Cells saved before the digest was recorded are taken unchecked.
    """
    cells: dict[tuple, collections.Counter] = {}
    asked: dict[tuple, str] = {}
    for path in paths:
        with open(path) as handle:
            for row in map(json.loads, handle):
                if "only_tfidf" in row:
                    if "queries_digest" in row:
                        key = (row["method"], row["queries_digest"])
                        if key in asked:
                            raise ValueError(f"{asked[key]} and {path} asked the same queries ({row['kind']} "
                                             f"{row['edits']}): pool runs of different query draws (--seed)")
                        asked[key] = path
                    counts = cells.setdefault((row["method"], row["kind"], row["edits"]), collections.Counter())
                    # Near pairs: cells saved before they were counted have none.
                    counts.update(cells=1, queries=row["queries"], only_tfidf=row["only_tfidf"],
                                  only_codes=row["only_codes"],
                                  only_tfidf_near_pair=row.get("only_tfidf_near_pair", 0),
                                  only_codes_near_pair=row.get("only_codes_near_pair", 0))
    return [{"method": method, "kind": kind, "edits": edits, "queries": c["queries"], "cells": c["cells"],
             "only_tfidf": c["only_tfidf"], "only_codes": c["only_codes"],
             "margin_queries": c["only_codes"] - c["only_tfidf"],
             "behind_tfidf_p": round(behind_p(c["only_tfidf"], c["only_codes"]), 4),
             "only_tfidf_near_pair": c["only_tfidf_near_pair"], "only_codes_near_pair": c["only_codes_near_pair"]}
            for (method, kind, edits), c in sorted(cells.items())]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="models/words")
    p.add_argument("--input", default="data/words/sentences.parquet")
    p.add_argument("--queries", type=int, default=1000, help="per edit kind and count (half held out if known)")
    p.add_argument("--min-words", type=int, default=10)
    p.add_argument("--edits", default="1,2,3")
    p.add_argument("--norms",
                   help="normalizations of h to measure (seqcodec.CodeNormalization kinds; KIND:EPS sets eps; "
                        "learned: the model's search map); default: every kind, and learned if the model has one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deletions", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure each normalization through seqcodec.CodeSearch: near ties settled by the "
                        "queries' one-word-shorter variants (+deletions), and by those of the longer indexed "
                        "sentences too (+deletions+indexed: CodeSearch given the corpus' tokens); default on")
    p.add_argument("--pool", nargs="+", metavar="JSONL",
                   help="measure nothing: add up the cells of these saved outputs of this benchmark (runs of "
                        "several seeds or query draws) and test each edit kind and count on all their queries")
    args = p.parse_args(argv)
    if args.pool:
        try:
            rows = pooled(args.pool)
        except ValueError as exc:
            p.error(str(exc))
        for row in rows:
            print(json.dumps(row))
        return 0
    started = time.time()
    rng = np.random.default_rng(args.seed)
    docs = [np.asarray(t, np.int64) for t in pq.read_table(args.input, columns=["tokens"]).column("tokens").to_pylist()]
    codec = seqcodec.load(args.model_dir)
    manifest = seqcodec.read_manifest(args.model_dir)
    lengths = np.array([len(d) for d in docs])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    doc_hash = token_hashes(np.concatenate(docs), offsets)
    counts = np.bincount(np.concatenate(docs), minlength=manifest.vocab_size).astype(np.float64)
    words, frequency = np.arange(manifest.vocab_size), counts / counts.sum()
    # Room for 3 inserted words within the model's max_length, for every kind alike.
    long_enough = np.flatnonzero((lengths >= args.min_words) & (lengths <= manifest.max_length - 3))
    pools = {"all": long_enough}
    if split_unavailable(manifest) is None:
        group = read_split(args.model_dir, manifest).groups(doc_hash[long_enough])
        pools = {"training": long_enough[group == GROUPS.index("training")],
                 "held_out": long_enough[group == GROUPS.index("held_out")]}
    if args.norms is None:
        args.norms = ",".join(NORMALIZATIONS + (("learned",) if manifest.extra.get("search") else ()))
    codes = codec.encode(docs)
    scorers = {"tfidf": TfIdf(docs, manifest.vocab_size).scores}
    searches = {}  # the same normalizations through seqcodec.CodeSearch, which reads the queries' tokens
    for name in (n for n in args.norms.split(",") if n):
        kind, _, eps = name.partition(":")
        if kind == "learned":  # the model's own map (train --near-duplicates)
            norm = CodeNormalization.from_model(args.model_dir)
        else:
            norm = CodeNormalization.fit(codes, kind, float(eps or 1e-3))
        indexed = CodeSearch.over(codec, codes, norm, docs)  # normalizes the codes once, checks the tokens
        scorers[f"codes:{name}"] = functools.partial(cosine, norm, indexed.index)
        if args.deletions:  # queries' variants alone, and with the indexed sentences' variants too
            searches[f"codes:{name}+deletions"] = dataclasses.replace(indexed, tokens=None).scores
            searches[f"codes:{name}+deletions+indexed"] = indexed.scores
    scorers.update(searches)
    rows = []
    spent: dict[str, float] = {}
    for kind in KINDS:
        for count in (int(e) for e in args.edits.split(",")):
            for pool_name, pool in pools.items():
                per_pool = args.queries // len(pools)
                sources = rng.choice(pool, size=min(per_pool, pool.size), replace=False)
                queries = [edit(docs[s], kind, count, rng, words, frequency) for s in sources]
                clock = time.perf_counter()
                query_codes = codec.encode(queries)
                encoding = time.perf_counter() - clock
                digest = queries_digest(queries)
                for name, score in scorers.items():
                    reads_tokens = name == "tfidf" or name in searches
                    clock = time.perf_counter()
                    scores = score(queries) if reads_tokens else score(query_codes)
                    # Plain cosine's time includes the queries' encoding; the others encode (or not) inside.
                    took = time.perf_counter() - clock + (0.0 if reads_tokens else encoding)
                    spent[name] = spent.get(name, 0.0) + took
                    at1, at10 = hits(scores, doc_hash[sources], doc_hash)
                    if name == "tfidf":
                        tfidf_at1, tfidf_scores = at1, scores
                    rows.append({"kind": kind, "edits": count, "sources": pool_name, "queries": len(sources),
                                 "method": name, "recall@1": round(float(at1.mean()), 3),
                                 "recall@10": round(float(at10.mean()), 3)})
                    if name != "tfidf":  # the queries that tell the two apart at recall@1
                        only_tfidf, only_codes = int((tfidf_at1 & ~at1).sum()), int((at1 & ~tfidf_at1).sum())
                        rows[-1].update(only_tfidf=only_tfidf, only_codes=only_codes,
                                        behind_tfidf_p=round(behind_p(only_tfidf, only_codes), 4),
                                        only_tfidf_near_pair=near_pairs(tfidf_at1 & ~at1, scores, sources, docs),
                                        only_codes_near_pair=near_pairs(at1 & ~tfidf_at1, tfidf_scores, sources, docs),
                                        queries_digest=digest)
                    print(json.dumps(rows[-1]), flush=True)
    for name in (n for n in scorers if n != "tfidf"):
        # Per cell (kind, edits, sources), this method's hits minus TF-IDF's on the same queries.
        margins = [round((m["recall@1"] - t["recall@1"]) * m["queries"]) for m, t in zip(
            (r for r in rows if r["method"] == name), (r for r in rows if r["method"] == "tfidf"), strict=True)]
        behind = [r["behind_tfidf_p"] < SIGNIFICANT for r in rows if r["method"] == name]
        print(json.dumps({"method": name, "cells": len(margins), "cells_below_tfidf": sum(m < 0 for m in margins),
                          "cells_significantly_below": sum(behind),
                          "worst_margin_queries": min(margins), "net_margin_queries": sum(margins),
                          "scoring_seconds": round(spent[name], 1)}))
    print(json.dumps({"model": manifest.fingerprint, "documents": len(docs), "seconds": round(time.time() - started)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
