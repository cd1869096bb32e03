"""SequenceCodec: batched encode/decode equal one-at-a-time results, input validation, numpy helpers."""

import dataclasses

import numpy as np
import pytest
from conftest import build_codec, random_sequences

from seqcodec.model.batches import pad_shifted, ragged_positions, token_batches
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import START_ID
from seqcodec.model.engine import NumpyDecoder, NumpyEncoder
from seqcodec.model.tf_engine import KerasDecoder, KerasEncoder

VOCAB, MAX_LEN = 13, 12


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    """Mixed lengths: every length 1..max_length at least three times, in shuffled order."""
    seqs = random_sequences(40, VOCAB, MAX_LEN, seed=11)
    rng = np.random.default_rng(12)
    seqs += [rng.integers(0, VOCAB, size=n) for n in range(1, MAX_LEN + 1) for _ in range(2)]
    order = rng.permutation(len(seqs))
    seqs = [seqs[i] for i in order]
    assert {len(s) for s in seqs} == set(range(1, MAX_LEN + 1))
    return seqs


def with_batch_size(codec: SequenceCodec, batch_size: int) -> SequenceCodec:
    """The same steps behind a codec that cuts its input into batches of ``batch_size``."""
    return SequenceCodec(codec.encoder, codec.decoder, codec.config, batch_size=batch_size)


@pytest.mark.parametrize("shape", [{}, {"bidirectional": False, "position_signal": False},
                                   {"decoder": "autoregressive"},
                                   {"decoder": "autoregressive", "position_signal": False}])
def test_numpy_engine_equals_the_keras_networks(tiny_config, shape, sequences):
    """The numpy engine folds input projections into tables; the Keras layers as they are must agree."""
    config = dataclasses.replace(tiny_config, **shape)
    network = build_codec(config, seed=4)
    numpy_codec = network.codec()
    assert isinstance(numpy_codec.encoder, NumpyEncoder) and isinstance(numpy_codec.decoder, NumpyDecoder)
    keras_steps = SequenceCodec(KerasEncoder(network.encoder), KerasDecoder(network.decoder, config), config)
    codes = numpy_codec.encode(sequences)
    np.testing.assert_allclose(codes, keras_steps.encode(sequences), rtol=0, atol=1e-5)
    for got, want in zip(numpy_codec.decode(codes), keras_steps.decode(codes), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("decoder", ["repeat", "autoregressive"])
def test_a_codec_is_a_snapshot_of_the_weights_it_was_built_on(tiny_config, sequences, decoder):
    """Training evaluates on a codec built from the current weights once per pass: a codec keeps the
    weights it was built on, and the next one built sees the new ones."""
    tiny_config = dataclasses.replace(tiny_config, decoder=decoder)
    network = build_codec(tiny_config, seed=6)
    first = network.codec()
    before = first.encode(sequences)
    for variable in network.encoder.weights + network.decoder.weights:
        variable.assign(np.asarray(variable) * 1.5 + 0.01)
    np.testing.assert_array_equal(first.encode(sequences), before)
    numpy_codec = network.codec()
    after = numpy_codec.encode(sequences)
    assert np.abs(after - before).max() > 1e-3
    keras_steps = SequenceCodec(KerasEncoder(network.encoder), KerasDecoder(network.decoder, tiny_config),
                                tiny_config)
    np.testing.assert_allclose(after, keras_steps.encode(sequences), rtol=0, atol=1e-5)
    for got, want in zip(numpy_codec.decode(after), keras_steps.decode(after), strict=True):
        np.testing.assert_array_equal(got, want)


def one_at_a_time_codes(codec: SequenceCodec, seqs) -> np.ndarray:
    return np.concatenate([codec.encode([s]) for s in seqs])


# -- encode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 512])
def test_batched_encode_equals_one_at_a_time(tiny_codec, sequences, batch_size):
    codes = with_batch_size(tiny_codec, batch_size).encode(sequences)
    single = one_at_a_time_codes(tiny_codec, sequences)
    assert codes.dtype == np.float32
    assert codes.shape == (len(sequences), tiny_codec.config.code_size)
    np.testing.assert_allclose(codes, single, rtol=0, atol=1e-5)
    # Codes carry information: different sequences do not collapse onto one code.
    assert np.unique(codes[:, 1:].round(5), axis=0).shape[0] > len(sequences) // 2


def test_length_field_is_the_sequence_length(tiny_codec, sequences):
    codes = tiny_codec.encode(sequences)
    np.testing.assert_array_equal(codes[:, 0], [len(s) for s in sequences])


@pytest.mark.parametrize("batch_size", [3, 512])
def test_code_does_not_depend_on_neighbours(tiny_codec, batch_size):
    codec = with_batch_size(tiny_codec, batch_size)
    target = np.array([4, 0, 9], dtype=np.int64)
    alone = codec.encode([target])[0]
    rng = np.random.default_rng(5)
    longest = [rng.integers(0, VOCAB, size=MAX_LEN) for _ in range(7)]
    shortest = [rng.integers(0, VOCAB, size=1) for _ in range(7)]
    same_length = [rng.integers(0, VOCAB, size=3) for _ in range(7)]
    for neighbours in (longest, shortest, same_length):
        for position in (0, 3, 7):
            batch = neighbours[:position] + [target] + neighbours[position:]
            code = codec.encode(batch)[position]
            np.testing.assert_allclose(code, alone, rtol=0, atol=1e-5)


def test_encode_preserves_input_order(tiny_codec, sequences):
    codes = tiny_codec.encode(sequences)
    perm = np.random.default_rng(3).permutation(len(sequences))
    permuted = tiny_codec.encode([sequences[i] for i in perm])
    np.testing.assert_allclose(permuted, codes[perm], rtol=0, atol=1e-5)


def test_zero_is_a_real_token(tiny_codec):
    zeros, ones = tiny_codec.encode([[0, 0, 0, 0], [1, 1, 1, 1]])
    assert zeros[0] == 4 and ones[0] == 4
    assert np.abs(zeros[1:] - ones[1:]).max() > 1e-4
    # Trailing zeros are tokens, not padding: they change both the length and the state.
    short, padded = tiny_codec.encode([[5], [5, 0, 0]])
    assert (short[0], padded[0]) == (1, 3)
    assert np.abs(short[1:] - padded[1:]).max() > 1e-4


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8, np.uint64])
def test_integer_dtypes_give_identical_codes(tiny_codec, sequences, dtype):
    reference = tiny_codec.encode([np.asarray(s, dtype=np.int64) for s in sequences])
    codes = tiny_codec.encode([np.asarray(s, dtype=dtype) for s in sequences])
    np.testing.assert_array_equal(codes, reference)
    as_lists = tiny_codec.encode([[int(t) for t in s] for s in sequences])
    np.testing.assert_array_equal(as_lists, reference)


