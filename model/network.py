"""The Keras network: build the encoder, the decoders (repeat and autoregressive), training's tied decoder and
the autoencoder; ``Network`` holds a pair."""

from __future__ import annotations

import dataclasses
from typing import Any

from seqcodec.model import names
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.layers import CodeState, DecoderSteps, FoldedDecoderLSTM, TiedEmbedding, TiedOutput, TokenCount
from seqcodec.model.tf_engine import keras_codec
from seqcodec.model.tfenv import keras
from seqcodec.model.weights import fingerprint, live_arrays

layers = keras.layers


@dataclasses.dataclass
class Network:
    """The Keras encoder and decoder of one configuration: what training builds and ``save_codec`` writes."""

    encoder: keras.Model
    decoder: keras.Model
    config: CodecConfig

    def fingerprint(self) -> str:
        """The hash of the configuration and the current weights (``weights.fingerprint``)."""
        return fingerprint(self.config, live_arrays(self.encoder), live_arrays(self.decoder))

    def codec(self, **options: Any) -> SequenceCodec:
        """A codec on the weights as they are now (``tf_engine.keras_codec``); ``options`` as SequenceCodec's."""
        return keras_codec(self.encoder, self.decoder, self.config, fingerprint=self.fingerprint(), **options)


def build_network(config: CodecConfig, dropout: float = 0.0) -> Network:
    """A fresh standard encoder and decoder of ``config``."""
    return Network(build_encoder(config, dropout), build_decoder(config, dropout), config)


def hidden_id(config: CodecConfig) -> int:
    """The "previous token" that word dropout puts in place of a real one during training."""
    return config.vocab_size + 1


