"""Greedy decoding in numpy: tokens from codes and the saved decoder alone, without TensorFlow.

The arithmetic is ``model/fused.fused_decoder``'s, for both decoders: a step's input projection is
``h0 @ W`` (once per row) plus rows gathered from the position and steps-to-go tables (and, for the
autoregressive decoder, from a table of the previous token), so only ``h @ U`` and the output layer
are left in the loop; the token is the argmax of the logits. Batches run in parallel threads, as in
``numpy_encoder``. Two uses:

- ``SequenceCodec.decode`` runs it on the Keras layers' current weights (``fused.numpy_decoder_weights``);
- ``load_decoder`` builds it straight from ``decoder.keras``, so a decode job's workers never import
  TensorFlow (beam search and ``--xla`` still load the Keras model).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from seqcodec.model.batches import FlatTokens, check_codes, split_flat, token_batches
from seqcodec.model.config import DEFAULT_TOKEN_BUDGET, START_ID, CodecConfig
from seqcodec.model.manifest import DECODER_FILE, read_manifest
from seqcodec.model.numpy_encoder import (
    NumpyPart,
    gate_columns,
    gemm_rows,
    load_part,
    lstm_update,
    open_keras_file,
    run_batches,
    standard_lstm,
)


@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    """The decoder's step, folded; gate columns as ``numpy_encoder.gate_columns`` leaves them.

    ``code`` and ``bias`` project ``h0`` once per row; ``position``/``remaining`` (position signal) and
    ``previous`` (autoregressive: one row per shifted previous token) are added per step;
    ``initial`` is the autoregressive decoder's (kernel, bias) of ``initial_h`` and of ``initial_c``.
    ``output`` is the output layer's kernel with its bias as one more row, multiplied by ``[h, 1]``;
    for a low-rank kernel (``--tie-output`` trains one of rank at most the embedding's width) it is
    ``output_left @ output`` in factors, multiplied as ``[h @ output_left, 1] @ output``, fewer operations.
    """

    code: np.ndarray
    bias: np.ndarray
    recurrent: np.ndarray
    output: np.ndarray
    position: np.ndarray | None = None
    remaining: np.ndarray | None = None
    previous: np.ndarray | None = None
    initial: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    output_left: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, lstm: tuple[np.ndarray, np.ndarray, np.ndarray], dense: tuple[np.ndarray, np.ndarray],
                    steps: tuple[np.ndarray, np.ndarray] | None = None, embedding: np.ndarray | None = None,
                    initial: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                    factor: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray] | None] | None = None) -> (
            DecoderWeights):
        """From the arrays as Keras keeps them: the LSTM's (kernel, recurrent kernel, bias), the output
        layer's (kernel, bias), the steps layer's (position, remaining) if it has them, and the
        autoregressive decoder's previous-token embedding and ``initial_h``/``initial_c``. ``factor``
        splits the output kernel (default ``low_rank_factors``; ``CachedFactors`` for repeated reads)."""
        kernel, rec, bias = (np.asarray(a, np.float32) for a in lstm)
        units = rec.shape[0]
        w_code = gate_columns(kernel[:units])

        def table(rows: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(rows, np.float32) @ w_code)

        factors = (factor or low_rank_factors)(np.asarray(dense[0], np.float32))
        left, right = factors if factors is not None else (None, dense[0])
        return cls(
            code=w_code, bias=gate_columns(bias), recurrent=gate_columns(rec),
            output=np.ascontiguousarray(np.vstack([right, dense[1][None]]), np.float32), output_left=left,
            position=None if steps is None else table(steps[0]),
            remaining=None if steps is None else table(steps[1]),
            previous=None if embedding is None else gate_columns(np.asarray(embedding, np.float32) @ kernel[units:]),
            initial=None if initial is None else tuple(
                (np.asarray(k, np.float32), np.asarray(b, np.float32)) for k, b in initial),
        )


def low_rank_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(left, right) with ``left @ right == kernel`` to float32 rounding, if the kernel's rank is low
    enough for the two products to cost under 0.9 of one; else None.

    Singular values below 1e-5 of the largest are float32 rounding of a product of narrower matrices
    (a tied output layer's ``projection @ rows.T``), not part of the map: dropping them changes the
    logits by about as much as summing in another order does.
    """
    width, vocab = kernel.shape
    u, s, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
    rank = int((s > s[0] * 1e-5).sum()) if s.size and s[0] > 0 else 0
    if rank == 0 or rank * (width + 1 + vocab) >= 0.9 * (width + 1) * vocab:
        return None
    return (np.ascontiguousarray(u[:, :rank] * s[:rank], np.float32),
            np.ascontiguousarray(vt[:rank], np.float32))


class CachedFactors:
    """``low_rank_factors`` that runs its SVD (~60 ms for 192 x 4,000) again only when the kernel changed:
    a codec on live Keras weights reads them at every ``decode`` call, and most calls see the same ones."""

    def __init__(self) -> None:
        self.last: tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None] | None = None

    def __call__(self, kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        last = self.last  # one read: another thread may replace the pair meanwhile
        if last is not None and np.array_equal(last[0], kernel):
            return last[1]
        factors = low_rank_factors(kernel)
        self.last = (kernel.copy(), factors)
        return factors


def decode_codes(weights: DecoderWeights, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """codes (batch, hidden + 1) and their lengths -> greedy token ids (batch, longest length) int32."""
    if codes.shape[0] == 1:  # as numpy_encoder.encode_ids: GEMM, not GEMV, for bit-identical rows
        return decode_codes(weights, gemm_rows(codes), gemm_rows(lengths))[:1]
    rows = codes.shape[0]
    steps = int(lengths.max(initial=0))
    state = np.ascontiguousarray(codes[:, 1:], np.float32)
    units = state.shape[1]
    base = state @ weights.code
    base += weights.bias
    if weights.initial is not None:
        (kernel_h, bias_h), (kernel_c, bias_c) = weights.initial
        h = np.tanh(state @ kernel_h + bias_h)
        c = state @ kernel_c + bias_c
    else:
        h = np.zeros_like(state)
        c = np.zeros_like(state)
    tokens = np.zeros((rows, steps), np.int32)
    previous = np.full(rows, START_ID, np.int64) if weights.previous is not None else None
    last = None if weights.remaining is None else weights.remaining.shape[0] - 1
    z = np.empty_like(base)
    left = weights.output_left
    # [h, 1] (or [h @ left, 1]): the output layer's bias rides in its matmul
    h_one = np.ones((rows, units + 1 if left is None else left.shape[1] + 1), np.float32)
    logits = np.empty((rows, weights.output.shape[1]), np.float32)
    for t in range(steps):
        np.matmul(h, weights.recurrent, out=z)
        z += base
        if previous is not None:
            z += weights.previous[previous]
        if last is not None:
            z += weights.position[t]
            z += weights.remaining[np.clip(lengths - 1 - t, 0, last)]
        h, c = lstm_update(z, c)
        if left is None:
            h_one[:, :units] = h
        else:
            np.matmul(h, left, out=h_one[:, :-1])
        np.matmul(h_one, weights.output, out=logits)
        token = logits.argmax(axis=1)
        tokens[:, t] = token
        if previous is not None:
            previous = token + 1
    return tokens


class NumpyDecoder(NumpyPart):
    """Length-prefixed codes -> token sequences with the numpy step, as ``SequenceCodec.decode`` returns them.

    ``weights`` returns ``DecoderWeights``; codes are batched by length as rows are in ``NumpyPart``.
    """

    def decode(self, codes: np.ndarray) -> list[np.ndarray]:
        """Length-prefixed codes -> token sequences (int32), each exactly ``code[0]`` long."""
        return split_flat(*self.decode_flat(codes))

    def decode_flat(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ``decode``, returning (values, offsets) in Arrow's list layout."""
        codes = np.asarray(codes)
        lengths = check_codes(codes, self.config)
        out = FlatTokens(lengths)
        weights = self.weights()

        def run(rows: np.ndarray) -> None:
            out.put(rows, decode_codes(weights, codes[rows], lengths[rows]))

        run_batches(run, token_batches(lengths, self.token_budget, self.batch_size), self.threads)
        return out.values, out.offsets


# -- loading from a model directory without TensorFlow ----------------------------------------------

_LAYERS = {"InputLayer", "Embedding", "Dropout", "DecoderSteps", "CodeState", "Concatenate", "Dense", "LSTM"}


def _keras_paths(layers: list[dict[str, Any]]) -> dict[str, str]:
    """Layer name -> where ``model.weights.h5`` keeps its variables (numbered per class, in layer order)."""
    seen: dict[str, int] = {}
    paths = {}
    for layer in layers:
        # keras.src.utils.naming.to_snake_case, as Keras names the groups
        snake = re.sub(r"\W+", "", layer["class_name"])
        snake = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", snake)
        snake = re.sub("([a-z])([A-Z])", r"\1_\2", snake).lower()
        count = seen.get(snake, -1) + 1
        seen[snake] = count
        paths[layer["config"]["name"]] = f"layers/{snake}" + (f"_{count}" if count else "")
    return paths


def read_decoder_weights(path: str | os.PathLike, config: CodecConfig) -> DecoderWeights | None:
    """The weights of a saved standard decoder (``decoder.keras``), or None if it is another structure."""
    model_config, weights_file = open_keras_file(path)
    with weights_file:
        layers = model_config.get("config", {}).get("layers", [])
        if not layers or any(layer.get("class_name") not in _LAYERS for layer in layers):
            return None
        by_name = {layer["config"].get("name"): layer["config"] for layer in layers}
        lstm, dense = by_name.get("decoder_lstm"), by_name.get("token_probs")
        autoregressive = config.decoder == "autoregressive"
        if (lstm is None or dense is None or not standard_lstm(lstm) or not lstm.get("return_sequences")
                or dense.get("activation") != "softmax" or "steps" not in by_name):
            return None
        if autoregressive and (by_name.get("initial_h", {}).get("activation") != "tanh"
                               or by_name.get("initial_c", {}).get("activation") != "linear"
                               or "previous_embedding" not in by_name):
            return None
        paths = _keras_paths(layers)

        def arrays(name: str, count: int) -> tuple[np.ndarray, ...]:
            return tuple(weights_file[f"{paths[name]}{'/cell' if name == 'decoder_lstm' else ''}/vars/{i}"][()]
                         for i in range(count))

        try:
            lstm_arrays, dense_arrays = arrays("decoder_lstm", 3), arrays("token_probs", 2)
            steps = arrays("steps", 2) if config.position_signal else None
            embedding = arrays("previous_embedding", 1)[0] if autoregressive else None
            initial = (arrays("initial_h", 2), arrays("initial_c", 2)) if autoregressive else None
        except KeyError:
            return None
    units, extra = config.hidden_size, config.embedding_size if autoregressive else 0
    shapes = [(lstm_arrays[0].shape, (units + extra, 4 * units)), (lstm_arrays[1].shape, (units, 4 * units)),
              (dense_arrays[0].shape, (units, config.vocab_size))]
    if steps is not None:
        shapes += [(steps[0].shape, (config.max_length, units)), (steps[1].shape, (config.max_length, units))]
    if embedding is not None:
        shapes += [(embedding.shape, (config.vocab_size + 2, config.embedding_size))]
        shapes += [(k.shape, (units, units)) for k, _ in initial]
    if any(tuple(got) != want for got, want in shapes):
        return None
    return DecoderWeights.from_arrays(lstm_arrays, dense_arrays, steps, embedding, initial)


def load_decoder(model_dir: str | os.PathLike, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 batch_size: int | None = None, threads: int = 0, beam_width: int = 1) -> NumpyDecoder | None:
    """A model directory's greedy decoder as a NumpyDecoder, without TensorFlow; None where that cannot be done.

    As ``numpy_encoder.load_encoder``: only for a manifest recording ``decoder.keras``'s sha256 and a
    file that still has it; otherwise None, and ``load_codec`` checks everything. Also None when
    ``beam_width`` asks an autoregressive model for beam search, which runs in TensorFlow.
    """
    if read_manifest(model_dir).config.beam_width(beam_width) > 1:
        return None
    return load_part(NumpyDecoder, DECODER_FILE, read_decoder_weights, model_dir, token_budget, batch_size, threads)
