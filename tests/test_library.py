"""The public API: `import seqcodec`, load/encode/decode, train mirroring the command, remote model dirs."""

from __future__ import annotations

import dataclasses
import inspect
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from apache_beam.io.localfilesystem import LocalFileSystem
from conftest import TINY, random_sequences

import seqcodec
from seqcodec.pipeline.train import TrainSpec
from seqcodec.pipeline.train import parser as train_parser


def test_import_is_light_and_names_resolve():
    # Names are imported on first use: `import seqcodec` alone loads neither TensorFlow nor Beam.
    code = "import sys, seqcodec; print(sorted(m for m in ('tensorflow', 'apache_beam') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert set(seqcodec.__all__) == {"__version__", *seqcodec._EXPORTS}
    for name in seqcodec.__all__:
        assert getattr(seqcodec, name) is not None
    with pytest.raises(AttributeError):
        _ = seqcodec.no_such_name


def test_load_encode_decode(tiny_model_dir, tiny_codec):
    codec = seqcodec.load(tiny_model_dir)
    sequences = random_sequences(30, TINY["vocab_size"], TINY["max_length"], seed=11)
    codes = codec.encode(sequences)
    assert codes.dtype == np.float32 and codes.shape == (30, TINY["hidden_size"] + 1)
    np.testing.assert_array_equal(codes, tiny_codec.encode(sequences))
    decoded = codec.decode(codes)
    assert [len(d) for d in decoded] == [len(s) for s in sequences]
    for got, want in zip(decoded, tiny_codec.decode(codes), strict=True):
        np.testing.assert_array_equal(got, want)
    assert codec.config == tiny_codec.config and codec.fingerprint == tiny_codec.fingerprint
    assert codec.manifest == seqcodec.read_manifest(tiny_model_dir)


def test_encode_reads_arrow_tokens_not_columns(tiny_codec):
    """An Arrow table is encoded from its tokens column (iterating it would give its columns), list arrays as rows."""
    sequences = [s.tolist() for s in random_sequences(5, TINY["vocab_size"], TINY["max_length"], seed=13)]
    expected = tiny_codec.encode(sequences)
    table = pa.table({"id": range(5), "tokens": pa.array(sequences, pa.list_(pa.int32()))})
    chunked = pa.chunked_array([pa.array(sequences[:2], pa.large_list(pa.int64())),
                                pa.array(sequences[2:], pa.large_list(pa.int64()))])
    for data in (table, table.to_batches()[0], table.column("tokens"), table.column("tokens").combine_chunks(),
                 chunked, pa.array(sequences, pa.large_list(pa.uint8()))):
        np.testing.assert_array_equal(tiny_codec.encode(data), expected, err_msg=type(data).__name__)
    sliced = pa.array([[1], *sequences], pa.list_(pa.int64())).slice(1)  # offsets that do not start at 0
    np.testing.assert_array_equal(tiny_codec.encode(sliced), expected)


