"""Codes normalized for similarity search (``seqcodec.CodeNormalization``): fitted on the codes to search, or learned.

Cosine similarity on raw ``h`` (the code without its length field) is dominated by directions that
all codes share; whitening, fitted on the codes to be searched, weighs every direction alike. A model
trained with ``--near-duplicates`` also keeps a linear map of ``h`` under which near duplicates are
near (``search.npy`` in its directory, ``CodeNormalization.from_model``): the map its contrastive loss
learned, then ``pair_whitening`` fitted on its training rows and edited copies of them. ``bench/near_duplicates.py``
measures them all against TF-IDF (docs/MODEL.md).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np

from seqcodec.model.manifest import ModelDirError, read_checked, read_manifest

NORMALIZATIONS = ("raw", "centered", "whitened")
SEARCH_FILE = "search.npy"  # the learned map of h, (H, H) float32, written by training with --near-duplicates
PAIR_EPS = 3e-3  # ``pair_whitening``: the share of the largest variance added to each (docs/MODEL.md)


@dataclasses.dataclass(frozen=True)
class CodeNormalization:
    """A transform of codes for cosine search: ``norm = CodeNormalization.fit(codes)``, then ``norm(codes)``.

    Fit it on the codes you search (e.g. a night's codes) and apply it to them and to every query;
    the results are unit rows, so ``index @ queries.T`` is their cosine similarity. Codes are
    ``(N, hidden_size + 1)`` as ``SequenceCodec.encode`` and the jobs write them; the length field
    (column 0) is left out. ``mean`` and ``matrix`` are plain arrays: keep them (``np.savez``) to
    apply the same transform later.
    """

    kind: str
    mean: np.ndarray  # (H,): subtracted first (zeros for "raw")
    matrix: np.ndarray  # (H, H): applied after ("raw", "centered": the identity)

    @classmethod
    def fit(cls, codes: np.ndarray, kind: str = "whitened", eps: float = 1e-3) -> CodeNormalization:
        """Learn the transform from ``codes``.

        ``raw``: ``h`` as it is; ``centered``: minus the mean ``h``; ``whitened`` (the default):
        centered, rotated onto the principal axes of ``h`` and each scaled to unit variance, with
        ``eps`` of the largest variance added first so that near-empty directions are not blown up
        into noise.
        """
        if kind not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {kind!r}")
        h = _state(codes)
        if len(h) < 2:
            raise ValueError(f"fitting a normalization needs at least 2 codes, got {len(h)}")
        size = h.shape[1]
        if kind == "raw":
            return cls(kind, np.zeros(size), np.eye(size))
        mean = h.mean(axis=0)
        if kind == "centered":
            return cls(kind, mean, np.eye(size))
        return cls(kind, mean, whitening(np.cov(h - mean, rowvar=False), eps))

    @classmethod
    def from_model(cls, model_dir: str | os.PathLike) -> CodeNormalization:
        """The map of ``h`` that a model trained with ``--near-duplicates`` learned (kind ``learned``).

        Nothing to fit: apply it to the codes you search and to every query. ModelDirError (one line)
        if the model has none or its file does not match the manifest.
        """
        manifest = read_manifest(model_dir)
        name = manifest.extra.get("search")
        if not name:
            raise ModelDirError(f"model directory {os.fspath(model_dir)}: no learned search map (models trained "
                                "with --near-duplicates have one; fit a normalization instead)")
        matrix = np.load(io.BytesIO(read_checked(model_dir, manifest, name)), allow_pickle=False)
        if matrix.shape != (manifest.config.hidden_size, manifest.config.hidden_size):
            raise ModelDirError(f"model directory {os.fspath(model_dir)}: {name} is {matrix.shape}, not "
                                f"({manifest.config.hidden_size}, {manifest.config.hidden_size})")
        return cls("learned", np.zeros(matrix.shape[0]), matrix.astype(np.float64))

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        """The codes' ``h`` transformed, as float32 unit rows ``(N, hidden_size)``."""
        h = _state(codes)
        if h.shape[1] != self.mean.size:
            raise ValueError(f"codes are {h.shape[1] + 1} wide, this normalization was fitted on "
                             f"{self.mean.size + 1}-wide codes")
        out = (h - self.mean) @ self.matrix
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def pair_whitening(vectors: np.ndarray, near: np.ndarray, eps: float = PAIR_EPS) -> np.ndarray:
    """The (H, H) map under which ``near - vectors`` (rows and their near duplicates) have unit variance in
    every direction, ``eps`` of the largest added first: directions that edits move codes along count
    less in a cosine, directions that tell rows apart more."""
    moves = np.asarray(near, np.float64) - np.asarray(vectors, np.float64)
    return whitening(moves.T @ moves / max(len(moves), 1), eps)


def whitening(second_moment: np.ndarray, eps: float) -> np.ndarray:
    """The (H, H) map that turns ``second_moment`` into the identity: its principal axes, each scaled to unit
    variance after ``eps`` of the largest variance is added, so that near-empty directions are not blown up."""
    variance, axes = np.linalg.eigh(second_moment)
    variance = np.maximum(variance, 0.0)  # eigh may return tiny negative values for flat directions
    return axes / np.sqrt(variance + eps * variance.max())


def _state(codes: np.ndarray) -> np.ndarray:
    """``h`` of (N, H + 1) codes as float64; ValueError for anything else."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] < 2 or not np.issubdtype(codes.dtype, np.floating):
        raise ValueError(f"expected codes as an (N, hidden_size + 1) float array, got {codes.dtype} {codes.shape}")
    return codes[:, 1:].astype(np.float64)
