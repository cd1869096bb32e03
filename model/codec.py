"""Batched encode and decode with numpy in and out: validation, padding and length bucketing live here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
from seqcodec.model.config import DEFAULT_TOKEN_BUDGET, CodecConfig
from seqcodec.model.fused import fused_decoder, fused_encoder, numpy_decoder_weights, numpy_encoder_weights
from seqcodec.model.network import beam_decoder, greedy_decoder
from seqcodec.model.numpy_decoder import NumpyDecoder
from seqcodec.model.numpy_encoder import NumpyEncoder
from seqcodec.model.tfenv import keras, tf

# Lengths are padded up to a multiple of this for XLA, so it compiles a few widths, not every length.
WIDTH_STEP = 4


class XlaSteps:
    """A step function compiled by XLA once per distinct input shape, with its compiles counted and timed.

    Callers keep the shapes few (bucketed lengths, a fixed set of batch rows), because every new
    shape costs a compile of seconds. ``compiles`` maps each shape seen to the seconds its first
    call took (trace, compile and one run).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = tf.function(fn, jit_compile=True)
        self.compiles: dict[tuple, float] = {}

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        key = tuple(a.shape for a in arrays)
        if key in self.compiles:
            return self.fn(*arrays).numpy()
        start = time.perf_counter()
        out = self.fn(*arrays).numpy()
        self.compiles[key] = time.perf_counter() - start
        return out

    @property
    def compile_seconds(self) -> float:
        return sum(self.compiles.values())


