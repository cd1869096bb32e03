"""The saved model directory: encoder.keras, decoder.keras and manifest.json, checked on load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import seqcodec.model.layers  # noqa: F401  (registers the custom layers before any .keras file is read)
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import CodecConfig
from seqcodec.model.data import first_line
from seqcodec.model.manifest import FORMAT_VERSION, MANIFEST, ModelDirError, read_manifest
from seqcodec.model.tfenv import keras, tf

ENCODER_FILE = "encoder.keras"
DECODER_FILE = "decoder.keras"


def fingerprint(config: CodecConfig, encoder: keras.Model, decoder: keras.Model) -> str:
    """Stable hash of the configuration and every weight, in build order: equal models, equal hash."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for net in (encoder, decoder):
        for weight in net.weights:
            value = np.ascontiguousarray(weight.numpy())
            digest.update(str(value.shape).encode())
            digest.update(value.astype("<f4", copy=False).tobytes())
    return digest.hexdigest()[:16]


def save_codec(
    codec: SequenceCodec,
    model_dir: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model directory atomically (temp dir, then rename) and return its manifest."""
    target = Path(model_dir)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / MANIFEST).exists())):
        raise ModelDirError(f"model directory {target}: exists and is not a seqcodec model; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    codec.encoder.save(staging / ENCODER_FILE)
    codec.decoder.save(staging / DECODER_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        **codec.config.to_dict(),
        "code_size": codec.config.code_size,
        "fingerprint": fingerprint(codec.config, codec.encoder, codec.decoder),
        "metrics": metrics or {},
        "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
        **(extra or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(old / target.name)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    codec.fingerprint = manifest["fingerprint"]
    return manifest


def load_codec(model_dir: str | os.PathLike, batch_size: int | None = None) -> SequenceCodec:
    """Load a model directory written by ``save_codec`` and verify its fingerprint."""
    path = Path(model_dir)
    manifest = read_manifest(path)
    config = CodecConfig.from_dict(manifest)
    nets = []
    for name in (ENCODER_FILE, DECODER_FILE):
        file = path / name
        if not file.is_file():
            raise ModelDirError(f"model directory {path}: {name} is missing")
        try:
            nets.append(keras.saving.load_model(file, compile=False, safe_mode=True))
        except Exception as exc:  # keras raises many types for a damaged archive
            raise ModelDirError(f"model directory {path}: {name} cannot be loaded ({first_line(exc)})") from None
    encoder, decoder = nets
    if encoder.output_shape[-1] != config.code_size or decoder.output_shape[-1] != config.vocab_size:
        raise ModelDirError(f"model directory {path}: the saved networks do not match {MANIFEST}")
    actual = fingerprint(config, encoder, decoder)
    if actual != manifest.get("fingerprint"):
        raise ModelDirError(
            f"model directory {path}: weights fingerprint {actual} does not match the manifest's "
            f"{manifest.get('fingerprint')!r} (files changed or mixed from different models)"
        )
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    return SequenceCodec(encoder, decoder, config, fingerprint=actual, **kwargs)
