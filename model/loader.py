"""Load a model directory as a SequenceCodec on the numpy engine: ``seqcodec.load`` and the Beam handlers.

The weights are read from ``encoder.keras``/``decoder.keras`` with h5py and checked against the
manifest's fingerprint, without TensorFlow. TensorFlow is imported only for what numpy cannot run:
networks of another structure (``tf_engine.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import DEFAULT_TOKEN_BUDGET
from seqcodec.model.engine import NumpyDecoder, NumpyEncoder
from seqcodec.model.errors import TENSORFLOW_MISSING, TensorFlowMissing, first_line
from seqcodec.model.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    Manifest,
    ModelDirError,
    local_model_files,
    read_manifest,
)
from seqcodec.model.weights import NetworkArrays, decoder_weights, encoder_weights, fingerprint, read_keras_file


def tf_engine(needs: str) -> Any:
    """The TensorFlow engine module, imported now; TensorFlowMissing (one line: what to install) if it cannot be."""
    try:
        from seqcodec.model import tf_engine as module
    except TensorFlowMissing:
        raise TensorFlowMissing(TENSORFLOW_MISSING.format(needs=needs)) from None
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("tensorflow", "keras"):
            raise TensorFlowMissing(TENSORFLOW_MISSING.format(needs=needs)) from None
        raise
    return module


def _read(model_dir: str, path: Path) -> NetworkArrays | None:
    """A saved network's layers and arrays (None: layers only Keras reads); ModelDirError if missing or damaged."""
    if not path.is_file():
        raise ModelDirError(f"model directory {model_dir}: {path.name} is missing")
    try:
        return read_keras_file(path)
    except Exception as exc:  # zipfile, json and h5py raise many types for a damaged archive
        raise ModelDirError(f"model directory {model_dir}: {path.name} cannot be loaded ({first_line(exc)})") from None


def load(model_dir: str | os.PathLike, *, batch_size: int | None = None, token_budget: int = DEFAULT_TOKEN_BUDGET,
         beam_width: int = 1, threads: int = 0) -> SequenceCodec:
    """A model directory (local, gs://, s3://, ...) as a SequenceCodec whose weights match the manifest's fingerprint.

    ``batch_size`` caps the rows per model call, ``token_budget`` the padded tokens; ``threads``
    batches run at once (0: one per core); ``beam_width`` > 1 decodes an autoregressive model by
    beam search. ModelDirError (one line) for a missing, damaged or mismatched directory.
    """
    if beam_width < 1:
        raise ValueError(f"beam width must be >= 1, got {beam_width}")
    model_dir = os.fspath(model_dir)
    manifest = read_manifest(model_dir)
    options = {"token_budget": token_budget, "batch_size": batch_size, "threads": threads}
    with local_model_files(model_dir, (ENCODER_FILE, DECODER_FILE)) as local:
        return _load_networks(model_dir, Path(local), manifest, beam_width, options)


def _load_networks(model_dir: str, local: Path, manifest: Manifest, beam_width: int,
                   options: dict[str, Any]) -> SequenceCodec:
    """The codec of ``manifest`` from its networks' files in ``local``, read whole (the folder may go after)."""
    threads = options["threads"]
    config = manifest.config
    encoder_arrays, decoder_arrays = (_read(model_dir, local / name) for name in (ENCODER_FILE, DECODER_FILE))
    if encoder_arrays is None or decoder_arrays is None:  # layers numpy does not know: Keras reads and runs them
        steps = tf_engine(f"model directory {model_dir} holds a network of another structure: loading it")
        if threads:
            steps.configure_threads(threads)
        return steps.load_keras_codec(model_dir, local, manifest, beam_width=beam_width, **options)
    actual = fingerprint(config, encoder_arrays, decoder_arrays)
    if actual != manifest.fingerprint:
        raise ModelDirError(
            f"model directory {model_dir}: weights fingerprint {actual} does not match the manifest's "
            f"{manifest.fingerprint!r} (files changed or mixed from different models)"
        )
    encoder_found, decoder_found = encoder_weights(encoder_arrays, config), decoder_weights(decoder_arrays, config)
    beam = config.beam_width(beam_width)
    if encoder_found is not None and decoder_found is not None:
        return SequenceCodec(NumpyEncoder(encoder_found), NumpyDecoder(decoder_found, beam), config, actual,
                             manifest=manifest, **options)
    steps = tf_engine(f"model directory {model_dir}'s network of another structure")
    if threads:
        steps.configure_threads(threads)
    encoder = NumpyEncoder(encoder_found) if encoder_found is not None else steps.KerasEncoder(
        steps.load_network_file(model_dir, local / ENCODER_FILE))
    if decoder_found is not None:
        decoder = NumpyDecoder(decoder_found, beam)
    else:
        decoder = steps.KerasDecoder(steps.load_network_file(model_dir, local / DECODER_FILE), config, beam)
    return SequenceCodec(encoder, decoder, config, actual, manifest=manifest, **options)


def engine_names(codec: SequenceCodec) -> str:
    """Which engine runs each step, for a worker's log line: "numpy encoder, numpy decoder, no TensorFlow"."""
    encoder = "numpy" if isinstance(codec.encoder, NumpyEncoder) else "TensorFlow"
    decoder = "numpy" if isinstance(codec.decoder, NumpyDecoder) else "TensorFlow"
    no_tf = ", no TensorFlow" if encoder == decoder == "numpy" else ""
    return f"{encoder} encoder, {decoder} decoder{no_tf}"

