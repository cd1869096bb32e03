"""Golden tests: the numpy engine against the shipped models' own Keras files, on real sample rows.

The Keras side uses nothing of seqcodec but the registration of the custom layers the saved
configs name: the files are loaded with ``keras.saving.load_model`` and fed inputs built here
with plain numpy, from the contract of ``model/network.py`` and ``model/layers.py``:

- encoder: ids + 1, right-padded with 0 (Embedding's ``mask_zero`` masks the padding) -> codes
  ``[length, h]``;
- repeat decoder: codes -> probabilities (rows, longest length in the batch, vocab); the position
  and steps-to-go signals come from each code's length field inside the model;
- autoregressive decoder: codes and the previous token of each step as shifted ids (``START_ID`` 0,
  then token + 1) -> probabilities; its initial state comes from the code inside the model.
"""

from pathlib import Path

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import assert_same_codes

import seqcodec
import seqcodec.model.layers  # noqa: F401  (registers TokenCount, DecoderSteps, CodeState for load_model)
from seqcodec.model.tf_engine import keras_codec

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "default": ("models/default", "data/sample/words.parquet"),
    "words": ("models/words", "data/words/sentences.parquet"),
}
ROWS = 300
START = 0  # the autoregressive decoder's "previous token" at step 0
# Rows per Keras decoder call: the probabilities of 100 rows x 40 steps x 4,000 words are 64 MB.
CHUNK = 100


def padded_ids(sequences: list[np.ndarray]) -> np.ndarray:
    """Token ids + 1, right-padded with 0 to the longest row: the encoder's input."""
    ids = np.zeros((len(sequences), max(len(s) for s in sequences)), np.int32)
    for row, tokens in enumerate(sequences):
        ids[row, : len(tokens)] = tokens + 1
    return ids


