"""The standard network's weights, from saved ``.keras`` files or live Keras models, as engine weights.

A network is read as ``NetworkArrays``: its layers' configs (Keras' functional config) and each
layer's arrays in Keras' weight order. From there ``fingerprint`` hashes the weights and
``encoder_weights``/``decoder_weights`` check that the structure is the one ``network.py`` builds
(layer names from ``names.py``) and fold it for the numpy engine (``engine.py``). Reading saved files
needs h5py, not TensorFlow; live models are read through their own ``get_config``/``get_weights``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from seqcodec.model import names
from seqcodec.model.config import CodecConfig
from seqcodec.model.engine import DecoderWeights, EncoderWeights

# Layer classes whose saved variables ``read_keras_file`` knows how to find: all the standard network has.
KNOWN_LAYERS = {"InputLayer", "Embedding", "Dropout", "NotEqual", "TokenCount", "Bidirectional", "LSTM",
                "Concatenate", "DecoderSteps", "CodeState", "Dense"}
# Where a layer keeps the variables of the layers inside it, in the order Keras lists its weights.
_NESTED = {"LSTM": ("cell",), "Bidirectional": ("forward_layer/cell", "backward_layer/cell")}


@dataclasses.dataclass(frozen=True)
class NetworkArrays:
    """One network (encoder or decoder): its layers' configs in model order and each layer's arrays by name."""

    layers: list[dict[str, Any]]
    arrays: dict[str, list[np.ndarray]]
    ordered: list[np.ndarray] | None = None  # every weight in Keras' order, where Keras gave it (live models)

    def layer(self, name: str) -> dict[str, Any] | None:
        """A layer's own config (activation, units, ...) by name, or None."""
        for layer in self.layers:
            if layer.get("config", {}).get("name") == name:
                return layer
        return None

    def in_order(self) -> list[np.ndarray]:
        """Every weight in Keras' order (``model.weights``): layer by layer, each layer's own order."""
        if self.ordered is not None:
            return self.ordered
        return [array for layer in self.layers for array in self.arrays.get(layer["config"]["name"], [])]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, as ``save_codec`` records it in the manifest's ``files``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _snake(class_name: str) -> str:
    """keras.src.utils.naming.to_snake_case, as Keras names a layer's group in ``model.weights.h5``."""
    snake = re.sub(r"\W+", "", class_name)
    snake = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", snake)
    return re.sub("([a-z])([A-Z])", r"\1_\2", snake).lower()


def read_keras_file(path: str | os.PathLike) -> NetworkArrays | None:
    """A saved ``.keras`` archive's layers and arrays, without Keras; None if it holds a layer of another kind.

    Keras stores a layer's variables under ``layers/<class name in snake case>[_<n>]/vars/<i>``,
    numbered per class in the model's layer order, not under the layer's own name. Errors of a
    damaged archive (zipfile, JSON, h5py) propagate for the caller to report.
    """
    import h5py  # Keras' own weights format; h5py comes with Keras

    with zipfile.ZipFile(path) as archive:
        model_config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    layers = model_config.get("config", {}).get("layers", [])
    if not layers or any(layer.get("class_name") not in KNOWN_LAYERS for layer in layers):
        return None
    seen: dict[str, int] = {}
    arrays: dict[str, list[np.ndarray]] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        for layer in layers:
            snake = _snake(layer["class_name"])
            count = seen.get(snake, -1) + 1
            seen[snake] = count
            group = h5.get(f"layers/{snake}" + (f"_{count}" if count else ""))
            found: list[np.ndarray] = []
            for part in ("", *_NESTED.get(layer["class_name"], ())):
                variables = group.get(f"{part}/vars" if part else "vars") if group is not None else None
                found += [variables[str(i)][()] for i in range(len(variables))] if variables is not None else []
            arrays[layer["config"]["name"]] = found
    return NetworkArrays(layers, arrays)


def live_arrays(model: Any) -> NetworkArrays:
    """A live Keras model's layers (a functional model's config; none for other kinds, which numpy does not
    run) and its current weights, by layer and in ``model.weights`` order."""
    try:
        layers = model.get_config().get("layers", [])
    except NotImplementedError:  # a subclassed model without a config
        layers = []
    return NetworkArrays(layers, {layer.name: layer.get_weights() for layer in model.layers},
                         [np.asarray(weight) for weight in model.weights])


