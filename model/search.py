"""Search codes with token sequences (``seqcodec.CodeSearch``): cosine, near ties settled by the query less one token.

Under a model's search map a sentence with words inserted lands next to its source, but a corpus'
near-identical sentences (one word apart) can land as near, and there the codes lost to bag of words
(docs/MODEL.md, "Near ties"). Deleting one token of the query undoes one insertion: each indexed code
within ``gate`` of a query's best cosine scores the best of the query's own cosine and its
one-token-shorter variants' less ``margin``, so only near ties change order, and only the queries
that have one pay for encoding their variants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from seqcodec.model.codec import SequenceCodec
from seqcodec.model.similarity import CodeNormalization

# Measured on the word sample with its learned search map (docs/MODEL.md, "Near ties"): cosines within GATE of
# the best are near ties; a variant must beat the query's own cosine by more than MARGIN to count.
GATE = 0.02
MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class CodeSearch:
    """Nearest codes for token queries: ``CodeSearch.over(codec, codes, norm).nearest(queries, k)``.

    ``index`` is ``norm(codes)`` of the codes searched (unit rows); queries are token sequences, encoded
    by ``codec``, the model that wrote the codes.
    """

    codec: SequenceCodec
    norm: CodeNormalization
    index: np.ndarray  # (N, hidden_size) float32 unit rows
    gate: float = GATE
    margin: float = MARGIN

    @classmethod
    def over(cls, codec: SequenceCodec, codes: np.ndarray, norm: CodeNormalization, **settings: float) -> CodeSearch:
        """A search of ``codes`` (``(N, hidden_size + 1)`` as the codec and the jobs write them) under ``norm``."""
        return cls(codec, norm, norm(codes), **settings)

    def scores(self, queries: Sequence[Sequence[int]]) -> np.ndarray:
        """``(len(queries), N)`` float32 scores: cosines, near ties settled by one-token-shorter variants."""
        queries = [np.asarray(q, np.int64) for q in queries]
        scores = self.norm(self.codec.encode(queries)) @ self.index.T
        near = scores >= scores.max(axis=1, keepdims=True) - self.gate
        tied = [i for i in np.flatnonzero(near.sum(axis=1) > 1) if len(queries[i]) > 1]
        if not tied:
            return scores
        variants = [np.delete(queries[i], j) for i in tied for j in range(len(queries[i]))]
        vectors = self.norm(self.codec.encode(variants))
        start = 0
        for i in tied:
            candidates = np.flatnonzero(near[i])
            shorter = vectors[start : start + len(queries[i])] @ self.index[candidates].T
            start += len(queries[i])
            scores[i, candidates] = np.maximum(scores[i, candidates], shorter.max(axis=0) - self.margin)
        return scores

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
