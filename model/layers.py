"""Custom Keras layers of the codec, registered so saved models load with safe_mode on."""

from __future__ import annotations

from typing import Any

from seqcodec.model import names
from seqcodec.model.tfenv import keras, tf

ops = keras.ops


@keras.saving.register_keras_serializable(package="seqcodec")
class TokenCount(keras.layers.Layer):
    """Count the real tokens of right-padded, shifted ids (0 is padding): float32 of shape (batch, 1).

    The length comes from the ids, not from the padded width, so it stays right in padded batches.
    """

    def call(self, ids: Any) -> Any:
        return ops.sum(ops.cast(ops.not_equal(ids, 0), "float32"), axis=1, keepdims=True)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], 1)


@keras.saving.register_keras_serializable(package="seqcodec")
class DecoderSteps(keras.layers.Layer):
    """Expand codes ``[length, h]`` into decoder inputs of shape (batch, steps, hidden).

    ``h`` is repeated ``steps`` times, where ``steps`` is the longest length in the batch.
    With ``position_signal`` a learned vector for the position and one for the number of
    steps still to go are added. Both depend only on the row's own length, and the decoder
    LSTM is causal, so the first ``length`` outputs of a row do not depend on its neighbours:
    that is what lets a batch be padded to its longest row and each row cut back afterwards.
    """

    def __init__(self, max_length: int, position_signal: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.position_signal = bool(position_signal)

    def build(self, input_shape: tuple) -> None:
        hidden = int(input_shape[-1]) - 1
        if self.position_signal:
            init = keras.initializers.RandomNormal(stddev=0.1)
            self.position = self.add_weight(name="position", shape=(self.max_length, hidden), initializer=init)
            self.remaining = self.add_weight(name="remaining", shape=(self.max_length, hidden), initializer=init)

    def call(self, codes: Any) -> Any:
        lengths = ops.cast(ops.round(codes[:, 0]), "int32")
        steps = ops.max(lengths)
        state = codes[:, 1:]
        x = ops.repeat(ops.expand_dims(state, 1), steps, axis=1)
        if self.position_signal:
            position, remaining = self.signals(lengths, steps)
            x = x + position + remaining
        return x

    def signals(self, lengths: Any, steps: Any, table: Any = None) -> tuple[Any, Any]:
        """The position signal (1, steps, width) and the steps-to-go signal (batch, steps, width) of rows
        of ``lengths``; ``table`` (a function) maps each signal table first (``FoldedDecoderLSTM``
        projects them into the LSTM's gates)."""
        table = table or (lambda weights: weights)
        t = ops.arange(steps, dtype="int32")
        # Past a row's end this clips to 0; those steps are cut off and never read.
        to_go = ops.clip(ops.expand_dims(lengths, 1) - 1 - ops.expand_dims(t, 0), 0, self.max_length - 1)
        return (ops.expand_dims(ops.take(table(self.position), t, axis=0), 0),
                ops.take(table(self.remaining), to_go, axis=0))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], None, int(input_shape[-1]) - 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length, "position_signal": self.position_signal}


@keras.saving.register_keras_serializable(package="seqcodec")
class CodeState(keras.layers.Layer):
    """The encoder state ``h`` of codes ``[length, h]``: (batch, hidden + 1) -> (batch, hidden)."""

    def call(self, codes: Any) -> Any:
        return codes[:, 1:]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], int(input_shape[-1]) - 1)


class TiedEmbedding(keras.layers.Layer):
    """Training only: an embedding table whose first rows are another Embedding's (the same weights)
    and whose last ``own_rows`` rows are its own.

    ``--tie-embeddings`` reads the autoregressive decoder's previous tokens through the encoder's
    embedding (shifted ids 0..vocab) plus one row of its own (word dropout's hidden id), so a word
    trains one vector whether it is read or written. Saved decoders hold a plain Embedding with the
    rows copied (``network.untie``): nothing outside training ever sees this layer.
    """

    def __init__(self, shared: keras.layers.Embedding, own_rows: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shared, self.own_rows = shared, own_rows

    def build(self, input_shape: tuple) -> None:
        # Keras' Embedding initializer, so the own rows start as the shared ones did.
        self.own = self.add_weight(name="own", shape=(self.own_rows, self.shared.output_dim), initializer="uniform")

    def table(self) -> Any:
        """The whole table, (shared rows + own rows, dim)."""
        return ops.concatenate([self.shared.embeddings, self.own], axis=0)

    def call(self, ids: Any) -> Any:
        return ops.take(self.table(), ids, axis=0)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape, self.shared.output_dim)


