"""Build the encoder, the decoder and the autoencoder that chains them (shared weights)."""

from __future__ import annotations

from seqcodec.model.config import CodecConfig
from seqcodec.model.layers import DecoderSteps, TokenCount
from seqcodec.model.tfenv import keras

layers = keras.layers


def build_encoder(config: CodecConfig) -> keras.Model:
    """Shifted, right-padded ids (0 = padding) of shape (batch, steps) -> codes (batch, hidden + 1).

    Embedding(mask_zero) feeds its mask straight to the LSTM, so the final state of a padded
    row equals that of the unpadded sequence.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    x = layers.Embedding(config.vocab_size + 1, config.embedding_size, mask_zero=True, name="embedding")(ids)
    if config.bidirectional:
        half = config.hidden_size // 2
        state = layers.Bidirectional(layers.LSTM(half), merge_mode="concat", name="encoder_lstm")(x)
    else:
        state = layers.LSTM(config.hidden_size, name="encoder_lstm")(x)
    length = TokenCount(name="length")(ids)
    code = layers.Concatenate(name="code")([length, state])
    return keras.Model(ids, code, name="encoder")


def build_decoder(config: CodecConfig) -> keras.Model:
    """Codes (batch, hidden + 1) -> token probabilities (batch, longest length, vocab_size)."""
    code = keras.Input(shape=(config.code_size,), dtype="float32", name="code")
    steps = DecoderSteps(config.max_length, config.position_signal, name="steps")(code)
    x = layers.LSTM(config.hidden_size, return_sequences=True, name="decoder_lstm")(steps)
    # Dense on the 3-D tensor directly: TimeDistributed maps over the wrong axis under tf.function
    # when the time axis is dynamic.
    probs = layers.Dense(config.vocab_size, activation="softmax", name="token_probs")(x)
    return keras.Model(code, probs, name="decoder")


def build_autoencoder(encoder: keras.Model, decoder: keras.Model) -> keras.Model:
    """Ids -> probabilities through the given encoder and decoder (weights shared, not copied)."""
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    return keras.Model(ids, decoder(encoder(ids)), name="autoencoder")
