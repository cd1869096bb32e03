"""Inference-only encode and decode steps with the LSTMs' input projections folded into lookup tables.

The same arithmetic as the Keras layers (gate order i, f, c, o; sigmoid gates, tanh), reassociated:

- encoder: ``embedding[id] @ W + b`` has one value per token id, so it is a (vocab + 1, 4U) table and
  each step gathers its row instead of multiplying; only ``h @ U`` is left in the loop, and both
  directions run in the same loop;
- decoder: its input is ``h0 + position[t] + remaining[to_go]``, so ``x @ W`` is ``h0 @ W`` (once per
  row) plus two (max_length, 4H) tables; the token is the argmax of the logits (softmax keeps the order);
  the autoregressive decoder's greedy loop also adds a (vocab + 2, 4H) table of the previous token.

That removes most of the multiply-adds (all of the encoder's input side, half of the decoder's
LSTM). Results match the Keras models within float32 rounding (tests/test_codec.py holds them to
1e-5). The fused steps return None for networks of another structure, which then run as they are.
``numpy_encoder_weights``/``numpy_decoder_weights`` hand the same folded weights, read from the live
Keras variables, to the numpy steps (``numpy_encoder.py``, ``numpy_decoder.py``) that run by default;
the TensorFlow graphs here serve XLA and ``numpy=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from seqcodec.model.config import START_ID, CodecConfig
from seqcodec.model.numpy_decoder import CachedFactors, DecoderWeights
from seqcodec.model.numpy_encoder import EncoderWeights
from seqcodec.model.tfenv import keras, tf

Step = Callable[[Any], Any]


def _lstm_parts(layer: Any) -> tuple[Any, Any, Any] | None:
    """(kernel, recurrent kernel, bias) variables of a plain Keras LSTM, or None if not the standard cell."""
    cell = getattr(layer, "cell", None)
    if not isinstance(layer, keras.layers.LSTM) or cell is None or not cell.use_bias:
        return None
    if cell.activation is not keras.activations.tanh or cell.recurrent_activation is not keras.activations.sigmoid:
        return None
    return (cell.kernel, cell.recurrent_kernel, cell.bias)


def _read(variable: Any) -> Any:
    """The variable's current value: read at call time, so a codec built before or during training stays exact."""
    return tf.convert_to_tensor(variable)


def _cell(z: Any, c: Any) -> tuple[Any, Any]:
    """One LSTM update from the summed pre-activations ``z`` (gates i, f, c, o) and the cell state."""
    i, f, g, o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c


def _layer(model: keras.Model, name: str) -> Any:
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _encoder_parts(encoder: keras.Model) -> tuple[Any, list[tuple[Any, Any, Any]]] | None:
    """(embedding layer, each direction's LSTM variables) of the standard encoder; None for another structure."""
    embedding, lstm = _layer(encoder, "embedding"), _layer(encoder, "encoder_lstm")
    if embedding is None or lstm is None:
        return None
    if isinstance(lstm, keras.layers.Bidirectional):
        if lstm.merge_mode != "concat" or not lstm.backward_layer.go_backwards:
            return None
        parts = [_lstm_parts(lstm.forward_layer), _lstm_parts(lstm.backward_layer)]
    else:
        parts = [_lstm_parts(lstm)]
    return None if any(p is None for p in parts) else (embedding, parts)


def numpy_encoder_weights(encoder: keras.Model) -> Callable[[], EncoderWeights] | None:
    """The standard encoder's weights for ``numpy_encoder``, read afresh at each call; None if not standard."""
    found = _encoder_parts(encoder)
    if found is None:
        return None
    embedding, parts = found
    return lambda: EncoderWeights.from_arrays(
        embedding.embeddings.numpy(), [tuple(v.numpy() for v in part) for part in parts])


def fused_encoder(encoder: keras.Model, config: CodecConfig) -> Step | None:
    """ids (batch, steps) int32, shifted and right-padded with 0 -> codes; None if not the standard encoder."""
    found = _encoder_parts(encoder)
    if found is None:
        return None
    embedding, parts = found
    units = int(parts[0][1].shape[0])

    def step(ids: Any) -> Any:
        # One row per token id: the embedding already multiplied by each direction's input kernel.
        table = _read(embedding.embeddings)
        inputs = [tf.matmul(table, _read(kernel)) + _read(bias) for kernel, _, bias in parts]
        recurrent = [_read(rec) for _, rec, _ in parts]
        mask = tf.transpose(ids > 0)  # (steps, batch)
        length = tf.reduce_sum(tf.cast(ids > 0, tf.float32), axis=1, keepdims=True)
        projected = [tf.transpose(tf.gather(t, ids), [1, 0, 2]) for t in inputs]  # (steps, batch, 4U)
        steps = tf.shape(ids)[1]
        zeros = tf.zeros([tf.shape(ids)[0], units])
        states = [(zeros, zeros) for _ in parts]
        for t in tf.range(steps):
            new_states = []
            # The backward direction reads the sequence from its end; padding (masked) keeps its state.
            for (h, c), x, rec, at in zip(states, projected, recurrent, (t, steps - 1 - t), strict=False):
                h_new, c_new = _cell(tf.gather(x, at) + tf.matmul(h, rec), c)
                keep = tf.expand_dims(tf.gather(mask, at), 1)
                new_states.append((tf.where(keep, h_new, h), tf.where(keep, c_new, c)))
            states = new_states
        return tf.concat([length, *(h for h, _ in states)], axis=1)

    return step