def test_encode_nothing_gives_no_codes(tiny_codec):
    assert tiny_codec.encode([]).shape == (0, tiny_codec.config.code_size)


@pytest.mark.parametrize(
    "bad, words",
    [
        ([], "empty"),
        ([2, -1, 3], "-1"),
        ([2, VOCAB], str(VOCAB)),
        ([1] * (MAX_LEN + 1), "max_length"),
        ([1.0, 2.0], "integer"),
        (np.array([1.5, 2.0]), "integer"),
        (np.array([[1, 2], [3, 4]]), "1-D"),
        (np.int64(3), "1-D"),
    ],
    ids=["empty", "negative", "id-at-vocab-size", "too-long", "float-list", "float-array", "2-D", "scalar"],
)
def test_encode_rejects_bad_sequences(tiny_codec, bad, words):
    with pytest.raises(ValueError) as info:
        tiny_codec.encode([[1, 2, 3], bad, [4]])
    message = str(info.value)
    assert "sequence 1" in message and words in message


def test_encode_accepts_the_extreme_ids_and_lengths(tiny_codec):
    codes = tiny_codec.encode([[0], [VOCAB - 1] * MAX_LEN])
    np.testing.assert_array_equal(codes[:, 0], [1, MAX_LEN])


# -- decode ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 512])
def test_batched_decode_equals_one_at_a_time(any_codec, sequences, batch_size):
    codes = any_codec.encode(sequences)
    decoded = with_batch_size(any_codec, batch_size).decode(codes)
    single = [any_codec.decode(codes[i : i + 1])[0] for i in range(len(codes))]
    assert len(decoded) == len(codes)
    for code, tokens, alone in zip(codes, decoded, single, strict=True):
        assert tokens.dtype == np.int32
        assert tokens.size == int(code[0])
        assert ((tokens >= 0) & (tokens < VOCAB)).all()
        np.testing.assert_array_equal(tokens, alone)


def test_decode_preserves_input_order(any_codec, sequences):
    codes = any_codec.encode(sequences)
    decoded = any_codec.decode(codes)
    perm = np.random.default_rng(4).permutation(len(codes))
    permuted = any_codec.decode(codes[perm])
    for i, tokens in zip(perm, permuted, strict=True):
        np.testing.assert_array_equal(tokens, decoded[i])


def test_decode_takes_length_from_the_code(any_codec):
    """Same state, different length fields: each output is exactly as long as its own field."""
    state = any_codec.encode([[3, 1, 4, 1, 5]])[0, 1:]
    codes = np.stack([np.concatenate([[n], state]) for n in (MAX_LEN, 1, 7)]).astype(np.float64)
    assert [t.size for t in any_codec.decode(codes)] == [MAX_LEN, 1, 7]


def test_decode_nothing_gives_no_sequences(any_codec):
    assert any_codec.decode(np.zeros((0, any_codec.config.code_size), np.float32)) == []