def fingerprint(config: CodecConfig, encoder: NetworkArrays, decoder: NetworkArrays) -> str:
    """Stable hash of the configuration and every weight, in build order: equal models, equal hash."""
    digest = hashlib.sha256(json.dumps(config.identity(), sort_keys=True).encode())
    for net in (encoder, decoder):
        for array in net.in_order():
            value = np.ascontiguousarray(array)
            digest.update(str(value.shape).encode())
            digest.update(value.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()[:16]


# -- the standard structure ------------------------------------------------------------------------


def standard_lstm(config: dict[str, Any]) -> bool:
    """Whether an LSTM layer's config is the cell the numpy engine computes (tanh, sigmoid gates, bias)."""
    return (config.get("activation") == "tanh" and config.get("recurrent_activation") == "sigmoid"
            and config.get("use_bias") is True)


def _shapes_ok(pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> bool:
    return all(tuple(got) == want for got, want in pairs)


def encoder_weights(net: NetworkArrays, config: CodecConfig) -> EncoderWeights | None:
    """The numpy engine's weights of a standard encoder (``network.build_encoder``); None for another structure."""
    lstm, embedding = net.layer(names.ENCODER_LSTM), net.layer(names.EMBEDDING)
    if lstm is None or embedding is None or not embedding["config"].get("mask_zero"):
        return None
    if sum(layer["class_name"] in ("LSTM", "Bidirectional") for layer in net.layers) != 1:
        return None
    inner = lstm["config"]
    if config.bidirectional:
        backward = inner.get("backward_layer", {}).get("config", {})
        ok = (lstm["class_name"] == "Bidirectional" and inner.get("merge_mode") == "concat"
              and standard_lstm(inner.get("layer", {}).get("config", {})) and standard_lstm(backward)
              and backward.get("go_backwards") is True)
    else:
        ok = lstm["class_name"] == "LSTM" and standard_lstm(inner) and inner.get("go_backwards") is False
    if not ok:
        return None
    directions = 2 if config.bidirectional else 1
    units = config.hidden_size // directions
    table = net.arrays[names.EMBEDDING]
    variables = net.arrays[names.ENCODER_LSTM]
    if len(table) != 1 or len(variables) != 3 * directions:
        return None
    lstms = [tuple(variables[3 * d : 3 * d + 3]) for d in range(directions)]
    shapes = [(table[0].shape, (config.vocab_size + 1, config.embedding_size))]
    for kernel, rec, bias in lstms:
        shapes += [(kernel.shape, (config.embedding_size, 4 * units)), (rec.shape, (units, 4 * units)),
                   (bias.shape, (4 * units,))]
    return EncoderWeights.from_arrays(table[0], lstms) if _shapes_ok(shapes) else None


def decoder_weights(net: NetworkArrays, config: CodecConfig) -> Callable[[], DecoderWeights] | None:
    """The numpy engine's weights of a standard decoder (``network.build_decoder``), folded when called;
    None for another structure. The check is made now, the folding (an SVD for a low-rank output
    layer) only when asked for."""
    lstm, dense, steps = net.layer(names.DECODER_LSTM), net.layer(names.TOKEN_PROBS), net.layer(names.STEPS)
    if lstm is None or dense is None or steps is None or lstm["class_name"] != "LSTM" or dense["class_name"] != "Dense":
        return None
    if (not standard_lstm(lstm["config"]) or not lstm["config"].get("return_sequences")
            or dense["config"].get("activation") != "softmax" or steps["class_name"] != "DecoderSteps"):
        return None
    autoregressive = config.decoder == "autoregressive"
    if autoregressive:
        initial_h, initial_c = net.layer(names.INITIAL_H), net.layer(names.INITIAL_C)
        if (initial_h is None or initial_c is None or net.layer(names.PREVIOUS_EMBEDDING) is None
                or initial_h["config"].get("activation") != "tanh"
                or initial_c["config"].get("activation") != "linear"):
            return None
    arrays = net.arrays
    units, extra = config.hidden_size, config.embedding_size if autoregressive else 0
    lstm_arrays, dense_arrays = tuple(arrays[names.DECODER_LSTM]), tuple(arrays[names.TOKEN_PROBS])
    signal = tuple(arrays[names.STEPS]) if config.position_signal else None
    embedding = arrays[names.PREVIOUS_EMBEDDING] if autoregressive else None
    initial = (tuple(arrays[names.INITIAL_H]), tuple(arrays[names.INITIAL_C])) if autoregressive else None
    counts = [(len(lstm_arrays), 3), (len(dense_arrays), 2), (len(arrays[names.STEPS]), 2 if signal else 0)]
    if autoregressive:
        counts += [(len(embedding), 1), (len(initial[0]), 2), (len(initial[1]), 2)]
    if any(got != want for got, want in counts):
        return None
    shapes = [(lstm_arrays[0].shape, (units + extra, 4 * units)), (lstm_arrays[1].shape, (units, 4 * units)),
              (dense_arrays[0].shape, (units, config.vocab_size))]
    if signal is not None:
        shapes += [(signal[0].shape, (config.max_length, units)), (signal[1].shape, (config.max_length, units))]
    if autoregressive:
        shapes += [(embedding[0].shape, (config.vocab_size + 2, config.embedding_size))]
        shapes += [(k.shape, (units, units)) for k, _ in initial]
    if not _shapes_ok(shapes):
        return None
    return lambda: DecoderWeights.from_arrays(lstm_arrays, dense_arrays, signal,
                                              None if embedding is None else embedding[0], initial)