class Shipped:
    """One shipped model: its sample rows, and the codes and files of its raw Keras models."""

    def __init__(self, name: str) -> None:
        model, data = SHIPPED[name]
        self.model_dir = ROOT / model
        table = pq.read_table(ROOT / data, columns=["tokens"])
        rows = np.sort(np.random.default_rng(0).choice(table.num_rows, ROWS, replace=False))
        self.sequences = [np.asarray(t, np.int64) for t in table.column("tokens").take(rows).to_pylist()]
        self.lengths = np.array([len(s) for s in self.sequences])
        self.encoder = keras.saving.load_model(self.model_dir / "encoder.keras")
        self.decoder = keras.saving.load_model(self.model_dir / "decoder.keras")
        self.codes = np.asarray(self.encoder(padded_ids(self.sequences), training=False))

    def greedy_tokens_agree(self, tokens: list[np.ndarray]) -> np.ndarray:
        """Per row, whether ``tokens`` are the Keras decoder's greedy (argmax) tokens for ``self.codes``.

        Repeat decoder: one call; each row's argmax cut to its length. Autoregressive: one call fed
        ``tokens`` themselves as the previous tokens (teacher forcing). The decoder is causal, so step
        t's probabilities depend only on the previous tokens up to t; by induction over the steps,
        ``tokens`` are the greedy choice at every step exactly when each is the argmax at its step.
        """
        agree = np.zeros(len(tokens), bool)
        order = np.argsort(self.lengths, kind="stable")
        for chunk in np.array_split(order, max(1, len(order) // CHUNK)):
            codes = self.codes[chunk]
            if isinstance(self.decoder.input, list):
                # Past a row's end the previous tokens are never read (causal); 0 fills them.
                previous = np.zeros((chunk.size, int(self.lengths[chunk].max())), np.int32)
                previous[:, 0] = START
                for row, i in enumerate(chunk):
                    previous[row, 1 : len(tokens[i])] = tokens[i][:-1] + 1
                probs = np.asarray(self.decoder([codes, previous], training=False))
            else:
                probs = np.asarray(self.decoder(codes, training=False))
            best = probs.argmax(axis=-1)
            for row, i in enumerate(chunk):
                agree[i] = np.array_equal(best[row, : self.lengths[i]], tokens[i])
        return agree


@pytest.fixture(scope="module", params=list(SHIPPED))
def shipped(request) -> Shipped:
    return Shipped(request.param)


def test_length_fields_and_padding_contract(shipped):
    assert np.array_equal(shipped.codes[:, 0], shipped.lengths)
    # Padding is masked: a row alone, unpadded, gets the code it got in the padded batch.
    longest = int(np.argmax(shipped.lengths))
    short = int(np.argmin(shipped.lengths))
    alone = np.asarray(shipped.encoder(padded_ids([shipped.sequences[short]]), training=False))
    np.testing.assert_allclose(alone[0], shipped.codes[short], atol=1e-5)
    assert shipped.lengths[longest] > shipped.lengths[short]


def test_codes_match_the_keras_encoder(shipped):
    codes = seqcodec.load(shipped.model_dir).encode(shipped.sequences)
    assert codes.shape == shipped.codes.shape
    np.testing.assert_array_equal(codes[:, 0], shipped.codes[:, 0])
    np.testing.assert_allclose(codes, shipped.codes, rtol=0, atol=1e-5)


def test_greedy_tokens_match_the_keras_decoder(shipped):
    tokens = seqcodec.load(shipped.model_dir).decode(shipped.codes)
    assert [len(t) for t in tokens] == shipped.lengths.tolist()
    agree = shipped.greedy_tokens_agree(tokens)
    assert agree.all(), f"{int((~agree).sum())} of {agree.size} rows decode differently from Keras"


def test_the_words_model_is_the_one_whose_output_layer_runs_low_rank():
    """The words model's tied output layer has rank 128 of 192: the numpy decoder runs it as two
    factors, the case the golden tests above hold to Keras's tokens."""
    weights = seqcodec.load(ROOT / SHIPPED["words"][0]).decoder.weights
    assert weights.output_left is not None and weights.output_left.shape == (192, 128)
    assert seqcodec.load(ROOT / SHIPPED["default"][0]).decoder.weights.output_left is None




def test_codes_and_tokens_do_not_depend_on_the_batching(shipped):
    """Users hash and join on codes: a row's code must not depend on its batch's size or company (bit for
    bit where the machine's BLAS allows, ``assert_same_codes``), nor its tokens."""
    sequences, n = shipped.sequences, len(shipped.sequences)
    encoder = decoder = seqcodec.load(shipped.model_dir, threads=1)
    codes = encoder.encode(sequences)
    tokens = decoder.decode_flat(codes)[0]
    # One row per call: numpy would take its matrix-vector path here.
    singles = np.concatenate([encoder.encode([s]) for s in sequences])
    assert_same_codes(singles, codes, f"{int((singles != codes).any(axis=1).sum())} of {n} codes differ alone")
    assert np.array_equal(np.concatenate([decoder.decode(codes[i : i + 1])[0] for i in range(n)]), tokens)
    rng = np.random.default_rng(1)
    for budget, batch_size, threads in [(int(rng.integers(20, 400)), None, 2), (16384, 2, 1),
                                        (int(rng.integers(50, 3000)), int(rng.integers(1, 40)), 2)]:
        order = rng.permutation(n)
        batching = {"token_budget": budget, "batch_size": batch_size, "threads": threads}
        shuffled = seqcodec.load(shipped.model_dir, **batching).encode([sequences[i] for i in order])
        assert_same_codes(shuffled, codes[order], str(batching))
        values, offsets = seqcodec.load(shipped.model_dir, **batching).decode_flat(codes[order])
        back = np.concatenate([values[offsets[i] : offsets[i + 1]] for i in np.argsort(order)])
        assert np.array_equal(back, tokens), batching


def test_weights_from_live_layers_and_from_files_give_the_same_codes(shipped):
    """The engine's weights read from live Keras layers and from the saved files: the same codes and tokens,
    alone too (``assert_same_codes``)."""
    codec = keras_codec(shipped.encoder, shipped.decoder, seqcodec.read_manifest(shipped.model_dir).config)
    codes = seqcodec.load(shipped.model_dir).encode(shipped.sequences)
    assert_same_codes(codec.encode(shipped.sequences), codes)
    tokens = seqcodec.load(shipped.model_dir).decode_flat(codes)
    assert all(np.array_equal(a, b) for a, b in zip(codec.decode_flat(codes), tokens, strict=True))
    for i in range(0, len(codes), 30):
        assert_same_codes(codec.encode([shipped.sequences[i]]), codes[i : i + 1])
        assert np.array_equal(codec.decode(codes[i : i + 1])[0], tokens[0][tokens[1][i] : tokens[1][i + 1]])
