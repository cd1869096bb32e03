"""The TensorFlow engine, for what numpy cannot run: networks of another structure (and the reference beam search).

Also ``keras_codec``, which puts a codec on live Keras models (tests, benchmarks): numpy steps on a
snapshot of their current weights where the structure is the standard one, Keras steps elsewhere.
Importing this module imports TensorFlow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import seqcodec.model.layers  # noqa: F401  (registers the custom layers before any .keras file is read)
from seqcodec.model import names
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import START_ID, CodecConfig
from seqcodec.model.engine import NumpyDecoder, NumpyEncoder
from seqcodec.model.errors import first_line
from seqcodec.model.manifest import DECODER_FILE, ENCODER_FILE, Manifest, ModelDirError
from seqcodec.model.tfenv import configure_threads, keras, tf
from seqcodec.model.weights import decoder_weights, encoder_weights, fingerprint, live_arrays

__all__ = ["KerasDecoder", "KerasEncoder", "configure_threads", "keras_codec", "load_keras_codec",
           "load_network_file"]


class KerasEncoder:
    """The encode step as the Keras encoder itself, one graph function for any batch shape."""

    parallel = False  # TensorFlow runs its own thread pools

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self._fn = tf.function(lambda ids: model(ids, training=False),
                               input_signature=[tf.TensorSpec([None, None], tf.int32)])

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self._fn(tf.constant(ids)).numpy()


class KerasDecoder:
    """The decode step on the Keras decoder: argmax (repeat), greedy steps or beam search (autoregressive)."""

    parallel = False

    def __init__(self, model: keras.Model, config: CodecConfig, beam_width: int = 1) -> None:
        self.model = model
        self.beam_width = config.beam_width(beam_width)
        if config.decoder != "autoregressive":
            def step(codes: Any) -> Any:
                return tf.argmax(model(codes, training=False), axis=-1, output_type=tf.int32)
        elif self.beam_width > 1:
            step = beam_decoder(model, config, self.beam_width)
        else:
            step = greedy_decoder(model, config)
        self._fn = tf.function(step, input_signature=[tf.TensorSpec([None, config.code_size], tf.float32)])

    def __call__(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return self._fn(tf.constant(codes, dtype=tf.float32)).numpy()


def _autoregressive_parts(decoder: keras.Model) -> tuple:
    """The autoregressive decoder's layers that one decoding step runs by hand."""
    return tuple(decoder.get_layer(name) for name in (names.STEPS, names.PREVIOUS_EMBEDDING, names.INITIAL_H,
                                                       names.INITIAL_C, names.DECODER_LSTM, names.TOKEN_PROBS))


def greedy_decoder(decoder: keras.Model, config: CodecConfig) -> Any:
    """codes (batch, hidden + 1) -> token ids (batch, longest length), int32, for a tf.function.

    Runs the autoregressive decoder's own layers one step at a time, each step fed the token it
    chose at the step before (argmax). Every row's steps use only that row, so a batch padded to
    its longest length gives each row the tokens it would get alone.
    """
    steps_layer, embedding, initial_h, initial_c, lstm, out = _autoregressive_parts(decoder)
    cell = lstm.cell

    def run(codes: tf.Tensor) -> tf.Tensor:
        inputs = steps_layer(codes)
        state = codes[:, 1:]
        h, c = initial_h(state), initial_c(state)
        count = tf.shape(inputs)[1]
        previous = tf.fill([tf.shape(codes)[0]], START_ID)
        tokens = tf.TensorArray(tf.int32, size=count)
        for t in tf.range(count):
            x = tf.concat([inputs[:, t], embedding(previous)], axis=-1)
            y, (h, c) = cell(x, [h, c], training=False)
            # argmax of the logits: the same choice as of the softmax, one exp over the vocabulary less
            token = tf.argmax(tf.matmul(y, out.kernel) + out.bias, axis=-1, output_type=tf.int32)
            tokens = tokens.write(t, token)
            previous = token + 1
        return tf.transpose(tokens.stack())

    return run


