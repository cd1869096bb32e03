"""The numpy decoder: the Keras decoders' tokens, greedy and by beam search, loaded from a model directory without
TensorFlow."""

import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, build_codec, random_sequences, run_seqcodec
from test_engine_encoder import edit_manifest

from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.engine import NumpyDecoder, low_rank_factors
from seqcodec.model.loader import load
from seqcodec.model.network import Network
from seqcodec.model.storage import save_codec
from seqcodec.model.tf_engine import KerasDecoder, KerasEncoder

SHAPES = {
    "repeat": {},
    "repeat, no position signal": {"position_signal": False},
    "autoregressive": {"decoder": "autoregressive"},
    "autoregressive, no position signal": {"decoder": "autoregressive", "position_signal": False},
    "autoregressive, low-rank output layer": {"decoder": "autoregressive"},
}


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    return random_sequences(300, TINY["vocab_size"], TINY["max_length"], seed=23)


def shaken(codec: Network, seed: int) -> Network:
    """The codec with every weight moved off its start (initial biases are zero), so tests see all of them."""
    rng = np.random.default_rng(seed)
    for variable in [*codec.encoder.weights, *codec.decoder.weights]:
        variable.assign(variable.numpy() + rng.normal(0, 0.3, variable.shape).astype(np.float32))
    return codec


@pytest.fixture(scope="module", params=list(SHAPES))
def saved(request, tmp_path_factory):
    """(codec, its saved model dir) of each decoder shape."""
    codec = shaken(build_codec(CodecConfig(**TINY, **SHAPES[request.param]), seed=5), seed=6)
    if "low-rank" in request.param:  # as --tie-output trains it: a product of narrower matrices
        kernel = codec.decoder.get_layer("token_probs").kernel
        rng = np.random.default_rng(7)
        left, right = rng.normal(0, 1, (kernel.shape[0], 3)), rng.normal(0, 1, (3, kernel.shape[1]))
        kernel.assign((left @ right).astype(np.float32))
    model_dir = tmp_path_factory.mktemp("numpy-decoder") / "model"
    save_codec(codec, model_dir)
    return codec, model_dir


def test_numpy_decoder_equals_the_keras_decoder(saved, sequences):
    network, model_dir = saved
    codec = network.codec()
    codes = codec.encode(sequences)
    # The Keras layers themselves: the same tokens.
    keras_tokens = SequenceCodec(KerasEncoder(network.encoder), KerasDecoder(network.decoder, network.config),
                                 network.config).decode(codes)
    loaded = load(model_dir)
    assert isinstance(loaded.decoder, NumpyDecoder) and loaded.fingerprint == network.fingerprint()
    # A low-rank output layer runs as two narrower products, a full-rank one as one.
    assert (loaded.decoder.weights.output_left is not None) == (np.linalg.matrix_rank(
        network.decoder.get_layer("token_probs").kernel.numpy()) <= 3)
    for tokens in (loaded.decode(codes), codec.decode(codes)):
        assert [t.tolist() for t in tokens] == [t.tolist() for t in keras_tokens]
    assert [len(t) for t in keras_tokens] == [len(s) for s in sequences]


def test_threads_and_batches_change_no_token(saved, sequences):
    _, model_dir = saved
    codes = load(model_dir).encode(sequences)
    one = load(model_dir, threads=1).decode_flat(codes)
    many = load(model_dir, token_budget=30, threads=3).decode_flat(codes)
    np.testing.assert_array_equal(many[0], one[0])
    np.testing.assert_array_equal(many[1], one[1])
    decoder = load(model_dir, threads=1)
    singles = [decoder.decode(codes[i : i + 1])[0].tolist() for i in range(40)]
    assert singles == [t.tolist() for t in decoder.decode(codes[:40])]


def test_loading_needs_no_tensorflow(tiny_model_dir):
    script = (
        "import sys, seqcodec; "
        f"d = seqcodec.load({str(tiny_model_dir)!r}); "
        "print([len(t) for t in d.decode([[3] + [0.5] * 16])], 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[3]", "False", "False"]


def test_models_saved_without_file_digests_decode_on_numpy(tiny_model_dir, tmp_path, sequences):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    edit_manifest(model_dir, lambda data: data.pop("files"))
    codec = load(model_dir)
    assert isinstance(codec.decoder, NumpyDecoder)
    codes = codec.encode(sequences[:50])
    assert [t.tolist() for t in codec.decode(codes)] == [t.tolist() for t in load(tiny_model_dir).decode(codes)]


def test_beam_search_runs_on_the_numpy_engine(tiny_ar_network, tmp_path):
    model_dir = tmp_path / "model"
    save_codec(tiny_ar_network, model_dir)
    assert isinstance(load(model_dir, beam_width=1).decoder, NumpyDecoder)
    beam = load(model_dir, beam_width=3)
    assert isinstance(beam.decoder, NumpyDecoder) and beam.beam_width == 3
    assert isinstance(tiny_ar_network.codec(beam_width=3).decoder, NumpyDecoder)


def test_decode_job_runs_the_numpy_decoder_greedy_and_by_beam_search(saved, sequences, tmp_path):
    network, model_dir = saved
    codec = network.codec()
    encoded = tmp_path / "encoded"
    pq.write_table(pa.table({"id": list(range(60)), "tokens": [s.tolist() for s in sequences[:60]]}),
                   tmp_path / "in.parquet")
    code, _, err = run_seqcodec(["encode", "--input", tmp_path / "in.parquet", "--output", encoded,
                                 "--model-dir", model_dir])
    assert code == 0, err
    want = codec.decode(codec.encode(sequences[:60]))
    widths = ["1", "2"] if codec.config.decoder == "autoregressive" else ["1"]
    for width in widths:
        out = tmp_path / f"decoded-{width}"
        code, _, err = run_seqcodec(["decode", "--input", encoded / "codes" / "*.parquet", "--output", out,
                                     "--model-dir", model_dir, "--beam-width", width])
        assert code == 0, err
        assert "numpy decoder, no TensorFlow" in err, err
        decoded = pq.read_table(out / "decoded").sort_by("id")
        tokens = decoded.column("tokens").to_pylist()
        beam = load(model_dir, beam_width=int(width))
        assert tokens == [t.tolist() for t in beam.decode(beam.encode(sequences[:60]))]
        if width == "1":
            assert tokens == [t.tolist() for t in want]


def test_low_rank_factors_follow_the_rank_of_the_output_kernel():
    rng = np.random.default_rng(9)
    kernel = (rng.normal(0, 1, (16, 3)) @ rng.normal(0, 1, (3, 40))).astype(np.float32)
    first = low_rank_factors(kernel)
    assert first is not None and first[0].shape == (16, 3)
    np.testing.assert_allclose(first[0] @ first[1], kernel, rtol=1e-4, atol=1e-4)
    kernel[0, 0] += 1.0  # now of rank 4
    second = low_rank_factors(kernel)
    assert second[0].shape == (16, 4)
    np.testing.assert_allclose(second[0] @ second[1], kernel, rtol=1e-4, atol=1e-4)
    assert low_rank_factors(rng.normal(0, 1, (16, 40)).astype(np.float32)) is None  # full rank: one product
