"""The numpy encoder: equal to the Keras encoder, loaded from a model directory without TensorFlow, or not at all."""

import json
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import build_codec, random_sequences
from threadpoolctl import threadpool_info, threadpool_limits

from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.numpy_encoder import NumpyEncoder, load_encoder, run_batches
from seqcodec.model.storage import load_codec, save_codec

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
    codec, model_dir = saved
    # The Keras layers themselves (batched: tests/test_codec.py holds them equal to one sequence at a time).
    keras_codes = SequenceCodec(codec.encoder, codec.decoder, codec.config, fused=False).encode(sequences)
    loaded = load_encoder(model_dir)
    assert loaded is not None and loaded.fingerprint == codec.fingerprint
    np.testing.assert_allclose(loaded.encode(sequences), keras_codes, atol=1e-5)
    np.testing.assert_allclose(codec.encode(sequences), keras_codes, atol=1e-5)
    assert codec.numpy_encoder is not None


def test_threads_and_batches_change_no_code(saved, sequences):
    _, model_dir = saved
    one = load_encoder(model_dir, threads=1).encode(sequences)
    # Many small batches across threads, and one sequence at a time: the same bits.
    np.testing.assert_array_equal(load_encoder(model_dir, token_budget=40, threads=3).encode(sequences), one)
    encoder = load_encoder(model_dir, threads=1)
    singles = np.concatenate([encoder.encode([s]) for s in sequences[:40]])
    np.testing.assert_array_equal(singles, one[:40])


def test_loading_needs_no_tensorflow(tiny_model_dir):
    script = (
        "import sys; from seqcodec.model.numpy_encoder import load_encoder; "
        f"e = load_encoder({str(tiny_model_dir)!r}); "
        "print(e is not None, e.encode([[1, 2, 3]]).shape, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "(1,", "17)", "False", "False"]


def edit_manifest(model_dir, change) -> None:
    path = model_dir / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case", ["no file digests", "encoder file changed"])
def test_unverifiable_encoder_is_left_to_load_codec(case, tiny_model_dir, tmp_path, sequences):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    if case == "no file digests":  # a model saved before save_codec recorded them
        edit_manifest(model_dir, lambda data: data.pop("files"))
    else:
        edit_manifest(model_dir, lambda data: data["files"].update({"encoder.keras": "0" * 64}))
    assert load_encoder(model_dir) is None
    # load_codec still checks the weights themselves: the same model, so it loads.
    codec = load_codec(model_dir)
    np.testing.assert_allclose(codec.encode(sequences), load_codec(tiny_model_dir).encode(sequences), atol=1e-6)


def test_a_numpy_encoder_follows_live_weights(tiny_config, sequences):
    codec = build_codec(tiny_config, seed=8)
    before = codec.encode(sequences)
    for variable in codec.encoder.weights:
        variable.assign(variable.numpy() * 0.5)
    after = codec.encode(sequences)
    assert not np.allclose(before, after)
    fresh = NumpyEncoder(codec.numpy_encoder.weights, tiny_config)
    np.testing.assert_array_equal(fresh.encode(sequences), after)


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
