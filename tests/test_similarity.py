"""seqcodec.CodeNormalization on real codes of a (tiny) codec: what each kind does to them."""

import json
import math

import numpy as np
import pytest
from conftest import TINY, random_sequences

import seqcodec
from seqcodec.model.similarity import pair_whitening


@pytest.fixture(scope="module")
def codes(tiny_codec) -> np.ndarray:
    return tiny_codec.encode(random_sequences(300, TINY["vocab_size"], TINY["max_length"], seed=5))


def test_whitened_codes_are_unit_rows_with_equal_weight_in_every_direction(codes):
    norm = seqcodec.CodeNormalization.fit(codes)
    out = norm(codes)
    assert norm.kind == "whitened" and out.dtype == np.float32 and out.shape == (len(codes), TINY["hidden_size"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    # Before the rows are scaled to unit length the fitted codes have the identity covariance (eps 0), or
    # just under it where eps damps the directions of least variance.
    exact = seqcodec.CodeNormalization.fit(codes, eps=0)
    h = (codes[:, 1:].astype(np.float64) - exact.mean) @ exact.matrix
    np.testing.assert_allclose(np.cov(h, rowvar=False), np.eye(TINY["hidden_size"]), atol=1e-8)
    damped = np.diag(np.cov((codes[:, 1:].astype(np.float64) - norm.mean) @ norm.matrix, rowvar=False))
    assert np.all(damped <= 1 + 1e-9) and np.sort(damped)[-TINY["hidden_size"] // 2:].min() > 0.9
    # The length field takes no part: codes differing only in it come out the same.
    relabeled = codes.copy()
    relabeled[:, 0] += 3
    np.testing.assert_array_equal(norm(relabeled), out)


def test_raw_and_centered(codes):
    h = codes[:, 1:].astype(np.float64)
    raw = seqcodec.CodeNormalization.fit(codes, "raw")(codes)
    np.testing.assert_allclose(raw, h / np.linalg.norm(h, axis=1, keepdims=True), rtol=1e-6)
    centered = seqcodec.CodeNormalization.fit(codes, "centered")
    np.testing.assert_allclose(centered.mean, h.mean(axis=0))
    np.testing.assert_allclose(centered(codes)[:3], (lambda c: c / np.linalg.norm(c, axis=1, keepdims=True))(
        h[:3] - h.mean(axis=0)), rtol=1e-5)


def test_bad_uses_are_one_line_errors(codes):
    with pytest.raises(ValueError, match="one of raw, centered, whitened"):
        seqcodec.CodeNormalization.fit(codes, "pca")
    with pytest.raises(ValueError, match="at least 2 codes"):
        seqcodec.CodeNormalization.fit(codes[:1])
    norm = seqcodec.CodeNormalization.fit(codes)
    with pytest.raises(ValueError, match="fitted on 17-wide codes"):
        norm(np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="float array"):
        norm(codes.astype(np.int64))


def test_pair_whitening_evens_out_what_edits_do_and_finds_the_copies_raw_cosine_misses():
    """Copies that an edit moves far along one direction: raw cosine takes them for other rows; after
    ``pair_whitening`` (fitted on other pairs) their moves have unit variance and each finds its row."""
    rng = np.random.default_rng(3)

    def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.normal(size=(n, 8))
        moves = 0.05 * rng.normal(size=(n, 8))
        moves[:, 0] += 3 * rng.normal(size=n)  # the direction edits move codes along
        return rows, rows + moves

    fit_rows, fit_near = pairs(5000)
    matrix = pair_whitening(fit_rows, fit_near, eps=0)
    moved = (fit_near - fit_rows) @ matrix
    np.testing.assert_allclose(moved.T @ moved / len(moved), np.eye(8), atol=1e-8)
    rows, near = pairs(300)

    def found(m: np.ndarray) -> float:
        index, queries = (x @ m / np.linalg.norm(x @ m, axis=1, keepdims=True) for x in (rows, near))
        return float(((queries @ index.T).argmax(axis=1) == np.arange(len(rows))).mean())

    assert found(np.eye(8)) < 0.5 and found(matrix) > 0.95
    assert found(pair_whitening(fit_rows, fit_near)) > 0.95  # the default floor changes nothing here


def test_the_near_duplicate_bench_calls_a_cell_behind_only_when_its_misses_are_unlikely_by_chance():
    from bench.near_duplicates import behind_p  # (queries only the baseline finds, only the method finds)

    assert behind_p(0, 0) == 1.0
    assert behind_p(5, 0) == 1 / 32 and behind_p(8, 0) == 1 / 256  # every such query went the baseline's way
    assert behind_p(5, 5) == sum(math.comb(10, k) for k in range(5, 11)) / 1024  # a tie is no evidence
    assert behind_p(3, 0) > 0.05 > behind_p(5, 0)  # 3 queries behind is chance; 5 of 5 is not
    assert behind_p(40, 20) < 0.01 < behind_p(12, 6)  # the same share is evidence only in numbers


def test_the_near_duplicate_bench_pools_runs_per_edit_kind_and_count(tmp_path):
    from bench.near_duplicates import behind_p, pooled

    def cell(sources: str, only_tfidf: int, only_codes: int) -> str:
        return json.dumps({"kind": "inserted", "edits": 3, "sources": sources, "queries": 1000,
                           "method": "codes:learned", "only_tfidf": only_tfidf, "only_codes": only_codes})

    runs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    runs[0].write_text(cell("training", 4, 1) + "\n" + cell("held_out", 3, 2) + "\n" + '{"seconds": 14}\n')
    runs[1].write_text(cell("training", 5, 0) + "\n")
    [row] = pooled([str(path) for path in runs])
    assert (row["queries"], row["cells"], row["only_tfidf"], row["only_codes"]) == (3000, 3, 12, 3)
    assert row["behind_tfidf_p"] == round(behind_p(12, 3), 4) < 0.05 < behind_p(4, 1)  # evidence only pooled


def test_the_near_duplicate_bench_tells_misses_for_a_near_identical_sentence_apart():
    from bench.near_duplicates import near_pairs

    docs = [np.array(d) for d in ([1, 2, 3, 4, 5], [1, 2, 9, 4, 5], [1, 2, 3, 4], [7, 8, 9, 6, 5])]
    sources = np.array([0, 0, 0, 0])
    scores = np.eye(4)  # query i picks document i first
    # Misses for a replaced word (1 edit) and a dropped one count; a sentence 4 edits away does not.
    assert near_pairs(np.array([False, True, True, True]), scores, sources, docs) == 2
    assert near_pairs(np.array([False, False, False, True]), scores, sources, docs) == 0


def test_the_near_duplicate_bench_pools_no_query_twice(tmp_path):
    """Runs of one training seed and one query draw ask the same queries: pooled, they would count twice."""
    from bench.near_duplicates import pooled, queries_digest

    queries = [np.array([3, 1, 2]), np.array([5, 4])]
    assert queries_digest(queries) == queries_digest([q.copy() for q in queries])
    assert queries_digest(queries) != queries_digest([np.array([3, 1]), np.array([2, 5, 4])])

    def run(name: str, asked: list[np.ndarray]) -> str:
        path = tmp_path / name
        path.write_text(json.dumps({"kind": "inserted", "edits": 3, "sources": "training", "queries": 2,
                                    "method": "codes:learned", "only_tfidf": 1, "only_codes": 0,
                                    "queries_digest": queries_digest(asked)}) + "\n")
        return str(path)

    first, other = run("a.jsonl", queries), run("b.jsonl", queries[::-1])
    assert pooled([first, other])[0]["queries"] == 4
    with pytest.raises(ValueError, match="a.jsonl and .*c.jsonl asked the same queries"):
        pooled([first, other, run("c.jsonl", queries)])


def test_the_near_duplicate_bench_swaps_words_only_where_a_swap_changes_the_sentence():
    from bench.near_duplicates import edit

    rng, words, frequency = np.random.default_rng(0), np.arange(4), np.full(4, 0.25)
    np.testing.assert_array_equal(edit(np.array([2] * 10), "swapped", 3, rng, words, frequency), [2] * 10)
    swapped = edit(np.array([1, 1, 3, 1]), "swapped", 1, rng, words, frequency)
    assert sorted(swapped) == [1, 1, 1, 3] and list(swapped) != [1, 1, 3, 1]
