"""Build the encoder, the decoders (repeat and autoregressive), the autoencoder, and greedy decoding."""

from __future__ import annotations

from collections.abc import Callable

from seqcodec.model.config import CodecConfig
from seqcodec.model.layers import CodeState, DecoderSteps, TokenCount
from seqcodec.model.tfenv import keras, tf

layers = keras.layers


def start_id(config: CodecConfig) -> int:
    """The autoregressive decoder's "previous token" at step 0 (shifted ids 1..vocab are tokens)."""
    return 0


def hidden_id(config: CodecConfig) -> int:
    """The "previous token" that word dropout puts in place of a real one during training."""
    return config.vocab_size + 1


def build_encoder(config: CodecConfig, dropout: float = 0.0) -> keras.Model:
    """Shifted, right-padded ids (0 = padding) of shape (batch, steps) -> codes (batch, hidden + 1).

    Embedding(mask_zero) feeds its mask straight to the LSTM (Dropout passes it on and is the
    identity outside training), so the final state of a padded row equals that of the unpadded sequence.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = layers.Embedding(config.vocab_size + 1, config.embedding_size, mask_zero=True, name="embedding")(ids)
    if dropout:
        x = layers.Dropout(dropout, name="embedding_dropout")(x)
    if config.bidirectional:
        half = config.hidden_size // 2
        state = layers.Bidirectional(layers.LSTM(half), merge_mode="concat", name="encoder_lstm")(x)
    else:
        state = layers.LSTM(config.hidden_size, name="encoder_lstm")(x)
    length = TokenCount(name="length")(ids)
    code = layers.Concatenate(name="code")([length, state])
    return keras.Model(ids, code, name="encoder")


def build_decoder(config: CodecConfig, dropout: float = 0.0) -> keras.Model:
    """Codes (batch, hidden + 1) -> token probabilities (batch, longest length, vocab_size).

    The autoregressive decoder takes a second input, the previous token of every step as shifted
    ids (batch, steps): ``start_id`` first, then the row's own tokens + 1 (teacher forcing);
    ``greedy_decoder`` feeds it its own choices instead.
    """
    code = keras.Input(shape=(config.code_size,), dtype="float32", name="code")
    steps = DecoderSteps(config.max_length, config.position_signal, name="steps")(code)
    if config.decoder == "autoregressive":
        previous = keras.Input(shape=(None,), dtype="int32", name="previous")
        e = layers.Embedding(config.vocab_size + 2, config.embedding_size, name="previous_embedding")(previous)
        if dropout:
            e = layers.Dropout(dropout, name="previous_dropout")(e)
        x = layers.Concatenate(name="decoder_inputs")([steps, e])
        state = CodeState(name="state")(code)
        h0 = layers.Dense(config.hidden_size, activation="tanh", name="initial_h")(state)
        c0 = layers.Dense(config.hidden_size, name="initial_c")(state)
        x = layers.LSTM(config.hidden_size, return_sequences=True, name="decoder_lstm")(x, initial_state=[h0, c0])
        inputs = [code, previous]
    else:
        x = layers.LSTM(config.hidden_size, return_sequences=True, name="decoder_lstm")(steps)
        inputs = code
    if dropout:
        x = layers.Dropout(dropout, name="output_dropout")(x)
    # Dense on the 3-D tensor directly: TimeDistributed maps over the wrong axis under tf.function
    # when the time axis is dynamic.
    probs = layers.Dense(config.vocab_size, activation="softmax", name="token_probs")(x)
    return keras.Model(inputs, probs, name="decoder")


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Ids (and, autoregressive, previous tokens) -> probabilities; weights shared with the parts, not copied."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    if isinstance(decoder.input, list):
        previous = keras.Input(shape=(None,), dtype="int32", name="previous")
        return keras.Model([ids, previous], decoder([encoder(ids), previous]), name="autoencoder")
    return keras.Model(ids, decoder(encoder(ids)), name="autoencoder")


def greedy_decoder(decoder: keras.Model, config: CodecConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """codes (batch, hidden + 1) -> token ids (batch, longest length), int32, for a tf.function.

    Runs the autoregressive decoder's own layers one step at a time, each step fed the token it
    chose at the step before (argmax). Every row's steps use only that row, so a batch padded to
    its longest length gives each row the tokens it would get alone.
    """
    steps_layer = decoder.get_layer("steps")
    embedding = decoder.get_layer("previous_embedding")
    initial_h, initial_c = decoder.get_layer("initial_h"), decoder.get_layer("initial_c")
    cell = decoder.get_layer("decoder_lstm").cell
    out = decoder.get_layer("token_probs")

    def run(codes: tf.Tensor) -> tf.Tensor:
        inputs = steps_layer(codes)
        state = codes[:, 1:]
        h, c = initial_h(state), initial_c(state)
        count = tf.shape(inputs)[1]
        previous = tf.fill([tf.shape(codes)[0]], start_id(config))
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
