"""The standard encoder's inference step in numpy: codes from the saved weights alone, without TensorFlow.

The arithmetic is ``model/fused.py``'s encoder: the embedding folded into each direction's input
kernel (one ``(vocab + 1, 4U)`` table, a row gathered per token), only ``h @ U`` left in the loop,
padding keeping the state. The LSTM cell, the batch runner, ``NumpyPart`` and the loading helpers
here serve the numpy decoder (``numpy_decoder.py``) too. Written with numpy, whose ufuncs and
matmul release the GIL, so batches run in parallel threads of one process. Two uses:

- ``SequenceCodec.encode`` runs it on the Keras layers' current weights (faster than the TensorFlow
  graph on 2 cores: ``docs/BENCHMARKS.md``);
- ``load_encoder`` builds it straight from ``encoder.keras``, so a job whose workers only encode
  never imports TensorFlow (a 30k-row job: 3.5 s instead of 6.5 s, half the memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from threadpoolctl import OpenBLASController, ThreadpoolController

from seqcodec.model.batches import check_sequences, flatten, pad_shifted, token_batches
from seqcodec.model.config import DEFAULT_TOKEN_BUDGET, CodecConfig, threads_per_process
from seqcodec.model.manifest import ENCODER_FILE, Manifest, localize_model_dir, read_manifest

Part = TypeVar("Part", bound="NumpyPart")


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """Per direction (forward, then backward if bidirectional): the input table and the recurrent kernel.

    Gate columns as ``gate_columns`` leaves them: reordered to (i, f, o, c) and the sigmoid gates halved.
    """

    tables: tuple[np.ndarray, ...]
    recurrent: tuple[np.ndarray, ...]

    @classmethod
    def from_arrays(cls, embedding: np.ndarray, lstms: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> (
            EncoderWeights):
        """From the embedding matrix and each direction's (kernel, recurrent kernel, bias), as Keras keeps them."""
        embedding = np.asarray(embedding, np.float32)
        tables = tuple(gate_columns(embedding @ kernel + bias) for kernel, _, bias in lstms)
        recurrent = tuple(gate_columns(rec) for _, rec, _ in lstms)
        return cls(tables, recurrent)

    @property
    def hidden_size(self) -> int:
        return sum(rec.shape[0] for rec in self.recurrent)


def gate_order(units: int) -> np.ndarray:
    """Columns of Keras' gates (i, f, c, o) in the order (i, f, o, c) that ``lstm_update`` reads."""
    return np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]


def gate_columns(array: np.ndarray) -> np.ndarray:
    """Keras' gate columns (i, f, c, o) of a kernel, bias or table -> what ``lstm_update`` reads, float32.

    Reordered to (i, f, o, c), and the sigmoid gates' columns halved: sigmoid(x) = (1 + tanh(x / 2)) / 2,
    so one tanh covers all four gates (faster than exp and a reciprocal, the same values within 1e-7).
    """
    array = np.asarray(array, np.float32)
    units = array.shape[-1] // 4
    out = np.ascontiguousarray(array[..., gate_order(units)])
    out[..., : 3 * units] *= 0.5
    return out


