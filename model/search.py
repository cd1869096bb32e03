"""Search codes with token sequences (``seqcodec.CodeSearch``): cosine, near ties settled by one token deleted.

Under a model's search map a sentence with words inserted or dropped lands next to its source, but a
corpus' near-identical sentences (one word apart) can land as near, and there the codes lost to bag
of words (docs/MODEL.md, "Near ties"). Deleting one token of the query undoes one insertion;
deleting one token of a longer indexed sentence undoes one of the query's dropped tokens. Each indexed
code within ``gate`` of a query's best cosine scores the best of their own cosine and those of the
one-token-shorter variants' less ``margin``, so only near ties change order, and only the queries that
have one pay for encoding variants.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from seqcodec.model.codec import SequenceCodec
from seqcodec.model.similarity import CodeNormalization

# Measured on the word sample with its learned search map (docs/MODEL.md, "Near ties"): cosines within GATE of
# the best are near ties; a variant must beat the pair's own cosine by more than MARGIN to count.
GATE = 0.02
MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class CodeSearch:
    """Nearest codes for token queries: ``CodeSearch.over(codec, codes, norm, tokens).nearest(queries, k)``.

    ``index`` is ``norm(codes)`` of the codes searched (unit rows); queries are token sequences, encoded
    by ``codec``, the model that wrote the codes. ``tokens``, the indexed sequences themselves, is
    optional: without it only the queries' variants settle near ties.
    """

    codec: SequenceCodec
    norm: CodeNormalization
    index: np.ndarray  # (N, hidden_size) float32 unit rows
    gate: float = GATE
    margin: float = MARGIN
    tokens: Sequence[np.ndarray] | None = None  # the N indexed sequences, or None

    @classmethod
    def over(cls, codec: SequenceCodec, codes: np.ndarray, norm: CodeNormalization,
             tokens: Sequence[Sequence[int]] | None = None, **settings: float) -> CodeSearch:
        """A search of ``codes`` (``(N, hidden_size + 1)`` as the codec and the jobs write them) under ``norm``.

        ``tokens``, when given, are the sequences the codes were written for, in the same order; ValueError
        when their number or any length disagrees with the codes' length field.
        """
        if tokens is not None:
            tokens = [np.asarray(t, np.int64) for t in tokens]
            if len(tokens) != len(codes):
                raise ValueError(f"{len(tokens)} token sequences for {len(codes)} codes")
            lengths = np.array([len(t) for t in tokens])
            wrong = np.flatnonzero(lengths != np.rint(codes[:, 0]))
            if wrong.size:
                raise ValueError(f"token sequence {wrong[0]} has {lengths[wrong[0]]} tokens, its code says "
                                 f"{codes[wrong[0], 0]:g}: tokens and codes are not in the same order")
        return cls(codec, norm, norm(codes), tokens=tokens, **settings)

    def scores(self, queries: Sequence[Sequence[int]]) -> np.ndarray:
        """``(len(queries), N)`` float32 scores: cosines, near ties settled by one-token-shorter variants."""
        queries = [np.asarray(q, np.int64) for q in queries]
        vectors = self.norm(self.codec.encode(queries))
        scores = vectors @ self.index.T
        near = scores >= scores.max(axis=1, keepdims=True) - self.gate
        ties = {i: np.flatnonzero(near[i]) for i in np.flatnonzero(near.sum(axis=1) > 1)}
        # Both from the plain cosines: a tie takes the best of its own and each side's variants' less margin.
        settled = self._shorter_queries(queries, ties)
        if self.tokens is not None:
            settled += self._shorter_rows(queries, vectors, ties)
        for i, candidates, best in settled:
            scores[i, candidates] = np.maximum(scores[i, candidates], best - self.margin)
        return scores

    def _shorter_queries(self, queries: list[np.ndarray], ties: dict[int, np.ndarray]) -> list[tuple]:
        """Per tied query, its tied codes' best cosine with the query less one token (undoes an insertion)."""
        tied = [i for i in ties if len(queries[i]) > 1]
        if not tied:
            return []
        vectors = self.norm(self.codec.encode([np.delete(queries[i], j) for i in tied
                                               for j in range(len(queries[i]))]))
        ends = np.cumsum([len(queries[i]) for i in tied])
        return [(i, ties[i], (part @ self.index[ties[i]].T).max(axis=0))
                for i, part in zip(tied, np.split(vectors, ends[:-1]), strict=True)]

    def _shorter_rows(self, queries: list[np.ndarray], vectors: np.ndarray,
                      ties: dict[int, np.ndarray]) -> list[tuple]:
        """Per tied query, the best cosine of each tied longer sequence less one token with the query
        (undoes a token the query dropped); each such sequence's variants encoded once per call."""
        longer = {i: c[self._lengths[c] > len(queries[i])] for i, c in ties.items()}
        rows = sorted({int(r) for c in longer.values() for r in c})
        if not rows:
            return []
        encoded = self.norm(self.codec.encode([np.delete(self.tokens[r], j) for r in rows
                                               for j in range(len(self.tokens[r]))]))
        ends = np.cumsum([len(self.tokens[r]) for r in rows])
        variants = dict(zip(rows, np.split(encoded, ends[:-1]), strict=True))
        return [(i, c, np.array([(variants[r] @ vectors[i]).max() for r in c], np.float32))
                for i, c in longer.items() if c.size]

    @functools.cached_property
    def _lengths(self) -> np.ndarray:
        """The indexed sequences' lengths, counted once per search."""
        return np.array([len(t) for t in self.tokens])

    def nearest(self, queries: Sequence[Sequence[int]], k: int = 10,
                batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best indexed rows per query, best first: ``(positions, scores)``, each ``(len(queries), k)``.

        Queries are scored ``batch`` at a time, so memory stays at ``batch x N`` scores.
        """
        k = min(k, len(self.index))
        positions, best = [], []
        for start in range(0, len(queries), batch):
            scores = self.scores(queries[start : start + batch])
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            positions.append(np.take_along_axis(top, order, axis=1))
            best.append(np.take_along_axis(scores, positions[-1], axis=1))
        width = (0, k)
        return (np.concatenate(positions) if positions else np.zeros(width, np.int64),
                np.concatenate(best) if best else np.zeros(width, np.float32))
