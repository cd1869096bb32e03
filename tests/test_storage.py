"""The model directory: save/load round trip, manifest contents, fingerprint, one-line load errors."""

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, assert_same_codes, build_codec, random_sequences

from seqcodec.model.config import CodecConfig
from seqcodec.model.loader import load
from seqcodec.model.manifest import ModelDirError
from seqcodec.model.network import Network
from seqcodec.model.storage import fingerprint, save_codec
from seqcodec.model.tfenv import keras


@pytest.fixture(scope="module")
def sequences() -> list[np.ndarray]:
    return random_sequences(30, TINY["vocab_size"], TINY["max_length"], seed=21)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    """A model of the same configuration as ``tiny_model_dir`` but another seed (other weights)."""
    model_dir = tmp_path_factory.mktemp("other") / "model"
    save_codec(build_codec(CodecConfig(**TINY), seed=2), model_dir)
    return model_dir


def manifest_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


def test_save_then_load_round_trips(tiny_codec, tiny_model_dir, sequences):
    loaded = load(tiny_model_dir)
    assert loaded.config == tiny_codec.config
    assert loaded.fingerprint == tiny_codec.fingerprint == manifest_of(tiny_model_dir)["fingerprint"]
    codes = tiny_codec.encode(sequences)
    np.testing.assert_array_equal(loaded.encode(sequences), codes)
    for got, want in zip(loaded.decode(codes), tiny_codec.decode(codes), strict=True):
        np.testing.assert_array_equal(got, want)


def test_load_batch_size(tiny_model_dir, sequences):
    small = load(tiny_model_dir, batch_size=4)
    assert small.batch_size == 4
    assert_same_codes(small.encode(sequences), load(tiny_model_dir).encode(sequences))


def test_manifest_contents(tiny_model_dir):
    manifest = manifest_of(tiny_model_dir)
    assert manifest["format_version"] == 1
    for key, value in TINY.items():
        assert manifest[key] == value
    assert manifest["code_size"] == TINY["hidden_size"] + 1
    assert isinstance(manifest["fingerprint"], str) and len(manifest["fingerprint"]) >= 8
    assert manifest["metrics"] == {"note": "untrained test model"}
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["decoder.keras", "encoder.keras", "manifest.json"]


def test_fingerprint_is_stable_and_follows_the_weights(tiny_codec, tiny_model_dir):
    config = tiny_codec.config
    # Equal weights, equal hash: a model rebuilt with the same seed, the loaded copy and the saved files.
    rebuilt = build_codec(config, seed=1)
    assert fingerprint(config, rebuilt.encoder, rebuilt.decoder) == tiny_codec.fingerprint
    assert load(tiny_model_dir).fingerprint == tiny_codec.fingerprint
    loaded = Network(*(keras.saving.load_model(tiny_model_dir / name) for name in ("encoder.keras", "decoder.keras")),
                     config)
    before = fingerprint(config, loaded.encoder, loaded.decoder)
    assert before == tiny_codec.fingerprint
    # One element of one weight changes: the hash changes; undone: it comes back.
    bias = loaded.decoder.get_layer("token_probs").bias
    original = keras.ops.convert_to_numpy(bias.value).copy()
    changed = original.copy()
    changed[3] += 1e-3
    bias.assign(changed)
    assert fingerprint(config, loaded.encoder, loaded.decoder) != before
    bias.assign(original)
    assert fingerprint(config, loaded.encoder, loaded.decoder) == before
    # The configuration is part of the hash: same weights under another max_length hash differently.
    other_config = CodecConfig(**{**TINY, "max_length": 11})
    assert fingerprint(other_config, loaded.encoder, loaded.decoder) != before


