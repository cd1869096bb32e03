"""The autoregressive decoder beside repeat: saved and loaded, old manifests, teacher inputs, training options."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, random_sequences, run_seqcodec, write_tokens_parquet

import seqcodec
from seqcodec.model import names, network
from seqcodec.model.batches import flatten
from seqcodec.model.config import START_ID, CodecConfig
from seqcodec.model.data import TokenSequences
from seqcodec.model.loader import load
from seqcodec.model.manifest import ModelDirError
from seqcodec.model.network import Network, hidden_id
from seqcodec.model.similarity import SEARCH_FILE, CodeNormalization
from seqcodec.model.storage import save_codec
from seqcodec.model.tf_engine import beam_decoder
from seqcodec.model.tfenv import keras, tf
from seqcodec.model.train import (
    CHARACTER_VOCAB,
    EDITS,
    SampledSoftmaxTraining,
    TrainSettings,
    bucketed_dataset,
    defaults_for,
    edited_pair_codes,
    edited_rows,
    near_duplicate_loss,
    splice_rows,
    teacher_inputs,
)


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    return random_sequences(30, TINY["vocab_size"], TINY["max_length"], seed=31)


def saved_network(model_dir: Path) -> Network:
    """A model directory's networks as Keras loads them."""
    config = seqcodec.read_manifest(model_dir).config
    return Network(*(keras.saving.load_model(model_dir / name) for name in ("encoder.keras", "decoder.keras")), config)