def beam_decoder(decoder: keras.Model, config: CodecConfig, width: int) -> Any:
    """codes (batch, hidden + 1) -> token ids (batch, longest length): beam search over ``width`` beams.

    Each row keeps the ``width`` most likely prefixes (sum of log-probabilities) and returns the
    best one of exactly its own length. Past a row's length its beams are frozen (only "token 0",
    at no cost, so they neither reorder nor duplicate), which keeps rows independent: a padded
    batch gives each row what it would get alone. ``width`` 1 chooses what greedy decoding does.
    """
    steps_layer, embedding, initial_h, initial_c, lstm, out = _autoregressive_parts(decoder)
    cell = lstm.cell
    vocab, units = config.vocab_size, config.hidden_size

    def run(codes: tf.Tensor) -> tf.Tensor:
        rows = tf.shape(codes)[0]
        lengths = tf.cast(codes[:, 0], tf.int32)
        beams = tf.repeat(codes, width, axis=0)  # (rows * width, code): beam j of row i at i * width + j
        inputs = steps_layer(beams)
        state = beams[:, 1:]
        h, c = initial_h(state), initial_c(state)
        count = tf.shape(inputs)[1]
        # Only beam 0 is alive at the start, or the first step would pick the same token width times.
        scores = tf.tile(tf.concat([[0.0], tf.fill([width - 1], -float("inf"))], 0)[None], [rows, 1])
        previous = tf.fill([rows * width], START_ID)
        chosen = tf.zeros([rows, width, count], tf.int32)
        frozen = tf.concat([[0.0], tf.fill([vocab - 1], -float("inf"))], 0)  # a finished beam's only "choice"
        for t in tf.range(count):
            x = tf.concat([inputs[:, t], embedding(previous)], axis=-1)
            y, (h, c) = cell(x, [h, c], training=False)
            log_p = tf.reshape(tf.nn.log_softmax(tf.matmul(y, out.kernel) + out.bias), [rows, width, vocab])
            active = (t < lengths)[:, None, None]
            total = scores[:, :, None] + tf.where(active, log_p, frozen)
            scores, best = tf.math.top_k(tf.reshape(total, [rows, width * vocab]), k=width)
            parent, token = best // vocab, best % vocab
            chosen = tf.gather(chosen, parent, batch_dims=1)
            chosen += token[:, :, None] * tf.one_hot(t, count, dtype=tf.int32)[None, None]
            h = tf.reshape(tf.gather(tf.reshape(h, [rows, width, units]), parent, batch_dims=1), [-1, units])
            c = tf.reshape(tf.gather(tf.reshape(c, [rows, width, units]), parent, batch_dims=1), [-1, units])
            previous = tf.reshape(token, [-1]) + 1
        return chosen[:, 0]  # top_k sorts: beam 0 is the most likely

    return run


def keras_codec(encoder: keras.Model, decoder: keras.Model, config: CodecConfig, *, beam_width: int = 1,
                fingerprint: str = "", **options: Any) -> SequenceCodec:
    """A codec on live Keras models: numpy steps on their weights as they are now (the standard structure),
    Keras steps otherwise. ``options``: SequenceCodec's batching and threads."""
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1, got {beam_width}")
    beam = config.beam_width(beam_width)
    encoder_found = encoder_weights(live_arrays(encoder), config)
    decoder_found = decoder_weights(live_arrays(decoder), config)
    return SequenceCodec(
        NumpyEncoder(encoder_found) if encoder_found is not None else KerasEncoder(encoder),
        NumpyDecoder(decoder_found, beam) if decoder_found is not None else KerasDecoder(decoder, config, beam),
        config, fingerprint, **options)


def load_network_file(model_dir: str, path: Path) -> keras.Model:
    """A saved network loaded by Keras in safe mode; ModelDirError (one line) if it cannot be."""
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many types for a damaged archive
        raise ModelDirError(f"model directory {model_dir}: {path.name} cannot be loaded ({first_line(exc)})") from None


def load_keras_codec(model_dir: str, local: str | os.PathLike, manifest: Manifest, *, beam_width: int = 1,
                     **options: Any) -> SequenceCodec:
    """A model directory whose networks only Keras can read: loaded by Keras, its fingerprint checked."""
    config = manifest.config
    encoder, decoder = (load_network_file(model_dir, Path(local) / name) for name in (ENCODER_FILE, DECODER_FILE))
    if encoder.output_shape[-1] != config.code_size or decoder.output_shape[-1] != config.vocab_size:
        raise ModelDirError(f"model directory {model_dir}: the saved networks do not match manifest.json")
    actual = fingerprint(config, live_arrays(encoder), live_arrays(decoder))
    if actual != manifest.fingerprint:
        raise ModelDirError(
            f"model directory {model_dir}: weights fingerprint {actual} does not match the manifest's "
            f"{manifest.fingerprint!r} (files changed or mixed from different models)"
        )
    codec = keras_codec(encoder, decoder, config, beam_width=beam_width, fingerprint=actual, **options)
    codec.manifest = manifest
    return codec