def test_save_replaces_an_existing_model_dir(tiny_config, tmp_path, sequences):
    first, second = build_codec(tiny_config, seed=5), build_codec(tiny_config, seed=6)
    target = tmp_path / "model"
    save_codec(first, target)
    (target / "history.json").write_text("{}")
    save_codec(second, target, metrics={"run": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or old dirs left
    assert sorted(p.name for p in target.iterdir()) == ["decoder.keras", "encoder.keras", "manifest.json"]
    loaded = load(target)
    assert loaded.fingerprint == second.fingerprint() != first.fingerprint()
    assert manifest_of(target)["metrics"] == {"run": 2}
    np.testing.assert_array_equal(loaded.encode(sequences), second.codec().encode(sequences))


def test_save_refuses_to_replace_a_directory_that_is_not_a_model(tiny_network, tmp_path):
    target = tmp_path / "my-data"
    target.mkdir()
    (target / "notes.txt").write_text("not a model")
    try:
        with pytest.raises(ValueError):
            save_codec(tiny_network, target)
    finally:
        assert (target / "notes.txt").read_text() == "not a model"


def test_saved_files_load_in_safe_mode_without_lambda_layers(tiny_network, tiny_model_dir):
    ids = np.array([[1, 2, 3, 0], [5, 0, 0, 0]], dtype=np.int32)  # shifted ids, 0 = padding
    for name, original in (("encoder.keras", tiny_network.encoder), ("decoder.keras", tiny_network.decoder)):
        net = keras.saving.load_model(tiny_model_dir / name, compile=False, safe_mode=True)
        assert not any(isinstance(layer, keras.layers.Lambda) for layer in net.layers)
        with zipfile.ZipFile(tiny_model_dir / name) as archive:
            config_text = archive.read("config.json").decode()
        assert '"Lambda"' not in config_text
        assert "seqcodec>" in config_text  # the custom layers are saved under their registered names
        x = ids if name == "encoder.keras" else tiny_network.encoder(ids).numpy()
        np.testing.assert_allclose(net(x).numpy(), original(x).numpy(), rtol=0, atol=1e-6)


# -- load failures ------------------------------------------------------------------------------------


def _edit_manifest(**changes):
    def damage(model_dir: Path, other: Path) -> None:
        manifest = manifest_of(model_dir)
        manifest.update(changes)
        (model_dir / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _write(name: str, data: bytes):
    def damage(model_dir: Path, other: Path) -> None:
        (model_dir / name).write_bytes(data)

    return damage


def _truncate(name: str):
    def damage(model_dir: Path, other: Path) -> None:
        data = (model_dir / name).read_bytes()
        (model_dir / name).write_bytes(data[: len(data) // 2])

    return damage


def _delete(name: str):
    def damage(model_dir: Path, other: Path) -> None:
        (model_dir / name).unlink()

    return damage


def _swap_in(name: str):
    def damage(model_dir: Path, other: Path) -> None:
        shutil.copyfile(other / name, model_dir / name)

    return damage


def _remove_dir(model_dir: Path, other: Path) -> None:
    shutil.rmtree(model_dir)


LOAD_FAILURES = {
    # case: (damage, a word the one-line message must contain besides the directory)
    "nonexistent-dir": (_remove_dir, "exist"),
    "no-manifest": (_delete("manifest.json"), "manifest.json"),
    "manifest-not-json": (_write("manifest.json", b'{"format_version": 1, "vocab_'), "manifest.json"),
    "manifest-not-object": (_write("manifest.json", b"[1, 2]"), "manifest.json"),
    "format-version": (_edit_manifest(format_version=99), "format_version"),
    "code-size": (_edit_manifest(code_size=TINY["hidden_size"] + 2), "code_size"),
    "bad-config": (_edit_manifest(vocab_size=-4), "vocab_size"),
    "encoder-missing": (_delete("encoder.keras"), "encoder.keras"),
    "decoder-missing": (_delete("decoder.keras"), "decoder.keras"),
    "encoder-truncated": (_truncate("encoder.keras"), "encoder.keras"),
    "encoder-garbage": (_write("encoder.keras", bytes(range(256)) * 8), "encoder.keras"),
    "encoder-empty": (_write("encoder.keras", b""), "encoder.keras"),
    "decoder-from-other-model": (_swap_in("decoder.keras"), "fingerprint"),
    "encoder-from-other-model": (_swap_in("encoder.keras"), "fingerprint"),
}


@pytest.mark.parametrize("case", list(LOAD_FAILURES))
def test_load_failures_are_one_line_model_dir_errors(case, tiny_model_dir, other_model_dir, tmp_path):
    damage, word = LOAD_FAILURES[case]
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    load(model_dir)  # the undamaged copy loads
    damage(model_dir, other_model_dir)
    with pytest.raises(ModelDirError) as info:
        load(model_dir)
    message = str(info.value)
    assert "\n" not in message
    assert str(model_dir) in message
    assert word in message
    assert isinstance(info.value, ValueError)  # so the CLI reports it as a user error (exit code 2)


def test_manifest_is_one_typed_object(tiny_model_dir):
    """read_manifest gives a Manifest; written back it is the same JSON object, unknown entries included."""
    from seqcodec.model.manifest import Manifest, read_manifest

    manifest = read_manifest(str(tiny_model_dir))
    assert isinstance(manifest, Manifest)
    assert manifest.code_size == manifest.config.hidden_size + 1 == TINY["hidden_size"] + 1
    assert manifest.fingerprint == manifest_of(tiny_model_dir)["fingerprint"]
    assert manifest.to_dict() == manifest_of(tiny_model_dir)
    assert "versions" in manifest.extra
    assert manifest.facts() == {k: manifest_of(tiny_model_dir)[k]
                                for k in ("fingerprint", "code_size", "vocab_size", "max_length")}