@pytest.mark.parametrize("engine", ["numpy", "TensorFlow"])
def test_greedy_decoding_is_the_network_fed_its_own_tokens(tiny_ar_network, sequences, engine):
    """The step loop computes what the whole decoder network computes when its previous-token input
    is the loop's own output shifted by one step (start first): the same argmax at every step."""
    network = tiny_ar_network
    codec = network.codec() if engine == "numpy" else SequenceCodec(
        KerasEncoder(network.encoder), KerasDecoder(network.decoder, network.config), network.config)
    codes = codec.encode(sequences)
    decoded = codec.decode(codes)
    for code, tokens in zip(codes, decoded, strict=True):
        previous = np.concatenate([[START_ID], tokens[:-1] + 1])[None].astype(np.int32)
        probs = network.decoder([code[None], previous], training=False).numpy()[0]
        np.testing.assert_array_equal(probs.argmax(-1), tokens)
    # An untrained network still depends on the code and on what it wrote: outputs are not all alike.
    assert len({tuple(t) for t in decoded}) > len(decoded) // 4
    assert len({int(t) for seq in decoded for t in seq}) > 2


def _bad_codes(code: np.ndarray) -> dict[str, np.ndarray]:
    width = code.size

    def with_length(value: float) -> np.ndarray:
        bad = code.astype(np.float64)
        bad[0] = value
        return bad[None]

    state_inf = code.astype(np.float32)[None].copy()
    state_inf[0, 3] = np.inf
    return {
        "narrow": code[None, : width - 1],
        "wide": np.concatenate([code, [0.0]])[None],
        "1-D": code,
        "3-D": code[None, None],
        "nan-length": with_length(np.nan),
        "inf-state": state_inf,
        "length-0": with_length(0),
        "length-negative": with_length(-3),
        "length-2.5": with_length(2.5),
        "length-over-max": with_length(MAX_LEN + 1),
    }


@pytest.mark.parametrize("case", list(_bad_codes(np.zeros(17))))
def test_decode_rejects_bad_codes(tiny_codec, case):
    good = tiny_codec.encode([[1, 2, 3]])[0]
    with pytest.raises(ValueError):
        tiny_codec.decode(_bad_codes(good)[case])


def test_decode_error_names_the_bad_row(tiny_codec):
    codes = tiny_codec.encode([[1], [2, 3], [4, 5, 6]])
    codes[2, 0] = 2.5
    with pytest.raises(ValueError, match="code 2"):
        tiny_codec.decode(codes)


# -- numpy helpers ----------------------------------------------------------------------------------


def test_ragged_positions():
    rows, cols = ragged_positions(np.array([2, 0, 3, 1]))
    np.testing.assert_array_equal(rows, [0, 0, 2, 2, 2, 3])
    np.testing.assert_array_equal(cols, [0, 1, 0, 1, 2, 0])
    rows, cols = ragged_positions(np.zeros(0, np.int64))
    assert rows.size == cols.size == 0


def test_pad_shifted_pads_selected_rows_with_ids_plus_one():
    values = np.array([0, 1, 2, 12, 5, 0], dtype=np.int64)
    offsets = np.array([0, 3, 4, 6])  # rows: [0 1 2], [12], [5 0]
    out = pad_shifted(values, offsets, np.array([1, 0, 2]))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[13, 0, 0], [1, 2, 3], [6, 1, 0]])
    # Width is the longest selected row, not the longest row overall.
    np.testing.assert_array_equal(pad_shifted(values, offsets, np.array([2, 1])), [[6, 1], [13, 0]])


def test_token_batches_stay_within_the_budget():
    lengths = np.random.default_rng(0).integers(1, 30, size=500)
    for budget in (1, 29, 64, 1000, 10**9):
        batches = token_batches(lengths, budget)
        assert sorted(np.concatenate(batches).tolist()) == list(range(lengths.size))
        flat = np.concatenate([lengths[b] for b in batches])
        assert (np.diff(flat) >= 0).all()  # sorted by length across and within batches
        for b in batches:
            assert b.size == 1 or b.size * lengths[b].max() <= budget
    # Nearly full: short rows fill a batch, each batch holds as many rows as fit its widest row.
    assert [b.size for b in token_batches(np.full(10, 3), 12)] == [4, 4, 2]
    assert [b.size for b in token_batches(np.array([1, 1, 1, 5, 5]), 10)] == [3, 2]
    assert [b.size for b in token_batches(np.full(7, 2), 100, max_rows=3)] == [3, 3, 1]
    assert token_batches(np.zeros(0, np.int64), 16) == []


def test_row_capped_batches_group_similar_lengths_stably():
    def length_batches(lengths: np.ndarray, rows: int) -> list[np.ndarray]:
        return token_batches(lengths, np.iinfo(np.int64).max, max_rows=rows)

    lengths = np.array([3, 1, 2, 1, 3, 2, 1])
    batches = length_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[1, 3, 6], [2, 5, 0], [4]]
    # Every row exactly once, whatever the batch size.
    for size in (1, 2, 7, 100):
        assert sorted(np.concatenate(length_batches(lengths, size)).tolist()) == list(range(lengths.size))
    assert length_batches(np.zeros(0, np.int64), 4) == []