def _decoder_parts(decoder: keras.Model, config: CodecConfig) -> tuple | None:
    """(steps layer, LSTM variables, output layer, previous-token embedding, initial_h, initial_c) of the
    standard decoder (the last three None for repeat); None for another structure."""
    steps_layer, lstm, dense = _layer(decoder, "steps"), _layer(decoder, "decoder_lstm"), _layer(decoder, "token_probs")
    parts = _lstm_parts(lstm) if lstm is not None else None
    if steps_layer is None or parts is None or dense is None or not lstm.return_sequences:
        return None
    if dense.activation is not keras.activations.softmax:
        return None
    if config.decoder != "autoregressive":
        return steps_layer, parts, dense, None, None, None
    embedding, initial_h, initial_c = (_layer(decoder, n) for n in ("previous_embedding", "initial_h", "initial_c"))
    if embedding is None or initial_h is None or initial_c is None:
        return None
    if initial_h.activation is not keras.activations.tanh or initial_c.activation is not keras.activations.linear:
        return None
    return steps_layer, parts, dense, embedding, initial_h, initial_c


def numpy_decoder_weights(decoder: keras.Model, config: CodecConfig) -> Callable[[], DecoderWeights] | None:
    """The standard decoder's weights for ``numpy_decoder``, read afresh at each call; None if not standard."""
    found = _decoder_parts(decoder, config)
    if found is None:
        return None
    steps_layer, parts, dense, embedding, initial_h, initial_c = found
    factor = CachedFactors()

    def read() -> DecoderWeights:
        return DecoderWeights.from_arrays(
            tuple(v.numpy() for v in parts), (dense.kernel.numpy(), dense.bias.numpy()),
            (steps_layer.position.numpy(), steps_layer.remaining.numpy()) if steps_layer.position_signal else None,
            None if embedding is None else embedding.embeddings.numpy(),
            None if embedding is None else tuple((d.kernel.numpy(), d.bias.numpy()) for d in (initial_h, initial_c)),
            factor)

    return read


def fused_decoder(decoder: keras.Model, config: CodecConfig) -> Step | None:
    """codes (batch, hidden + 1) float32 -> token ids (batch, longest length) int32; None if not standard.

    Both decoders: repeat starts from a zero state; autoregressive (greedy) starts from its
    ``initial_h``/``initial_c`` of the code and adds, at every step, the table row of the token it
    chose at the step before.
    """
    found = _decoder_parts(decoder, config)
    if found is None:
        return None
    steps_layer, parts, dense, embedding, initial_h, initial_c = found
    autoregressive = embedding is not None
    kernel, rec, bias = parts
    units, signal, last = config.hidden_size, steps_layer.position_signal, steps_layer.max_length - 1
    start = START_ID

    def step(codes: Any) -> Any:
        w_in, u, b = _read(kernel), _read(rec), _read(bias)
        w_code = w_in[:units]  # the autoregressive kernel continues with the previous token's rows
        w_out, b_out = _read(dense.kernel), _read(dense.bias)
        if signal:
            position = tf.matmul(_read(steps_layer.position), w_code)
            remaining = tf.matmul(_read(steps_layer.remaining), w_code)
        lengths = tf.cast(tf.round(codes[:, 0]), tf.int32)
        steps = tf.reduce_max(lengths)
        state = codes[:, 1:]
        base = tf.matmul(state, w_code) + b
        if autoregressive:
            previous_table = tf.matmul(_read(embedding.embeddings), w_in[units:])
            h, c = initial_h(state, training=False), initial_c(state, training=False)
        else:
            h = tf.zeros_like(state)
            c = h
        previous = tf.fill([tf.shape(codes)[0]], start)
        out = tf.TensorArray(tf.int32, size=steps)
        for t in tf.range(steps):
            z = base + tf.matmul(h, u)
            if autoregressive:
                z = z + tf.gather(previous_table, previous)
            if signal:
                z = z + tf.gather(position, t) + tf.gather(remaining, tf.clip_by_value(lengths - 1 - t, 0, last))
            h, c = _cell(z, c)
            token = tf.argmax(tf.matmul(h, w_out) + b_out, axis=-1, output_type=tf.int32)
            out = out.write(t, token)
            previous = token + 1
        return tf.transpose(out.stack())

    return step
