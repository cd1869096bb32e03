"""Build the encoder, the decoders (repeat and autoregressive), the autoencoder, and greedy or beam decoding."""

from __future__ import annotations

from collections.abc import Callable

from seqcodec.model.config import START_ID, CodecConfig
from seqcodec.model.layers import CodeState, DecoderSteps, TiedEmbedding, TiedOutput, TokenCount
from seqcodec.model.tfenv import keras, tf

layers = keras.layers


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


def build_decoder(config: CodecConfig, dropout: float = 0.0, previous_embedding: keras.layers.Layer | None = None,
                  output: keras.layers.Layer | None = None) -> keras.Model:
    """Codes (batch, hidden + 1) -> token probabilities (batch, longest length, vocab_size).

    The autoregressive decoder takes a second input, the previous token of every step as shifted
    ids (batch, steps): ``START_ID`` first, then the row's own tokens + 1 (teacher forcing);
    ``greedy_decoder`` feeds it its own choices instead. ``previous_embedding`` replaces the layer
    that embeds them and ``output`` the output layer (``tied_decoder``).
    """
    code = keras.Input(shape=(config.code_size,), dtype="float32", name="code")
    steps = DecoderSteps(config.max_length, config.position_signal, name="steps")(code)
    if config.decoder == "autoregressive":
        previous = keras.Input(shape=(None,), dtype="int32", name="previous")
        embed = previous_embedding or layers.Embedding(config.vocab_size + 2, config.embedding_size,
                                                       name="previous_embedding")
        e = embed(previous)
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
    probs = (output or layers.Dense(config.vocab_size, activation="softmax", name="token_probs"))(x)
    return keras.Model(inputs, probs, name="decoder")


def tied_decoder(config: CodecConfig, dropout: float, encoder: keras.Model, embeddings: bool = True,
                 output: bool = False) -> keras.Model:
    """Training's decoder for ``--tie-embeddings`` and ``--tie-output``, sharing the encoder's embedding.

    ``embeddings``: the autoregressive decoder reads previous tokens through that table plus an own
    row for word dropout's hidden id. ``output``: tokens are scored against its rows (``TiedOutput``).
    Its other layers are its own: ``untie`` copies them, and the tied tables, into a standard decoder,
    which is what the codec runs and saves.
    """
    shared = encoder.get_layer("embedding")
    own_rows = hidden_id(config) + 1 - shared.input_dim
    return build_decoder(
        config, dropout,
        TiedEmbedding(shared, own_rows, name="previous_embedding") if embeddings else None,
        TiedOutput(shared, config.vocab_size, name="token_probs") if output else None,
    )


def untie(trained: keras.Model, decoder: keras.Model) -> None:
    """Copy a ``tied_decoder``'s weights into the standard ``decoder`` (same layer names): the tied table
    into its plain previous-token Embedding, a tied output layer's product into its Dense."""
    for layer in trained.layers:
        target = decoder.get_layer(layer.name)
        if isinstance(layer, TiedEmbedding):
            target.embeddings.assign(layer.table())
        elif isinstance(layer, TiedOutput):
            target.kernel.assign(layer.kernel())
            target.bias.assign(layer.bias)
        elif layer.weights:
            target.set_weights(layer.get_weights())


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Ids (and, autoregressive, previous tokens) -> probabilities; weights shared with the parts, not copied."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    if isinstance(decoder.input, list):
        previous = keras.Input(shape=(None,), dtype="int32", name="previous")
        return keras.Model([ids, previous], decoder([encoder(ids), previous]), name="autoencoder")
    return keras.Model(ids, decoder(encoder(ids)), name="autoencoder")


def _decoder_parts(decoder: keras.Model) -> tuple:
    """The autoregressive decoder's layers that one decoding step runs by hand."""
    return (decoder.get_layer("steps"), decoder.get_layer("previous_embedding"), decoder.get_layer("initial_h"),
            decoder.get_layer("initial_c"), decoder.get_layer("decoder_lstm").cell, decoder.get_layer("token_probs"))


def greedy_decoder(decoder: keras.Model, config: CodecConfig) -> Callable[[tf.Tensor], tf.Tensor]:
    """codes (batch, hidden + 1) -> token ids (batch, longest length), int32, for a tf.function.

    Runs the autoregressive decoder's own layers one step at a time, each step fed the token it
    chose at the step before (argmax). Every row's steps use only that row, so a batch padded to
    its longest length gives each row the tokens it would get alone.
    """
    steps_layer, embedding, initial_h, initial_c, cell, out = _decoder_parts(decoder)

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


def beam_decoder(decoder: keras.Model, config: CodecConfig, width: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """codes (batch, hidden + 1) -> token ids (batch, longest length): beam search over ``width`` beams.

    Each row keeps the ``width`` most likely prefixes (sum of log-probabilities) and returns the
    best one of exactly its own length. Past a row's length its beams are frozen (only "token 0",
    at no cost, so they neither reorder nor duplicate), which keeps rows independent: a padded
    batch gives each row what it would get alone. ``width`` 1 chooses what greedy decoding does.
    """
    steps_layer, embedding, initial_h, initial_c, cell, out = _decoder_parts(decoder)
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