def build_encoder(config: CodecConfig, dropout: float = 0.0) -> keras.Model:
    """Shifted, right-padded ids (0 = padding) of shape (batch, steps) -> codes (batch, hidden + 1).

    Embedding(mask_zero) feeds its mask straight to the LSTM (Dropout passes it on and is the
    identity outside training), so the final state of a padded row equals that of the unpadded sequence.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name=names.IDS)
    x = layers.Embedding(config.vocab_size + 1, config.embedding_size, mask_zero=True, name=names.EMBEDDING)(ids)
    if dropout:
        x = layers.Dropout(dropout, name=names.EMBEDDING_DROPOUT)(x)
    if config.bidirectional:
        half = config.hidden_size // 2
        state = layers.Bidirectional(layers.LSTM(half), merge_mode="concat", name=names.ENCODER_LSTM)(x)
    else:
        state = layers.LSTM(config.hidden_size, name=names.ENCODER_LSTM)(x)
    length = TokenCount(name=names.LENGTH)(ids)
    code = layers.Concatenate(name=names.CODE)([length, state])
    return keras.Model(ids, code, name="encoder")


def build_decoder(config: CodecConfig, dropout: float = 0.0, previous_embedding: keras.layers.Layer | None = None,
                  output: keras.layers.Layer | None = None, folded: bool = False) -> keras.Model:
    """Codes (batch, hidden + 1) -> token probabilities (batch, longest length, vocab_size).

    The autoregressive decoder takes a second input, the previous token of every step as shifted
    ids (batch, steps): ``START_ID`` first, then the row's own tokens + 1 (teacher forcing);
    ``greedy_decoder`` feeds it its own choices instead. ``previous_embedding`` replaces the layer
    that embeds them and ``output`` the output layer (``tied_decoder``). ``folded``: training's
    ``FoldedDecoderLSTM`` in place of the steps and the LSTM (``untie`` copies it into theirs).
    """
    code = keras.Input(shape=(config.code_size,), dtype="float32", name=names.CODE)
    folded_lstm = FoldedDecoderLSTM(config.max_length, config.hidden_size, config.position_signal,
                                    name=names.DECODER_LSTM) if folded else None
    steps = None if folded else DecoderSteps(config.max_length, config.position_signal, name=names.STEPS)(code)
    if config.decoder == "autoregressive":
        previous = keras.Input(shape=(None,), dtype="int32", name=names.PREVIOUS)
        embed = previous_embedding or layers.Embedding(config.vocab_size + 2, config.embedding_size,
                                                       name=names.PREVIOUS_EMBEDDING)
        e = embed(previous)
        if dropout:
            e = layers.Dropout(dropout, name=names.PREVIOUS_DROPOUT)(e)
        state = CodeState(name=names.STATE)(code)
        h0 = layers.Dense(config.hidden_size, activation="tanh", name=names.INITIAL_H)(state)
        c0 = layers.Dense(config.hidden_size, name=names.INITIAL_C)(state)
        if folded_lstm:
            x = folded_lstm(code, e, initial_state=[h0, c0])
        else:
            x = layers.Concatenate(name=names.DECODER_INPUTS)([steps, e])
            x = layers.LSTM(config.hidden_size, return_sequences=True, name=names.DECODER_LSTM)(
                x, initial_state=[h0, c0])
        inputs = [code, previous]
    else:
        if folded_lstm:
            x = folded_lstm(code)
        else:
            x = layers.LSTM(config.hidden_size, return_sequences=True, name=names.DECODER_LSTM)(steps)
        inputs = code
    if dropout:
        x = layers.Dropout(dropout, name=names.OUTPUT_DROPOUT)(x)
    # Dense on the 3-D tensor directly: TimeDistributed maps over the wrong axis under tf.function
    # when the time axis is dynamic.
    probs = (output or layers.Dense(config.vocab_size, activation="softmax", name=names.TOKEN_PROBS))(x)
    return keras.Model(inputs, probs, name="decoder")


def tied_decoder(config: CodecConfig, dropout: float, encoder: keras.Model, embeddings: bool = True,
                 output: bool = False, folded: bool = True) -> keras.Model:
    """Training's decoder for ``--tie-embeddings`` and ``--tie-output``, sharing the encoder's embedding.

    ``embeddings``: the autoregressive decoder reads previous tokens through that table plus an own
    row for word dropout's hidden id. ``output``: tokens are scored against its rows (``TiedOutput``).
    Its other layers are its own: ``untie`` copies them, and the tied tables, into a standard decoder,
    which is what the codec runs and saves. ``folded``: the steps and the LSTM as one
    ``FoldedDecoderLSTM``, the same function in fewer multiplications (``bench/train_folded.py``).
    """
    shared = encoder.get_layer(names.EMBEDDING)
    own_rows = hidden_id(config) + 1 - shared.input_dim
    return build_decoder(
        config, dropout,
        TiedEmbedding(shared, own_rows, name=names.PREVIOUS_EMBEDDING) if embeddings else None,
        TiedOutput(shared, config.vocab_size, name=names.TOKEN_PROBS) if output else None,
        folded=folded,
    )


def untie(trained: keras.Model, decoder: keras.Model) -> None:
    """Copy a ``tied_decoder``'s weights into the standard ``decoder`` (same layer names): the tied table
    into its plain previous-token Embedding, a tied output layer's product into its Dense."""
    for layer in trained.layers:
        target = decoder.get_layer(layer.name)
        if isinstance(layer, FoldedDecoderLSTM):
            decoder.get_layer(names.STEPS).set_weights(layer.steps.get_weights())
            target.set_weights(layer.lstm.get_weights())
        elif isinstance(layer, TiedEmbedding):
            target.embeddings.assign(layer.table())
        elif isinstance(layer, TiedOutput):
            target.kernel.assign(layer.kernel())
            target.bias.assign(layer.bias)
        elif layer.weights:
            target.set_weights(layer.get_weights())


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Ids (and, autoregressive, previous tokens) -> probabilities; weights shared with the parts, not copied."""
    ids = keras.Input(shape=(None,), dtype="int32", name=names.IDS)
    if isinstance(decoder.input, list):
        previous = keras.Input(shape=(None,), dtype="int32", name=names.PREVIOUS)
        return keras.Model([ids, previous], decoder([encoder(ids), previous]), name="autoencoder")
    return keras.Model(ids, decoder(encoder(ids)), name="autoencoder")