class TiedOutput(keras.layers.Layer):
    """Training only: the output layer scored against another Embedding's token rows (shared weights).

    ``--tie-output`` gives token ``t`` the probability ``softmax(x @ projection @ rows.T + bias)[t]``,
    where ``rows[t]`` is the encoder's embedding of ``t`` (shifted id ``t + 1``): the table that reads a
    word also writes it (Press & Wolf, 2017), and only the small ``projection`` (width -> embedding) is
    the output layer's own. Saved decoders hold a plain Dense with ``projection @ rows.T`` as its
    kernel (``network.untie``).
    """

    def __init__(self, shared: keras.layers.Embedding, vocab_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shared, self.vocab_size = shared, vocab_size

    def build(self, input_shape: tuple) -> None:
        self.projection = self.add_weight(name="projection", shape=(input_shape[-1], self.shared.output_dim),
                                          initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.vocab_size,), initializer="zeros")

    def rows(self) -> Any:
        """The shared table's token rows, (vocab_size, embedding): row ``t`` scores token ``t``."""
        return self.shared.embeddings[1:self.vocab_size + 1]

    def project(self, x: Any) -> Any:
        """Hidden states into the embedding's space, where the rows score them."""
        return ops.matmul(x, self.projection)

    def kernel(self) -> Any:
        """The equivalent Dense kernel, (width, vocab_size)."""
        return ops.matmul(self.projection, ops.transpose(self.rows()))

    def call(self, x: Any) -> Any:
        return ops.softmax(ops.matmul(self.project(x), ops.transpose(self.rows())) + self.bias)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.vocab_size)


class FoldedDecoderLSTM(keras.layers.Layer):
    """Training only: the decoder's steps (``DecoderSteps``) and LSTM in one layer, the same function of
    the same weights in fewer multiplications.

    The LSTM's input at step ``t`` is ``[h + position[t] + remaining[to go], previous token's vector]``
    and ``h`` is the same at every step, so ``h``'s share of the gates is computed once per row, each
    signal's once per position, and only the previous token's and the recurrent share once per step.
    ``steps`` and ``lstm`` are standard layers under their standard names; ``network.untie`` copies
    them into the decoder that the codec runs and saves.
    """

    def __init__(self, max_length: int, units: int, position_signal: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.steps = DecoderSteps(max_length, position_signal, name=names.STEPS)
        self.lstm = keras.layers.LSTM(units, return_sequences=True, name=names.DECODER_LSTM)

    def build(self, codes_shape: tuple, previous_shape: tuple | None = None) -> None:
        self.steps.build(codes_shape)
        width = int(codes_shape[-1]) - 1 + (int(previous_shape[-1]) if previous_shape else 0)
        self.lstm.build((None, None, width))

    def call(self, codes: Any, previous: Any = None, initial_state: Any = None) -> Any:
        cell, steps = self.lstm.cell, self.steps
        hidden = int(codes.shape[-1]) - 1
        from_steps = cell.kernel[:hidden]
        lengths = ops.cast(ops.round(codes[:, 0]), "int32")
        count = ops.max(lengths)
        # Gate inputs (batch, steps, 4 units), each share computed where it changes.
        z = ops.expand_dims(ops.matmul(codes[:, 1:], from_steps) + cell.bias, 1)
        if steps.position_signal:
            position, remaining = steps.signals(lengths, count, lambda weights: ops.matmul(weights, from_steps))
            z = z + position + remaining
        if previous is not None:
            z = z + ops.matmul(previous, cell.kernel[hidden:])
        z = ops.broadcast_to(z, (ops.shape(codes)[0], count, 4 * self.units))
        if initial_state is None:
            zeros = ops.zeros((ops.shape(codes)[0], self.units), dtype=z.dtype)
            initial_state = [zeros, zeros]

        def step(state: Any, z_t: Any) -> Any:
            h, c = state
            i, f, g, o = ops.split(z_t + ops.matmul(h, cell.recurrent_kernel), 4, axis=-1)
            c = cell.recurrent_activation(f) * c + cell.recurrent_activation(i) * cell.activation(g)
            return (cell.recurrent_activation(o) * cell.activation(c), c)

        outputs, _ = tf.scan(step, ops.transpose(z, (1, 0, 2)), initializer=tuple(initial_state))
        return ops.transpose(outputs, (1, 0, 2))

    def compute_output_shape(self, codes_shape: tuple, previous_shape: tuple | None = None) -> tuple:
        return (codes_shape[0], None, self.units)