def lstm_update(z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM cell step from the pre-activations ``z`` (``gate_columns`` order and scale; overwritten) -> (h, c)."""
    units = c.shape[1]
    np.tanh(z, out=z)
    gates, candidate = z[:, : 3 * units], z[:, 3 * units :]
    gates *= 0.5
    gates += 0.5
    c_new = gates[:, units : 2 * units] * c
    c_new += gates[:, :units] * candidate
    h_new = np.tanh(c_new)
    h_new *= gates[:, 2 * units :]
    return h_new, c_new


def gemm_rows(batch: np.ndarray) -> np.ndarray:
    """``batch`` with its row repeated if it has only one: the same matrix products for any batch.

    numpy multiplies a one-row matrix with BLAS's matrix-vector kernel (GEMV), which sums in another
    order than the matrix-matrix kernel (GEMM) of every bigger batch: a sequence alone got a code up
    to 1.6e-6 off the one it gets among others. Two rows take GEMM, whose rows do not depend on the
    row count or on their neighbours, so codes and tokens are bit-identical whatever the batching
    (tests/test_shipped_models.py holds them so; the cost is in docs/BENCHMARKS.md).
    """
    return np.repeat(batch, 2, axis=0) if batch.shape[0] == 1 else batch


def encode_ids(weights: EncoderWeights, ids: np.ndarray) -> np.ndarray:
    """ids (batch, steps) int32, shifted and right-padded with 0 -> codes (batch, hidden + 1) float32."""
    if ids.shape[0] == 1:
        return encode_ids(weights, gemm_rows(ids))[:1]
    rows, steps = ids.shape
    mask = ids > 0
    codes = np.empty((rows, 1 + weights.hidden_size), np.float32)
    codes[:, 0] = mask.sum(axis=1)
    column = 1
    for direction, (table, rec) in enumerate(zip(weights.tables, weights.recurrent, strict=True)):
        units = rec.shape[0]
        h = np.zeros((rows, units), np.float32)
        c = np.zeros((rows, units), np.float32)
        z = np.empty((rows, 4 * units), np.float32)
        for step in range(steps):
            # The backward direction reads the sequence from its end; padding keeps the state.
            at = step if direction == 0 else steps - 1 - step
            np.matmul(h, rec, out=z)
            z += table[ids[:, at]]
            h_new, c_new = lstm_update(z, c)
            keep = mask[:, at]
            if keep.all():
                h, c = h_new, c_new
            else:
                keep = keep[:, None]
                h, c = np.where(keep, h_new, h), np.where(keep, c_new, c)
        codes[:, column : column + units] = h
        column += units
    return codes


class NumpyPart:
    """What the numpy encoder and decoder share: weights, the model's config, batching and threads.

    Rows are sorted by length and cut into batches of at most ``token_budget`` padded tokens (and
    ``batch_size`` rows, if given); ``threads`` batches run at once (0: one per core). BLAS is held
    to one thread meanwhile (``OneBlasThread``), so the threads do not each start a pool as wide as the machine.
    ``weights`` is called once per call, so a part built on live Keras variables follows training.
    """

    def __init__(self, weights: Callable[[], Any], config: CodecConfig, fingerprint: str = "",
                 token_budget: int = DEFAULT_TOKEN_BUDGET, batch_size: int | None = None, threads: int = 0) -> None:
        self.weights, self.config, self.fingerprint = weights, config, fingerprint
        self.token_budget, self.batch_size = token_budget, batch_size
        self.threads = threads_per_process(threads, 1)
        self.manifest: Manifest | None = None


class NumpyEncoder(NumpyPart):
    """Token sequences -> length-prefixed codes with the numpy step, as ``SequenceCodec.encode`` returns them.

    ``weights`` returns ``EncoderWeights``; batching and threads as in ``NumpyPart``.
    """

    def encode(self, sequences: Sequence[np.ndarray] | Sequence[Sequence[int]]) -> np.ndarray:
        """Token sequences -> length-prefixed codes, float32 of shape (N, hidden + 1)."""
        return self.encode_flat(*flatten(sequences))

    def encode_flat(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Like ``encode`` for sequences in Arrow's list layout (flat ``values``, N + 1 ``offsets``)."""
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        check_sequences(values, offsets, self.config)
        lengths = np.diff(offsets)
        codes = np.empty((lengths.size, self.config.code_size), dtype=np.float32)
        weights = self.weights()
        batches = token_batches(lengths, self.token_budget, self.batch_size)

        def run(rows: np.ndarray) -> None:
            codes[rows] = encode_ids(weights, pad_shifted(values, offsets, rows))

        run_batches(run, batches, self.threads)
        return codes


class OneBlasThread:
    """A context in which BLAS runs one thread, shared by every caller in the process: the first caller
    in sets the limit, the last one out puts the original count back.

    BLAS's thread count is process-global, while the engine is called from several threads at once
    (an SDK worker runs its DoFns in many threads; ``run_batches`` runs a pool of its own). Entering
    ``threadpool_limits`` per call broke that: a second caller took the first one's limit for the
    original, whichever left first put the wide pool back under the other, and the last one out left
    the process at one thread for good. A counter under a lock keeps the limit while any call runs.
    It is not set once per process at model load instead, because ``seqcodec.load`` is also a
    library call in a user's own process, whose numpy keeps its threads between our calls.

    threadpoolctl lets only one thread (the first to set a limit) change OpenBLAS's pthreads pool and
    silently ignores the others; the first and the last caller here may be different threads, so
    each change is made with that claim cleared before and after. The controller (the scan of the
    loaded libraries) is built once, not per call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callers = 0
        self._controller: ThreadpoolController | None = None
        self._limiter: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._callers == 0:
                if self._controller is None:
                    self._controller = ThreadpoolController()
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter = self._controller.limit(limits=1, user_api="blas")
                OpenBLASController.clear_controlling_thread(force=True)
            self._callers += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._callers -= 1
            if self._callers == 0:
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter.restore_original_limits()
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter = None


ONE_BLAS_THREAD = OneBlasThread()


def run_batches(run: Callable[[np.ndarray], None], batches: list[np.ndarray], threads: int) -> None:
    """``run`` on every batch, ``threads`` at a time, BLAS held to one thread meanwhile (``OneBlasThread``)."""
    with ONE_BLAS_THREAD:
        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(min(threads, len(batches))) as pool:
                list(pool.map(run, batches))
        else:
            for rows in batches:
                run(rows)


# -- loading from a model directory without TensorFlow ----------------------------------------------

_LAYERS = {"InputLayer", "Embedding", "Dropout", "NotEqual", "TokenCount", "Bidirectional", "LSTM", "Concatenate"}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file, as ``save_codec`` records it in the manifest's ``files``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_keras_file(path: str | os.PathLike) -> tuple[dict[str, Any], Any]:
    """A ``.keras`` archive's model config and its weights as an open ``h5py.File`` (close it after use).

    Keras stores a layer's variables under ``layers/<class name in snake case>[_<n>]/vars/<i>``,
    numbered per class in the model's layer order, not under the layer's own name.
    """
    import h5py  # Keras' own weights format; h5py comes with Keras

    with zipfile.ZipFile(path) as archive:
        model_config = json.loads(archive.read("config.json"))
        return model_config, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")


def verified_file(model_dir: str | os.PathLike, name: str) -> tuple[Manifest, Path] | None:
    """(manifest, local path) of a model file whose sha256 the manifest records and which still has it; else None.

    The recorded digest is what stands in for the weights fingerprint that ``load_codec`` computes.
    """
    manifest = read_manifest(model_dir)
    recorded = manifest.extra.get("files", {})
    if not isinstance(recorded, dict) or name not in recorded:
        return None
    path = Path(localize_model_dir(os.fspath(model_dir), (name,))) / name
    if not path.is_file() or file_digest(path) != recorded[name]:
        return None
    return manifest, path


def standard_lstm(config: dict[str, Any]) -> bool:
    """Whether a saved LSTM layer's config is the cell the numpy steps compute (tanh, sigmoid gates, bias)."""
    return (config.get("activation") == "tanh" and config.get("recurrent_activation") == "sigmoid"
            and config.get("use_bias") is True)


def _is_standard(model_config: dict[str, Any], bidirectional: bool) -> bool:
    """Whether a saved encoder is ``network.build_encoder``'s: the structure this step computes."""
    layers = model_config.get("config", {}).get("layers", [])
    if not layers or any(layer.get("class_name") not in _LAYERS for layer in layers):
        return False
    lstms = [layer for layer in layers if layer["class_name"] in ("LSTM", "Bidirectional")]
    if len(lstms) != 1 or (lstms[0]["class_name"] == "Bidirectional") != bidirectional:
        return False
    inner = lstms[0]["config"]
    if bidirectional:
        backward = inner.get("backward_layer", {}).get("config", {})
        return (inner.get("merge_mode") == "concat" and standard_lstm(inner.get("layer", {}).get("config", {}))
                and standard_lstm(backward) and backward.get("go_backwards") is True)
    return standard_lstm(inner) and inner.get("go_backwards") is False


def read_encoder_weights(path: str | os.PathLike, config: CodecConfig) -> EncoderWeights | None:
    """The weights of a saved standard encoder (``encoder.keras``), or None if it is another structure."""
    model_config, weights_file = open_keras_file(path)
    if not _is_standard(model_config, config.bidirectional):
        weights_file.close()
        return None
    with weights_file:
        lstm = "layers/bidirectional/{}_layer/cell/vars/{}" if config.bidirectional else "layers/lstm/cell/vars/{1}"
        directions = ("forward", "backward") if config.bidirectional else ("",)
        try:
            embedding = weights_file["layers/embedding/vars/0"][()]
            lstms = [tuple(weights_file[lstm.format(d, i)][()] for i in range(3)) for d in directions]
        except KeyError:
            return None
    units = config.hidden_size // len(directions)
    shapes_ok = embedding.shape == (config.vocab_size + 1, config.embedding_size) and all(
        kernel.shape == (config.embedding_size, 4 * units) and rec.shape == (units, 4 * units)
        and bias.shape == (4 * units,) for kernel, rec, bias in lstms)
    return EncoderWeights.from_arrays(embedding, lstms) if shapes_ok else None


def load_encoder(model_dir: str | os.PathLike, token_budget: int = DEFAULT_TOKEN_BUDGET,
                 batch_size: int | None = None, threads: int = 0) -> NumpyEncoder | None:
    """A model directory's encoder as a NumpyEncoder, without TensorFlow; None where that cannot be done.

    Only for a manifest that records ``encoder.keras``'s sha256 (``save_codec`` does) and a file
    that still has it: that is what stands in for the weights fingerprint ``load_codec`` checks.
    None (older models, other structures, changed files): load with ``load_codec``, which checks
    everything and says what is wrong.
    """
    return load_part(NumpyEncoder, ENCODER_FILE, read_encoder_weights, model_dir, token_budget, batch_size, threads)


def load_part(cls: type[Part], name: str, read: Callable[[Path, CodecConfig], Any], model_dir: str | os.PathLike,
              token_budget: int, batch_size: int | None, threads: int) -> Part | None:
    """``cls`` (a NumpyPart) on the weights ``read`` finds in the model file ``name``; None if they cannot be trusted.

    The file must have the sha256 the manifest records (``verified_file``), and ``read`` must
    recognize its structure (it returns None for any other).
    """
    found = verified_file(model_dir, name)
    if found is None:
        return None
    manifest, path = found
    weights = read(path, manifest.config)
    if weights is None:
        return None
    part = cls(lambda: weights, manifest.config, manifest.fingerprint, token_budget, batch_size, threads)
    part.manifest = manifest
    return part
