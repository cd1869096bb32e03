"""The numpy encoder: equal to the Keras encoder, loaded from a model directory without TensorFlow; other
networks load TensorFlow, and say what to install without it."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import assert_same_codes, build_codec, random_sequences
from threadpoolctl import threadpool_info, threadpool_limits

from seqcodec.model import names
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.engine import NumpyDecoder, NumpyEncoder, run_batches
from seqcodec.model.layers import TokenCount
from seqcodec.model.loader import load
from seqcodec.model.network import Network, build_decoder
from seqcodec.model.storage import save_codec
from seqcodec.model.tf_engine import KerasDecoder, KerasEncoder
from seqcodec.model.tfenv import keras

TINY = {"vocab_size": 13, "max_length": 12, "hidden_size": 16, "embedding_size": 8}
SHAPES = {
    "bidirectional": {},
    "one direction": {"bidirectional": False},
    "autoregressive": {"decoder": "autoregressive"},
    "no position signal": {"position_signal": False},
}


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    return random_sequences(300, 13, 12, seed=21)


@pytest.fixture(scope="module", params=list(SHAPES))
def saved(request, tmp_path_factory):
    """(codec, its saved model dir) of each encoder shape, with weights trained a little off their start."""
    config = CodecConfig(**TINY, **SHAPES[request.param])
    codec = build_codec(config, seed=3)
    # Random initial biases are zero; move every weight so the test sees all of them.
    rng = np.random.default_rng(4)
    for variable in codec.encoder.weights:
        variable.assign(variable.numpy() + rng.normal(0, 0.3, variable.shape).astype(np.float32))
    model_dir = tmp_path_factory.mktemp("numpy") / "model"
    save_codec(codec, model_dir)
    return codec, model_dir


def test_numpy_encoder_equals_the_keras_encoder(saved, sequences):
    network, model_dir = saved
    # The Keras layers themselves (batched: tests/test_codec.py holds them equal to one sequence at a time).
    keras_codes = SequenceCodec(KerasEncoder(network.encoder), KerasDecoder(network.decoder, network.config),
                                network.config).encode(sequences)
    loaded = load(model_dir)
    assert isinstance(loaded.encoder, NumpyEncoder) and loaded.fingerprint == network.fingerprint()
    np.testing.assert_allclose(loaded.encode(sequences), keras_codes, atol=1e-5)
    np.testing.assert_array_equal(network.codec().encode(sequences), loaded.encode(sequences))


def test_threads_and_batches_change_no_code(saved, sequences):
    _, model_dir = saved
    one = load(model_dir, threads=1).encode(sequences)
    # Many small batches across threads, and one sequence at a time: the same codes (bits where BLAS allows).
    assert_same_codes(load(model_dir, token_budget=40, threads=3).encode(sequences), one)
    encoder = load(model_dir, threads=1)
    singles = np.concatenate([encoder.encode([s]) for s in sequences[:40]])
    assert_same_codes(singles, one[:40])


def test_loading_needs_no_tensorflow(tiny_model_dir):
    """seqcodec.load of a local model directory imports neither TensorFlow nor Keras (nor Beam)."""
    script = (
        "import sys, seqcodec; "
        f"c = seqcodec.load({str(tiny_model_dir)!r}); "
        "print(c.encode([[1, 2, 3]]).shape, sorted(m for m in ('tensorflow', 'keras', 'apache_beam') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(1,", "17)", "[]"]


def edit_manifest(model_dir, change) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_models_saved_without_file_digests_load_on_numpy(tiny_model_dir, tmp_path, sequences):
    """The fingerprint is checked on the weights themselves, so models saved before the manifest
    recorded its files' sha256 load without TensorFlow too."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    edit_manifest(model_dir, lambda data: data.pop("files"))
    codec = load(model_dir)
    assert isinstance(codec.encoder, NumpyEncoder) and isinstance(codec.decoder, NumpyDecoder)
    np.testing.assert_array_equal(codec.encode(sequences), load(tiny_model_dir).encode(sequences))


def gru_network(config: CodecConfig) -> Network:
    """A network of another structure: a GRU encoder, which the numpy engine does not run."""
    ids = keras.Input(shape=(None,), dtype="int32", name=names.IDS)
    x = keras.layers.Embedding(config.vocab_size + 1, config.embedding_size, mask_zero=True, name=names.EMBEDDING)(ids)
    state = keras.layers.GRU(config.hidden_size, name=names.ENCODER_LSTM)(x)
    code = keras.layers.Concatenate(name=names.CODE)([TokenCount(name=names.LENGTH)(ids), state])
    return Network(keras.Model(ids, code), build_decoder(config), config)


def test_a_network_of_another_structure_runs_on_tensorflow(tmp_path, sequences):
    config = CodecConfig(**TINY, bidirectional=False)
    keras.utils.set_random_seed(2)
    network = gru_network(config)
    save_codec(network, tmp_path / "gru")
    codec = load(tmp_path / "gru")
    assert isinstance(codec.encoder, KerasEncoder) and isinstance(codec.decoder, NumpyDecoder)
    assert codec.fingerprint == network.fingerprint()
    codes = codec.encode(sequences)
    np.testing.assert_allclose(codes, network.encoder(np.asarray(
        [np.r_[s + 1, np.zeros(12 - len(s), int)] for s in sequences], np.int32)).numpy(), atol=1e-5)
    np.testing.assert_array_equal(codes, network.codec().encode(sequences))


def test_without_tensorflow_beam_search_runs_and_other_networks_say_what_to_install(tiny_ar_network, tmp_path):
    save_codec(tiny_ar_network, tmp_path / "ar")
    config = CodecConfig(**TINY, bidirectional=False)
    save_codec(gru_network(config), tmp_path / "gru")
    script = (
        "import sys; sys.modules['tensorflow'] = None; import seqcodec\n"
        f"print(seqcodec.load({str(tmp_path / 'ar')!r}).decode([[2] + [0.5] * 16])[0].size)\n"
        f"print(seqcodec.load({str(tmp_path / 'ar')!r}, beam_width=2).decode([[3] + [0.5] * 16])[0].size)\n"
        f"seqcodec.load({str(tmp_path / 'gru')!r})"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout.split() == ["2", "3"]
    last = run.stderr.strip().splitlines()[-1]
    assert "TensorFlowMissing: model directory" in last and last.endswith("pip install 'seqcodec[train]'"), run.stderr


def blas_threads() -> int:
    """numpy's BLAS pool size now, as threadpoolctl reads it from the library."""
    return next(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def test_blas_limit_holds_while_any_caller_runs_and_comes_back_after_the_last():
    """Two callers in two threads (as DoFn threads of one SDK worker), the first to start leaving first:
    the second still runs with one BLAS thread, and the count the process had comes back after both."""
    seen = {}
    entered = {name: threading.Event() for name in "ab"}
    release = {name: threading.Event() for name in "ab"}

    def caller(name: str) -> threading.Thread:
        def run(rows: np.ndarray) -> None:
            entered[name].set()
            assert release[name].wait(30)
            seen[name] = blas_threads()

        thread = threading.Thread(target=run_batches, args=(run, [np.arange(1)], 1))
        thread.start()
        return thread

    with threadpool_limits(3, user_api="blas"):  # a known count other than 1, whatever the machine
        assert blas_threads() == 3
        a = caller("a")
        assert entered["a"].wait(30)
        b = caller("b")
        assert entered["b"].wait(30)
        release["a"].set()
        a.join(30)
        release["b"].set()
        b.join(30)
        assert seen == {"a": 1, "b": 1}
        assert blas_threads() == 3