@pytest.mark.parametrize("data, message", [
    (pa.table({"id": [1, 2], "seq": [[1], [2]]}), "needs a 'tokens' column of token lists (it has 'id', 'seq')"),
    (pa.array([1, 2, 3]), "cannot read an Arrow int64 as token sequences"),
    (pa.array([[1.0], [2.5]]), "token ids must be integers, got Arrow double"),
    (pa.array([[1], None]), "sequence 1: null instead of a list of token ids"),
    (pa.array([[1], [2, None]]), "sequence 1: a token id is null"),
], ids=["no-tokens-column", "not-lists", "floats", "null-list", "null-token"])
def test_encode_refuses_arrow_data_it_cannot_read(tiny_codec, data, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_codec.encode(data)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_decode_refuses_codes_that_are_not_floats(tiny_codec, dtype):
    codes = tiny_codec.encode([[1, 2, 3], [4]])
    with pytest.raises(ValueError, match=f"codes must be floats .*got {np.dtype(dtype)}"):
        tiny_codec.decode(codes.astype(dtype))
    assert [t.size for t in tiny_codec.decode(codes.astype(np.float64))] == [3, 1]


class SchemeFileSystem(LocalFileSystem):
    """A Beam filesystem for ``seqtest://`` paths, kept in a local folder: stands in for gs:// or s3://."""

    @classmethod
    def scheme(cls):
        return "seqtest"

    @staticmethod
    def local(path: str) -> str:
        return path[len("seqtest://"):]

    def join(self, base, *paths):
        return "seqtest://" + super().join(self.local(base), *paths)

    def open(self, path, *args, **kwargs):
        return super().open(self.local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self.local(path))


def test_load_from_a_non_local_filesystem(tiny_model_dir, tiny_codec, tmp_path, monkeypatch):
    # Loaded through Beam's FileSystems as on gs:// or s3://: the manifest read remotely, the networks copied.
    remote = f"seqtest://{tiny_model_dir}"
    assert seqcodec.read_manifest(remote).fingerprint == tiny_codec.fingerprint
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    codec = seqcodec.load(remote)
    assert list(tmp_path.iterdir()) == []  # the local copies are gone once loaded
    sequences = random_sequences(5, TINY["vocab_size"], TINY["max_length"], seed=12)
    np.testing.assert_array_equal(codec.encode(sequences), tiny_codec.encode(sequences))
    with pytest.raises(seqcodec.ModelDirError, match="seqtest://"):
        seqcodec.load(f"seqtest://{tiny_model_dir}-missing")


def test_train_mirrors_the_command():
    """Every option of `seqcodec train` is a keyword of seqcodec.train, with the same default, and a TrainSpec field."""
    params = inspect.signature(seqcodec.train).parameters
    for action in train_parser()._actions:
        if action.dest in ("help", "verbose", "input", "model_dir"):
            continue
        assert action.dest in params, f"seqcodec.train has no {action.dest}"
        assert params[action.dest].default == action.default, action.dest
    assert set(params) - {"input", "model_dir"} == {
        a.dest for a in train_parser()._actions if a.dest not in ("help", "verbose", "input", "model_dir")}
    # The command and the function both hand their options on as a TrainSpec, every option a field.
    assert {field.name for field in dataclasses.fields(TrainSpec)} == set(params) - {"input", "model_dir"}


def test_train_in_memory_and_loadable(tmp_path):
    sequences = [[i % 5, (i * 3) % 5, 4][: 1 + i % 3] for i in range(40)]
    manifest = seqcodec.train(sequences, tmp_path / "m", hidden_size=8, embedding_size=4, epochs=1,
                              batch_size=16, time_budget=0, seed=2)
    assert manifest.config.vocab_size == 5 and manifest.config.max_length == 3
    assert manifest == seqcodec.read_manifest(tmp_path / "m")
    assert seqcodec.load(tmp_path / "m").encode([[1, 2]]).shape == (1, 9)


def test_train_never_replaces_a_model_unless_asked(tmp_path):
    sequences = [[i % 5, (i * 3) % 5, 4][: 1 + i % 3] for i in range(40)]
    options = {"hidden_size": 8, "embedding_size": 4, "epochs": 1, "batch_size": 16, "time_budget": 0}
    first = seqcodec.train(sequences, tmp_path / "m", seed=2, **options)
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(seqcodec.ModelDirError, match="holds a model already; pass --overwrite"):
        seqcodec.train(sequences, tmp_path / "m", seed=3, **options)
    assert seqcodec.read_manifest(tmp_path / "m") == first
    second = seqcodec.train(sequences, tmp_path / "m", seed=3, overwrite=True, **options)
    assert second.fingerprint != first.fingerprint
    assert seqcodec.load(tmp_path / "m").fingerprint == second.fingerprint
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_train_stores_a_vocabulary_given_as_tokens(tmp_path):
    sequences = [[i % 5, (i * 3) % 5, 4][: 1 + i % 3] for i in range(40)]
    options = {"hidden_size": 8, "embedding_size": 4, "epochs": 1, "batch_size": 16, "time_budget": 0}
    words = ["zero", "one", "", "three", "four", "five"]  # an empty token is a token too; 6 tokens: 6 ids
    manifest = seqcodec.train(sequences, tmp_path / "m", vocab=words, **options)
    assert manifest.config.vocab_size == 6 and manifest.extra["vocab"] == "vocab.txt"
    assert (tmp_path / "m" / "vocab.txt").read_text().splitlines() == words
    with pytest.raises(ValueError, match="the vocabulary: token 1 holds a line break"):
        seqcodec.train(sequences, tmp_path / "n", vocab=["a", "b\nc", "d", "e", "f"], **options)
    assert not (tmp_path / "n").exists()


def test_train_checks_the_model_dir_first(tmp_path, request):
    """A bad --model-dir stops training before the data is read (the input here does not even exist)."""
    cli = request.getfixturevalue("seqcodec")  # the conftest fixture that runs the command
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone else's")
    code, _, err = cli(["train", "--input", tmp_path / "none-*.parquet", "--model-dir", taken])
    assert code == 2 and err.strip().splitlines()[-1].startswith("seqcodec: error: model directory")
    assert "not a seqcodec model" in err
    (tmp_path / "file").write_text("x")
    with pytest.raises(seqcodec.ModelDirError, match="not a seqcodec model"):
        seqcodec.train(str(tmp_path / "none-*.parquet"), tmp_path / "file")


def test_bit_identical_batching_says_whether_codes_alone_equal_codes_among_others():
    """``seqcodec.bit_identical_batching()`` probes the BLAS once; what it says holds for a real codec:
    300 sequences encoded one at a time give the bits of one batch exactly when it says True."""
    codec = seqcodec.load(Path(__file__).resolve().parent.parent / "models" / "default", threads=1)
    sequences = random_sequences(300, 26, 20, seed=12)
    batched = codec.encode(sequences)
    alone = np.concatenate([codec.encode([s]) for s in sequences])
    assert isinstance(seqcodec.bit_identical_batching(), bool)
    assert seqcodec.bit_identical_batching() == np.array_equal(alone, batched)
    np.testing.assert_allclose(alone, batched, rtol=0, atol=1e-5)
