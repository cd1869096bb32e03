"""The codec users hold: batched encode and decode with numpy in and out, on an engine's steps.

Validation, length-sorted token-budget batches and threads live here; the steps (one padded batch
each) come from the numpy engine (``engine.py``) or, where numpy cannot run a model, from TensorFlow
(``tf_engine.py``). Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from seqcodec.model.batches import (
    FlatTokens,
    check_codes,
    check_sequences,
    flatten,
    pad_shifted,
    split_flat,
    token_batches,
)
from seqcodec.model.config import DEFAULT_TOKEN_BUDGET, CodecConfig, threads_per_process
from seqcodec.model.engine import run_batches

if TYPE_CHECKING:
    from seqcodec.model.manifest import Manifest


class EncodeStep(Protocol):
    """One padded batch: shifted ids (rows, steps) int32, 0 = padding -> codes (rows, hidden + 1) float32."""

    parallel: bool  # whether batches may run in several threads at once

    def __call__(self, ids: np.ndarray) -> np.ndarray: ...


class DecodeStep(Protocol):
    """One batch: codes (rows, hidden + 1) and their lengths -> token ids (rows, longest length) int32."""

    parallel: bool
    beam_width: int  # rows the step runs per code: a batch of the same token budget holds fewer codes

    def __call__(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...


class SequenceCodec:
    """A trained encoder/decoder pair behind a numpy API.

    ``encode(sequences) -> float32 (N, hidden + 1)`` and ``decode(codes) -> list of int arrays``.
    Inputs are sorted by length and cut into batches of at most ``token_budget`` padded tokens (and
    ``batch_size`` rows, if given), each padded to its longest row; ``threads`` batches run at once
    (0: one per core) where the step allows it. Results come back in input order and equal
    one-at-a-time results, bit for bit on the numpy engine where the BLAS allows
    (``engine.bit_identical_batching``; else to float32 rounding).
    ``seqcodec.load`` builds one from a model directory (``loader.py``).
    """

    def __init__(self, encoder: EncodeStep, decoder: DecodeStep, config: CodecConfig, fingerprint: str = "", *,
                 token_budget: int = DEFAULT_TOKEN_BUDGET, batch_size: int | None = None, threads: int = 0,
                 manifest: Manifest | None = None) -> None:
        self.encoder, self.decoder, self.config, self.fingerprint = encoder, decoder, config, fingerprint
        self.token_budget, self.batch_size = token_budget, batch_size
        self.threads = threads_per_process(threads, 1)
        self.manifest = manifest  # the model directory's, when loaded from one

    @property
    def beam_width(self) -> int:
        return self.decoder.beam_width

    def _threads(self, step: EncodeStep | DecodeStep) -> int:
        return self.threads if step.parallel else 1

    # -- encode ---------------------------------------------------------------------------------

    def encode(self, sequences: Sequence[np.ndarray] | Sequence[Sequence[int]]) -> np.ndarray:
        """Token sequences -> length-prefixed codes, float32 of shape (N, hidden + 1)."""
        return self.encode_flat(*flatten(sequences))

    def encode_flat(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Like ``encode`` for sequences in Arrow's list layout (flat ``values``, N + 1 ``offsets``)."""
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        check_sequences(values, offsets, self.config)
        lengths = np.diff(offsets)
        codes = np.empty((lengths.size, self.config.code_size), dtype=np.float32)

        def run(rows: np.ndarray) -> None:
            codes[rows] = self.encoder(pad_shifted(values, offsets, rows))

        run_batches(run, token_batches(lengths, self.token_budget, self.batch_size), self._threads(self.encoder))
        return codes

    def check_sequences(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Raise ValueError naming the first bad sequence: empty, too long, or an id out of range."""
        check_sequences(values, offsets, self.config)

    # -- decode ---------------------------------------------------------------------------------

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Length-prefixed codes -> token sequences (int32), each exactly ``code[0]`` long."""
        return split_flat(*self.decode_flat(codes))

    def decode_flat(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``decode``, returning (values, offsets) in Arrow's list layout."""
        codes = np.asarray(codes)
        lengths = check_codes(codes, self.config)
        out = FlatTokens(lengths)

        def run(rows: np.ndarray) -> None:
            out.put(rows, self.decoder(codes[rows], lengths[rows]))

        budget = max(1, self.token_budget // self.decoder.beam_width)
        run_batches(run, token_batches(lengths, budget, self.batch_size), self._threads(self.decoder))
        return out.values, out.offsets

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate codes and return their lengths (int64); ValueError names the first bad row."""
        return check_codes(codes, self.config)
