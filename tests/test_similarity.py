"""seqcodec.CodeNormalization on real codes of a (tiny) codec: what each kind does to them."""

import numpy as np
import pytest
from conftest import TINY, random_sequences

import seqcodec


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
