"""seqcodec.CodeSearch on real codes of a (tiny) codec: cosine, and near ties settled by one-token-shorter queries."""

import numpy as np
import pytest
from conftest import TINY, random_sequences

import seqcodec


@pytest.fixture(scope="module")
def corpus(tiny_codec) -> tuple[list[np.ndarray], np.ndarray]:
    docs = [d for d in random_sequences(400, TINY["vocab_size"], TINY["max_length"] - 1, seed=21) if len(d) > 2]
    return docs, tiny_codec.encode(docs)


def cosines(codec, norm, codes, queries) -> np.ndarray:
    return norm(codec.encode(queries)) @ norm(codes).T


def test_without_near_ties_the_scores_are_the_cosines(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    queries = docs[:50]
    search = seqcodec.CodeSearch.over(tiny_codec, codes, norm, gate=0.0)
    np.testing.assert_array_equal(search.scores(queries), cosines(tiny_codec, norm, codes, queries))
    positions, scores = search.nearest(queries, k=5, batch=16)
    assert positions.shape == scores.shape == (50, 5) and np.all(np.diff(scores, axis=1) <= 0)
    assert all(docs[p].tolist() == q.tolist() for p, q in zip(positions[:, 0], queries, strict=True))


def test_only_near_ties_change_and_each_takes_its_best_shorter_variant(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    queries = [np.insert(d, 1, 5) for d in docs[:40]]
    gate, margin = 0.05, 0.01
    got = seqcodec.CodeSearch.over(tiny_codec, codes, norm, gate=gate, margin=margin).scores(queries)
    plain = cosines(tiny_codec, norm, codes, queries)
    near = plain >= plain.max(axis=1, keepdims=True) - gate
    np.testing.assert_array_equal(got[~near], plain[~near])
    for i, query in enumerate(queries):
        shorter = cosines(tiny_codec, norm, codes, [np.delete(query, j) for j in range(len(query))]).max(axis=0)
        if near[i].sum() > 1:
            np.testing.assert_allclose(got[i, near[i]], np.maximum(plain[i], shorter - margin)[near[i]], rtol=1e-6)
        else:  # a single best code has no tie to settle
            np.testing.assert_array_equal(got[i], plain[i])
    assert np.any(got[near] > plain[near])  # some ties were settled by a shorter variant


def one_deletion(longer: np.ndarray, shorter: np.ndarray) -> bool:
    """Whether deleting one token of ``longer`` gives ``shorter``."""
    return len(longer) == len(shorter) + 1 and any(np.array_equal(np.delete(longer, j), shorter)
                                                   for j in range(len(longer)))


def hidden_behind_near_ties(codec, norm, codes, docs, edit, seed) -> tuple[list[np.ndarray], list[int]]:
    """Edited copies ``edit(doc, rng)`` that plain cosine ranks below another sentence within 0.05 of the
    best, and their sources; only where one deletion relates the copy to its source alone (the tiny
    vocabulary repeats a lot)."""
    rng = np.random.default_rng(seed)
    queries, sources = [], []
    for s, doc in enumerate(docs):
        query = edit(doc, rng)
        related = [one_deletion(query, d) or one_deletion(d, query) for d in docs]
        scores = cosines(codec, norm, codes, [query])[0]
        if sum(related) == 1 and related[s] and docs[scores.argmax()].tolist() != doc.tolist() \
                and scores[s] >= scores.max() - 0.05:
            queries.append(query)
            sources.append(s)
    return queries, sources


def test_an_inserted_token_no_longer_hides_its_source_behind_a_near_tie(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)

    def insert(doc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.insert(doc, rng.integers(len(doc) + 1), rng.integers(TINY["vocab_size"]))

    queries, sources = hidden_behind_near_ties(tiny_codec, norm, codes, docs, insert, 3)
    assert len(queries) >= 3
    plain = cosines(tiny_codec, norm, codes, queries).argmax(axis=1)
    positions, _ = seqcodec.CodeSearch.over(tiny_codec, codes, norm, gate=0.05, margin=0.0).nearest(queries, k=1)
    assert not any(docs[p].tolist() == docs[s].tolist() for p, s in zip(plain, sources, strict=True))
    found = [docs[p].tolist() == docs[s].tolist() for p, s in zip(positions[:, 0], sources, strict=True)]
    assert all(found)  # deleting the inserted token rebuilds the source exactly: cosine 1


class CountingCodec:
    """The real codec, counting the sequences each ``encode`` call is given."""

    def __init__(self, codec) -> None:
        self.codec, self.calls = codec, []

    def encode(self, sequences):
        self.calls.append(len(sequences))
        return self.codec.encode(sequences)


def test_only_queries_with_a_near_tie_encode_their_shorter_variants(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    queries = [np.insert(d, 1, 5) for d in docs[:60]]
    gate = 0.02
    plain = cosines(tiny_codec, norm, codes, queries)
    tied = (plain >= plain.max(axis=1, keepdims=True) - gate).sum(axis=1) > 1
    assert 0 < tied.sum() < len(queries)  # some queries have a near tie, some do not
    counting = CountingCodec(tiny_codec)
    got = seqcodec.CodeSearch.over(counting, codes, norm, gate=gate).scores(queries)
    # One call for the queries, one for the variants: one per token of each tied query, none for the rest.
    assert counting.calls == [len(queries), sum(len(q) for q, t in zip(queries, tied, strict=True) if t)]
    np.testing.assert_array_equal(got[~tied], plain[~tied])


def test_with_the_indexed_tokens_a_dropped_token_no_longer_hides_its_source_behind_a_near_tie(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    queries, sources = hidden_behind_near_ties(
        tiny_codec, norm, codes, docs, lambda d, rng: np.delete(d, rng.integers(len(d))), 4)
    assert len(queries) >= 3
    without = seqcodec.CodeSearch.over(tiny_codec, codes, norm, gate=0.05, margin=0.0).nearest(queries, k=1)[0]
    found = seqcodec.CodeSearch.over(tiny_codec, codes, norm, docs, gate=0.05, margin=0.0).nearest(queries, k=1)[0]
    assert not all(docs[p].tolist() == docs[s].tolist() for p, s in zip(without[:, 0], sources, strict=True))
    # Deleting the dropped token from the source rebuilds the query exactly: cosine 1.
    assert all(docs[p].tolist() == docs[s].tolist() for p, s in zip(found[:, 0], sources, strict=True))


def test_with_the_indexed_tokens_only_tied_longer_rows_change_each_to_its_best_shorter_variant(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    queries = [np.delete(d, 1) for d in docs[:40]]
    gate, margin = 0.2, 0.01
    plain = cosines(tiny_codec, norm, codes, queries)
    by_queries = seqcodec.CodeSearch.over(tiny_codec, codes, norm, gate=gate, margin=margin).scores(queries)
    got = seqcodec.CodeSearch.over(tiny_codec, codes, norm, docs, gate=gate, margin=margin).scores(queries)
    near = plain >= plain.max(axis=1, keepdims=True) - gate
    np.testing.assert_array_equal(got[~near], plain[~near])
    changed = 0
    for i, query in enumerate(queries):
        for r in np.flatnonzero(near[i]):
            if near[i].sum() > 1 and len(docs[r]) > len(query):
                rows = [np.delete(docs[r], j) for j in range(len(docs[r]))]
                best = float((norm(tiny_codec.encode(rows)) @ norm(tiny_codec.encode([query]))[0]).max())
                np.testing.assert_allclose(got[i, r], max(by_queries[i, r], best - margin), rtol=1e-6)
                changed += got[i, r] > by_queries[i, r]
            else:  # a single best code, or a row no longer than the query: the queries' variants alone
                assert got[i, r] == by_queries[i, r]
    assert changed  # some ties were settled by a longer row's shorter variant


def test_indexed_tokens_out_of_step_with_the_codes_are_refused(tiny_codec, corpus):
    docs, codes = corpus
    norm = seqcodec.CodeNormalization.fit(codes)
    with pytest.raises(ValueError, match="token sequences for"):
        seqcodec.CodeSearch.over(tiny_codec, codes, norm, docs[:-1])
    with pytest.raises(ValueError, match="not in the same order"):
        seqcodec.CodeSearch.over(tiny_codec, codes, norm, docs[1:] + docs[:1])