@pytest.fixture(scope="module")
def ar_model_dir(tiny_ar_network, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("ar") / "model"
    save_codec(tiny_ar_network, model_dir)
    return model_dir


def test_autoregressive_model_saves_loads_and_decodes_the_same(tiny_ar_codec, ar_model_dir, sequences):
    manifest = json.loads((ar_model_dir / "manifest.json").read_text())
    assert manifest["decoder"] == "autoregressive"
    loaded = load(ar_model_dir)
    assert loaded.config.decoder == "autoregressive" and loaded.fingerprint == manifest["fingerprint"]
    codes = tiny_ar_codec.encode(sequences)
    np.testing.assert_array_equal(loaded.encode(sequences), codes)
    for got, want in zip(loaded.decode(codes), tiny_ar_codec.decode(codes), strict=True):
        np.testing.assert_array_equal(got, want)
    with zipfile.ZipFile(ar_model_dir / "decoder.keras") as archive:
        assert '"Lambda"' not in archive.read("config.json").decode()


def test_manifest_without_decoder_loads_as_repeat_with_its_fingerprint(tiny_model_dir, tiny_codec, tmp_path, sequences):
    """Models saved before the field existed: no "decoder" key; they load as repeat and their
    fingerprint (which covers the configuration) still matches."""
    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest.pop("decoder") == "repeat"
    (old / "manifest.json").write_text(json.dumps(manifest))
    loaded = load(old)
    assert loaded.config.decoder == "repeat" and loaded.fingerprint == tiny_codec.fingerprint
    codes = tiny_codec.encode(sequences)
    for got, want in zip(loaded.decode(codes), tiny_codec.decode(codes), strict=True):
        np.testing.assert_array_equal(got, want)


def test_decoder_kind_is_part_of_the_configuration():
    assert CodecConfig(**TINY).decoder == "repeat"
    assert "decoder" not in CodecConfig(**TINY).identity()
    assert CodecConfig(**TINY, decoder="autoregressive").identity()["decoder"] == "autoregressive"
    with pytest.raises(ValueError, match="decoder must be one of"):
        CodecConfig(**TINY, decoder="beam")


def test_teacher_inputs_shift_by_one_and_hide_only_real_tokens():
    config = CodecConfig(**TINY, decoder="autoregressive")
    ids = np.array([[3, 4, 5, 6], [7, 8, 0, 0]], dtype=np.int32)  # shifted ids, 0 = padding
    plain = teacher_inputs(ids, config, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(plain, [[START_ID, 3, 4, 5], [START_ID, 7, 8, 0]])
    wide = np.random.default_rng(1).integers(1, TINY["vocab_size"] + 1, size=(64, 40)).astype(np.int32)
    hidden = teacher_inputs(wide, config, 0.25, np.random.default_rng(2))
    assert (hidden[:, 0] == START_ID).all()
    share = (hidden[:, 1:] == hidden_id(config)).mean()
    assert 0.2 < share < 0.3
    kept = hidden[:, 1:] != hidden_id(config)
    np.testing.assert_array_equal(hidden[:, 1:][kept], wide[:, :-1][kept])
    assert (teacher_inputs(ids, config, 0.99, np.random.default_rng(0))[1, 3] == 0)  # padding stays padding


def test_splices_join_two_rows_of_one_length_and_keep_every_length():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=200)
    ids = np.zeros((200, 8), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = 100 * (row + 1) + np.arange(1, n + 1)  # every token names its row and position
    spliced = splice_rows(ids, 0.5, np.random.default_rng(4))
    np.testing.assert_array_equal((spliced > 0).sum(axis=1), lengths)  # padding and lengths untouched
    changed = (spliced != ids).any(axis=1)
    assert 0.3 < changed.mean() < 0.5  # about half, less the rows without a partner of their length
    for row in np.flatnonzero(changed):
        n, head = lengths[row], np.flatnonzero(spliced[row] != ids[row])[0]
        assert 1 <= head < n and (spliced[row, :head] == ids[row, :head]).all()
        donor = spliced[row, head] // 100 - 1  # the tail is one other row's, position for position
        assert donor != row and lengths[donor] == n
        np.testing.assert_array_equal(spliced[row, head:n], ids[donor, head:n])
    assert splice_rows(ids, 0.0, rng) is ids


def test_word_batches_read_and_score_the_same_spliced_rows():
    """Words splice half their rows by default: the decoder's previous tokens, the targets and the weights of a
    batch must all come from the spliced rows, or training would score one sentence while reading another."""
    rows = [100 * (r + 1) + np.arange(1, 2 + r % 5) for r in range(60)]  # every token names its row
    data = TokenSequences(*flatten(rows))
    config = CodecConfig(vocab_size=6100, max_length=6, decoder="autoregressive")
    dataset, _ = bucketed_dataset(data, 12, seed=5, config=config, splice=defaults_for(6100)["splice"])
    spliced = 0
    for (ids, previous), targets, weights in dataset.take(5).as_numpy_iterator():
        np.testing.assert_array_equal(previous[:, 0], START_ID)
        np.testing.assert_array_equal(previous[:, 1:], ids[:, :-1])
        np.testing.assert_array_equal(targets, np.maximum(ids - 1, 0))
        np.testing.assert_array_equal(weights, ids > 0)
        owners = [set(row[row > 0] // 100) for row in ids - 1]
        spliced += sum(len(owner) > 1 for owner in owners)
    assert spliced > 0


def test_near_duplicate_batches_put_rows_that_share_most_tokens_together():
    """With --near-duplicates, rows of a length are grouped by the tokens they share (a min-hash drawn afresh each
    epoch): a row and its near-identical twin share a batch most of the time, so the contrastive loss must tell
    them apart; without it, about as often as chance has it (9 of 299 other rows)."""
    rng = np.random.default_rng(8)
    originals = rng.permutation(np.arange(1, 3001))[:1800].reshape(150, 12)  # no token in two pairs
    twins = originals.copy()
    twins[np.arange(150), rng.integers(0, 12, 150)] = rng.integers(3001, 3100, 150)  # one token replaced
    owner = np.zeros(3100, dtype=np.int64)
    owner[originals] = np.arange(150)[:, None]
    data = TokenSequences(*flatten(list(originals) + list(twins)))
    config = CodecConfig(vocab_size=3100, max_length=12, decoder="autoregressive")

    def together(near_duplicates: bool) -> float:
        dataset, steps = bucketed_dataset(data, 10, seed=3, config=config, near_duplicates=near_duplicates)
        shared, epochs = 0, 3
        for inputs, _, _ in dataset.take(steps * epochs).as_numpy_iterator():
            tokens = inputs[0] - 1
            pair = [np.bincount(owner[row[row <= 3000]]).argmax() for row in tokens]
            shared += len(pair) - len(set(pair))  # pairs with both rows in this batch
        return shared / (150 * epochs)

    assert together(True) > 0.6
    assert together(False) < 0.1


def is_subsequence(short: np.ndarray, long: np.ndarray) -> bool:
    tokens = iter(long.tolist())
    return all(token in tokens for token in short.tolist())


def test_near_duplicate_edits_drop_or_insert_one_to_three_tokens():
    rng = np.random.default_rng(6)
    lengths = rng.integers(1, 30, size=400)
    ids = np.zeros((400, 30), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, 50, size=n)
    edited = edited_rows(ids, np.random.default_rng(7))
    new_lengths = (edited > 0).sum(axis=1)
    assert edited.shape[1] == new_lengths.max()  # padded to its own longest row
    changes = new_lengths - lengths
    dropped, inserted = changes < 0, changes > 0
    assert 0.4 < dropped.mean() < 0.55 and 0.4 < inserted.mean() < 0.6  # short rows are not shortened
    assert set(np.abs(changes[changes != 0])) == {1, 2, 3}
    counts = np.abs(changes[lengths >= 9])  # long enough to lose 3 tokens: every count shows in full
    assert 0.6 < (counts == 3).mean() < 0.73  # copies far from their row weigh most (MOST_EDITS_SHARE)
    assert 0.11 < (counts == 1).mean() < 0.23 and 0.11 < (counts == 2).mean() < 0.23
    assert (new_lengths >= 1).all() and (new_lengths[dropped] * 3 >= lengths[dropped] * 2).all()
    for row in range(400):
        source, copy = ids[row, : lengths[row]], edited[row, : new_lengths[row]]
        assert (edited[row, new_lengths[row]:] == 0).all()
        if changes[row] < 0:
            assert is_subsequence(copy, source), row
        elif changes[row] > 0:
            assert is_subsequence(source, copy), row
            assert set(copy.tolist()) <= set(ids[ids > 0].tolist())  # new tokens come from the batch
        else:
            assert lengths[row] < 3  # too short to lose a token
            np.testing.assert_array_equal(copy, source)


def test_replaced_and_swapped_edits_keep_the_length():
    """The search map's copies (``kinds=EDITS``): all four kinds; replacements change 1-3 tokens in place
    (new ones from the batch), swaps reorder adjacent tokens and keep them all."""
    rng = np.random.default_rng(16)
    lengths = rng.integers(1, 30, size=800)
    ids = np.zeros((800, 30), dtype=np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, 500, size=n)
    edited = edited_rows(ids, np.random.default_rng(17), kinds=EDITS)
    new_lengths = (edited > 0).sum(axis=1)
    same_length = new_lengths == lengths
    assert 0.4 < same_length.mean() < 0.6  # replaced or swapped: half of the rows
    kinds = {"replaced": 0, "swapped": 0}
    for row in np.flatnonzero(same_length & (lengths >= 4)):
        source, copy = ids[row, : lengths[row]], edited[row, : lengths[row]]
        changed = int((source != copy).sum())
        if sorted(source.tolist()) == sorted(copy.tolist()):
            kinds["swapped"] += 1
            assert 2 <= changed <= 6
            assert all(copy[i] in source[max(i - 3, 0): i + 4] for i in range(len(copy)))  # moved by few places
        else:
            kinds["replaced"] += 1
            assert 1 <= changed <= 3 and set(copy.tolist()) <= set(ids[ids > 0].tolist())
    assert min(kinds.values()) > 120, kinds


def test_near_duplicate_loss_is_low_only_when_each_copy_is_nearest_its_own_row():
    rows = 2 * np.eye(4, dtype=np.float32)
    assert float(near_duplicate_loss(rows, rows)) < 1e-3
    assert float(near_duplicate_loss(rows, 3 * rows)) < 1e-3  # cosine: scale plays no part
    shuffled = float(near_duplicate_loss(rows, rows[[1, 2, 3, 0]]))
    assert shuffled > 9  # each copy is nearest another row: about 1 / temperature
    half = float(near_duplicate_loss(rows, rows + 0.5 * rows[[1, 2, 3, 0]]))
    assert 1e-3 < half < shuffled


def test_near_duplicate_loss_moves_the_rows_codes_towards_fixed_copies():
    """The edited copies' codes are targets outside the gradient: a training step moves the embeddings of
    the rows' tokens and leaves those of tokens found only in the copies exactly as they were."""
    config = CodecConfig(**TINY, decoder="autoregressive")
    encoder = network.build_encoder(config)
    training = SampledSoftmaxTraining(encoder, network.build_decoder(config), 4, config.vocab_size,
                                      near_duplicates=1.0)
    training.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    ids = np.array([[1, 2, 3, 4], [4, 3, 2, 1], [2, 2, 4, 0], [3, 1, 0, 0]], np.int32)  # shifted ids
    copies = np.array([[11, 12, 13, 0], [13, 12, 0, 0], [11, 11, 13, 12], [12, 0, 0, 0]], np.int32)
    previous = teacher_inputs(ids, config, 0.0, np.random.default_rng(0))
    batch = tf.data.Dataset.from_tensors(((ids, previous, copies), np.maximum(ids - 1, 0), (ids > 0) * 1.0))
    embeddings = encoder.get_layer(names.EMBEDDING).embeddings
    before = keras.ops.convert_to_numpy(embeddings)
    training.fit(batch, epochs=3, verbose=0, shuffle=False)
    after = keras.ops.convert_to_numpy(embeddings)
    np.testing.assert_array_equal(after[11:], before[11:])
    assert (np.abs(after[1:5] - before[1:5]).max(axis=1) > 1e-6).all()  # every token of the rows moved


def test_near_duplicate_training_brings_edited_copies_nearer_and_keeps_the_format(tmp_path):
    """The same training with and without --near-duplicates: with it, the saved model's codes, under the
    search map it learned (search.npy), put copies of held-out rows with a token dropped nearer their own
    rows than raw codes of the model trained without it do; the loss is logged apart, the map is checked
    against the manifest, and the networks are standard ones."""
    rows = random_sequences(800, 20, 12, seed=8)
    unseen = [row for row in random_sequences(200, 20, 12, seed=9) if row.size >= 4][:64]
    copies = [np.delete(row, len(row) // 2) for row in unseen]
    loss = {}
    for weight in ("0", "0.5"):
        (tmp_path / weight).mkdir()
        manifest = train_on_rows(tmp_path / weight, rows, "--epochs", "6", "--decoder", "autoregressive",
                                 "--sampled-softmax", "5", "--learning-rate", "0.01", "--near-duplicates", weight)
        assert manifest["metrics"]["settings"]["near_duplicates"] == float(weight)
        codec = load(tmp_path / weight / "model")
        if weight == "0":
            with pytest.raises(ModelDirError, match="no learned search map"):
                CodeNormalization.from_model(tmp_path / weight / "model")
            search = CodeNormalization.fit(codec.encode(rows), "raw")
        else:
            assert manifest["search"] == "search.npy" and "search.npy" in manifest["files"]
            search = CodeNormalization.from_model(tmp_path / weight / "model")
            # The saved map was fitted on copies with edits of every kind: under it, what such edits do
            # to a code has about unit size in every direction (the learned map alone leaves it small).
            originals, copied = edited_pair_codes(codec, TokenSequences(*flatten(rows)), np.arange(len(rows)),
                                                  np.random.default_rng(5))
            moves = (copied - originals)[:, 1:].astype(np.float64) @ search.matrix
            spread = np.linalg.eigvalsh(moves.T @ moves / len(moves))
            assert 0.6 < spread.mean() < 1.4 and spread.max() < 3, spread
        loss[weight] = float(near_duplicate_loss(search(codec.encode(unseen)), search(codec.encode(copies))))
        assert [t.size for t in codec.decode(codec.encode(rows[:50]))] == [r.size for r in rows[:50]]
    assert loss["0.5"] < 0.8 * loss["0"], loss
    assert "near_duplicate_loss" in json.loads((tmp_path / "0.5" / "model" / "history.json").read_text())
    np.save(tmp_path / "0.5" / "model" / "search.npy", np.eye(16, dtype=np.float32))  # another map
    with pytest.raises(ModelDirError, match="search.npy does not match the sha256"):
        CodeNormalization.from_model(tmp_path / "0.5" / "model")


def test_defaults_depend_on_the_kind_of_vocabulary(tmp_path):
    assert defaults_for(26)["decoder"] == "repeat" == defaults_for(CHARACTER_VOCAB)["decoder"]
    assert defaults_for(CHARACTER_VOCAB + 1)["decoder"] == "autoregressive"
    with pytest.raises(ValueError, match="word-dropout"):
        TrainSettings(word_dropout=1.0)
    with pytest.raises(ValueError, match="weight-decay"):
        TrainSettings(weight_decay=-1)
    with pytest.raises(ValueError, match="splice"):
        TrainSettings(splice=1.0)
    # seqcodec.train() (and so `seqcodec train`) takes them for every option left out
    for vocab in (26, 4000):
        rows = random_sequences(40, vocab, 6, seed=vocab)
        rows[0][0] = vocab - 1  # the vocabulary's size is the largest id + 1
        manifest = seqcodec.train(rows, tmp_path / f"m{vocab}", hidden_size=8, epochs=1, time_budget=0)
        chosen = defaults_for(vocab)
        assert (manifest.config.decoder, manifest.config.embedding_size) == (chosen["decoder"],
                                                                              chosen["embedding_size"])
        settings = manifest.metrics["settings"]
        for name in ("batch_size", "dropout", "word_dropout", "label_smoothing", "weight_decay", "splice",
                     "sampled_softmax", "tie_embeddings", "tie_output", "near_duplicates", "learning_rate"):
            assert settings[name] == chosen[name], (vocab, name)
    assert (defaults_for(26)["learning_rate"], defaults_for(4000)["learning_rate"]) == (2e-3, 4e-3)
    assert (defaults_for(26)["splice"], defaults_for(4000)["splice"]) == (0.5, 0.5)
    assert (defaults_for(26)["near_duplicates"], defaults_for(4000)["near_duplicates"]) == (0.0, 0.4)
    assert not (tmp_path / "m26" / SEARCH_FILE).exists() and (tmp_path / "m4000" / SEARCH_FILE).exists()
    # A word vocabulary with the repeat decoder asked for: neither kind of tying unless asked for too.
    manifest = seqcodec.train(rows, tmp_path / "repeat", hidden_size=8, epochs=1, time_budget=0, decoder="repeat",
                              learning_rate=1e-3)
    assert not manifest.metrics["settings"]["tie_embeddings"] and not manifest.metrics["settings"]["tie_output"]
    assert manifest.metrics["settings"]["learning_rate"] == 1e-3  # a rate given is the rate used
    # The full softmax asked for on words: the near-duplicate loss needs the sampled one, so its default is off.
    manifest = seqcodec.train(rows, tmp_path / "full", hidden_size=8, epochs=1, time_budget=0, sampled_softmax=0)
    assert manifest.metrics["settings"]["near_duplicates"] == 0.0 and not (tmp_path / "full" / SEARCH_FILE).exists()


def train_on_rows(tmp_path, rows: list[np.ndarray], *args) -> dict:
    """``seqcodec train`` on ``rows`` with a tiny network and a fixed number of epochs; the manifest."""
    write_tokens_parquet(tmp_path / "rows.parquet", range(len(rows)), rows)
    code, _, err = run_seqcodec(
        ["train", "--input", tmp_path / "rows.parquet", "--model-dir", tmp_path / "model", "--hidden-size", "16",
         "--embedding-size", "8", "--batch-size", "32", "--seed", "3", "--time-budget", "0", *args]
    )  # fmt: skip
    assert code == 0, err
    return json.loads((tmp_path / "model" / "manifest.json").read_text())


def test_train_autoregressive_with_every_regularizer_learns(tmp_path):
    """Rows of one repeated token: learnable in a few epochs. Teacher forcing with dropout, word
    dropout, label smoothing, weight decay and splices must still produce a model whose greedy decoding
    rebuilds held-out rows far above chance (1/10 per token)."""
    rng = np.random.default_rng(4)
    rows = [np.full(int(rng.integers(1, 9)), int(rng.integers(0, 10))) for _ in range(600)]
    manifest = train_on_rows(
        tmp_path, rows, "--epochs", "8", "--decoder", "autoregressive", "--dropout", "0.1", "--word-dropout", "0.2",
        "--label-smoothing", "0.1", "--weight-decay", "0.01", "--splice", "0.2")
    model_dir = tmp_path / "model"
    assert manifest["decoder"] == "autoregressive"
    settings = manifest["metrics"]["settings"]
    assert (settings["dropout"], settings["word_dropout"]) == (0.1, 0.2)
    assert (settings["label_smoothing"], settings["weight_decay"], settings["splice"]) == (0.1, 0.01, 0.2)
    assert manifest["metrics"]["test"]["token_accuracy"] > 0.6
    codec = load(model_dir)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in saved_network(model_dir).decoder.layers)
    assert [t.size for t in codec.decode(codec.encode(rows[:50]))] == [r.size for r in rows[:50]]


@pytest.mark.parametrize("decoder", ["repeat", "autoregressive"])
def test_sampled_softmax_training_learns_and_decodes_with_the_whole_vocabulary(decoder, tmp_path):
    """Training that scores 5 sampled tokens of 20 per step must still learn the rows of one repeated
    token; the saved decoder keeps its full softmax, so decoding is as without sampling."""
    rng = np.random.default_rng(5)
    rows = [np.full(int(rng.integers(1, 9)), int(rng.integers(0, 20))) for _ in range(800)]
    manifest = train_on_rows(tmp_path, rows, "--epochs", "12", "--decoder", decoder, "--sampled-softmax", "5",
                             "--learning-rate", "0.01")
    model_dir = tmp_path / "model"
    assert manifest["metrics"]["settings"]["sampled_softmax"] == 5
    losses = json.loads((model_dir / "history.json").read_text())["loss"]
    assert losses[-1] < 0.9 * losses[0]
    # Chance is 1/20 per token, the most frequent token ~1/20 too.
    assert manifest["metrics"]["test"]["token_accuracy"] > 0.3
    codec = load(model_dir)
    assert saved_network(model_dir).decoder.get_layer("token_probs").units == 20
    assert [t.size for t in codec.decode(codec.encode(rows[:50]))] == [r.size for r in rows[:50]]


def test_tied_embeddings_train_one_table_and_save_a_standard_decoder(tmp_path):
    """With --tie-embeddings the decoder reads previous tokens through the encoder's embedding in
    training; the saved decoder holds a plain Embedding whose rows are the encoder's (plus the hidden
    id's own row), loads without the training layer, and the model still learns the rows of one
    repeated token."""
    rng = np.random.default_rng(6)
    rows = [np.full(int(rng.integers(1, 9)), int(rng.integers(0, 10))) for _ in range(600)]
    manifest = train_on_rows(tmp_path, rows, "--epochs", "8", "--decoder", "autoregressive", "--tie-embeddings",
                             "--word-dropout", "0.2")
    assert manifest["metrics"]["settings"]["tie_embeddings"] is True
    assert manifest["metrics"]["test"]["token_accuracy"] > 0.6
    codec, network = load(tmp_path / "model"), saved_network(tmp_path / "model")
    shared = network.encoder.get_layer("embedding").embeddings.numpy()
    previous = network.decoder.get_layer("previous_embedding")
    assert type(previous) is keras.layers.Embedding and previous.input_dim == hidden_id(codec.config) + 1
    np.testing.assert_array_equal(previous.embeddings.numpy()[: shared.shape[0]], shared)
    assert [t.size for t in codec.decode(codec.encode(rows[:50]))] == [r.size for r in rows[:50]]


def test_tied_training_decoder_shares_the_encoders_table_once(tmp_path):
    """The training graph holds the encoder's embedding once (no variable updated twice per step), and
    ``untie`` copies every trained weight into the standard decoder."""
    config = CodecConfig(**TINY, decoder="autoregressive")
    encoder, decoder = network.build_encoder(config), network.build_decoder(config)
    trained = network.tied_decoder(config, 0.0, encoder)
    variables = network.build_autoencoder(encoder, trained).trainable_variables
    assert len({id(v) for v in variables}) == len(variables)
    assert sum(v is encoder.get_layer("embedding").embeddings for v in variables) == 1
    for layer in trained.layers:  # trained weights differ from the standard decoder's fresh ones
        for weight in layer.weights:
            weight.assign(weight + 1.0)
    network.untie(trained, decoder)
    table = trained.get_layer("previous_embedding").table().numpy()
    np.testing.assert_array_equal(decoder.get_layer("previous_embedding").embeddings.numpy(), table)
    folded = trained.get_layer("decoder_lstm")  # the steps and the LSTM in one layer (FoldedDecoderLSTM)
    for name, layer in [("decoder_lstm", folded.lstm), ("steps", folded.steps), *(
            (name, trained.get_layer(name)) for name in ("token_probs", "initial_h", "initial_c"))]:
        for got, want in zip(decoder.get_layer(name).get_weights(), layer.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("decoder, sampled", [("autoregressive", "5"), ("repeat", "0")])
def test_tied_output_trains_and_saves_a_standard_output_layer(decoder, sampled, tmp_path):
    """--tie-output, with a sampled or a full softmax: the model learns the rows of one repeated token
    and the saved decoder's output layer is a plain Dense of the whole vocabulary."""
    rng = np.random.default_rng(7)
    rows = [np.full(int(rng.integers(1, 9)), int(rng.integers(0, 20))) for _ in range(800)]
    # 24 epochs: at 12 some seeds of either decoder layout stay near chance on this tiny task.
    manifest = train_on_rows(tmp_path, rows, "--epochs", "24", "--decoder", decoder, "--tie-output",
                             "--sampled-softmax", sampled, "--learning-rate", "0.01")
    assert manifest["metrics"]["settings"]["tie_output"] is True
    assert manifest["metrics"]["test"]["token_accuracy"] > 0.3  # chance and the most frequent token: ~1/20
    codec = load(tmp_path / "model")
    output = saved_network(tmp_path / "model").decoder.get_layer("token_probs")
    assert type(output) is keras.layers.Dense and output.units == 20
    assert [t.size for t in codec.decode(codec.encode(rows[:50]))] == [r.size for r in rows[:50]]


@pytest.mark.parametrize("kind, embeddings", [("autoregressive", True), ("autoregressive", False), ("repeat", False)])
def test_untied_decoder_computes_what_the_tied_output_trained(kind, embeddings):
    """``untie`` folds the tied output layer (projection times the encoder's token rows) into the
    standard decoder's Dense and copies the folded steps and LSTM into theirs: both decoders give the
    same probabilities, for rows of different lengths, and the training graph holds the encoder's table once."""
    config = CodecConfig(**TINY, decoder=kind)
    encoder, decoder = network.build_encoder(config), network.build_decoder(config)
    trained = network.tied_decoder(config, 0.0, encoder, embeddings=embeddings, output=True)
    variables = network.build_autoencoder(encoder, trained).trainable_variables
    assert sum(v is encoder.get_layer("embedding").embeddings for v in variables) == 1
    rng = np.random.default_rng(8)
    for weight in encoder.weights + trained.weights:  # away from the initial values, biases included
        weight.assign(weight + rng.normal(0, 0.3, weight.shape).astype("float32"))
    network.untie(trained, decoder)
    table = encoder.get_layer("embedding").embeddings.numpy()  # row t + 1 embeds token t
    np.testing.assert_allclose(decoder.get_layer("token_probs").kernel.numpy(),
                               trained.get_layer("token_probs").projection.numpy() @ table[1:].T, rtol=1e-5, atol=1e-6)
    codes = np.asarray(encoder(np.array([[3, 1, 4, 1, 5], [2, 7, 1, 0, 0]], np.int32)))
    previous = np.array([[START_ID, 4, 2, 5, 2], [START_ID, 3, 8, 2, 2]], np.int32)
    inputs = [codes, previous] if kind == "autoregressive" else codes
    want = np.asarray(trained(inputs))
    np.testing.assert_allclose(np.asarray(decoder(inputs)), want, rtol=1e-5, atol=1e-6)
    assert want.argmax(-1).std() > 0  # the probabilities depend on the weights, not one constant token


@pytest.mark.parametrize("kind", ["autoregressive", "repeat"])
def test_folded_decoder_trains_as_the_two_layers_do(kind):
    """``FoldedDecoderLSTM`` (training's decoder) and ``DecoderSteps`` + LSTM given the same weights: the
    same loss and the same gradient for every weight, rows of different lengths included."""
    config = CodecConfig(**TINY, decoder=kind)
    encoder = network.build_encoder(config)
    folded = network.build_decoder(config, folded=True)
    layers = network.build_decoder(config)
    rng = np.random.default_rng(9)
    for weight in folded.weights:  # away from the initial values, biases included
        weight.assign(weight + rng.normal(0, 0.3, weight.shape).astype("float32"))
    network.untie(folded, layers)
    ids = np.array([[3, 1, 4, 1, 5], [2, 7, 1, 0, 0], [6, 0, 0, 0, 0]], np.int32)
    previous = tf.constant([[START_ID, 4, 2, 5, 2], [START_ID, 3, 8, 2, 2], [START_ID, 7, 1, 1, 1]], tf.int32)

    def loss_and_gradients(decoder):
        with tf.GradientTape() as tape:
            codes = encoder(ids)
            probs = decoder([codes, previous] if kind == "autoregressive" else codes)
            picked = tf.gather(probs, np.maximum(ids - 1, 0), batch_dims=2)
            loss = -tf.reduce_sum(tf.math.log(picked) * (ids > 0))
        variables = encoder.trainable_variables + decoder.trainable_variables
        return float(loss), {v.path: g for v, g in zip(variables, tape.gradient(loss, variables), strict=True)}

    loss, grads = loss_and_gradients(folded)
    want_loss, want = loss_and_gradients(layers)
    assert loss == pytest.approx(want_loss, rel=1e-5)
    # The folded layer's variables are its sublayers': "decoder_lstm/steps/position" is "steps/position".
    inner = ("decoder_lstm/steps/", "decoder_lstm/decoder_lstm/")
    renamed = {name.removeprefix("decoder_lstm/") if name.startswith(inner) else name: g for name, g in grads.items()}
    assert renamed.keys() == want.keys()
    for name, g in want.items():
        np.testing.assert_allclose(tf.convert_to_tensor(renamed[name]).numpy(), tf.convert_to_tensor(g).numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "args, words",
    [(["--tie-embeddings", "--decoder", "repeat"], "needs the autoregressive decoder"),
     (["--dropout", "1.5"], "dropout"), (["--label-smoothing", "1"], "label-smoothing"),
     (["--word-dropout", "-0.1"], "word-dropout"), (["--weight-decay", "-1"], "weight-decay"),
     (["--sampled-softmax", "-1"], "sampled-softmax"),
     (["--sampled-softmax", "8", "--label-smoothing", "0.1"], "cannot be combined"),
     (["--near-duplicates", "-1"], "near-duplicates must be >= 0"),
     (["--near-duplicates", "0.5"], "--near-duplicates needs the sampled softmax")],
)  # fmt: skip
def test_bad_regularization_options_are_one_line_errors(args, words, seqcodec, tmp_path):
    write_tokens_parquet(tmp_path / "rows.parquet", range(8), random_sequences(8, 5, 4, seed=1))
    code, _, err = seqcodec(["train", "--input", tmp_path / "rows.parquet", "--model-dir", tmp_path / "m", *args])
    assert code == 2
    assert words in err and "Traceback" not in err


def sequence_log_likelihood(network: Network, codes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """log p(tokens | code) per row under teacher forcing: what beam search maximizes."""
    previous = np.concatenate([np.full((len(tokens), 1), START_ID), tokens[:, :-1] + 1], axis=1)
    probs = np.asarray(network.decoder([codes.astype(np.float32), previous.astype(np.int32)], training=False))
    picked = np.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    return np.log(picked.astype(np.float64)).sum(axis=1)


def test_beam_search_finds_the_most_likely_sequence_when_wide_enough(tiny_ar_network, tiny_ar_codec):
    """Length 3 over 13 tokens: 2,197 sentences in all, and a beam of 13² keeps every prefix, so it must
    return the exact maximum found by scoring every sentence; width 1 must return greedy's tokens."""
    config = tiny_ar_codec.config
    codes = tiny_ar_codec.encode(random_sequences(6, config.vocab_size, 3, seed=5))
    codes[:, 0] = 3
    grid = np.stack(np.meshgrid(*[np.arange(config.vocab_size)] * 3, indexing="ij"), -1).reshape(-1, 3)
    wide = tiny_ar_network.codec(beam_width=config.vocab_size**2)
    found = np.stack(wide.decode(codes))
    greedy = np.stack(tiny_ar_codec.decode(codes))
    for code, got, first in zip(codes, found, greedy, strict=True):
        scores = sequence_log_likelihood(tiny_ar_network, np.repeat(code[None], len(grid), 0), grid)
        best = scores.max()
        got_score = sequence_log_likelihood(tiny_ar_network, code[None], got[None])[0]
        assert got_score == pytest.approx(best, abs=1e-4)
        assert got_score >= sequence_log_likelihood(tiny_ar_network, code[None], first[None])[0] - 1e-4
    one = tiny_ar_network.codec(beam_width=1)
    assert one.beam_width == 1
    from seqcodec.model.tfenv import tf

    np.testing.assert_array_equal(beam_decoder(tiny_ar_network.decoder, config, 1)(tf.constant(codes)).numpy(), greedy)


@pytest.mark.parametrize("width", [2, 3, 5])
def test_numpy_beam_search_chooses_what_the_tensorflow_reference_does(width, tiny_ar_network, tiny_ar_codec,
                                                                       sequences):
    """The engine's beam search (numpy) against the Keras layers' (TensorFlow), on rows of mixed lengths."""
    from seqcodec.model.engine import NumpyDecoder
    from seqcodec.model.tfenv import tf

    beam = tiny_ar_network.codec(beam_width=width)
    assert isinstance(beam.decoder, NumpyDecoder) and beam.decoder.beam_width == width
    codes = tiny_ar_codec.encode(sequences)
    lengths = codes[:, 0].astype(int)
    reference = beam_decoder(tiny_ar_network.decoder, tiny_ar_codec.config, width)(tf.constant(codes)).numpy()
    got = beam.decode(codes)
    for row, tokens in enumerate(got):
        np.testing.assert_array_equal(tokens, reference[row, : lengths[row]])


def test_beam_search_is_batch_invariant_and_keeps_lengths(tiny_ar_network, tiny_ar_codec, sequences):
    """Rows of mixed lengths decoded together equal each decoded alone, exactly ``length`` tokens each."""
    beam = tiny_ar_network.codec(beam_width=4)
    codes = tiny_ar_codec.encode(sequences)
    together = beam.decode(codes)
    assert [t.size for t in together] == [s.size for s in sequences]
    for i in range(0, len(codes), 7):
        np.testing.assert_array_equal(beam.decode(codes[i : i + 1])[0], together[i])
    assert beam.beam_width == 4
    with pytest.raises(ValueError, match="beam width"):
        tiny_ar_network.codec(beam_width=0)


def test_beam_width_is_ignored_by_the_repeat_decoder_and_checked_on_the_command_line(tiny_network, seqcodec, tmp_path):
    assert tiny_network.codec(beam_width=5).beam_width == 1
    write_tokens_parquet(tmp_path / "rows.parquet", range(4), random_sequences(4, 5, 4, seed=1))
    code, _, err = seqcodec(["encode", "--input", tmp_path / "rows.parquet", "--output", tmp_path / "out",
                             "--model-dir", tmp_path / "none", "--decode", "--beam-width", "0"])
    assert code == 2 and "--beam-width must be at least 1" in err and "Traceback" not in err


def test_beam_width_reaches_the_decode_job_and_the_beam_transform(tiny_ar_network, tiny_ar_codec, ar_model_dir,
                                                                  sequences, tmp_path):
    """`encode --decode --beam-width 3` and `DecodeCodes(beam_width=3)` decode exactly as the codec does."""
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that
    from helpers_beam import read_folder

    beam3 = tiny_ar_network.codec(beam_width=3)
    codes = tiny_ar_codec.encode(sequences)
    expected = {i: t.tolist() for i, t in enumerate(beam3.decode(codes))}
    assert expected != {i: t.tolist() for i, t in enumerate(tiny_ar_codec.decode(codes))}  # a beam changes some
    write_tokens_parquet(tmp_path / "rows.parquet", range(len(sequences)), sequences)
    code, _, err = run_seqcodec(["encode", "--input", tmp_path / "rows.parquet", "--output", tmp_path / "run",
                                 "--model-dir", ar_model_dir, "--decode", "--beam-width", "3"])
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["beam_width"] == 3
    decoded = read_folder(tmp_path / "run" / "decoded")
    assert dict(zip(decoded.column("id").to_pylist(), decoded.column("tokens").to_pylist(), strict=True)) == expected

    def check(pairs):
        assert {i: t.tolist() for i, t in pairs} == expected

    with TestPipeline() as p:
        out = p | beam.Create(list(enumerate(codes))) | seqcodec.DecodeCodes(str(ar_model_dir), beam_width=3)
        assert_that(out.main, check)
