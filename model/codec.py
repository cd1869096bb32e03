"""Batched encode and decode with numpy in and out: validation, padding and length bucketing live here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqcodec.model.config import CodecConfig
from seqcodec.model.network import greedy_decoder
from seqcodec.model.tfenv import keras, tf

DEFAULT_BATCH_SIZE = 512


def flatten(sequences: Sequence[np.ndarray] | Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """List of token sequences -> (values, offsets) in Arrow's list layout; rejects non-integer tokens."""
    arrays = [np.asarray(s) for s in sequences]
    for i, a in enumerate(arrays):
        if a.ndim != 1:
            raise ValueError(f"sequence {i}: expected a 1-D list of token ids, got shape {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"sequence {i}: token ids must be integers, got {a.dtype}")
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
    return values, offsets


def ragged_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows of the given lengths, the (row, column) of every element in row-major order."""
    row_of = np.repeat(np.arange(lengths.size), lengths)
    col_of = np.arange(row_of.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row_of, col_of


def pad_shifted(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Right-pad the given rows into an int32 matrix of ids + 1 (0 marks padding), as wide as the longest."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    out = np.zeros((rows.size, int(lengths.max(initial=0))), dtype=np.int32)
    row_of, col_of = ragged_positions(lengths)
    out[row_of, col_of] = values[starts[row_of] + col_of] + 1
    return out


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (stable sort), so padding stays small."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


class SequenceCodec:
    """A trained encoder/decoder pair behind a numpy API.

    ``encode(sequences) -> float32 (N, hidden + 1)`` and ``decode(codes) -> list of int arrays``.
    Inputs are sorted by length, cut into batches, padded per batch and run through compiled
    functions; results come back in input order and equal one-at-a-time results.
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        config: CodecConfig,
        fingerprint: str = "",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.config = config
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.manifest = None  # the model directory's Manifest, when loaded from one
        # One trace each for any batch shape: keras' predict() costs milliseconds per call.
        self._encode_fn = tf.function(
            lambda ids: encoder(ids, training=False),
            input_signature=[tf.TensorSpec([None, None], tf.int32)],
        )
        if config.decoder == "autoregressive":
            decode = greedy_decoder(decoder, config)
        else:
            def decode(codes: tf.Tensor) -> tf.Tensor:
                return tf.argmax(decoder(codes, training=False), axis=-1, output_type=tf.int32)
        self._decode_fn = tf.function(decode, input_signature=[tf.TensorSpec([None, config.code_size], tf.float32)])

    # -- encode ---------------------------------------------------------------------------------

    def encode(self, sequences: Sequence[np.ndarray] | Sequence[Sequence[int]]) -> np.ndarray:
        """Token sequences -> length-prefixed codes, float32 of shape (N, hidden + 1)."""
        return self.encode_flat(*flatten(sequences))

    def encode_flat(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Like ``encode`` for sequences in Arrow's list layout (flat ``values``, N + 1 ``offsets``)."""
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        self.check_sequences(values, offsets)
        codes = np.empty((lengths.size, self.config.code_size), dtype=np.float32)
        for rows in length_batches(lengths, self.batch_size):
            codes[rows] = self._encode_fn(tf.constant(pad_shifted(values, offsets, rows))).numpy()
        return codes

    def check_sequences(self, values: np.ndarray, offsets: np.ndarray) -> None:
        """Raise ValueError naming the first bad sequence: empty, too long, or an id out of range."""
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got {values.dtype}")
        lengths = np.diff(offsets)
        if (lengths == 0).any():
            raise ValueError(f"sequence {int(np.argmax(lengths == 0))}: empty sequence")
        too_long = lengths > self.config.max_length
        if too_long.any():
            i = int(np.argmax(too_long))
            raise ValueError(
                f"sequence {i}: length {int(lengths[i])} is over the model's max_length {self.config.max_length}"
            )
        bad = (values < 0) | (values >= self.config.vocab_size)
        if bad.any():
            pos = int(np.argmax(bad))
            row = int(np.searchsorted(offsets, pos, side="right") - 1)
            raise ValueError(
                f"sequence {row}: token id {int(values[pos])} is outside [0, {self.config.vocab_size})"
            )

    # -- decode ---------------------------------------------------------------------------------

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Length-prefixed codes -> token sequences (int32), each exactly ``code[0]`` long."""
        values, offsets = self.decode_flat(codes)
        return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def decode_flat(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``decode``, returning (values, offsets) in Arrow's list layout."""
        codes = np.asarray(codes)
        lengths = self.check_codes(codes)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.int32)
        for rows in length_batches(lengths, self.batch_size):
            tokens = self._decode_fn(tf.constant(codes[rows], dtype=tf.float32)).numpy()
            # Both decoders are causal and row-independent, so cutting each row back to its own length is exact.
            row_of, col_of = ragged_positions(lengths[rows])
            values[offsets[rows][row_of] + col_of] = tokens[row_of, col_of]
        return values, offsets

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate codes and return their lengths (int64); ValueError names the first bad row."""
        if codes.ndim != 2 or codes.shape[1] != self.config.code_size:
            raise ValueError(f"codes must have shape (N, {self.config.code_size}), got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.floating) and not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be numbers, got {codes.dtype}")
        codes = codes.astype(np.float64, copy=False)
        finite = np.isfinite(codes).all(axis=1)
        if not finite.all():
            raise ValueError(f"code {int(np.argmin(finite))}: contains NaN or infinity")
        length_field = codes[:, 0]
        ok = (length_field == np.round(length_field)) & (length_field >= 1) & (length_field <= self.config.max_length)
        if not ok.all():
            i = int(np.argmin(ok))
            raise ValueError(
                f"code {i}: length field {length_field[i]!r} is not an integer in [1, {self.config.max_length}]"
            )
        return length_field.astype(np.int64)