def bucket_widths(lengths: np.ndarray, step: int, cap: int) -> np.ndarray:
    """Lengths rounded up to a multiple of ``step`` (at most ``cap``): the few widths XLA compiles for."""
    return np.minimum(-(-lengths // step) * step, max(cap, 1))


def shape_plan(
    lengths: np.ndarray, token_budget: int, step: int, cap: int, spare: int = 0
) -> list[tuple[np.ndarray, int, int]]:
    """Fixed-shape batches for XLA: (row indices, width, padded rows), padded rows 0 for "run uncompiled".

    Rows are grouped by bucketed width and cut into full batches of ``token_budget // width`` rows
    (less ``spare`` rows kept free for padding). A partial last batch of a width is padded up to the
    full row count when it fills at least half of it; smaller ones would waste more than they gain,
    so they run through the shape-agnostic graph function instead.
    """
    widths = bucket_widths(lengths, step, cap)
    order = np.argsort(widths, kind="stable")
    cuts = np.flatnonzero(np.diff(widths[order])) + 1
    plan = []
    for group in np.split(order, cuts) if order.size else []:
        width = int(widths[group[0]])
        full = max(1 + spare, token_budget // width)
        per_batch = max(1, full - spare)
        for begin in range(0, group.size, per_batch):
            rows = group[begin : begin + per_batch]
            plan.append((rows, width, full if rows.size * 2 >= per_batch else 0))
    return plan


class SequenceCodec:
    """A trained encoder/decoder pair behind a numpy API.

    ``encode(sequences) -> float32 (N, hidden + 1)`` and ``decode(codes) -> list of int arrays``.
    Inputs are sorted by length and cut into batches of at most ``token_budget`` padded tokens
    (and ``batch_size`` rows, if given). Each batch is padded to its longest row. The standard
    encoder and the greedy decoder run as numpy, ``threads`` batches at once (``model/numpy_encoder.py``,
    ``model/numpy_decoder.py``; 0: one per core) on the folded steps of ``model/fused.py`` (with
    ``fused=False`` both run the Keras layers as they are; with ``numpy=False`` the folded steps run
    as TensorFlow graphs). With ``xla`` batches are padded to a few fixed shapes
    instead and run through XLA-compiled steps. Results come back in input order and equal
    one-at-a-time results: bit for bit on the numpy steps (``numpy_encoder.gemm_rows``), within 1e-5
    through XLA or the graphs.
    ``beam_width`` > 1 decodes an autoregressive model by beam search (``network.beam_decoder``).
    """

    def __init__(
        self,
        encoder: keras.Model,
        decoder: keras.Model,
        config: CodecConfig,
        fingerprint: str = "",
        batch_size: int | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        xla: bool = False,
        fused: bool = True,
        beam_width: int = 1,
        threads: int = 0,
        numpy: bool = True,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.config = config
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.manifest = None  # the model directory's Manifest, when loaded from one
        self.token_budget = token_budget
        self.xla = xla
        if beam_width < 1:
            raise ValueError(f"beam width must be >= 1, got {beam_width}")
        self.beam_width = config.beam_width(beam_width)

        def encode_step(ids: Any) -> Any:
            return encoder(ids, training=False)

        autoregressive = config.decoder == "autoregressive"
        if autoregressive and self.beam_width > 1:
            decode_step = beam_decoder(decoder, config, self.beam_width)
        elif autoregressive:
            decode_step = greedy_decoder(decoder, config)
        else:
            def decode_step(codes: Any) -> Any:
                return tf.argmax(decoder(codes, training=False), axis=-1, output_type=tf.int32)

        fused_encode = fused_decode = None
        if fused:  # networks of another structure keep their Keras steps
            fused_encode = fused_encoder(encoder, config)
            # Beam search keeps its own step loop (network.beam_decoder); greedy decoding is folded.
            fused_decode = fused_decoder(decoder, config) if self.beam_width == 1 else None
            encode_step, decode_step = fused_encode or encode_step, fused_decode or decode_step
        self.fused = fused_encode is not None
        # Outside XLA the standard encoder and greedy decoder run as numpy, batches in parallel threads
        # (numpy_encoder.py, numpy_decoder.py); numpy=False keeps the TensorFlow graphs of the fused
        # steps (benchmarks compare the two).
        weights = numpy_encoder_weights(encoder) if self.fused and numpy else None
        self.numpy_encoder = None if weights is None else NumpyEncoder(
            weights, config, fingerprint, token_budget, batch_size, threads)
        decoder_weights = numpy_decoder_weights(decoder, config) if fused_decode is not None and numpy else None
        self.numpy_decoder = None if decoder_weights is None else NumpyDecoder(
            decoder_weights, config, fingerprint, token_budget, batch_size, threads)

        # One trace each for any batch shape: keras' predict() costs milliseconds per call.
        self._encode_fn = tf.function(encode_step, input_signature=[tf.TensorSpec([None, None], tf.int32)])
        self._decode_fn = tf.function(
            decode_step, input_signature=[tf.TensorSpec([None, config.code_size], tf.float32)]
        )
        self.xla_encode = XlaSteps(encode_step)
        self.xla_decode = XlaSteps(decode_step)

    def compile_stats(self) -> dict[str, Any]:
        """How many shapes XLA compiled and the seconds their first calls took, per step."""
        return {
            name: {"compiles": len(step.compiles), "seconds": round(step.compile_seconds, 3)}
            for name, step in (("encode", self.xla_encode), ("decode", self.xla_decode))
        }

    def _use_xla(self) -> bool:
        return self.xla and self.batch_size is None

    # -- encode ---------------------------------------------------------------------------------

    def encode(self, sequences: Sequence[np.ndarray] | Sequence[Sequence[int]]) -> np.ndarray:
        """Token sequences -> length-prefixed codes, float32 of shape (N, hidden + 1)."""
        return self.encode_flat(*flatten(sequences))

    def encode_flat(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Like ``encode`` for sequences in Arrow's list layout (flat ``values``, N + 1 ``offsets``)."""
        if self.numpy_encoder is not None and not self._use_xla():
            return self.numpy_encoder.encode_flat(values, offsets)
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        lengths = np.diff(offsets)
        self.check_sequences(values, offsets)
        codes = np.empty((lengths.size, self.config.code_size), dtype=np.float32)
        if not self._use_xla():
            for rows in token_batches(lengths, self.token_budget, self.batch_size):
                codes[rows] = self._encode_fn(tf.constant(pad_shifted(values, offsets, rows))).numpy()
            return codes
        for rows, width, padded in shape_plan(lengths, self.token_budget, WIDTH_STEP, self.config.max_length):
            ids = pad_shifted(values, offsets, rows)
            if not padded:
                codes[rows] = self._encode_fn(tf.constant(ids)).numpy()
                continue
            # Rows of padding only (all ids 0) keep a zero state and are dropped.
            fixed = np.zeros((padded, width), dtype=np.int32)
            fixed[: rows.size, : ids.shape[1]] = ids
            codes[rows] = self.xla_encode(fixed)[: rows.size]
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
        if self.numpy_decoder is not None and not self._use_xla():
            return self.numpy_decoder.decode_flat(codes)
        codes = np.asarray(codes)
        lengths = self.check_codes(codes)
        out = FlatTokens(lengths)
        for rows, tokens in self._decode_batches(codes, lengths):
            out.put(rows, tokens)
        return out.values, out.offsets

    def _decode_batches(self, codes: np.ndarray, lengths: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row indices, decoded token matrix) per batch, through XLA or the graph function."""
        # Beam search runs beam_width rows per code: the same budget of padded tokens holds fewer codes.
        budget = max(1, self.token_budget // self.beam_width)
        if not self._use_xla():
            for rows in token_batches(lengths, budget, self.batch_size):
                yield rows, self._decode_fn(tf.constant(codes[rows], dtype=tf.float32)).numpy()
            return
        # The decoder runs as many steps as the longest length field in the batch, so one spare
        # row always carries the bucket's width: the shape XLA sees is (rows, width) exactly.
        for rows, width, padded in shape_plan(lengths, budget, WIDTH_STEP, self.config.max_length, spare=1):
            if not padded:
                yield rows, self._decode_fn(tf.constant(codes[rows], dtype=tf.float32)).numpy()
                continue
            fixed = np.repeat(codes[rows[:1]].astype(np.float32), padded, axis=0)
            fixed[: rows.size] = codes[rows]
            fixed[rows.size :, 0] = width
            yield rows, self.xla_decode(fixed)

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate codes and return their lengths (int64); ValueError names the first bad row."""
        return check_codes(codes, self.config)
